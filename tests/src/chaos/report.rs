//! The run's report: every number as JSON, and the Markdown table docs/reliability.md holds.

use std::collections::BTreeMap;

use serde::Serialize;

use super::check::{Recovery, Verdict, Violation};
use super::history::{EventRec, FaultRec, Outcome};
use super::schedule::RedisVariant;

/// Everything a run reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub command: String,
    pub seed: u64,
    pub variant: RedisVariant,
    pub seconds: f64,
    pub instances: usize,
    pub clients: usize,
    pub resumable_clients: usize,
    pub period_ms: u64,
    pub faults_planned: usize,
    /// Per kind: injected (healed), and those that errored or were skipped.
    pub faults: BTreeMap<String, FaultCount>,
    pub events: EventCount,
    pub deliveries: u64,
    pub gaps: u64,
    pub violations: usize,
    pub violation_counts: BTreeMap<String, usize>,
    /// The first violations in detail.
    pub violation_list: Vec<Violation>,
    pub recovery: BTreeMap<String, Recovery>,
    /// Gateway RSS in MiB: baseline (max of the first fleet after warm-up) and at the end.
    pub rss_baseline_mib: f64,
    pub rss_end_mib: Vec<f64>,
    pub fault_log: Vec<FaultRec>,
    pub wall_seconds: f64,
}

/// Faults of one kind.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FaultCount {
    pub injected: usize,
    pub failed_or_skipped: usize,
}

/// Events by the publisher's answer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EventCount {
    pub sent: u64,
    pub accepted: u64,
    pub maybe: u64,
    pub never: u64,
}

impl EventCount {
    pub fn of(events: &[Vec<EventRec>]) -> EventCount {
        let mut c = EventCount::default();
        for e in events.iter().flatten() {
            c.sent += 1;
            match e.outcome {
                Outcome::Accepted => c.accepted += 1,
                Outcome::Maybe => c.maybe += 1,
                Outcome::Never => c.never += 1,
            }
        }
        c
    }
}

/// Faults by kind from the fault log.
pub fn fault_counts(log: &[FaultRec]) -> BTreeMap<String, FaultCount> {
    let mut out: BTreeMap<String, FaultCount> = BTreeMap::new();
    for f in log {
        let c = out.entry(f.kind.name().to_owned()).or_default();
        if f.note.contains("error:") {
            c.failed_or_skipped += 1;
        } else {
            c.injected += 1;
        }
    }
    out
}

impl Report {
    /// Assembles the report from the verdict and the logs.
    pub fn violations_from(verdict: &Verdict) -> (usize, BTreeMap<String, usize>, Vec<Violation>) {
        let total = verdict.counts.values().sum();
        let list = verdict.violations.iter().take(50).cloned().collect();
        (total, verdict.counts.clone(), list)
    }

    /// The Markdown block for docs/reliability.md.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "Command: `{}` (seed {}, Redis {:?}, {} s of faults, wall time {:.0} s).\n\n",
            self.command, self.seed, self.variant, self.seconds, self.wall_seconds
        ));
        s.push_str(&format!(
            "Load: {} instances, {} clients ({} resumable), one event per instance every {} ms \
             plus bursts. Events sent {}: accepted {}, maybe {} (5xx, timeout, noListeners), never {} \
             (refused, 4xx). Deliveries {}, `stream.gap` frames {}. \
             Gateway RSS: baseline {:.1} MiB, end {}.\n\n",
            self.instances,
            self.clients,
            self.resumable_clients,
            self.period_ms,
            self.events.sent,
            self.events.accepted,
            self.events.maybe,
            self.events.never,
            self.deliveries,
            self.gaps,
            self.rss_baseline_mib,
            self.rss_end_mib
                .iter()
                .map(|m| format!("{m:.1}"))
                .collect::<Vec<_>>()
                .join(" / ")
        ));
        s.push_str(&format!("**Violations: {}**", self.violations));
        if !self.violation_counts.is_empty() {
            let kinds: Vec<String> = self
                .violation_counts
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            s.push_str(&format!(" ({})", kinds.join(", ")));
        }
        s.push_str("\n\n");
        s.push_str(
            "| fault | injected | failed/skipped | recovery p50 | p99 | max | unrecovered |\n",
        );
        s.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
        let mut total = 0;
        for (kind, c) in &self.faults {
            total += c.injected;
            let r = self.recovery.get(kind);
            let cell = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.2} s"));
            let measured = r.is_some_and(|r| r.measured > 0);
            s.push_str(&format!(
                "| {kind} | {} | {} | {} | {} | {} | {} |\n",
                c.injected,
                c.failed_or_skipped,
                cell(r.filter(|_| measured).map(|r| r.p50_s)),
                cell(r.filter(|_| measured).map(|r| r.p99_s)),
                cell(r.filter(|_| measured).map(|r| r.max_s)),
                r.map_or(0, |r| r.unrecovered)
            ));
        }
        s.push_str(&format!("| **all** | {total} | | | | | |\n"));
        s
    }
}
