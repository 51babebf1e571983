//! Client frames and heartbeat after the upgrade (D7, D27): limits, pings, close codes.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn client_message_of_4096_bytes_is_ignored_and_of_4097_bytes_closes_1009() {
    let sys = System::start("sales", json!({"enabled": true}), 1, &[]).await;
    let mut c = sys.connect(0).await;
    c.send_text(&"a".repeat(4096)).await.unwrap();
    let data = r#"{"still":"open"}"#;
    sys.deliver_one(&mut c, "group.flow", data).await;

    c.send_text(&"a".repeat(4097)).await.unwrap();
    assert_eq!(
        c.expect_close(WAIT).await.unwrap(),
        Some((1009, "message too big".to_owned()))
    );

    let mut b = sys.connect(0).await;
    b.send_binary(&[7u8; 4097]).await.unwrap();
    assert_eq!(
        b.expect_close(WAIT).await.unwrap(),
        Some((1009, "message too big".to_owned()))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_text_and_binary_frames_have_no_effect() {
    let sys = System::start("sales", json!({"enabled": true}), 1, &[]).await;
    let mut c = sys.connect(0).await;
    let mut other = sys.connect(0).await;
    let fake = sys.frame("message.exchange", r#"{"forged":true}"#);
    c.send_text(&fake).await.unwrap();
    c.send_text("subscribe all").await.unwrap();
    c.send_binary(b"\x00\x01binary").await.unwrap();
    c.stream()
        .send(Message::Ping(b"client ping".to_vec().into()))
        .await
        .unwrap();
    // The client's ping is answered.
    let pong = loop {
        match c.next_message(WAIT).await.unwrap() {
            Message::Pong(p) => break p,
            Message::Ping(_) => continue,
            other => panic!("expected the pong first, got {other:?}"),
        }
    };
    assert_eq!(&pong[..], b"client ping");

    let sentinel = r#"{"sentinel":"only this"}"#;
    publish_expect(
        &sys.publisher,
        &sys.item("label.update", sentinel),
        1,
        0,
        0,
        0,
    )
    .await;
    let want = sys.frame("label.update", sentinel);
    assert_eq!(c.next_text(WAIT).await.unwrap(), want);
    assert_eq!(other.next_text(WAIT).await.unwrap(), want);
}

#[tokio::test(flavor = "multi_thread")]
async fn client_that_never_answers_pings_is_dropped_while_one_that_answers_stays() {
    let sys = System::start(
        "sales",
        json!({"enabled": true}),
        1,
        &[
            ("WS_PING_INTERVAL", "200ms".into()),
            ("WS_PONG_TIMEOUT", "600ms".into()),
        ],
    )
    .await;
    let mut healthy = sys.connect(0).await;
    // Reading makes tungstenite answer the pings; the task returns the first text frame.
    let healthy_task =
        tokio::spawn(async move { (healthy.next_text(Duration::from_secs(60)).await, healthy) });
    let mut mute = RawWs::connect(
        sys.gw().addr(),
        &format!("/ws/{}", segment(&sys.inst.name)),
        &sys.env.account_token,
        None,
    )
    .await;
    // Text frames are no PONGs: they do not extend the deadline (D27).
    mute.on_ping = Some("this is not a pong".to_owned());
    let end = mute.read_until_close(WAIT).await.unwrap();
    assert!(end.pings >= 1, "no ping before the drop: {end:?}");
    assert_eq!(end.nonempty_pings, 0, "PINGs have an empty payload");
    assert!(end.texts.is_empty());
    assert_eq!(end.close, Some((1001, "pong timeout".to_owned())));
    assert!(mute.ends_within(WAIT).await, "connection not dropped");

    // Several pong deadlines have passed for the healthy client too.
    let sentinel = r#"{"alive":true}"#;
    publish_expect(
        &sys.publisher,
        &sys.item("instance.state", sentinel),
        1,
        0,
        0,
        0,
    )
    .await;
    let (first, _healthy) = healthy_task.await.unwrap();
    assert_eq!(first.unwrap(), sys.frame("instance.state", sentinel));
}

#[tokio::test(flavor = "multi_thread")]
async fn client_close_is_echoed() {
    let sys = System::start("sales", json!({"enabled": true}), 1, &[]).await;
    let path = format!("/ws/{}", segment(&sys.inst.name));
    let mut closing = RawWs::connect(sys.gw().addr(), &path, &sys.inst.token, None).await;
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye");
    closing.send_frame(0x8, &payload, true).await;
    let end = closing.read_until_close(WAIT).await.unwrap();
    assert_eq!(
        end.close.as_ref().map(|(code, _)| *code),
        Some(1000),
        "{end:?}"
    );
    assert!(closing.ends_within(WAIT).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn client_protocol_violation_closes_1002_and_invalid_utf8_text_closes_1007() {
    let sys = System::start("sales", json!({"enabled": true}), 1, &[]).await;
    let path = format!("/ws/{}", segment(&sys.inst.name));
    let open = || RawWs::connect(sys.gw().addr(), &path, &sys.inst.token, None);

    let mut bad_utf8 = open().await;
    bad_utf8.send_frame(0x1, &[0x61, 0xff, 0xfe], true).await;
    let end = bad_utf8.read_until_close(WAIT).await.unwrap();
    assert_eq!(
        end.close.as_ref().map(|(code, _)| *code),
        Some(1007),
        "{end:?}"
    );

    let mut unmasked = open().await;
    unmasked.send_frame(0x1, b"unmasked", false).await;
    let end = unmasked.read_until_close(WAIT).await.unwrap();
    assert_eq!(
        end.close.as_ref().map(|(code, _)| *code),
        Some(1002),
        "{end:?}"
    );

    let mut reserved = open().await;
    reserved.send_frame(0x3, b"reserved opcode", true).await;
    let end = reserved.read_until_close(WAIT).await.unwrap();
    assert_eq!(
        end.close.as_ref().map(|(code, _)| *code),
        Some(1002),
        "{end:?}"
    );

    // None of that disturbed the instance's other clients.
    let mut c = sys.connect(0).await;
    let data = r#"{"after":"violations"}"#;
    sys.deliver_one(&mut c, "call.update", data).await;
}
