//! The JavaScript reference client (`clients/js/`, issue 17 item 4) as part of `make test`.
//!
//! - `node --test clients/js/test/`: its unit tests (fake WebSocket, fake timers, no network).
//! - `clients/js/test/e2e.mjs` against a real gateway and publisher (shared Redis and Postgres):
//!   the client connects, the script publishes numbered events, and the application must see
//!   each exactly once, in order. Run without resume (documented frames) and with
//!   `since=now` (which a gateway without §5.7 ignores, and one with it serves with offsets).
//! - The same script with `--restart-at`: the gateway is killed mid-stream and a new one started
//!   on the same address; the client resumes with `since` and the application loses nothing.
//! - The same script with `--expect-stop`: the test deletes the instance while the client is
//!   connected; the client must surface 1008 `instance deleted` and not reconnect.
//! - The crash test again with the client in headless Chromium (`tests/browser/client.test.mjs`,
//!   the console test's driver): loaded from the gateway (`/console/ryze-events.js`) into its
//!   `/console` page.
//!
//! Needs `node` (20 or later) on `PATH`, and for the Chromium test also `chromium` and
//! `tests/browser/node_modules`; without them the tests are skipped with a message on stderr,
//! except under `CI`, where they fail.

use ryze_tests::fixtures as common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::System;
use ryze_tests::eventually;
use serde_json::json;
use tokio::process::Command;

/// Upper bound for a node run (the unit tests take under a second; the e2e a few).
const NODE_RUN: Duration = Duration::from_secs(120);

/// Events the e2e publishes.
const COUNT: usize = 300;

/// With `--restart-at`: events the application sees before the gateway is killed.
const RESTART_AT: usize = 100;

#[tokio::test]
async fn js_client_unit_tests_pass() {
    let Some(node) = node() else { return };
    let mut cmd = Command::new(&node.path);
    cmd.args(["--test", "--test-reporter=tap", "clients/js/test/"])
        .current_dir(repo_root());
    // The e2e script is also loaded by the runner; it must see no gateway and skip itself.
    for var in [
        "GATEWAY_URL",
        "INSTANCE",
        "TOKEN",
        "PUBLISHER_URL",
        "PUBLISHER_KEY",
        "INSTANCE_ID",
    ] {
        cmd.env_remove(var);
    }
    let (ok, out) = run(cmd).await;
    assert!(ok, "node --test clients/js/test/ failed:\n{out}");
    assert!(out.contains("\n# fail 0\n"), "{out}");
    let passed: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("# pass "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(passed >= 20, "only {passed} JS tests passed:\n{out}");
    println!("{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_client_receives_every_event_once_in_order_without_resume() {
    e2e("js e2e plain", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_client_receives_every_event_once_in_order_with_since_now() {
    e2e("js e2e since", true).await;
}

/// A real 1008 `instance deleted` through the platform WebSocket: the client surfaces it and
/// stops, with no reconnect attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_client_stops_when_the_instance_is_deleted() {
    let Some(node) = node() else { return };
    let sys = System::start("js e2e deleted", json!({"enabled": true}), 1, &[]).await;
    let control = tempfile::tempdir().expect("control dir");
    let mut cmd = e2e_command(&node, &sys, false, 10);
    cmd.arg("--control-dir")
        .arg(control.path())
        .args(["--expect-stop", "instance deleted"]);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawning node");
    let received = control.path().join("received");
    written_or_exited(&mut child, &received).await;
    if received.exists() {
        sys.env.delete_instance(&sys.inst.name).await;
    }
    let out = tokio::time::timeout(NODE_RUN, child.wait_with_output())
        .await
        .expect("node finishes")
        .expect("waiting for node");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "e2e.mjs failed:\n{text}");
    assert!(
        text.contains(r#""states":["connecting","open","closed 1008 instance deleted","stopped"]"#),
        "{text}"
    );
}

/// The reference client (resume on) across a gateway crash: the gateway listens on a fixed
/// address; once the application has seen [`RESTART_AT`] events, the script writes its control
/// file, and the test kills the gateway (SIGKILL: the client sees 1006, no 1001) and starts a
/// new gateway process on the same `LISTEN_ADDR` while the script keeps publishing (one batch
/// every 20 ms). The client reconnects by itself (backoff with full jitter) with
/// `since=<last offset>`; the application must see every published seq exactly once, in order,
/// with no `stream.gap` (checked by `e2e.mjs --restart-at`).
///
/// The same address works because the gateway binds with `SO_REUSEADDR` (server.rs) and the
/// killed process's listening socket is gone once it has exited (we wait for that), so the
/// lingering TIME_WAIT sockets of its connections do not block the bind.
///
/// What breaks it: events published while no gateway holds the client not reaching history
/// (the publisher skipping the append), the new gateway replaying from the wrong place (a
/// missing or repeated seq), a `stream.gap` for a retained offset, the client not resuming with
/// its last offset, or not reconnecting at all. (The client itself drops a frame repeating the
/// offset it just saw, so a duplicate exactly at the seam is hidden from the application; the
/// Rust seam and drain tests catch those.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_client_resumes_across_a_gateway_restart_without_loss() {
    let Some(node) = node() else { return };
    let listen = format!("127.0.0.1:{}", ryze_tests::free_port());
    let mut sys = System::start(
        "js e2e restart",
        json!({"enabled": true}),
        1,
        &[("LISTEN_ADDR", listen.clone())],
    )
    .await;
    let control = tempfile::tempdir().expect("control dir");
    let mut cmd = e2e_command(&node, &sys, true, COUNT);
    cmd.arg("--control-dir")
        .arg(control.path())
        .args(["--restart-at", &RESTART_AT.to_string()])
        .args(["--batch", "4"]);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawning node");
    let signal = control.path().join("restart");
    written_or_exited(&mut child, &signal).await;
    let restarted = signal.exists();
    if restarted {
        let mut old = sys.gateways.remove(0);
        old.kill9();
        old.wait_exit(common::WAIT)
            .await
            .expect("killed gateway exits");
        let new = sys.env.gateway(&[("LISTEN_ADDR", listen.clone())]).await;
        assert_eq!(new.addr().to_string(), listen);
        sys.gateways.push(new);
    }
    let out = tokio::time::timeout(NODE_RUN, child.wait_with_output())
        .await
        .expect("node finishes")
        .expect("waiting for node");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "e2e.mjs failed:\n{text}\nnew gateway:\n{}",
        sys.gw().logs()
    );
    assert!(restarted, "{text}");
    assert!(text.contains("\"ok\":true"), "{text}");
    assert!(
        text.contains("\"closed 1006\""),
        "the client saw the crash: {text}"
    );
    println!("{text}");
}

/// [`js_client_resumes_across_a_gateway_restart_without_loss`] with the client in headless
/// Chromium: the page is the gateway's `/console` (same origin: the Origin check passes and the
/// module loads under the page's CSP), the application is a callback collecting seqs. The
/// script publishes continuously and writes `restart` once the application saw
/// [`RESTART_AT`] events; the test kills the gateway (SIGKILL) and starts a new one on the same
/// `LISTEN_ADDR`. The script asserts that the application saw every published seq exactly once,
/// in order, no `stream.gap`, the 1006, and reconnects with `since=<an offset it saw>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_client_in_chromium_resumes_across_a_gateway_kill_without_loss() {
    let Some(tools) = common::browser::browser_tools() else {
        return;
    };
    let listen = format!("127.0.0.1:{}", ryze_tests::free_port());
    let gateway_env = [
        ("LISTEN_ADDR", listen.clone()),
        ("CONSOLE_ENABLED", "true".to_owned()),
    ];
    let mut sys = System::start(
        "js chromium restart",
        json!({"enabled": true}),
        1,
        &gateway_env,
    )
    .await;
    let control = tempfile::tempdir().expect("control dir");
    let mut cmd = common::browser::node_test(&tools, "client.test.mjs", &sys, control.path());
    cmd.env("COUNT", COUNT.to_string())
        .env("RESTART_AT", RESTART_AT.to_string());
    let mut node = common::browser::NodeRun::spawn(cmd);
    if let Err(e) = node.wait_for_file(&control.path().join("restart")).await {
        node.child.start_kill().ok();
        panic!("{e:#}\n{}", node.output());
    }
    let mut old = sys.gateways.remove(0);
    old.kill9();
    old.wait_exit(common::WAIT)
        .await
        .expect("killed gateway exits");
    let new = sys.env.gateway(&gateway_env).await;
    assert_eq!(new.addr().to_string(), listen);
    sys.gateways.push(new);

    let status = node.finish().await;
    let report = node.output();
    assert!(
        status.success(),
        "node --test client.test.mjs: {status}\n{report}\nnew gateway:\n{}",
        sys.gw().logs()
    );
    assert!(
        report.contains("pass 1") && report.contains("skipped 0"),
        "{report}"
    );
    assert!(report.contains("\"ok\":true"), "{report}");
    println!("{report}");
}

/// Starts a publisher and a gateway, enables an instance (a name with a space and a slash, so
/// the client's percent-encoding is exercised) and runs the e2e script against them.
async fn e2e(name: &str, resume: bool) {
    let Some(node) = node() else { return };
    let name = format!("{name}/ç");
    let sys = System::start(&name, json!({"enabled": true}), 1, &[]).await;
    let cmd = e2e_command(&node, &sys, resume, COUNT);
    let (ok, out) = run(cmd).await;
    assert!(ok, "e2e.mjs failed:\n{out}\ngateway:\n{}", sys.gw().logs());
    assert!(out.contains("\"ok\":true"), "{out}");
    assert!(out.contains(&format!("\"received\":{COUNT}")), "{out}");
    println!("{out}");
}

/// `node [--experimental-websocket] clients/js/test/e2e.mjs …` against `sys`.
fn e2e_command(node: &Node, sys: &System, resume: bool, count: usize) -> Command {
    let mut cmd = Command::new(&node.path);
    if node.major < 22 {
        cmd.arg("--experimental-websocket");
    }
    cmd.arg("clients/js/test/e2e.mjs")
        .args(["--gateway", &sys.gw().ws_url("")])
        .args(["--instance", &sys.inst.name])
        .args(["--token", &sys.inst.token])
        .args(["--publisher", &sys.publisher.url("")])
        .args(["--key", common::API_KEY])
        .args(["--instance-id", &sys.inst.id])
        .args(["--count", &count.to_string()])
        .arg(if resume { "--resume" } else { "--no-resume" })
        .current_dir(repo_root());
    cmd
}

struct Node {
    path: PathBuf,
    major: u32,
}

/// `node` from `PATH` (version 20 or later), or `None` after saying why the test is skipped.
fn node() -> Option<Node> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("node"))
            .find(|p| p.is_file())
    });
    let Some(path) = found else {
        let msg = "js_client tests need `node` (20 or later) on PATH";
        if std::env::var_os("CI").is_some() {
            panic!("{msg} (CI is set, so the test may not be skipped)");
        }
        eprintln!("SKIPPED {msg}");
        return None;
    };
    let version = std::process::Command::new(&path)
        .arg("--version")
        .output()
        .expect("node --version");
    let text = String::from_utf8_lossy(&version.stdout);
    let major: u32 = text
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("unexpected `node --version` output {text:?}"));
    assert!(
        major >= 20,
        "the JS client needs node 20 or later, found {text}"
    );
    Some(Node { path, major })
}

/// Runs `cmd` to completion (killed at [`NODE_RUN`]); returns success and stdout + stderr.
async fn run(mut cmd: Command) -> (bool, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().expect("spawning node");
    let out = tokio::time::timeout(NODE_RUN, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("node did not finish within {NODE_RUN:?}"))
        .expect("waiting for node");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Waits until node has written `path`, or has exited (its output is asserted by the caller).
async fn written_or_exited(child: &mut tokio::process::Child, path: &std::path::Path) {
    let what = format!("node wrote {}", path.display());
    eventually(&what, NODE_RUN, || {
        let exited = child.try_wait().expect("node status");
        let written = path.exists();
        async move {
            if written || exited.is_some() {
                Ok(())
            } else {
                Err("not written yet, node still running".to_owned())
            }
        }
    })
    .await;
}
