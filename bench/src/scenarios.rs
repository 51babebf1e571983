//! The scenarios of `make bench` and what they share: sizes ([`Params`], full or quick), the
//! result shape ([`Outcome`]: settings, raw numbers, targets), CPU snapshots and formatting.
//!
//! - [`idle`]: RSS per idle connection at 10k and the largest count one gateway can hold.
//! - [`stream`]: fan-out (and its latency at lower rates), hot instance, many instances and
//!   media (connect, publish paced, count every frame, latency from the stamp).
//! - [`sparse`]: fan-out at the everyday rate, CPU per delivery against the kernel floor;
//!   the same subscribers saturated (400 events/s).
//! - [`storm`]: a gateway killed under 10k clients that fail over to the other one.
//! - [`history`]: fan-out with history off and on, and 1,000 clients resuming at once.
//! - [`regions`]: ingest latency of a multi-region publisher with every region up, one region
//!   down and one region hung (on three Redis servers, gateways and a publisher of its own).

pub mod floor;
pub mod history;
pub mod idle;
pub mod regions;
pub mod sparse;
pub mod storm;
pub mod stream;

use std::time::Duration;

use serde::Serialize;

use super::histogram::Histogram;
use super::procfs;
use super::system::System;

/// Sizes of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    /// `full` or `quick`.
    pub mode: &'static str,
    /// Idle: first step (connections on gateway A).
    pub idle_first: usize,
    /// Idle: the largest step asked for (capped by the gateway's open-files limit).
    pub idle_max: usize,
    /// Fan-out: subscribers over both gateways.
    pub fanout_clients: usize,
    /// Fan-out: events per second.
    pub fanout_rate: f64,
    /// Fan-out: seconds of publishing.
    pub fanout_secs: f64,
    /// Fan-out: approximate frame size in bytes.
    pub fanout_frame_bytes: usize,
    /// Fan-out sweep: lower event rates, same subscribers.
    pub sweep_rates: Vec<f64>,
    /// Fan-out sweep: seconds at each rate.
    pub sweep_secs: f64,
    /// Hot instance: clients of one instance over both gateways.
    pub hot_clients: usize,
    /// Hot instance: events per second.
    pub hot_rate: f64,
    /// Hot instance: seconds of publishing.
    pub hot_secs: f64,
    /// Many instances: instances, one client each, over both gateways.
    pub many: usize,
    /// Many instances: rounds of one event per instance (one round per second).
    pub many_rounds: u64,
    /// Media: clients over both gateways.
    pub media_clients: usize,
    /// Media: events per second.
    pub media_rate: f64,
    /// Media: seconds of publishing.
    pub media_secs: f64,
    /// Media: bytes of base64 per event.
    pub media_bytes: usize,
    /// Sparse fan-out: subscribers over both gateways (one instance, or spread over
    /// `sparse_instances`).
    pub sparse_clients: usize,
    /// Sparse fan-out: instances of the many-instance shape.
    pub sparse_instances: usize,
    /// Sparse fan-out: events per second (per instance).
    pub sparse_rate: f64,
    /// Sparse fan-out: seconds of publishing.
    pub sparse_secs: f64,
    /// Sparse fan-out: bytes of event data.
    pub sparse_data_bytes: usize,
    /// Saturated fan-out (the sparse scenario's subscribers and data): events per second.
    pub saturated_rate: f64,
    /// Saturated fan-out: seconds of publishing.
    pub saturated_secs: f64,
    /// Reconnect storm: clients on the gateway that is killed.
    pub storm_clients: usize,
    /// Connections per `ryze-load` worker.
    pub per_worker: usize,
    /// History off/on: interleaved (off, on) pairs of the fan-out scenario.
    pub history_pairs: usize,
    /// Resume: clients that come back at once.
    pub resume_clients: usize,
    /// Resume: frames each of them missed.
    pub resume_missed: usize,
    /// Regions: sequential ingest requests in each phase (all up, one down, one hung).
    pub regions_requests: usize,
    /// Where `perf record` data goes; `None`: no profiles.
    pub perf_dir: Option<String>,
}

impl Params {
    /// The sizes of the issue (`make bench`, about 3.5 minutes of scenarios).
    pub fn full() -> Params {
        Params {
            mode: "full",
            idle_first: 10_000,
            idle_max: 50_000,
            fanout_clients: 2_000,
            fanout_rate: 200.0,
            fanout_secs: 30.0,
            fanout_frame_bytes: 300,
            sweep_rates: vec![10.0, 25.0, 50.0, 100.0],
            sweep_secs: 8.0,
            hot_clients: 10_000,
            hot_rate: 10.0,
            hot_secs: 10.0,
            many: 10_000,
            many_rounds: 5,
            media_clients: 500,
            media_rate: 20.0,
            media_secs: 15.0,
            media_bytes: 200_000,
            sparse_clients: 2_000,
            sparse_instances: 50,
            sparse_rate: 20.0,
            sparse_secs: 20.0,
            sparse_data_bytes: 300,
            saturated_rate: 400.0,
            saturated_secs: 20.0,
            storm_clients: 10_000,
            per_worker: 5_000,
            history_pairs: 2,
            resume_clients: 1_000,
            resume_missed: 100,
            regions_requests: 200,
            perf_dir: None,
        }
    }

    /// Smaller sizes for a before/after check of a hot-path change (`make bench-quick`).
    pub fn quick() -> Params {
        Params {
            mode: "quick",
            idle_first: 2_000,
            idle_max: 4_000,
            fanout_clients: 500,
            fanout_rate: 200.0,
            fanout_secs: 8.0,
            fanout_frame_bytes: 300,
            sweep_rates: vec![50.0],
            sweep_secs: 4.0,
            hot_clients: 2_000,
            hot_rate: 10.0,
            hot_secs: 4.0,
            many: 2_000,
            many_rounds: 3,
            media_clients: 100,
            media_rate: 20.0,
            media_secs: 4.0,
            media_bytes: 200_000,
            sparse_clients: 2_000,
            sparse_instances: 50,
            sparse_rate: 20.0,
            sparse_secs: 10.0,
            sparse_data_bytes: 300,
            saturated_rate: 400.0,
            saturated_secs: 8.0,
            storm_clients: 2_000,
            per_worker: 2_500,
            history_pairs: 1,
            resume_clients: 200,
            resume_missed: 100,
            regions_requests: 100,
            perf_dir: None,
        }
    }
}

impl Params {
    /// Tiny sizes that only prove the tools work (debug builds, seconds).
    pub fn tiny() -> Params {
        Params {
            mode: "tiny",
            idle_first: 200,
            idle_max: 400,
            fanout_clients: 40,
            fanout_rate: 50.0,
            fanout_secs: 2.0,
            sweep_rates: vec![20.0],
            sweep_secs: 1.0,
            hot_clients: 100,
            hot_secs: 2.0,
            many: 100,
            many_rounds: 2,
            media_clients: 10,
            media_rate: 5.0,
            media_secs: 2.0,
            sparse_clients: 100,
            sparse_secs: 2.0,
            saturated_rate: 400.0,
            saturated_secs: 2.0,
            storm_clients: 100,
            per_worker: 100,
            resume_clients: 20,
            regions_requests: 20,
            ..Params::quick()
        }
    }
}

/// One scenario's result.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    /// Short name (`idle`, `fanout`, ...).
    pub key: String,
    /// Heading.
    pub title: String,
    /// What was run: (setting, value).
    pub settings: Vec<(String, String)>,
    /// What was measured: (quantity, value), formatted.
    pub rows: Vec<(String, String)>,
    /// The targets this scenario measures.
    pub targets: Vec<TargetCheck>,
    /// Observations worth a sentence (failures, closes, limits hit).
    pub notes: Vec<String>,
    /// Preformatted blocks (profiles): (title, text).
    pub blocks: Vec<(String, String)>,
    /// The same numbers unformatted, for the JSON file.
    pub raw: serde_json::Map<String, serde_json::Value>,
}

impl Outcome {
    /// An empty outcome.
    pub fn new(key: &str, title: &str) -> Outcome {
        Outcome {
            key: key.to_owned(),
            title: title.to_owned(),
            ..Outcome::default()
        }
    }

    /// Adds a setting.
    pub fn set(&mut self, name: &str, value: impl ToString) {
        self.settings.push((name.to_owned(), value.to_string()));
    }

    /// Adds a measured row and its raw value.
    pub fn row(&mut self, name: &str, shown: impl ToString, raw_key: &str, raw: impl Serialize) {
        self.rows.push((name.to_owned(), shown.to_string()));
        if let Ok(v) = serde_json::to_value(raw) {
            self.raw.insert(raw_key.to_owned(), v);
        }
    }

    /// Adds a raw value only.
    pub fn raw(&mut self, raw_key: &str, raw: impl Serialize) {
        if let Ok(v) = serde_json::to_value(raw) {
            self.raw.insert(raw_key.to_owned(), v);
        }
    }

    /// Adds a latency histogram as p50/p95/p99/p99.9/max rows.
    pub fn latency(&mut self, name: &str, raw_key: &str, h: &Histogram) {
        let q = |p| h.quantile(p);
        self.row(
            name,
            format!(
                "p50 {} · p95 {} · p99 {} · p99.9 {} · max {} (n = {})",
                us(q(0.5)),
                us(q(0.95)),
                us(q(0.99)),
                us(q(0.999)),
                us(h.max()),
                h.count()
            ),
            raw_key,
            serde_json::json!({
                "count": h.count(), "mean_us": h.mean(), "p50_us": q(0.5), "p95_us": q(0.95),
                "p99_us": q(0.99), "p999_us": q(0.999), "max_us": h.max(),
            }),
        );
    }

    /// Adds a note.
    pub fn note(&mut self, text: impl ToString) {
        self.notes.push(text.to_string());
    }

    /// Records where a target stands.
    pub fn target(&mut self, name: &str, goal: &str, measured: String, met: bool) {
        self.targets.push(TargetCheck {
            name: name.to_owned(),
            goal: goal.to_owned(),
            measured,
            met,
        });
    }
}

/// Where one of the targets stands.
#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    /// What is measured.
    pub name: String,
    /// The target.
    pub goal: String,
    /// The number measured.
    pub measured: String,
    /// Whether it meets the target.
    pub met: bool,
}

/// CPU seconds used so far by every process of the system and the workers.
#[derive(Debug, Clone, Default)]
pub struct Cpu {
    /// Per gateway.
    pub gateways: Vec<f64>,
    /// The publisher.
    pub publisher: f64,
    /// redis-server.
    pub redis: f64,
    /// Every postgres process.
    pub postgres: f64,
    /// The `ryze-load` workers together.
    pub workers: f64,
    /// This process (the publishing loop).
    pub bench: f64,
}

impl Cpu {
    /// A snapshot now.
    pub fn now(sys: &System, workers: &[u32]) -> Cpu {
        Cpu {
            gateways: sys
                .gateways
                .iter()
                .map(|g| procfs::cpu_seconds(g.pid()))
                .collect(),
            publisher: procfs::cpu_seconds(sys.publisher.pid()),
            redis: sys.redis_cpu(),
            postgres: sys.pg_cpu(),
            workers: workers.iter().map(|p| procfs::cpu_seconds(*p)).sum(),
            bench: procfs::cpu_seconds(std::process::id()),
        }
    }

    /// What was used between `self` and `later`.
    pub fn until(&self, later: &Cpu) -> Cpu {
        Cpu {
            gateways: later
                .gateways
                .iter()
                .zip(&self.gateways)
                // A gateway killed meanwhile reads 0: count nothing for it.
                .map(|(b, a)| (b - a).max(0.0))
                .collect(),
            publisher: later.publisher - self.publisher,
            redis: later.redis - self.redis,
            postgres: (later.postgres - self.postgres).max(0.0),
            workers: later.workers - self.workers,
            bench: later.bench - self.bench,
        }
    }

    /// The gateways together.
    pub fn gateway_total(&self) -> f64 {
        self.gateways.iter().sum()
    }

    /// One line: who used how much.
    pub fn describe(&self) -> String {
        let gws = self
            .gateways
            .iter()
            .map(|g| format!("{g:.2}"))
            .collect::<Vec<_>>()
            .join(" + ");
        format!(
            "gateways {gws} s · publisher {:.2} s · redis {:.2} s · postgres {:.2} s · \
             load workers {:.2} s · bench (publishing loop) {:.2} s",
            self.publisher, self.redis, self.postgres, self.workers, self.bench
        )
    }

    /// The raw numbers.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "gateways": self.gateways, "publisher": self.publisher, "redis": self.redis,
            "postgres": self.postgres, "workers": self.workers, "bench": self.bench,
        })
    }
}

/// µs as a short human string.
pub fn us(v: u64) -> String {
    if v < 1_000 {
        format!("{v} µs")
    } else if v < 1_000_000 {
        format!("{:.2} ms", v as f64 / 1e3)
    } else {
        format!("{:.2} s", v as f64 / 1e6)
    }
}

/// Bytes as KiB/MiB.
pub fn bytes(v: f64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if v.abs() < MIB {
        format!("{:.1} KiB", v / 1024.0)
    } else if v.abs() < 10.0 * 1024.0 * MIB {
        format!("{:.1} MiB", v / MIB)
    } else {
        format!("{:.1} GiB", v / 1024.0 / MIB)
    }
}

/// A count with thousands separators.
pub fn count(v: f64) -> String {
    let n = v.round() as i64;
    let s = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// A map of reasons as `reason ×n, …` (or `none`).
pub fn reasons(map: &std::collections::BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "none".to_owned();
    }
    map.iter()
        .map(|(k, v)| format!("{k} ×{}", count(*v as f64)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Lets the machine settle between phases (sockets closing, the allocator, TIME_WAIT timers).
pub async fn settle(d: Duration) {
    tokio::time::sleep(d).await;
}
