//! Accepted upgrades: token sources, instance tokens in frames, fan-out across pods, no window after the 101.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn every_token_source_and_kind_connects_and_frames_carry_the_instance_token() {
    let sys = System::start("sales", json!({"enabled": true}), 1, &[]).await;
    let gw = sys.gw();
    let url = ws_url(gw, "sales");
    let account = sys.env.account_token.clone();
    let instance = sys.inst.token.clone();
    let mut clients = Vec::new();
    for token in [&account, &instance] {
        let bearer = format!("Bearer {token}");
        let lower = format!("bearer {token}");
        for (label, u, headers) in [
            ("header", url.clone(), vec![("token", token.as_str())]),
            (
                "bearer",
                url.clone(),
                vec![("Authorization", bearer.as_str())],
            ),
            (
                "bearer any case",
                url.clone(),
                vec![("Authorization", lower.as_str())],
            ),
            ("query", format!("{url}?token={token}"), vec![]),
        ] {
            let c = WsClient::connect(&u, &headers)
                .await
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_eq!(
                c.response_headers()
                    .get("x-ratelimit-limit")
                    .map(|v| v.to_str().unwrap()),
                Some("100"),
                "the 101 carries the rate-limit headers"
            );
            clients.push((label, c));
        }
    }
    let data = r#"{"status":"read","id":"wamid.1"}"#;
    publish_expect(
        &sys.publisher,
        &sys.item("message.status", data),
        1,
        0,
        0,
        0,
    )
    .await;
    let expected = sys.frame("message.status", data);
    assert!(expected.contains(&format!(r#""token":"{instance}""#)));
    for (label, c) in &mut clients {
        assert_eq!(c.next_text(WAIT).await.unwrap(), expected, "{label}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn event_reaches_clients_on_every_pod_in_order_and_idle_pods_hold_no_subscription() {
    let mut sys = System::start("sales", json!({"enabled": true}), 2, &[]).await;
    let shared = redis().await;
    let idle = sys.env.create_instance("idle").await;
    configure(
        sys.gw(),
        "idle",
        &sys.env.account_token,
        json!({"enabled": true}),
    )
    .await;
    sys.watcher.wait("config_changed", &idle.id).await;

    assert_eq!(sys.env.numsub(&sys.inst.id).await, 0);
    let mut a = sys.connect(0).await;
    // The 101 means pod A's subscription is confirmed; pod B holds no client, so none.
    assert_eq!(sys.env.numsub(&sys.inst.id).await, 1);
    let mut b = sys.connect(1).await;
    assert_eq!(sys.env.numsub(&sys.inst.id).await, 2);
    assert_eq!(numsub(shared, &sys.env.prefix, &idle.id).await, 0);

    let items: Vec<String> = (0..1000)
        .map(|i| sys.item("message.exchange", &seq_data(i)))
        .collect();
    publish_expect(&sys.publisher, &batch(&items), 1000, 0, 0, 0).await;
    let expected: Vec<String> = (0..1000)
        .map(|i| sys.frame("message.exchange", &seq_data(i)))
        .collect();
    tokio::join!(
        read_in_order(&mut a, &expected),
        read_in_order(&mut b, &expected)
    );
    // Pod B's client is also still open and current.
    let sentinel = r#"{"sentinel":true}"#;
    sys.deliver_one(&mut b, "call.update", sentinel).await;
    assert_eq!(
        a.next_text(WAIT).await.unwrap(),
        sys.frame("call.update", sentinel)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn event_published_right_after_the_101_is_delivered() {
    // Each instance's first client makes its pod subscribe: the 101 must wait for that.
    let mut sys = System::start("first", json!({"enabled": true}), 1, &[]).await;
    let mut instances = vec![sys.inst.clone()];
    for i in 0..4 {
        let inst = sys.env.create_instance(&format!("fresh-{i}")).await;
        configure(
            sys.gw(),
            &inst.name,
            &sys.env.account_token,
            json!({"enabled": true}),
        )
        .await;
        sys.watcher.wait("config_changed", &inst.id).await;
        instances.push(inst);
    }
    for inst in &instances {
        let mut c = connect(sys.gw(), &inst.name, &inst.token).await;
        let data = format!(r#"{{"right":"after the 101 of {}"}}"#, inst.name);
        publish_expect(
            &sys.publisher,
            &common::item(&inst.id, "instance.state", &data),
            1,
            0,
            0,
            0,
        )
        .await;
        assert_eq!(
            c.next_text(WAIT).await.unwrap(),
            common::frame("instance.state", &data, inst),
            "{}",
            inst.name
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn same_instance_name_in_two_accounts_never_shares_events() {
    let mut sys = System::start("sales", json!({"enabled": true}), 1, &[]).await;
    let (_, other_account) = sys.env.create_account().await;
    let (acct2_id, acct2_token) = sys.env.create_account().await;
    let twin = sys.env.create_instance_in(&acct2_id, "sales").await;
    configure(sys.gw(), "sales", &acct2_token, json!({"enabled": true})).await;
    sys.watcher.wait("config_changed", &twin.id).await;
    // The same name under each account's token reaches that account's instance.
    let mut mine = sys.connect(0).await;
    let mut theirs = connect(sys.gw(), "sales", &acct2_token).await;
    // An account without such an instance never sees the others'.
    let e = refused(&ws_url(sys.gw(), "sales"), &[("token", &other_account)]).await;
    assert_refusal(&e, 404, "Instance not found");

    let data = r#"{"for":"the twin"}"#;
    publish_expect(
        &sys.publisher,
        &common::item(&twin.id, "call.update", data),
        1,
        0,
        0,
        0,
    )
    .await;
    assert_eq!(
        theirs.next_text(WAIT).await.unwrap(),
        common::frame("call.update", data, &twin)
    );
    let sentinel = r#"{"for":"mine"}"#;
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
        mine.next_text(WAIT).await.unwrap(),
        sys.frame("call.update", sentinel),
        "the twin's event leaked to a client of the same name in another account"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rotated_instance_token_is_refused_at_once_and_frames_carry_the_new_one() {
    let mut sys = System::start("sales", json!({"enabled": true}), 1, &[]).await;
    let url = ws_url(sys.gw(), "sales");
    let old = sys.inst.token.clone();
    // Connecting caches the token's lookup (D30).
    let mut open = connect(sys.gw(), "sales", &old).await;

    // The platform rotates the token (the update fires the config notification).
    let new = format!("rotated-{}", uuid::Uuid::new_v4());
    let db = tokio_postgres::connect(&sys.env.db_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(db.1);
    let updated =
        db.0.execute(
            "UPDATE instances SET token_hash = sha256(convert_to($1::text, 'UTF8')), \
             token_secret = convert_to($1::text, 'UTF8') WHERE id = $2::text::uuid",
            &[&new, &sys.inst.id],
        )
        .await
        .unwrap();
    assert_eq!(updated, 1);
    sys.watcher.wait("config_changed", &sys.inst.id).await;

    // The gateway drops the cached lookup on the same control message.
    let e = eventually("the old token refused", WAIT, || async {
        match WsClient::connect(&url, &[("token", &old)]).await {
            Err(e) => Ok(e),
            Ok(c) => {
                c.close().await.unwrap();
                Err("the old token still opens connections".to_owned())
            }
        }
    })
    .await;
    assert_refusal(&e, 401, "Invalid token");
    let mut fresh = connect(sys.gw(), "sales", &new).await;
    sys.inst.token = new.clone();
    let data = r#"{"after":"rotation"}"#;
    publish_expect(&sys.publisher, &sys.item("label.update", data), 1, 0, 0, 0).await;
    let want = sys.frame("label.update", data);
    assert!(want.contains(&new));
    // No re-authentication after the upgrade: the open socket keeps receiving.
    assert_eq!(open.next_text(WAIT).await.unwrap(), want);
    assert_eq!(fresh.next_text(WAIT).await.unwrap(), want);
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_receives_nothing_published_before_its_101() {
    let sys = System::start("sales", json!({"enabled": true}), 1, &[]).await;
    let mut first = sys.connect(0).await;
    let before = r#"{"n":"before the second 101"}"#;
    publish_expect(&sys.publisher, &sys.item("call.update", before), 1, 0, 0, 0).await;
    // Delivered to the first client: the pod has dispatched it.
    assert_eq!(
        first.next_text(WAIT).await.unwrap(),
        sys.frame("call.update", before)
    );
    let mut second = sys.connect(0).await;
    let after = r#"{"n":"after"}"#;
    publish_expect(&sys.publisher, &sys.item("call.update", after), 1, 0, 0, 0).await;
    assert_eq!(
        second.next_text(WAIT).await.unwrap(),
        sys.frame("call.update", after),
        "no replay: the first frame of a new connection is the first event after its 101"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrade_answers_101_with_accept_and_rate_limit_headers_and_negotiates_nothing() {
    let env = Env::new().await;
    env.create_instance("sales").await;
    let gw = env.gateway(&[]).await;
    configure(&gw, "sales", &env.account_token, json!({"enabled": true})).await;
    let resp = raw_http(
        gw.addr(),
        &upgrade_head(
            gw.addr(),
            "/ws/sales",
            &format!(
                "Sec-WebSocket-Version: 13\ntoken: {}\nSec-WebSocket-Protocol: chat, superchat\n\
                 Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
                env.account_token
            ),
        ),
    )
    .await;
    assert_eq!(resp.status, 101, "{resp:?}");
    // RFC 6455's example key and its accept value.
    assert_eq!(
        resp.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    assert!(resp
        .header("upgrade")
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket")));
    assert!(resp
        .header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("upgrade")));
    assert_eq!(resp.header("x-ratelimit-limit"), Some("100"));
    assert!(resp.header("x-ratelimit-remaining").is_some());
    assert!(resp.header("x-ratelimit-reset").is_some());
    assert_eq!(resp.header("sec-websocket-protocol"), None);
    assert_eq!(resp.header("sec-websocket-extensions"), None);
}
