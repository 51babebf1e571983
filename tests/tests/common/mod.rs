//! Fixtures shared by `ws_gateway.rs` and `publisher_e2e.rs`: a migrated database with one
//! account, instances, the running services, and the small clients those tests need beyond the
//! harness (raw HTTP for handshake errors, a raw WebSocket that never answers pings, a watcher
//! of the Redis control channel that tells when a config change reached the publisher).

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use fred::prelude::{ClientLike, EventInterface, PubsubInterface};
use ryze_tests::{pg, redis, run_cli_json, unique_prefix, Bin, Service, WsClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub mod browser;
pub mod resumable;

/// Upper bound for anything a test awaits (a frame, a close, readiness, a relay message).
pub const WAIT: Duration = Duration::from_secs(20);
/// Upper bound for a service to become ready.
pub const READY: Duration = Duration::from_secs(30);
/// The ingest key of every publisher the fixtures start.
pub const API_KEY: &str = "test-publisher-key";
/// `PUBLIC_BASE_URL` of every publisher, with a trailing `/` that D11 drops.
pub const BASE_URL: &str = "https://api.example.com/";
/// What `instanceData.baseUrl` must then read.
pub const EXPECTED_BASE_URL: &str = "https://api.example.com";

/// One instance as the admin CLI printed it.
#[derive(Debug, Clone)]
pub struct Instance {
    pub id: String,
    pub name: String,
    pub token: String,
}

/// A migrated database with one account, on the shared (or a given) Redis.
#[derive(Debug, Clone)]
pub struct Env {
    pub db_url: String,
    /// `None`: no Redis at all (embedded single-process mode).
    pub redis_url: Option<String>,
    pub prefix: String,
    pub encryption_key: Option<String>,
    pub account_id: String,
    pub account_token: String,
}

impl Env {
    /// A fresh database on the shared Postgres and the shared Redis with a unique prefix.
    pub async fn new() -> Env {
        let db = pg().await.fresh_database().await.expect("fresh database");
        let redis_url = redis().await.url();
        Env::with(db.url, Some(redis_url), None).await
    }

    /// Migrates `db_url` and creates an account.
    pub async fn with(
        db_url: String,
        redis_url: Option<String>,
        encryption_key: Option<String>,
    ) -> Env {
        let mut env = Env {
            db_url,
            redis_url,
            prefix: unique_prefix(),
            encryption_key,
            account_id: String::new(),
            account_token: String::new(),
        };
        // At the default RUST_LOG=info, so a log line on stdout (where the JSON goes) fails.
        run_cli_json(Bin::Publisher, &["migrate"], &env.cli_env())
            .await
            .expect("migrate");
        let account = run_cli_json(Bin::Publisher, &["account", "create"], &env.cli_env())
            .await
            .expect("account create");
        env.account_id = str_field(&account, "id");
        env.account_token = str_field(&account, "token");
        env
    }

    /// `DATABASE_URL` (and `ENCRYPTION_KEY`) for the admin CLI.
    pub fn cli_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("DATABASE_URL", self.db_url.clone())];
        if let Some(key) = &self.encryption_key {
            env.push(("ENCRYPTION_KEY", key.clone()));
        }
        env
    }

    /// What every service of this environment shares: database, Redis, prefix, key.
    pub fn service_env(&self) -> Vec<(&'static str, String)> {
        let mut env = self.cli_env();
        if let Some(url) = &self.redis_url {
            env.push(("REDIS_URL", url.clone()));
        }
        env.push(("REDIS_PREFIX", self.prefix.clone()));
        env
    }

    /// `instance create` in this account.
    pub async fn create_instance(&self, name: &str) -> Instance {
        self.create_instance_with_token(name, None).await
    }

    /// `account create`: (id, token) of another account in the same database.
    pub async fn create_account(&self) -> (String, String) {
        let out = run_cli_json(Bin::Publisher, &["account", "create"], &self.cli_env())
            .await
            .expect("account create");
        (str_field(&out, "id"), str_field(&out, "token"))
    }

    /// `instance create` in another account.
    pub async fn create_instance_in(&self, account_id: &str, name: &str) -> Instance {
        let out = run_cli_json(
            Bin::Publisher,
            &[
                "instance",
                "create",
                "--account",
                account_id,
                "--name",
                name,
            ],
            &self.cli_env(),
        )
        .await
        .expect("instance create");
        Instance {
            id: str_field(&out, "id"),
            name: str_field(&out, "name"),
            token: str_field(&out, "token"),
        }
    }

    /// `instance create --token T` in this account.
    pub async fn create_instance_with_token(&self, name: &str, token: Option<&str>) -> Instance {
        let mut args = vec![
            "instance",
            "create",
            "--account",
            &self.account_id,
            "--name",
            name,
        ];
        if let Some(token) = token {
            args.extend(["--token", token]);
        }
        let out = run_cli_json(Bin::Publisher, &args, &self.cli_env())
            .await
            .expect("instance create");
        Instance {
            id: str_field(&out, "id"),
            name: str_field(&out, "name"),
            token: str_field(&out, "token"),
        }
    }

    /// `instance delete` in this account.
    pub async fn delete_instance(&self, name: &str) -> serde_json::Value {
        run_cli_json(
            Bin::Publisher,
            &[
                "instance",
                "delete",
                "--account",
                &self.account_id,
                "--name",
                name,
            ],
            &self.cli_env(),
        )
        .await
        .expect("instance delete")
    }

    /// A gateway of this environment plus `extra` settings, ready.
    pub async fn gateway(&self, extra: &[(&'static str, String)]) -> Service {
        let env = merge(self.service_env(), extra);
        let gw = Service::spawn(Bin::Gateway, &[], &env)
            .await
            .expect("spawn gateway");
        gw.wait_ready(READY).await.expect("gateway ready");
        gw
    }

    /// A publisher of this environment plus `extra` settings, ready and listening for
    /// Postgres notifications (so no config change made afterwards can be missed).
    pub async fn publisher(&self, extra: &[(&'static str, String)]) -> Service {
        let mut env = self.service_env();
        env.push(("PUBLISHER_API_KEY", API_KEY.to_owned()));
        env.push(("PUBLIC_BASE_URL", BASE_URL.to_owned()));
        let env = merge(env, extra);
        let p = Service::spawn(Bin::Publisher, &[], &env)
            .await
            .expect("spawn publisher");
        p.wait_ready(READY).await.expect("publisher ready");
        p.wait_for_log("listening for config changes", READY)
            .await
            .expect("publisher relay listening");
        p
    }

    /// A control-channel watcher on this environment's Redis.
    pub async fn watcher(&self) -> ControlWatcher {
        let url = self.redis_url.as_deref().expect("the watcher needs Redis");
        ControlWatcher::start(url, &self.prefix).await
    }

    /// `PUBSUB NUMSUB` of the instance's channel on the shared Redis.
    pub async fn numsub(&self, instance_id: &str) -> u64 {
        numsub(redis().await, &self.prefix, instance_id).await
    }
}

/// `env` with `extra` overriding same-named keys.
pub fn merge(
    mut env: Vec<(&'static str, String)>,
    extra: &[(&'static str, String)],
) -> Vec<(&'static str, String)> {
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push((k, v.clone()));
    }
    env
}

fn str_field(v: &serde_json::Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string {key:?} in {v}"))
        .to_owned()
}

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

/// `PUBSUB NUMSUB <prefix>:ws:<id>`.
pub async fn numsub(server: &ryze_tests::RedisServer, prefix: &str, instance_id: &str) -> u64 {
    let channel = format!("{prefix}:ws:{instance_id}");
    let out = server
        .cli(&["PUBSUB", "NUMSUB", &channel])
        .await
        .expect("PUBSUB NUMSUB");
    out.lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("unexpected NUMSUB output {out:?}"))
}

/// Polls NUMSUB until it equals `want`; panics at `WAIT`.
pub async fn wait_numsub(
    server: &ryze_tests::RedisServer,
    prefix: &str,
    instance_id: &str,
    want: u64,
) {
    let what = format!("NUMSUB of {instance_id} is {want}");
    ryze_tests::eventually(&what, WAIT, || async {
        match numsub(server, prefix, instance_id).await {
            n if n == want => Ok(()),
            n => Err(format!("NUMSUB of {instance_id} is {n}")),
        }
    })
    .await;
}

/// Subscribed to `<prefix>:ctl` before any change is made, so each change's relay message can
/// be awaited: when the publisher relays a notification it has already dropped its cache
/// entry, so the next ingest sees the new config (D6).
pub struct ControlWatcher {
    client: fred::clients::Client,
    rx: tokio::sync::broadcast::Receiver<fred::types::Message>,
    /// Messages seen but not yet awaited.
    backlog: VecDeque<serde_json::Value>,
}

impl ControlWatcher {
    pub async fn start(redis_url: &str, prefix: &str) -> ControlWatcher {
        let config = fred::types::config::Config::from_url(redis_url).expect("redis url");
        let client = fred::types::Builder::from_config(config)
            .build()
            .expect("watcher client");
        let rx = client.message_rx();
        client.init().await.expect("watcher connects");
        client
            .subscribe(format!("{prefix}:ctl"))
            .await
            .expect("SUBSCRIBE ctl");
        ControlWatcher {
            client,
            rx,
            backlog: VecDeque::new(),
        }
    }

    /// Waits for the next relay message `{"op": op, "instanceId": id}`; messages for other
    /// instances are kept for later waits.
    pub async fn wait(&mut self, op: &str, instance_id: &str) {
        let matches = |v: &serde_json::Value| v["op"] == op && v["instanceId"] == instance_id;
        if let Some(pos) = self.backlog.iter().position(matches) {
            self.backlog.remove(pos);
            return;
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("no control message {op} for {instance_id} within {WAIT:?}")
                })
                .expect("control channel receiver");
            let text: String = msg.value.convert().expect("control message text");
            let v: serde_json::Value = serde_json::from_str(&text).expect("control JSON");
            if matches(&v) {
                return;
            }
            self.backlog.push_back(v);
        }
    }
}

impl Drop for ControlWatcher {
    fn drop(&mut self) {
        let client = self.client.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = client.quit().await;
            });
        }
    }
}

/// The value of the `/metrics` sample named exactly `sample` (`name` or `name{labels}`) of
/// `svc`; 0 when absent.
pub async fn metric(svc: &Service, sample: &str) -> f64 {
    ryze_tests::metrics::Exposition::scrape(&svc.admin_url("/metrics"))
        .await
        .expect("GET /metrics")
        .value(sample)
}

/// A service plus its environment's instance and watcher: what most tests start from.
pub struct System {
    pub env: Env,
    pub inst: Instance,
    pub publisher: Service,
    pub gateways: Vec<Service>,
    pub watcher: ControlWatcher,
}

impl System {
    /// Fresh DB on the shared servers, one instance `name` configured with `config`, a
    /// publisher and `gateways` gateways (each with `gateway_env`).
    pub async fn start(
        name: &str,
        config: serde_json::Value,
        gateways: usize,
        gateway_env: &[(&'static str, String)],
    ) -> System {
        let env = Env::new().await;
        System::start_in(env, name, config, gateways, gateway_env, &[]).await
    }

    /// Like [`System::start`] in a given environment, with publisher settings.
    pub async fn start_in(
        env: Env,
        name: &str,
        config: serde_json::Value,
        gateways: usize,
        gateway_env: &[(&'static str, String)],
        publisher_env: &[(&'static str, String)],
    ) -> System {
        let inst = env.create_instance(name).await;
        let watcher = env.watcher().await;
        let publisher = env.publisher(publisher_env).await;
        let mut gws = Vec::new();
        for _ in 0..gateways {
            gws.push(env.gateway(gateway_env).await);
        }
        let mut sys = System {
            env,
            inst,
            publisher,
            gateways: gws,
            watcher,
        };
        sys.configure(config).await;
        sys
    }

    /// The first gateway.
    pub fn gw(&self) -> &Service {
        &self.gateways[0]
    }

    /// Configures the main instance (as its account) and waits until the publisher relayed
    /// the change, so the next ingest applies it.
    pub async fn configure(&mut self, config: serde_json::Value) {
        configure(
            &self.gateways[0],
            &self.inst.name,
            &self.env.account_token,
            config,
        )
        .await;
        self.watcher.wait("config_changed", &self.inst.id).await;
    }

    /// A client of the main instance on gateway `i`.
    pub async fn connect(&self, i: usize) -> WsClient {
        connect(&self.gateways[i], &self.inst.name, &self.env.account_token).await
    }

    /// One item of the main instance.
    pub fn item(&self, event: &str, data: &str) -> String {
        item(&self.inst.id, event, data)
    }

    /// The expected frame of the main instance.
    pub fn frame(&self, event: &str, data: &str) -> String {
        frame(event, data, &self.inst)
    }

    /// Publishes one event of the main instance (asserting it was published) and asserts it
    /// is `client`'s next frame, byte for byte.
    pub async fn deliver_one(&self, client: &mut WsClient, event: &str, data: &str) {
        publish_expect(&self.publisher, &self.item(event, data), 1, 0, 0, 0).await;
        assert_eq!(
            client.next_text(WAIT).await.expect("the published frame"),
            self.frame(event, data)
        );
    }
}

/// The six event types (SPEC §1).
pub const EVENTS: [&str; 6] = [
    "message.exchange",
    "message.status",
    "call.update",
    "group.flow",
    "instance.state",
    "label.update",
];

/// A raw HTTP/1.1 response.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Whether the server closed the connection after the response (read EOF within 5 s);
    /// only checked by [`raw_http_then_eof`].
    pub closed: bool,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `head` (request line and headers, without the final blank line) and reads one
/// response with a `Content-Length` body (`closed` is left false).
pub async fn raw_http(addr: SocketAddr, head: &str) -> RawResponse {
    tokio::time::timeout(WAIT, raw_http_inner(addr, head, false))
        .await
        .expect("raw HTTP timed out")
        .expect("raw HTTP")
}

/// Like [`raw_http`], then waits up to 5 s for the server to close the connection.
pub async fn raw_http_then_eof(addr: SocketAddr, head: &str) -> RawResponse {
    tokio::time::timeout(WAIT, raw_http_inner(addr, head, true))
        .await
        .expect("raw HTTP timed out")
        .expect("raw HTTP")
}

async fn raw_http_inner(
    addr: SocketAddr,
    head: &str,
    check_eof: bool,
) -> anyhow::Result<RawResponse> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("{}\r\n\r\n", head.trim_end().replace('\n', "\r\n"));
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed before the response head");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let text = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = text.split("\r\n");
    let status_line = lines.next().context("status line")?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let mut rest = [0u8; 64];
    // After a 101 the connection is a WebSocket: it stays open.
    let closed = check_eof
        && status != 101
        && matches!(
            tokio::time::timeout(Duration::from_secs(5), stream.read(&mut rest)).await,
            Ok(Ok(0)) | Ok(Err(_))
        );
    Ok(RawResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        closed,
    })
}

/// A WebSocket client written by hand: it never answers pings, so it can play the client
/// whose PONGs never come.
pub struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
    /// While reading, answer each ping with this text frame (never with a PONG).
    pub on_ping: Option<String>,
}

/// One frame as received.
#[derive(Debug)]
pub struct RawFrame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl RawWs {
    /// Performs the upgrade of `path` with `token`; panics unless 101. `rcvbuf` fixes the
    /// socket's receive buffer (which also stops the kernel from growing it), so a client
    /// that stops reading backs the server up after little data.
    pub async fn connect(addr: SocketAddr, path: &str, token: &str, rcvbuf: Option<u32>) -> RawWs {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        if let Some(size) = rcvbuf {
            socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
        }
        let mut stream = socket.connect(addr).await.expect("connect");
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             token: {token}\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .expect("send upgrade");
        let mut buf = Vec::new();
        let end = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    return pos;
                }
                let mut chunk = [0u8; 1024];
                let n = stream.read(&mut chunk).await.expect("read upgrade");
                assert!(n > 0, "closed during the upgrade");
                buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .expect("upgrade response");
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        let buf = buf[end + 4..].to_vec();
        RawWs {
            stream,
            buf,
            on_ping: None,
        }
    }

    /// The next frame, or `None` at EOF (or a reset). Errors at `timeout`.
    pub async fn next_frame(&mut self, timeout: Duration) -> anyhow::Result<Option<RawFrame>> {
        tokio::time::timeout(timeout, self.read_frame())
            .await
            .with_context(|| format!("no frame within {timeout:?}"))?
    }

    async fn fill(&mut self, n: usize) -> anyhow::Result<bool> {
        while self.buf.len() < n {
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk).await {
                Ok(0) => return Ok(false),
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }

    async fn read_frame(&mut self) -> anyhow::Result<Option<RawFrame>> {
        if !self.fill(2).await? {
            return Ok(None);
        }
        let opcode = self.buf[0] & 0x0f;
        let len7 = (self.buf[1] & 0x7f) as usize;
        let (header, len) = match len7 {
            126 => {
                if !self.fill(4).await? {
                    return Ok(None);
                }
                (4, u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize)
            }
            127 => {
                if !self.fill(10).await? {
                    return Ok(None);
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.buf[2..10]);
                (10, u64::from_be_bytes(b) as usize)
            }
            n => (2, n),
        };
        if !self.fill(header + len).await? {
            return Ok(None);
        }
        let payload = self.buf[header..header + len].to_vec();
        self.buf.drain(..header + len);
        Ok(Some(RawFrame { opcode, payload }))
    }
}

/// What a [`RawWs`] saw until the server's Close (or the end of the connection).
#[derive(Debug, Default)]
pub struct RawEnd {
    /// The Close frame's code and reason; `None` if the connection ended without one.
    pub close: Option<(u16, String)>,
    /// Text frames before the end, in order.
    pub texts: Vec<String>,
    /// Pings before the end (never answered).
    pub pings: usize,
    /// Pings that carried a payload (D27: PINGs have an empty payload).
    pub nonempty_pings: usize,
}

impl RawWs {
    /// Reads until a Close frame or EOF, collecting text frames and counting pings. Errors
    /// when the connection is still open at `timeout`.
    pub async fn read_until_close(&mut self, timeout: Duration) -> anyhow::Result<RawEnd> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut end = RawEnd::default();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(frame) = self.next_frame(left).await? else {
                return Ok(end);
            };
            match frame.opcode {
                0x1 => end
                    .texts
                    .push(String::from_utf8(frame.payload).context("text frame")?),
                0x8 => {
                    end.close = (frame.payload.len() >= 2).then(|| {
                        (
                            u16::from_be_bytes([frame.payload[0], frame.payload[1]]),
                            String::from_utf8_lossy(&frame.payload[2..]).into_owned(),
                        )
                    });
                    return Ok(end);
                }
                0x9 => {
                    end.pings += 1;
                    if !frame.payload.is_empty() {
                        end.nonempty_pings += 1;
                    }
                    if let Some(reply) = &self.on_ping {
                        let reply = reply.clone();
                        self.send_frame(0x1, reply.as_bytes(), true).await;
                    }
                }
                _ => {}
            }
        }
    }

    /// Sends one frame with FIN set, masked as a client must (or unmasked, a protocol error).
    pub async fn send_frame(&mut self, opcode: u8, payload: &[u8], masked: bool) {
        let mut out = vec![0x80 | opcode];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(mask_bit | n as u8),
            n if n <= 0xffff => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            let key = [0x37u8, 0xfa, 0x21, 0x3d];
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            out.extend_from_slice(payload);
        }
        self.stream.write_all(&out).await.expect("send frame");
    }

    /// Whether the server ends the TCP connection within `timeout` (frames are skipped).
    pub async fn ends_within(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame(left).await {
                Ok(None) => return true,
                Ok(Some(_)) => {}
                Err(_) => return false,
            }
        }
    }
}
