//! A private `redis-server` on a free loopback port.
//!
//! [`redis()`] is one shared server per test binary; tests sharing it isolate themselves with a
//! [`unique_prefix()`] as `REDIS_PREFIX`. Tests that break Redis (outage, restart) start their
//! own with [`RedisServer::start()`]. Every server is tied to the test process's lifetime by
//! [`crate::supervisor`], so none outlives a panic or a killed test binary.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OnceCell;

use crate::process::free_port;
use crate::supervisor::{log_tail, server_dir, Launch, Supervisor};

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

/// One private redis-server. Dropping it stops the server and removes its temp dir.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    shared: bool,
    sup: Arc<Supervisor>,
}

impl RedisServer {
    /// Starts a redis-server on a free 127.0.0.1 port (no persistence, working dir in a temp
    /// dir) and waits until it answers PING.
    pub async fn start() -> anyhow::Result<RedisServer> {
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            match Self::start_once().await {
                Ok(server) => return Ok(server),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
    }

    async fn start_once() -> anyhow::Result<RedisServer> {
        let port = free_port();
        let dir = server_dir("ryze-redis-", None)?;
        let log = dir.join("redis.log");
        let sup = launch_redis_server("redis-server", &dir, &log, port, &[]).await?;
        let server = RedisServer {
            port,
            dir,
            shared: false,
            sup,
        };
        server.wait_ready(READY_TIMEOUT).await?;
        Ok(server)
    }

    /// `redis://127.0.0.1:<port>`, for `REDIS_URL`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
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
        let out = tokio::process::Command::new("redis-cli")
            .arg("-h")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(self.port.to_string())
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
            if ping(self.port).await {
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

/// One inline-command PING; true on `+PONG`.
async fn ping(port: u16) -> bool {
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
/// (not waiting for it to answer); `extra` adds options (e.g. cluster mode).
pub(crate) async fn launch_redis_server(
    name: &'static str,
    dir: &std::path::Path,
    log: &std::path::Path,
    port: u16,
    extra: &[String],
) -> anyhow::Result<std::sync::Arc<Supervisor>> {
    let mut argv: Vec<String> = [
        "redis-server",
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
    .map(String::from)
    .to_vec();
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
