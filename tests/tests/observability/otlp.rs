//! Traces: a tiny OTLP/HTTP collector and decoder, and the spans an upgrade and a publish export.

use super::*;

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
pub(super) struct RecvSpan {
    pub(super) name: String,
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
pub(super) struct Collector {
    addr: SocketAddr,
    scheme: &'static str,
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
        Collector::start_with(None).await
    }

    /// A collector behind TLS, presenting `tls`'s certificate: its endpoint is `https://`.
    pub(super) async fn start_tls(tls: Arc<rustls::ServerConfig>) -> Collector {
        Collector::start_with(Some(tokio_rustls::TlsAcceptor::from(tls))).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> Collector {
        let scheme = if tls.is_some() { "https" } else { "http" };
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
                let (shared, tx) = (Arc::clone(&shared), Arc::clone(&tx));
                match &tls {
                    None => drop(tokio::spawn(serve_otlp(stream, shared, tx))),
                    Some(acceptor) => {
                        let accept = acceptor.accept(stream);
                        tokio::spawn(async move {
                            // A refused handshake is the client's business (wrong CA).
                            if let Ok(stream) = accept.await {
                                Box::pin(serve_otlp(stream, shared, tx)).await;
                            }
                        });
                    }
                }
            }
        });
        Collector {
            addr,
            scheme,
            received,
            changed,
            task,
        }
    }

    pub(super) fn endpoint(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// Waits until `done` holds for the spans received so far; returns them.
    pub(super) async fn wait_for(
        &self,
        what: &str,
        done: impl Fn(&[RecvSpan]) -> bool,
    ) -> Vec<RecvSpan> {
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

async fn serve_otlp<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
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
