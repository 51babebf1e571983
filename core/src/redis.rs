//! `REDIS_URL` parsing and the Redis client settings both processes use (CONTRACT §2, §5).

use fred::prelude::*;
use fred::types::config::UnresponsiveConfig;
use std::time::Duration;

/// A parsed `REDIS_URL`.
#[derive(Debug, Clone)]
pub struct RedisTarget {
    /// fred's connection config.
    pub config: Config,
    /// `redis-cluster://`: instance channels use sharded pub/sub.
    pub clustered: bool,
}

impl RedisTarget {
    /// Parses `redis://` or `redis-cluster://[user:pass@]host:port,host:port`; `rediss://` is
    /// refused while the build has no TLS.
    pub fn parse(url: &str) -> Result<RedisTarget, String> {
        if let Some(rest) = url.strip_prefix("redis-cluster://") {
            let (auth, hosts) = match rest.rsplit_once('@') {
                Some((a, h)) => (Some(a), h),
                None => (None, rest),
            };
            let hosts = hosts.trim_end_matches('/');
            let mut servers = Vec::new();
            for h in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
                let (host, port) = h
                    .rsplit_once(':')
                    .and_then(|(h, p)| p.parse::<u16>().ok().map(|p| (h, p)))
                    .ok_or_else(|| format!("cluster node {h:?} is not host:port"))?;
                servers.push(Server::new(host, port));
            }
            if servers.is_empty() {
                return Err("redis-cluster:// needs at least one host:port".into());
            }
            let mut config = Config {
                server: ServerConfig::Clustered {
                    hosts: servers,
                    policy: Default::default(),
                },
                ..Config::default()
            };
            if let Some(auth) = auth {
                let (user, pass) = auth.split_once(':').unwrap_or(("", auth));
                config.username = (!user.is_empty()).then(|| user.to_owned());
                config.password = Some(pass.to_owned());
            }
            return Ok(RedisTarget {
                config,
                clustered: true,
            });
        }
        if url.starts_with("rediss://") {
            // Refused up front rather than failing at connect time: see docs/decisions.md.
            return Err(
                "rediss:// (TLS) is not supported by this build; use redis:// on a private network"
                    .into(),
            );
        }
        if !url.starts_with("redis://") {
            return Err("must start with redis:// or redis-cluster://".into());
        }
        let config = Config::from_url(url).map_err(|e| format!("invalid URL: {}", e.details()))?;
        Ok(RedisTarget {
            config,
            clustered: false,
        })
    }

    /// A client that keeps reconnecting with capped backoff, starting without Redis too.
    pub fn client(&self, broadcast_capacity: usize) -> Result<Client, fred::error::Error> {
        let mut config = self.config.clone();
        config.fail_fast = false;
        Builder::from_config(config)
            .with_performance_config(|p| {
                p.broadcast_channel_capacity = broadcast_capacity;
            })
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(2);
                c.internal_command_timeout = Duration::from_secs(2);
                c.max_command_attempts = 2;
                c.unresponsive = UnresponsiveConfig {
                    max_timeout: Some(Duration::from_secs(5)),
                    interval: Duration::from_secs(1),
                };
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_list_their_nodes() {
        let t = RedisTarget::parse("redis-cluster://127.0.0.1:7000,127.0.0.1:7001").unwrap();
        assert!(t.clustered);
        assert!(
            matches!(t.config.server, ServerConfig::Clustered { ref hosts, .. } if hosts.len() == 2)
        );
        assert!(
            !RedisTarget::parse("redis://127.0.0.1:6379")
                .unwrap()
                .clustered
        );
        assert!(RedisTarget::parse("http://x").is_err());
        assert!(RedisTarget::parse("redis-cluster://nohost").is_err());
    }
}
