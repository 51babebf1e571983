//! End-to-end tests of the ingest path (CONTRACT §1, §4, §5; SPEC §6, D6, D10, D11, D15, D29,
//! D33): an event posted to the publisher reaches WebSocket clients through Redis and real
//! gateways as the exact frame SPEC §6.1 defines, shaped by the instance's config, which
//! changes apply without a restart. Also the ingest errors, the no-listener fast path, tokens
//! encrypted at rest, the single-process mode without Redis, and a Redis outage.
//!
//! Config changes are awaited through the publisher's relay on the control channel, never
//! slept on. An event that must not arrive is proven absent with a sentinel published after
//! it: the sentinel must be the next frame.

use ryze_tests::fixtures as common;

use common::{
    batch, configure, connect, envelope, frame, item, post_events, post_events_auth,
    publish_expect, ws_url, Env, System, API_KEY, BASE_URL, EVENTS, READY, WAIT,
};
use ryze_tests::{eventually, pg, RedisServer, WsClient};
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

/// `golden_data` as clients receive it: byte for byte, but compact (D22).
fn golden_sent(event: &str) -> &'static str {
    match event {
        "label.update" => r#"{"label":{"id":"7","name":"VIP"},"action":"add"}"#,
        other => golden_data(other),
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
            sys.frame(e, golden_sent(e)),
            "expected {e}"
        );
    }
    assert_eq!(
        c.next_text(WAIT).await.expect("the sentinel"),
        sys.frame(sentinel_event, sentinel),
        "expected the sentinel next: something filtered arrived"
    );
}

#[path = "publisher_e2e/embedded.rs"]
mod embedded;
#[path = "publisher_e2e/frames.rs"]
mod frames;
#[path = "publisher_e2e/ingest.rs"]
mod ingest;
