//! Resume end to end (issue 17, "Tests"): the real publisher (history script, version-2
//! headers), real gateways and a real Redis, under continuous traffic.
//!
//! - Drain: SIGTERM one of two gateways while ~200 events/s are published to its instances;
//!   resumable clients reconnect to the other gateway with `since=<last offset>` and see every
//!   event once, in order, with no `stream.gap`.
//! - Redis restart: a client *without* `since` misses nothing published once Redis is back
//!   (D38: after the resubscribe the gateway catches up from history).
//!
//! Every wait is bounded; the only timers pace the publisher. Polled conditions (clients
//! connected, rounds accepted) are checked every [`POLL`] under a deadline.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{configure, item, Env, Instance, System, API_KEY, READY, WAIT};
use ryze_tests::{pg, RedisServer, Service, WsClient};
use serde_json::{json, Value as Json};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// How often polled conditions are checked.
const POLL: Duration = Duration::from_millis(25);

/// The `data` of the frame that ends a client's run.
const END: &str = r#"{"end":true}"#;

/// Polls `check` until it returns `Ok`; panics with its last `Err` at `timeout`.
async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(()) => return,
            Err(last) => assert!(
                Instant::now() < deadline,
                "{what}: not true within {timeout:?}; last: {last}"
            ),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One ingest round of a [`Feed`].
#[derive(Debug, Clone)]
struct Round {
    seq: u64,
    sent: Instant,
    /// 202 with every item `published` (appended to history and published).
    published: bool,
    /// Status and body otherwise.
    answer: Option<(u16, String)>,
}

/// Every `period`, one `POST /v1/events` with one `message.status` `{"seq":n}` per instance
/// (the same n for all), through the real publisher, until stopped.
struct Feed {
    stop: CancellationToken,
    published: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    handle: JoinHandle<Vec<Round>>,
}

impl Feed {
    fn start(publisher: &Service, instances: &[Instance], period: Duration) -> Feed {
        let url = publisher.url("/v1/events");
        let ids: Vec<String> = instances.iter().map(|i| i.id.clone()).collect();
        let stop = CancellationToken::new();
        let published = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let handle = tokio::spawn({
            let (stop, published, refused) = (stop.clone(), published.clone(), refused.clone());
            async move {
                let want = format!(r#""published":{}"#, ids.len());
                let mut rounds = Vec::new();
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                for seq in 1.. {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    let data = format!(r#"{{"seq":{seq}}}"#);
                    let items: Vec<String> = ids
                        .iter()
                        .map(|id| item(id, "message.status", &data))
                        .collect();
                    let sent = Instant::now();
                    let resp = ryze_tests::http()
                        .post(&url)
                        .header("authorization", format!("Bearer {API_KEY}"))
                        .header("content-type", "application/json")
                        .body(common::batch(&items))
                        .timeout(Duration::from_secs(10))
                        .send()
                        .await;
                    let (status, body) = match resp {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            (status, r.text().await.unwrap_or_default())
                        }
                        Err(e) => (0, e.to_string()),
                    };
                    let ok = status == 202 && body.contains(&want);
                    if ok { &published } else { &refused }.fetch_add(1, Ordering::SeqCst);
                    rounds.push(Round {
                        seq,
                        sent,
                        published: ok,
                        answer: (!ok).then_some((status, body)),
                    });
                }
                rounds
            }
        });
        Feed {
            stop,
            published,
            refused,
            handle,
        }
    }

    /// Waits until `n` more rounds than now were fully published.
    async fn wait_published(&self, n: u64, timeout: Duration) {
        let target = self.published.load(Ordering::SeqCst) + n;
        eventually("feed rounds published", timeout, || async {
            let now = self.published.load(Ordering::SeqCst);
            (now >= target)
                .then_some(())
                .ok_or(format!("{now} of {target}"))
        })
        .await;
    }

    /// Waits until `n` rounds in all were refused.
    async fn wait_refused(&self, n: u64, timeout: Duration) {
        eventually("feed rounds refused", timeout, || async {
            let now = self.refused.load(Ordering::SeqCst);
            (now >= n).then_some(()).ok_or(format!("{now} of {n}"))
        })
        .await;
    }

    async fn stop(self) -> Vec<Round> {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.handle)
            .await
            .expect("the feed stops")
            .unwrap()
    }
}

/// Publishes the end frame to every instance.
async fn publish_end(publisher: &Service, instances: &[Instance]) {
    let items: Vec<String> = instances
        .iter()
        .map(|i| item(&i.id, "message.status", END))
        .collect();
    common::publish_expect(publisher, &common::batch(&items), items.len(), 0, 0, 0).await;
}

/// A Redis stream id `<ms>-<n>`, for checking that offsets strictly increase (the offset is
/// opaque to clients; the test knows the publisher uses stream ids, CONTRACT §5).
fn stream_id(offset: &str) -> (u64, u64) {
    let (ms, n) = offset
        .split_once('-')
        .unwrap_or_else(|| panic!("offset {offset:?} is not a stream id"));
    (ms.parse().unwrap(), n.parse().unwrap())
}

/// What one resumable client saw.
#[derive(Debug, Default)]
struct Log {
    /// `(data.seq, offset)` of every frame before the end marker, in arrival order.
    frames: Vec<(u64, String)>,
    /// `data.since` of every `stream.gap`.
    gaps: Vec<String>,
    /// Close code and reason of each connection that ended before the end marker.
    closes: Vec<(u16, String)>,
    /// The `since` of each connection, in order.
    sinces: Vec<String>,
    /// Whatever ended the run other than the end marker.
    error: Option<String>,
}

/// Progress a test can poll.
#[derive(Default)]
struct Progress {
    /// The first connection is open.
    connected: AtomicBool,
    /// Frames seen so far.
    frames: AtomicU64,
    /// Connected to the second gateway.
    moved: AtomicBool,
}

/// A resumable client with its own reconnect loop: connects to `urls[0]` with `since=now`; when
/// the server closes with 1001 it connects to the next URL with `since=<last offset seen>`.
/// Reads until the end marker. At most `urls.len()` connections.
fn resumable_client(urls: Vec<String>, token: String, progress: Arc<Progress>) -> JoinHandle<Log> {
    tokio::spawn(async move {
        let mut log = Log::default();
        let mut since = "now".to_owned();
        for (i, url) in urls.iter().enumerate() {
            log.sinces.push(since.clone());
            let full = format!("{url}?since={since}");
            let mut c = match WsClient::connect(&full, &[("token", &token)]).await {
                Ok(c) => c,
                Err(e) => {
                    log.error = Some(format!("connect {full}: {e}"));
                    return log;
                }
            };
            if i == 0 {
                progress.connected.store(true, Ordering::SeqCst);
            } else {
                progress.moved.store(true, Ordering::SeqCst);
            }
            loop {
                let msg = match c.next_message(WAIT).await {
                    Ok(m) => m,
                    Err(e) => {
                        log.error = Some(format!("on {url}: {e:#}"));
                        return log;
                    }
                };
                match msg {
                    Message::Text(text) => {
                        let v: Json = serde_json::from_str(text.as_str()).unwrap();
                        if v["event"] == "stream.gap" {
                            log.gaps.push(v["data"]["since"].to_string());
                            continue;
                        }
                        if v["data"]["end"] == true {
                            return log;
                        }
                        let seq = v["data"]["seq"]
                            .as_u64()
                            .unwrap_or_else(|| panic!("frame without data.seq: {text}"));
                        let offset = v["offset"]
                            .as_str()
                            .unwrap_or_else(|| panic!("frame without offset: {text}"))
                            .to_owned();
                        assert!(
                            text.as_str()
                                .ends_with(&format!(",\"offset\":\"{offset}\"}}")),
                            "offset is not the last key: {text}"
                        );
                        since = offset.clone();
                        log.frames.push((seq, offset));
                        progress.frames.fetch_add(1, Ordering::SeqCst);
                    }
                    Message::Close(frame) => {
                        let close = frame
                            .map(|f| (u16::from(f.code), f.reason.as_str().to_owned()))
                            .unwrap_or((1005, String::new()));
                        let code = close.0;
                        log.closes.push(close);
                        if code != 1001 {
                            log.error = Some(format!("closed with {code} on {url}"));
                            return log;
                        }
                        break; // reconnect to the next gateway
                    }
                    _ => {}
                }
            }
            if log.frames.is_empty() {
                log.error = Some("drained before any frame: nothing to resume from".into());
                return log;
            }
        }
        log.error = Some("closed by the last gateway too".into());
        log
    })
}

/// Drain (issue 17, "Tests"): 20 resumable clients over 4 instances on gateway A; about 200
/// events/s in all through the real publisher; SIGTERM A. Each client's own loop reconnects to
/// gateway B with `since=<last offset>` on 1001. Every client must see every seq from its first
/// frame to the last published one exactly once, in order, with strictly increasing offsets and
/// no `stream.gap`.
///
/// What breaks it: frames published between A's 1001 and B's 101 missing from history (the
/// publisher skipping the append while no gateway holds a client), a replay/live seam that
/// drops or repeats a frame on B, a gap frame for a retained offset, A not closing with 1001
/// `server shutting down`, or the publisher refusing a round.
#[tokio::test(flavor = "multi_thread")]
async fn draining_a_gateway_loses_nothing_for_resumed_clients() {
    const CLIENTS_PER_INSTANCE: usize = 5;
    let mut sys = System::start("drain-0", json!({"enabled": true}), 2, &[]).await;
    let mut instances = vec![sys.inst.clone()];
    for i in 1..4 {
        let name = format!("drain-{i}");
        let inst = sys.env.create_instance(&name).await;
        configure(
            sys.gw(),
            &name,
            &sys.env.account_token,
            json!({"enabled": true}),
        )
        .await;
        sys.watcher.wait("config_changed", &inst.id).await;
        instances.push(inst);
    }
    let (a, b) = (&sys.gateways[0], &sys.gateways[1]);

    let mut clients = Vec::new();
    for inst in &instances {
        for _ in 0..CLIENTS_PER_INSTANCE {
            let progress = Arc::new(Progress::default());
            let urls = vec![common::ws_url(a, &inst.name), common::ws_url(b, &inst.name)];
            let handle = resumable_client(urls, inst.token.clone(), progress.clone());
            clients.push((inst.name.clone(), progress, handle));
        }
    }
    eventually("every client connected to A", WAIT, || async {
        let waiting = clients
            .iter()
            .filter(|(_, p, _)| !p.connected.load(Ordering::SeqCst))
            .count();
        (waiting == 0)
            .then_some(())
            .ok_or(format!("{waiting} not connected"))
    })
    .await;
    // 4 events every 20 ms: 200 events/s.
    let feed = Feed::start(&sys.publisher, &instances, Duration::from_millis(20));
    // Every client has an offset to resume from before the drain starts.
    eventually("every client saw a frame on A", WAIT, || async {
        let waiting = clients
            .iter()
            .filter(|(_, p, _)| p.frames.load(Ordering::SeqCst) == 0)
            .count();
        (waiting == 0)
            .then_some(())
            .ok_or(format!("{waiting} without a frame"))
    })
    .await;
    feed.wait_published(25, WAIT).await;

    a.sigterm();
    eventually("every client reconnected to B", WAIT, || async {
        let left = clients
            .iter()
            .filter(|(_, p, h)| !p.moved.load(Ordering::SeqCst) && !h.is_finished())
            .count();
        (left == 0)
            .then_some(())
            .ok_or(format!("{left} not on B yet"))
    })
    .await;
    // Keep publishing for a while with everyone on B (about a second).
    feed.wait_published(50, WAIT).await;
    let rounds = feed.stop().await;
    publish_end(&sys.publisher, &instances).await;

    for r in &rounds {
        assert!(
            r.published,
            "round {} not fully published: {:?}",
            r.seq, r.answer
        );
    }
    let last = rounds.last().unwrap().seq;
    let replayed = ryze_tests::http()
        .get(b.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .lines()
        .find(|l| l.starts_with("ryze_gateway_frames_replayed"))
        .map(str::to_owned);
    for (name, _, handle) in clients {
        let log = tokio::time::timeout(WAIT * 2, handle)
            .await
            .expect("client finishes")
            .unwrap();
        assert!(log.error.is_none(), "{name}: {:?}; {log:?}", log.error);
        assert!(log.gaps.is_empty(), "{name}: stream.gap {:?}", log.gaps);
        assert_eq!(
            log.closes,
            [(1001, "server shutting down".to_owned())],
            "{name}"
        );
        assert_eq!(log.sinces.len(), 2, "{name}");
        assert_ne!(log.sinces[1], "now", "{name}");
        let first = log.frames[0].0;
        let seqs: Vec<u64> = log.frames.iter().map(|(s, _)| *s).collect();
        let expected: Vec<u64> = (first..=last).collect();
        if seqs != expected {
            let bad = seqs
                .iter()
                .zip(&expected)
                .position(|(s, e)| s != e)
                .unwrap_or(seqs.len().min(expected.len()));
            panic!(
                "{name}: {} frames, expected {}..={last}; first difference at index {bad}: \
                 got {:?}, resumed with since={}",
                seqs.len(),
                first,
                &seqs[bad.saturating_sub(3)..(bad + 3).min(seqs.len())],
                log.sinces[1]
            );
        }
        assert!(
            log.frames
                .windows(2)
                .all(|w| stream_id(&w[0].1) < stream_id(&w[1].1)),
            "{name}: offsets do not strictly increase"
        );
    }
    let status = sys.gateways[0].wait_exit(WAIT).await.unwrap();
    assert!(status.success(), "gateway A after SIGTERM: {status:?}");
    println!(
        "drain: {} rounds of {} events; B {}",
        rounds.len(),
        instances.len(),
        replayed.unwrap_or_else(|| "has no frames_replayed metric".into())
    );
}

/// Redis restart, client without `since` (D38): Redis is stopped under steady traffic, stays
/// away until the publisher refused some rounds, and comes back empty (no persistence). Every
/// round the publisher published after the restart must reach the client once, in order:
/// rounds published before the gateway resubscribed are in the new history, which the gateway
/// reads after its resubscribe; later ones arrive live. Rounds published before the stop may
/// be lost with the old server (their history is gone), so only order and uniqueness are
/// asserted for them. Every round sent once both services were ready again must be published.
///
/// What breaks it: the gateway not catching up from history after the resubscribe (frames
/// published between Redis's return and the resubscribe lost), catch-up and live frames
/// overlapping (a duplicate) or interleaving (out of order), an offset leaking to a client
/// without `since`, or the services not becoming ready again.
#[tokio::test(flavor = "multi_thread")]
async fn after_a_redis_restart_a_client_without_since_misses_nothing_published_since() {
    let private = RedisServer::start().await.unwrap();
    let db = pg().await.fresh_database().await.unwrap();
    let env = Env::with(db.url, Some(private.url()), None).await;
    let sys = System::start_in(env, "restart", json!({"enabled": true}), 1, &[], &[]).await;
    let instances = vec![sys.inst.clone()];

    let client = common::connect(sys.gw(), &sys.inst.name, &sys.env.account_token).await;
    let collector = collect_plain(client);
    let feed = Feed::start(&sys.publisher, &instances, Duration::from_millis(20));
    feed.wait_published(20, WAIT).await;

    private.stop().await.unwrap();
    sys.gw().wait_not_ready(WAIT).await.unwrap();
    // Keep Redis away until the publisher refused some rounds: a real outage.
    feed.wait_refused(3, WAIT).await;
    private.restart().await.unwrap();
    let back_at = Instant::now();
    sys.gw().wait_ready(READY).await.unwrap();
    let gw_ready_at = Instant::now();
    sys.publisher.wait_ready(READY).await.unwrap();
    let ready_at = Instant::now();
    feed.wait_published(50, WAIT).await;
    let rounds = feed.stop().await;
    publish_end(&sys.publisher, &instances).await;

    let (seen, error) = tokio::time::timeout(WAIT * 2, collector)
        .await
        .expect("collector finishes")
        .unwrap();
    assert!(error.is_none(), "client: {error:?}");
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "out of order or duplicated: {seen:?}"
    );
    for r in rounds.iter().filter(|r| r.sent >= ready_at) {
        assert!(
            r.published,
            "round {} sent with everything ready: {:?}",
            r.seq, r.answer
        );
    }
    let must: Vec<u64> = rounds
        .iter()
        .filter(|r| r.published && r.sent >= back_at)
        .map(|r| r.seq)
        .collect();
    let missing: Vec<u64> = must
        .iter()
        .copied()
        .filter(|s| seen.binary_search(s).is_err())
        .collect();
    assert!(
        missing.is_empty(),
        "published after Redis came back but never delivered: {missing:?} (seen {seen:?})"
    );
    // A round answered with anything but 202 `published` or a 503 never reached Redis.
    for seq in &seen {
        let r = &rounds[(*seq - 1) as usize];
        assert!(
            r.published || r.answer.as_ref().is_some_and(|(s, _)| *s == 503),
            "seq {seq} was delivered but answered {:?}",
            r.answer
        );
    }
    let lost = rounds
        .iter()
        .filter(|r| r.published && r.sent < back_at && seen.binary_search(&r.seq).is_err())
        .count();
    // How much of the catch-up path this run exercised: rounds published after Redis was
    // back but before the gateway reported ready again (resubscribed).
    let before_resubscribe = rounds
        .iter()
        .filter(|r| r.published && r.sent >= back_at && r.sent < gw_ready_at)
        .count();
    println!(
        "redis restart: {} rounds, {} published after the restart (all delivered; \
         {before_resubscribe} of them before the gateway was ready again), {lost} published \
         before it lost with the old server",
        rounds.len(),
        must.len()
    );
}

/// Reads a plain client's frames until the end marker: the `data.seq` of each, asserting no
/// frame carries an offset. Errors end the collection.
fn collect_plain(mut c: WsClient) -> JoinHandle<(Vec<u64>, Option<String>)> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            let v = match c.next_json(WAIT).await {
                Ok(v) => v,
                Err(e) => return (seen, Some(format!("{e:#}"))),
            };
            if v["data"]["end"] == true {
                return (seen, None);
            }
            assert!(v.get("offset").is_none(), "offset without since: {v}");
            seen.push(v["data"]["seq"].as_u64().expect("data.seq"));
        }
    })
}
