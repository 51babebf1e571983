//! The config endpoints (`POST /api/events/websocket/:instance`,
//! `GET /api/events/getWebsocket/:instance`), routing, rate limiting and `/health`, against real
//! gateway processes with a private Postgres and Redis (SPEC §2–§4, §7).
//!
//! Every assertion on a response compares the exact status and the exact body, both parsed and
//! as raw text (the contract fixes compact JSON and its key order, D22). Every response is also
//! checked for the absence of `Access-Control-*` headers (D22).
//!
//! Layout (one module per concern, all sharing the helpers below):
//! - `bodies`: the POST body rules (D4, D21) and what is persisted and read back (§3, §4, D34).
//! - `auth`: token sources and precedence (D2, D19), the ownership matrix (D3, D18, D31) and the
//!   401/404 rows of both error tables.
//! - `routing`: exact paths, 404/405, HEAD/OPTIONS, no CORS (D12, D17, D22).
//! - `rate_limit`: headers, 429, IP buckets and a bucket shared by two pods (D8, D25).
//! - `health`: `/health` with and without Redis (§7, D16, D32).
//! - `outage`: database failures → 500 and `/health` 503, then recovery (§3, §4, D20, D21).
//! - `logs`: no token ever reaches the logs (D15).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;
use reqwest::Method;
use ryze_tests::{eventually, http, pg, redis, run_cli_json, unique_prefix, Bin, Service, TestDb};
use serde_json::{json, Value};

#[path = "config_api/auth.rs"]
mod auth;
#[path = "config_api/bodies.rs"]
mod bodies;
#[path = "config_api/health.rs"]
mod health;
#[path = "config_api/logs.rs"]
mod logs;
#[path = "config_api/outage.rs"]
mod outage;
#[path = "config_api/rate_limit.rs"]
mod rate_limit;
#[path = "config_api/routing.rs"]
mod routing;

/// Upper bound for a process to become ready, or a server to come back.
const WAIT: Duration = Duration::from_secs(30);

/// A limit high enough that tests not about rate limiting never meet it.
const NO_LIMIT: &str = "100000";

const CONFIGURED: &str = "WebSocket configured successfully";
const RETRIEVED: &str = "WebSocket configuration retrieved";
const INVALID_TOKEN: &str = "Invalid token";
const INSTANCE_NOT_FOUND: &str = "Instance not found";
const NOT_CONFIGURED: &str = "WebSocket not configured for this instance";
const INVALID_BODY: &str = "Invalid request body";
const RATE_LIMITED: &str = "Rate limit exceeded. Try again later.";
const FAILED_INSTANCE: &str = "Failed to get instance";
const FAILED_CONFIG: &str = "Failed to get websocket configuration";

// ---- fixtures: database, accounts, instances, gateways ----

/// A fresh database on the shared Postgres, migrated.
async fn migrated_db() -> TestDb {
    let db = pg()
        .await
        .fresh_database()
        .await
        .expect("creating a database");
    migrate(&db.url).await;
    db
}

async fn migrate(url: &str) {
    // RUST_LOG=warn keeps stdout to the JSON (CONTRACT §1) even on builds whose `migrate`
    // logs Postgres NOTICEs at INFO on stdout (found while writing these tests).
    let env = [
        ("DATABASE_URL", url.to_owned()),
        ("RUST_LOG", "warn".to_owned()),
    ];
    run_cli_json(Bin::Publisher, &["migrate"], &env)
        .await
        .expect("ryze-publisher migrate");
}

#[derive(Debug, Clone)]
struct Account {
    id: String,
    token: String,
}

#[derive(Debug, Clone)]
struct Instance {
    name: String,
    token: String,
}

/// `ryze-publisher account create [--token T]`.
async fn create_account(db: &TestDb, token: Option<&str>) -> Account {
    let mut args = vec!["account", "create"];
    if let Some(t) = token {
        args.extend(["--token", t]);
    }
    let out = run_cli_json(Bin::Publisher, &args, &[("DATABASE_URL", db.url.clone())])
        .await
        .expect("account create");
    Account {
        id: out["id"].as_str().expect("account id").to_owned(),
        token: out["token"].as_str().expect("account token").to_owned(),
    }
}

/// `ryze-publisher instance create --account ID --name NAME [--token T]`.
async fn create_instance(
    db: &TestDb,
    account: &Account,
    name: &str,
    token: Option<&str>,
) -> Instance {
    let mut args = vec![
        "instance",
        "create",
        "--account",
        &account.id,
        "--name",
        name,
    ];
    if let Some(t) = token {
        args.extend(["--token", t]);
    }
    let out = run_cli_json(Bin::Publisher, &args, &[("DATABASE_URL", db.url.clone())])
        .await
        .expect("instance create");
    assert_eq!(out["name"], name);
    Instance {
        name: name.to_owned(),
        token: out["token"].as_str().expect("instance token").to_owned(),
    }
}

/// A ready gateway on `database_url`, the shared Redis under `prefix`, with `extra` env on top.
async fn gateway_on(database_url: &str, prefix: &str, extra: &[(&str, String)]) -> Service {
    let mut env: Vec<(&str, String)> = vec![
        ("DATABASE_URL", database_url.to_owned()),
        ("REDIS_URL", redis().await.url()),
        ("REDIS_PREFIX", prefix.to_owned()),
        ("RATE_LIMIT_PER_MINUTE", NO_LIMIT.to_owned()),
    ];
    for (key, value) in extra {
        env.retain(|(k, _)| k != key);
        env.push((key, value.clone()));
    }
    let gw = Service::spawn(Bin::Gateway, &[], &env)
        .await
        .expect("spawning the gateway");
    gw.wait_ready(WAIT).await.expect("gateway ready");
    gw
}

/// A ready gateway with its own Redis prefix and no practical rate limit.
async fn gateway(db: &TestDb) -> Service {
    gateway_on(&db.url, &unique_prefix(), &[]).await
}

/// A migrated database, one account with one instance named `name`, and a gateway.
struct World {
    db: TestDb,
    account: Account,
    instance: Instance,
    gw: Service,
}

async fn world(name: &str) -> World {
    let db = migrated_db().await;
    let account = create_account(&db, None).await;
    let instance = create_instance(&db, &account, name, None).await;
    let gw = gateway(&db).await;
    World {
        db,
        account,
        instance,
        gw,
    }
}

// ---- requests ----

/// A response, read whole.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| {
            v.to_str()
                .unwrap_or_else(|_| panic!("header {name} is not text"))
        })
    }

    /// A header that must be present, as a number.
    fn number(&self, name: &str) -> u64 {
        self.header(name)
            .unwrap_or_else(|| panic!("no {name} header: {self:?}"))
            .parse()
            .unwrap_or_else(|_| panic!("{name} is not a number: {self:?}"))
    }

    fn has_rate_limit_headers(&self) -> bool {
        self.headers
            .keys()
            .any(|k| k.as_str().starts_with("x-ratelimit-"))
    }
}

/// Sends a request and reads the reply; every reply is checked for CORS headers (D22).
async fn send(req: reqwest::RequestBuilder) -> Reply {
    let resp = req.send().await.expect("sending the request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.text().await.expect("reading the body");
    let reply = Reply {
        status,
        headers,
        body,
    };
    let cors: Vec<_> = reply
        .headers
        .keys()
        .filter(|k| k.as_str().starts_with("access-control-"))
        .collect();
    assert!(cors.is_empty(), "CORS headers {cors:?} on {reply:?}");
    reply
}

/// A request on the gateway's public listener with extra headers.
async fn request(
    gw: &Service,
    method: Method,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> Reply {
    let mut req = http().request(method, gw.url(path_and_query));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    if let Some(body) = body {
        req = req.body(body);
    }
    send(req).await
}

/// `GET /api/events/getWebsocket/<name>` (name inserted verbatim: encode it yourself).
async fn get_config(gw: &Service, name: &str, headers: &[(&str, &str)]) -> Reply {
    let path = format!("/api/events/getWebsocket/{name}");
    request(gw, Method::GET, &path, headers, None).await
}

/// `POST /api/events/websocket/<name>` with a JSON body (name inserted verbatim).
async fn post_config(gw: &Service, name: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let path = format!("/api/events/websocket/{name}");
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    request(gw, Method::POST, &path, &all, Some(body.to_owned())).await
}

/// `token: <t>`.
fn tok(token: &str) -> [(&str, &str); 1] {
    [("token", token)]
}

/// Percent-encodes everything but unreserved characters (RFC 3986), for path segments.
fn enc(name: &str) -> String {
    let mut out = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---- assertions ----

/// The exact error envelope: status, parsed body, raw body (key order, compactness) and
/// `Content-Type: application/json` (§2.1, D22).
#[track_caller]
fn assert_error(reply: &Reply, status: u16, message: &str) {
    assert_eq!(reply.status, status, "status of {reply:?}");
    assert_eq!(
        reply.json(),
        json!({"success": false, "error": {"message": message}}),
        "body of {reply:?}"
    );
    let raw = format!(
        r#"{{"success":false,"error":{{"message":{}}}}}"#,
        Value::from(message)
    );
    assert_eq!(reply.body, raw, "raw body of {reply:?}");
    assert_eq!(
        reply.header("content-type"),
        Some("application/json"),
        "{reply:?}"
    );
}

/// The exact success body of both config endpoints (§3, §4, D5).
#[track_caller]
fn assert_config(reply: &Reply, message: &str, enabled: bool, events: &[&str], media: bool) {
    assert_eq!(reply.status, 200, "status of {reply:?}");
    assert_eq!(
        reply.json(),
        json!({
            "success": true,
            "message": message,
            "websocket": {"enabled": enabled, "events": events, "mediaBase64": media}
        }),
        "body of {reply:?}"
    );
    let raw = format!(
        r#"{{"success":true,"message":{},"websocket":{{"enabled":{enabled},"events":{},"mediaBase64":{media}}}}}"#,
        Value::from(message),
        json!(events)
    );
    assert_eq!(reply.body, raw, "raw body of {reply:?}");
    assert_eq!(
        reply.header("content-type"),
        Some("application/json"),
        "{reply:?}"
    );
}

/// The POST success body.
#[track_caller]
fn assert_configured(reply: &Reply, enabled: bool, events: &[&str], media: bool) {
    assert_config(reply, CONFIGURED, enabled, events, media);
}

/// The GET success body.
#[track_caller]
fn assert_retrieved(reply: &Reply, enabled: bool, events: &[&str], media: bool) {
    assert_config(reply, RETRIEVED, enabled, events, media);
}

// ---- time ----

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
}

/// Waits, if needed, until the current fixed 60 s window (D25) has at least `needed` seconds
/// left, so a rate-limit scenario cannot straddle a window boundary.
async fn wait_for_window_with(needed: Duration) {
    let now = unix_now();
    let into_window = Duration::from_millis((now.as_millis() % 60_000) as u64);
    let left = Duration::from_secs(60) - into_window;
    if left < needed {
        // The condition is "the next window has begun"; its start is known exactly.
        tokio::time::sleep(left + Duration::from_millis(50)).await;
    }
}
