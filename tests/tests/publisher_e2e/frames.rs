//! The frames clients receive: golden bytes, filters, mediaBase64, pass-through, decrypted tokens.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn golden_frames_of_all_six_event_types_are_byte_exact() {
    // A name that needs percent-encoding and JSON escaping; events [] means all six.
    let sys = System::start(
        "Loja Centro \"1\"",
        json!({"enabled": true, "events": [], "mediaBase64": false}),
        1,
        &[],
    )
    .await;
    let mut by_account = sys.connect(0).await;
    let mut by_instance = connect(sys.gw(), &sys.inst.name, &sys.inst.token).await;
    let items: Vec<String> = EVENTS.iter().map(|e| sys.item(e, golden_data(e))).collect();
    publish_expect(&sys.publisher, &batch(&items), 6, 0, 0, 0).await;

    for c in [&mut by_account, &mut by_instance] {
        for e in EVENTS {
            let got = c.next_text(WAIT).await.unwrap();
            let want = format!(
                r#"{{"event":"{e}","data":{},"instanceData":{{"baseUrl":"https://api.example.com","instance":"Loja Centro \"1\"","token":"{}"}}}}"#,
                golden_sent(e),
                sys.inst.token
            );
            assert_eq!(got, want);
        }
    }
    assert_eq!(
        BASE_URL, "https://api.example.com/",
        "D11: one trailing / dropped"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn events_filter_delivers_only_listed_types_and_changes_apply_without_restart() {
    let mut sys = System::start(
        "sales",
        json!({"enabled": true, "events": ["message.status"]}),
        1,
        &[],
    )
    .await;
    let mut c = sys.connect(0).await;

    let s1 = r#"{"sentinel":1}"#;
    publish_expect(
        &sys.publisher,
        &six_then_sentinel(&sys, "message.status", s1),
        2,
        5,
        0,
        0,
    )
    .await;
    expect_then_sentinel(&sys, &mut c, &["message.status"], "message.status", s1).await;

    // A new filter reaches the publisher through its relay; the open socket is kept.
    sys.configure(json!({"enabled": true, "events": ["group.flow", "call.update"]}))
        .await;
    let s2 = r#"{"sentinel":2}"#;
    publish_expect(
        &sys.publisher,
        &six_then_sentinel(&sys, "call.update", s2),
        3,
        4,
        0,
        0,
    )
    .await;
    expect_then_sentinel(
        &sys,
        &mut c,
        &["call.update", "group.flow"],
        "call.update",
        s2,
    )
    .await;

    // Back to [] = all six.
    sys.configure(json!({"enabled": true, "events": []})).await;
    let s3 = r#"{"sentinel":3}"#;
    publish_expect(
        &sys.publisher,
        &six_then_sentinel(&sys, "label.update", s3),
        7,
        0,
        0,
        0,
    )
    .await;
    expect_then_sentinel(&sys, &mut c, &EVENTS, "label.update", s3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn disabled_config_delivers_nothing_and_re_enabling_resumes_on_the_same_socket() {
    let mut sys = System::start("sales", json!({"enabled": true}), 1, &[]).await;
    let mut c = sys.connect(0).await;

    sys.configure(json!({"enabled": false})).await;
    let all: Vec<String> = EVENTS.iter().map(|e| sys.item(e, golden_data(e))).collect();
    publish_expect(&sys.publisher, &batch(&all), 0, 6, 0, 0).await;
    // New upgrades are refused as soon as the gateway has the change (it drops its cached
    // "enabled" on the same control message the watcher saw); the open connection stays.
    let url = ws_url(sys.gw(), "sales");
    let e = eventually("upgrades refused while disabled", WAIT, || async {
        match WsClient::connect(&url, &[("token", &sys.env.account_token)]).await {
            Err(e) => Ok(e),
            Ok(extra) => {
                extra.close().await.unwrap();
                Err("upgrades still accepted while disabled".to_owned())
            }
        }
    })
    .await;
    assert_eq!(e.status(), Some(400), "{e}");

    sys.configure(json!({"enabled": true, "events": ["instance.state"]}))
        .await;
    let sentinel = r#"{"state":"connected","sentinel":true}"#;
    publish_expect(
        &sys.publisher,
        &sys.item("instance.state", sentinel),
        1,
        0,
        0,
        0,
    )
    .await;
    assert_eq!(
        c.next_text(WAIT).await.unwrap(),
        sys.frame("instance.state", sentinel),
        "the first frame after re-enabling must be the sentinel"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn media_base64_false_strips_only_message_media_base64_and_true_keeps_it() {
    let mut sys = System::start(
        "sales",
        json!({"enabled": true, "mediaBase64": false}),
        1,
        &[],
    )
    .await;
    let mut c = sys.connect(0).await;
    let blob = base64_blob(200_000);

    let with_media = |media: &str| {
        format!(
            r#"{{"id":"wamid.m1","message":{{"id":"wamid.m1","type":"image","media":{media},"content":{{"text":"foto"}}}},"base64":"top-level key stays"}}"#
        )
    };
    // base64 in the middle, last, and alone; other keys and their order stay.
    let middle_in = format!(
        r#"{{"type":"image","base64":"{blob}","mimetype":"image/jpeg","url":"https://cdn.example/x.jpg","s3Url":null}}"#
    );
    let middle_out = r#"{"type":"image","mimetype":"image/jpeg","url":"https://cdn.example/x.jpg","s3Url":null}"#;
    let last_in = format!(r#"{{"type":"ptt","mimetype":"audio/ogg","base64":"{blob}"}}"#);
    let last_out = r#"{"type":"ptt","mimetype":"audio/ogg"}"#;
    let alone_in = r#"{"base64":"QUJD"}"#.to_owned();
    let alone_out = "{}";
    // Not under data.message.media, or not message.exchange: never altered (D10).
    let top_media = format!(r#"{{"media":{{"type":"image","base64":"{blob}"}}}}"#);
    let other_type = format!(r#"{{"message":{{"media":{{"base64":"{blob}"}}}}}}"#);

    let items = vec![
        sys.item("message.exchange", &with_media(&middle_in)),
        sys.item("message.exchange", &with_media(&last_in)),
        sys.item("message.exchange", &with_media(&alone_in)),
        sys.item("message.exchange", &top_media),
        sys.item("call.update", &other_type),
        sys.item("message.status", &other_type),
    ];
    publish_expect(&sys.publisher, &batch(&items), 6, 0, 0, 0).await;
    for (event, data) in [
        ("message.exchange", with_media(middle_out)),
        ("message.exchange", with_media(last_out)),
        ("message.exchange", with_media(alone_out)),
        ("message.exchange", top_media.clone()),
        ("call.update", other_type.clone()),
        ("message.status", other_type.clone()),
    ] {
        let got = c.next_text(WAIT).await.unwrap();
        assert!(
            got == sys.frame(event, &data),
            "{event}: got {} bytes: {:.300}",
            got.len(),
            got
        );
    }

    sys.configure(json!({"enabled": true, "mediaBase64": true}))
        .await;
    let kept = with_media(&middle_in);
    publish_expect(
        &sys.publisher,
        &sys.item("message.exchange", &kept),
        1,
        0,
        0,
        0,
    )
    .await;
    let got = c.next_text(WAIT).await.unwrap();
    assert!(got.len() > 200_000);
    assert!(
        got == sys.frame("message.exchange", &kept),
        "mediaBase64=true must keep the frame byte-identical"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn encrypted_tokens_are_decrypted_in_instance_data() {
    // base64 of 32 bytes 0x00..0x1f.
    let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".to_owned();
    let db = pg().await.fresh_database().await.unwrap();
    let env = Env::with(
        db.url.clone(),
        Some(ryze_tests::redis().await.url()),
        Some(key),
    )
    .await;
    let token = format!("secret-instance-token-{}", uuid::Uuid::new_v4());
    let inst = env.create_instance_with_token("vault", Some(&token)).await;
    assert_eq!(inst.token, token);

    // At rest the token is sealed (nonce || ciphertext || tag), not the plain text.
    let client = db.client().await.unwrap();
    let row = client
        .query_one(
            "SELECT token_secret FROM instances WHERE id = $1::text::uuid",
            &[&inst.id],
        )
        .await
        .unwrap();
    let secret: Vec<u8> = row.get(0);
    assert_ne!(secret, token.as_bytes());
    assert!(!secret.windows(token.len()).any(|w| w == token.as_bytes()));
    assert_eq!(secret.len(), 12 + token.len() + 16);

    let gw = env.gateway(&[]).await;
    configure(&gw, "vault", &env.account_token, json!({"enabled": true})).await;
    let publisher = env.publisher(&[]).await;
    let mut c = connect(&gw, "vault", &token).await;
    let data = r#"{"state":"connected"}"#;
    publish_expect(
        &publisher,
        &item(&inst.id, "instance.state", data),
        1,
        0,
        0,
        0,
    )
    .await;
    let got = c.next_text(WAIT).await.unwrap();
    assert_eq!(got, frame("instance.state", data, &inst));
    assert!(got.contains(&format!(r#""token":"{token}""#)));
}

#[tokio::test(flavor = "multi_thread")]
async fn any_json_value_as_data_passes_through_verbatim_and_only_media_base64_keys_are_cut() {
    let sys = System::start(
        "sales",
        json!({"enabled": true, "mediaBase64": false}),
        1,
        &[],
    )
    .await;
    let mut c = sys.connect(0).await;
    // (event, data posted, data expected) with mediaBase64=false.
    let cases = [
        ("message.exchange", "null", "null"),
        ("message.exchange", r#""base64""#, r#""base64""#),
        (
            "message.exchange",
            "[1,2.50,{\"base64\":1}]",
            "[1,2.50,{\"base64\":1}]",
        ),
        ("message.exchange", "-12.0e-3", "-12.0e-3"),
        ("call.update", "true", "true"),
        (
            "message.exchange",
            r#"{"message":"base64 is a string here"}"#,
            r#"{"message":"base64 is a string here"}"#,
        ),
        (
            "message.exchange",
            r#"{"message":{"media":"base64"}}"#,
            r#"{"message":{"media":"base64"}}"#,
        ),
        (
            "message.exchange",
            r#"{"message":{"media":{"base64":null,"type":"image"}}}"#,
            r#"{"message":{"media":{"type":"image"}}}"#,
        ),
        (
            "message.exchange",
            r#"{"message":{"media":{"type":"image","base\u0036\u0034":"QUJD"}}}"#,
            r#"{"message":{"media":{"type":"image"}}}"#,
        ),
        (
            "message.exchange",
            r#"{"message":{"media":{"Base64":"QUJD","base64x":"QUJD"}}}"#,
            r#"{"message":{"media":{"Base64":"QUJD","base64x":"QUJD"}}}"#,
        ),
    ];
    let items: Vec<String> = cases.iter().map(|(e, d, _)| sys.item(e, d)).collect();
    publish_expect(&sys.publisher, &batch(&items), cases.len(), 0, 0, 0).await;
    for (event, posted, expected) in cases {
        assert_eq!(
            c.next_text(WAIT).await.unwrap(),
            sys.frame(event, expected),
            "data {posted}"
        );
    }
}
