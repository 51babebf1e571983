//! Lossless resubscribe (SPEC D38): after any resubscribe (Redis restart, failover, black
//! hole, slot move), each instance this pod holds gets, from history, what was published while
//! it was not subscribed, before any newer frame, for every client with or without `since`.
//!
//! Before resubscribing, the broker asks the hub to [`Hub::hold`] the instances: live frames
//! that arrive on the new subscription wait in the entry (bounded like a backlog), and the
//! offset of the last frame delivered is noted. Once subscribed, [`Hub::catch_up`] reads history
//! after that offset, delivers it, then delivers the held frames it did not already cover, and
//! releases the hold. Instances without offsets (history off) are not held.

use super::Hub;
use crate::outbox::Frame;
use ryze_core::wire::{now_micros, Offset};
use tungstenite::Utf8Bytes;
use uuid::Uuid;

/// History reads in flight at once during a catch-up.
const CONCURRENT_READS: usize = 32;

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
        {
            let history = self
                .0
                .broker
                .history_after(id, last, crate::resume::MAX_REPLAY)
                .await;
            if history.gap {
                tracing::warn!(instance.id = %id, "history no longer holds everything missed while resubscribing");
            }
            let mut through = last;
            let mut pending: Vec<Frame> = {
                let mut shard = self.shard(id);
                let Some(e) = shard.get_mut(&id) else { return };
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
                    _ => break,
                }
            }
            tracing::info!(instance.id = %id, frames = delivered, "caught up after resubscribing");
        }
    }
}
