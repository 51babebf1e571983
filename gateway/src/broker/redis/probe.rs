//! Liveness of the pod's two Redis connections (SPEC D38).
//!
//! A black-holed connection (open, but nothing flows either way) raises no error and fires no
//! reconnect, so the pod proves both connections end to end instead of trusting the socket:
//! every probe interval the command connection PUBLISHes to this pod's own probe channel, to
//! which the subscriber connection is subscribed.
//! - The PUBLISH unanswered within the stall timeout: the command connection is stalled.
//! - Published, yet nothing at all (probe, frame or control message) received on the
//!   subscriber for longer than the stall timeout: the subscriber connection is stalled.
//!
//! A stalled connection is counted (`ryze_gateway_redis_stalls_total{connection}`), logged at
//! WARN with how long it was silent, and replaced; the pod is not ready from the moment the
//! stall is seen until the new subscriber connection has every channel confirmed again.

use super::RedisBroker;
use fred::prelude::*;
use ryze_core::liveness::{replace, ticker};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

impl RedisBroker {
    /// The probe loop on the command connection.
    pub(super) async fn probe_commands(self: Arc<Self>, shutdown: CancellationToken) {
        let stall = self.subscriber_silence.timeout();
        let mut tick = ticker(stall);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if !self.commands.is_connected() {
                continue;
            }
            let publish = self
                .commands
                .publish::<i64, _, _>(self.probe_channel.as_str(), "1");
            match tokio::time::timeout(stall, publish).await {
                Ok(Ok(_receivers)) => {
                    self.commands_alive.answered();
                    self.subscriber_silence.probe_sent();
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "liveness probe failed");
                    self.judge_commands(stall);
                }
                Err(_) => self.judge_commands(stall),
            }
            self.probe_shards(stall).await;
        }
    }

    /// Cluster only: one SPUBLISH per sharded probe channel, all at once; a master that stays
    /// silent past the stall timeout is a command-connection stall (counted, logged and the
    /// connection replaced once per episode, like the plain probe's).
    async fn probe_shards(&self, stall: Duration) {
        let sends = self.shard_probes.channels().map(|channel| async move {
            let publish = self.commands.spublish::<i64, _, _>(channel, "1");
            match tokio::time::timeout(stall, publish).await {
                Ok(Ok(_)) => {
                    self.shard_probes.answered(channel);
                    return;
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, channel, "sharded liveness probe failed")
                }
                Err(_) => {}
            }
            self.commands_stalled(self.shard_probes.failed(channel), stall);
        });
        futures_util::future::join_all(sends).await;
    }

    /// The watch over the subscriber connection.
    pub(super) async fn watch_subscriber(self: Arc<Self>, shutdown: CancellationToken) {
        let stall = self.subscriber_silence.timeout();
        let mut tick = ticker(stall);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if !self.subscriber.is_connected() {
                continue;
            }
            let silent = self.subscriber_silence.stalled();
            let Some(silent) = silent.or_else(|| self.shard_probes.stalled()) else {
                continue;
            };
            self.stalled("subscriber", silent);
            {
                // Nothing counts as confirmed until resubscribed on the new connection.
                let mut s = self.lock();
                s.confirmed.clear();
                s.control_confirmed = false;
            }
            // A whole timeout for the replacement before it is judged again.
            self.subscriber_silence.reset();
            self.shard_probes.reset();
            replace(self.subscriber.clone(), stall);
        }
    }

    /// After a failed probe: silent past the stall timeout is a stall (fred's own check of
    /// unanswered commands may already be replacing the connection; once more is harmless),
    /// counted and logged once per episode, which ends at the next answered probe.
    fn judge_commands(&self, stall: Duration) {
        self.commands_stalled(self.commands_alive.failed(), stall);
    }

    /// A probe on the command connection failed: `silent` is set when that opens a stall
    /// episode, which is counted, logged and answered by replacing the connection.
    fn commands_stalled(&self, silent: Option<Duration>, stall: Duration) {
        if let Some(silent) = silent {
            self.stalled("commands", silent);
            replace(self.commands.clone(), stall);
        }
    }

    fn stalled(&self, connection: &'static str, silent: Duration) {
        self.metrics.redis_stall(connection);
        tracing::warn!(
            connection,
            silent_ms = silent.as_millis() as u64,
            "redis connection stalled: nothing came back for longer than REDIS_STALL_TIMEOUT; replacing it"
        );
    }

    /// Neither connection stalled: the subscriber heard back from the last probe (or the
    /// timeout has not passed), and the command connection completed a probe recently.
    pub(super) fn is_live(&self) -> bool {
        self.subscriber_silence.stalled().is_none()
            && self.shard_probes.stalled().is_none()
            && self.commands_alive.is_live()
            && self.shard_probes.commands_live()
    }
}
