//! Chaos soak (issue 21): a real system on loopback under steady load while faults drawn from
//! a seed hit it at random, then an invariant checker over the whole recorded history.
//!
//! - [`rng`], [`schedule`]: the seeded fault schedule (same `CHAOS_SEED` → same faults).
//! - [`system`]: Postgres, Redis (behind the black-holing proxy, or a Cluster), two
//!   publishers, three gateways behind the harness's balancer.
//! - [`load`]: feeders stamping a per-instance `seq` into `data` and recording each answer,
//!   clients (half resumable), the client that stops reading, the crash and readiness monitors.
//! - [`faults`]: the injectors.
//! - [`history`]: what was recorded; [`check`]: the invariants over it; [`report`]: JSON and
//!   the Markdown of docs/reliability.md.
//!
//! [`run`] is used by `ryze-chaos` (`make chaos`) and by the 60-second test in `make test`.

pub mod check;
pub mod faults;
pub mod history;
pub mod load;
pub mod report;
pub mod rng;
pub mod schedule;
pub mod system;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::metrics::Exposition;
use history::{lock, now, Micros, Recorder};
use report::{EventCount, Report};
use schedule::RedisVariant;
use system::System;

/// Upper bound for the clients to connect at start, and to catch up at the end.
const SETTLE: Duration = Duration::from_secs(60);
/// Load kept up after the last fault healed, before the feeders stop.
const COOL_DOWN: Duration = Duration::from_secs(5);
/// A gateway's RSS at the end may exceed the baseline by this factor, or by this many MiB,
/// whichever is larger.
const RSS_FACTOR: f64 = 1.5;
const RSS_SLACK_MIB: f64 = 32.0;

/// What a run does.
#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    /// Length of the fault phase.
    pub seconds: f64,
    pub variant: RedisVariant,
    pub instances: usize,
    pub clients_per_instance: usize,
    /// Each instance's feeder sends one event this often.
    pub period: Duration,
    /// Mean time between two fault starts.
    pub mean_gap: f64,
    /// The command line printed in the report.
    pub command: String,
}

impl Config {
    /// From `CHAOS_*` environment variables (see README "Chaos soak"), with `seconds` and
    /// the load's size as defaults.
    pub fn from_env(default_seconds: f64) -> anyhow::Result<Config> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let num = |k: &str, d: f64| -> anyhow::Result<f64> {
            var(k).map_or(Ok(d), |v| v.parse().with_context(|| format!("{k}={v}")))
        };
        let seed = match var("CHAOS_SEED") {
            Some(v) => v.parse().with_context(|| format!("CHAOS_SEED={v}"))?,
            None => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_micros() as u64 % 1_000_000_007),
        };
        let variant = match var("CHAOS_REDIS").as_deref() {
            None | Some("single") => RedisVariant::Single,
            Some("cluster") => RedisVariant::Cluster,
            Some("sentinel") => RedisVariant::Sentinel,
            Some(other) => {
                anyhow::bail!("CHAOS_REDIS={other}: expected single, cluster or sentinel")
            }
        };
        Ok(Config {
            seed,
            seconds: num("CHAOS_SECONDS", default_seconds)?,
            variant,
            instances: num("CHAOS_INSTANCES", 30.0)? as usize,
            clients_per_instance: num("CHAOS_CLIENTS_PER_INSTANCE", 10.0)? as usize,
            period: Duration::from_millis(num("CHAOS_PERIOD_MS", 250.0)? as u64),
            mean_gap: num("CHAOS_MEAN_GAP", 5.0)?,
            command: var("CHAOS_COMMAND").unwrap_or_else(|| "make chaos".into()),
        })
    }
}

/// Runs the soak and checks it. Errors only when the system cannot be set up; broken
/// invariants are in the report (`violations`).
pub async fn run(config: &Config) -> anyhow::Result<Report> {
    let t0 = history::start();
    eprintln!(
        "ryze-chaos: CHAOS_SEED={} CHAOS_SECONDS={} CHAOS_REDIS={:?} ({} instances × {} clients)",
        config.seed, config.seconds, config.variant, config.instances, config.clients_per_instance
    );
    let plan = schedule::plan(config.seed, config.seconds, config.mean_gap, config.variant);
    eprintln!("ryze-chaos: {} faults planned", plan.len());
    let recorder = Arc::new(Recorder::default());
    let sys = Arc::new(System::start(config.variant, config.instances, recorder.clone()).await?);

    let stop_feed = CancellationToken::new();
    let stop_clients = CancellationToken::new();
    let stop_monitors = CancellationToken::new();
    let crash = load::crash_monitor(sys.clone(), stop_monitors.clone());
    let ready = load::readiness_poller(sys.clone(), stop_monitors.clone());
    let mut clients = Vec::new();
    let mut rng = rng::Rng::new(config.seed);
    for inst in 0..config.instances {
        for k in 0..config.clients_per_instance {
            let id = clients.len();
            let progress = Arc::new(load::Progress::default());
            let handle = load::client(
                sys.clone(),
                id,
                inst,
                k % 2 == 0,
                config.seed,
                stop_clients.clone(),
                progress.clone(),
            );
            clients.push((inst, progress, handle));
        }
        let _ = rng.next_u64();
    }
    wait_until("every client connected", SETTLE, || {
        let left = clients
            .iter()
            .filter(|(_, p, _)| !p.connected.load(Ordering::SeqCst))
            .count();
        (left == 0)
            .then_some(())
            .ok_or(format!("{left} not connected"))
    })
    .await?;
    let feeders: Vec<load::Feeder> = (0..config.instances)
        .map(|i| load::feeder(sys.clone(), i, config.period, stop_feed.clone()))
        .collect();
    wait_until("every client received a frame", SETTLE, || {
        let left = clients
            .iter()
            .filter(|(_, p, _)| p.last_seq.load(Ordering::SeqCst) == 0)
            .count();
        (left == 0)
            .then_some(())
            .ok_or(format!("{left} without a frame"))
    })
    .await?;
    let rss_baseline = sys
        .live_gateways()
        .iter()
        .map(|g| g.rss_bytes() as f64 / 1048576.0)
        .fold(0.0, f64::max);

    // The fault phase.
    let feeders = Arc::new(feeders);
    let locks = Arc::new(faults::Locks::default());
    let chaos_start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for fault in plan.clone() {
        let (sys, feeders, locks) = (sys.clone(), feeders.clone(), locks.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(chaos_start + Duration::from_secs_f64(fault.at)).await;
            let rec = faults::inject(&sys, &feeders, &locks, &fault).await;
            eprintln!(
                "ryze-chaos: {:>7.3}s fault #{} {} on {} for {:.1}s {}",
                rec.started as f64 / 1e6,
                rec.id,
                rec.kind.name(),
                rec.target,
                (rec.healed - rec.started) as f64 / 1e6,
                rec.note
            );
            rec
        }));
    }
    tokio::time::sleep_until(chaos_start + Duration::from_secs_f64(config.seconds)).await; // the phase's length
    let mut fault_log = Vec::new();
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(180), t).await {
            Ok(Ok(rec)) => fault_log.push(rec),
            _ => recorder.anomaly("fault_stuck", "a fault did not heal within 180 s".into()),
        }
    }
    fault_log.sort_by_key(|f| f.started);
    eprintln!("ryze-chaos: faults over; settling");
    for g in sys.live_gateways() {
        if let Err(e) = g.wait_ready(SETTLE).await {
            recorder.anomaly("not_ready_after_faults", format!("{e:#}"));
        }
    }
    tokio::time::sleep(COOL_DOWN).await; // load with everything healed before the feeders stop
    stop_feed.cancel();
    let feeders = Arc::try_unwrap(feeders)
        .map_err(|_| anyhow::anyhow!("fault tasks still hold the feeders"))?;
    let mut events = Vec::new();
    let mut finals = Vec::new();
    for f in feeders {
        finals.push(f.last_accepted.load(Ordering::SeqCst));
        events.push(f.handle.await.context("a feeder panicked")?);
    }
    // Everyone catches up with the last accepted event of its instance.
    let caught_up = wait_until("every client caught up", SETTLE, || {
        let left = clients
            .iter()
            .filter(|(inst, p, _)| p.last_seq.load(Ordering::SeqCst) < finals[*inst])
            .count();
        (left == 0).then_some(()).ok_or(format!("{left} behind"))
    })
    .await;
    if let Err(e) = caught_up {
        recorder.anomaly("not_caught_up", format!("{e:#}"));
    }
    gauges(&sys, clients.len(), true).await;
    let rss_end: Vec<f64> = sys
        .live_gateways()
        .iter()
        .map(|g| g.rss_bytes() as f64 / 1048576.0)
        .collect();
    for (i, rss) in rss_end.iter().enumerate() {
        if *rss > (rss_baseline * RSS_FACTOR).max(rss_baseline + RSS_SLACK_MIB) {
            recorder.anomaly(
                "rss_above_baseline",
                format!("gateway {i}: {rss:.1} MiB at the end, baseline {rss_baseline:.1} MiB"),
            );
        }
    }
    stop_clients.cancel();
    let end: Micros = now();
    let mut logs = Vec::new();
    for (_, _, h) in clients {
        logs.push(h.await.context("a client panicked")?);
    }
    gauges(&sys, 0, false).await;
    stop_monitors.cancel();
    let _ = crash.await;
    let _ = ready.await;

    let anomalies = lock(&recorder.anomalies).clone();
    let gateways = lock(&recorder.gateways).clone();
    let input = check::Input {
        seed: config.seed,
        events: &events,
        clients: &logs,
        faults: &fault_log,
        anomalies: &anomalies,
        gateways: &gateways,
        end,
        history_size: system::HISTORY_SIZE,
        stall_timeout: system::STALL_TIMEOUT.as_micros() as Micros,
    };
    if let Ok(path) = std::env::var("CHAOS_DUMP") {
        // Raw history for debugging a violation: events per instance, connections per client.
        let clients: Vec<serde_json::Value> = logs
            .iter()
            .map(|c| {
                serde_json::json!({
                    "id": c.id, "instance": c.instance, "resumable": c.resumable,
                    "conns": c.conns.iter().map(|k| serde_json::json!({
                        "opened": k.opened, "closed": k.closed, "end": k.end,
                        "since": k.since, "gaps": k.gaps,
                        "frames": k.frames.iter().map(|f| (f.at, f.seq)).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let dump = serde_json::json!({"events": events, "clients": clients, "faults": fault_log,
            "anomalies": anomalies});
        std::fs::write(&path, dump.to_string()).with_context(|| format!("writing {path}"))?;
    }
    let verdict = check::check(&input);
    let (violations, violation_counts, violation_list) = Report::violations_from(&verdict);
    Ok(Report {
        command: config.command.clone(),
        seed: config.seed,
        variant: config.variant,
        seconds: config.seconds,
        instances: config.instances,
        clients: logs.len(),
        resumable_clients: logs.iter().filter(|c| c.resumable).count(),
        period_ms: config.period.as_millis() as u64,
        faults_planned: plan.len(),
        faults: report::fault_counts(&fault_log),
        events: EventCount::of(&events),
        deliveries: verdict.deliveries,
        gaps: verdict.gaps,
        violations,
        violation_counts,
        violation_list,
        recovery: verdict.recovery,
        rss_baseline_mib: (rss_baseline * 10.0).round() / 10.0,
        rss_end_mib: rss_end.iter().map(|m| (m * 10.0).round() / 10.0).collect(),
        fault_log,
        wall_seconds: t0.elapsed().as_secs_f64().round(),
    })
}

/// Polls `check` every 100 ms until it returns `Ok`; errors with its last `Err` at `timeout`.
async fn wait_until(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<(), String>,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match check() {
            Ok(()) => return Ok(()),
            Err(last) if tokio::time::Instant::now() >= deadline => {
                anyhow::bail!("{what}: not within {timeout:?}; last: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await, // polled progress counters
        }
    }
}

/// The gauges settle (within 30 s): the fleet's `ryze_gateway_connections` equals the clients
/// connected, and on each gateway the subscriptions wanted equal the instances it holds
/// clients of (after `UNSUBSCRIBE_DELAY`), all confirmed. Records an anomaly otherwise.
async fn gauges(sys: &System, clients: usize, with_clients: bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut last;
    loop {
        let mut connections = 0.0;
        let mut ok = true;
        let mut detail = Vec::new();
        for g in sys.live_gateways() {
            let scrape = match Exposition::scrape(&g.admin_url("/metrics")).await {
                Ok(e) => e,
                Err(e) => {
                    ok = false;
                    detail.push(format!("pid {}: {e}", g.pid()));
                    continue;
                }
            };
            let m = |name: &str| scrape.sum(name, "");
            connections += m("ryze_gateway_connections");
            let wanted = m("ryze_gateway_redis_subscriptions");
            let confirmed = m("ryze_gateway_redis_subscriptions_confirmed");
            let held = scrape
                .samples()
                .iter()
                .filter(|(k, v)| k.starts_with("ryze_gateway_instance_connections{") && **v > 0.0)
                .count() as f64;
            if wanted != held || confirmed != wanted {
                ok = false;
            }
            detail.push(format!(
                "pid {}: subscriptions {wanted} (confirmed {confirmed}) for {held} instances held",
                g.pid()
            ));
        }
        if connections != clients as f64 {
            ok = false;
        }
        last = format!(
            "connections {connections} for {clients} clients; {}",
            detail.join("; ")
        );
        if ok {
            eprintln!("ryze-chaos: gauges settled ({last})");
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await; // polled gauges
    }
    let phase = if with_clients {
        "with every client connected"
    } else {
        "after every client left"
    };
    sys.recorder
        .anomaly("gauges_not_settled", format!("{phase}: {last}"));
}
