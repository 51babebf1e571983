#![allow(clippy::unwrap_used)]
//! Rebalancing after scale-out (SPEC D39, issue 18), with real gateways on one Redis:
//!
//! - `scale_out_of_2000_clients_converges_and_loses_nothing`: the issue's test at its scale.
//!   One gateway holds 2,000 resumable clients of 50 instances, connected through the
//!   harness's round-robin [`Balancer`], 100 events/s published throughout; two gateways are
//!   added: within a bound every pod is within the threshold of the mean, only the first pod
//!   closed, never below its line and not once balanced, every close was 1001 `rebalancing`,
//!   and no client lost or repeated an event.
//! - `holds_still_without_cause`: nothing is closed with one pod, while a pod of the fleet is
//!   not ready (a record written by the test), or with `REBALANCE_THRESHOLD=0`; once the
//!   fake pod turns ready, the pod closes exactly its excess (its clients do not reconnect).
//! - `convergence_time` (ignored, a measurement): 1 → 3 pods with many clients and the
//!   default pacing; `scripts/rebalance-convergence.sh` runs it.
//!
//! - `off_without_redis`: the embedded single-process mode never evaluates.
//!
//! No sleeps: every wait polls `/metrics` under a timeout.

use ryze_tests::fixtures as common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::resumable::{
    all_published, check_exactly_once, publish_end, resumable_client, wait_all, Feed, Progress,
};
use common::{configure, metric, segment, Env, Instance};
use ryze_tests::{eventually_every, redis, Balancer, Service, WsClient};
use serde_json::json;

/// Pings every 30 s, a connection dropped after 120 s without a pong: 2,000 clients in the test
/// process on a loaded 2-core machine can answer late, and a `pong timeout` there is not
/// what these tests are about (the defaults allow a pong 6 s late).
const PING: (&str, &str) = ("WS_PING_INTERVAL", "30s");
const PONG: (&str, &str) = ("WS_PONG_TIMEOUT", "120s");
/// Upper bound for the fleet to converge, or for a metric to reach a value: generous, since
/// 2,000 clients reconnecting on a loaded 2-core machine take a while (not a timing assertion;
/// `scripts/rebalance-convergence.sh` measures).
const CONVERGE: Duration = Duration::from_secs(180);
/// Pause between two polls of `/metrics`.
const POLL: Duration = Duration::from_millis(100);
/// `REBALANCE_THRESHOLD` (its default).
const THRESHOLD: f64 = 1.25;
const CLOSED: &str = r#"ryze_gateway_connections_closed_total{reason="rebalancing"}"#;

/// Short timings so the tests take seconds (defaults are 60 s / 60 s / 5 s).
fn fast(extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("REBALANCE_WARMUP", "1s".to_owned()),
        ("REBALANCE_MIN_AGE", "0s".to_owned()),
        ("REBALANCE_INTERVAL", "500ms".to_owned()),
        ("REBALANCE_RATE", "200".to_owned()),
        // Every reconnect is an upgrade counted per token.
        ("RATE_LIMIT_PER_MINUTE", "100000".to_owned()),
    ];
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push((k, (*v).to_owned()));
    }
    env
}

/// Polls `check` on the gateways' metrics every [`POLL`] until it is `Ok`, or panics after
/// [`CONVERGE`] with `what` and the last observed values.
async fn until<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    eventually_every(what, CONVERGE, POLL, check).await
}

async fn decisions(gw: &Service, outcome: &str) -> f64 {
    metric(
        gw,
        &format!(r#"ryze_gateway_rebalance_decisions_total{{outcome="{outcome}"}}"#),
    )
    .await
}

/// Waits for three more evaluations with `outcome`, then checks nothing was closed.
async fn holds_for_three(gw: &Service, outcome: &str, who: &str) {
    let before = decisions(gw, outcome).await;
    until(&format!("{who}: three `{outcome}` evaluations"), || async {
        match decisions(gw, outcome).await {
            n if n >= before + 3.0 => Ok(()),
            n => Err(format!("{n} `{outcome}` evaluations, {before} before")),
        }
    })
    .await;
    assert_eq!(
        metric(gw, CLOSED).await,
        0.0,
        "{who}: closed while {outcome}"
    );
}

/// Writes a fake pod record (`"<connections> <ready>"`) into the fleet index, as a gateway does.
async fn fake_pod(env: &Env, pod: &str, record: &str) {
    let r = redis().await;
    let key = format!("{}:pod:{pod}", env.prefix);
    r.cli(&["SET", &key, record, "PX", "120000"]).await.unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string();
    let index = format!("{}:pods", env.prefix);
    r.cli(&["ZADD", &index, &now_ms, pod]).await.unwrap();
}

/// Opens `n` clients of `inst` straight to `gw`; they stay until dropped.
async fn clients_on(gw: &Service, inst: &Instance, n: usize) -> Vec<WsClient> {
    let url = gw.ws_url(&format!("/ws/{}", segment(&inst.name)));
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            WsClient::connect(&url, &[("token", &inst.token)])
                .await
                .unwrap(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_still_without_cause() {
    let env = Env::new().await;
    let inst = env.create_instance("rebal-still").await;

    // One pod: nothing to rebalance onto.
    let gw = env.gateway(&fast(&[])).await;
    configure(
        &gw,
        &inst.name,
        &env.account_token,
        json!({"enabled": true}),
    )
    .await;
    let _clients = clients_on(&gw, &inst, 30).await;
    holds_for_three(&gw, "single_pod", "one pod").await;

    // Another pod reports not ready: hold still, although the share is 2.
    let fake = uuid::Uuid::new_v4().to_string();
    fake_pod(&env, &fake, "0 0").await;
    holds_for_three(&gw, "not_ready", "a pod not ready").await;
    assert_eq!(metric(&gw, "ryze_gateway_fleet_share").await, 2.0);
    assert_eq!(
        metric(&gw, "ryze_gateway_fleet_mean_connections").await,
        15.0
    );

    // It turns ready: mean 15, line 18.75 → close exactly ceil(30 - 18.75) = 12 (these
    // clients do not reconnect, so nothing comes back).
    fake_pod(&env, &fake, "0 1").await;
    until("the excess closed", || async {
        match metric(&gw, CLOSED).await {
            n if n >= 12.0 => Ok(()),
            n => Err(format!("{n} closed")),
        }
    })
    .await;
    until("the pod back within the threshold", || async {
        let connections = metric(&gw, "ryze_gateway_connections").await;
        let balanced = decisions(&gw, "balanced").await;
        if connections == 18.0 && balanced >= 1.0 {
            Ok(())
        } else {
            Err(format!(
                "{connections} connections, {balanced} `balanced` evaluations"
            ))
        }
    })
    .await;
    assert_eq!(
        metric(&gw, CLOSED).await,
        12.0,
        "closed more than the excess"
    );

    // Threshold 0: off, although its share is well above 1.25.
    let off = env.gateway(&fast(&[("REBALANCE_THRESHOLD", "0")])).await;
    let _more = clients_on(&off, &inst, 30).await;
    holds_for_three(&off, "off", "threshold 0").await;
    assert!(metric(&off, "ryze_gateway_fleet_share").await > 1.25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_without_redis() {
    let db = ryze_tests::pg().await.fresh_database().await.unwrap();
    let env = Env::with(db.url, None, None).await;
    let mut settings = fast(&[]);
    settings.extend([
        ("EMBEDDED_PUBLISHER", "true".to_owned()),
        ("PUBLISHER_API_KEY", common::API_KEY.to_owned()),
        ("PUBLIC_BASE_URL", common::BASE_URL.to_owned()),
    ]);
    let gw = env.gateway(&settings).await;
    gw.wait_for_log("rebalancing off: no Redis", CONVERGE)
        .await
        .unwrap();
    let text = ryze_tests::http()
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in text
        .lines()
        .filter(|l| l.contains("rebalance_decisions_total"))
    {
        assert!(line.ends_with(" 0"), "evaluated without Redis: {line}");
    }
    assert!(
        !gw.logs().contains("rebalancing records started"),
        "rebalancing started without Redis"
    );
}

/// What [`scale_out_under_feed`] measured.
struct ScaleOut {
    /// From the added pods in the balancer (and the fleet ready) to every pod within the
    /// threshold of the mean.
    converged_in: Duration,
    /// `ryze_gateway_connections_closed_total{reason="rebalancing"}` of the first pod, once
    /// settled (one reconnect per close, three `balanced` evaluations without a close).
    closed: f64,
    /// 1001 `rebalancing` closes the clients saw.
    rebalanced: usize,
    /// The first pod's `ryze_gateway_connections`: the lowest sampled from the added pods
    /// joining to the end of the run, and the last.
    lowest: f64,
    last: f64,
}

/// Clients connected at once by [`scale_out_under_feed`].
const WAVE: usize = 250;

/// `hh:mm:ss.mmm` UTC, to line the test's moments up with the gateways' log lines.
fn utc_now() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        % 86_400_000;
    let s = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        ms % 1000
    )
}

/// The first pod's target: `floor(THRESHOLD × mean)` of `clients` over three pods. It stops
/// closing there, and a pod that never closes below its line never holds fewer (D39,
/// docs/decisions.md "Rebalancing").
fn line(clients: usize) -> f64 {
    (THRESHOLD * clients as f64 / 3.0).floor()
}

/// One gateway with `clients` resumable clients of `instances` instances behind the
/// [`Balancer`], a publisher feeding one `{"seq":n}` per instance every `period`; two gateways
/// are added and the test waits (publishing, sampling the first pod's count) until every pod
/// is within [`THRESHOLD`] of the mean, then until the first pod evaluated `balanced` three
/// more times, publishes a while longer, stops, and publishes the end marker. Asserts that
/// every client saw every seq after its first frame exactly once, in order, no `stream.gap`,
/// that every close was 1001 `rebalancing`, that the added pods closed nothing, and that the
/// first pod closed nothing once balanced.
async fn scale_out_under_feed(
    clients: usize,
    instances: usize,
    period: Duration,
    settings: &[(&'static str, String)],
) -> ScaleOut {
    let env = Env::new().await;
    let mut watcher = env.watcher().await;
    let publisher = env.publisher(&[]).await;
    let gw1 = env.gateway(settings).await;
    let mut insts = Vec::new();
    for i in 0..instances {
        let inst = env.create_instance(&format!("scale-{i}")).await;
        configure(
            &gw1,
            &inst.name,
            &env.account_token,
            json!({"enabled": true}),
        )
        .await;
        watcher.wait("config_changed", &inst.id).await;
        insts.push(inst);
    }
    let balancer = Balancer::start(vec![gw1.addr()]).await.unwrap();
    let mut progress = Vec::new();
    let mut handles = Vec::new();
    // In waves of [`WAVE`]: 2,000 first lookups at once would queue on the Postgres pool past
    // the connect timeout on a loaded machine (clients arrive over time in production too).
    for i in 0..clients {
        let inst = &insts[i % instances];
        let p = Arc::new(Progress::default());
        let url = balancer.ws_url(&format!("/ws/{}", segment(&inst.name)));
        handles.push((
            format!("client {i} of {}", inst.name),
            resumable_client(vec![url], 100, inst.token.clone(), p.clone()),
        ));
        progress.push(p);
        if progress.len() % WAVE == 0 || progress.len() == clients {
            let wave = &progress[(progress.len() - 1) / WAVE * WAVE..];
            wait_all("every client of a wave connected", wave, |p| {
                p.connected.load(Ordering::SeqCst)
            })
            .await;
        }
    }
    let feed = Feed::start(&publisher, &insts, period);
    // Each client has an offset to resume from before anything closes it (bounded by
    // [`CONVERGE`]: on a loaded machine 2,000 clients take longer than `WAIT` to be served).
    until("every client saw a frame", || async {
        let saw = progress
            .iter()
            .filter(|p| p.frames.load(Ordering::SeqCst) > 0)
            .count();
        if saw == progress.len() {
            Ok(())
        } else {
            Err(format!("{saw} of {} clients saw a frame", progress.len()))
        }
    })
    .await;
    assert_eq!(metric(&gw1, CLOSED).await, 0.0, "closed while alone");

    // A not-ready record holds rebalancing while the new pods start and join the balancer
    // (as a deploy's pods are not ready until they are), so the first decision sees them all.
    let gate = uuid::Uuid::new_v4().to_string();
    fake_pod(&env, &gate, "0 0").await;
    let (gw2, gw3) = tokio::join!(env.gateway(settings), env.gateway(settings));
    balancer.set_backends(vec![gw1.addr(), gw2.addr(), gw3.addr()]);
    let started = tokio::time::Instant::now();
    eprintln!("added pods in the balancer at {}", utc_now());
    redis()
        .await
        .cli(&["DEL", &format!("{}:pod:{gate}", env.prefix)])
        .await
        .unwrap();
    let pods = [&gw1, &gw2, &gw3];
    let lowest = Mutex::new(f64::INFINITY);
    // Settled: every pod within the threshold, every client connected, and every connection
    // the first pod ended followed by its client's reconnect, with the same counts on two
    // polls in a row (so a client in flight cannot hide behind one counted twice).
    let previous = Mutex::new(None);
    until(
        "every pod within the threshold of the mean, settled",
        || async {
            let mut counts = Vec::new();
            for gw in pods {
                counts.push(metric(gw, "ryze_gateway_connections").await);
            }
            let closed = metric(&gw1, CLOSED).await;
            let opened: u64 = progress
                .iter()
                .map(|p| p.connections.load(Ordering::SeqCst))
                .sum();
            {
                let mut low = lowest.lock().unwrap();
                *low = low.min(counts[0]);
            }
            let total: f64 = counts.iter().sum();
            let mean = total / counts.len() as f64;
            let now = (closed, opened);
            let same = previous.lock().unwrap().replace(now) == Some(now);
            if same
                && opened as f64 == clients as f64 + closed
                && total == clients as f64
                && counts.iter().all(|c| *c <= THRESHOLD * mean)
            {
                Ok(())
            } else {
                Err(format!(
                    "connections {counts:?} (mean {mean}), {closed} closed, {opened} opened, \
                     same as the previous poll: {same}"
                ))
            }
        },
    )
    .await;
    let converged_in = started.elapsed();
    eprintln!("converged at {}", utc_now());
    for outcome in ["not_ready", "closing", "balanced", "unknown"] {
        eprintln!("first pod: {outcome} {}", decisions(&gw1, outcome).await);
    }
    for l in gw1.logs().lines().filter(|l| l.contains("rebalancing:")) {
        eprintln!("first pod: {l}");
    }
    // Balanced with every client connected: the first pod's closes have stopped.
    let closed = metric(&gw1, CLOSED).await;
    let balanced = decisions(&gw1, "balanced").await;
    until("three more `balanced` evaluations", || async {
        let count = metric(&gw1, "ryze_gateway_connections").await;
        {
            let mut low = lowest.lock().unwrap();
            *low = low.min(count);
        }
        match decisions(&gw1, "balanced").await {
            n if n >= balanced + 3.0 => Ok(()),
            n => Err(format!("{n} `balanced` evaluations, {balanced} before")),
        }
    })
    .await;
    assert_eq!(metric(&gw1, CLOSED).await, closed, "closed once balanced");
    let last = metric(&gw1, "ryze_gateway_connections").await;
    // Keep publishing with the fleet balanced (every client connected), then end.
    feed.wait_published(10, CONVERGE).await;
    let rounds = feed.stop().await;
    publish_end(&publisher, &insts).await;
    let published = all_published(&rounds);

    let mut rebalanced = 0;
    for (name, handle) in handles {
        let log = tokio::time::timeout(CONVERGE, handle)
            .await
            .expect("client finishes")
            .unwrap();
        check_exactly_once(&name, &log, published);
        assert!(
            log.closes
                .iter()
                .all(|c| *c == (1001, "rebalancing".to_owned())),
            "{name}: {:?}",
            log.closes
        );
        assert!(log.sinces[1..].iter().all(|s| s != "now"), "{name}");
        rebalanced += log.closes.len();
    }
    assert_eq!(metric(&gw2, CLOSED).await, 0.0, "second pod closed");
    assert_eq!(metric(&gw3, CLOSED).await, 0.0, "third pod closed");
    assert!(balancer.forwarded_to(gw2.addr()) > 0);
    assert!(balancer.forwarded_to(gw3.addr()) > 0);
    let lowest = lowest.into_inner().unwrap();
    ScaleOut {
        converged_in,
        closed,
        rebalanced,
        lowest,
        last,
    }
}

/// Scale-out at the issue's scale (issue 18, "Tests"): one gateway holds 2,000 resumable
/// clients of 50 instances behind the balancer, 100 events/s published throughout; two
/// gateways are added and each client closed with 1001 `rebalancing` reconnects round-robin
/// through the balancer with `since`.
///
/// - Within [`CONVERGE`] (a bound, not a timing assertion) every pod is within the threshold
///   and the fleet settled: every client connected again, one reconnect per close the first
///   pod counted.
/// - No pod closed more than its excess: the added pods closed nothing, and the first pod
///   never held fewer than its line `floor(1.25 × 2000 / 3)` = 833, sampled every poll from
///   the added pods joining to three `balanced` evaluations after convergence (its closes
///   never took it below the line), with no close once balanced. Its close count is about
///   1.5 × its initial excess of 1,167 (a third of the reconnects land back on it), which
///   the test prints but does not bound: the line is what it must respect.
/// - Every client saw every seq after its first frame once, in order, no gap; every close it
///   saw was 1001 `rebalancing`.
///
/// What breaks it: rebalancing not acting or not converging, a pod trusting a mean that sank
/// while its closed clients were reconnecting (closing below its line), closes continuing
/// once balanced, an added pod closing, a close other than 1001 `rebalancing`, a resumed client
/// missing or repeating frames published while it reconnected, a `stream.gap` for a retained
/// offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_of_2000_clients_converges_and_loses_nothing() {
    const CLIENTS: usize = 2000;
    let settings = fast(&[("REBALANCE_RATE", "400"), PING, PONG]);
    let out = scale_out_under_feed(CLIENTS, 50, Duration::from_millis(500), &settings).await;
    eprintln!(
        "converged in {:?}; first pod closed {}, clients saw {} rebalancing closes; first \
         pod lowest {} last {} (line {})",
        out.converged_in,
        out.closed,
        out.rebalanced,
        out.lowest,
        out.last,
        line(CLIENTS)
    );
    assert!(out.rebalanced > 0, "no client was rebalanced");
    // Settling proved one reconnect per close the pod counted; as the clients leave after
    // the end marker the fleet changes again, and the pod may close a few more.
    assert!(
        out.rebalanced as f64 >= out.closed,
        "clients saw {} closes, the pod counted {}",
        out.rebalanced,
        out.closed
    );
    assert!(
        out.lowest >= line(CLIENTS),
        "the first pod closed below its line: held {} < {}",
        out.lowest,
        line(CLIENTS)
    );
    assert!(out.last <= line(CLIENTS), "not balanced: {}", out.last);
}

/// Convergence time (not a test assertion; `scripts/rebalance-convergence.sh` runs it): 1 → 3
/// pods with `REBALANCE_BENCH_CLIENTS` resumable clients (default 2000) of 50 instances, 100
/// events/s published throughout. Rebalancing runs with its default `REBALANCE_RATE` and
/// `REBALANCE_INTERVAL`; only the warm-up and minimum age are shortened (the clients are
/// seconds old). Prints the time from the added pods being in the balancer to every pod within
/// the threshold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: run by scripts/rebalance-convergence.sh"]
async fn convergence_time() {
    let clients: usize = std::env::var("REBALANCE_BENCH_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let settings = vec![
        ("REBALANCE_WARMUP", "1s".to_owned()),
        ("REBALANCE_MIN_AGE", "0s".to_owned()),
        ("RATE_LIMIT_PER_MINUTE", "100000".to_owned()),
        (PING.0, PING.1.to_owned()),
        (PONG.0, PONG.1.to_owned()),
    ];
    let out = scale_out_under_feed(clients, 50, Duration::from_millis(500), &settings).await;
    println!(
        "CONVERGENCE clients={clients} pods=1->3 converged_in={:.1}s closes={} lowest={} \
         line={} (REBALANCE_RATE and REBALANCE_INTERVAL at their defaults)",
        out.converged_in.as_secs_f64(),
        out.closed,
        out.lowest,
        line(clients)
    );
}
