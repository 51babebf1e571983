//! End-to-end tests of `GET /ws/:instance` on real gateway processes (SPEC §5, D1, D7, D13,
//! D14, D23, D24, D26–D28, D35; CONTRACT §1, §5): every refusal before the upgrade, token
//! sources, fan-out across pods through one Redis, backpressure, heartbeat, client frames,
//! Redis restarts, instance deletion, shutdown and subscription lifetime.
//!
//! Every wait is bounded; nothing sleeps. A frame that must not arrive is proven absent by
//! publishing a sentinel after it and asserting the sentinel is the next frame.

use ryze_tests::fixtures as common;

use std::time::Duration;

use common::{
    batch, configure, connect, envelope, numsub, post_events, publish_expect, raw_http,
    raw_http_then_eof, segment, wait_numsub, ws_url, Env, RawWs, System, READY, WAIT,
};
use futures_util::SinkExt;
use ryze_tests::{eventually, pg, redis, PgServer, RedisServer, WsClient, WsConnectError};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// Upgrades that must be refused: the error, or a panic if the upgrade succeeded.
async fn refused(url: &str, headers: &[(&str, &str)]) -> WsConnectError {
    match WsClient::connect(url, headers).await {
        Ok(_) => panic!("upgrade of {url} with {headers:?} succeeded"),
        Err(e) => e,
    }
}

/// Asserts an enveloped refusal: status, exact body, JSON content type.
fn assert_refusal(e: &WsConnectError, status: u16, message: &str) {
    assert_eq!(e.status(), Some(status), "{e}");
    assert_eq!(e.body(), Some(envelope(message).as_str()), "{e}");
    assert_eq!(e.header("content-type"), Some("application/json"), "{e}");
}

/// The not-enabled message for a (decoded) instance name.
fn not_enabled(name: &str) -> String {
    format!(
        "WebSocket is not enabled for this instance. Configure it first using POST /api/events/websocket/{name}"
    )
}

/// A valid upgrade head for `path`, plus extra header lines.
fn upgrade_head(host: std::net::SocketAddr, path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\nHost: {host}\nUpgrade: websocket\nConnection: Upgrade\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\n{extra}"
    )
}

/// A small event payload carrying its sequence number.
fn seq_data(i: usize) -> String {
    format!(r#"{{"seq":{i},"text":"event number {i}"}}"#)
}

/// Reads exactly `expected`, in order.
async fn read_in_order(c: &mut WsClient, expected: &[String]) {
    for (i, want) in expected.iter().enumerate() {
        let got = c
            .next_text(WAIT)
            .await
            .unwrap_or_else(|e| panic!("frame {i}: {e:#}"));
        assert!(
            got == *want,
            "frame {i} out of order or altered: {got:.200}"
        );
    }
}

#[path = "ws_gateway/backpressure.rs"]
mod backpressure;
#[path = "ws_gateway/delivery.rs"]
mod delivery;
#[path = "ws_gateway/lifecycle.rs"]
mod lifecycle;
#[path = "ws_gateway/open_files.rs"]
mod open_files;
#[path = "ws_gateway/refusals.rs"]
mod refusals;
#[path = "ws_gateway/session.rs"]
mod session;
