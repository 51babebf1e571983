//! A private Sentinel-managed Redis: one primary, one replica and three Sentinels, all on free
//! loopback ports.
//!
//! [`RedisSentinel::start`] starts the primary and the replica ([`RedisServer`]s, so the same
//! launch path and supervisor), waits until the replica is in sync, then starts three
//! `redis-server --sentinel` processes, each with its own rewritable config file in its own
//! temp dir, monitoring the primary as [`SERVICE`] with quorum 2, `down-after-milliseconds`
//! [`DOWN_AFTER_MS`] and `failover-timeout` [`FAILOVER_TIMEOUT_MS`]. It returns once every
//! Sentinel knows the replica and the two other Sentinels, so a failover can happen at once.
//! [`RedisSentinel::url`] is the `REDIS_URL` the binaries take. [`RedisSentinel::start_tls`]
//! is the same setup with every process TLS only.
//!
//! Every process runs under a [`crate::supervisor`] wrapper: nothing outlives the test.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::cluster::redis_cli;
use crate::process::free_port;
use crate::redis::{launch_redis_server, ping, tls_server_args, ClientAuth, RedisServer};
use crate::supervisor::{log_tail, server_dir, Supervisor};
use crate::tls::TestCerts;

/// The primary's name in the Sentinels (`sentinelServiceName`).
pub const SERVICE: &str = "ryze-primary";
/// Sentinels in the setup.
pub const SENTINELS: usize = 3;
/// How long the primary may be silent before a Sentinel deems it down.
pub const DOWN_AFTER_MS: u64 = 1000;
/// `failover-timeout`: also the pause before a failed failover is retried.
pub const FAILOVER_TIMEOUT_MS: u64 = 5000;
/// Upper bound for start-up conditions (replica in sync, Sentinels aware of each other; the
/// Sentinels' hello messages go out every 2 s).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How often state is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// One `redis-server --sentinel`.
pub struct SentinelNode {
    port: u16,
    dir: PathBuf,
    sup: Arc<Supervisor>,
    /// A TLS-only Sentinel: the certificates it serves.
    tls: Option<Arc<TestCerts>>,
}

impl SentinelNode {
    /// The Sentinel's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its working dir (holding `sentinel.conf`, which it rewrites).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Everything it logged so far (`+sdown`, `+switch-master`, ...).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.sup.log_path()).unwrap_or_default()
    }

    /// `SENTINEL MASTER <SERVICE>` as a field map (`num-slaves`, `num-other-sentinels`, ...).
    pub async fn master_info(&self) -> anyhow::Result<HashMap<String, String>> {
        let out = redis_cli(
            self.port,
            self.tls.as_deref(),
            &["SENTINEL", "MASTER", SERVICE],
        )
        .await?;
        let lines: Vec<&str> = out.lines().map(str::trim).collect();
        Ok(lines
            .chunks(2)
            .filter_map(|kv| match kv {
                [k, v] => Some(((*k).to_owned(), (*v).to_owned())),
                _ => None,
            })
            .collect())
    }

    /// The primary's port as this Sentinel names it now.
    pub async fn primary_port(&self) -> anyhow::Result<u16> {
        let args = ["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE];
        let out = redis_cli(self.port, self.tls.as_deref(), &args).await?;
        out.lines()
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
            .with_context(|| format!("GET-MASTER-ADDR-BY-NAME printed {out:?}"))
    }
}

/// `min-replicas-to-write` / `min-replicas-max-lag` of a [`RedisSentinel::start_guarded`]
/// setup: a primary refuses writes unless one replica acknowledged replication within 10 s,
/// so a primary the Sentinels replaced while it was cut off cannot accept writes that would
/// vanish when it is demoted (docs/deployment.md).
pub const GUARD_ARGS: [&str; 4] = [
    "--min-replicas-to-write",
    "1",
    "--min-replicas-max-lag",
    "10",
];

/// A primary, its replicas and three Sentinels. Dropping it stops them all.
pub struct RedisSentinel {
    primary: RedisServer,
    /// The first is the one [`RedisSentinel::replica`] names.
    replicas: Vec<RedisServer>,
    sentinels: Vec<SentinelNode>,
}

impl RedisSentinel {
    /// Starts everything and waits until a failover could happen (see the module docs).
    pub async fn start() -> anyhow::Result<RedisSentinel> {
        Self::start_with(None, 1, &[]).await
    }

    /// The layout docs/deployment.md recommends for production: two replicas, and every
    /// server started with [`GUARD_ARGS`] (so whichever is promoted keeps them).
    pub async fn start_guarded() -> anyhow::Result<RedisSentinel> {
        Self::start_with(None, 2, &GUARD_ARGS).await
    }

    /// Like [`RedisSentinel::start`], all TLS only: the primary and the replica
    /// ([`RedisServer::start_tls`], replicating over TLS) and the Sentinels (`port 0`,
    /// `tls-port`, `tls-replication yes` so their links to the servers and to each other are
    /// TLS too), all serving `certs`' server certificate. [`RedisSentinel::url`] is then
    /// `rediss-sentinel://…`.
    pub async fn start_tls(certs: Arc<TestCerts>) -> anyhow::Result<RedisSentinel> {
        Self::start_with(Some(certs), 1, &[]).await
    }

    async fn start_with(
        tls: Option<Arc<TestCerts>>,
        replicas: usize,
        extra: &[&str],
    ) -> anyhow::Result<RedisSentinel> {
        let extra: Vec<String> = extra.iter().map(|a| (*a).to_owned()).collect();
        let primary = match &tls {
            None => RedisServer::start_args(&extra).await?,
            Some(certs) => RedisServer::start_tls(certs.clone(), ClientAuth::Optional).await?,
        };
        let mut started = Vec::with_capacity(replicas);
        for _ in 0..replicas {
            started.push(RedisServer::start_replica_of_with(&primary, &extra).await?);
        }
        for replica in &started {
            wait_until("the replica in sync", READY_TIMEOUT, || async {
                let info = replica.cli(&["INFO", "replication"]).await?;
                if info.lines().any(|l| l.trim() == "master_link_status:up") {
                    Ok(())
                } else {
                    bail!("{info}")
                }
            })
            .await?;
        }
        let mut sentinels = Vec::with_capacity(SENTINELS);
        for _ in 0..SENTINELS {
            sentinels.push(launch_sentinel(primary.port(), tls.clone()).await?);
        }
        let setup = RedisSentinel {
            primary,
            replicas: started,
            sentinels,
        };
        for s in &setup.sentinels {
            wait_until("a Sentinel to answer PING", READY_TIMEOUT, || async {
                let answers = match &s.tls {
                    None => ping(s.port).await,
                    Some(_) => redis_cli(s.port, s.tls.as_deref(), &["PING"])
                        .await
                        .is_ok_and(|pong| pong == "PONG"),
                };
                if answers {
                    Ok(())
                } else if !s.sup.is_running() {
                    bail!(
                        "sentinel on port {} exited; log:\n{}",
                        s.port,
                        log_tail(s.sup.log_path(), 30)
                    )
                } else {
                    bail!("no PONG")
                }
            })
            .await?;
        }
        for s in &setup.sentinels {
            wait_until(
                "each Sentinel to know the replica and the others",
                READY_TIMEOUT,
                || async {
                    let info = s.master_info().await?;
                    let field = |k: &str| info.get(k).map(String::as_str).unwrap_or("?");
                    if field("num-slaves") == setup.replicas.len().to_string()
                        && field("num-other-sentinels") == (SENTINELS - 1).to_string()
                    {
                        Ok(())
                    } else {
                        bail!(
                            "num-slaves {}, num-other-sentinels {}",
                            field("num-slaves"),
                            field("num-other-sentinels")
                        )
                    }
                },
            )
            .await?;
        }
        Ok(setup)
    }

    /// `redis-sentinel://127.0.0.1:S1,127.0.0.1:S2,127.0.0.1:S3?sentinelServiceName=…`
    /// (`rediss-sentinel://` under TLS).
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let scheme = if self.sentinels.iter().any(|s| s.tls.is_some()) {
            "rediss-sentinel"
        } else {
            "redis-sentinel"
        };
        format!(
            "{scheme}://{}?sentinelServiceName={SERVICE}",
            hosts.join(",")
        )
    }

    /// The server that was primary at start.
    pub fn primary(&self) -> &RedisServer {
        &self.primary
    }

    /// The server that was the replica at start (the one promoted by a failover).
    pub fn replica(&self) -> &RedisServer {
        &self.replicas[0]
    }

    /// Every server: the primary at start, then the replicas.
    pub fn servers(&self) -> impl Iterator<Item = &RedisServer> {
        std::iter::once(&self.primary).chain(&self.replicas)
    }

    /// The Sentinels.
    pub fn sentinels(&self) -> &[SentinelNode] {
        &self.sentinels
    }

    /// Makes every Sentinel forget the primary and monitor `server` under the same name
    /// instead: a switch the old primary never hears of, so it stays a primary with all its
    /// clients (what a failover looks like to a process still connected to a primary that was
    /// cut off, until a Sentinel demotes it). Returns once every Sentinel names `server`.
    pub async fn renominate(&self, server: &RedisServer) -> anyhow::Result<()> {
        let port = server.port().to_string();
        for s in &self.sentinels {
            let tls = s.tls.as_deref();
            redis_cli(s.port, tls, &["SENTINEL", "REMOVE", SERVICE]).await?;
            let monitor = ["SENTINEL", "MONITOR", SERVICE, "127.0.0.1", &port, "2"];
            let out = redis_cli(s.port, tls, &monitor).await?;
            if out.trim() != "OK" {
                bail!("SENTINEL MONITOR answered {out:?}");
            }
        }
        for s in &self.sentinels {
            let named = s.primary_port().await?;
            if named != server.port() {
                bail!("sentinel {} names port {named} after MONITOR", s.port);
            }
        }
        Ok(())
    }

    /// Waits until every Sentinel names the replica as primary and the replica says it is
    /// one (`ROLE` → `master`), i.e. the failover is complete. Errors at `timeout` with what
    /// the Sentinels logged.
    pub async fn wait_replica_promoted(&self, timeout: Duration) -> anyhow::Result<()> {
        let want = self.replica().port();
        let result = wait_until("the replica promoted", timeout, || async {
            for s in &self.sentinels {
                let port = s.primary_port().await?;
                if port != want {
                    bail!("sentinel {} still names port {port}", s.port);
                }
            }
            let role = self.replica().cli(&["ROLE"]).await?;
            if role.lines().next().map(str::trim) == Some("master") {
                Ok(())
            } else {
                bail!("the replica's ROLE is {role:?}")
            }
        })
        .await;
        result.with_context(|| {
            let logs: Vec<String> = self.sentinels.iter().map(SentinelNode::logs).collect();
            format!("sentinel logs:\n{}", logs.join("\n---\n"))
        })
    }
}

/// One Sentinel monitoring the primary on `primary_port`; with `tls`, TLS only.
async fn launch_sentinel(
    primary_port: u16,
    tls: Option<Arc<TestCerts>>,
) -> anyhow::Result<SentinelNode> {
    let port = free_port();
    let dir = server_dir("ryze-sentinel-", None)?;
    let conf = dir.join("sentinel.conf");
    // resolve-hostnames no: the harness uses IPs only; the other directives are the test's
    // failover timing (module docs).
    let mut text = format!(
        "sentinel resolve-hostnames no\n\
         sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 2\n\
         sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n\
         sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n\
         sentinel parallel-syncs {SERVICE} 1\n"
    );
    // TLS: the server options as config lines (`--tls-port P` → `tls-port P`), no client
    // certificates asked for; the plain port is 0 below.
    if let Some(certs) = &tls {
        for pair in tls_server_args(certs, port).chunks(2) {
            text.push_str(&format!(
                "{} {}\n",
                pair[0].trim_start_matches("--"),
                pair[1]
            ));
        }
        text.push_str("tls-auth-clients no\n");
    }
    std::fs::write(&conf, text).context("writing sentinel.conf")?;
    let log = dir.join("sentinel.log");
    let sup = launch_redis_server(
        "redis-server --sentinel",
        &dir,
        &log,
        Some(&conf),
        if tls.is_some() { 0 } else { port },
        &["--sentinel".to_owned()],
    )
    .await?;
    Ok(SentinelNode {
        port,
        dir,
        sup,
        tls,
    })
}

/// Polls `check` until it succeeds; errors at `timeout` with its last error.
async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if tokio::time::Instant::now() >= deadline {
            bail!("{what}: not within {timeout:?}: {last:#}");
        }
        tokio::time::sleep(POLL_INTERVAL).await; // poll interval of a deadline-bounded wait: nothing emits an event to await
    }
}
