//! Observability end to end (issue 7, CONTRACT §6): exact Prometheus counters after a scripted
//! scenario, OTLP spans received by an in-test collector, and no secret in any log line at
//! TRACE.
//!
//! Every wait is bounded and awaits a condition (a frame, a close, a metric value, a span);
//! nothing sleeps.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine;
use common::{
    configure, item, post_events, post_events_auth, publish_expect, segment, ws_url, Env, RawWs,
    System, API_KEY, BASE_URL, WAIT,
};
use ryze_tests::{http, pg, redis, run_cli, Bin, Service, WsClient};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::MaybeTlsStream;

// ---- Prometheus ----------------------------------------------------------------------------

/// One scrape: `name{labels}` → value (comments and `# EOF` skipped).
async fn scrape(url: &str) -> BTreeMap<String, f64> {
    let text = http()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("GET {url} body: {e}"));
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Polls `url` until series `key` reads `want`; panics with the last scrape at [`WAIT`].
async fn wait_metric(url: &str, key: &str, want: f64) -> BTreeMap<String, f64> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let m = scrape(url).await;
        if m.get(key) == Some(&want) {
            return m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key} stayed {:?}, wanted {want}; scrape: {m:#?}",
            m.get(key)
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
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
/// - frames sent 10: 5 events × the 2 reading clients. The slow client's single frame was
///   still being written when the close was requested, so it does not count;
/// - publish→send observations 10, one per frame sent;
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
            ("ryze_gateway_frames_sent_total", Some(10.0)),
            ("ryze_publish_to_send_seconds_count", Some(10.0)),
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

/// A value of an OTLP attribute.
// Bool and Double values are decoded for completeness; the assertions use Str and Int.
#[allow(dead_code)]
#[derive(Debug, Clone, PartialEq)]
enum Attr {
    Str(String),
    Int(i64),
    Bool(bool),
    Double(f64),
    Other,
}

/// One received span: its name, attributes, and its resource's attributes.
#[derive(Debug, Clone)]
struct RecvSpan {
    name: String,
    attrs: BTreeMap<String, Attr>,
    resource: BTreeMap<String, Attr>,
}

impl RecvSpan {
    fn str(&self, key: &str) -> Option<&str> {
        match self.attrs.get(key) {
            Some(Attr::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// An integer attribute. Values recorded after the span started (`Span::record`) arrive
    /// as strings from tracing-opentelemetry, so both forms count.
    fn int(&self, key: &str) -> Option<i64> {
        match self.attrs.get(key) {
            Some(Attr::Int(n)) => Some(*n),
            Some(Attr::Str(s)) => s.parse().ok(),
            _ => None,
        }
    }
}

/// Protobuf wire-format fields of one message: (field number, value).
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32,
}

fn varint(buf: &[u8], pos: &mut usize) -> anyhow::Result<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos).context("truncated varint")?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok(v);
        }
    }
    bail!("varint too long")
}

fn fields(buf: &[u8]) -> anyhow::Result<Vec<(u64, Wire<'_>)>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let tag = varint(buf, &mut pos)?;
        let value = match tag & 7 {
            0 => Wire::Varint(varint(buf, &mut pos)?),
            1 => {
                let b = buf.get(pos..pos + 8).context("truncated fixed64")?;
                pos += 8;
                Wire::Fixed64(u64::from_le_bytes(b.try_into()?))
            }
            2 => {
                let len = varint(buf, &mut pos)? as usize;
                let b = buf.get(pos..pos + len).context("truncated bytes")?;
                pos += len;
                Wire::Bytes(b)
            }
            5 => {
                pos += 4;
                Wire::Fixed32
            }
            t => bail!("wire type {t}"),
        };
        out.push((tag >> 3, value));
    }
    Ok(out)
}

/// `KeyValue { key = 1; AnyValue value = 2 }`, `AnyValue { string 1, bool 2, int 3, double 4 }`.
fn key_value(buf: &[u8]) -> anyhow::Result<(String, Attr)> {
    let mut key = String::new();
    let mut attr = Attr::Other;
    for (n, v) in fields(buf)? {
        match (n, v) {
            (1, Wire::Bytes(b)) => key = String::from_utf8(b.to_vec())?,
            (2, Wire::Bytes(any)) => {
                for (n, v) in fields(any)? {
                    attr = match (n, v) {
                        (1, Wire::Bytes(s)) => Attr::Str(String::from_utf8(s.to_vec())?),
                        (2, Wire::Varint(b)) => Attr::Bool(b != 0),
                        (3, Wire::Varint(i)) => Attr::Int(i as i64),
                        (4, Wire::Fixed64(d)) => Attr::Double(f64::from_bits(d)),
                        _ => Attr::Other,
                    };
                }
            }
            _ => {}
        }
    }
    Ok((key, attr))
}

/// Decodes an `ExportTraceServiceRequest`: resource_spans(1) → {resource(1) → attributes(1),
/// scope_spans(2) → spans(2) → {name(5), attributes(9)}}.
fn decode_export(body: &[u8]) -> anyhow::Result<Vec<RecvSpan>> {
    let mut spans = Vec::new();
    for (n, v) in fields(body)? {
        let (1, Wire::Bytes(rs)) = (n, v) else {
            continue;
        };
        let mut resource = BTreeMap::new();
        let mut batch = Vec::new();
        for (n, v) in fields(rs)? {
            match (n, v) {
                (1, Wire::Bytes(res)) => {
                    for (n, v) in fields(res)? {
                        if let (1, Wire::Bytes(kv)) = (n, v) {
                            let (k, a) = key_value(kv)?;
                            resource.insert(k, a);
                        }
                    }
                }
                (2, Wire::Bytes(ss)) => {
                    for (n, v) in fields(ss)? {
                        let (2, Wire::Bytes(span)) = (n, v) else {
                            continue;
                        };
                        let mut name = String::new();
                        let mut attrs = BTreeMap::new();
                        for (n, v) in fields(span)? {
                            match (n, v) {
                                (5, Wire::Bytes(b)) => name = String::from_utf8(b.to_vec())?,
                                (9, Wire::Bytes(kv)) => {
                                    let (k, a) = key_value(kv)?;
                                    attrs.insert(k, a);
                                }
                                _ => {}
                            }
                        }
                        batch.push((name, attrs));
                    }
                }
                _ => {}
            }
        }
        spans.extend(batch.into_iter().map(|(name, attrs)| RecvSpan {
            name,
            attrs,
            resource: resource.clone(),
        }));
    }
    Ok(spans)
}

/// What the collector received.
#[derive(Default)]
struct Received {
    spans: Vec<RecvSpan>,
    /// Every request body, for raw searches.
    raw: Vec<Vec<u8>>,
    /// Requests that were not `POST /v1/traces` with protobuf, or did not decode.
    problems: Vec<String>,
}

/// A minimal OTLP/HTTP collector: `POST /v1/traces` with a protobuf body, answered 200 with an
/// empty `ExportTraceServiceResponse`. HTTP/1.1 keep-alive, Content-Length bodies.
struct Collector {
    addr: SocketAddr,
    received: Arc<Mutex<Received>>,
    changed: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Collector {
    async fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("collector bind");
        let addr = listener.local_addr().expect("collector addr");
        let received = Arc::new(Mutex::new(Received::default()));
        let (tx, changed) = watch::channel(0u64);
        let tx = Arc::new(tx);
        let shared = Arc::clone(&received);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_otlp(stream, Arc::clone(&shared), Arc::clone(&tx)));
            }
        });
        Collector {
            addr,
            received,
            changed,
            task,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits until `done` holds for the spans received so far; returns them.
    async fn wait_for(&self, what: &str, done: impl Fn(&[RecvSpan]) -> bool) -> Vec<RecvSpan> {
        let mut changed = self.changed.clone();
        let wait = async {
            loop {
                changed.borrow_and_update();
                {
                    let r = self.received.lock().unwrap_or_else(|e| e.into_inner());
                    assert!(r.problems.is_empty(), "collector: {:?}", r.problems);
                    if done(&r.spans) {
                        return r.spans.clone();
                    }
                }
                if changed.changed().await.is_err() {
                    panic!("collector stopped");
                }
            }
        };
        match tokio::time::timeout(WAIT, wait).await {
            Ok(spans) => spans,
            Err(_) => {
                let r = self.received.lock().unwrap_or_else(|e| e.into_inner());
                panic!("no {what} within {WAIT:?}; received spans: {:#?}", r.spans)
            }
        }
    }
}

async fn serve_otlp(
    mut stream: TcpStream,
    received: Arc<Mutex<Received>>,
    tx: Arc<watch::Sender<u64>>,
) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let header = |name: &str| {
            head.lines().skip(1).find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_owned())
            })
        };
        let len: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + 4 + len {
            let mut chunk = [0u8; 65536];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf[head_end + 4..head_end + 4 + len].to_vec();
        buf.drain(..head_end + 4 + len);
        {
            let mut r = received.lock().unwrap_or_else(|e| e.into_inner());
            let request_line = head.lines().next().unwrap_or_default().to_owned();
            if !request_line.starts_with("POST /v1/traces ") {
                r.problems
                    .push(format!("unexpected request {request_line:?}"));
            } else if header("content-type").as_deref() != Some("application/x-protobuf") {
                r.problems
                    .push(format!("content-type {:?}", header("content-type")));
            } else {
                match decode_export(&body) {
                    Ok(spans) => r.spans.extend(spans),
                    Err(e) => r.problems.push(format!("undecodable export: {e:#}")),
                }
            }
            r.raw.push(body);
        }
        tx.send_modify(|n| *n += 1);
        let reply =
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if stream.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// A gateway with the embedded publisher exports, to an in-test OTLP/HTTP collector, the
/// spans an operator needs to find a failing upgrade and follow a publish: `ws.upgrade` for
/// the accepted and the refused upgrade (peer, instance, status; never the token),
/// `ws.connection` once the client left, `ingest` with its counts, `publish`, and
/// `http.request` with the matched route only. The export interval is longer than the test:
/// the spans arrive because the telemetry guard flushes them at shutdown.
#[tokio::test(flavor = "multi_thread")]
async fn upgrades_and_publishes_are_exported_as_otlp_spans() {
    let collector = Collector::start().await;
    let db = pg().await.fresh_database().await.expect("fresh database");
    let env = Env::with(db.url.clone(), None, None).await;
    let inst = env.create_instance("traced").await;
    let mut gw = env
        .gateway(&[
            ("EMBEDDED_PUBLISHER", "true".into()),
            ("PUBLISHER_API_KEY", API_KEY.into()),
            ("PUBLIC_BASE_URL", BASE_URL.into()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint()),
            // No periodic export during the test: the spans must come from the flush at
            // shutdown.
            ("OTEL_BSP_SCHEDULE_DELAY", "600000".into()),
        ])
        .await;
    configure(&gw, "traced", &env.account_token, json!({"enabled": true})).await;

    // The token in the query: it must reach neither span attributes nor the route.
    let url = format!("{}?token={}", ws_url(&gw, "traced"), inst.token);
    let mut client = WsClient::connect(&url, &[]).await.expect("upgrade");
    let bad = format!("{}?token=wrong-{}", ws_url(&gw, "traced"), inst.token);
    let refused = WsClient::connect(&bad, &[]).await;
    assert_eq!(refused.err().and_then(|e| e.status()), Some(401));
    let data = r#"{"traced":true}"#;
    publish_expect(&gw, &item(&inst.id, "call.update", data), 1, 0, 0, 0).await;
    client.next_text(WAIT).await.expect("the published frame");
    client.close().await.expect("close");
    gw.sigterm();
    let status = gw.wait_exit(WAIT).await.expect("gateway exit");
    assert!(status.success(), "gateway exited with {status:?}");

    let upgrade_with = |status: i64| {
        move |s: &RecvSpan| s.name == "ws.upgrade" && s.int("http.status") == Some(status)
    };
    let spans = collector
        .wait_for("upgrade, connection, ingest and publish spans", |spans| {
            spans.iter().any(upgrade_with(101))
                && spans.iter().any(upgrade_with(401))
                && spans.iter().any(|s| s.name == "ws.connection")
                && spans.iter().any(|s| s.name == "ingest")
                && spans.iter().any(|s| s.name == "publish")
        })
        .await;
    let find = |pred: &dyn Fn(&RecvSpan) -> bool| {
        spans
            .iter()
            .find(|s| pred(s))
            .cloned()
            .expect("span present")
    };

    let ok = find(&upgrade_with(101));
    assert_eq!(ok.str("instance.name"), Some("traced"), "{ok:?}");
    assert_eq!(ok.str("instance.id"), Some(inst.id.as_str()), "{ok:?}");
    assert!(
        ok.str("peer.addr")
            .is_some_and(|p| p.parse::<SocketAddr>().is_ok_and(|a| a.ip().is_loopback())),
        "{ok:?}"
    );
    let conn_id = ok.int("conn.id").expect("conn.id on the accepted upgrade");
    assert_eq!(
        ok.resource.get("service.name"),
        Some(&Attr::Str("ryze-gateway".into()))
    );

    let no = find(&upgrade_with(401));
    assert_eq!(no.str("instance.name"), Some("traced"), "{no:?}");
    assert_eq!(no.str("error.message"), Some("Invalid token"), "{no:?}");
    assert_eq!(no.attrs.get("instance.id"), None, "{no:?}");

    let conn = find(&|s| s.name == "ws.connection");
    assert_eq!(conn.str("instance.id"), Some(inst.id.as_str()), "{conn:?}");
    assert_eq!(conn.int("conn.id"), Some(conn_id), "{conn:?}");
    assert_eq!(conn.str("peer.addr"), ok.str("peer.addr"), "{conn:?}");

    let ingest = find(&|s| s.name == "ingest");
    for (key, want) in [
        ("events", 1),
        ("published", 1),
        ("filtered", 0),
        ("no_listeners", 0),
        ("unknown_instance", 0),
        ("http.status", 202),
    ] {
        assert_eq!(ingest.int(key), Some(want), "{key}: {ingest:?}");
    }
    let publish = find(&|s| s.name == "publish");
    assert_eq!(publish.int("frames"), Some(1), "{publish:?}");

    // Request spans carry the route template, never the path with its query.
    let routes: Vec<_> = spans
        .iter()
        .filter(|s| s.name.starts_with("GET ") || s.name.starts_with("POST "))
        .map(|s| (s.name.clone(), s.str("http.route").map(str::to_owned)))
        .collect();
    assert!(
        routes.contains(&(
            "GET /ws/{instance}".to_owned(),
            Some("/ws/{instance}".to_owned())
        )),
        "{routes:?}"
    );
    assert!(
        routes.contains(&("POST /v1/events".to_owned(), Some("/v1/events".to_owned()))),
        "{routes:?}"
    );

    // No secret anywhere in what was exported.
    let r = collector.received.lock().unwrap_or_else(|e| e.into_inner());
    for body in &r.raw {
        for secret in [inst.token.as_str(), env.account_token.as_str(), API_KEY] {
            assert!(
                !body.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "an exported span carries a secret"
            );
        }
    }
}

// ---- Logs ----------------------------------------------------------------------------------

/// Every secret the log scan looks for, and what it looks like hex-encoded (frame dumps).
fn leaks(logs: &str, secrets: &[(&str, &str)]) -> Vec<String> {
    let mut found = Vec::new();
    for (what, secret) in secrets {
        let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
        for line in logs.lines() {
            if line.contains(secret) || line.contains(&hex) {
                found.push(format!("{what} in: {line}"));
            }
        }
    }
    found
}

/// With `RUST_LOG=trace`, every endpoint of both binaries and the ingest path, exercised with
/// a known instance token (header, bearer and query), the account token, a wrong token, the
/// ingest key and `ENCRYPTION_KEY` set, leave none of them in any log line — neither as text
/// nor hex-encoded as in a frame dump. The gateway logs JSON (each line one object, message
/// last), the publisher text.
#[tokio::test(flavor = "multi_thread")]
async fn no_token_or_key_appears_in_any_log_line_at_trace() {
    const TOKEN: &str = "itok-5ec7e7-do-not-log-me-0123456789";
    const WRONG: &str = "wrong-5ec7e7-never-valid-9876543210";
    let key_bytes: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
    let key = base64::engine::general_purpose::STANDARD.encode(&key_bytes);
    let db = pg().await.fresh_database().await.expect("fresh database");
    let env = Env::with(db.url.clone(), Some(redis().await.url()), Some(key.clone())).await;

    // The admin command that receives the token, at TRACE too (its logs go to stderr).
    let mut cli_env = env.cli_env();
    cli_env.push(("RUST_LOG", "trace".into()));
    let out = run_cli(
        Bin::Publisher,
        &[
            "instance",
            "create",
            "--account",
            &env.account_id,
            "--name",
            "secretive",
            "--token",
            TOKEN,
        ],
        &cli_env,
    )
    .await
    .expect("instance create");
    assert!(out.status.success(), "{out:?}");
    let created: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("instance create prints JSON");
    let instance_id = created["id"].as_str().expect("id").to_owned();
    let cli_logs = String::from_utf8_lossy(&out.stderr).into_owned();

    let mut watcher = env.watcher().await;
    let trace = [("RUST_LOG", "trace".to_owned())];
    let publisher = env.publisher(&trace).await;
    let gw = env
        .gateway(&[
            ("RUST_LOG", "trace".into()),
            ("LOG_FORMAT", "json".into()),
            ("CONSOLE_ENABLED", "true".into()),
        ])
        .await;
    let name = "secretive";
    let path = |p: &str| format!("{p}/{}", segment(name));

    // Config API: account token in the header, instance token as bearer and in the query.
    configure(&gw, name, &env.account_token, json!({"enabled": true})).await;
    watcher.wait("config_changed", &instance_id).await;
    let get = |url: String| async move { http().get(url).send().await.expect("GET").status() };
    assert_eq!(
        get(gw.url(&format!(
            "{}?token={TOKEN}",
            path("/api/events/getWebsocket")
        )))
        .await,
        200
    );
    let bearer = http()
        .get(gw.url(&path("/api/events/getWebsocket")))
        .header("authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .expect("GET bearer");
    assert_eq!(bearer.status(), 200);
    let bad_body = http()
        .post(gw.url(&path("/api/events/websocket")))
        .header("token", TOKEN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("POST bad body");
    assert_eq!(bad_body.status(), 400);
    assert_eq!(
        get(gw.url(&format!(
            "{}?token={WRONG}",
            path("/api/events/getWebsocket")
        )))
        .await,
        401
    );

    // Upgrades: accepted (query token), refused (wrong token, foreign origin).
    let mut client = WsClient::connect(&format!("{}?token={TOKEN}", ws_url(&gw, name)), &[])
        .await
        .expect("upgrade");
    let wrong = WsClient::connect(&ws_url(&gw, name), &[("token", WRONG)]).await;
    assert_eq!(wrong.err().and_then(|e| e.status()), Some(401));
    let foreign = WsClient::connect(
        &ws_url(&gw, name),
        &[("token", TOKEN), ("origin", "https://evil.example")],
    )
    .await;
    assert_eq!(foreign.err().and_then(|e| e.status()), Some(403));

    // Ingest: the frame carries the instance token; a client message; bad key; bad body.
    let data = r#"{"text":"hello"}"#;
    publish_expect(
        &publisher,
        &item(&instance_id, "message.exchange", data),
        1,
        0,
        0,
        0,
    )
    .await;
    let frame = client.next_text(WAIT).await.expect("frame");
    assert!(frame.contains(TOKEN), "the frame itself carries the token");
    client
        .send_text(&format!("echo {TOKEN}"))
        .await
        .expect("client message");
    let (status, _) = post_events_auth(&publisher, "[]", Some(&format!("Bearer {WRONG}"))).await;
    assert_eq!(status, 401);
    let (status, _) = post_events(&publisher, "{broken").await;
    assert_eq!(status, 400);

    // Everything else: routing errors with a token in the query, health, console, admin.
    for url in [
        gw.url(&format!("/nope?token={TOKEN}")),
        gw.url(&format!("{}?token={TOKEN}", path("/api/events/websocket"))),
        gw.url("/health"),
        gw.url("/console"),
        gw.admin_url("/livez"),
        gw.admin_url("/readyz"),
        gw.admin_url("/metrics"),
        publisher.url("/livez"),
        publisher.url("/readyz"),
        publisher.url("/metrics"),
    ] {
        http().get(&url).send().await.expect("GET");
    }
    client.close().await.expect("close");

    // Stop both, so shutdown logging is scanned too.
    let mut services: Vec<(&str, Service)> = vec![("gateway", gw), ("publisher", publisher)];
    for (_, s) in &services {
        s.sigterm();
    }
    let mut logs = vec![("instance create", cli_logs)];
    for (what, s) in &mut services {
        s.wait_exit(WAIT).await.expect("exit after SIGTERM");
        logs.push((*what, s.logs()));
    }

    let secrets = [
        ("instance token", TOKEN),
        ("wrong token", WRONG),
        ("account token", env.account_token.as_str()),
        ("ENCRYPTION_KEY", key.as_str()),
        ("PUBLISHER_API_KEY", API_KEY),
    ];
    for (what, text) in &logs {
        let lines = text.lines().count();
        assert!(
            text.contains("TRACE") || text.contains(r#""level":"TRACE""#),
            "{what}: RUST_LOG=trace had no effect ({lines} lines)"
        );
        let found = leaks(text, &secrets);
        assert!(
            found.is_empty(),
            "{what}: {} leaking line(s) of {lines}:\n{}",
            found.len(),
            found.join("\n")
        );
    }

    // The gateway's JSON lines: one object each, fields first, message last.
    let gw_logs = &logs[1].1;
    for line in gw_logs.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if v.get("message").is_some() {
            let tail = line.rfind(",\"message\":").expect("message key");
            let rest = &line[tail + ",\"message\":".len()..line.len() - 1];
            assert!(
                serde_json::from_str::<String>(rest).is_ok() && line.ends_with('}'),
                "message is not last: {line}"
            );
        }
    }
}
