//! The ingest API: counts, refusals, the no-listener fast path, outages.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn ingest_counts_published_filtered_unlistened_and_unknown_instances() {
    let mut sys = System::start("sales", json!({"enabled": true}), 1, &[]).await;
    let quiet = sys.env.create_instance("quiet").await;
    let picky = sys.env.create_instance("picky").await;
    let never = sys.env.create_instance("never-configured").await;
    for (inst, config) in [
        (&quiet, json!({"enabled": true})),
        (&picky, json!({"enabled": true, "events": ["label.update"]})),
    ] {
        configure(sys.gw(), &inst.name, &sys.env.account_token, config).await;
        sys.watcher.wait("config_changed", &inst.id).await;
    }
    let mut c = sys.connect(0).await;
    let _picky_client = connect(sys.gw(), "picky", &picky.token).await;
    let unknown = uuid::Uuid::new_v4().to_string();

    let data = r#"{"n":1}"#;
    let body = batch(&[
        item(&unknown, "message.status", data),
        item(&quiet.id, "message.status", data),
        item(&picky.id, "message.status", data),
        item(&never.id, "message.status", data),
        sys.item("message.status", data),
        item(&unknown, "call.update", data),
    ]);
    // never-configured has no config row: filtered like a disabled one.
    publish_expect(&sys.publisher, &body, 1, 2, 1, 2).await;
    assert_eq!(
        c.next_text(WAIT).await.unwrap(),
        sys.frame("message.status", data)
    );

    // A single object instead of an array.
    publish_expect(
        &sys.publisher,
        &item(&unknown, "group.flow", data),
        0,
        0,
        0,
        1,
    )
    .await;
    publish_expect(
        &sys.publisher,
        &item(&quiet.id, "group.flow", data),
        0,
        0,
        1,
        0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_ingest_requests_are_rejected_whole_with_the_error_envelope() {
    let sys = System::start("sales", json!({"enabled": true}), 1, &[]).await;
    let mut c = sys.connect(0).await;
    let id = sys.inst.id.clone();
    let good = sys.item("message.status", r#"{"ok":true}"#);

    // 401: no key, wrong key, another scheme; checked before the body.
    for auth in [
        None,
        Some("Bearer wrong-key".to_owned()),
        Some(format!("Basic {API_KEY}")),
        Some(API_KEY.to_owned()),
        Some("Bearer".to_owned()),
    ] {
        for body in [good.as_str(), "{not json"] {
            let (status, text) = post_events_auth(&sys.publisher, body, auth.as_deref()).await;
            assert_eq!(
                (status, text.as_str()),
                (401, envelope("Invalid token").as_str()),
                "{auth:?}"
            );
        }
    }
    assert_eq!(
        post_events_auth(&sys.publisher, &good, Some(&format!("bearer {API_KEY}")))
            .await
            .0,
        202,
        "the scheme is case-insensitive"
    );
    assert_eq!(
        c.next_text(WAIT).await.unwrap(),
        sys.frame("message.status", r#"{"ok":true}"#)
    );

    // 400: anything invalid rejects the whole request; the valid items are not published.
    let too_many = batch(&vec![good.clone(); 1001]);
    let bad_bodies = vec![
        "{not json".to_owned(),
        String::new(),
        "null".to_owned(),
        "42".to_owned(),
        format!(r#"{{"instanceId":"{id}","event":"message.unknown","data":{{}}}}"#),
        format!(r#"{{"instanceId":"{id}","event":"Message.Exchange","data":{{}}}}"#),
        format!(r#"{{"instanceId":"{id}","event":"message.exchange"}}"#),
        format!(r#"{{"instanceId":"{id}","data":{{}}}}"#),
        r#"{"event":"message.exchange","data":{}}"#.to_owned(),
        r#"{"instanceId":"not-a-uuid","event":"message.exchange","data":{}}"#.to_owned(),
        format!(r#"{{"instanceId":"{id}","event":7,"data":{{}}}}"#),
        format!("[{good}, 5]"),
        format!(r#"[{good}, {{"instanceId":"{id}","event":"nope","data":1}}]"#),
        format!("[{good}"),
        too_many,
    ];
    for body in &bad_bodies {
        let (status, text) = post_events(&sys.publisher, body).await;
        assert_eq!(
            (status, text.as_str()),
            (400, envelope("Invalid request body").as_str()),
            "body {:.120}",
            body
        );
    }
    // Exactly 1000 items is allowed.
    publish_expect(
        &sys.publisher,
        &batch(&vec![good.clone(); 1000]),
        1000,
        0,
        0,
        0,
    )
    .await;
    for _ in 0..1000 {
        assert_eq!(
            c.next_text(WAIT).await.unwrap(),
            sys.frame("message.status", r#"{"ok":true}"#)
        );
    }
    let sentinel = r#"{"sentinel":"after the bad bodies"}"#;
    publish_expect(
        &sys.publisher,
        &sys.item("call.update", sentinel),
        1,
        0,
        0,
        0,
    )
    .await;
    assert_eq!(
        c.next_text(WAIT).await.unwrap(),
        sys.frame("call.update", sentinel),
        "an item of a rejected request was published"
    );

    // 413 over MAX_INGEST_BYTES; exactly the limit is accepted.
    let small = sys
        .env
        .publisher(&[("MAX_INGEST_BYTES", "1024".into())])
        .await;
    let sized = |len: usize| {
        let skeleton = sys.item("label.update", r#"{"pad":""}"#);
        let pad = "x".repeat(len - skeleton.len());
        sys.item("label.update", &format!(r#"{{"pad":"{pad}"}}"#))
    };
    assert_eq!(sized(1024).len(), 1024);
    let (status, text) = post_events(&small, &sized(1025)).await;
    assert_eq!(
        (status, text.as_str()),
        (413, envelope("Payload too large").as_str())
    );
    let (status, text) = post_events(&small, &sized(1024)).await;
    assert_eq!(status, 202, "{text}");
    let _ = c
        .next_text(WAIT)
        .await
        .expect("the 1024-byte event is delivered");
}

#[tokio::test(flavor = "multi_thread")]
async fn event_without_listeners_is_counted_and_the_next_one_after_a_client_connects_arrives() {
    let sys = System::start("sales", json!({"enabled": true}), 2, &[]).await;
    let early = r#"{"n":"nobody listening"}"#;
    publish_expect(&sys.publisher, &sys.item("call.update", early), 0, 0, 1, 0).await;

    // A client on the second pod: the very next event arrives.
    let mut c = sys.connect(1).await;
    let next = r#"{"n":"first with a listener"}"#;
    publish_expect(&sys.publisher, &sys.item("call.update", next), 1, 0, 0, 0).await;
    assert_eq!(
        c.next_text(WAIT).await.unwrap(),
        sys.frame("call.update", next),
        "the event published before the client connected must not be replayed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ingest_while_redis_is_down_is_503_failed_to_publish_event() {
    let private = RedisServer::start().await.unwrap();
    let db = pg().await.fresh_database().await.unwrap();
    let env = Env::with(db.url, Some(private.url()), None).await;
    let sys = System::start_in(env, "sales", json!({"enabled": true}), 1, &[], &[]).await;
    let mut c = sys.connect(0).await;
    let data = r#"{"n":1}"#;
    sys.deliver_one(&mut c, "message.status", data).await;

    private.stop().await.unwrap();
    sys.publisher.wait_not_ready(WAIT).await.unwrap();
    let (status, text) = post_events(&sys.publisher, &sys.item("message.status", data)).await;
    assert_eq!(
        (status, text.as_str()),
        (503, envelope("Failed to publish event").as_str())
    );

    private.restart().await.unwrap();
    sys.publisher.wait_ready(READY).await.unwrap();
    sys.gw().wait_ready(READY).await.unwrap();
    let after = r#"{"n":2}"#;
    sys.deliver_one(&mut c, "message.status", after).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn config_changes_still_reach_the_publisher_after_a_postgres_restart() {
    let server = ryze_tests::PgServer::start_private().await.unwrap();
    let db = server.fresh_database().await.unwrap();
    let env = Env::with(db.url, Some(ryze_tests::redis().await.url()), None).await;
    let mut sys = System::start_in(env, "sales", json!({"enabled": true}), 1, &[], &[]).await;
    let mut c = sys.connect(0).await;

    server.stop().await.unwrap();
    sys.publisher
        .wait_for_log("config LISTEN connection lost", WAIT)
        .await
        .unwrap();
    server.start().await.unwrap();
    // The relay listens again (its second "listening" line).
    sys.publisher
        .wait_for_log_count("listening for config changes", 2, READY)
        .await
        .expect("the relay reconnects");

    // The gateway's pool may need a moment to reconnect: retry the POST (bounded).
    let config = json!({"enabled": true, "events": ["label.update"]});
    eventually(
        "the config POST succeeds after the restart",
        WAIT,
        || async {
            match common::post_config(sys.gw(), "sales", &sys.env.account_token, &config).await {
                (200, _) => Ok(()),
                (status, text) => Err(format!("{status} {text}")),
            }
        },
    )
    .await;
    sys.watcher.wait("config_changed", &sys.inst.id).await;
    let sentinel = r#"{"sentinel":"after the restart"}"#;
    publish_expect(
        &sys.publisher,
        &six_then_sentinel(&sys, "label.update", sentinel),
        2,
        5,
        0,
        0,
    )
    .await;
    expect_then_sentinel(&sys, &mut c, &["label.update"], "label.update", sentinel).await;
}
