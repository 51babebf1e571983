//! Fan-out: one frame to every local client of an instance without ever blocking the Redis
//! reader; a client with a full queue moves the instance's delivery to its own task, which
//! waits out `WS_SLOW_CONSUMER_GRACE` before closing whoever stopped reading (D35).

use super::{Client, Entry, Hub, BACKLOG_FRAMES};
use crate::metrics::Metrics;
use crate::outbox::{Frame, Outbox, Push};
use ryze_core::close;
use ryze_core::wire::WireFrame;
use std::collections::HashMap;
use std::sync::{Arc, MutexGuard};
use tokio::sync::mpsc;
use tungstenite::Utf8Bytes;
use uuid::Uuid;

impl Hub {
    /// Delivers one frame to every local client of the instance without ever blocking the
    /// caller: a client with a full queue moves the instance's delivery to its own task.
    /// `behind`: more frames are already waiting, so they are queued for the connections'
    /// writers (which send them several per write) instead of written one by one here; so
    /// are large frames and those of an instance that is busy or wide (`Entry::direct_now`).
    pub fn dispatch(&self, id: Uuid, wire: WireFrame, behind: bool) {
        let Ok(text) = Utf8Bytes::try_from(wire.frame) else {
            self.0.metrics.frame_dropped("invalid");
            return;
        };
        let mut shard = self.shard(id);
        let Some(e) = shard.get_mut(&id) else {
            self.0.metrics.frame_dropped("no_clients");
            return;
        };
        if let Some(through) = e.caught_up_through {
            match wire.offset {
                // Delivered from history by the catch-up already.
                Some(offset) if offset <= through => return,
                _ => e.caught_up_through = None,
            }
        }
        let len = text.len();
        let frame = e.frame(text, wire.published_micros, wire.offset);
        if let Some(held) = &mut e.held {
            // A catch-up from history is under way (after a resubscribe): behind it.
            if held.len() < BACKLOG_FRAMES {
                held.push(frame);
            } else {
                self.0.metrics.frame_dropped("instance_backlog");
            }
            return;
        }
        let direct = e.direct_now(tokio::time::Instant::now(), len) && !behind;
        self.deliver(shard, id, frame, direct);
    }

    /// Delivers `frame` to the instance's clients (behind its backlog, if any), releasing the
    /// shard lock before anything that could wait.
    pub(super) fn deliver(
        &self,
        mut shard: MutexGuard<'_, HashMap<Uuid, Entry>>,
        id: Uuid,
        frame: Frame,
        write_now: bool,
    ) {
        let Some(e) = shard.get_mut(&id) else {
            self.0.metrics.frame_dropped("no_clients");
            return;
        };
        // Monotonic: the position read at subscription may be ahead of live frames that were
        // still on their way.
        e.last_offset = e.last_offset.max(frame.offset);
        if let Some(backlog) = &e.backlog {
            // Order: behind the frames already waiting.
            if backlog.try_send(frame).is_err() {
                self.0.metrics.frame_dropped("instance_backlog");
            }
            return;
        }
        let stalled = push_all(&e.clients, &frame, &self.0.metrics, write_now);
        if write_now {
            e.wrote_inline(tokio::time::Instant::now());
        }
        if stalled.is_empty() {
            return;
        }
        let (tx, rx) = mpsc::channel(BACKLOG_FRAMES);
        e.backlog = Some(tx);
        drop(shard);
        let hub = self.clone();
        self.0
            .tasks
            .spawn(async move { hub.drain_backlog(id, frame, stalled, rx).await });
    }

    /// The instance's delivery task while it has a stalled client: finish the stalled frame,
    /// then deliver the backlog in order, then hand delivery back to [`Hub::dispatch`].
    async fn drain_backlog(
        &self,
        id: Uuid,
        first: Frame,
        stalled: Vec<Arc<Outbox>>,
        mut backlog: mpsc::Receiver<Frame>,
    ) {
        self.settle(&first, stalled).await;
        loop {
            let next = {
                let mut shard = self.shard(id);
                match backlog.try_recv() {
                    Ok(frame) => {
                        let clients = shard
                            .get(&id)
                            .map(|e| e.clients.clone())
                            .unwrap_or_default();
                        Some((frame, clients))
                    }
                    Err(_) => {
                        // Empty, checked under the lock `dispatch` pushes under: nothing is lost.
                        if let Some(e) = shard.get_mut(&id) {
                            e.backlog = None;
                        }
                        None
                    }
                }
            };
            let Some((frame, clients)) = next else { return };
            let stalled = push_all(&clients, &frame, &self.0.metrics, false);
            if !stalled.is_empty() {
                self.settle(&frame, stalled).await;
            }
        }
    }

    /// Waits (all together, at most `WS_SLOW_CONSUMER_GRACE`) for full outboxes to make room
    /// for the frame; those that do not are closed as slow consumers (D7, D13, D35).
    async fn settle(&self, frame: &Frame, outboxes: Vec<Arc<Outbox>>) {
        let len = frame.text.len();
        let grace = self.0.slow_grace;
        let metrics = &self.0.metrics;
        let waits = outboxes.iter().map(|outbox| async move {
            if tokio::time::timeout(grace, outbox.room_for(len))
                .await
                .is_ok()
            {
                match outbox.push_as(frame, false) {
                    Push::Sent => return metrics.frames_sent_alike(1, frame.published_micros),
                    Push::Queued | Push::Closed => return,
                    Push::Full => {}
                }
            }
            outbox.close(close::SLOW_CONSUMER);
        });
        futures_util::future::join_all(waits).await;
    }
}

/// Pushes to every outbox (writing to idle sockets if `write_now`); returns the full ones.
/// Frames written at once are counted here, once per dispatch, rather than per delivery.
fn push_all(clients: &[Client], frame: &Frame, m: &Metrics, write_now: bool) -> Vec<Arc<Outbox>> {
    let mut sent = 0;
    let mut stalled = Vec::new();
    for c in clients {
        match c.outbox.push_as(frame, write_now) {
            Push::Sent => sent += 1,
            Push::Full => stalled.push(c.outbox.clone()),
            Push::Queued | Push::Closed => {}
        }
    }
    m.frames_sent_alike(sent, frame.published_micros);
    stalled
}
