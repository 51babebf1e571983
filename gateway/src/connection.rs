//! One WebSocket session after its 101: a single task that reads (and discards) client
//! frames, pings, enforces the pong deadline (SPEC §5.4, D7, D27), and writes what the hub
//! could not: the replay and frames queued before the session went direct, then only what a
//! socket did not take at once (the hub writes live frames itself, see `outbox`).

mod io;
#[cfg(test)]
mod tests;

pub use io::SessionIo;

use crate::metrics::Metrics;
use crate::outbox::{Batch, Frame, Outbox, Work};
use crate::resume::Resume;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use ryze_core::close::{self, CloseCode};
use ryze_core::wire::now_micros;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, Utf8Bytes};

/// How long to try to deliver a Close frame, and then to wait for the client's reply.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// Most frames written per flush.
const BATCH_FRAMES: usize = 64;
/// About the most bytes written per flush (one larger frame still goes alone).
const BATCH_BYTES: usize = 256 * 1024;

/// Session settings.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// `WS_MAX_MESSAGE_BYTES`: larger client messages close the session with 1009.
    pub max_message_bytes: usize,
    /// `WS_PING_INTERVAL`.
    pub ping_interval: Duration,
    /// `WS_PONG_TIMEOUT`.
    pub pong_timeout: Duration,
}

/// How a session ended: the `reason` label of `ryze_gateway_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The client sent Close.
    ClientClosed,
    /// The socket failed or reached EOF without a Close.
    Gone,
    /// We closed it with this code.
    Closed(CloseCode),
}

impl Ended {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Ended::ClientClosed => "client_close",
            Ended::Gone => "gone",
            Ended::Closed(c) if c == close::SHUTDOWN => "shutdown",
            Ended::Closed(c) if c == close::REBALANCING => "rebalancing",
            Ended::Closed(c) if c == close::PONG_TIMEOUT => "pong_timeout",
            Ended::Closed(c) if c == close::SLOW_CONSUMER => "slow_consumer",
            Ended::Closed(c) if c == close::INSTANCE_DELETED => "instance_deleted",
            Ended::Closed(c) if c == close::MESSAGE_TOO_BIG => "message_too_big",
            Ended::Closed(c) if c == close::INVALID_PAYLOAD => "invalid_payload",
            Ended::Closed(c) if c == close::PROTOCOL_ERROR => "protocol_error",
            Ended::Closed(_) => "internal_error",
        }
    }
}

/// The next frames to write: the replay first (a resuming session's retained frames), then
/// the outbox. The flag says whether they came from the outbox (and count against its caps).
async fn next_batch(
    outbox: &Outbox,
    replay: &mut std::collections::VecDeque<Frame>,
) -> (Batch, bool) {
    if !replay.is_empty() {
        let n = replay.len().min(BATCH_FRAMES);
        return (Batch::Frames(replay.drain(..n).collect()), false);
    }
    (outbox.next_batch(BATCH_FRAMES, BATCH_BYTES).await, true)
}

/// Runs the session until it ends. The caller owns registration in the hub and the metrics
/// of the connection's lifetime. `resume` is empty for a connection without `since`.
///
/// A function returning an `async move` block rather than an `async fn`: an `async fn` moves
/// its arguments into locals, and the future then holds the socket, the resume state and
/// the limits twice (about 470 bytes), for the whole life of every idle connection.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would hold its arguments twice (see above)"
)]
pub fn run<'a, S>(
    mut socket: S,
    outbox: Arc<Outbox>,
    limits: SessionLimits,
    metrics: &'a Metrics,
    mut resume: Resume,
) -> impl std::future::Future<Output = Ended> + 'a
where
    S: Stream<Item = Result<Message, tungstenite::Error>>
        + Sink<Message, Error = tungstenite::Error>
        + Unpin
        + 'a,
{
    async move {
        let start = Instant::now();
        let mut ping = tokio::time::interval_at(start + limits.ping_interval, limits.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // One timer for the session, moved on each PONG: rebuilding it in every `select!` cost a
        // timer registration per batch (docs/benchmarks.md).
        let pong_deadline = tokio::time::sleep_until(start + limits.pong_timeout);
        tokio::pin!(pong_deadline);
        let mut direct = false;
        loop {
            if !direct && resume.replay.is_empty() && resume.gap.is_none() {
                direct = outbox.go_direct(resume.offsets, resume.replayed_through);
            }
            tokio::select! {
                work = outbox.work(), if direct => match work {
                    Work::Close(code) => return close_with(&mut socket, &outbox, code).await,
                    Work::Gone => return Ended::Gone,
                    // The socket did not take everything: write the rest as it makes room.
                    Work::Write => tokio::select! {
                        r = outbox.flush() => if r.is_err() { return Ended::Gone },
                        _ = outbox.closed() => {}
                        _ = &mut pong_deadline => return close_with(&mut socket, &outbox, close::PONG_TIMEOUT).await,
                    },
                },
                (batch, live) = next_batch(&outbox, &mut resume.replay), if !direct => match batch {
                    Batch::Close(code) => return close_with(&mut socket, &outbox, code).await,
                    Batch::Frames(frames) => {
                        let count = frames.len();
                        let bytes: usize = frames.iter().map(|f| f.text.len()).sum();
                        let gap = frames.front().and_then(|f| resume.take_gap(f));
                        let gaps = u64::from(gap.is_some());
                        let mut stamps: Vec<u64> = Vec::with_capacity(if live { count } else { 0 });
                        let mut texts = Vec::with_capacity(count + 1);
                        texts.extend(gap);
                        for f in frames {
                            if live {
                                if resume.already_sent(&f) {
                                    continue;
                                }
                                stamps.push(f.published_micros);
                            }
                            texts.push(resume.text_of(f));
                        }
                        let replayed = if live { 0 } else { texts.len() as u64 - gaps };
                        let write = async {
                            for text in texts {
                                socket.feed(Message::Text(text)).await?;
                            }
                            socket.flush().await
                        };
                        // A client that stops reading blocks the write: closing and the pong
                        // deadline must still be able to end the session.
                        let outcome = tokio::select! {
                            r = write => Some(r),
                            _ = outbox.closed() => None,
                            _ = &mut pong_deadline => return close_with(&mut socket, &outbox, close::PONG_TIMEOUT).await,
                        };
                        match outcome {
                            Some(Ok(())) => {
                                if live {
                                    outbox.written(count, bytes);
                                }
                                let now = now_micros();
                                metrics.frames_sent(stamps.len() as u64, stamps.into_iter().map(|s| now.saturating_sub(s) as f64 / 1e6));
                                metrics.frames_replayed(replayed, gaps);
                            }
                            Some(Err(_)) => return Ended::Gone,
                            None => {
                                let code = outbox.close_requested().unwrap_or(close::INTERNAL_ERROR);
                                return close_with(&mut socket, &outbox, code).await;
                            }
                        }
                    }
                },
                msg = socket.next() => match msg {
                    None => return Ended::Gone,
                    Some(Ok(Message::Pong(_))) => pong_deadline.as_mut().reset(Instant::now() + limits.pong_timeout),
                    Some(Ok(Message::Close(_))) => {
                        // The library queued the echo of the client's Close; send it, and nothing
                        // after it.
                        outbox.stop(close::INTERNAL_ERROR);
                        let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.flush()).await;
                        return Ended::ClientClosed;
                    }
                    Some(Ok(Message::Ping(_))) => {
                        // The library queued the PONG; flush it now rather than with the next frame,
                        // without letting a client that does not read pin the session.
                        tokio::select! {
                            r = socket.flush() => if r.is_err() { return Ended::Gone },
                            _ = outbox.closed() => {}
                            _ = &mut pong_deadline => return close_with(&mut socket, &outbox, close::PONG_TIMEOUT).await,
                        }
                    }
                    // The server consumes only PONG and Close; anything else has no effect, unless
                    // it is over the limit. The library reads whole frames up to a larger hard cap,
                    // so the socket holds no unread bytes when we close (unread bytes turn the
                    // close into a TCP reset that can swallow the Close frame).
                    Some(Ok(Message::Text(t))) if t.len() > limits.max_message_bytes => {
                        return close_with(&mut socket, &outbox, close::MESSAGE_TOO_BIG).await;
                    }
                    Some(Ok(Message::Binary(b))) if b.len() > limits.max_message_bytes => {
                        return close_with(&mut socket, &outbox, close::MESSAGE_TOO_BIG).await;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return match classify(&e) {
                        Some(code) => close_with(&mut socket, &outbox, code).await,
                        None => Ended::Gone,
                    },
                },
                _ = ping.tick() => {
                    tokio::select! {
                        r = socket.send(Message::Ping(Default::default())) => if r.is_err() { return Ended::Gone },
                        _ = outbox.closed() => {}
                        _ = &mut pong_deadline => return close_with(&mut socket, &outbox, close::PONG_TIMEOUT).await,
                    }
                }
                _ = &mut pong_deadline => return close_with(&mut socket, &outbox, close::PONG_TIMEOUT).await,
            }
        }
    }
}

/// The close code for a read error, or `None` for an ordinary disconnect.
fn classify(e: &tungstenite::Error) -> Option<CloseCode> {
    match e {
        tungstenite::Error::Capacity(_) => Some(close::MESSAGE_TOO_BIG),
        tungstenite::Error::Utf8(_) => Some(close::INVALID_PAYLOAD),
        tungstenite::Error::Protocol(_) => Some(close::PROTOCOL_ERROR),
        _ => None,
    }
}

/// Sends Close (best effort, bounded), waits briefly for the client's reply, and reports.
async fn close_with<S>(socket: &mut S, outbox: &Outbox, code: CloseCode) -> Ended
where
    S: Stream<Item = Result<Message, tungstenite::Error>>
        + Sink<Message, Error = tungstenite::Error>
        + Unpin,
{
    // Nothing after the Close frame: the hub stops writing, and frames the socket has not
    // started to take are dropped (the close wins).
    outbox.stop(code);
    let frame = CloseFrame {
        code: code.code.into(),
        reason: Utf8Bytes::from_static(code.reason),
    };
    if let Ok(Ok(())) =
        tokio::time::timeout(CLOSE_TIMEOUT, socket.send(Message::Close(Some(frame)))).await
    {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            while let Some(Ok(_)) = socket.next().await {}
        })
        .await;
    }
    Ended::Closed(code)
}
