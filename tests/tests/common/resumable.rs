//! Resumable clients and a continuous feed, shared by the end-to-end tests of resume (issue 17)
//! and of rebalancing / rolling restarts (issue 18): a [`Feed`] publishing `{"seq":n}` rounds
//! through the real publisher, a [`resumable_client`] with its own reconnect loop that resumes
//! with `since=<last offset>`, and [`check_exactly_once`] over what it saw.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ryze_tests::{eventually, Service, WsClient};
use serde_json::Value as Json;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::{Instance, API_KEY, WAIT};

/// The `data` of the frame that ends a client's run.
pub const END: &str = r#"{"end":true}"#;

/// One ingest round of a [`Feed`].
#[derive(Debug, Clone)]
pub struct Round {
    pub seq: u64,
    pub sent: Instant,
    /// 202 with every item `published` (appended to history and published).
    pub published: bool,
    /// Status and body otherwise.
    pub answer: Option<(u16, String)>,
}

/// Every `period`, one `POST /v1/events` with one `message.status` `{"seq":n}` per instance
/// (the same n for all), through the real publisher, until stopped.
pub struct Feed {
    stop: CancellationToken,
    published: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    handle: JoinHandle<Vec<Round>>,
}

impl Feed {
    pub fn start(publisher: &Service, instances: &[Instance], period: Duration) -> Feed {
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
                        .map(|id| super::item(id, "message.status", &data))
                        .collect();
                    let sent = Instant::now();
                    let resp = ryze_tests::http()
                        .post(&url)
                        .header("authorization", format!("Bearer {API_KEY}"))
                        .header("content-type", "application/json")
                        .body(super::batch(&items))
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
    pub async fn wait_published(&self, n: u64, timeout: Duration) {
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
    pub async fn wait_refused(&self, n: u64, timeout: Duration) {
        eventually("feed rounds refused", timeout, || async {
            let now = self.refused.load(Ordering::SeqCst);
            (now >= n).then_some(()).ok_or(format!("{now} of {n}"))
        })
        .await;
    }

    pub async fn stop(self) -> Vec<Round> {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.handle)
            .await
            .expect("the feed stops")
            .unwrap()
    }
}

/// Publishes the end frame to every instance.
pub async fn publish_end(publisher: &Service, instances: &[Instance]) {
    let items: Vec<String> = instances
        .iter()
        .map(|i| super::item(&i.id, "message.status", END))
        .collect();
    super::publish_expect(publisher, &super::batch(&items), items.len(), 0, 0, 0).await;
}

/// A Redis stream id `<ms>-<n>`, for checking that offsets strictly increase (the offset is
/// opaque to clients; the test knows the publisher uses stream ids, CONTRACT §5).
pub fn stream_id(offset: &str) -> (u64, u64) {
    let (ms, n) = offset
        .split_once('-')
        .unwrap_or_else(|| panic!("offset {offset:?} is not a stream id"));
    (ms.parse().unwrap(), n.parse().unwrap())
}

/// What one resumable client saw.
#[derive(Debug, Default)]
pub struct Log {
    /// `(data.seq, offset)` of every frame before the end marker, in arrival order.
    pub frames: Vec<(u64, String)>,
    /// `data.since` of every `stream.gap`.
    pub gaps: Vec<String>,
    /// Close code and reason of each connection that ended before the end marker.
    pub closes: Vec<(u16, String)>,
    /// The `since` of each connection, in order.
    pub sinces: Vec<String>,
    /// Whatever ended the run other than the end marker.
    pub error: Option<String>,
}

/// Progress a test can poll.
#[derive(Default)]
pub struct Progress {
    /// The first connection is open.
    pub connected: AtomicBool,
    /// Frames seen so far.
    pub frames: AtomicU64,
    /// Connected a second time (resumed at least once).
    pub moved: AtomicBool,
    /// Connections opened so far.
    pub connections: AtomicU64,
}

/// Pause between two failed connection attempts of a [`resumable_client`].
const RETRY: Duration = Duration::from_millis(50);

/// A resumable client with its own reconnect loop: its first connection uses `since=now`; each
/// time the server closes with 1001 it connects again with `since=<last offset seen>`. The n-th
/// connection goes to `urls[n % urls.len()]` (one URL: e.g. a balancer; several: one gateway
/// after the other). A refused connection (the balancer forwarding to a gateway that is
/// shutting down, a gateway not ready yet) is retried every [`RETRY`] for up to [`WAIT`].
/// Reads until the end marker; at most `max_connections` connections.
pub fn resumable_client(
    urls: Vec<String>,
    max_connections: usize,
    token: String,
    progress: Arc<Progress>,
) -> JoinHandle<Log> {
    tokio::spawn(async move {
        let mut log = Log::default();
        let mut since = "now".to_owned();
        for i in 0..max_connections {
            let url = &urls[i % urls.len()];
            log.sinces.push(since.clone());
            let full = format!("{url}?since={since}");
            // A client's own reconnect loop (it retries while its gateway drains or restarts)
            // that records a failure in its log instead of panicking in the spawned task.
            let deadline = Instant::now() + WAIT;
            let mut c = loop {
                match WsClient::connect(&full, &[("token", &token)]).await {
                    Ok(c) => break c,
                    Err(e) if Instant::now() >= deadline => {
                        log.error = Some(format!("connect {full}: {e}"));
                        return log;
                    }
                    Err(_) => tokio::time::sleep(RETRY).await,
                }
            };
            progress.connections.fetch_add(1, Ordering::SeqCst);
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
                        break; // reconnect
                    }
                    _ => {}
                }
            }
            if log.frames.is_empty() {
                log.error = Some("closed before any frame: nothing to resume from".into());
                return log;
            }
        }
        log.error = Some(format!("closed after {max_connections} connections"));
        log
    })
}

/// Polls until every client's [`Progress`] satisfies `done`.
pub async fn wait_all(what: &str, progress: &[Arc<Progress>], done: impl Fn(&Progress) -> bool) {
    eventually(what, WAIT, || async {
        let left = progress.iter().filter(|p| !done(p)).count();
        (left == 0)
            .then_some(())
            .ok_or(format!("{left} of {} not yet", progress.len()))
    })
    .await;
}

/// Asserts what one resumable client (`name`) saw: no error, no `stream.gap`, and every seq from
/// its first frame to `last` exactly once, in order, with strictly increasing offsets.
pub fn check_exactly_once(name: &str, log: &Log, last: u64) {
    assert!(log.error.is_none(), "{name}: {:?}; {log:?}", log.error);
    assert!(log.gaps.is_empty(), "{name}: stream.gap {:?}", log.gaps);
    assert!(!log.frames.is_empty(), "{name}: no frame");
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
             got {:?}, connections resumed with since={:?}",
            seqs.len(),
            first,
            &seqs[bad.saturating_sub(3)..(bad + 3).min(seqs.len())],
            log.sinces
        );
    }
    assert!(
        log.frames
            .windows(2)
            .all(|w| stream_id(&w[0].1) < stream_id(&w[1].1)),
        "{name}: offsets do not strictly increase"
    );
}

/// Asserts every round of a feed was fully published; returns the last seq.
pub fn all_published(rounds: &[Round]) -> u64 {
    for r in rounds {
        assert!(
            r.published,
            "round {} not fully published: {:?}",
            r.seq, r.answer
        );
    }
    rounds.last().expect("at least one round").seq
}
