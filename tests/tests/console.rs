//! The live event console (`GET /console`) in a real browser: headless Debian `chromium` driven
//! by `playwright-core` (`tests/browser/console.test.mjs`, run with `node --test`).
//!
//! A publisher and one gateway (shared Redis and Postgres, history at its default) serve the
//! page, `/ws` and `/v1/events`. The page connects through the reference client
//! (`/console/ryze-events.js`). The node script connects the page, publishes events and checks
//! what the page shows; then the two sides meet through files in a control directory: the
//! script writes `connected` after the page showed seq 1 and 2; this test SIGTERMs the gateway
//! (the page must show the 1001 close), publishes seq 3, 4 and 5 while no gateway runs (they
//! reach history only), starts a new gateway on the same address and writes `restarted`. The
//! page must reconnect with its backoff, resume after seq 2's offset and show seq 3–5, then the
//! live seq 6: each once, in order. A connect from an offset this stream never issued must show
//! the `stream.gap` line first.
//!
//! Needs `node`, `chromium` and `tests/browser/node_modules` (`tests/browser/setup.sh` installs
//! them). Without them the test is skipped with a message, except under `CI`, where it fails.
//! The screenshot goes to `artifacts/console.png`; with `UPDATE_DOCS_SCREENSHOT=1` it is also
//! copied to `docs/img/console.png`.

use ryze_tests::fixtures as common;

use common::browser::{browser_tools, repo_root, NodeRun};
use common::System;
use serde_json::json;

/// Seqs the test publishes while the gateway is down (the script publishes 1, 2 and 6).
const WHILE_DOWN: [u32; 3] = [3, 4, 5];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_shows_live_events_resumes_after_a_gateway_restart_and_shows_gaps() {
    let Some(tools) = browser_tools() else { return };

    let listen = format!("127.0.0.1:{}", ryze_tests::free_port());
    let gateway_env = [
        ("LISTEN_ADDR", listen.clone()),
        ("CONSOLE_ENABLED", "true".to_owned()),
    ];
    let mut sys = System::start("console-demo", json!({"enabled": true}), 1, &gateway_env).await;

    let control = tempfile::tempdir().expect("control dir");
    let screenshot = repo_root().join("artifacts/console.png");
    let _ = std::fs::remove_file(&screenshot);
    let mut node = common::browser::node_test(&tools, "console.test.mjs", &sys, control.path());
    node.env("SCREENSHOT", &screenshot);
    let mut node = NodeRun::spawn(node);

    // Phase 1 runs in the browser; the script says when the page has seen seq 1 and 2.
    if let Err(e) = node.wait_for_file(&control.path().join("connected")).await {
        node.child.start_kill().ok();
        panic!("{e:#}\n{}", node.output());
    }

    let mut old = sys.gateways.remove(0);
    old.sigterm();
    let status = old.wait_exit(common::READY).await.expect("gateway exit");
    assert!(status.success(), "gateway exited with {status}");
    // No gateway holds the page now: the frames go to history only (D37).
    let items: Vec<String> = WHILE_DOWN
        .iter()
        .map(|seq| sys.item("message.status", &format!(r#"{{"seq":{seq}}}"#)))
        .collect();
    let (status, body) = common::post_events(&sys.publisher, &common::batch(&items)).await;
    assert_eq!(status, 202, "{body}");
    let counts: serde_json::Value = serde_json::from_str(&body).expect("ingest JSON");
    assert_eq!(
        counts["published"].as_u64().unwrap_or(0) + counts["noListeners"].as_u64().unwrap_or(0),
        WHILE_DOWN.len() as u64,
        "{body}"
    );
    let new = sys.env.gateway(&gateway_env).await;
    assert_eq!(new.addr().to_string(), listen);
    sys.gateways.push(new);
    std::fs::write(control.path().join("restarted"), b"").expect("writing restarted");

    let status = node.finish().await;
    let report = node.output();
    assert!(
        status.success(),
        "node --test console.test.mjs: {status}\n{report}\ngateway:\n{}",
        sys.gw().logs()
    );
    // All four tests ran: none was skipped for a missing variable.
    assert!(
        report.contains("pass 4") && report.contains("skipped 0"),
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
