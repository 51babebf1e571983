//! Logs: no token or key in any line at any level.

use super::*;

/// Every secret the log scan looks for, and what it looks like hex-encoded (frame dumps).
fn leaks(logs: &str, secrets: &[(&str, &str)]) -> Vec<String> {
    let mut found = Vec::new();
    for (what, secret) in secrets {
        let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
        for line in logs.lines() {
            if line.contains(secret) || line.contains(&hex) {
                found.push(format!("{what} in: {line}"));
            }
        }
    }
    found
}

/// With `RUST_LOG=trace`, every endpoint of both binaries and the ingest path, exercised with
/// a known instance token (header, bearer and query), the account token, a wrong token, the
/// ingest key and `ENCRYPTION_KEY` set, leave none of them in any log line — neither as text
/// nor hex-encoded as in a frame dump. The gateway logs JSON (each line one object, message
/// last), the publisher text.
#[tokio::test(flavor = "multi_thread")]
async fn no_token_or_key_appears_in_any_log_line_at_trace() {
    const TOKEN: &str = "itok-5ec7e7-do-not-log-me-0123456789";
    const WRONG: &str = "wrong-5ec7e7-never-valid-9876543210";
    let key_bytes: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
    let key = base64::engine::general_purpose::STANDARD.encode(&key_bytes);
    let db = pg().await.fresh_database().await.expect("fresh database");
    let env = Env::with(db.url.clone(), Some(redis().await.url()), Some(key.clone())).await;

    // The admin command that receives the token, at TRACE too (its logs go to stderr).
    let mut cli_env = env.cli_env();
    cli_env.push(("RUST_LOG", "trace".into()));
    let out = run_cli(
        Bin::Publisher,
        &[
            "instance",
            "create",
            "--account",
            &env.account_id,
            "--name",
            "secretive",
            "--token",
            TOKEN,
        ],
        &cli_env,
    )
    .await
    .expect("instance create");
    assert!(out.status.success(), "{out:?}");
    let created: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("instance create prints JSON");
    let instance_id = created["id"].as_str().expect("id").to_owned();
    let cli_logs = String::from_utf8_lossy(&out.stderr).into_owned();

    let mut watcher = env.watcher().await;
    let trace = [("RUST_LOG", "trace".to_owned())];
    let publisher = env.publisher(&trace).await;
    let gw = env
        .gateway(&[
            ("RUST_LOG", "trace".into()),
            ("LOG_FORMAT", "json".into()),
            ("CONSOLE_ENABLED", "true".into()),
        ])
        .await;
    let name = "secretive";
    let path = |p: &str| format!("{p}/{}", segment(name));

    // Config API: account token in the header, instance token as bearer and in the query.
    configure(&gw, name, &env.account_token, json!({"enabled": true})).await;
    watcher.wait("config_changed", &instance_id).await;
    let get = |url: String| async move { http().get(url).send().await.expect("GET").status() };
    assert_eq!(
        get(gw.url(&format!(
            "{}?token={TOKEN}",
            path("/api/events/getWebsocket")
        )))
        .await,
        200
    );
    let bearer = http()
        .get(gw.url(&path("/api/events/getWebsocket")))
        .header("authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .expect("GET bearer");
    assert_eq!(bearer.status(), 200);
    let bad_body = http()
        .post(gw.url(&path("/api/events/websocket")))
        .header("token", TOKEN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("POST bad body");
    assert_eq!(bad_body.status(), 400);
    assert_eq!(
        get(gw.url(&format!(
            "{}?token={WRONG}",
            path("/api/events/getWebsocket")
        )))
        .await,
        401
    );

    // Upgrades: accepted (query token), refused (wrong token, foreign origin).
    let mut client = WsClient::connect(&format!("{}?token={TOKEN}", ws_url(&gw, name)), &[])
        .await
        .expect("upgrade");
    let wrong = WsClient::connect(&ws_url(&gw, name), &[("token", WRONG)]).await;
    assert_eq!(wrong.err().and_then(|e| e.status()), Some(401));
    let foreign = WsClient::connect(
        &ws_url(&gw, name),
        &[("token", TOKEN), ("origin", "https://evil.example")],
    )
    .await;
    assert_eq!(foreign.err().and_then(|e| e.status()), Some(403));

    // Ingest: the frame carries the instance token; a client message; bad key; bad body.
    let data = r#"{"text":"hello"}"#;
    publish_expect(
        &publisher,
        &item(&instance_id, "message.exchange", data),
        1,
        0,
        0,
        0,
    )
    .await;
    let frame = client.next_text(WAIT).await.expect("frame");
    assert!(frame.contains(TOKEN), "the frame itself carries the token");
    client
        .send_text(&format!("echo {TOKEN}"))
        .await
        .expect("client message");
    let (status, _) = post_events_auth(&publisher, "[]", Some(&format!("Bearer {WRONG}"))).await;
    assert_eq!(status, 401);
    let (status, _) = post_events(&publisher, "{broken").await;
    assert_eq!(status, 400);

    // Everything else: routing errors with a token in the query, health, console, admin.
    for url in [
        gw.url(&format!("/nope?token={TOKEN}")),
        gw.url(&format!("{}?token={TOKEN}", path("/api/events/websocket"))),
        gw.url("/health"),
        gw.url("/console"),
        gw.admin_url("/livez"),
        gw.admin_url("/readyz"),
        gw.admin_url("/metrics"),
        publisher.url("/livez"),
        publisher.url("/readyz"),
        publisher.url("/metrics"),
    ] {
        http().get(&url).send().await.expect("GET");
    }
    client.close().await.expect("close");

    // Stop both, so shutdown logging is scanned too.
    let mut services: Vec<(&str, Service)> = vec![("gateway", gw), ("publisher", publisher)];
    for (_, s) in &services {
        s.sigterm();
    }
    let mut logs = vec![("instance create", cli_logs)];
    for (what, s) in &mut services {
        s.wait_exit(WAIT).await.expect("exit after SIGTERM");
        logs.push((*what, s.logs()));
    }

    let secrets = [
        ("instance token", TOKEN),
        ("wrong token", WRONG),
        ("account token", env.account_token.as_str()),
        ("ENCRYPTION_KEY", key.as_str()),
        ("PUBLISHER_API_KEY", API_KEY),
    ];
    for (what, text) in &logs {
        let lines = text.lines().count();
        assert!(
            text.contains("TRACE") || text.contains(r#""level":"TRACE""#),
            "{what}: RUST_LOG=trace had no effect ({lines} lines)"
        );
        let found = leaks(text, &secrets);
        assert!(
            found.is_empty(),
            "{what}: {} leaking line(s) of {lines}:\n{}",
            found.len(),
            found.join("\n")
        );
    }

    // The gateway's JSON lines: one object each, fields first, message last.
    let gw_logs = &logs[1].1;
    for line in gw_logs.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if v.get("message").is_some() {
            let tail = line.rfind(",\"message\":").expect("message key");
            let rest = &line[tail + ",\"message\":".len()..line.len() - 1];
            assert!(
                serde_json::from_str::<String>(rest).is_ok() && line.ends_with('}'),
                "message is not last: {line}"
            );
        }
    }
}

/// SPEC D38 and the Redis TLS/Sentinel work add paths that handle the Redis password again:
/// reconnects after a stall (AUTH on a fresh connection), probes, history reads for a resuming
/// client. With `RUST_LOG=trace` on both binaries, the password appears in no line.
#[tokio::test(flavor = "multi_thread")]
async fn no_redis_password_appears_in_any_log_line_through_stalls_reconnects_and_resume() {
    const PASSWORD: &str = "rpw-5ec7e7-do-not-log-me-2468";
    let server = ryze_tests::RedisServer::start()
        .await
        .expect("private redis");
    server
        .cli(&["CONFIG", "SET", "requirepass", PASSWORD])
        .await
        .expect("set a password");
    let proxy = ryze_tests::FaultProxy::in_front_of(&server)
        .await
        .expect("proxy");
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{}", proxy.port());
    let db = pg().await.fresh_database().await.expect("fresh database");
    let env = Env::with(db.url, Some(url), None).await;
    let inst = env.create_instance("sales").await;
    let settings = [
        ("RUST_LOG", "trace".to_owned()),
        ("REDIS_STALL_TIMEOUT", "1s".to_owned()),
    ];
    let publisher = env.publisher(&settings).await;
    let gw = env.gateway(&settings).await;
    configure(&gw, "sales", &env.account_token, json!({"enabled": true})).await;
    let url = format!("{}?since=now", common::ws_url(&gw, "sales"));
    let mut client = WsClient::connect(&url, &[("token", inst.token.as_str())])
        .await
        .expect("resumable client");
    let event = item(&inst.id, "message.status", r#"{"n":1}"#);
    publish_expect(&publisher, &event, 1, 0, 0, 0).await;
    client.next_text(common::WAIT).await.expect("first frame");

    proxy.blackhole_existing();
    gw.wait_not_ready(common::WAIT)
        .await
        .expect("gateway stall seen");
    publisher
        .wait_not_ready(common::WAIT)
        .await
        .expect("publisher stall seen");
    gw.wait_ready(common::READY)
        .await
        .expect("gateway reconnected");
    publisher
        .wait_ready(common::READY)
        .await
        .expect("publisher reconnected");
    publish_expect(&publisher, &event, 1, 0, 0, 0).await;
    client
        .next_text(common::WAIT)
        .await
        .expect("frame after the reconnect");

    let logs = format!("{}\n{}", gw.logs(), publisher.logs());
    assert!(
        logs.contains("redis connection stalled"),
        "the stall was logged"
    );
    let found = leaks(&logs, &[("Redis password", PASSWORD)]);
    assert!(found.is_empty(), "{}", found.join("\n"));
}
