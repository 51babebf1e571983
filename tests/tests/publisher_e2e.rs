//! End-to-end tests of the ingest path (CONTRACT §1, §4, §5; SPEC §6, D6, D10, D11, D15, D29,
//! D33): an event posted to the publisher reaches WebSocket clients through Redis and real
//! gateways as the exact frame SPEC §6.1 defines, shaped by the instance's config, which
//! changes apply without a restart. Also the ingest errors, the no-listener fast path, tokens
//! encrypted at rest, the single-process mode without Redis, and a Redis outage.
//!
//! Config changes are awaited through the publisher's relay on the control channel, never
//! slept on. An event that must not arrive is proven absent with a sentinel published after
//! it: the sentinel must be the next frame.

mod common;

use common::{
    batch, configure, connect, envelope, frame, item, post_events, post_events_auth,
    publish_expect, ws_url, Env, System, API_KEY, BASE_URL, EVENTS, READY, WAIT,
};
use ryze_tests::{pg, RedisServer, WsClient};
use serde_json::json;

/// A payload per event type that a re-serialising gateway would alter: keys out of
/// alphabetical order, number spellings (`1.50`, `1e3`, `-0`), escapes, non-ASCII text,
/// nulls, nesting, and (label.update) insignificant whitespace.
fn golden_data(event: &str) -> &'static str {
    match event {
        "message.exchange" => {
            r#"{"id":"wamid.msg.123","message":{"id":"wamid.msg.123","direction":"incoming","timestamp":"2026-04-28T10:30:00Z","type":"text","chat":{"jid":"5511999999999@s.whatsapp.net","name":"Jo\u00e3o \"JJ\"","type":"private"},"sender":{"jid":"5511999999999@s.whatsapp.net","lid":"123@lid","name":"João"},"content":{"text":"olá 👋\nlinha 2"},"price":1.50,"count":1e3,"zero":-0,"edit":null}}"#
        }
        "message.status" => {
            r#"{"status":"read","messageSender":"5511888888888@s.whatsapp.net","ids":["wamid.a","wamid.b"],"at":1714300200000}"#
        }
        "call.update" => {
            r#"{"status":"offer","from":"5511777777777@s.whatsapp.net","video":false}"#
        }
        "group.flow" => {
            r#"{"action":"promoted","group":{"jid":"120363000000000000@g.us","name":"Equipe"},"participants":["a@s.whatsapp.net"]}"#
        }
        "instance.state" => r#"{"state":"qr_ready","reason":null}"#,
        "label.update" => r#"{ "label" : { "id" : "7", "name" : "VIP" }, "action" : "add" }"#,
        other => panic!("no golden data for {other}"),
    }
}

/// `n` characters of the base64 alphabet (a stand-in for a media payload).
fn base64_blob(n: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    (0..n)
        .map(|i| ALPHABET[(i * 7 + i / 64) % 64] as char)
        .collect()
}

/// Publishes all six types (with their golden data) followed by a sentinel of type
/// `sentinel_event`.
fn six_then_sentinel(sys: &System, sentinel_event: &str, sentinel: &str) -> String {
    let mut items: Vec<String> = EVENTS.iter().map(|e| sys.item(e, golden_data(e))).collect();
    items.push(sys.item(sentinel_event, sentinel));
    batch(&items)
}

/// Asserts the next frames are exactly `events` (golden data) and then the sentinel.
async fn expect_then_sentinel(
    sys: &System,
    c: &mut WsClient,
    events: &[&str],
    sentinel_event: &str,
    sentinel: &str,
) {
    for e in events {
        assert_eq!(
            c.next_text(WAIT).await.expect("a frame"),
            sys.frame(e, golden_data(e)),
            "expected {e}"
        );
    }
    assert_eq!(
        c.next_text(WAIT).await.expect("the sentinel"),
        sys.frame(sentinel_event, sentinel),
        "expected the sentinel next: something filtered arrived"
    );
}

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
                golden_data(e),
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
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match WsClient::connect(
            &ws_url(sys.gw(), "sales"),
            &[("token", &sys.env.account_token)],
        )
        .await
        {
            Err(e) => {
                assert_eq!(e.status(), Some(400), "{e}");
                break;
            }
            Ok(extra) => {
                extra.close().await.unwrap();
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "upgrades still accepted while disabled"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }

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
async fn ingest_while_redis_is_down_is_503_failed_to_publish_event() {
    let private = RedisServer::start().await.unwrap();
    let db = pg().await.fresh_database().await.unwrap();
    let env = Env::with(db.url, Some(private.url()), None).await;
    let sys = System::start_in(env, "sales", json!({"enabled": true}), 1, &[], &[]).await;
    let mut c = sys.connect(0).await;
    let data = r#"{"n":1}"#;
    publish_expect(
        &sys.publisher,
        &sys.item("message.status", data),
        1,
        0,
        0,
        0,
    )
    .await;
    assert_eq!(
        c.next_text(WAIT).await.unwrap(),
        sys.frame("message.status", data)
    );

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
    publish_expect(
        &sys.publisher,
        &sys.item("message.status", after),
        1,
        0,
        0,
        0,
    )
    .await;
    assert_eq!(
        c.next_text(WAIT).await.unwrap(),
        sys.frame("message.status", after)
    );
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
    let deadline = tokio::time::Instant::now() + READY;
    while sys
        .publisher
        .logs()
        .matches("listening for config changes")
        .count()
        < 2
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay did not reconnect:\n{}",
            sys.publisher.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }

    // The gateway's pool may need a moment to reconnect: retry the POST (bounded).
    let deadline = tokio::time::Instant::now() + WAIT;
    let config = json!({"enabled": true, "events": ["label.update"]});
    loop {
        let (status, text) =
            common::post_config(sys.gw(), "sales", &sys.env.account_token, &config).await;
        if status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "config POST kept failing after the restart: {status} {text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
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
