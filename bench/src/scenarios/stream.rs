//! Streams: clients connect over both gateways, the publisher is driven at a fixed rate, and
//! every frame is counted and timed by the clients. Fan-out, hot instance, many instances and
//! media differ only in who subscribes to what and how large the events are.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

mod runs;
pub use runs::{fanout, fanout_sweep, hot, many, media};

use super::{bytes, count, reasons, settle, Cpu, Outcome, Params};
use crate::fleet::{Fleet, FleetSpec, Merged};
use crate::procfs;
use crate::profile::{self, Profile};
use crate::publish::{event, media_event, Published, Publisher};
use crate::system::{metric, metrics, send_latency_buckets, wait_connections, System, API_KEY};

/// Most requests in flight from the publishing loop.
const IN_FLIGHT: usize = 64;
/// The targets.
const TARGET_P99_US: u64 = 5_000;
const TARGET_PER_CPU_SECOND: f64 = 400_000.0;
/// How often the warm-up's frames are counted: finely, so that the stream follows the
/// warm-up without a pause (see `stream`).
const WARM_POLL: Duration = Duration::from_millis(5);
/// How often delivered frames are counted once publishing has ended: each count asks every
/// worker for a report, work on the clients' core while frames may still be arriving.
const DONE_POLL: Duration = Duration::from_millis(200);
/// TCP's minimum retransmission timeout on Linux: a longer pause before the stream puts the
/// clients' receive side into quick-ACK mode for its first 16 frames.
const RTO_MIN_MICROS: u64 = 200_000;

/// What to stream.
pub(super) struct Spec {
    /// Instance name template (`{i}` = instance index).
    pub(super) name: String,
    pub(super) instances: usize,
    pub(super) clients: usize,
    pub(super) per_worker: usize,
    pub(super) read_buffer: usize,
    /// Requests per second.
    pub(super) rate: f64,
    pub(super) requests: u64,
    /// Builds request `n` with its send stamp.
    pub(super) body: Arc<dyn Fn(u64, u64) -> String + Send + Sync>,
    /// Profile the gateways while publishing (when `--perf` is given).
    pub(super) profile: bool,
    /// Pin the servers (gateways, publisher, Redis) to CPU 0 and the clients (load workers,
    /// the publishing loop) to CPU 1 while publishing, as the kernel floor is measured.
    pub(super) pin: bool,
}

impl Spec {
    /// `clients` subscribers of `instances` instances named `name`, half on each gateway
    /// (one worker per half), 8 KiB client read buffers, `requests` requests at `rate` per
    /// second built by `body`; profiled when `--perf` asks, servers not pinned. Scenarios
    /// change the rest with struct update syntax.
    pub(super) fn new(
        name: &str,
        instances: usize,
        clients: usize,
        rate: f64,
        requests: u64,
        body: impl Fn(u64, u64) -> String + Send + Sync + 'static,
    ) -> Spec {
        Spec {
            name: name.to_owned(),
            instances,
            clients,
            per_worker: clients.div_ceil(2).max(1),
            read_buffer: 8 * 1024,
            rate,
            requests,
            body: Arc::new(body),
            profile: true,
            pin: false,
        }
    }

    /// The fan-out scenario's stream at `rate` for `secs`: its subscribers of instance
    /// `fanout`, one event per request, frames of about `p.fanout_frame_bytes`.
    pub(super) fn fanout(sys: &System, p: &Params, rate: f64, secs: f64) -> anyhow::Result<Spec> {
        let id = sys.id("fanout")?;
        // The envelope adds about 150 bytes (event, instanceData with base URL, name, token).
        let pad = "x".repeat(p.fanout_frame_bytes.saturating_sub(175));
        let requests = (rate * secs) as u64;
        Ok(Spec::new(
            "fanout",
            1,
            p.fanout_clients,
            rate,
            requests,
            move |n, t| event(&id, t, n, &pad),
        ))
    }
}

/// Everything measured while streaming.
pub(super) struct Streamed {
    pub(super) connect: Merged,
    /// Gateway RSS before the clients connected, and once they had.
    pub(super) rss_before: Vec<f64>,
    pub(super) rss_connected: Vec<f64>,
    /// Highest RSS sampled while publishing (every 100 ms), and at the end.
    pub(super) rss_peak: Vec<f64>,
    pub(super) rss_end: Vec<f64>,
    /// Once every client had left.
    pub(super) rss_after: Vec<f64>,
    /// Clients per gateway, from its `ryze_gateway_connections`.
    pub(super) conns: Vec<f64>,
    /// Warm-up excluded.
    pub(super) delivered: Merged,
    /// From the warm-up's last request to the stream's first (see [`WARM_POLL`]).
    pub(super) start_gap_micros: u64,
    pub(super) published: Published,
    pub(super) expected: u64,
    pub(super) cpu: Cpu,
    /// Gateway `/metrics` before and after publishing.
    pub(super) metrics_before: Vec<String>,
    pub(super) metrics_after: Vec<String>,
    pub(super) profiles: Vec<Profile>,
}

impl Streamed {
    pub(super) fn delta(&self, name: &str, label: &str) -> Vec<f64> {
        self.metrics_after
            .iter()
            .zip(&self.metrics_before)
            .map(|(a, b)| metric(a, name, label) - metric(b, name, label))
            .collect()
    }

    /// Publish of the first event → last frame received.
    pub(super) fn window_secs(&self) -> f64 {
        self.delivered
            .last_frame
            .saturating_sub(self.published.first_send) as f64
            / 1e6
    }
}

/// Connects and drops 200 clients on each gateway, so one-time allocations (runtime, pools,
/// hub) are not charged to the scenario's connections.
pub async fn warm_up(sys: &System) -> anyhow::Result<()> {
    let urls = vec![sys.ws_url(0, "idle"), sys.ws_url(1, "idle")];
    let mut warm = Fleet::spawn(&FleetSpec::new(urls, 400)).await?;
    warm.wait("connected", Duration::from_secs(60)).await?;
    warm.stop().await?;
    for gw in &sys.gateways {
        wait_connections(gw, 0.0, Duration::from_secs(30)).await?;
    }
    settle(Duration::from_millis(500)).await;
    Ok(())
}

pub(super) async fn stream(
    sys: &System,
    p: &Params,
    key: &str,
    s: &Spec,
) -> anyhow::Result<Streamed> {
    let urls = vec![sys.ws_url(0, &s.name), sys.ws_url(1, &s.name)];
    let rss = |sys: &System| -> Vec<f64> {
        sys.gateways
            .iter()
            .map(|g| procfs::rss_bytes(g.pid()) as f64)
            .collect()
    };
    warm_up(sys).await?;
    let rss_before = rss(sys);
    let mut spec = FleetSpec::new(urls, s.clients);
    spec.instances = s.instances;
    spec.per_worker = s.per_worker;
    spec.read_buffer = s.read_buffer;
    let mut fleet = Fleet::spawn(&spec).await?;
    let connect = fleet.wait("connected", Duration::from_secs(180)).await?;
    let mut conns = Vec::new();
    for gw in &sys.gateways {
        conns.push(metric(&metrics(gw).await?, "ryze_gateway_connections", ""));
    }
    settle(Duration::from_secs(1)).await;
    let rss_connected = rss(sys);
    let publisher = Publisher::new(sys.ingest_url(), API_KEY)?;

    // Pinned before the warm-up, so that the warm-up runs as the stream will, each process
    // on its core, and nothing but counting its frames stands between the two (see below).
    let pids: Vec<u32> = fleet.pids();
    if s.pin {
        pin(sys, &pids, true).await;
    }
    // Warm-up: a few requests so connection pools, caches and allocators are in steady state.
    let warm = (s.rate.min(20.0) as u64).max(2);
    let warm_body = s.body.clone();
    let warmed = publisher
        .paced(s.rate.min(20.0), warm, IN_FLIGHT, move |n, t| {
            warm_body(n, t)
        })
        .await;
    let warm_expected = expected(&connect, s, warmed.published);
    // Polled finely: the measured stream must follow the warm-up within TCP's minimum
    // retransmission timeout (200 ms). After a longer silence every client's receive side
    // acknowledges its next 16 segments at once (quick-ACK mode), which on loopback runs on
    // the server core: measured, 1.6x the CPU per delivery of a 50 ms gap, and the first 16
    // events of the sparse scenarios reaching their last client after 40-80 ms instead of
    // 25 ms. A stream at a steady rate never pauses like that; the bench's own pause
    // between warm-up and stream must not either.
    wait_for_frames(
        &mut fleet,
        warm_expected,
        Duration::from_secs(20),
        WARM_POLL,
    )
    .await?;
    fleet.reset().await?;

    let mut metrics_before = Vec::new();
    for gw in &sys.gateways {
        metrics_before.push(metrics(gw).await?);
    }
    let cpu0 = Cpu::now(sys, &pids);
    // Sample gateway RSS while publishing.
    let stop = Arc::new(AtomicBool::new(false));
    let peaks: Arc<Vec<AtomicU64>> =
        Arc::new(sys.gateways.iter().map(|_| AtomicU64::new(0)).collect());
    let sampler = {
        let (stop, peaks) = (stop.clone(), peaks.clone());
        let gw_pids: Vec<u32> = sys.gateways.iter().map(|g| g.pid()).collect();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for (i, pid) in gw_pids.iter().enumerate() {
                    peaks[i].fetch_max(procfs::rss_bytes(*pid), Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let recording = match (&p.perf_dir, s.profile) {
        (Some(dir), true) => {
            let targets: Vec<(String, u32)> = sys
                .gateways
                .iter()
                .enumerate()
                .map(|(i, g)| (["A", "B"][i.min(1)].to_owned(), g.pid()))
                .collect();
            let secs = s.requests as f64 / s.rate.max(0.001);
            Some(profile::start(Path::new(dir), key, &targets, secs).await?)
        }
        _ => None,
    };
    let body = s.body.clone();
    let published = publisher
        .paced(s.rate, s.requests, IN_FLIGHT, move |n, t| {
            body(n + 1_000_000, t)
        })
        .await;
    let expected = expected(&connect, s, published.published);
    let delivered =
        wait_for_frames(&mut fleet, expected, Duration::from_secs(30), DONE_POLL).await?;
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    let cpu1 = Cpu::now(sys, &pids);
    if s.pin {
        pin(sys, &pids, false).await;
    }
    let mut metrics_after = Vec::new();
    for gw in &sys.gateways {
        metrics_after.push(metrics(gw).await?);
    }
    let rss_peak = peaks
        .iter()
        .map(|p| p.load(Ordering::Relaxed) as f64)
        .collect();
    let rss_end = rss(sys);
    let profiles = match recording {
        Some(r) => r.finish().await,
        None => Vec::new(),
    };
    fleet.stop().await?;
    for gw in &sys.gateways {
        wait_connections(gw, 0.0, Duration::from_secs(60)).await?;
    }
    settle(Duration::from_secs(1)).await;
    let rss_after = rss(sys);
    Ok(Streamed {
        connect,
        rss_before,
        rss_connected,
        rss_peak,
        rss_end,
        rss_after,
        conns,
        delivered,
        start_gap_micros: published.first_send.saturating_sub(warmed.last_send),
        published,
        expected,
        cpu: cpu0.until(&cpu1),
        metrics_before,
        metrics_after,
        profiles,
    })
}

/// Pins servers to CPU 0 and clients to CPU 1 (`pinned`), or lets everything run anywhere
/// again. Best effort: `taskset` missing or refused leaves the scheduler's choice.
async fn pin(sys: &System, workers: &[u32], pinned: bool) {
    let all = procfs::online_cpus();
    let (servers, clients) = if pinned {
        ("0".to_owned(), "1".to_owned())
    } else {
        (all.clone(), all)
    };
    let mut jobs: Vec<(u32, &str)> = sys
        .gateways
        .iter()
        .map(|g| (g.pid(), servers.as_str()))
        .collect();
    jobs.push((sys.publisher.pid(), &servers));
    jobs.extend(sys.redis.pid().map(|p| (p, servers.as_str())));
    jobs.extend(workers.iter().map(|p| (*p, clients.as_str())));
    jobs.push((std::process::id(), &clients));
    for (pid, cpus) in jobs {
        let _ = tokio::process::Command::new("taskset")
            .args(["-a", "-p", "-c", cpus, &pid.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await;
    }
}

/// Frames the clients should receive for `published` events.
fn expected(connect: &Merged, s: &Spec, published: u64) -> u64 {
    if s.instances == 1 {
        published * connect.connect_ok
    } else if s.clients == s.instances {
        // One client per instance.
        published
    } else {
        // Every instance has clients / instances clients.
        published * (connect.connect_ok / s.instances as u64)
    }
}

/// Polls the workers until `expected` frames arrived, or nothing arrives for 3 s, or
/// `timeout`.
async fn wait_for_frames(
    fleet: &mut Fleet,
    expected: u64,
    timeout: Duration,
    every: Duration,
) -> anyhow::Result<Merged> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = (0, tokio::time::Instant::now());
    loop {
        let m = fleet.report().await?;
        let now = tokio::time::Instant::now();
        if m.frames >= expected || now >= deadline {
            return Ok(m);
        }
        if m.frames != last.0 {
            last = (m.frames, now);
        } else if now - last.1 > Duration::from_secs(3) {
            return Ok(m);
        }
        tokio::time::sleep(every).await;
    }
}

/// The rows every stream reports.
pub(super) fn common(o: &mut Outcome, st: &Streamed) {
    let d = &st.delivered;
    let window = st.window_secs();
    let lost = st.expected as i64 - d.frames as i64;
    o.row(
        "clients connected",
        format!(
            "{} ({} per gateway)",
            count(st.connect.connect_ok as f64),
            st.conns
                .iter()
                .map(|c| count(*c))
                .collect::<Vec<_>>()
                .join(" / ")
        ),
        "connected",
        st.connect.connect_ok,
    );
    o.row(
        "connect rate",
        format!(
            "{}/s ({:.2} s)",
            count(st.connect.connect_rate()),
            st.connect.connect_span()
        ),
        "connect_rate",
        st.connect.connect_rate(),
    );
    if st.connect.connect_failed > 0 {
        o.note(format!(
            "{} connects failed: {}",
            st.connect.connect_failed,
            reasons(&st.connect.failures)
        ));
    }
    let p = &st.published;
    o.row(
        "events published",
        format!(
            "{} in {} requests ({} failed, {} skipped), {:.1} requests/s achieved",
            count(p.published as f64),
            count(p.requests as f64),
            p.failed,
            p.skipped,
            p.requests as f64 / (p.last_send.saturating_sub(p.first_send) as f64 / 1e6).max(1e-9)
        ),
        "published",
        serde_json::json!({"events": p.published, "requests": p.requests, "failed": p.failed,
            "skipped": p.skipped, "first_send": p.first_send, "last_send": p.last_send}),
    );
    if let Some(e) = &p.first_error {
        o.note(format!("first publish error: {e}"));
    }
    o.row(
        "pause between the warm-up's last request and the stream's first",
        format!(
            "{:.0} ms (a steady stream pauses less than TCP's minimum RTO, 200 ms)",
            st.start_gap_micros as f64 / 1e3
        ),
        "start_gap_ms",
        st.start_gap_micros as f64 / 1e3,
    );
    if st.start_gap_micros > RTO_MIN_MICROS {
        o.note(format!(
            "the stream started {:.0} ms after the warm-up's last request (its frames took \
             that long to arrive), over TCP's minimum RTO: each client's first 16 frames were \
             acknowledged at once (quick-ACK mode), which on loopback costs the server core \
             more per delivery; it matters where frames go out one per write, as in the \
             sparse scenarios (docs/benchmarks.md, third pass)",
            st.start_gap_micros as f64 / 1e3
        ));
    }
    o.latency("ingest request round trip", "ingest_latency", &p.latency);
    o.row(
        "frames delivered / expected",
        format!("{} / {}", count(d.frames as f64), count(st.expected as f64)),
        "deliveries",
        serde_json::json!({"delivered": d.frames, "expected": st.expected, "lost": lost,
            "per_conn_min": d.frames_min, "per_conn_max": d.frames_max}),
    );
    o.row(
        "**lost**",
        format!(
            "**{}** (per connection: min {} · max {} frames)",
            count(lost as f64),
            count(d.frames_min as f64),
            count(d.frames_max as f64)
        ),
        "lost",
        lost,
    );
    o.row(
        "**deliveries/s**",
        format!(
            "**{}** (first publish → last frame: {:.2} s)",
            count(d.frames as f64 / window.max(1e-9)),
            window
        ),
        "deliveries_per_second",
        d.frames as f64 / window.max(1e-9),
    );
    o.row(
        "frame size",
        format!("{:.0} bytes", d.bytes as f64 / (d.frames.max(1)) as f64),
        "frame_bytes",
        d.bytes as f64 / (d.frames.max(1)) as f64,
    );
    o.latency("**publish → receive latency**", "latency", &d.latency);
    let (shares, n) = send_latency_buckets(&st.metrics_before, &st.metrics_after);
    let within = |ms: f64| {
        shares
            .iter()
            .find(|(le, _)| (*le - ms).abs() < 1e-9)
            .map_or(0.0, |(_, f)| *f)
    };
    let bound = |q: f64| {
        shares
            .iter()
            .find(|(_, f)| *f >= q)
            .map_or("?".to_owned(), |(le, _)| format!("≤ {le} ms"))
    };
    o.row(
        "gateway side only: publisher stamp → write done (`ryze_publish_to_send_seconds`)",
        format!(
            "p50 {} · p99 {} · within 1 ms {:.1} % · within 5 ms {:.1} % (n = {})",
            bound(0.5),
            bound(0.99),
            within(1.0) * 100.0,
            within(5.0) * 100.0,
            count(n)
        ),
        "gateway_send_latency_shares",
        &shares,
    );
    if d.unstamped > 0 {
        o.note(format!("{} frames carried no stamp", d.unstamped));
    }
    let gw_cpu = st.cpu.gateway_total();
    o.row(
        "gateway CPU while publishing",
        format!(
            "{:.2} s ({:.2} s per million deliveries · {} deliveries per gateway CPU-second)",
            gw_cpu,
            gw_cpu / (d.frames as f64 / 1e6).max(1e-9),
            count(d.frames as f64 / gw_cpu.max(1e-9))
        ),
        "gateway_cpu",
        serde_json::json!({"seconds": gw_cpu,
            "per_million": gw_cpu / (d.frames as f64 / 1e6).max(1e-9),
            "deliveries_per_cpu_second": d.frames as f64 / gw_cpu.max(1e-9)}),
    );
    o.row(
        "CPU seconds by process",
        st.cpu.describe(),
        "cpu",
        st.cpu.json(),
    );
    let slow = st.delta("ryze_gateway_connections_closed_total", "slow_consumer");
    let closed = st.delta("ryze_gateway_connections_closed_total", "");
    let dropped = st.delta("ryze_gateway_frames_dropped_total", "");
    o.row(
        "gateway closes / slow-consumer closes / frames dropped",
        format!(
            "{} / {} / {}",
            count(closed.iter().sum()),
            count(slow.iter().sum()),
            count(dropped.iter().sum())
        ),
        "gateway_drops",
        serde_json::json!({"closed": closed, "slow_consumer": slow, "frames_dropped": dropped}),
    );
    if d.disconnects > 0 {
        o.note(format!(
            "{} client connections ended during the run: {}",
            d.disconnects,
            reasons(&d.ends)
        ));
    }
    let per_gw: Vec<String> = st
        .rss_before
        .iter()
        .zip(&st.rss_connected)
        .zip(&st.rss_peak)
        .zip(&st.rss_end)
        .zip(&st.rss_after)
        .map(|((((b, c), p), e), a)| {
            format!(
                "{} → {} → peak {} → {} → {}",
                bytes(*b),
                bytes(*c),
                bytes(*p),
                bytes(*e),
                bytes(*a)
            )
        })
        .collect();
    o.row(
        "gateway RSS: before → connected → peak while publishing → end → clients gone (A; B)",
        per_gw.join("; "),
        "rss",
        serde_json::json!({"before": st.rss_before, "connected": st.rss_connected,
            "peak": st.rss_peak, "end": st.rss_end, "after": st.rss_after}),
    );
    if let Some(writes) = writes(st) {
        o.row(
            "gateway socket writes while publishing (`perf stat`, write-like syscalls)",
            format!(
                "{} for {} frames: {:.2} frames per write",
                count(writes as f64),
                count(d.frames as f64),
                d.frames as f64 / (writes.max(1)) as f64
            ),
            "gateway_writes",
            writes,
        );
    }
    for pr in &st.profiles {
        let mut text = format!(
            "{} samples, {:.1} % in the kernel; hottest symbols:\n",
            pr.samples, pr.kernel_share
        );
        for (pct, dso, sym) in &pr.top {
            text.push_str(&format!("{pct:6.2} %  {dso:<18} {sym}\n"));
        }
        text.push_str("by area (symbols grouped by name):\n");
        for (area, pct) in &pr.areas {
            text.push_str(&format!("{pct:6.1} %  {area}\n"));
        }
        o.blocks.push((
            format!(
                "CPU profile of gateway {} while publishing (`perf record -F 499`, `{}`)",
                pr.label, pr.file
            ),
            text,
        ));
        o.raw(&format!("profile_{}", pr.label), pr);
    }
}

/// Write syscalls of both gateways over the publishing window, when profiled.
fn writes(st: &Streamed) -> Option<u64> {
    if st.profiles.is_empty() {
        return None;
    }
    st.profiles.iter().map(|p| p.writes).sum()
}

fn rss_per_conn(st: &Streamed) -> Vec<f64> {
    st.rss_before
        .iter()
        .zip(&st.rss_connected)
        .zip(&st.conns)
        .map(|((b, c), n)| (c - b) / n.max(1.0))
        .collect()
}

pub(super) fn stream_targets(o: &mut Outcome, st: &Streamed, latency: bool) {
    let d = &st.delivered;
    let lost = st.expected as i64 - d.frames as i64;
    o.target("loss", "0", count(lost as f64), lost == 0);
    if latency {
        let p99 = d.latency.quantile(0.99);
        o.target(
            "p99 publish → receive",
            "< 5 ms",
            super::us(p99),
            p99 < TARGET_P99_US && d.latency.count() > 0,
        );
    }
    let per = d.frames as f64 / st.cpu.gateway_total().max(1e-9);
    o.target(
        "deliveries per gateway CPU-second",
        "≥ 400,000",
        count(per),
        per >= TARGET_PER_CPU_SECOND,
    );
}
