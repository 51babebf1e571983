//! Relays Postgres `ryze_config` notifications: drops the cache entry, and tells every gateway
//! through the control channel (`instance_deleted` closes clients; `config_changed` drops
//! cached auth). Every publisher replica relays; the messages are idempotent.

use crate::Publisher;
use ryze_core::channel::{ControlMessage, ControlOp};
use ryze_core::store::StoreError;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The wait before the next LISTEN attempt: doubling from [`FIRST_BACKOFF`] up to
/// [`MAX_BACKOFF`], and back to the start once a connection is made.
#[derive(Debug)]
struct Backoff(Duration);

impl Backoff {
    fn new() -> Backoff {
        Backoff(FIRST_BACKOFF)
    }

    /// This attempt's wait; the next one is twice as long, up to the cap.
    fn next(&mut self) -> Duration {
        let wait = self.0;
        self.0 = (self.0 * 2).min(MAX_BACKOFF);
        wait
    }
}

/// What the gateways are told about a notified instance: deleted when Postgres says it no
/// longer exists; a change otherwise, also when Postgres cannot say (dropping cached auth
/// is harmless, closing clients of a live instance is not).
fn control_op(exists: &Result<bool, StoreError>) -> ControlOp {
    match exists {
        Ok(false) => ControlOp::InstanceDeleted,
        Ok(true) | Err(_) => ControlOp::ConfigChanged,
    }
}

/// Runs until `stop`, reconnecting the LISTEN connection with capped backoff.
pub async fn run(p: Arc<Publisher>, stop: CancellationToken) {
    let mut backoff = Backoff::new();
    loop {
        let listener = tokio::select! {
            _ = stop.cancelled() => return,
            l = p.store.listen_config() => l,
        };
        let mut listener = match listener {
            Ok(l) => {
                tracing::info!("listening for config changes");
                backoff = Backoff::new();
                l
            }
            Err(e) => {
                let wait = backoff.next();
                tracing::warn!(error = %e, retry_in = ?wait, "config LISTEN connection failed");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                continue;
            }
        };
        // Changes made while we were not listening are unknown: forget everything.
        p.cache.clear();
        loop {
            let id = tokio::select! {
                _ = stop.cancelled() => return,
                id = listener.recv() => id,
            };
            let Some(id) = id else {
                tracing::warn!("config LISTEN connection lost; reconnecting");
                break;
            };
            p.cache.invalidate(id);
            let exists = p.store.instance_exists(id).await;
            if let Err(e) = &exists {
                tracing::warn!(error = %e, instance.id = %id, "could not tell a deletion from a change");
            }
            let op = control_op(&exists);
            let msg = ControlMessage {
                op,
                instance_id: id,
            };
            if let Err(e) = p.outlet.control(&msg).await {
                tracing::warn!(error = %e, instance.id = %id, "control message not relayed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_the_cap() {
        let mut b = Backoff::new();
        let waits: Vec<u64> = (0..8).map(|_| b.next().as_millis() as u64).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    }

    #[test]
    fn only_a_confirmed_absence_is_a_deletion() {
        assert_eq!(control_op(&Ok(false)), ControlOp::InstanceDeleted);
        assert_eq!(control_op(&Ok(true)), ControlOp::ConfigChanged);
        let unknown = Err(StoreError::ConnectTimeout);
        assert_eq!(control_op(&unknown), ControlOp::ConfigChanged);
    }
}
