//! Redis Cluster: which master holds each sharded subscription, and noticing when a slot
//! moved away (the old master drops the subscription without telling the client).

use super::RedisBroker;
use fred::prelude::*;
use fred::types::cluster::ClusterRouting;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How often the slot map is re-read to catch slots that moved to another master (see
/// `check_slot_owners`).
const SLOT_CHECK_INTERVAL: Duration = Duration::from_secs(5);

impl RedisBroker {
    /// Cluster only: `check_slot_owners` every `SLOT_CHECK_INTERVAL`, in its own task so a
    /// slow `CLUSTER SLOTS` (a node down) never holds up reconnect handling.
    pub(super) async fn watch_slots(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(SLOT_CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => self.check_slot_owners().await,
            }
        }
    }

    pub(super) fn slot_owner(&self, routing: &ClusterRouting, id: Uuid) -> Option<Server> {
        let slot = fred::util::redis_keyslot(self.names.instance_channel(id).as_bytes());
        routing.get_server(slot).cloned()
    }

    /// Cluster only, every `SLOT_CHECK_INTERVAL`: re-reads the slot map (`CLUSTER SLOTS`) and
    /// unconfirms every sharded subscription whose slot is now served by another master, so
    /// the repair tick subscribes again on the new owner (and `/readyz` fails meanwhile).
    ///
    /// Needed because a master that loses a slot (resharding, a failover seen late) drops its
    /// subscribers of that slot's channels with a server-side `sunsubscribe`, which fred
    /// discards silently: the connection stays up, so no reconnect would ever resubscribe.
    pub(super) async fn check_slot_owners(&self) {
        if !self.subscriber.is_connected() {
            return;
        }
        if let Err(e) = self.subscriber.sync_cluster().await {
            tracing::debug!(error = %e, "reading the cluster slot map failed");
            return;
        }
        let Some(routing) = self.subscriber.cached_cluster_state() else {
            return;
        };
        let moved = {
            let mut s = self.lock();
            let moved: Vec<Uuid> = s
                .confirmed
                .iter()
                .filter(|id| self.slot_owner(&routing, **id).as_ref() != s.shard_owner.get(id))
                .copied()
                .collect();
            for id in &moved {
                s.confirmed.remove(id);
                s.shard_owner.remove(id);
            }
            moved.len()
        };
        if moved > 0 {
            tracing::info!(
                subscriptions = moved,
                "cluster slots moved to another master; resubscribing there"
            );
        }
    }
}
