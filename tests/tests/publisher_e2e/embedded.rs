//! The single-process mode, and embedded publishers alongside Redis.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn embedded_single_process_mode_delivers_end_to_end_without_redis() {
    let db = pg().await.fresh_database().await.unwrap();
    let env = Env::with(db.url, None, None).await;
    let sales = env.create_instance("sales").await;
    let idle = env.create_instance("idle").await;
    let gw = env
        .gateway(&[
            ("EMBEDDED_PUBLISHER", "true".into()),
            ("PUBLISHER_API_KEY", API_KEY.into()),
            ("PUBLIC_BASE_URL", BASE_URL.into()),
        ])
        .await;
    configure(
        &gw,
        "sales",
        &env.account_token,
        json!({"enabled": true, "events": ["message.exchange", "label.update"]}),
    )
    .await;
    configure(&gw, "idle", &env.account_token, json!({"enabled": true})).await;

    // /health has no Redis check without Redis (D16).
    let health: serde_json::Value = ryze_tests::http()
        .get(gw.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["checks"], json!({"db": "ok"}));

    let (status, text) = post_events_auth(
        &gw,
        &item(&sales.id, "label.update", "{}"),
        Some("Bearer x"),
    )
    .await;
    assert_eq!(
        (status, text.as_str()),
        (401, envelope("Invalid token").as_str())
    );
    publish_expect(&gw, &item(&sales.id, "label.update", "{}"), 0, 0, 1, 0).await;

    let mut c = connect(&gw, "sales", &sales.token).await;
    let body = batch(&[
        item(&sales.id, "message.status", golden_data("message.status")),
        item(
            &idle.id,
            "message.exchange",
            golden_data("message.exchange"),
        ),
        item(
            &sales.id,
            "message.exchange",
            golden_data("message.exchange"),
        ),
        item(&sales.id, "label.update", golden_data("label.update")),
    ]);
    publish_expect(&gw, &body, 2, 1, 1, 0).await;
    for e in ["message.exchange", "label.update"] {
        assert_eq!(
            c.next_text(WAIT).await.unwrap(),
            frame(e, golden_data(e), &sales)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_mode_applies_config_changes_to_open_connections() {
    let db = pg().await.fresh_database().await.unwrap();
    let env = Env::with(db.url, None, None).await;
    let sales = env.create_instance("sales").await;
    // No Redis, so no control channel to watch: a probe instance without clients shows when
    // the relay has processed a later change (notifications are relayed in commit order).
    let probe = env.create_instance("probe").await;
    let gw = env
        .gateway(&[
            ("EMBEDDED_PUBLISHER", "true".into()),
            ("PUBLISHER_API_KEY", API_KEY.into()),
            ("PUBLIC_BASE_URL", BASE_URL.into()),
        ])
        .await;
    let account = env.account_token.clone();
    configure(&gw, "sales", &account, json!({"enabled": true})).await;
    let mut c = connect(&gw, "sales", &sales.token).await;
    let mut probe_enabled = false;
    let mut change = |config: serde_json::Value| {
        probe_enabled = !probe_enabled;
        let probe_config = json!({ "enabled": probe_enabled });
        let gw = &gw;
        let account = account.clone();
        let probe = probe.clone();
        async move {
            configure(gw, "sales", &account, config).await;
            configure(gw, "probe", &account, probe_config).await;
            // Enabled without clients = noListeners; disabled = filtered.
            let want = if probe_enabled {
                r#""noListeners":1"#
            } else {
                r#""filtered":1"#
            };
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let (status, text) = post_events(gw, &item(&probe.id, "label.update", "{}")).await;
                assert_eq!(status, 202, "{text}");
                if text.contains(want) {
                    return;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the relay never applied the probe's change"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    };

    change(json!({"enabled": true, "events": ["message.status"]})).await;
    let s1 = r#"{"sentinel":1}"#;
    let mut items: Vec<String> = EVENTS
        .iter()
        .map(|e| item(&sales.id, e, golden_data(e)))
        .collect();
    items.push(item(&sales.id, "message.status", s1));
    publish_expect(&gw, &batch(&items), 2, 5, 0, 0).await;
    for (e, d) in [
        ("message.status", golden_data("message.status")),
        ("message.status", s1),
    ] {
        assert_eq!(c.next_text(WAIT).await.unwrap(), frame(e, d, &sales));
    }

    change(json!({"enabled": false})).await;
    publish_expect(&gw, &item(&sales.id, "message.status", s1), 0, 1, 0, 0).await;
    change(json!({"enabled": true, "events": ["call.update"]})).await;
    let s2 = r#"{"sentinel":2}"#;
    publish_expect(
        &gw,
        &batch(&[
            item(&sales.id, "message.status", s1),
            item(&sales.id, "call.update", s2),
        ]),
        1,
        1,
        0,
        0,
    )
    .await;
    assert_eq!(
        c.next_text(WAIT).await.unwrap(),
        frame("call.update", s2, &sales),
        "re-enabled: the sentinel is the first frame on the same socket"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_publishers_with_redis_fan_out_to_clients_on_every_pod() {
    let env = Env::new().await;
    let sales = env.create_instance("sales").await;
    let embedded = [
        ("EMBEDDED_PUBLISHER", "true".to_owned()),
        ("PUBLISHER_API_KEY", API_KEY.to_owned()),
        ("PUBLIC_BASE_URL", BASE_URL.to_owned()),
    ];
    let a = env.gateway(&embedded).await;
    let b = env.gateway(&embedded).await;
    configure(&a, "sales", &env.account_token, json!({"enabled": true})).await;
    let mut on_a = connect(&a, "sales", &sales.token).await;
    let mut on_b = connect(&b, "sales", &env.account_token).await;
    assert_eq!(env.numsub(&sales.id).await, 2);

    let items: Vec<String> = EVENTS
        .iter()
        .map(|e| item(&sales.id, e, golden_data(e)))
        .collect();
    // Ingested on A, delivered on both pods; then ingested on B.
    publish_expect(&a, &batch(&items), 6, 0, 0, 0).await;
    publish_expect(&b, &batch(&items[..1]), 1, 0, 0, 0).await;
    for c in [&mut on_a, &mut on_b] {
        for e in EVENTS.iter().chain(&EVENTS[..1]) {
            assert_eq!(
                c.next_text(WAIT).await.unwrap(),
                frame(e, golden_data(e), &sales)
            );
        }
    }
}
