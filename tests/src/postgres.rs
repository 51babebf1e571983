//! A private PostgreSQL server: `initdb` into a temp dir, `postgres` on a free loopback port.
//!
//! [`pg()`] is one shared server per test binary; each test takes its own empty database from
//! [`PgServer::fresh_database`]. Outage tests start their own with [`PgServer::start_private`],
//! which can be stopped and started again on the same port and data dir. Tuned for tests, not
//! durability: `fsync`, `synchronous_commit` and `full_page_writes` are off.
//!
//! `initdb` refuses to run as root, so as root the temp dir is given to the `postgres` OS user
//! and both `initdb` and the server run as that user. Binaries come from `PG_BIN_DIR` or the
//! highest `/usr/lib/postgresql/<version>/bin`.
//!
//! [`PgServer::start_private_tls`] starts one with `ssl=on` and a `pg_hba.conf` that refuses
//! plain TCP (`hostnossl … reject`), so a client that gets in used TLS. The harness's own
//! connections to it use TLS without verification.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::sync::OnceCell;

use crate::certs::Certs;
use crate::process::free_port;
use crate::supervisor::{log_tail, running_as_root, server_dir, user_ids, Launch, Supervisor};
use tls::{connect, enable_tls};

/// Upper bound for a (re)start to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How often readiness is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// Fresh starts retry from scratch on a new port when the server dies early (the port may have
/// been taken between [`free_port()`] and the bind).
const START_ATTEMPTS: usize = 3;

mod tls;

static SHARED: OnceCell<PgServer> = OnceCell::const_new();

/// The PostgreSQL server shared by all tests of this test binary, started on first use.
///
/// Never stopped before the process exits; [`PgServer::stop`] and [`PgServer::start`] refuse to
/// act on it (use [`PgServer::start_private`] for outages). Panics if it cannot start, with the
/// reason and the log.
pub async fn pg() -> &'static PgServer {
    match try_pg().await {
        Ok(server) => server,
        Err(e) => panic!("cannot start the shared postgres: {e:#}"),
    }
}

/// Like [`pg()`], returning the error instead of panicking.
pub async fn try_pg() -> anyhow::Result<&'static PgServer> {
    SHARED
        .get_or_try_init(|| async {
            let mut server = PgServer::start_private().await?;
            server.shared = true;
            Ok(server)
        })
        .await
}

/// An empty database of its own for one test.
#[derive(Debug, Clone)]
pub struct TestDb {
    /// `postgres://postgres@127.0.0.1:<port>/<name>`, for `DATABASE_URL`.
    pub url: String,
    /// The database name (unique per call).
    pub name: String,
    /// Whether the server only takes TLS connections ([`PgServer::start_private_tls`]).
    pub tls: bool,
}

impl TestDb {
    /// A connection to this database; its driver task runs on the current runtime.
    pub async fn client(&self) -> anyhow::Result<tokio_postgres::Client> {
        connect(&self.url, self.tls).await
    }
}

/// One PostgreSQL server. Dropping a private one stops it and removes its data dir.
pub struct PgServer {
    port: u16,
    dir: PathBuf,
    shared: bool,
    tls: bool,
    sup: Arc<Supervisor>,
}

impl PgServer {
    /// Starts a server of its own (initdb + postgres) and waits until it accepts connections.
    /// Unlike the shared [`pg()`], it can be stopped and started to simulate an outage.
    pub async fn start_private() -> anyhow::Result<PgServer> {
        Self::start_with(None).await
    }

    /// Like [`PgServer::start_private`] with `ssl=on`, presenting `certs`' server certificate,
    /// and plain TCP connections refused by `pg_hba.conf`.
    pub async fn start_private_tls(certs: &Certs) -> anyhow::Result<PgServer> {
        Self::start_with(Some(certs)).await
    }

    async fn start_with(certs: Option<&Certs>) -> anyhow::Result<PgServer> {
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            match Self::start_once(certs.cloned()).await {
                Ok(server) => return Ok(server),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("postgres did not start")))
    }

    async fn start_once(certs: Option<Certs>) -> anyhow::Result<PgServer> {
        let port = free_port();
        let tls = certs.is_some();
        let (dir, sup) = tokio::task::spawn_blocking(move || init_and_launch(port, certs.as_ref()))
            .await
            .context("joining the postgres launch")??;
        let server = PgServer {
            port,
            dir,
            shared: false,
            tls,
            sup,
        };
        server.wait_ready(READY_TIMEOUT).await?;
        Ok(server)
    }

    /// The TCP port; kept across [`PgServer::stop`] / [`PgServer::start`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL of the `postgres` maintenance database as superuser `postgres` (trust auth).
    pub fn admin_url(&self) -> String {
        self.url_for("postgres")
    }

    /// URL of database `name` on this server.
    pub fn url_for(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// The server's temp dir (`data/`, `sock/`, `postgres.log`).
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

    /// The postmaster's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.sup.pid()
    }

    /// Whether the postmaster process is alive (it may still be starting).
    pub fn is_running(&self) -> bool {
        self.sup.is_running()
    }

    /// Creates a uniquely named empty database.
    pub async fn fresh_database(&self) -> anyhow::Result<TestDb> {
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let admin = connect(&self.admin_url(), self.tls).await?;
        // The name is generated above (hex only), so quoting it is enough.
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .with_context(|| format!("CREATE DATABASE {name}"))?;
        Ok(TestDb {
            url: self.url_for(&name),
            name,
            tls: self.tls,
        })
    }

    /// Stops the server (fast shutdown: open sessions are cut) and waits for it to exit.
    /// Refused on the shared server.
    pub async fn stop(&self) -> anyhow::Result<()> {
        self.refuse_if_shared("stop")?;
        let sup = Arc::clone(&self.sup);
        tokio::task::spawn_blocking(move || sup.stop_blocking())
            .await
            .context("joining postgres stop")?
    }

    /// Starts a stopped server again on the same port and data dir, and waits until it accepts
    /// connections. Refused on the shared server.
    pub async fn start(&self) -> anyhow::Result<()> {
        self.refuse_if_shared("start")?;
        let sup = Arc::clone(&self.sup);
        tokio::task::spawn_blocking(move || sup.start_blocking())
            .await
            .context("joining postgres start")??;
        self.wait_ready(READY_TIMEOUT).await
    }

    /// Polls a real connection until `SELECT 1` works; fails early with the log tail if the
    /// postmaster died.
    async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let url = format!("{}?connect_timeout=2", self.admin_url());
        loop {
            let attempt = async {
                let client = connect(&url, self.tls).await?;
                client.simple_query("SELECT 1").await?;
                Ok::<(), anyhow::Error>(())
            };
            let err = match attempt.await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if !self.sup.is_running() {
                bail!(
                    "postgres on port {} exited before accepting connections; log {}:\n{}",
                    self.port,
                    self.log_path().display(),
                    log_tail(self.log_path(), 30)
                );
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "postgres on port {} not ready within {timeout:?} (last error: {err:#}); \
                     log {}:\n{}",
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
            bail!("refusing to {what} the shared postgres; use PgServer::start_private()");
        }
        Ok(())
    }
}

/// Blocking: makes the temp dir, runs initdb, launches postgres under a supervisor.
fn init_and_launch(port: u16, certs: Option<&Certs>) -> anyhow::Result<(PathBuf, Arc<Supervisor>)> {
    let bin_dir = bin_dir()?;
    let user = if running_as_root() {
        Some(user_ids("postgres").context(
            "running as root, postgres must run as the `postgres` OS user \
             (run scripts/install-test-deps.sh)",
        )?)
    } else {
        None
    };
    let dir = server_dir("ryze-pg-", user)?;
    match initdb_and_launch(&bin_dir, &dir, port, user, certs) {
        Ok(sup) => Ok((dir, sup)),
        Err(e) => {
            // Nothing supervises the dir yet when initdb fails.
            let _ = std::fs::remove_dir_all(&dir);
            Err(e)
        }
    }
}

fn initdb_and_launch(
    bin_dir: &Path,
    dir: &Path,
    port: u16,
    user: Option<(u32, u32)>,
    certs: Option<&Certs>,
) -> anyhow::Result<Arc<Supervisor>> {
    let data = dir.join("data");
    let sock = dir.join("sock");
    let mut initdb = Command::new(bin_dir.join("initdb"));
    initdb
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            // Durability is pointless for a throwaway cluster; skipping fsync saves seconds.
            "--no-sync",
            "--no-instructions",
        ])
        .current_dir(dir);
    if let Some((uid, gid)) = user {
        initdb.uid(uid).gid(gid);
    }
    let out = initdb
        .output()
        .with_context(|| format!("running {}/initdb", bin_dir.display()))?;
    if !out.status.success() {
        bail!(
            "initdb failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::create_dir(&sock).context("creating the socket dir")?;
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(&sock, Some(uid), Some(gid)).context("chown socket dir")?;
    }
    let mut argv = vec![
        bin_dir.join("postgres").to_string_lossy().into_owned(),
        "-D".into(),
        data.to_string_lossy().into_owned(),
        "-p".into(),
        port.to_string(),
        "-k".into(),
        sock.to_string_lossy().into_owned(),
    ];
    let mut settings: Vec<String> = [
        "listen_addresses=127.0.0.1",
        "fsync=off",
        "synchronous_commit=off",
        "full_page_writes=off",
        "max_connections=400",
    ]
    .map(String::from)
    .into();
    if let Some(certs) = certs {
        settings.extend(enable_tls(dir, &data, certs, user)?);
    }
    for setting in settings {
        argv.push("-c".into());
        argv.push(setting);
    }
    Supervisor::launch(Launch {
        name: "postgres",
        dir,
        log: &dir.join("postgres.log"),
        // SIGINT is postgres's fast shutdown; SIGTERM ("smart") would wait for every client,
        // e.g. a gateway's pool, to disconnect.
        stop_signal: "INT",
        argv,
        user,
    })
}

/// `PG_BIN_DIR`, else the highest-versioned `/usr/lib/postgresql/<v>/bin` holding `postgres`.
fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN_DIR") {
        let dir = PathBuf::from(dir);
        if !dir.join("postgres").is_file() {
            bail!("PG_BIN_DIR={} has no postgres binary", dir.display());
        }
        return Ok(dir);
    }
    let root = Path::new("/usr/lib/postgresql");
    let mut best: Option<(Vec<u32>, PathBuf)> = None;
    if let Ok(entries) = std::fs::read_dir(root) {
        for entry in entries.flatten() {
            let bin = entry.path().join("bin");
            if !bin.join("postgres").is_file() {
                continue;
            }
            let version: Vec<u32> = entry
                .file_name()
                .to_string_lossy()
                .split('.')
                .map(|part| part.parse().unwrap_or(0))
                .collect();
            if best.as_ref().is_none_or(|(v, _)| version > *v) {
                best = Some((version, bin));
            }
        }
    }
    best.map(|(_, bin)| bin).with_context(|| {
        format!(
            "no {}/<version>/bin/postgres: run scripts/install-test-deps.sh or set PG_BIN_DIR",
            root.display()
        )
    })
}
