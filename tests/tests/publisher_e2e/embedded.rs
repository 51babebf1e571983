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
            frame(e, golden_sent(e), &sales)
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
            let probe_item = item(&probe.id, "label.update", "{}");
            eventually("the relay applied the probe's change", WAIT, || async {
                let (status, text) = post_events(gw, &probe_item).await;
                assert_eq!(status, 202, "{text}");
                if text.contains(want) {
                    Ok(())
                } else {
                    Err(text)
                }
            })
            .await;
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
                frame(e, golden_sent(e), &sales)
            );
        }
    }
}

/// D22 and §6.2: the standalone publisher and the embedded one share one encoder, so the same
/// ingest body reaches clients as the same compact bytes in both modes (spacing dropped; keys,
/// order, escapes and number spellings kept; D10 applied to spaced sources too).
#[tokio::test(flavor = "multi_thread")]
async fn both_modes_send_the_same_compact_bytes_for_the_same_ingest_body() {
    let env = Env::new().await;
    let sales = env.create_instance("sales").await;
    let gw = env.gateway(&[]).await;
    let publisher = env.publisher(&[]).await;
    configure(&gw, "sales", &env.account_token, json!({"enabled": true})).await;
    // The same database, no Redis: the single-process mode.
    let single = Env::with(env.db_url.clone(), None, None).await;
    let embedded = single
        .gateway(&[
            ("EMBEDDED_PUBLISHER", "true".into()),
            ("PUBLISHER_API_KEY", API_KEY.into()),
            ("PUBLIC_BASE_URL", BASE_URL.into()),
        ])
        .await;

    let cases = [
        ("call.update", r#"{"id": "x", "n": 1}"#, r#"{"id":"x","n":1}"#),
        (
            "message.exchange",
            "{ \"message\" : {\n\t\"media\" : { \"type\" : \"image\" , \"base64\" : \"QQ==\" },\r\n \"n\" : 1.50e3 } }",
            r#"{"message":{"media":{"type":"image"},"n":1.50e3}}"#,
        ),
        (
            "label.update",
            r#"[ "a b", "q\" \\", {"k\u00e9y" : [ ] } ]"#,
            r#"["a b","q\" \\",{"k\u00e9y":[]}]"#,
        ),
    ];
    let body = batch(
        &cases
            .iter()
            .map(|(event, data, _)| item(&sales.id, event, data))
            .collect::<Vec<_>>(),
    );
    let mut via_redis = connect(&gw, "sales", &sales.token).await;
    let mut in_process = connect(&embedded, "sales", &sales.token).await;
    publish_expect(&publisher, &body, cases.len(), 0, 0, 0).await;
    publish_expect(&embedded, &body, cases.len(), 0, 0, 0).await;
    for (event, _, compact) in cases {
        let a = via_redis.next_text(WAIT).await.expect("frame via Redis");
        let b = in_process.next_text(WAIT).await.expect("frame in process");
        assert_eq!(a, b, "{event}: the two modes sent different bytes");
        assert_eq!(a, frame(event, compact, &sales), "{event}");
    }
}
