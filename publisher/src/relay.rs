//! Relays Postgres `ryze_config` notifications: drops the cache entry, and tells every gateway
//! through the control channel (`instance_deleted` closes clients; `config_changed` drops
//! cached auth). Every publisher replica relays; the messages are idempotent.

use crate::Publisher;
use ryze_core::channel::{ControlMessage, ControlOp};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs until `stop`, reconnecting the LISTEN connection with capped backoff.
pub async fn run(p: Arc<Publisher>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let listener = tokio::select! {
            _ = stop.cancelled() => return,
            l = p.store.listen_config() => l,
        };
        let mut listener = match listener {
            Ok(l) => {
                tracing::info!("listening for config changes");
                backoff = Duration::from_millis(100);
                l
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "config LISTEN connection failed");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
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
            let op = match p.store.instance_exists(id).await {
                Ok(false) => ControlOp::InstanceDeleted,
                Ok(true) => ControlOp::ConfigChanged,
                Err(e) => {
                    tracing::warn!(error = %e, instance.id = %id, "could not tell a deletion from a change");
                    ControlOp::ConfigChanged
                }
            };
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
