//! Failure, abuse and isolation suite (issue 10): the gateway keeps working and leaks nothing
//! when Redis or Postgres go away, when a pod is killed, under a reconnect storm, with hostile
//! clients and malformed requests, across tenants, and through connection churn.
//!
//! Real processes on loopback only. Every loop is bounded and every wait polls a condition
//! under a timeout. What `ws_gateway.rs` already proves in isolation (a slow client's 1008,
//! 1009, the pong timeout, one Redis restart, deletion, SIGTERM) is not repeated: here the
//! same failures happen under traffic, together, or at scale.
//!
//! Modules: `redis_outage` (items 1–2), `postgres_outage` (3), `kill9` (4), `storm` (5),
//! `hostile` (6), `fuzz` (7, the HTTP half; the property half is `properties.rs`),
//! `isolation` (8), `churn` (9; `scripts/soak.sh` runs its long form).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use ryze_tests::fixtures as common;

#[path = "failure/blackhole.rs"]
mod blackhole;
#[path = "failure/churn.rs"]
mod churn;
#[path = "failure/fuzz.rs"]
mod fuzz;
#[path = "failure/hostile.rs"]
mod hostile;
#[path = "failure/isolation.rs"]
mod isolation;
#[path = "failure/kill9.rs"]
mod kill9;
#[path = "failure/postgres_outage.rs"]
mod postgres_outage;
#[path = "failure/redis_outage.rs"]
mod redis_outage;
#[path = "failure/storm.rs"]
mod storm;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{item, Env, Instance, WAIT};
use ryze_core::store::{Store, StoreOptions, WsConfig};
use ryze_core::token::TokenCipher;
pub use ryze_tests::eventually;
pub use ryze_tests::fixtures::resumable::{publish_end, Feed};
use ryze_tests::{Service, WsClient};
use tokio::task::JoinHandle;

/// The gateway's `/metrics` text.
pub async fn scrape(gw: &Service) -> String {
    ryze_tests::http()
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The sum of every sample of `name` (any labels) in a metrics text; 0 when absent.
pub fn metric_in(text: &str, name: &str) -> f64 {
    ryze_tests::metrics::Exposition::parse(text).sum(name, "")
}

/// One gauge or counter of a running gateway.
pub async fn metric(gw: &Service, name: &str) -> f64 {
    metric_in(&scrape(gw).await, name)
}

/// `GET <url>`'s status, or 0 if the request failed.
pub async fn status_of(url: &str) -> u16 {
    match ryze_tests::http()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// A store on the environment's database, for creating many instances without one CLI
/// process (and one REST request) each.
pub fn store_of(env: &Env) -> Store {
    Store::new(&env.db_url, &StoreOptions::default(), TokenCipher::plain()).unwrap()
}

/// Creates `n` instances named `<prefix>-<i>` in the environment's account, each with an
/// enabled config (all six types), straight through the store.
pub async fn bulk_instances(env: &Env, prefix: &str, n: usize) -> Vec<Instance> {
    let store = store_of(env);
    let account: uuid::Uuid = env.account_id.parse().unwrap();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let created = store
            .create_instance(account, &format!("{prefix}-{i}"), None)
            .await
            .unwrap();
        store
            .upsert_config(
                created.id,
                WsConfig {
                    enabled: true,
                    events: Vec::new(),
                    media_base64: false,
                },
            )
            .await
            .unwrap();
        out.push(Instance {
            id: created.id.to_string(),
            name: created.name,
            token: created.token,
        });
    }
    out
}

/// The `data` of the frame that ends a [`collect`].
pub use ryze_tests::fixtures::resumable::END;

/// One frame as a collector saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub instance: String,
    pub token: String,
    pub seq: u64,
}

/// Reads a client's frames until an `{"end":true}` frame, keeping each frame's instance,
/// token and `data.seq`. Every frame must be JSON with those fields. Errors (closes, timeouts)
/// end the collection and are returned with what was seen so far.
pub fn collect(
    mut c: WsClient,
    per_frame: Duration,
) -> JoinHandle<(WsClient, Vec<Seen>, Option<String>)> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            let v = match c.next_json(per_frame).await {
                Ok(v) => v,
                Err(e) => return (c, seen, Some(format!("{e:#}"))),
            };
            if v["data"]["end"] == true {
                return (c, seen, None);
            }
            let seq = v["data"]["seq"]
                .as_u64()
                .unwrap_or_else(|| panic!("frame without data.seq: {v}"));
            seen.push(Seen {
                instance: v["instanceData"]["instance"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                token: v["instanceData"]["token"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                seq,
            });
        }
    })
}

/// Publishes `seqs` as `message.status` `{"seq":n}` events to every instance, `per_request`
/// sequence numbers per request, asserting each request publishes everything.
pub async fn publish_seqs(
    publisher: &Service,
    instances: &[Instance],
    seqs: std::ops::Range<u64>,
    per_request: usize,
) {
    let all: Vec<u64> = seqs.collect();
    for chunk in all.chunks(per_request) {
        let mut items = Vec::new();
        for seq in chunk {
            for inst in instances {
                items.push(item(
                    &inst.id,
                    "message.status",
                    &format!(r#"{{"seq":{seq}}}"#),
                ));
            }
        }
        common::publish_expect(publisher, &common::batch(&items), items.len(), 0, 0, 0).await;
    }
}

/// Connects with a token from one of the three sources: 0 header `token`, 1
/// `Authorization: Bearer`, 2 `?token=`.
pub async fn connect_via(
    gw: &Service,
    name: &str,
    token: &str,
    source: usize,
) -> Result<WsClient, ryze_tests::WsConnectError> {
    let url = common::ws_url(gw, name);
    match source % 3 {
        0 => WsClient::connect(&url, &[("token", token)]).await,
        1 => {
            let bearer = format!("Bearer {token}");
            WsClient::connect(&url, &[("Authorization", bearer.as_str())]).await
        }
        _ => WsClient::connect(&format!("{url}?token={}", common::segment(token)), &[]).await,
    }
}

/// Resident memory of a process, in MiB, for messages.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Waits until the gateway's RSS is at most `limit` bytes (allocators return memory lazily).
pub async fn wait_rss_below(gw: &Service, limit: u64, timeout: Duration) -> u64 {
    eventually("gateway RSS back near its baseline", timeout, || async {
        let rss = gw.rss_bytes();
        if rss > 0 && rss <= limit {
            Ok(rss)
        } else {
            Err(format!(
                "RSS {:.1} MiB, limit {:.1} MiB",
                mib(rss),
                mib(limit)
            ))
        }
    })
    .await
}

/// A shared list, for tasks that record outcomes.
pub type Shared<T> = Arc<Mutex<Vec<T>>>;

/// The default per-frame timeout of collectors.
pub const FRAME_WAIT: Duration = WAIT;
