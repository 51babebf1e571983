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

    /// Connected, and every wanted subscription (and the control channel) confirmed.
    pub fn is_ready(&self) -> bool {
        match self {
            Broker::Memory(_) => true,
            Broker::Redis(r) => r.is_ready(),
        }
    }

    /// (wanted, confirmed) instance subscriptions.
    pub fn subscription_counts(&self) -> (usize, usize) {
        match self {
            Broker::Memory(_) => (0, 0),
            Broker::Redis(r) => r.subscription_counts(),
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
