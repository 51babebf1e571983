//! The steady load and the watchers: one feeder per instance publishing `{"i":k,"seq":n}`
//! through the publishers (recording each answer per event), the clients (half resumable),
//! the client that stops reading, the crash monitor and the readiness poller.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value as Json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::history::{lock, now, ClientLog, ConnRec, EventRec, FrameRec, Outcome, ReadySample};
use super::rng::Rng;
use super::system::{System, API_KEY};
use crate::{http, WsClient};

/// Upper bound of one ingest request (every publish is bounded by the stall timeout, 3 s).
const INGEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Events in a burst.
pub const BURST: u64 = 1000;
/// How often the monitors look.
const MONITOR_PERIOD: Duration = Duration::from_millis(250);

/// A feeder's handle: bursts are asked through it so that one instance's events are always
/// sent one request at a time, in sequence order.
pub struct Feeder {
    pub bursts: mpsc::UnboundedSender<()>,
    /// Highest seq answered `accepted` so far.
    pub last_accepted: Arc<AtomicU64>,
    pub handle: JoinHandle<Vec<EventRec>>,
}

/// Starts the feeder of instance `inst`: one event every `period`, a burst when asked.
pub fn feeder(sys: Arc<System>, inst: usize, period: Duration, stop: CancellationToken) -> Feeder {
    let (bursts, mut rx) = mpsc::unbounded_channel::<()>();
    let last_accepted = Arc::new(AtomicU64::new(0));
    let handle = tokio::spawn({
        let last_accepted = last_accepted.clone();
        async move {
            let id = sys.instances[inst].id.clone();
            let mut events = Vec::new();
            let mut next = 1u64;
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let n = tokio::select! {
                    _ = stop.cancelled() => break,
                    Some(()) = rx.recv() => BURST,
                    _ = tick.tick() => 1,
                };
                let items: Vec<String> = (next..next + n)
                    .map(|seq| {
                        format!(
                            r#"{{"instanceId":"{id}","event":"message.status","data":{{"i":{inst},"seq":{seq}}}}}"#
                        )
                    })
                    .collect();
                let body = format!("[{}]", items.join(","));
                let sent = now();
                let outcome = ingest(&sys, inst, &body, n).await;
                let answered = now();
                for seq in next..next + n {
                    events.push(EventRec {
                        seq,
                        sent,
                        answered,
                        outcome,
                    });
                }
                if outcome == Outcome::Accepted {
                    last_accepted.store(next + n - 1, Ordering::SeqCst);
                }
                next += n;
            }
            events
        }
    });
    Feeder {
        bursts,
        last_accepted,
        handle,
    }
}

/// Posts `body` (`n` items) to a publisher present now, starting with the instance's own and
/// moving on only when a connection is refused (nothing was sent, so nothing can have been
/// published twice).
async fn ingest(sys: &System, inst: usize, body: &str, n: u64) -> Outcome {
    let urls = sys.ingest_urls();
    for k in 0..urls.len() {
        let Some(url) = &urls[(inst + k) % urls.len()] else {
            continue;
        };
        let resp = http()
            .post(url)
            .header("authorization", format!("Bearer {API_KEY}"))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .timeout(INGEST_TIMEOUT)
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) if e.is_connect() => continue,
            Err(_) => return Outcome::Maybe,
        };
        let status = resp.status().as_u16();
        let Ok(text) = resp.text().await else {
            return Outcome::Maybe;
        };
        return match status {
            202 => {
                let published = serde_json::from_str::<Json>(&text)
                    .ok()
                    .and_then(|v| v["published"].as_u64());
                // `published: 0` (noListeners) skips only the PUBLISH: the event may still be
                // in history (D37) and reach clients through a resume or a catch-up (D38).
                match published {
                    Some(p) if p == n => Outcome::Accepted,
                    _ => Outcome::Maybe,
                }
            }
            400..=499 => Outcome::Never,
            _ => Outcome::Maybe,
        };
    }
    Outcome::Never
}

/// What the run polls of a client while it runs.
#[derive(Default)]
pub struct Progress {
    /// Highest seq received.
    pub last_seq: AtomicU64,
    /// A connection is open now.
    pub connected: AtomicBool,
}

/// A client of instance `inst` with its own reconnect loop (backoff 50 ms doubling to 1 s,
/// with jitter). A resumable one connects first with `since=now`, then with the offset of the
/// last frame it received. Runs until `stop`.
pub fn client(
    sys: Arc<System>,
    id: usize,
    inst: usize,
    resumable: bool,
    seed: u64,
    stop: CancellationToken,
    progress: Arc<Progress>,
) -> JoinHandle<ClientLog> {
    tokio::spawn(async move {
        let mut rng = Rng::new(seed ^ (id as u64).wrapping_mul(0x9E37_79B9));
        let mut log = ClientLog {
            id,
            instance: inst,
            resumable,
            ..ClientLog::default()
        };
        let name = sys.instances[inst].name.clone();
        let base = sys.ws_url(inst);
        // (offset text, parsed offset, seq) of the last frame.
        let mut last: Option<(String, (u64, u64), u64)> = None;
        let mut failures = 0u32;
        while !stop.is_cancelled() {
            let since = resumable.then(|| last.as_ref().map(|l| l.2));
            let url = match (&since, &last) {
                (None, _) => base.clone(),
                (Some(_), Some((offset, _, _))) => format!("{base}?since={offset}"),
                (Some(_), None) => format!("{base}?since=now"),
            };
            let headers = [("token", sys.env.account_token.as_str())];
            let attempt =
                tokio::time::timeout(Duration::from_secs(10), WsClient::connect(&url, &headers));
            let mut ws = tokio::select! {
                _ = stop.cancelled() => break,
                r = attempt => match r {
                    Ok(Ok(ws)) => ws,
                    _ => {
                        log.failed_connects += 1;
                        failures += 1;
                        let ms = (50u64 << failures.min(5)).min(1000) as f64;
                        let pause = Duration::from_millis((ms * rng.range(0.5, 1.0)) as u64);
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep(pause) => continue, // the client's reconnect backoff (load shape, not synchronisation)
                        }
                    }
                }
            };
            failures = 0;
            progress.connected.store(true, Ordering::SeqCst);
            let mut conn = ConnRec {
                opened: now(),
                since,
                ..ConnRec::default()
            };
            loop {
                let msg = tokio::select! {
                    _ = stop.cancelled() => break,
                    m = ws.stream().next() => m,
                };
                let at = now();
                let msg = match msg {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        conn.closed = Some(at);
                        conn.end = format!("error: {e}");
                        break;
                    }
                    None => {
                        conn.closed = Some(at);
                        conn.end = "eof".into();
                        break;
                    }
                };
                let text = match msg {
                    Message::Text(t) => t,
                    Message::Close(frame) => {
                        conn.closed = Some(at);
                        conn.end = frame.map_or("close (no code)".into(), |f| {
                            format!("close {} {}", u16::from(f.code), f.reason)
                        });
                        break;
                    }
                    _ => continue,
                };
                let v: Json = match serde_json::from_str(text.as_str()) {
                    Ok(v) => v,
                    Err(e) => {
                        sys.recorder
                            .anomaly("bad_frame", format!("client {id}: {e}: {text}"));
                        continue;
                    }
                };
                if v["event"] == "stream.gap" {
                    conn.gaps.push((at, last.as_ref().map(|l| l.2)));
                    continue;
                }
                let (Some(i), Some(seq)) = (v["data"]["i"].as_u64(), v["data"]["seq"].as_u64())
                else {
                    sys.recorder
                        .anomaly("bad_frame", format!("client {id}: no data.i/seq: {text}"));
                    continue;
                };
                if i != inst as u64 || v["instanceData"]["instance"] != name.as_str() {
                    sys.recorder.anomaly(
                        "foreign_frame",
                        format!("client {id} of instance {inst} ({name}) received {text}"),
                    );
                    continue;
                }
                match (resumable, v["offset"].as_str()) {
                    (true, Some(offset)) => {
                        let parsed = parse_offset(offset);
                        if let Some(prev) = &last {
                            if parsed <= Some(prev.1) {
                                sys.recorder.anomaly(
                                    "offset_not_increasing",
                                    format!(
                                        "client {id} (instance {inst}): offset {offset} (seq {seq}) after {} (seq {})",
                                        prev.0, prev.2
                                    ),
                                );
                            }
                        }
                        last = Some((offset.to_owned(), parsed.unwrap_or_default(), seq));
                    }
                    (true, None) => sys
                        .recorder
                        .anomaly("missing_offset", format!("client {id}: {text}")),
                    (false, Some(_)) => sys
                        .recorder
                        .anomaly("offset_without_since", format!("client {id}: {text}")),
                    (false, None) => {}
                }
                conn.frames.push(FrameRec { at, seq });
                progress.last_seq.fetch_max(seq, Ordering::SeqCst);
            }
            progress.connected.store(false, Ordering::SeqCst);
            log.conns.push(conn);
        }
        log
    })
}

/// A stream id `<ms>-<n>`.
fn parse_offset(offset: &str) -> Option<(u64, u64)> {
    let (ms, n) = offset.split_once('-')?;
    Some((ms.parse().ok()?, n.parse().ok()?))
}

/// A client of `inst` that never reads: a 4 KiB receive buffer (which also stops the kernel
/// from growing it), upgraded, then left alone for `hold`. Returns how its connection looked
/// at the end.
pub async fn stalled_client(sys: &System, inst: usize, hold: Duration) -> anyhow::Result<String> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let stream = socket.connect(sys.balancer.addr()).await?;
    let mut request = sys.ws_url(inst).into_client_request()?;
    request.headers_mut().insert(
        "token",
        sys.env.account_token.parse().map_err(anyhow::Error::msg)?,
    );
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(request, stream),
    )
    .await??;
    tokio::time::sleep(hold).await; // the fault's duration: it is the point to do nothing
    drop(ws);
    Ok(format!("held {:.1}s without reading", hold.as_secs_f64()))
}

/// Every [`MONITOR_PERIOD`]: a gateway or publisher that exited without a fault having
/// signalled it is an anomaly (reported once, with the tail of its output).
pub fn crash_monitor(sys: Arc<System>, stop: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.is_cancelled() {
            for (what, slots) in [("gateway", &sys.gateways), ("publisher", &sys.publishers)] {
                let mut slots = lock(slots);
                for slot in slots.iter_mut().flatten() {
                    if slot.planned_exit {
                        continue;
                    }
                    if let Some(status) = slot.svc.exited() {
                        slot.planned_exit = true;
                        let logs = slot.svc.logs();
                        let tail: Vec<&str> = logs.lines().rev().take(15).collect();
                        sys.recorder.anomaly(
                            "unplanned_exit",
                            format!(
                                "{what} pid {} exited ({}); last output:\n{}",
                                slot.svc.pid(),
                                crate::describe(status),
                                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                            ),
                        );
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(MONITOR_PERIOD) => {}
            }
        }
    })
}

/// Every [`MONITOR_PERIOD`]: `GET /readyz` of every gateway present (1 s timeout), recorded
/// per gateway process.
pub fn readiness_poller(sys: Arc<System>, stop: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.is_cancelled() {
            let targets: Vec<(usize, String)> = lock(&sys.gateways)
                .iter()
                .flatten()
                .filter(|s| !s.planned_exit)
                .map(|s| (s.life, s.svc.admin_url("/readyz")))
                .collect();
            let polls = targets.into_iter().map(|(life, url)| async move {
                let r = http()
                    .get(&url)
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await;
                let ready = match r {
                    Ok(resp) => Some(resp.status().as_u16() == 200),
                    Err(e) if e.is_timeout() => None,
                    Err(_) => Some(false),
                };
                (life, ReadySample { at: now(), ready })
            });
            let samples = futures_util::future::join_all(polls).await;
            {
                let mut lives = lock(&sys.recorder.gateways);
                for (life, s) in samples {
                    lives[life].samples.push(s);
                }
            }
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(MONITOR_PERIOD) => {}
            }
        }
    })
}
