//! A hub on the in-process broker, for the unit tests of the hub's modules.

use super::{Hub, HubOptions};
use crate::broker::{memory::MemoryBroker, Broker};
use crate::metrics::Metrics;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long the test hub waits before unsubscribing an instance nobody holds.
pub const UNSUBSCRIBE_DELAY: Duration = Duration::from_secs(1);

/// A hub with no Redis behind it.
pub fn hub() -> Hub {
    hub_draining_on(CancellationToken::new())
}

/// Like [`hub`], refusing joins once `draining` is cancelled.
pub fn hub_draining_on(draining: CancellationToken) -> Hub {
    Hub::new(
        Broker::Memory(Arc::new(MemoryBroker::default())),
        Metrics::new(0),
        TaskTracker::new(),
        CancellationToken::new(),
        HubOptions {
            unsubscribe_delay: UNSUBSCRIBE_DELAY,
            slow_grace: Duration::from_secs(1),
            draining,
        },
    )
}
