//! A connection's send queue: bounded in frames (`WS_SEND_QUEUE`) and bytes
//! (`WS_SEND_QUEUE_BYTES`), filled by the hub without blocking.
//!
//! Two modes. Until its session goes [direct](Outbox::go_direct) (while a resuming session
//! replays), frames queue and the session's writer drains them in batches. Once direct, the
//! hub writes a frame straight to the socket when nothing is waiting before it: a
//! non-blocking vectored write of the frame's header and shared payload, no allocation and
//! no wake-up. Only what the socket does not take waits in the wire queue, which the
//! session drains when the socket is writable again; the WebSocket library's control frames
//! (pings, pongs, Close) go through the same queue, so the byte stream stays in order.
//!
//! A frame counts against both caps from enqueue until its write completes (D28). It is
//! accepted if both caps hold after adding it, or if nothing is pending (so one frame larger
//! than the byte cap still goes through). An idle outbox holds no heap memory.

mod direct;
#[cfg(test)]
mod direct_tests;
mod wire;

use crate::metrics::Metrics;
use ryze_core::close::CloseCode;
use ryze_core::wire::Offset;
use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tungstenite::Utf8Bytes;
use wire::Out;

/// Most bytes of control frames queued behind a socket that does not take them; the
/// WebSocket library waits beyond.
const RAW_CAP: usize = 64 * 1024;

/// One frame on its way to a client.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The frame text; cloning is a refcount bump on the buffer read from Redis.
    pub text: Utf8Bytes,
    /// The publisher's stamp, for `ryze_publish_to_send_seconds`.
    pub published_micros: u64,
    /// Its position in the instance's history (wire version 2), when history is on.
    pub offset: Option<Offset>,
    /// `text` with `"offset"` spliced in (SPEC §5.7), built once per frame by the hub while
    /// the instance has resumable clients; `None` otherwise.
    pub with_offset: Option<Utf8Bytes>,
}

/// What happened to a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Written to the socket whole: the caller counts it as sent.
    Sent,
    /// Queued for the writer.
    Queued,
    /// A cap would be exceeded: the caller decides between waiting and closing (D35).
    Full,
    /// The connection is closing; the frame is not needed.
    Closed,
}

/// What the session's writer should do next in direct mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Bytes wait for the socket: [`Outbox::flush`] them.
    Write,
    /// Close the connection with this code (unwritten frames were dropped).
    Close(CloseCode),
    /// A write failed: the connection is gone.
    Gone,
}

type Guard<'a> = std::sync::MutexGuard<'a, State>;

/// How a direct session writes a live frame (its resume state, SPEC §5.7).
#[derive(Debug, Clone, Copy)]
struct Direct {
    offsets: bool,
    replayed_through: Option<Offset>,
}

/// In declaration order (`repr(C)`): what a direct write reads, the socket first, sits next
/// to the lock, so a frame written to an idle client touches as few cache lines as possible.
#[derive(Default)]
#[repr(C)]
struct State {
    /// The socket, once the session runs. Owned here rather than shared with the session
    /// (which reads through [`Outbox::poll_read`]): one allocation less per connection, and
    /// no second cache line to find the file descriptor on each direct write.
    io: Option<(TcpStream, Metrics)>,
    direct: Option<Direct>,
    close: Option<CloseCode>,
    /// A write failed.
    broken: bool,
    /// Bytes accepted for the socket that it did not take yet, in order.
    wire: VecDeque<Out>,
    /// Bytes of `wire`'s front already written.
    sent: usize,
    pending_frames: usize,
    pending_bytes: usize,
    /// Bytes of control frames in `wire`.
    raw_bytes: usize,
    queue: VecDeque<Frame>,
}

/// The queue shared by the hub (producer) and the connection (consumer). `repr(C)`: the
/// lock and the state it guards come first (see [`State`]).
#[repr(C)]
pub struct Outbox {
    state: Mutex<State>,
    /// Wakes the writer: frames queued or close requested.
    writer: Notify,
    /// Wakes producers waiting for room.
    room: Notify,
    max_frames: usize,
    max_bytes: usize,
}

impl Outbox {
    /// An empty outbox with the given caps.
    pub fn new(max_frames: usize, max_bytes: usize) -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            writer: Notify::new(),
            room: Notify::new(),
            max_frames,
            max_bytes,
        }
    }

    fn lock(&self) -> Guard<'_> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fits(&self, s: &State, len: usize) -> bool {
        s.pending_frames == 0
            || (s.pending_frames < self.max_frames && s.pending_bytes + len <= self.max_bytes)
    }

    /// Writes or queues a frame if both caps allow it. Never blocks; clones the frame only
    /// when it has to wait.
    pub fn push(&self, frame: &Frame) -> Push {
        self.push_as(frame, true)
    }

    /// Like [`Outbox::push`]; without `write_now`, a direct session's frame is queued for
    /// its writer even if the socket is idle (the fan-out is behind: writes coalesce).
    pub fn push_as(&self, frame: &Frame, write_now: bool) -> Push {
        let s = self.lock();
        if s.close.is_some() || s.broken {
            return Push::Closed;
        }
        match s.direct {
            Some(direct) => self.push_direct(s, direct, frame, write_now),
            None => self.enqueue(s, frame),
        }
    }

    fn enqueue(&self, mut s: Guard<'_>, frame: &Frame) -> Push {
        let len = frame.text.len();
        if !self.fits(&s, len) {
            return Push::Full;
        }
        s.pending_frames += 1;
        s.pending_bytes += len;
        s.queue.push_back(frame.clone());
        drop(s);
        self.writer.notify_one();
        Push::Queued
    }

    /// Waits until a frame of `len` bytes would fit, or the outbox closes. Callers bound this
    /// with a timeout: a client that makes no room in time is a slow consumer.
    pub async fn room_for(&self, len: usize) {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let s = self.lock();
                if s.close.is_some() || self.fits(&s, len) {
                    return;
                }
            }
            notified.await;
        }
    }

    /// Resolves once a close has been requested (used while a write is blocked).
    pub async fn closed(&self) {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.lock().close.is_some() {
                return;
            }
            notified.await;
        }
    }

    /// Asks the writer to close the connection with `code` (first request wins).
    pub fn close(&self, code: CloseCode) {
        let mut s = self.lock();
        if s.close.is_none() {
            s.close = Some(code);
        }
        drop(s);
        self.writer.notify_one();
        self.room.notify_waiters();
    }

    /// The close requested, if any.
    pub fn close_requested(&self) -> Option<CloseCode> {
        self.lock().close
    }

    /// Waits for frames or a close request, then takes up to `max_frames` frames and about
    /// `max_bytes` bytes (at least one frame). Taken frames stay counted until
    /// [`Outbox::written`]: bounded batches release them soon, so a reader that keeps up is
    /// never judged by frames already on the wire.
    pub async fn next_batch(&self, max_frames: usize, max_bytes: usize) -> Batch {
        loop {
            let notified = self.writer.notified();
            {
                let mut s = self.lock();
                if let Some(code) = s.close {
                    return Batch::Close(code);
                }
                if !s.queue.is_empty() {
                    let mut batch = VecDeque::new();
                    let mut bytes = 0;
                    while let Some(front) = s.queue.front() {
                        let len = front.text.len();
                        if !batch.is_empty()
                            && (batch.len() >= max_frames || bytes + len > max_bytes)
                        {
                            break;
                        }
                        bytes += len;
                        batch.extend(s.queue.pop_front());
                    }
                    if s.queue.is_empty() {
                        // An idle outbox holds no heap memory.
                        s.queue = VecDeque::new();
                    }
                    return Batch::Frames(batch);
                }
            }
            notified.await;
        }
    }

    /// Marks frames as written: they no longer count against the caps.
    pub fn written(&self, frames: usize, bytes: usize) {
        let mut s = self.lock();
        s.pending_frames = s.pending_frames.saturating_sub(frames);
        s.pending_bytes = s.pending_bytes.saturating_sub(bytes);
        drop(s);
        self.room.notify_waiters();
    }
}

/// What the writer should do next.
#[derive(Debug)]
pub enum Batch {
    /// Write these frames, in order.
    Frames(VecDeque<Frame>),
    /// Close the connection with this code.
    Close(CloseCode),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize) -> Frame {
        Frame {
            offset: None,
            with_offset: None,
            text: Utf8Bytes::from("x".repeat(n)),
            published_micros: 0,
        }
    }

    #[test]
    fn frame_cap_counts_until_written() {
        let o = Outbox::new(2, 1000);
        assert_eq!(o.push(&frame(1)), Push::Queued);
        assert_eq!(o.push(&frame(1)), Push::Queued);
        assert_eq!(o.push(&frame(1)), Push::Full);
        o.written(1, 1);
        assert_eq!(o.push(&frame(1)), Push::Queued);
    }

    #[test]
    fn byte_cap_rejects_backlog_but_accepts_a_big_frame_on_an_empty_queue() {
        let o = Outbox::new(10, 100);
        assert_eq!(
            o.push(&frame(500)),
            Push::Queued,
            "an empty queue takes any frame"
        );
        assert_eq!(o.push(&frame(1)), Push::Full);
        o.written(1, 500);
        assert_eq!(o.push(&frame(60)), Push::Queued);
        assert_eq!(o.push(&frame(40)), Push::Queued);
        assert_eq!(o.push(&frame(1)), Push::Full);
    }

    #[tokio::test]
    async fn next_batch_takes_everything_and_close_wins() {
        let o = Outbox::new(10, 1000);
        o.push(&frame(1));
        o.push(&frame(2));
        match o.next_batch(64, 1 << 20).await {
            Batch::Frames(f) => assert_eq!(f.len(), 2),
            Batch::Close(_) => panic!("expected frames"),
        }
        o.close(ryze_core::close::SLOW_CONSUMER);
        assert_eq!(o.push(&frame(1)), Push::Closed);
        assert!(matches!(o.next_batch(64, 1 << 20).await, Batch::Close(c) if c.code == 1008));
    }

    #[tokio::test]
    async fn batches_are_bounded_but_never_empty() {
        let o = Outbox::new(100, 1 << 20);
        for _ in 0..5 {
            o.push(&frame(10));
        }
        assert!(matches!(o.next_batch(2, 1000).await, Batch::Frames(f) if f.len() == 2));
        assert!(matches!(o.next_batch(10, 25).await, Batch::Frames(f) if f.len() == 2));
        assert!(matches!(o.next_batch(10, 1).await, Batch::Frames(f) if f.len() == 1));
    }

    #[tokio::test]
    async fn room_for_wakes_when_the_writer_drains() {
        let o = std::sync::Arc::new(Outbox::new(1, 1000));
        o.push(&frame(1));
        let waiter = tokio::spawn({
            let o = o.clone();
            async move { o.room_for(1).await }
        });
        tokio::task::yield_now().await;
        o.written(1, 1);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
