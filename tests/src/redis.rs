//! A private `redis-server` on a free loopback port.
//!
//! [`redis()`] is one shared server per test binary; tests sharing it isolate themselves with a
//! [`unique_prefix()`] as `REDIS_PREFIX`. Tests that break Redis (outage, restart) start their
//! own with [`RedisServer::start()`]. [`RedisServer::start_tls`] serves TLS only (with
//! [`crate::TestCerts`]), [`RedisServer::start_replica_of`] replicates another. Every server is
//! tied to the test process's lifetime by [`crate::supervisor`], so none outlives a panic or a
//! killed test binary.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OnceCell;

use crate::process::free_port;
use crate::supervisor::{log_tail, server_dir, Launch, Supervisor};
use crate::tls::TestCerts;

/// Upper bound for a start or restart to answer PING.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often readiness is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Fresh starts retry on a new port when the server dies early (another process may have taken
/// the port between [`free_port()`] and the bind).
const START_ATTEMPTS: usize = 3;

static SHARED: OnceCell<RedisServer> = OnceCell::const_new();

/// The redis-server shared by all tests of this test binary, started on first use.
///
/// Never stopped before the process exits; [`RedisServer::stop`] and
/// [`RedisServer::restart`] refuse to act on it. Panics if it cannot start (the message says
/// why and where the log is).
pub async fn redis() -> &'static RedisServer {
    match try_redis().await {
        Ok(server) => server,
        Err(e) => panic!("cannot start the shared redis-server: {e:#}"),
    }
}

/// Like [`redis()`], returning the error instead of panicking.
pub async fn try_redis() -> anyhow::Result<&'static RedisServer> {
    SHARED
        .get_or_try_init(|| async {
            let mut server = RedisServer::start().await?;
            server.shared = true;
            Ok(server)
        })
        .await
}

/// A fresh key and channel prefix (`REDIS_PREFIX`), so tests sharing a server never see each
/// other's channels or rate-limit counters.
pub fn unique_prefix() -> String {
    format!("t{}", uuid::Uuid::new_v4().simple())
}

/// How a TLS server treats client certificates (`--tls-auth-clients`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// A client may present a certificate (verified if it does); plain TLS clients get in.
    Optional,
    /// Mutual TLS: a client without a certificate signed by the CA is refused.
    Required,
}

/// One private redis-server. Dropping it stops the server and removes its temp dir.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    shared: bool,
    sup: Arc<Supervisor>,
    /// TLS-only servers: the certificates it serves (and that `cli` uses).
    tls: Option<Arc<TestCerts>>,
}

impl RedisServer {
    /// Starts a redis-server on a free 127.0.0.1 port (no persistence, working dir in a temp
    /// dir) and waits until it answers PING.
    pub async fn start() -> anyhow::Result<RedisServer> {
        Self::start_with(&[], None).await
    }

    /// Like [`RedisServer::start`], replicating `primary` (`--replicaof`); returns once the
    /// replica answers PING (the initial sync may still be under way). The replica of a
    /// TLS-only primary is TLS-only too, with the same certificates (client certificates
    /// optional), and replicates over TLS.
    pub async fn start_replica_of(primary: &RedisServer) -> anyhow::Result<RedisServer> {
        Self::start_replica_of_with(primary, &[]).await
    }

    /// Like [`RedisServer::start`] with more `redis-server` options, kept across restarts.
    pub async fn start_args(extra: &[String]) -> anyhow::Result<RedisServer> {
        Self::start_with(extra, None).await
    }

    /// [`RedisServer::start_replica_of`] with more `redis-server` options.
    pub async fn start_replica_of_with(
        primary: &RedisServer,
        options: &[String],
    ) -> anyhow::Result<RedisServer> {
        let mut extra: Vec<String> = ["--replicaof", "127.0.0.1", &primary.port.to_string()]
            .map(String::from)
            .into();
        if primary.tls.is_some() {
            extra.extend(["--tls-auth-clients", "optional"].map(String::from));
        }
        extra.extend(options.iter().cloned());
        Self::start_with(&extra, primary.tls.clone()).await
    }

    /// A TLS-only redis-server (`--port 0 --tls-port P`) serving `certs`' server certificate,
    /// trusting `certs`' CA for client certificates under `auth`. [`RedisServer::url`] is then
    /// `rediss://127.0.0.1:P`; [`RedisServer::cli`] and readiness speak TLS with the client
    /// certificate. Replication (should it become a replica) goes over TLS too.
    pub async fn start_tls(certs: Arc<TestCerts>, auth: ClientAuth) -> anyhow::Result<RedisServer> {
        let mode = match auth {
            ClientAuth::Optional => "optional",
            ClientAuth::Required => "yes",
        };
        let extra = vec!["--tls-auth-clients".to_owned(), mode.to_owned()];
        Self::start_with(&extra, Some(certs)).await
    }

    async fn start_with(
        extra: &[String],
        tls: Option<Arc<TestCerts>>,
    ) -> anyhow::Result<RedisServer> {
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            match Self::start_once(extra, tls.clone()).await {
                Ok(server) => return Ok(server),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
    }

    async fn start_once(
        extra: &[String],
        tls: Option<Arc<TestCerts>>,
    ) -> anyhow::Result<RedisServer> {
        let port = free_port();
        let dir = server_dir("ryze-redis-", None)?;
        let log = dir.join("redis.log");
        let (plain_port, mut args) = match &tls {
            None => (port, Vec::new()),
            // Port 0: no plain listener at all.
            Some(certs) => (0, tls_server_args(certs, port)),
        };
        args.extend(extra.iter().cloned());
        let sup = launch_redis_server("redis-server", &dir, &log, None, plain_port, &args).await?;
        let server = RedisServer {
            port,
            dir,
            shared: false,
            sup,
            tls,
        };
        server.wait_ready(READY_TIMEOUT).await?;
        Ok(server)
    }

    /// `redis://127.0.0.1:<port>` (`rediss://` for a TLS server), for `REDIS_URL`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The TCP port; kept across [`RedisServer::restart`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.sup.pid()
    }

    /// Whether the server process is alive (it may still be starting).
    pub fn is_running(&self) -> bool {
        self.sup.is_running()
    }

    /// The server's working dir (a temp dir removed when the server is dropped).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file holding the server's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        self.sup.log_path()
    }

    /// Everything the server logged so far (empty if the log cannot be read).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Stops the server (SIGTERM, then waits for it to exit). Clients see the connection drop.
    /// Refused on the shared server, which other tests use.
    pub async fn stop(&self) -> anyhow::Result<()> {
        self.refuse_if_shared("stop")?;
        let sup = Arc::clone(&self.sup);
        tokio::task::spawn_blocking(move || sup.stop_blocking())
            .await
            .context("joining redis-server stop")?
    }

    /// Kills the server with SIGKILL (no clean shutdown: clients see a reset or silence, as
    /// after a crash). Refused on the shared server. The supervisor still reaps it on drop.
    pub fn kill(&self) -> anyhow::Result<()> {
        self.refuse_if_shared("kill")?;
        let pid = self.sup.pid().context("redis-server is not running")?;
        crate::supervisor::kill_pid("KILL", pid);
        Ok(())
    }

    /// Starts the server again on the same port (stopping it first if it runs) and waits until
    /// it answers PING. Its data is gone: it never persists. Refused on the shared server.
    pub async fn restart(&self) -> anyhow::Result<()> {
        self.refuse_if_shared("restart")?;
        let sup = Arc::clone(&self.sup);
        tokio::task::spawn_blocking(move || {
            sup.stop_blocking()?;
            sup.start_blocking()
        })
        .await
        .context("joining redis-server restart")??;
        self.wait_ready(READY_TIMEOUT).await
    }

    /// Runs `redis-cli -h 127.0.0.1 -p <port> <args>` and returns its trimmed stdout, e.g.
    /// `cli(&["PUBSUB", "NUMSUB", channel])`. Errors if redis-cli fails or prints `ERR`.
    pub async fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = tokio::process::Command::new("redis-cli");
        cmd.arg("-h")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(self.port.to_string());
        if let Some(certs) = &self.tls {
            cmd.arg("--tls")
                .arg("--cacert")
                .arg(certs.ca())
                .arg("--cert")
                .arg(certs.client_cert())
                .arg("--key")
                .arg(certs.client_key());
        }
        let out = cmd
            .args(args)
            .kill_on_drop(true)
            .output()
            .await
            .context("running redis-cli (is redis-tools installed?)")?;
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !out.status.success() || stdout.starts_with("ERR") {
            bail!(
                "redis-cli {args:?} failed ({}): {stdout} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(stdout)
    }

    /// Polls PING until `+PONG`; fails early with the log tail if the process died.
    async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let answers = match self.tls {
                None => ping(self.port).await,
                Some(_) => self.cli(&["PING"]).await.is_ok_and(|pong| pong == "PONG"),
            };
            if answers {
                return Ok(());
            }
            if !self.sup.is_running() {
                bail!(
                    "redis-server on port {} exited before answering PING; log {}:\n{}",
                    self.port,
                    self.log_path().display(),
                    log_tail(self.log_path(), 30)
                );
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "redis-server on port {} did not answer PING within {timeout:?}; log {}:\n{}",
                    self.port,
                    self.log_path().display(),
                    log_tail(self.log_path(), 30)
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    fn refuse_if_shared(&self, what: &str) -> anyhow::Result<()> {
        if self.shared {
            bail!("refusing to {what} the shared redis-server; use RedisServer::start()");
        }
        Ok(())
    }
}

/// The options of a TLS-only server (or Sentinel) on `tls_port`, serving `certs`' server
/// certificate and trusting their CA; with no plain port, replication goes over TLS too (the
/// server certificate doubles as the client certificate of outgoing links).
pub(crate) fn tls_server_args(certs: &TestCerts, tls_port: u16) -> Vec<String> {
    let path = |p: PathBuf| p.to_string_lossy().into_owned();
    vec![
        "--tls-port".to_owned(),
        tls_port.to_string(),
        "--tls-cert-file".to_owned(),
        path(certs.server_cert()),
        "--tls-key-file".to_owned(),
        path(certs.server_key()),
        "--tls-ca-cert-file".to_owned(),
        path(certs.ca()),
        "--tls-replication".to_owned(),
        "yes".to_owned(),
    ]
}

/// One inline-command PING on a plain port; true on `+PONG`.
pub(crate) async fn ping(port: u16) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut buf = [0u8; 7];
        stream.read_exact(&mut buf).await?;
        Ok::<bool, std::io::Error>(&buf == b"+PONG\r\n")
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Ok(true))
    )
}

/// Starts a private, persistence-free `redis-server` on loopback `port` under a supervisor
/// (not waiting for it to answer); `conf` is a config file to read first (Sentinel needs one
/// it can rewrite), `extra` adds options (e.g. cluster mode, TLS, `--sentinel`).
pub(crate) async fn launch_redis_server(
    name: &'static str,
    dir: &std::path::Path,
    log: &std::path::Path,
    conf: Option<&std::path::Path>,
    port: u16,
    extra: &[String],
) -> anyhow::Result<std::sync::Arc<Supervisor>> {
    let mut argv = vec!["redis-server".to_owned()];
    argv.extend(conf.map(|c| c.to_string_lossy().into_owned()));
    argv.extend(
        [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
            "--dir",
            &dir.to_string_lossy(),
        ]
        .map(String::from),
    );
    argv.extend(extra.iter().cloned());
    tokio::task::spawn_blocking({
        let (dir, log) = (dir.to_owned(), log.to_owned());
        move || {
            Supervisor::launch(Launch {
                name,
                dir: &dir,
                log: &log,
                stop_signal: "TERM",
                argv,
                user: None,
            })
        }
    })
    .await
    .context("joining the redis-server launch")?
    .context("is redis-server installed? run scripts/install-test-deps.sh")
}
