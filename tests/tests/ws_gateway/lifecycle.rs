//! Redis restarts, deletion, shutdown and subscription lifetime.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn redis_restart_fails_readiness_then_delivery_resumes_on_the_same_socket() {
    let private = RedisServer::start().await.unwrap();
    let db = pg().await.fresh_database().await.unwrap();
    let env = Env::with(db.url, Some(private.url()), None).await;
    let sys = System::start_in(env, "sales", json!({"enabled": true}), 1, &[], &[]).await;
    let mut c = sys.connect(0).await;
    let before = r#"{"n":"before"}"#;
    sys.deliver_one(&mut c, "message.status", before).await;

    private.stop().await.unwrap();
    sys.gw().wait_not_ready(WAIT).await.unwrap();
    sys.publisher.wait_not_ready(WAIT).await.unwrap();
    let (status, body) = post_events(&sys.publisher, &sys.item("message.status", before)).await;
    assert_eq!(
        (status, body.as_str()),
        (503, envelope("Failed to publish event").as_str())
    );

    private.restart().await.unwrap();
    sys.gw().wait_ready(READY).await.unwrap();
    sys.publisher.wait_ready(READY).await.unwrap();
    assert_eq!(numsub(&private, &sys.env.prefix, &sys.inst.id).await, 1);
    let after = r#"{"n":"after"}"#;
    sys.deliver_one(&mut c, "message.status", after).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_the_instance_closes_its_clients_1008_instance_deleted() {
    let mut sys = System::start("doomed", json!({"enabled": true}), 2, &[]).await;
    let keep = sys.env.create_instance("keep").await;
    configure(
        sys.gw(),
        "keep",
        &sys.env.account_token,
        json!({"enabled": true}),
    )
    .await;
    sys.watcher.wait("config_changed", &keep.id).await;
    let mut doomed_a = sys.connect(0).await;
    let mut doomed_b = connect(&sys.gateways[1], "doomed", &sys.inst.token).await;
    let mut kept = connect(sys.gw(), "keep", &keep.token).await;

    let out = sys.env.delete_instance("doomed").await;
    assert_eq!(out["deleted"], true);
    for c in [&mut doomed_a, &mut doomed_b] {
        assert_eq!(
            c.expect_close(WAIT).await.unwrap(),
            Some((1008, "instance deleted".to_owned()))
        );
    }
    let e = refused(
        &ws_url(sys.gw(), "doomed"),
        &[("token", &sys.env.account_token)],
    )
    .await;
    assert_refusal(&e, 404, "Instance not found");

    let data = r#"{"kept":true}"#;
    publish_expect(
        &sys.publisher,
        &batch(&[
            common::item(&keep.id, "call.update", data),
            sys.item("call.update", data),
        ]),
        1,
        0,
        0,
        1,
    )
    .await;
    assert_eq!(
        kept.next_text(WAIT).await.unwrap(),
        common::frame("call.update", data, &keep)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_closes_every_client_1001_and_the_process_exits_within_shutdown_timeout() {
    let env = Env::new().await;
    env.create_instance("sales").await;
    env.create_instance("north").await;
    let mut gw = env
        .gateway(&[
            ("SHUTDOWN_TIMEOUT", "10s".into()),
            ("DRAIN_RATE", "100".into()),
        ])
        .await;
    configure(&gw, "sales", &env.account_token, json!({"enabled": true})).await;
    configure(&gw, "north", &env.account_token, json!({"enabled": true})).await;
    let mut clients = Vec::new();
    for i in 0..6 {
        let name = if i % 2 == 0 { "sales" } else { "north" };
        clients.push(connect(&gw, name, &env.account_token).await);
    }

    gw.sigterm();
    let closes = futures_util::future::join_all(
        clients
            .iter_mut()
            .map(|c| async move { c.expect_close(WAIT).await.unwrap() }),
    )
    .await;
    for close in closes {
        assert_eq!(close, Some((1001, "server shutting down".to_owned())));
    }
    let status = gw.wait_exit(Duration::from_secs(10)).await.unwrap();
    assert!(status.success(), "{}", ryze_tests::describe(status));
    assert!(
        WsClient::connect(&ws_url(&gw, "sales"), &[("token", &env.account_token)])
            .await
            .is_err(),
        "a stopped gateway accepted an upgrade"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn subscription_is_dropped_unsubscribe_delay_after_the_last_client_leaves() {
    let env = Env::new().await;
    let sales = env.create_instance("sales").await;
    let gw = env.gateway(&[("UNSUBSCRIBE_DELAY", "2s".into())]).await;
    configure(&gw, "sales", &env.account_token, json!({"enabled": true})).await;
    let shared = redis().await;

    let a = connect(&gw, "sales", &env.account_token).await;
    let b = connect(&gw, "sales", &env.account_token).await;
    assert_eq!(env.numsub(&sales.id).await, 1, "one subscription per pod");
    a.close().await.unwrap();
    b.close().await.unwrap();
    // Kept for the delay, so a quick reconnect costs nothing...
    assert_eq!(env.numsub(&sales.id).await, 1);
    // ...then dropped.
    wait_numsub(shared, &env.prefix, &sales.id, 0).await;

    // A new client subscribes again.
    let c = connect(&gw, "sales", &env.account_token).await;
    assert_eq!(env.numsub(&sales.id).await, 1);
    c.close().await.unwrap();
    wait_numsub(shared, &env.prefix, &sales.id, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_is_bounded_by_shutdown_timeout_when_a_client_never_answers_the_close() {
    let env = Env::new().await;
    let sales = env.create_instance("sales").await;
    let mut gw = env.gateway(&[("SHUTDOWN_TIMEOUT", "1s".into())]).await;
    configure(&gw, "sales", &env.account_token, json!({"enabled": true})).await;
    let mut polite = connect(&gw, "sales", &env.account_token).await;
    // Never reads, so never answers the Close: only SHUTDOWN_TIMEOUT ends its session early.
    let _mute = RawWs::connect(gw.addr(), "/ws/sales", &sales.token, None).await;

    gw.sigterm();
    // Readiness fails from the first moment of shutdown, while the admin listener still
    // answers (CONTRACT §6).
    let status = eventually("/readyz unready during the drain", WAIT, || async {
        let resp = ryze_tests::http()
            .get(gw.admin_url("/readyz"))
            .send()
            .await
            .expect("the admin listener answers during the drain");
        match resp.status() {
            reqwest::StatusCode::OK => Err("still ready".to_owned()),
            status => Ok(status),
        }
    })
    .await;
    assert_eq!(status, 503);
    assert_eq!(
        polite.expect_close(WAIT).await.unwrap(),
        Some((1001, "server shutting down".to_owned()))
    );
    // 1 s of SHUTDOWN_TIMEOUT plus 1 s of slack, well under the 3 s the mute client's close
    // handshake could otherwise take.
    let status = gw.wait_exit(Duration::from_secs(2)).await.unwrap();
    assert!(status.success(), "{}", ryze_tests::describe(status));
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_drain_rate_still_closes_every_client_1001_within_shutdown_timeout() {
    // DRAIN_RATE=1 alone would need 6 s for 6 clients; the drain must fit SHUTDOWN_TIMEOUT.
    let env = Env::new().await;
    env.create_instance("sales").await;
    let mut gw = env
        .gateway(&[
            ("SHUTDOWN_TIMEOUT", "3s".into()),
            ("DRAIN_RATE", "1".into()),
        ])
        .await;
    configure(&gw, "sales", &env.account_token, json!({"enabled": true})).await;
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(connect(&gw, "sales", &env.account_token).await);
    }
    gw.sigterm();
    let closes = futures_util::future::join_all(
        clients
            .iter_mut()
            .map(|c| async move { c.expect_close(WAIT).await.unwrap() }),
    )
    .await;
    for close in closes {
        assert_eq!(close, Some((1001, "server shutting down".to_owned())));
    }
    let status = gw.wait_exit(WAIT).await.unwrap();
    assert!(status.success(), "{}", ryze_tests::describe(status));
}
