//! Direct mode of an [`Outbox`]: the hub writes to the socket itself while nothing waits,
//! the session drains what the socket did not take, and the WebSocket library's own writes
//! (control frames) join the same ordered byte stream.

use super::wire::{self, Header, Out};
use super::{Direct, Frame, Guard, Outbox, Push, Work, RAW_CAP};
use crate::metrics::Metrics;
use bytes::Bytes;
use ryze_core::close::CloseCode;
use ryze_core::wire::{now_micros, Offset};
use std::collections::VecDeque;
use std::io;
use std::task::{Context, Poll};
use tokio::net::TcpStream;

impl Outbox {
    /// Writes a live frame straight to the socket if nothing waits before it, else queues
    /// it behind the waiting bytes (caps permitting).
    pub(super) fn push_direct(
        &self,
        s: Guard<'_>,
        direct: Direct,
        frame: &Frame,
        write_now: bool,
    ) -> Push {
        if let (Some(through), Some(offset)) = (direct.replayed_through, frame.offset) {
            if offset <= through {
                // Replayed already (resume).
                return Push::Queued;
            }
        }
        let text = match (direct.offsets, &frame.with_offset, frame.offset) {
            (false, _, _) | (true, None, None) => &frame.text,
            (true, Some(with), _) => with,
            (true, None, Some(offset)) => {
                // Queued before the hub knew of a resumable client: spliced here, once.
                let spliced = ryze_core::envelope::with_offset(frame.text.as_str(), offset);
                return self.write_or_queue(s, Bytes::from(spliced), frame.published_micros);
            }
        };
        if !s.wire.is_empty() {
            return self.queue_wire(s, Bytes::from(text.clone()), frame.published_micros);
        }
        if !write_now {
            return self.write_or_queue(s, Bytes::from(text.clone()), frame.published_micros);
        }
        let head = Header::text(text.len());
        let body = text.as_str().as_bytes();
        let Some((sock, _)) = &s.io else {
            return Push::Closed;
        };
        match wire::write_frame(sock, &head, body) {
            Ok(n) if n == head.as_slice().len() + body.len() => Push::Sent,
            Ok(n) => self.start_backlog(s, n, Bytes::from(text.clone()), frame),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.start_backlog(s, 0, Bytes::from(text.clone()), frame)
            }
            Err(_) => self.broke(s),
        }
    }

    fn write_or_queue(&self, s: Guard<'_>, body: Bytes, stamp: u64) -> Push {
        let was_empty = s.wire.is_empty();
        let pushed = self.queue_wire(s, body, stamp);
        if was_empty && pushed == Push::Queued {
            self.writer.notify_one();
        }
        pushed
    }

    /// Queues a live frame behind the bytes waiting for the socket.
    fn queue_wire(&self, mut s: Guard<'_>, body: Bytes, stamp: u64) -> Push {
        let len = body.len();
        if !self.fits(&s, len) {
            return Push::Full;
        }
        s.pending_frames += 1;
        s.pending_bytes += len;
        s.wire.push_back(Out {
            head: Header::text(len),
            body,
            stamp: Some(stamp),
        });
        Push::Queued
    }

    /// The socket took `written` bytes of a frame: the rest waits, and the writer is woken.
    fn start_backlog(&self, mut s: Guard<'_>, written: usize, body: Bytes, frame: &Frame) -> Push {
        s.sent = written;
        s.pending_frames += 1;
        s.pending_bytes += body.len();
        s.wire.push_back(Out {
            head: Header::text(body.len()),
            body,
            stamp: Some(frame.published_micros),
        });
        drop(s);
        self.writer.notify_one();
        Push::Queued
    }

    fn broke(&self, mut s: Guard<'_>) -> Push {
        s.broken = true;
        drop(s);
        self.writer.notify_one();
        self.room.notify_waiters();
        Push::Closed
    }

    /// Gives the outbox its connection's socket: from now on every write goes through it,
    /// and the session reads through [`Outbox::poll_read`].
    pub fn connect(&self, sock: TcpStream, metrics: Metrics) {
        self.lock().io = Some((sock, metrics));
    }

    /// Reads what the client sent into `into`. Under the lock, which a read (rare: the
    /// client's pongs and Close) holds for one non-blocking `read`.
    pub fn poll_read(&self, cx: &mut Context<'_>, into: &mut [u8]) -> Poll<io::Result<usize>> {
        loop {
            let s = self.lock();
            let Some((sock, _)) = &s.io else {
                return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
            };
            if sock.poll_read_ready(cx)?.is_pending() {
                return Poll::Pending;
            }
            match sock.try_read(into) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                read => return Poll::Ready(read),
            }
        }
    }

    /// Ready once the socket may take bytes again (tokio's readiness, cleared by the last
    /// `WouldBlock`).
    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &self.lock().io {
            Some((sock, _)) => sock.poll_write_ready(cx),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    /// Releases the socket and whatever waited for it (the session is over).
    pub fn disconnect(&self) {
        let mut s = self.lock();
        s.io = None;
        s.direct = None;
        s.wire = VecDeque::new();
        s.raw_bytes = 0;
    }

    /// Switches to direct writes once the session's replay is done and nothing queued is
    /// left (false: drain the queue first). Live frames at or before `replayed_through` are
    /// dropped; `offsets` writes the offset-carrying text.
    pub fn go_direct(&self, offsets: bool, replayed_through: Option<Offset>) -> bool {
        let mut s = self.lock();
        if s.io.is_none() || !s.queue.is_empty() || s.pending_frames > 0 {
            return false;
        }
        s.direct = Some(Direct {
            offsets,
            replayed_through,
        });
        true
    }

    /// Waits until the direct writer has something to do.
    pub async fn work(&self) -> Work {
        loop {
            let notified = self.writer.notified();
            {
                let s = self.lock();
                if let Some(code) = s.close {
                    return Work::Close(code);
                }
                if s.broken {
                    return Work::Gone;
                }
                if !s.wire.is_empty() {
                    return Work::Write;
                }
            }
            notified.await;
        }
    }

    /// Requests a close (if none was) and drops the frames the socket has not started to
    /// take: the session is about to write its Close frame, and nothing may follow it.
    pub fn stop(&self, code: CloseCode) {
        self.close(code);
        let mut s = self.lock();
        let keep_front = s.sent > 0;
        let mut i = 0;
        s.wire.retain(|o| {
            let keep = o.stamp.is_none() || (i == 0 && keep_front);
            i += 1;
            keep
        });
        s.pending_frames = 0;
        s.pending_bytes = 0;
    }

    /// Writes whatever the socket takes now; `Ok(true)` once nothing waits.
    fn write_some(&self) -> io::Result<bool> {
        let mut s = self.lock();
        let mut frames = 0;
        let mut bytes = 0;
        let mut stamps = Vec::new();
        let result = loop {
            if s.wire.is_empty() {
                break Ok(true);
            }
            let Some((sock, _)) = &s.io else {
                break Err(io::ErrorKind::NotConnected.into());
            };
            match wire::write_queue(sock, &s.wire, s.sent) {
                Ok(mut n) => {
                    while let Some(front) = s.wire.front() {
                        let left = front.len() - s.sent;
                        if n < left {
                            s.sent += n;
                            break;
                        }
                        n -= left;
                        s.sent = 0;
                        if let Some(out) = s.wire.pop_front() {
                            match out.stamp {
                                Some(stamp) => {
                                    frames += 1;
                                    bytes += out.body.len();
                                    stamps.push(stamp);
                                }
                                None => s.raw_bytes -= out.body.len(),
                            }
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(false),
                Err(e) => {
                    s.broken = true;
                    break Err(e);
                }
            }
        };
        if s.wire.is_empty() {
            // An idle outbox holds no heap memory.
            s.wire = VecDeque::new();
        }
        s.pending_frames = s.pending_frames.saturating_sub(frames);
        s.pending_bytes = s.pending_bytes.saturating_sub(bytes);
        let metrics = s.io.as_ref().map(|(_, m)| m.clone());
        drop(s);
        if frames > 0 {
            self.room.notify_waiters();
            if let Some(m) = metrics {
                let now = now_micros();
                m.frames_sent(
                    frames as u64,
                    stamps
                        .into_iter()
                        .map(|t| now.saturating_sub(t) as f64 / 1e6),
                );
            }
        }
        result
    }

    /// Drives the bytes waiting for the socket out; ready once none wait.
    pub fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.write_some()? {
                return Poll::Ready(Ok(()));
            }
            if self.poll_write_ready(cx)?.is_pending() {
                return Poll::Pending;
            }
        }
    }

    /// Writes every byte waiting for the socket.
    pub async fn flush(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// Takes encoded bytes from the WebSocket library (control frames; replayed frames
    /// before direct mode): written at once if nothing waits, else queued in order.
    pub fn poll_write_raw(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut s = self.lock();
            if s.broken {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            let Some((sock, _)) = &s.io else {
                return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
            };
            let mut written = 0;
            if s.wire.is_empty() {
                match sock.try_write(buf) {
                    Ok(n) if n == buf.len() => return Poll::Ready(Ok(n)),
                    Ok(n) => written = n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        s.broken = true;
                        return Poll::Ready(Err(e));
                    }
                }
            } else if s.raw_bytes >= RAW_CAP {
                // Too much waits already: write some of it, or wait for the socket.
                drop(s);
                if !self.write_some()? && self.poll_write_ready(cx)?.is_pending() {
                    return Poll::Pending;
                }
                continue;
            }
            let was_empty = s.wire.is_empty();
            let rest = Bytes::copy_from_slice(&buf[written..]);
            s.raw_bytes += rest.len();
            s.wire.push_back(Out {
                head: Header::none(),
                body: rest,
                stamp: None,
            });
            drop(s);
            if was_empty {
                self.writer.notify_one();
            }
            return Poll::Ready(Ok(buf.len()));
        }
    }
}
