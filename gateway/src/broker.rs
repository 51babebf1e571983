//! Where instance frames come from: Redis pub/sub across pods, or in process for the
//! single-process mode (D33). The hub talks to both through [`Broker`].

pub mod memory;
pub mod redis;

use std::sync::Arc;
use uuid::Uuid;

/// Errors subscribing to an instance channel.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Redis refused or could not be reached.
    #[error("redis error")]
    Redis(#[from] fred::error::Error),
}

/// What history holds after a resuming client's offset (SPEC §5.7).
#[derive(Debug, Default)]
pub struct History {
    /// Frames after the offset are missing: the client gets `stream.gap` first.
    pub gap: bool,
    /// The retained frames after the offset, oldest first, with their offsets.
    pub frames: Vec<(ryze_core::wire::Offset, bytes::Bytes)>,
}

impl History {
    /// Nothing retained after the offset, and something was missed.
    pub fn gap() -> History {
        History {
            gap: true,
            frames: Vec::new(),
        }
    }
}

/// The fan-out bus as the hub sees it.
#[derive(Clone)]
pub enum Broker {
    /// In-process: the embedded publisher hands frames straight to the hub.
    Memory(Arc<memory::MemoryBroker>),
    /// Redis pub/sub (or sharded pub/sub on a cluster).
    Redis(Arc<redis::RedisBroker>),
}

impl Broker {
    /// Subscribes to the instance's channel; returns once the subscription is confirmed.
    pub async fn subscribe(&self, id: Uuid) -> Result<(), BrokerError> {
        match self {
            Broker::Memory(_) => Ok(()),
            Broker::Redis(r) => r.subscribe(id).await,
        }
    }

    /// Waits until the instance's subscription is confirmed on the current connection (always
    /// at once in process); `false` at the deadline.
    pub async fn wait_confirmed(&self, id: Uuid, deadline: tokio::time::Instant) -> bool {
        match self {
            Broker::Memory(_) => true,
            Broker::Redis(r) => r.wait_confirmed(id, deadline).await,
        }
    }

    /// Drops the instance's subscription (errors are logged: Redis forgets it on reconnect).
    pub async fn unsubscribe(&self, id: Uuid) {
        if let Broker::Redis(r) = self {
            r.unsubscribe(id).await;
        }
    }

    /// Connected, and every wanted subscription (and the control channel) confirmed; else why not.
    pub fn readiness(&self) -> Result<(), &'static str> {
        match self {
            Broker::Memory(_) => Ok(()),
            Broker::Redis(r) => r.readiness(),
        }
    }

    /// (wanted, confirmed) instance subscriptions.
    pub fn subscription_counts(&self) -> (usize, usize) {
        match self {
            Broker::Memory(_) => (0, 0),
            Broker::Redis(r) => r.subscription_counts(),
        }
    }

    /// The retained frames after `since` (at most `max`). Without Redis, or when history
    /// cannot be read, everything after `since` counts as lost: a gap, never a silent hole.
    pub async fn history_after(
        &self,
        id: Uuid,
        since: ryze_core::wire::Offset,
        max: usize,
    ) -> History {
        match self.read_history(id, since, max).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(instance.id = %id, error = %e, "reading history failed; sending a gap");
                History::gap()
            }
        }
    }

    /// Where the instance's history stands now (its newest offset, or [`Offset::ZERO`]);
    /// `None` without Redis or when it cannot be read (logged).
    ///
    /// [`Offset::ZERO`]: ryze_core::wire::Offset::ZERO
    pub async fn history_tail(&self, id: Uuid) -> Option<ryze_core::wire::Offset> {
        match self {
            Broker::Memory(_) => None,
            Broker::Redis(r) => match r.history_tail(id).await {
                Ok(tail) => Some(tail),
                Err(e) => {
                    tracing::warn!(instance.id = %id, error = %e, "reading where history stands failed; a resubscribe before the first frame will not catch up");
                    None
                }
            },
        }
    }

    /// Like [`Broker::history_after`], but a failed read is an error (the caller may retry)
    /// rather than a gap. Without Redis there is no history: a gap.
    pub async fn read_history(
        &self,
        id: Uuid,
        since: ryze_core::wire::Offset,
        max: usize,
    ) -> Result<History, BrokerError> {
        match self {
            Broker::Memory(_) => Ok(History::gap()),
            Broker::Redis(r) => Ok(r.history_after(id, since, max).await?),
        }
    }

    /// A resumable client of the instance joined: history must keep the instance's frames
    /// while it may come back (the publisher appends while the resume key exists).
    pub fn mark_resumable(&self, id: Uuid) {
        if let Broker::Redis(r) = self {
            r.mark_resumable(id);
        }
    }

    /// The command connection (rate limiting, health), when Redis is configured.
    pub fn redis(&self) -> Option<&Arc<redis::RedisBroker>> {
        match self {
            Broker::Memory(_) => None,
            Broker::Redis(r) => Some(r),
        }
    }
}
