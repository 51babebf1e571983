//! A tiny `sh` supervisor that ties an external server (redis-server, postgres) to the lifetime
//! of the test process.
//!
//! Shared servers live in statics, which are never dropped, and a test binary can die from a
//! panic, `SIGKILL` or a Ctrl-C. So no cleanup may depend on Rust destructors. Instead each
//! server runs under a `/bin/sh` wrapper whose stdin is a pipe held open by this process: the
//! wrapper reads commands (`start`, `stop`) line by line, and when the pipe reaches EOF (this
//! process exited, for whatever reason, or the handle was dropped) it stops the server, waits for
//! it, and removes the server's temp dir. The kernel closes the pipe for us, so this works even
//! after `kill -9` of the test binary.
//!
//! The wrapper runs in its own process group so a terminal's Ctrl-C reaches only the test binary;
//! the servers are then stopped through the pipe like on any other exit.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The wrapper. Positional parameters: `$1` temp dir to remove at the end, `$2` log file,
/// `$3` signal that stops the server cleanly, then the server's program and arguments.
///
/// The server's stdin is `/dev/null` so it never holds the control pipe open; its output is
/// appended to the log so restarts keep the history. `RYZE_KEEP_TEST_DIRS=1` keeps the dir for
/// post-mortem debugging.
const WRAPPER: &str = r#"
dir=$1; log=$2; sig=$3; shift 3
pid=
start() {
    "$@" </dev/null >>"$log" 2>&1 &
    pid=$!
    echo "started $pid"
}
stop() {
    if [ -n "$pid" ]; then
        kill -s "$sig" "$pid" 2>/dev/null
        wait "$pid"
        st=$?
        pid=
        echo "stopped $st"
    else
        echo "stopped none"
    fi
}
start "$@"
while read -r cmd; do
    case "$cmd" in
        start) start "$@" ;;
        stop) stop ;;
        *) echo "unknown $cmd" ;;
    esac
done
stop >/dev/null
if [ "${RYZE_KEEP_TEST_DIRS:-}" != 1 ]; then rm -rf "$dir"; fi
"#;

/// How to launch one supervised server.
pub(crate) struct Launch<'a> {
    /// Short name for messages (`redis-server`, `postgres`).
    pub name: &'static str,
    /// Temp dir owned by this server; removed when the supervisor ends.
    pub dir: &'a Path,
    /// Where the server's stdout and stderr go.
    pub log: &'a Path,
    /// Signal name for a clean, prompt stop (`TERM` for redis, `INT` = fast shutdown for postgres).
    pub stop_signal: &'static str,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Run the wrapper (and so the server) as this uid/gid, e.g. `postgres` when we are root.
    pub user: Option<(u32, u32)>,
}

/// Handle on one wrapper. Cheap to share (`Arc`), because stop/start run in `spawn_blocking`.
pub(crate) struct Supervisor {
    name: &'static str,
    log: PathBuf,
    inner: Mutex<Inner>,
}

struct Inner {
    wrapper: Child,
    /// `None` once shut down: dropping it is what tells the wrapper to clean up.
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    /// The server's pid while it runs.
    pid: Option<u32>,
}

impl Supervisor {
    /// Starts the wrapper, which starts the server at once. Returns when the server process
    /// exists (not when it is ready: callers poll for that).
    pub(crate) fn launch(launch: Launch<'_>) -> anyhow::Result<Arc<Supervisor>> {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(WRAPPER)
            .arg("ryze-test-supervisor")
            .arg(launch.dir)
            .arg(launch.log)
            .arg(launch.stop_signal)
            .args(&launch.argv)
            .current_dir(launch.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Own process group: a terminal's SIGINT goes to the test binary only; the servers
            // are then stopped through the closed pipe.
            .process_group(0);
        if let Some((uid, gid)) = launch.user {
            cmd.uid(uid).gid(gid);
        }
        let mut wrapper = cmd
            .spawn()
            .with_context(|| format!("spawning the supervisor for {}", launch.name))?;
        let stdin = wrapper.stdin.take().context("supervisor stdin")?;
        let stdout = BufReader::new(wrapper.stdout.take().context("supervisor stdout")?);
        let sup = Supervisor {
            name: launch.name,
            log: launch.log.to_path_buf(),
            inner: Mutex::new(Inner {
                wrapper,
                stdin: Some(stdin),
                stdout,
                pid: None,
            }),
        };
        {
            let mut inner = sup.lock();
            let pid = read_started(&mut inner, sup.name)?;
            inner.pid = Some(pid);
        }
        Ok(Arc::new(sup))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves consistent state (plain fields), so poisoning
        // carries no information here.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The server's pid, if it was started and not stopped since.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.lock().pid
    }

    /// Whether the server process is alive (a zombie awaiting its wrapper's `wait` is not).
    pub(crate) fn is_running(&self) -> bool {
        self.pid().is_some_and(pid_is_alive)
    }

    /// The log file with the server's stdout and stderr.
    pub(crate) fn log_path(&self) -> &Path {
        &self.log
    }

    /// Stops the server with its clean-stop signal and waits for it to exit. Blocking.
    pub(crate) fn stop_blocking(&self) -> anyhow::Result<()> {
        let mut inner = self.lock();
        if inner.pid.is_none() {
            return Ok(());
        }
        send(&mut inner, "stop", self.name)?;
        let line = read_line(&mut inner, self.name)?;
        if !line.starts_with("stopped") {
            bail!("{} supervisor answered {line:?} to stop", self.name);
        }
        inner.pid = None;
        Ok(())
    }

    /// Starts the server again with the same arguments (same port, same data dir). Blocking;
    /// returns once the process exists, not when it is ready.
    pub(crate) fn start_blocking(&self) -> anyhow::Result<u32> {
        let mut inner = self.lock();
        if let Some(pid) = inner.pid {
            bail!("{} is already running (pid {pid})", self.name);
        }
        send(&mut inner, "start", self.name)?;
        let pid = read_started(&mut inner, self.name)?;
        inner.pid = Some(pid);
        Ok(pid)
    }

    /// Closes the control pipe, so the wrapper stops the server and removes its dir, and waits
    /// (bounded) for the wrapper to finish. Blocking; runs on drop of the last handle.
    pub(crate) fn shutdown_blocking(&self) {
        let mut inner = self.lock();
        drop(inner.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match inner.wrapper.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    // The server ignored its stop signal: kill both rather than hang a test.
                    if let Some(pid) = inner.pid {
                        kill_pid("KILL", pid);
                    }
                    let _ = inner.wrapper.kill();
                    let _ = inner.wrapper.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)), // poll interval of a deadline-bounded wait: nothing emits an event to await
            }
        }
        inner.pid = None;
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.shutdown_blocking();
    }
}

fn send(inner: &mut Inner, cmd: &str, name: &str) -> anyhow::Result<()> {
    let stdin = inner
        .stdin
        .as_mut()
        .with_context(|| format!("{name} supervisor already shut down"))?;
    writeln!(stdin, "{cmd}")
        .and_then(|()| stdin.flush())
        .with_context(|| format!("writing {cmd:?} to the {name} supervisor"))
}

fn read_line(inner: &mut Inner, name: &str) -> anyhow::Result<String> {
    let mut line = String::new();
    let n = inner
        .stdout
        .read_line(&mut line)
        .with_context(|| format!("reading from the {name} supervisor"))?;
    if n == 0 {
        bail!("the {name} supervisor exited unexpectedly");
    }
    Ok(line.trim().to_owned())
}

fn read_started(inner: &mut Inner, name: &str) -> anyhow::Result<u32> {
    let line = read_line(inner, name)?;
    line.strip_prefix("started ")
        .and_then(|pid| pid.parse().ok())
        .with_context(|| format!("{name} supervisor answered {line:?} instead of its pid"))
}

/// Whether `pid` names a live process: `/proc/<pid>` exists and is not a zombie.
pub fn pid_is_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Sends `signal` (a name like `TERM`) with the `kill` command; errors are ignored because the
/// process may already be gone. (`unsafe_code` is forbidden, so no `libc::kill`.)
pub(crate) fn kill_pid(signal: &str, pid: u32) {
    let _ = Command::new("kill")
        .arg("-s")
        .arg(signal)
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A process stopped with `SIGSTOP` (a hung server: its connections stay open, only timeouts
/// tell), sent `SIGCONT` when dropped, also when a test panics or a benchmark scenario
/// returns early, so its supervisor can stop it normally.
pub struct Frozen(u32);

impl Frozen {
    /// Stops `pid`.
    pub fn freeze(pid: u32) -> Frozen {
        kill_pid("STOP", pid);
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        kill_pid("CONT", self.0);
    }
}

/// Whether this process runs as root (the owner of `/proc/self` is our effective uid).
pub(crate) fn running_as_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The last `lines` lines of a log file, for error messages.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    match fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// The uid and gid of an OS user, via `id` (no libc calls without `unsafe`).
pub(crate) fn user_ids(user: &str) -> anyhow::Result<(u32, u32)> {
    let id = |flag: &str| -> anyhow::Result<u32> {
        let out = Command::new("id")
            .arg(flag)
            .arg(user)
            .output()
            .context("running `id`")?;
        if !out.status.success() {
            bail!(
                "no OS user {user:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .with_context(|| format!("parsing `id {flag} {user}`"))
    };
    Ok((id("-u")?, id("-g")?))
}

/// A fresh temp dir that outlives this handle (the supervisor removes it), optionally owned by
/// `user` so a server running as that user can write to it.
pub(crate) fn server_dir(prefix: &str, user: Option<(u32, u32)>) -> anyhow::Result<PathBuf> {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .context("creating a temp dir")?
        .keep();
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
            .with_context(|| format!("chown {} to the server user", dir.display()))?;
    }
    Ok(dir)
}
