//! The project's own binaries (`ryze-gateway`, `ryze-publisher`) as child processes.
//!
//! A [`Service`] runs one binary with a clean environment, free loopback ports and captured
//! output, and offers what tests await: readiness, a log line, an exit status. [`run_cli`] runs a
//! one-shot admin command (`ryze-publisher migrate`, `account create`, ...).
//!
//! Lifetime: the child is killed when the `Service` is dropped (also while a test panics), and on
//! Linux `setpriv --pdeathsig KILL` kills it when the thread that spawned it dies, which covers a
//! test binary killed with `SIGKILL`. That thread is the test's own (or a runtime worker), so a
//! `Service` must not be kept beyond its test, e.g. in a static.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::http;
use crate::supervisor::kill_pid;

mod started;
pub use started::{reported_addr, QUIET_LOG};

/// How often readiness is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// Upper bound for [`run_cli`].
const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// After the process exits, how long to wait for the rest of its output.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound for a started service to name its listen addresses (its start line comes
/// right after binding; a debug build on a loaded machine is slow to get there).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The lowest port [`free_port`] hands out: below are well-known and commonly configured
/// service ports (5432, 6379, 8080, ...).
const PORTS_FROM: u16 = 10_000;
/// The first ephemeral port when `/proc/sys/net/ipv4/ip_local_port_range` cannot be read
/// (Linux's default).
const EPHEMERAL_FALLBACK: u16 = 32_768;

/// A TCP port on 127.0.0.1 for a child to listen on: free a moment ago, and not handed out by
/// this process before (so two services of one test never get the same port). For servers
/// that cannot be told "port 0" and name the port they got (redis-server, postgres); the
/// project's own binaries bind port 0 and name theirs (see [`Service::spawn`]).
///
/// Why not "bind port 0, release it, hand the number over": the kernel picks port 0 from the
/// ephemeral range, which is also where every outgoing connection on the machine (a client
/// of Redis, Postgres, a gateway, in any process) gets its source port. Between the release
/// and the child's bind, such a connection could take the port. So ports come from below the
/// ephemeral range (`[10000, ip_local_port_range start)`, 32768 if unreadable), where the
/// kernel never assigns one on its own: only an explicit bind can take them. Each candidate is
/// checked by binding it. Test binaries run side by side, each with its own handed-out set, so
/// each starts at its own point of the range (derived from its pid) and walks up from there:
/// two processes only collide if one walks into the ports the other just handed out.
///
/// Panics if no port of the range can be bound, which means the machine has no loopback.
pub fn free_port() -> u16 {
    static PORTS: OnceLock<Mutex<Ports>> = OnceLock::new();
    let ports = PORTS.get_or_init(|| Mutex::new(Ports::new()));
    let mut ports = ports.lock().unwrap_or_else(|e| e.into_inner());
    ports.next_free()
}

/// [`free_port`]'s state: the range, where this process looks next, and what it handed out.
struct Ports {
    from: u16,
    to: u16,
    next: u16,
    handed_out: HashSet<u16>,
}

impl Ports {
    fn new() -> Ports {
        let to = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
            .unwrap_or(EPHEMERAL_FALLBACK)
            .max(2_024);
        // A machine whose ephemeral range starts low still gets a range of 1,000 ports.
        let from = PORTS_FROM.min(to.saturating_sub(1_000)).max(1_024);
        let span = u32::from(to - from);
        // A large prime stride spreads consecutive pids over the range.
        let offset = (u64::from(std::process::id()) * 7_919 % u64::from(span)) as u16;
        Ports {
            from,
            to,
            next: from + offset,
            handed_out: HashSet::new(),
        }
    }

    fn next_free(&mut self) -> u16 {
        for _ in self.from..self.to {
            let port = self.next;
            self.next = if port + 1 >= self.to {
                self.from
            } else {
                port + 1
            };
            if self.handed_out.contains(&port) {
                continue;
            }
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                self.handed_out.insert(port);
                return port;
            }
        }
        panic!(
            "no free loopback port in {}..{} ({} handed out already)",
            self.from,
            self.to,
            self.handed_out.len()
        );
    }
}

/// One of the project's binaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bin {
    /// `ryze-gateway`: public listener plus an admin listener.
    Gateway,
    /// `ryze-publisher`: one listener serving both `/v1/events` and `/readyz`.
    Publisher,
}

impl Bin {
    /// The executable's file name.
    pub fn file_name(self) -> &'static str {
        match self {
            Bin::Gateway => "ryze-gateway",
            Bin::Publisher => "ryze-publisher",
        }
    }

    /// Where the executable is: `$RYZE_BIN_DIR`, else two levels above the test executable
    /// (`target/<profile>/deps/<test>` → `target/<profile>/`).
    pub fn path(self) -> anyhow::Result<PathBuf> {
        let dir = match std::env::var_os("RYZE_BIN_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => {
                let exe = std::env::current_exe().context("locating the test executable")?;
                exe.parent()
                    .and_then(Path::parent)
                    .map(Path::to_path_buf)
                    .with_context(|| format!("{} has no grandparent dir", exe.display()))?
            }
        };
        let path = dir.join(self.file_name());
        if !path.is_file() {
            bail!(
                "{} not found; run `cargo build --workspace --bins` first (or set RYZE_BIN_DIR)",
                path.display()
            );
        }
        Ok(path)
    }

    /// Whether the binary has a separate admin listener (`ADMIN_LISTEN_ADDR`).
    fn has_admin_listener(self) -> bool {
        self == Bin::Gateway
    }
}

/// Which listener addresses [`Service::spawn_program`] assigns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listeners {
    /// None: the process is expected to exit (config validation) or to need none.
    None,
    /// `LISTEN_ADDR` only; `/readyz` is served there (the publisher).
    Public,
    /// `LISTEN_ADDR` and `ADMIN_LISTEN_ADDR`; `/readyz` is on the admin one (the gateway).
    PublicAndAdmin,
}

/// Everything a child printed, shared with the reader tasks.
#[derive(Default)]
struct Captured {
    /// stdout and stderr interleaved by arrival (line granularity).
    all: String,
    /// stderr alone (config errors go there).
    stderr: String,
}

/// A running project binary. Dropping it kills the process.
pub struct Service {
    name: String,
    pid: u32,
    child: Mutex<Child>,
    addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    captured: Arc<Mutex<Captured>>,
    /// Bumped on every captured line, so log waits need no polling.
    lines: watch::Receiver<u64>,
    readers: Vec<JoinHandle<()>>,
}

impl Service {
    /// Starts `bin` on ports the kernel picks: `LISTEN_ADDR=127.0.0.1:0` and, for the
    /// gateway, `ADMIN_LISTEN_ADDR=127.0.0.1:0`; returns once the start line named the bound
    /// addresses (or the process ended its output without naming them, e.g. exit 64). The
    /// environment is cleared except `PATH` and `HOME`; `RUST_LOG=info` and `LOG_FORMAT=text`
    /// unless `env` sets them (a `RUST_LOG` must keep the start line: see [`QUIET_LOG`]).
    /// `env` wins over every default, including the listen addresses.
    pub async fn spawn(bin: Bin, args: &[&str], env: &[(&str, String)]) -> anyhow::Result<Service> {
        let listeners = if bin.has_admin_listener() {
            Listeners::PublicAndAdmin
        } else {
            Listeners::Public
        };
        Service::spawn_program(&bin.path()?, listeners, args, env).await
    }

    /// Like [`Service::spawn`] but sets no listen address: for runs expected to exit, e.g.
    /// invalid configuration (status 64 and a stderr message; see [`Service::wait_exit`] and
    /// [`Service::stderr`]).
    pub async fn spawn_raw(
        bin: Bin,
        args: &[&str],
        env: &[(&str, String)],
    ) -> anyhow::Result<Service> {
        Service::spawn_program(&bin.path()?, Listeners::None, args, env).await
    }

    /// Starts any program the way [`Service::spawn`] starts a project binary (the harness's own
    /// tests use a stand-in program).
    pub async fn spawn_program(
        program: &Path,
        listeners: Listeners,
        args: &[&str],
        env: &[(&str, String)],
    ) -> anyhow::Result<Service> {
        let mut vars: Vec<(String, String)> = Vec::new();
        if listeners != Listeners::None {
            vars.push(("LISTEN_ADDR".into(), "127.0.0.1:0".into()));
        }
        if listeners == Listeners::PublicAndAdmin {
            vars.push(("ADMIN_LISTEN_ADDR".into(), "127.0.0.1:0".into()));
        }
        for (key, value) in env {
            vars.retain(|(k, _)| k != key);
            vars.push(((*key).to_owned(), value.clone()));
        }

        let mut cmd = base_command(program, args, &vars);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", program.display()))?;
        let pid = child
            .id()
            .context("child exited before reporting its pid")?;
        let name = program.file_name().map_or_else(
            || "service".to_owned(),
            |n| n.to_string_lossy().into_owned(),
        );

        let captured = Arc::new(Mutex::new(Captured::default()));
        let (tx, lines) = watch::channel(0u64);
        let tx = Arc::new(tx);
        let echo = std::env::var_os("RYZE_TEST_ECHO_LOGS").is_some();
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            let prefix = format!("[{name} {pid}] ");
            readers.push(tokio::spawn(capture(
                out,
                false,
                Arc::clone(&captured),
                Arc::clone(&tx),
                echo.then_some(prefix),
            )));
        }
        if let Some(err) = child.stderr.take() {
            let prefix = format!("[{name} {pid} stderr] ");
            readers.push(tokio::spawn(capture(
                err,
                true,
                Arc::clone(&captured),
                tx,
                echo.then_some(prefix),
            )));
        }

        let mut service = Service {
            name,
            pid,
            child: Mutex::new(child),
            addr: None,
            admin_addr: None,
            captured,
            lines,
            readers,
        };
        if listeners != Listeners::None {
            service.learn_addresses(listeners).await?;
        }
        Ok(service)
    }

    /// Waits for the start line and takes the listen addresses from it. A process that ends
    /// its output first keeps none (it failed to start: the caller awaits its exit).
    async fn learn_addresses(&mut self, listeners: Listeners) -> anyhow::Result<()> {
        let find = |all: &str| {
            let public = reported_addr(all, "listen_addr");
            let admin = match listeners {
                Listeners::PublicAndAdmin => reported_addr(all, "admin_listen_addr"),
                _ => public,
            };
            public.zip(admin)
        };
        match self.find_in_output(find, START_TIMEOUT).await {
            Ok(Some((public, admin))) => {
                self.addr = Some(public);
                self.admin_addr = Some(admin);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(_) => bail!(
                "{} did not name its listen addresses within {START_TIMEOUT:?} (a RUST_LOG \
                 that hides the INFO start line? see QUIET_LOG); output:\n{}",
                self.name,
                self.logs()
            ),
        }
    }

    /// Looks for something in the output so far with `find`, again on every new line, until
    /// it is found; `Ok(None)` once the output is complete without it, `Err` at `timeout`.
    async fn find_in_output<T>(
        &self,
        find: impl Fn(&str) -> Option<T>,
        timeout: Duration,
    ) -> Result<Option<T>, tokio::time::error::Elapsed> {
        let look = || find(&self.lock_captured().all);
        let mut lines = self.lines.clone();
        let wait = async {
            loop {
                // Mark the current version seen before looking, so no line slips between the
                // look and the wait.
                lines.borrow_and_update();
                if let Some(found) = look() {
                    return Some(found);
                }
                if lines.changed().await.is_err() {
                    // Both readers finished: the output is complete.
                    return look();
                }
            }
        };
        tokio::time::timeout(timeout, wait).await
    }

    /// The public listener, as its start line named it. Panics for a service started
    /// without listeners or that never started.
    pub fn addr(&self) -> SocketAddr {
        match self.addr {
            Some(addr) => addr,
            None => panic!(
                "{} has no listen address (none asked, or it never started)",
                self.name
            ),
        }
    }

    /// The listener serving `/readyz`: the gateway's admin listener, the publisher's only one.
    /// Panics as [`Service::addr`] does.
    pub fn admin_addr(&self) -> SocketAddr {
        match self.admin_addr {
            Some(addr) => addr,
            None => panic!(
                "{} has no admin address (none asked, or it never started)",
                self.name
            ),
        }
    }

    /// `http://<addr><path>` on the public listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    /// `ws://<addr><path>` on the public listener.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr())
    }

    /// `http://<admin addr><path>`, e.g. `/metrics`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr())
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Polls `GET /readyz` until 200. Fails early, with the captured output, if the process
    /// exits, and at `timeout` with the last status seen.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        if self.admin_addr.is_none() {
            // Its output ended without a start line: it exits (or exited) without serving.
            let deadline = tokio::time::Instant::now() + timeout;
            let status = loop {
                if let Some(status) = self.try_exit_status()? {
                    break describe(status);
                }
                if tokio::time::Instant::now() >= deadline {
                    break "not yet".to_owned();
                }
                tokio::time::sleep(POLL_INTERVAL).await; // poll interval of a deadline-bounded wait for the exit status
            };
            bail!(
                "{} exited ({status}) without naming its listen addresses; output:\n{}",
                self.name,
                self.logs()
            );
        }
        let url = self.admin_url("/readyz");
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status()? {
                bail!(
                    "{} exited ({status}) before /readyz answered 200; output:\n{}",
                    self.name,
                    self.logs()
                );
            }
            let last = match http()
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                Ok(resp) if resp.status() == reqwest::StatusCode::OK => return Ok(()),
                Ok(resp) => format!("status {}", resp.status()),
                Err(e) => format!("{e}"),
            };
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{} not ready within {timeout:?} (last /readyz: {last}); output:\n{}",
                    self.name,
                    self.logs()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await; // poll interval of a deadline-bounded wait: nothing emits an event to await
        }
    }

    /// Polls `GET /readyz` until it is not 200 (another status, a refused connection, or the
    /// process gone).
    pub async fn wait_not_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        if self.admin_addr.is_none() {
            return Ok(()); // it never started
        }
        let url = self.admin_url("/readyz");
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.try_exit_status()?.is_some() {
                return Ok(());
            }
            match http()
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                Ok(resp) if resp.status() == reqwest::StatusCode::OK => {}
                _ => return Ok(()),
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{} still ready after {timeout:?}; output:\n{}",
                    self.name,
                    self.logs()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Everything the process printed on stdout and stderr so far, interleaved by line.
    pub fn logs(&self) -> String {
        self.lock_captured().all.clone()
    }

    /// Everything the process printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.lock_captured().stderr.clone()
    }

    /// Waits until the output contains `needle`. Fails at `timeout` with the output so far.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        self.wait_for_log_count(needle, 1, timeout).await
    }

    /// Waits until the output contains `needle` at least `count` times (a reconnect's second
    /// "listening" line). Fails at `timeout` with the output so far.
    pub async fn wait_for_log_count(
        &self,
        needle: &str,
        count: usize,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let printed = |all: &str| (all.matches(needle).count() >= count).then_some(());
        match self.find_in_output(printed, timeout).await {
            Ok(Some(())) => Ok(()),
            Ok(None) => bail!(
                "{} closed its output without printing {needle:?} {count} time(s); output:\n{}",
                self.name,
                self.logs()
            ),
            Err(_) => bail!(
                "{} did not print {needle:?} {count} time(s) within {timeout:?}; output:\n{}",
                self.name,
                self.logs()
            ),
        }
    }

    /// Sends SIGTERM (graceful shutdown). Does not wait; see [`Service::wait_exit`].
    pub fn sigterm(&self) {
        kill_pid("TERM", self.pid);
    }

    /// Sends SIGKILL (a crash). Does not wait; see [`Service::wait_exit`].
    pub fn kill9(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        // Errors mean it already exited, which is what we want.
        let _ = child.start_kill();
    }

    /// Waits for the process to exit and for the rest of its output to be captured.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        let status = match tokio::time::timeout(timeout, child.wait()).await {
            Ok(status) => status.with_context(|| format!("waiting for {}", self.name))?,
            Err(_) => bail!(
                "{} did not exit within {timeout:?}; output:\n{}",
                self.name,
                self.logs()
            ),
        };
        // Taken, not borrowed: a JoinHandle must not be polled again after it completed.
        for reader in std::mem::take(&mut self.readers) {
            // A grandchild could hold the pipes open; don't wait for it forever.
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, reader).await;
        }
        Ok(status)
    }

    /// Resident memory from `/proc/<pid>/status` (`VmRSS`), in bytes; 0 once the process is
    /// gone.
    pub fn rss_bytes(&self) -> u64 {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", self.pid)) else {
            return 0;
        };
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// The exit status if the process has exited, without waiting (for monitors that hold a
    /// shared `Service`; a failed check counts as still running).
    pub fn exited(&self) -> Option<ExitStatus> {
        self.try_exit_status().ok().flatten()
    }

    /// Sends `signal` (a name such as `KILL`, `STOP`) to the process through a shared
    /// reference (unlike [`Service::kill9`]); does not wait.
    pub fn signal(&self, signal: &str) {
        kill_pid(signal, self.pid);
    }

    fn try_exit_status(&self) -> anyhow::Result<Option<ExitStatus>> {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        child
            .try_wait()
            .with_context(|| format!("checking whether {} exited", self.name))
    }

    fn lock_captured(&self) -> std::sync::MutexGuard<'_, Captured> {
        // Readers only append whole lines; a poisoned lock still holds valid text.
        self.captured.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        // kill_on_drop would do this too; being explicit also covers a Child moved elsewhere.
        let _ = child.start_kill();
        if std::thread::panicking() && std::env::var_os("RYZE_TEST_ECHO_LOGS").is_none() {
            // The test failed: show what the process said, which libtest prints with the panic.
            eprintln!("--- output of {} (pid {}) ---\n{}", self.name, self.pid, {
                self.lock_captured().all.clone()
            });
        }
    }
}

/// Runs a one-shot command of a project binary (e.g. `ryze-publisher migrate`) with the same
/// clean environment as [`Service::spawn`] and no listen addresses; waits up to 60 s.
pub async fn run_cli(bin: Bin, args: &[&str], env: &[(&str, String)]) -> anyhow::Result<Output> {
    run_program(&bin.path()?, args, env).await
}

/// Like [`run_cli`], but fails unless the command exits 0, and parses its stdout as JSON (the
/// admin commands print JSON).
pub async fn run_cli_json(
    bin: Bin,
    args: &[&str],
    env: &[(&str, String)],
) -> anyhow::Result<serde_json::Value> {
    let out = run_cli(bin, args, env).await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{} {args:?} failed ({}): stdout {stdout}\nstderr {}",
            bin.file_name(),
            describe(out.status),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_str(stdout.trim())
        .with_context(|| format!("{} {args:?} printed non-JSON: {stdout}", bin.file_name()))
}

/// [`run_cli`] for any program.
pub async fn run_program(
    program: &Path,
    args: &[&str],
    env: &[(&str, String)],
) -> anyhow::Result<Output> {
    let vars: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    let cmd = base_command(program, args, &vars).output();
    match tokio::time::timeout(CLI_TIMEOUT, cmd).await {
        Ok(out) => out.with_context(|| format!("running {}", program.display())),
        Err(_) => bail!(
            "{} {args:?} did not finish within {CLI_TIMEOUT:?}",
            program.display()
        ),
    }
}

/// The command line shared by services and one-shot commands: cleared environment, the
/// defaults, then `vars`; killed with the test.
fn base_command(program: &Path, args: &[&str], vars: &[(String, String)]) -> Command {
    let (launcher, launcher_args) = pdeathsig_launcher();
    let mut cmd = match launcher {
        Some(setpriv) => {
            let mut cmd = Command::new(setpriv);
            cmd.args(launcher_args).arg("--").arg(program);
            cmd
        }
        None => Command::new(program),
    };
    cmd.args(args).env_clear();
    // LLVM_PROFILE_FILE lets coverage runs see the children too; harmless otherwise.
    for key in ["PATH", "HOME", "LLVM_PROFILE_FILE"] {
        if let Some(value) = std::env::var_os(key) {
            cmd.env(key, value);
        }
    }
    cmd.env("RUST_LOG", "info").env("LOG_FORMAT", "text");
    for (key, value) in vars {
        cmd.env(key, value);
    }
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

/// `setpriv --pdeathsig KILL` if util-linux's setpriv is installed, so children die with the
/// test even on SIGKILL. It execs the program, so the pid and exit status stay the program's.
fn pdeathsig_launcher() -> (Option<&'static Path>, [&'static str; 2]) {
    static SETPRIV: OnceLock<Option<PathBuf>> = OnceLock::new();
    let found = SETPRIV.get_or_init(|| {
        ["/usr/bin/setpriv", "/bin/setpriv"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
    });
    (found.as_deref(), ["--pdeathsig", "KILL"])
}

/// `exit status 64` or `signal 9`, for messages.
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => format!("{status}"),
    }
}

/// Appends each line of `stream` to the capture and bumps the line counter.
async fn capture<R: AsyncRead + Unpin>(
    stream: R,
    is_stderr: bool,
    captured: Arc<Mutex<Captured>>,
    lines: Arc<watch::Sender<u64>>,
    echo: Option<String>,
) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let mut line = String::from_utf8_lossy(&buf).into_owned();
        if !line.ends_with('\n') {
            line.push('\n');
        }
        if let Some(prefix) = &echo {
            eprint!("{prefix}{line}");
        }
        {
            let mut c = captured.lock().unwrap_or_else(|e| e.into_inner());
            c.all.push_str(&line);
            if is_stderr {
                c.stderr.push_str(&line);
            }
        }
        lines.send_modify(|n| *n += 1);
    }
}
