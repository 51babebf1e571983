//! The open-files limit (issue 16, item 5): a gateway under a low `RLIMIT_NOFILE` raises its
//! soft limit to the hard one, caps connections below what the limit allows, and answers every
//! upgrade past that cap with a prompt 503 instead of leaving it in the accept queue.

use super::*;
use ryze_tests::{Bin, Listeners, Service};
use std::path::Path;

/// Upper bound for one upgrade's answer. A handshake stuck in the accept queue (the bug this
/// guards against) gets no answer at all, so this only has to be far above a loaded answer.
const PROMPT: Duration = Duration::from_secs(10);
/// The soft and hard limits the gateway starts under (`prlimit --nofile=SOFT:HARD`).
const SOFT: u64 = 128;
const HARD: u64 = 256;

/// The value of `key=` on the first log line containing `message`.
fn logged_field(logs: &str, message: &str, key: &str) -> u64 {
    let line = logs
        .lines()
        .find(|l| l.contains(message))
        .unwrap_or_else(|| panic!("no {message:?} line in:\n{logs}"));
    let prefix = format!("{key}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(prefix.as_str()))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {key} in {line:?}"))
}

/// One unlabelled sample of the gateway's `/metrics`.
async fn gauge(gw: &Service, name: &str) -> u64 {
    let text = ryze_tests::http()
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("scrape body");
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

/// `/readyz` answers 200 within [`PROMPT`].
async fn assert_ready(gw: &Service) {
    let resp = ryze_tests::http()
        .get(gw.admin_url("/readyz"))
        .timeout(PROMPT)
        .send()
        .await
        .expect("/readyz answered");
    assert_eq!(resp.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn under_a_low_open_files_limit_every_upgrade_past_the_cap_is_a_prompt_503() {
    let env = Env::new().await;
    env.create_instance("sales").await;
    let gateway = Bin::Gateway.path().expect("gateway binary");
    let gateway = gateway.to_str().expect("utf-8 path");
    let limit = format!("--nofile={SOFT}:{HARD}");
    // Default MAX_CONNECTIONS and DATABASE_POOL_SIZE; only the per-token rate limit is lifted,
    // since every client below uses one token.
    let vars = common::merge(
        env.service_env(),
        &[("RATE_LIMIT_PER_MINUTE", "1000000".into())],
    );
    // prlimit sets the limits on itself, then execs the gateway (same pid).
    let gw = Service::spawn_program(
        Path::new("prlimit"),
        Listeners::PublicAndAdmin,
        &[&limit, "--", gateway],
        &vars,
    )
    .await
    .expect("spawn gateway under prlimit");
    gw.wait_ready(READY).await.expect("gateway ready");

    // The soft limit was raised to the hard one; the cap leaves the documented reserve.
    let logs = gw.logs();
    assert_eq!(logged_field(&logs, "open-files limit", "soft_limit"), HARD);
    assert_eq!(logged_field(&logs, "open-files limit", "hard_limit"), HARD);
    assert_eq!(logged_field(&logs, "open-files limit", "raised_from"), SOFT);
    let cap = logged_field(&logs, "open-files limit", "connection_cap");
    assert_eq!(
        cap,
        HARD - (16 + 1 + 64),
        "reserve = DATABASE_POOL_SIZE + 1 + 64"
    );
    assert_eq!(gauge(&gw, "ryze_gateway_connection_cap").await, cap);

    configure(&gw, "sales", &env.account_token, json!({"enabled": true})).await;
    let url = ws_url(&gw, "sales");
    let token = [("token", env.account_token.as_str())];
    let mut clients = Vec::new();
    let first_refusal = loop {
        match tokio::time::timeout(PROMPT, WsClient::connect(&url, &token)).await {
            Err(_) => panic!(
                "upgrade {} got no answer within {PROMPT:?}",
                clients.len() + 1
            ),
            Ok(Ok(client)) => {
                clients.push(client);
                assert!(clients.len() as u64 <= cap, "accepted past the cap {cap}");
            }
            Ok(Err(e)) => break e,
        }
    };
    assert_refusal(&first_refusal, 503, "Server at capacity");
    assert_eq!(
        clients.len() as u64,
        cap,
        "accepted before the first refusal"
    );

    // At the cap, every further upgrade is refused at once, and the admin listener answers.
    for i in 0..20 {
        match tokio::time::timeout(PROMPT, WsClient::connect(&url, &token)).await {
            Err(_) => panic!("upgrade past the cap ({i}) got no answer within {PROMPT:?}"),
            Ok(Ok(_)) => panic!("upgrade past the cap ({i}) succeeded"),
            Ok(Err(e)) => assert_refusal(&e, 503, "Server at capacity"),
        }
    }
    assert_ready(&gw).await;
    drop(clients);
}
