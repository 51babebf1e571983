//! Browser plumbing shared by the tests that drive headless Debian `chromium` through
//! `playwright-core` (tests/browser): finding the tools (skip with a message when missing,
//! fail under `CI`) and running `node --test` with its output captured as it arrives.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::bail;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

/// Upper bound for the node script to reach a hand-over point (includes starting chromium).
pub const PHASE: Duration = Duration::from_secs(60);
/// Upper bound for a whole node run.
pub const NODE_RUN: Duration = Duration::from_secs(120);
/// How often a control directory is polled.
const POLL: Duration = Duration::from_millis(50);

/// Where the browser and its driver are.
pub struct Tools {
    pub node: PathBuf,
    pub chromium: PathBuf,
}

/// The tools, or `None` after printing why the test is skipped. Under `CI` a missing tool fails
/// the test instead: CI must run it (`tests/browser/setup.sh` installs everything).
pub fn browser_tools() -> Option<Tools> {
    let node = find_program("node");
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| find_program("chromium"));
    let driver = browser_dir().join("node_modules/playwright-core/package.json");
    let mut missing = Vec::new();
    if node.is_none() {
        missing.push("node".to_owned());
    }
    if chromium.is_none() {
        missing.push("chromium".to_owned());
    }
    if !driver.is_file() {
        missing.push(format!("{} (npm ci)", driver.display()));
    }
    match (node, chromium) {
        (Some(node), Some(chromium)) if missing.is_empty() => Some(Tools { node, chromium }),
        _ => {
            let msg = format!(
                "browser tests need {}: run `bash tests/browser/setup.sh`",
                missing.join(", ")
            );
            if std::env::var_os("CI").is_some() {
                panic!("{msg} (CI is set, so the test may not be skipped)");
            }
            // Straight to stderr, past libtest's capture, so the skip is visible.
            let _ = writeln!(std::io::stderr(), "SKIPPED {msg}");
            None
        }
    }
}

fn find_program(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

pub fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// The node test runner as a child process, its output captured as it arrives (so a failure
/// can show what it printed so far).
pub struct NodeRun {
    pub child: Child,
    output: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl NodeRun {
    pub fn spawn(mut cmd: Command) -> NodeRun {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawning node");
        let output = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(tokio::spawn(collect(out, Arc::clone(&output))));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(tokio::spawn(collect(err, Arc::clone(&output))));
        }
        NodeRun {
            child,
            output,
            readers,
        }
    }

    /// Polls for `path` until it exists; fails early if node exits first. Not
    /// [`ryze_tests::eventually`]: the caller kills node and adds its output to the error.
    pub async fn wait_for_file(&mut self, path: &Path) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + PHASE;
        loop {
            if path.exists() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("node exited ({status}) before writing {}", path.display());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("node did not write {} within {PHASE:?}", path.display());
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits for node to exit and for the rest of its output; kills it at [`NODE_RUN`].
    pub async fn finish(&mut self) -> ExitStatus {
        let status = match tokio::time::timeout(NODE_RUN, self.child.wait()).await {
            Ok(status) => status.expect("waiting for node"),
            Err(_) => {
                self.child.start_kill().ok();
                panic!("node did not finish within {NODE_RUN:?}\n{}", self.output());
            }
        };
        for reader in std::mem::take(&mut self.readers) {
            let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
        }
        status
    }

    pub fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

async fn collect(stream: impl AsyncRead + Unpin, into: Arc<Mutex<String>>) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut out = into.lock().unwrap_or_else(|e| e.into_inner());
        out.push_str(&line);
        out.push('\n');
    }
}
