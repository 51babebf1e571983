//! Sentinel only: keeps the processes' clients on the primary the Sentinels name now.
//!
//! fred asks the Sentinels where the primary is only when it connects. A primary that was
//! failed over while it was paused or cut off comes back still believing it is the primary,
//! and keeps its clients until a Sentinel notices and demotes it (a Sentinel reads each
//! server's `INFO` only every 10 s). Meanwhile a publisher still connected there writes
//! frames the Sentinels' primary never sees (they vanish when the old primary resyncs), and
//! pods that connected after the failover sit on the new primary and receive none of them.
//!
//! [`PrimaryWatch::run`] asks every Sentinel, once per probe interval (D38), which primary
//! it names, takes the answer with the highest `config-epoch` (the configuration the
//! Sentinels converge on), and reconnects every client that is connected elsewhere; fred asks
//! the Sentinels again on that reconnect.

use super::RedisTarget;
use fred::clients::SentinelClient;
use fred::prelude::*;
use fred::types::config::{SentinelConfig, ServerConfig};
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

/// A primary as one Sentinel names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    /// Its address as the Sentinels announce it (what fred connects to).
    pub host: String,
    /// Its port.
    pub port: u16,
    /// The Sentinel's `config-epoch` for the service: the newest configuration wins.
    pub epoch: u64,
}

/// The Sentinels of one `redis[s]-sentinel://` URL, asked for the primary.
pub struct PrimaryWatch {
    sentinels: Vec<SentinelClient>,
    service: String,
    interval: Duration,
    stall_timeout: Duration,
}

impl PrimaryWatch {
    /// `None` unless `target` names a Sentinel-managed primary. Builds one client per listed
    /// Sentinel (their credentials and TLS as fred uses them, our timeouts, keepalive and
    /// reconnect policy) and starts connecting.
    pub fn new(target: &RedisTarget) -> Option<PrimaryWatch> {
        let ServerConfig::Sentinel {
            hosts,
            service_name,
            username,
            password,
        } = &target.config.server
        else {
            return None;
        };
        let sentinels = hosts
            .iter()
            .map(|server| {
                let config = SentinelConfig {
                    host: server.host.to_string(),
                    port: server.port,
                    username: username.clone(),
                    password: password.clone(),
                    tls: target.config.tls.clone(),
                };
                let client = SentinelClient::new(
                    config,
                    None,
                    Some(super::base_connection()),
                    Some(super::reconnect_policy()),
                );
                client.connect();
                client
            })
            .collect();
        Some(PrimaryWatch {
            sentinels,
            service: service_name.clone(),
            interval: crate::liveness::probe_interval(target.stall_timeout),
            stall_timeout: target.stall_timeout,
        })
    }

    /// The primary the Sentinels name now: the answer with the newest configuration among
    /// those that answered within one interval. `None` when none answered.
    pub async fn named(&self) -> Option<Named> {
        let asks = self.sentinels.iter().map(|s| async move {
            if !s.is_connected() {
                return None;
            }
            let fields: HashMap<String, String> =
                tokio::time::timeout(self.interval, s.master(self.service.as_str()))
                    .await
                    .ok()?
                    .ok()?;
            Some(Named {
                host: fields.get("ip")?.clone(),
                port: fields.get("port")?.parse().ok()?,
                epoch: fields.get("config-epoch")?.parse().ok()?,
            })
        });
        newest(
            futures_util::future::join_all(asks)
                .await
                .into_iter()
                .flatten(),
        )
    }

    /// [`PrimaryWatch::run`] until `stop` resolves (the caller's shutdown).
    pub async fn run_until(
        self: std::sync::Arc<Self>,
        clients: Vec<(&'static str, Client)>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::select! {
            _ = stop => {}
            _ = self.run(clients) => {}
        }
    }

    /// Runs until dropped: every probe interval, reconnects each of `clients` (named for the
    /// log line) that is connected to another server than the one the Sentinels name.
    pub async fn run(&self, clients: Vec<(&'static str, Client)>) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A forced reconnect asks the Sentinels again; one that lagged behind the others may
        // still name the old primary, so a client is moved again, but not before its last
        // move had time to finish.
        let settle = self.interval * 3;
        let mut moved: Vec<Option<Instant>> = vec![None; clients.len()];
        loop {
            tick.tick().await;
            let Some(named) = self.named().await else {
                continue;
            };
            for ((connection, client), moved) in clients.iter().zip(moved.iter_mut()) {
                if moved.is_some_and(|at| at.elapsed() < settle) {
                    continue;
                }
                let Some(on) = elsewhere(&client.active_connections(), &named) else {
                    continue;
                };
                tracing::warn!(
                    connection = *connection,
                    redis.server = %on,
                    redis.primary = %format!("{}:{}", named.host, named.port),
                    "the Sentinels name another Redis primary than this connection's \
                     (failed over while this one was unreachable); reconnecting"
                );
                *moved = Some(Instant::now());
                crate::liveness::replace(client.clone(), self.stall_timeout);
            }
        }
    }
}

/// The answer with the highest `config-epoch` (the first of equals).
fn newest(answers: impl IntoIterator<Item = Named>) -> Option<Named> {
    answers
        .into_iter()
        .fold(None, |best: Option<Named>, a| match best {
            Some(b) if b.epoch >= a.epoch => Some(b),
            _ => Some(a),
        })
}

/// The server a client is connected to when it is not `named` (`None` when it is, or when
/// it has no connection: a reconnect is under way and will ask the Sentinels anyway).
fn elsewhere(active: &[Server], named: &Named) -> Option<Server> {
    let first = active.first()?;
    let on_named = active
        .iter()
        .any(|s| s.port == named.port && *s.host == *named.host);
    (!on_named).then(|| first.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(port: u16, epoch: u64) -> Named {
        Named {
            host: "10.0.0.1".into(),
            port,
            epoch,
        }
    }

    #[test]
    fn the_newest_configuration_wins_whatever_the_order() {
        let answers = [named(1, 3), named(2, 4), named(1, 3)];
        assert_eq!(newest(answers.clone()), Some(named(2, 4)));
        let mut reversed = answers.to_vec();
        reversed.reverse();
        assert_eq!(newest(reversed), Some(named(2, 4)));
        assert_eq!(newest([named(1, 0)]), Some(named(1, 0)));
        assert_eq!(newest(Vec::new()), None);
    }

    #[test]
    fn only_a_client_connected_to_another_server_is_moved() {
        let primary = named(6379, 1);
        let on = |host: &str, port| Server::new(host, port);
        assert_eq!(elsewhere(&[on("10.0.0.1", 6379)], &primary), None);
        assert_eq!(
            elsewhere(&[on("10.0.0.1", 6380)], &primary),
            Some(on("10.0.0.1", 6380))
        );
        assert_eq!(
            elsewhere(&[on("10.0.0.2", 6379)], &primary),
            Some(on("10.0.0.2", 6379))
        );
        // Reconnecting: nothing to move.
        assert_eq!(elsewhere(&[], &primary), None);
    }
}
