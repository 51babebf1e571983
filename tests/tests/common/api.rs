//! The product's HTTP and WebSocket API as tests use it: URLs, config requests, ingest
//! requests and the exact texts they answer with (frames, error envelopes, metrics).

use ryze_tests::{Service, WsClient};

use super::{Instance, API_KEY, EXPECTED_BASE_URL};

/// The six event types (SPEC §1).
pub const EVENTS: [&str; 6] = [
    "message.exchange",
    "message.status",
    "call.update",
    "group.flow",
    "instance.state",
    "label.update",
];

/// A path segment, percent-encoded (everything but RFC 3986 unreserved characters).
pub fn segment(name: &str) -> String {
    let mut out = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `ws://<gateway>/ws/<name>`.
pub fn ws_url(gw: &Service, name: &str) -> String {
    gw.ws_url(&format!("/ws/{}", segment(name)))
}

/// Opens `/ws/<name>` with the `token` header; panics on refusal.
pub async fn connect(gw: &Service, name: &str, token: &str) -> WsClient {
    WsClient::connect(&ws_url(gw, name), &[("token", token)])
        .await
        .unwrap_or_else(|e| panic!("upgrade of /ws/{name} failed: {e}"))
}

/// `POST /api/events/websocket/<name>` with `token`; returns (status, body text).
pub async fn post_config(
    gw: &Service,
    name: &str,
    token: &str,
    body: &serde_json::Value,
) -> (u16, String) {
    let resp = ryze_tests::http()
        .post(gw.url(&format!("/api/events/websocket/{}", segment(name))))
        .header("token", token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("POST config");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("config body"))
}

/// Configures the instance and asserts the 200.
pub async fn configure(gw: &Service, name: &str, token: &str, body: serde_json::Value) {
    let (status, text) = post_config(gw, name, token, &body).await;
    assert_eq!(status, 200, "configuring {name} with {body}: {text}");
}

/// One ingest item, built as text so `data` keeps its exact bytes.
pub fn item(instance_id: &str, event: &str, data: &str) -> String {
    format!(r#"{{"instanceId":"{instance_id}","event":"{event}","data":{data}}}"#)
}

/// A JSON array of items.
pub fn batch(items: &[String]) -> String {
    format!("[{}]", items.join(","))
}

/// `POST /v1/events` on `base` (a publisher, or a gateway with the embedded publisher) with
/// the right key; returns (status, body text).
pub async fn post_events(svc: &Service, body: &str) -> (u16, String) {
    post_events_auth(svc, body, Some(&format!("Bearer {API_KEY}"))).await
}

/// `POST /v1/events` with the given `Authorization` (or none).
pub async fn post_events_auth(
    svc: &Service,
    body: &str,
    authorization: Option<&str>,
) -> (u16, String) {
    let mut req = ryze_tests::http()
        .post(svc.url("/v1/events"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    let resp = req.send().await.expect("POST /v1/events");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("ingest body"))
}

/// Publishes and asserts 202 with exactly these counts (CONTRACT §4, key order included).
pub async fn publish_expect(
    svc: &Service,
    body: &str,
    published: usize,
    filtered: usize,
    no_listeners: usize,
    unknown: usize,
) {
    let (status, text) = post_events(svc, body).await;
    let accepted = published + filtered + no_listeners + unknown;
    assert_eq!(
        (status, text.as_str()),
        (
            202,
            format!(
                r#"{{"accepted":{accepted},"published":{published},"filtered":{filtered},"noListeners":{no_listeners},"unknownInstance":{unknown}}}"#
            )
            .as_str()
        ),
        "ingest of {} bytes",
        body.len()
    );
}

/// The exact frame text for an event (SPEC §6.1 key order; `data` verbatim).
pub fn frame(event: &str, data: &str, instance: &Instance) -> String {
    format!(
        r#"{{"event":"{event}","data":{data},"instanceData":{{"baseUrl":"{EXPECTED_BASE_URL}","instance":{},"token":{}}}}}"#,
        serde_json::Value::String(instance.name.clone()),
        serde_json::Value::String(instance.token.clone()),
    )
}

/// The error envelope text (SPEC §2.1).
pub fn envelope(message: &str) -> String {
    format!(
        r#"{{"success":false,"error":{{"message":{}}}}}"#,
        serde_json::Value::String(message.to_owned())
    )
}

/// The value of the `/metrics` sample named exactly `sample` (`name` or `name{labels}`) of
/// `svc`; 0 when absent.
pub async fn metric(svc: &Service, sample: &str) -> f64 {
    ryze_tests::metrics::Exposition::scrape(&svc.admin_url("/metrics"))
        .await
        .expect("GET /metrics")
        .value(sample)
}
