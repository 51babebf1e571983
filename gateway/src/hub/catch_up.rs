//! Lossless resubscribe (SPEC D38): after any resubscribe (Redis restart, failover, black
//! hole, slot move), each instance this pod holds gets, from history, what was published while
//! it was not subscribed, before any newer frame, for every client with or without `since`.
//!
//! Before resubscribing, the broker asks the hub to [`Hub::hold`] the instances: live frames
//! that arrive on the new subscription wait in the entry (bounded like a backlog), and the
//! offset of the last frame delivered is noted. Once subscribed, [`Hub::catch_up`] reads history
//! after that offset, delivers it, then delivers the held frames it did not already cover, and
//! releases the hold. History is read on the command connection, so its reply can overtake
//! live copies of the same frames still on their way over the subscriber connection: after
//! the release, live frames at or before the last one delivered from history are dropped
//! (`Entry::caught_up_through`) until a newer one arrives. Instances without offsets (history
//! off) are not held.

use super::Hub;
use crate::broker::History;
use crate::outbox::Frame;
use ryze_core::wire::{now_micros, Offset};
use std::time::Duration;
use tungstenite::Utf8Bytes;
use uuid::Uuid;

/// History reads in flight at once during a catch-up.
const CONCURRENT_READS: usize = 32;

/// How long a catch-up keeps retrying a history read that fails.
const READ_PATIENCE: Duration = Duration::from_secs(15);

impl Hub {
    /// Holds the live frames of those `ids` that have delivered a frame with an offset, and
    /// returns where each stopped.
    pub fn hold(&self, ids: &[Uuid]) -> Vec<(Uuid, Offset)> {
        let mut from = Vec::new();
        for id in ids {
            let mut shard = self.shard(*id);
            let Some(e) = shard.get_mut(id) else { continue };
            if let (Some(last), None) = (e.last_offset, &e.held) {
                e.held = Some(Vec::new());
                from.push((*id, last));
            }
        }
        from
    }

    /// Delivers, per held instance, the history after its offset and then the held frames,
    /// in offset order with nothing twice, and releases the hold (instances in parallel, a
    /// bounded number at a time).
    pub async fn catch_up(&self, from: Vec<(Uuid, Offset)>) {
        use futures_util::StreamExt;
        futures_util::stream::iter(from)
            .for_each_concurrent(CONCURRENT_READS, |(id, last)| self.catch_up_one(id, last))
            .await;
    }

    async fn catch_up_one(&self, id: Uuid, last: Offset) {
        let history = self.read_history(id, last).await;
        // From `0-0` (no stream when subscribed) there is nothing earlier to miss.
        if history.gap && last != Offset::ZERO {
            tracing::warn!(instance.id = %id, "history no longer holds everything missed while resubscribing");
        }
        let delivered = self.deliver_caught_up(id, last, history);
        tracing::info!(instance.id = %id, frames = delivered, "caught up after resubscribing");
    }

    /// History after `last`, retried while the command connection recovers (the fault that
    /// broke the subscriber often broke it too): the instance's live frames stay held
    /// meanwhile. Given up after [`READ_PATIENCE`], as a gap (logged), so the hold never
    /// outlives a Redis that stays away.
    async fn read_history(&self, id: Uuid, last: Offset) -> History {
        let give_up = tokio::time::Instant::now() + READ_PATIENCE;
        let mut pause = Duration::from_millis(100);
        loop {
            let read = self
                .0
                .broker
                .read_history(id, last, crate::resume::MAX_REPLAY);
            match read.await {
                Ok(history) => return history,
                Err(e) if tokio::time::Instant::now() + pause < give_up => {
                    tracing::debug!(instance.id = %id, error = %e, "reading history failed; retrying");
                }
                Err(e) => {
                    tracing::warn!(instance.id = %id, error = %e, "reading history failed; frames published while resubscribing are lost");
                    return History::gap();
                }
            }
            tokio::select! {
                _ = self.0.shutdown.cancelled() => return History::default(),
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// Delivers `history` (read after `last`) and then the held frames, in offset order with
    /// nothing twice, and releases the hold; returns how many frames went out.
    fn deliver_caught_up(&self, id: Uuid, last: Offset, history: History) -> u64 {
        let mut through = last;
        let mut pending: Vec<Frame> = {
            let mut shard = self.shard(id);
            let Some(e) = shard.get_mut(&id) else {
                return 0;
            };
            let held = e.held.replace(Vec::new()).unwrap_or_default();
            let e = &*e;
            history
                .frames
                .into_iter()
                .filter_map(|(offset, bytes)| {
                    let text = Utf8Bytes::try_from(bytes).ok()?;
                    Some(e.frame(text, now_micros(), Some(offset)))
                })
                .chain(held)
                .collect()
        };
        let mut delivered = 0u64;
        loop {
            for frame in pending.drain(..) {
                if frame.offset.is_some_and(|o| o <= through) {
                    continue; // already delivered from history
                }
                if let Some(o) = frame.offset {
                    through = o;
                }
                delivered += 1;
                self.deliver(self.shard(id), id, frame, false);
            }
            // Frames held while delivering go next; the hold ends when none arrived.
            let mut shard = self.shard(id);
            let Some(e) = shard.get_mut(&id) else { break };
            match e.held.take() {
                Some(more) if !more.is_empty() => {
                    e.held = Some(Vec::new());
                    pending = more;
                }
                _ => {
                    if through > last {
                        e.caught_up_through = Some(through);
                    }
                    break;
                }
            }
        }
        delivered
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::testing::hub;
    use crate::outbox::{Batch, Outbox};
    use ryze_core::wire::WireFrame;
    use std::sync::Arc;
    use std::time::Duration;

    fn at(ms: u64) -> Offset {
        Offset { ms, seq: 0 }
    }

    fn live(ms: u64) -> WireFrame {
        WireFrame {
            published_micros: 0,
            offset: Some(at(ms)),
            frame: bytes::Bytes::from(format!("frame {ms}")),
        }
    }

    fn history(ms: &[u64]) -> History {
        History {
            gap: false,
            frames: ms
                .iter()
                .map(|m| (at(*m), bytes::Bytes::from(format!("frame {m}"))))
                .collect(),
        }
    }

    /// A hub with one client of an instance, which has received live frame `first`.
    async fn one_client_after(first: u64) -> (Hub, Uuid, Arc<Outbox>, crate::hub::Membership) {
        let hub = hub();
        let id = Uuid::new_v4();
        let mut member = hub.join(id).await.unwrap();
        let outbox = Arc::new(Outbox::new(100, 1 << 20));
        member.attach(outbox.clone());
        hub.dispatch(id, live(first), false);
        (hub, id, outbox, member)
    }

    /// The texts queued for the client so far.
    async fn received(outbox: &Outbox) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(Batch::Frames(frames)) =
            tokio::time::timeout(Duration::from_millis(10), outbox.next_batch(1000, 1 << 20)).await
        {
            out.extend(frames.iter().map(|f| f.text.as_str().to_owned()));
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn live_copies_of_frames_the_catch_up_delivered_are_dropped_once() {
        let (hub, id, outbox, _member) = one_client_after(1).await;

        let from = hub.hold(&[id]);
        assert_eq!(from, vec![(id, at(1))]);
        hub.dispatch(id, live(2), false); // held: arrived during the catch-up
        assert_eq!(hub.deliver_caught_up(id, at(1), history(&[2, 3, 4])), 3);
        // Live copies of 3 and 4 were still on the subscriber connection.
        hub.dispatch(id, live(3), false);
        hub.dispatch(id, live(4), false);
        hub.dispatch(id, live(5), false);
        let names = received(&outbox).await;
        assert_eq!(
            names,
            ["frame 1", "frame 2", "frame 3", "frame 4", "frame 5"],
            "each frame once, in order"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_seam_every_live_frame_goes_out_again() {
        let (hub, id, outbox, _member) = one_client_after(1).await;
        let from = hub.hold(&[id]);
        hub.deliver_caught_up(id, from[0].1, history(&[2]));
        hub.dispatch(id, live(3), false);
        // A later frame with an older offset (a stream reset after a Redis data loss) is not
        // taken for a copy once the seam has passed.
        hub.dispatch(id, live(2), false);
        let names = received(&outbox).await;
        assert_eq!(names, ["frame 1", "frame 2", "frame 3", "frame 2"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_catch_up_that_found_nothing_drops_nothing() {
        let (hub, id, outbox, _member) = one_client_after(5).await;
        let from = hub.hold(&[id]);
        hub.deliver_caught_up(id, from[0].1, History::default());
        hub.dispatch(id, live(6), false);
        assert_eq!(received(&outbox).await, ["frame 5", "frame 6"]);
    }
}
