//! Observability end to end (issue 7, CONTRACT §6): exact Prometheus counters after a scripted
//! scenario, OTLP spans received by an in-test collector, and no secret in any log line at
//! TRACE.
//!
//! Every wait is bounded and awaits a condition (a frame, a close, a metric value, a span);
//! nothing sleeps.

use ryze_tests::fixtures as common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use base64::Engine;
use common::{
    configure, item, post_events, post_events_auth, publish_expect, segment, ws_url, Env, RawWs,
    System, API_KEY, BASE_URL, WAIT,
};
use ryze_tests::{eventually, http, pg, redis, run_cli, Bin, Service, WsClient};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_tungstenite::MaybeTlsStream;

// ---- Prometheus ----------------------------------------------------------------------------

/// One scrape: `name{labels}` → value (comments and `# EOF` skipped).
async fn scrape(url: &str) -> BTreeMap<String, f64> {
    ryze_tests::metrics::Exposition::scrape(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .samples()
        .clone()
}

/// Polls `url` until series `key` reads `want`; panics with the last scrape at [`WAIT`].
async fn wait_metric(url: &str, key: &str, want: f64) -> BTreeMap<String, f64> {
    eventually(&format!("{key} reads {want}"), WAIT, || async {
        let m = scrape(url).await;
        if m.get(key) == Some(&want) {
            Ok(m)
        } else {
            Err(format!("{key} is {:?}; scrape: {m:#?}", m.get(key)))
        }
    })
    .await
}

/// Asserts exact values (`None`: the series must be absent or 0).
fn assert_series(m: &BTreeMap<String, f64>, want: &[(&str, Option<f64>)]) {
    for (key, value) in want {
        match value {
            Some(v) => assert_eq!(m.get(*key), Some(v), "{key}; scrape: {m:#?}"),
            None => assert!(
                m.get(*key).is_none_or(|v| *v == 0.0),
                "{key} = {:?}; scrape: {m:#?}",
                m.get(*key)
            ),
        }
    }
}

/// Frames of this size cannot fit in the kernel buffers of a client that stops reading
/// (server send buffer at most 4 MiB, client receive buffer pinned to 16 KiB), so such a
/// client's first frame is never completely written, and never counted as sent.
const BIG: usize = 6 * 1024 * 1024;

/// Three clients, five events, one slow client closed 1008, one refused upgrade; then every
/// client leaves (one by Close, one by a TCP reset, the slow one by the server) and the
/// counters must be exact:
/// - opened 3; closed `slow_consumer` 1, `client_close` 1, `gone` 1; open connections 0;
/// - upgrade rejected `401` 1;
/// - frames sent 11: 5 events × the 2 reading clients, plus event 0 to the slow client: its
///   write had started when the 1008 was requested, so it is finished before the Close frame
///   (the client reads it whole) and counted; event 1 never started and is not counted;
/// - publish→send observations 11, one per frame sent;
/// - publisher events `{event="message.exchange",outcome="published"}` 5.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_after_a_scripted_scenario_are_exact() {
    let sys = System::start(
        "metered",
        json!({"enabled": true}),
        1,
        &[
            ("WS_SEND_QUEUE", "1".into()),
            ("WS_SLOW_CONSUMER_GRACE", "200ms".into()),
        ],
    )
    .await;
    let gw = sys.gw();
    let metrics = gw.admin_url("/metrics");

    // The slow client: a tiny receive buffer, and it reads nothing until told to.
    let mut slow = RawWs::connect(
        gw.addr(),
        &format!("/ws/{}", segment(&sys.inst.name)),
        &sys.env.account_token,
        Some(16 * 1024),
    )
    .await;
    let mut fast = [sys.connect(0).await, sys.connect(0).await];
    let refused = WsClient::connect(
        &ws_url(gw, &sys.inst.name),
        &[("token", "not-a-token-of-anyone")],
    )
    .await;
    assert_eq!(refused.err().and_then(|e| e.status()), Some(401));

    let m = wait_metric(&metrics, "ryze_gateway_connections", 3.0).await;
    assert_series(
        &m,
        &[
            ("ryze_gateway_connections_opened_total", Some(3.0)),
            (
                &format!(
                    "ryze_gateway_instance_connections{{instance=\"{}\"}}",
                    sys.inst.id
                ),
                Some(3.0),
            ),
            ("ryze_gateway_redis_subscriptions", Some(1.0)),
            ("ryze_gateway_redis_subscriptions_confirmed", Some(1.0)),
        ],
    );

    let pad = "p".repeat(BIG);
    for i in 0..5 {
        // One event per request, each awaited by both readers, so their queues (1 frame) are
        // empty at every publish and only the slow client can stall.
        let data = format!(r#"{{"seq":{i},"pad":"{pad}"}}"#);
        publish_expect(
            &sys.publisher,
            &sys.item("message.exchange", &data),
            1,
            0,
            0,
            0,
        )
        .await;
        for c in &mut fast {
            let text = c.next_text(WAIT).await.expect("a reading client's frame");
            assert!(text.contains(&format!(r#""seq":{i},"#)), "frame {i}");
        }
        if i == 2 {
            // Event 1 found the slow client's queue full (event 0 still being written) and
            // waited out the grace before the 1008 was requested. An instance's frames are
            // delivered in order, so event 2 reaching the readers means the 1008 is already
            // requested. Now the slow client reads: the rest of event 0, then the Close.
            let end = slow
                .read_until_close(WAIT)
                .await
                .expect("slow client's end");
            assert_eq!(end.close, Some((1008, "slow consumer".to_owned())));
            assert_eq!(end.texts.len(), 1, "only event 0 was on its way");
            assert!(end.texts[0].contains(r#""seq":0,"#));
        }
    }
    drop(slow);

    // One leaves politely, the other is killed: a TCP reset, no Close frame.
    let [polite, killed] = fast;
    polite.close().await.expect("close handshake");
    kill(killed);

    let m = wait_metric(&metrics, "ryze_gateway_connections", 0.0).await;
    assert_series(
        &m,
        &[
            ("ryze_gateway_connections_opened_total", Some(3.0)),
            (
                "ryze_gateway_connections_closed_total{reason=\"slow_consumer\"}",
                Some(1.0),
            ),
            (
                "ryze_gateway_connections_closed_total{reason=\"client_close\"}",
                Some(1.0),
            ),
            (
                "ryze_gateway_connections_closed_total{reason=\"gone\"}",
                Some(1.0),
            ),
            (
                "ryze_gateway_connections_closed_total{reason=\"pong_timeout\"}",
                None,
            ),
            (
                "ryze_gateway_upgrade_rejected_total{status=\"401\"}",
                Some(1.0),
            ),
            ("ryze_gateway_frames_sent_total", Some(11.0)),
            ("ryze_publish_to_send_seconds_count", Some(11.0)),
            (
                &format!(
                    "ryze_gateway_instance_connections{{instance=\"{}\"}}",
                    sys.inst.id
                ),
                None,
            ),
        ],
    );
    let rejected: Vec<_> = m
        .keys()
        .filter(|k| k.starts_with("ryze_gateway_upgrade_rejected_total"))
        .collect();
    assert_eq!(rejected.len(), 1, "other refusals counted: {rejected:?}");

    let p = scrape(&sys.publisher.admin_url("/metrics")).await;
    assert_series(
        &p,
        &[(
            "ryze_publisher_events_total{event=\"message.exchange\",outcome=\"published\"}",
            Some(5.0),
        )],
    );
    let events: Vec<_> = p
        .iter()
        .filter(|(k, v)| k.starts_with("ryze_publisher_events_total") && **v != 0.0)
        .collect();
    assert_eq!(events.len(), 1, "other outcomes counted: {events:?}");
}

/// Drops the client with `SO_LINGER` 0: the kernel sends a reset, as for a killed process.
fn kill(mut c: WsClient) {
    if let MaybeTlsStream::Plain(tcp) = c.stream().get_mut() {
        tcp.set_zero_linger().expect("SO_LINGER 0");
    }
    drop(c);
}

// ---- OTLP ----------------------------------------------------------------------------------

#[path = "observability/logs.rs"]
mod logs;
#[path = "observability/otlp.rs"]
mod otlp;
#[path = "observability/otlp_tls.rs"]
mod otlp_tls;
