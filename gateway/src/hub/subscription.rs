//! An instance's subscription lifecycle: subscribed when its first holder joins (the 101
//! waits for the confirmation), unsubscribed `UNSUBSCRIBE_DELAY` after its last holder leaves,
//! and never two broker calls in flight for one instance.

use super::{Entry, Hub, JoinError, Membership, Sub, SUBSCRIBE_TIMEOUT};
use tokio::sync::watch;
use tokio::time::Instant;
use uuid::Uuid;

enum Step {
    Ready,
    Wait(watch::Receiver<bool>),
    Start(watch::Sender<bool>, watch::Receiver<bool>),
}

impl Hub {
    /// Holds the instance and waits until its channel subscription is confirmed on the current
    /// broker connection. Dropping the membership (or the client attached to it) releases it.
    pub async fn join(&self, id: Uuid) -> Result<Membership, JoinError> {
        if self.0.draining.is_cancelled() {
            return Err(JoinError::Unavailable);
        }
        {
            let mut shard = self.shard(id);
            let e = shard.entry(id).or_insert_with(Entry::new);
            if e.holders == 0 {
                e.generation += 1;
            }
            e.holders += 1;
        }
        let membership = Membership {
            hub: self.clone(),
            id,
            conn: None,
        };
        let deadline = Instant::now() + SUBSCRIBE_TIMEOUT;
        loop {
            let step = {
                let mut shard = self.shard(id);
                let Some(e) = shard.get_mut(&id) else {
                    return Err(JoinError::Unavailable);
                };
                match &e.sub {
                    Sub::Active => Step::Ready,
                    Sub::Pending(rx) | Sub::Unsubscribing(rx) => Step::Wait(rx.clone()),
                    Sub::Idle => {
                        let (tx, rx) = watch::channel(false);
                        e.sub = Sub::Pending(rx.clone());
                        Step::Start(tx, rx)
                    }
                }
            };
            match step {
                Step::Ready => {
                    // Active in the hub; after a Redis reconnect it may not be confirmed yet.
                    return if self.0.broker.wait_confirmed(id, deadline).await {
                        Ok(membership)
                    } else {
                        Err(JoinError::Unavailable)
                    };
                }
                Step::Start(tx, mut rx) => {
                    let hub = self.clone();
                    self.0
                        .tasks
                        .spawn(async move { hub.subscribe(id, tx).await });
                    if tokio::time::timeout_at(deadline, rx.wait_for(|done| *done))
                        .await
                        .is_err()
                    {
                        return Err(JoinError::Unavailable);
                    }
                }
                Step::Wait(mut rx) => {
                    if tokio::time::timeout_at(deadline, rx.wait_for(|done| *done))
                        .await
                        .is_err()
                    {
                        return Err(JoinError::Unavailable);
                    }
                }
            }
            // Look again: the subscription resolved (either way), or an unsubscribe finished.
            let failed = {
                let shard = self.shard(id);
                shard.get(&id).is_none_or(|e| matches!(e.sub, Sub::Idle))
            };
            if failed {
                return Err(JoinError::Unavailable);
            }
        }
    }

    pub(super) async fn subscribe(&self, id: Uuid, done: watch::Sender<bool>) {
        let (ok, tail) = match self.0.broker.subscribe(id).await {
            // Where history stood once subscribed: what follows is owed to the clients about
            // to join, so a resubscribe before the first frame arrives catches up from there
            // (D38). Without it a pod that had delivered nothing yet would not catch up.
            Ok(()) => (true, self.0.broker.history_tail(id).await),
            Err(e) => {
                tracing::warn!(instance.id = %id, error = %e, "instance subscription failed");
                (false, None)
            }
        };
        {
            let mut shard = self.shard(id);
            // The entry cannot be removed while Pending (see `expire`).
            if let Some(e) = shard.get_mut(&id) {
                e.sub = if ok { Sub::Active } else { Sub::Idle };
                e.last_offset = e.last_offset.max(tail);
            }
        }
        let _ = done.send(true);
    }

    pub(super) fn leave(&self, id: Uuid, conn: Option<u64>) {
        let generation = {
            let mut shard = self.shard(id);
            let Some(e) = shard.get_mut(&id) else { return };
            if let Some(conn) = conn {
                if let Some(pos) = e.clients.iter().position(|c| c.conn == conn) {
                    e.clients.swap_remove(pos);
                }
                if let Some(pos) = e.resumable.iter().position(|c| *c == conn) {
                    e.resumable.swap_remove(pos);
                }
                if e.clients.is_empty() {
                    e.clients = Vec::new();
                }
            }
            e.holders = e.holders.saturating_sub(1);
            if e.holders > 0 {
                return;
            }
            e.generation
        };
        self.schedule_expire(id, generation);
    }

    fn schedule_expire(&self, id: Uuid, generation: u64) {
        let hub = self.clone();
        self.0.tasks.spawn(async move {
            tokio::select! {
                _ = hub.0.shutdown.cancelled() => {}
                _ = tokio::time::sleep(hub.0.unsubscribe_delay) => hub.expire(id, generation).await,
            }
        });
    }

    async fn expire(&self, id: Uuid, generation: u64) {
        let done = {
            let mut shard = self.shard(id);
            let Some(e) = shard.get_mut(&id) else { return };
            if e.holders > 0 || e.generation != generation {
                return;
            }
            match e.sub {
                Sub::Idle => {
                    shard.remove(&id);
                    return;
                }
                // Never overlap broker calls for one instance: look again later.
                Sub::Pending(_) | Sub::Unsubscribing(_) => None,
                Sub::Active => {
                    let (tx, rx) = watch::channel(false);
                    e.sub = Sub::Unsubscribing(rx);
                    Some(tx)
                }
            }
        };
        let Some(done) = done else {
            self.schedule_expire(id, generation);
            return;
        };
        self.0.broker.unsubscribe(id).await;
        let resubscribe = {
            let mut shard = self.shard(id);
            match shard.get_mut(&id) {
                Some(e) if e.holders == 0 => {
                    shard.remove(&id);
                    None
                }
                Some(e) => {
                    // Someone joined while we unsubscribed: subscribe again for them.
                    let (tx, rx) = watch::channel(false);
                    e.sub = Sub::Pending(rx);
                    Some(tx)
                }
                None => None,
            }
        };
        let _ = done.send(true);
        if let Some(tx) = resubscribe {
            self.subscribe(id, tx).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::testing::{hub, UNSUBSCRIBE_DELAY};
    use std::time::Duration;

    fn state(hub: &Hub, id: Uuid) -> Option<&'static str> {
        hub.shard(id).get(&id).map(|e| match e.sub {
            Sub::Idle => "idle",
            Sub::Pending(_) => "pending",
            Sub::Active => "active",
            Sub::Unsubscribing(_) => "unsubscribing",
        })
    }

    /// Lets spawned hub tasks run (paused time advances only when every task is idle).
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_instance_is_unsubscribed_only_after_the_delay_once_nobody_holds_it() {
        let hub = hub();
        let id = Uuid::new_v4();
        let member = hub.join(id).await.unwrap();
        assert_eq!(state(&hub, id), Some("active"));
        drop(member);
        assert!(!hub.has_holders(id));
        tokio::time::sleep(UNSUBSCRIBE_DELAY - Duration::from_millis(1)).await;
        assert_eq!(
            state(&hub, id),
            Some("active"),
            "still subscribed within the delay"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
        settle().await;
        assert_eq!(state(&hub, id), None, "forgotten after the delay");
    }

    #[tokio::test(start_paused = true)]
    async fn rejoining_within_the_delay_keeps_the_subscription_and_a_stale_expiry_does_nothing() {
        let hub = hub();
        let id = Uuid::new_v4();
        drop(hub.join(id).await.unwrap());
        tokio::time::sleep(UNSUBSCRIBE_DELAY / 2).await;
        let member = hub.join(id).await.unwrap();
        // The first leave's expiry fires now, for an older generation.
        tokio::time::sleep(UNSUBSCRIBE_DELAY).await;
        settle().await;
        assert_eq!(state(&hub, id), Some("active"));
        assert!(hub.has_holders(id));
        drop(member);
        tokio::time::sleep(UNSUBSCRIBE_DELAY * 2).await;
        settle().await;
        assert_eq!(state(&hub, id), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_draining_hub_refuses_joins() {
        let draining = tokio_util::sync::CancellationToken::new();
        let hub = crate::hub::testing::hub_draining_on(draining.clone());
        let id = Uuid::new_v4();
        assert!(hub.join(id).await.is_ok());
        draining.cancel();
        assert!(matches!(hub.join(id).await, Err(JoinError::Unavailable)));
    }
}
