//! A component that runs inside the gateway's process: the embedded publisher
//! (`--embedded-publisher`). The gateway knows it only through [`Guest`]; the binary composes
//! the two, so this crate depends on `ryze-core` alone.

use prometheus_client::registry::Registry;
use ryze_core::bus::{Bus, BusError};
use ryze_core::channel::Names;
use ryze_core::redis::RedisTarget;
use ryze_core::store::Store;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What the gateway lends its guest.
pub struct Host {
    /// The gateway's Postgres store.
    pub store: Store,
    /// Where the guest publishes.
    pub fanout: Fanout,
    /// Channel and key names, hash-tagged as the gateway's.
    pub names: Names,
    /// Tracks the guest's background tasks with the gateway's, so shutdown waits for them.
    pub tasks: TaskTracker,
    /// Cancelled when the gateway stops its background work.
    pub stop: CancellationToken,
}

/// Where the gateway's hub takes frames from.
pub enum Fanout {
    /// No Redis: the in-process bus into the hub.
    InProcess(Arc<dyn Bus>),
    /// `REDIS_URL`, ready to connect: the guest publishes there itself, as a standalone
    /// publisher would.
    Redis(RedisTarget),
}

/// A component served by the gateway's process.
pub trait Guest: Send {
    /// Registers its metric families in the gateway's registry, so `/metrics` is one exposition.
    fn register_metrics(&mut self, registry: &mut Registry);
    /// Starts its tasks and returns the routes it serves on the public listener.
    fn start(self: Box<Self>, host: Host) -> Result<axum::Router, BusError>;
}
