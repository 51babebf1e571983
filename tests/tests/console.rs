//! The live event console (`GET /console`) in a real browser: headless Debian `chromium` driven
//! by `playwright-core` (`tests/browser/console.test.mjs`, run with `node --test`).
//!
//! One gateway in embedded mode (no Redis) on a fresh database serves the page, `/ws` and
//! `/v1/events`. The node script connects the page, publishes events and checks what the page
//! shows; then the two sides meet through files in a control directory: the script writes
//! `connected`, this test SIGTERMs the gateway (the page must show the 1001 close), starts a new
//! one on the same port and writes `restarted`; the page must reconnect with its backoff and show
//! the next event.
//!
//! Needs `node`, `chromium` and `tests/browser/node_modules` (`tests/browser/setup.sh` installs
//! them). Without them the test is skipped with a message, except under `CI`, where it fails.
//! The screenshot goes to `artifacts/console.png`; with `UPDATE_DOCS_SCREENSHOT=1` it is also
//! copied to `docs/img/console.png`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::bail;
use ryze_tests::{free_port, http, pg, run_cli_json, Bin, Service, TestDb};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

/// `PUBLISHER_API_KEY` of the embedded publisher.
const API_KEY: &str = "console-test-publisher-key";
/// Upper bound for a gateway to become ready or to exit.
const READY: Duration = Duration::from_secs(30);
/// Upper bound for the node script to reach its hand-over point (includes starting chromium).
const PHASE: Duration = Duration::from_secs(60);
/// Upper bound for the whole node run.
const NODE_RUN: Duration = Duration::from_secs(120);
/// How often the control directory is polled.
const POLL: Duration = Duration::from_millis(50);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_shows_live_events_and_reconnects_after_a_gateway_restart() {
    let Some(tools) = browser_tools() else { return };

    let db = pg().await.fresh_database().await.expect("fresh database");
    let (instance_id, instance_name, account_token, instance_token) = seed(&db).await;

    let port = free_port();
    let admin_port = free_port();
    let gateway_env = vec![
        ("LISTEN_ADDR", format!("127.0.0.1:{port}")),
        ("ADMIN_LISTEN_ADDR", format!("127.0.0.1:{admin_port}")),
        ("DATABASE_URL", db.url.clone()),
        ("EMBEDDED_PUBLISHER", "true".to_owned()),
        ("PUBLISHER_API_KEY", API_KEY.to_owned()),
        ("PUBLIC_BASE_URL", format!("http://127.0.0.1:{port}")),
        ("CONSOLE_ENABLED", "true".to_owned()),
    ];
    let mut gateway = start_gateway(&gateway_env).await;

    let resp = http()
        .post(gateway.url(&format!("/api/events/websocket/{instance_name}")))
        .header("token", &account_token)
        .json(&json!({"enabled": true}))
        .send()
        .await
        .expect("POST /api/events/websocket");
    assert_eq!(
        resp.status(),
        200,
        "enabling: {}",
        resp.text().await.unwrap_or_default()
    );

    let control = tempfile::tempdir().expect("control dir");
    let screenshot = repo_root().join("artifacts/console.png");
    let _ = std::fs::remove_file(&screenshot);
    let mut node = Command::new(&tools.node);
    node.args(["--test", "--test-reporter=spec", "console.test.mjs"])
        .current_dir(browser_dir())
        .env("GATEWAY_URL", gateway.url(""))
        .env("INSTANCE", &instance_name)
        .env("TOKEN", &instance_token)
        .env("INGEST_URL", gateway.url("/v1/events"))
        .env("INGEST_KEY", API_KEY)
        .env("INSTANCE_ID", &instance_id)
        .env("SCREENSHOT", &screenshot)
        .env("CONTROL_DIR", control.path())
        .env("CHROMIUM", &tools.chromium);
    let mut node = NodeRun::spawn(node);

    // Phase 1 runs in the browser; the script says when the page is connected again.
    if let Err(e) = node.wait_for_file(&control.path().join("connected")).await {
        node.child.start_kill().ok();
        panic!("{e:#}\n{}", node.output());
    }

    gateway.sigterm();
    let status = gateway.wait_exit(READY).await.expect("gateway exit");
    assert!(status.success(), "gateway exited with {status}");
    let _gateway = start_gateway(&gateway_env).await;
    std::fs::write(control.path().join("restarted"), b"").expect("writing restarted");

    let status = node.finish().await;
    let report = node.output();
    assert!(
        status.success(),
        "node --test console.test.mjs: {status}\n{report}"
    );
    // All three tests ran: none was skipped for a missing variable.
    assert!(
        report.contains("pass 3") && report.contains("skipped 0"),
        "{report}"
    );
    println!("{report}");

    let png = std::fs::read(&screenshot).expect("screenshot saved");
    assert!(
        png.starts_with(b"\x89PNG"),
        "{} is not a PNG",
        screenshot.display()
    );
    if std::env::var_os("UPDATE_DOCS_SCREENSHOT").is_some() {
        let docs = repo_root().join("docs/img");
        std::fs::create_dir_all(&docs).expect("creating docs/img");
        std::fs::copy(&screenshot, docs.join("console.png"))
            .expect("copying the screenshot to docs/img");
    }
}

/// Where the browser and its driver are.
struct Tools {
    node: PathBuf,
    chromium: PathBuf,
}

/// The tools, or `None` after printing why the test is skipped. Under `CI` a missing tool fails
/// the test instead: CI must run it (`tests/browser/setup.sh` installs everything).
fn browser_tools() -> Option<Tools> {
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
                "console browser test needs {}: run `bash tests/browser/setup.sh`",
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

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// Migrates, creates an account and an instance. Returns the instance's id, name and token and
/// the account token.
async fn seed(db: &TestDb) -> (String, String, String, String) {
    let cli = |extra: Option<&str>| {
        let mut env = vec![("DATABASE_URL", db.url.clone())];
        if let Some(level) = extra {
            env.push(("RUST_LOG", level.to_owned()));
        }
        env
    };
    // RUST_LOG=warn: `migrate` on a fresh database logs Postgres NOTICEs ahead of its JSON.
    run_cli_json(Bin::Publisher, &["migrate"], &cli(Some("warn")))
        .await
        .expect("migrate");
    let account = run_cli_json(Bin::Publisher, &["account", "create"], &cli(None))
        .await
        .expect("account create");
    let account_id = field(&account, "id");
    let name = "console-demo";
    let instance = run_cli_json(
        Bin::Publisher,
        &[
            "instance",
            "create",
            "--account",
            &account_id,
            "--name",
            name,
        ],
        &cli(None),
    )
    .await
    .expect("instance create");
    (
        field(&instance, "id"),
        name.to_owned(),
        field(&account, "token"),
        field(&instance, "token"),
    )
}

fn field(v: &Value, key: &str) -> String {
    match v[key].as_str() {
        Some(s) => s.to_owned(),
        None => panic!("no string {key:?} in {v}"),
    }
}

async fn start_gateway(env: &[(&str, String)]) -> Service {
    let gateway = Service::spawn(Bin::Gateway, &[], env)
        .await
        .expect("spawning the gateway");
    gateway.wait_ready(READY).await.expect("gateway ready");
    gateway
}

/// The node test runner as a child process, its output captured as it arrives (so a failure
/// can show what it printed so far).
struct NodeRun {
    child: Child,
    output: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl NodeRun {
    fn spawn(mut cmd: Command) -> NodeRun {
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

    /// Polls for `path` until it exists; fails early if node exits first.
    async fn wait_for_file(&mut self, path: &Path) -> anyhow::Result<()> {
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
    async fn finish(&mut self) -> ExitStatus {
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

    fn output(&self) -> String {
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
