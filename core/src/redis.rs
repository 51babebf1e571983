//! `REDIS_URL` parsing and the Redis client settings both processes use (CONTRACT §2, §5).
//!
//! URL forms (`s` after `redis` = TLS):
//! - `redis[s]://[user:pass@]host[:port][/db]`: one server.
//! - `redis[s]-cluster://[user:pass@]host:port,host:port,…`: Redis Cluster (sharded pub/sub).
//! - `redis[s]-sentinel://[user:pass@]host[:port],host[:port],…[/db]?sentinelServiceName=NAME
//!   [&sentinelUsername=U&sentinelPassword=P]`: the primary that the listed Sentinels name
//!   (port 26379 when left out). fred's own `&node=host:port` form is accepted too. The
//!   credentials before `@` are the primary's; `sentinelUsername`/`sentinelPassword` the
//!   Sentinels' (when they differ).
//!
//! TLS verifies the server against `REDIS_TLS_CA_FILE` or the system roots (see
//! [`crate::tls`]); [`RedisTarget::with_tls`] installs the configuration built at start-up.
//! Every connection gets TCP keepalive ([`KEEPALIVE_IDLE`], [`KEEPALIVE_INTERVAL`],
//! [`KEEPALIVE_RETRIES`]) and `TCP_NODELAY`.

mod connection;
pub mod primary;

use connection::{base_connection, log_connection_failures, reconnect_policy};
pub use connection::{KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_RETRIES};

use crate::tls::{TlsError, TlsFiles};
use fred::prelude::*;
use fred::types::config::{TlsConfig, TlsHostMapping, UnresponsiveConfig};
use std::sync::Arc;
use std::time::Duration;

/// Why a `REDIS_URL` was refused. Messages never repeat the URL (it may hold a password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisUrlError {
    /// Not one of the six schemes.
    #[error(
        "must start with redis://, rediss://, redis-cluster://, rediss-cluster://, \
         redis-sentinel:// or rediss-sentinel://"
    )]
    Scheme,
    /// A cluster or sentinel URL without any host.
    #[error("{scheme}:// needs at least one host:port")]
    NoHosts {
        /// The scheme, e.g. `redis-cluster`.
        scheme: &'static str,
    },
    /// One entry of the host list is not `host:port`.
    #[error("node {node:?} is not host:port")]
    BadNode {
        /// The offending entry (a host list never holds credentials).
        node: String,
    },
    /// A sentinel URL without `sentinelServiceName`.
    #[error("{scheme}:// needs ?sentinelServiceName=NAME (the primary's name in the Sentinels)")]
    NoServiceName {
        /// The scheme, e.g. `redis-sentinel`.
        scheme: &'static str,
    },
    /// fred refused the rest of the URL (bad port, database, escape).
    #[error("invalid URL: {0}")]
    Invalid(String),
}

/// Which deployment a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// One server.
    Standalone,
    /// Redis Cluster: instance channels use sharded pub/sub.
    Cluster,
    /// A primary managed by Redis Sentinel (fred asks the Sentinels where it is, again after
    /// every disconnect, so a failover is followed without a restart).
    Sentinel,
}

/// A parsed `REDIS_URL`.
#[derive(Debug, Clone)]
pub struct RedisTarget {
    /// fred's connection config (its `tls` is set by [`RedisTarget::with_tls`], or from the
    /// system roots by [`RedisTarget::client`]).
    pub config: Config,
    /// `redis[s]-cluster://`: instance channels use sharded pub/sub.
    pub clustered: bool,
    /// Which deployment the URL names.
    pub topology: Topology,
    /// The URL asks for TLS (`rediss…`).
    pub tls: bool,
    /// `REDIS_STALL_TIMEOUT` (D38): a command unanswered this long drops its connection.
    pub stall_timeout: Duration,
    /// Each command is written at most once ([`RedisTarget::write_once`]).
    pub write_once: bool,
}

/// `REDIS_STALL_TIMEOUT`'s default (SPEC D38).
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(3);

impl RedisTarget {
    /// Parses any of the URL forms in the module docs. Files are not read here: TLS settings
    /// come with [`RedisTarget::with_tls`] / [`RedisTarget::with_tls_files`].
    pub fn parse(url: &str) -> Result<RedisTarget, RedisUrlError> {
        let (scheme, rest) = url.split_once("://").ok_or(RedisUrlError::Scheme)?;
        let (scheme, tls, topology) = match scheme.to_ascii_lowercase().as_str() {
            "redis" => ("redis", false, Topology::Standalone),
            "rediss" => ("rediss", true, Topology::Standalone),
            "redis-cluster" => ("redis-cluster", false, Topology::Cluster),
            "rediss-cluster" => ("rediss-cluster", true, Topology::Cluster),
            "redis-sentinel" => ("redis-sentinel", false, Topology::Sentinel),
            "rediss-sentinel" => ("rediss-sentinel", true, Topology::Sentinel),
            _ => return Err(RedisUrlError::Scheme),
        };
        // fred is always handed the plain scheme: it would otherwise build a TLS connector of
        // its own (reading the system store on every parse); ours comes from `with_tls`.
        let invalid = |e: fred::error::Error| RedisUrlError::Invalid(e.details().to_owned());
        let config = match topology {
            Topology::Standalone => {
                Config::from_url_centralized(&format!("redis://{rest}")).map_err(invalid)?
            }
            Topology::Cluster => {
                let fred_url = with_node_params("redis-cluster", scheme, rest, None)?;
                Config::from_url_clustered(&fred_url).map_err(invalid)?
            }
            Topology::Sentinel => {
                let fred_url = with_node_params("redis-sentinel", scheme, rest, Some(26379))?;
                if !fred_url.contains("sentinelServiceName=") {
                    return Err(RedisUrlError::NoServiceName { scheme });
                }
                Config::from_url_sentinel(&fred_url).map_err(invalid)?
            }
        };
        Ok(RedisTarget {
            config,
            clustered: topology == Topology::Cluster,
            topology,
            tls,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            write_once: false,
        })
    }

    /// Never writes a command twice: one in flight when its connection fails is answered with
    /// an error instead of being sent again on the next connection. For commands that are not
    /// idempotent (the publisher's history script): the first write may still run — a wedged
    /// server reads it when it wakes — so a resend would publish the frame twice.
    pub fn write_once(mut self) -> RedisTarget {
        self.write_once = true;
        self
    }

    /// Judges connections by `stall_timeout` (`REDIS_STALL_TIMEOUT`) instead of the default.
    pub fn with_stall_timeout(mut self, stall_timeout: Duration) -> RedisTarget {
        self.stall_timeout = stall_timeout;
        self
    }

    /// Uses `tls` for the connections when the URL asks for TLS (a plain URL ignores it).
    pub fn with_tls(mut self, tls: Arc<rustls::ClientConfig>) -> RedisTarget {
        if self.tls {
            let mut config = TlsConfig::from((*tls).clone());
            // On a cluster, verify each node against the host name it announces (Redis 7
            // `cluster-announce-hostname`) or else the seed host's name, not a bare IP.
            if self.clustered {
                config.hostnames = TlsHostMapping::DefaultHost;
            }
            self.config.tls = Some(config);
        }
        self
    }

    /// Reads `files` and installs the result ([`RedisTarget::with_tls`]) when the URL asks for
    /// TLS; a plain URL reads nothing.
    pub fn with_tls_files(self, files: &TlsFiles) -> Result<RedisTarget, TlsError> {
        if !self.tls {
            return Ok(self);
        }
        let tls = Arc::new(files.client_config()?);
        Ok(self.with_tls(tls))
    }

    /// A client that keeps reconnecting with capped backoff, starting without Redis too.
    ///
    /// A TLS URL without [`RedisTarget::with_tls`] verifies against the system roots. Called
    /// within a Tokio runtime, it also logs failed connection attempts at WARN, rate-limited
    /// (fred itself reports them only at DEBUG), naming a failed TLS handshake as such, so a
    /// certificate that does not verify is visible while the pod stays unready.
    pub fn client(&self, broadcast_capacity: usize) -> Result<Client, fred::error::Error> {
        let mut config = self.config.clone();
        config.fail_fast = false;
        if self.tls && config.tls.is_none() {
            let tls = crate::tls::client_config(None, None)
                .map_err(|e| fred::error::Error::new(fred::error::ErrorKind::Tls, e.to_string()))?;
            config.tls = Some(TlsConfig::from(tls));
        }
        let client = Builder::from_config(config)
            .with_performance_config(|p| {
                p.broadcast_channel_capacity = broadcast_capacity;
            })
            .with_connection_config(|c| {
                *c = base_connection();
                c.max_command_attempts = if self.write_once { 1 } else { 2 };
                // fred's own check of commands in flight: one unanswered for the stall timeout
                // drops the connection (D38). An idle connection has nothing in flight; the
                // processes' probes (crate::liveness) make sure it is never idle for long.
                c.unresponsive = UnresponsiveConfig {
                    max_timeout: Some(self.stall_timeout),
                    interval: crate::liveness::probe_interval(self.stall_timeout),
                };
            })
            .set_policy(reconnect_policy())
            .build()?;
        log_connection_failures(&client);
        Ok(client)
    }
}

/// Environment names of the three Redis TLS file settings (both binaries).
pub const TLS_ENV: [&str; 3] = [
    "REDIS_TLS_CA_FILE",
    "REDIS_TLS_CERT_FILE",
    "REDIS_TLS_KEY_FILE",
];

/// The Redis TLS settings, for `validate()`: every named file is read (whatever the URL says),
/// and when some URL asks for TLS without a CA file, the system roots must load. `Ok(None)`:
/// nothing to read. The problem message names the setting and the file.
pub fn tls_config(
    files: &TlsFiles,
    some_url_uses_tls: bool,
) -> Result<Option<rustls::ClientConfig>, String> {
    if files.is_empty() && !some_url_uses_tls {
        return Ok(None);
    }
    let e = match files.client_config() {
        Ok(config) => return Ok(Some(config)),
        Err(e) => e,
    };
    let setting = match &e {
        TlsError::Read { path, .. }
        | TlsError::NoCertificate { path }
        | TlsError::InvalidCa { path, .. }
            if files.ca.as_ref() == Some(path) =>
        {
            TLS_ENV[0]
        }
        TlsError::NoPrivateKey { .. } => TLS_ENV[2],
        TlsError::Read { path, .. } if files.key.as_ref() == Some(path) => TLS_ENV[2],
        TlsError::HalfClientIdentity => "REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE",
        TlsError::NoSystemRoots => "REDIS_TLS_CA_FILE (unset)",
        _ => TLS_ENV[1],
    };
    Err(format!("{setting}: {e}"))
}

/// Rewrites `<scheme>://[auth@]h1:p1,h2:p2[/db][?q]` as fred's
/// `<fred_scheme>://[auth@]h1:p1[/db]?q&node=h2:p2`. Hosts without a port get `default_port`
/// (or are refused when it is `None`). The authority ends at the first `/`, `?` or `#`, as in
/// any URL (a password holding those must be percent-encoded).
fn with_node_params(
    fred_scheme: &str,
    scheme: &'static str,
    rest: &str,
    default_port: Option<u16>,
) -> Result<String, RedisUrlError> {
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (auth, hosts) = match authority.rsplit_once('@') {
        Some((a, h)) => (Some(a), h),
        None => (None, authority),
    };
    let mut nodes = Vec::new();
    for h in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
        let bad = || RedisUrlError::BadNode { node: h.to_owned() };
        let node = match h.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && !host.ends_with(':') => {
                port.parse::<u16>().map_err(|_| bad())?;
                h.to_owned()
            }
            None if !h.is_empty() => format!("{h}:{}", default_port.ok_or_else(bad)?),
            _ => return Err(bad()),
        };
        nodes.push(node);
    }
    let Some((first, others)) = nodes.split_first() else {
        return Err(RedisUrlError::NoHosts { scheme });
    };
    let mut out = format!("{fred_scheme}://");
    if let Some(auth) = auth {
        out.push_str(auth);
        out.push('@');
    }
    out.push_str(first);
    let tail = tail.split('#').next().unwrap_or_default();
    out.push_str(tail);
    for (i, node) in others.iter().enumerate() {
        let sep = if i == 0 && !tail.contains('?') {
            '?'
        } else {
            '&'
        };
        out.push(sep);
        out.push_str("node=");
        out.push_str(node);
    }
    Ok(out)
}

#[cfg(test)]
#[path = "redis/tests.rs"]
mod tests;
