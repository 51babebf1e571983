//! The invariant checker: a pure function of the recorded history (no clock, no I/O), so
//! it can be tested on hand-made histories and re-run on a saved one.
//!
//! What a client "should" have received is derived from what the publishers answered:
//! only events answered `accepted` are owed; `maybe` ones may arrive; `never` ones must not.
//! - **Resumable** clients owe every accepted event sent after their first 101, across
//!   reconnects, except the range a `stream.gap` announced (from its `since` to the first frame
//!   after it) and events Redis lost with its memory (see [`LOSS_LOOKBACK`]). A gap must be
//!   justified: HISTORY_SIZE later events, or a data-losing Redis fault since its `since`.
//! - **Plain** clients owe, per connection, every accepted event sent after its 101 and answered
//!   more than [`PLAIN_GRACE`] before it ended (the pod may not have had it yet), except during
//!   and shortly after a Redis fault (the pod may still have been catching up when it was
//!   cut off), after a 1008 `slow consumer` (the close is the loss signal), and events Redis
//!   lost. Across connections they may see an event twice (nothing links two connections).
//! - Readiness: each gateway that lived through a Redis fault longer than the stall timeout
//!   plus [`READY_SLACK`] must have answered `/readyz` with something other than 200 at least
//!   once during it (the poller's approximation of "whenever delivery is impossible"). A
//!   Sentinel fault lasts, for this rule, until one probe interval after the Sentinels named
//!   another primary, if that came first: the processes follow them there.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

use super::history::{Anomaly, ClientLog, EventRec, FaultRec, GatewayLife, Micros, Outcome};
use super::schedule::FaultKind;

/// Events answered within this long before a data-losing Redis fault (or before a Redis
/// fault chained to it), or sent while it lasted (only the dying server can have taken them:
/// a stop takes a moment, and the replacement starts when the fault heals), may be lost with
/// the server's memory (no persistence).
pub const LOSS_LOOKBACK: Micros = 10_000_000;
/// A plain connection is not owed events answered this shortly before it ended.
pub const PLAIN_GRACE: Micros = 2_000_000;
/// After a Redis fault heals, a pod may need the stall timeout plus this to resubscribe and
/// catch up; a plain connection ending meanwhile is not owed events sent since the fault.
pub const CATCH_UP: Micros = 5_000_000;
/// A gateway must report unready during a Redis fault lasting the stall timeout plus this.
pub const READY_SLACK: Micros = 1_500_000;
/// At most this many violations of one kind are reported per client (all are counted).
const PER_CLIENT: usize = 3;

/// What the checker needs.
pub struct Input<'a> {
    pub seed: u64,
    /// Per instance, in seq order (seq n at index n - 1).
    pub events: &'a [Vec<EventRec>],
    pub clients: &'a [ClientLog],
    pub faults: &'a [FaultRec],
    pub anomalies: &'a [Anomaly],
    pub gateways: &'a [GatewayLife],
    /// When the clients were stopped.
    pub end: Micros,
    pub history_size: u64,
    pub stall_timeout: Micros,
}

/// One broken invariant.
#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    pub kind: String,
    pub seed: u64,
    /// Seconds since the start of the run.
    pub at_s: f64,
    pub subject: String,
    pub detail: String,
    /// Faults and connection changes around it.
    pub context: Vec<String>,
}

/// p50 / p99 / max of the recovery times of one fault kind, in seconds.
#[derive(Debug, Clone, Serialize)]
pub struct Recovery {
    pub faults: usize,
    pub measured: usize,
    /// Faults after which some client that had been receiving never got a newer event.
    pub unrecovered: usize,
    pub p50_s: f64,
    pub p99_s: f64,
    pub max_s: f64,
}

/// The checker's result.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub violations: Vec<Violation>,
    /// All violations by kind (including those not listed individually).
    pub counts: BTreeMap<String, usize>,
    pub deliveries: u64,
    pub gaps: u64,
    pub recovery: BTreeMap<String, Recovery>,
}

fn secs(t: Micros) -> f64 {
    (t as f64 / 1e3).round() / 1e3
}

struct Checker<'a> {
    input: &'a Input<'a>,
    out: Vec<Violation>,
    counts: BTreeMap<String, usize>,
    /// (start, end) of windows in which events may have been lost with Redis's memory.
    loss: Vec<(Micros, Micros)>,
    /// (start, end) of windows in which a pod may still be catching up after a Redis fault.
    impaired: Vec<(Micros, Micros)>,
}

/// Checks every invariant over the history.
pub fn check(input: &Input<'_>) -> Verdict {
    let mut c = Checker {
        input,
        out: Vec::new(),
        counts: BTreeMap::new(),
        loss: Vec::new(),
        impaired: Vec::new(),
    };
    c.windows();
    for a in input.anomalies {
        c.push(
            a.kind,
            a.at,
            "process or frame".into(),
            a.detail.clone(),
            None,
        );
    }
    let mut deliveries = 0;
    let mut gaps = 0;
    for client in input.clients {
        deliveries += client
            .conns
            .iter()
            .map(|c| c.frames.len() as u64)
            .sum::<u64>();
        gaps += client
            .conns
            .iter()
            .map(|c| c.gaps.len() as u64)
            .sum::<u64>();
        c.phantoms(client);
        if client.resumable {
            c.resumable(client);
        } else {
            c.plain(client);
        }
    }
    c.readiness();
    let recovery = recovery(input);
    Verdict {
        violations: c.out,
        counts: c.counts,
        deliveries,
        gaps,
        recovery,
    }
}

impl Checker<'_> {
    fn windows(&mut self) {
        let faults = self.input.faults;
        for f in faults.iter().filter(|f| f.kind.loses_redis_data()) {
            let mut start = f.started.saturating_sub(LOSS_LOOKBACK);
            for g in faults.iter().filter(|g| g.kind.impairs_redis()) {
                if g.started <= f.started && g.healed + LOSS_LOOKBACK >= f.started {
                    start = start.min(g.started.saturating_sub(LOSS_LOOKBACK));
                }
            }
            self.loss.push((start, f.healed));
        }
        for g in faults.iter().filter(|g| g.kind.impairs_redis()) {
            self.impaired.push((
                g.started.saturating_sub(1_000_000),
                g.healed + self.input.stall_timeout + CATCH_UP,
            ));
        }
    }

    /// Whether event `e` may have been lost with Redis's memory.
    fn lost_with_redis(&self, e: &EventRec) -> bool {
        self.loss
            .iter()
            .any(|(start, end)| e.sent <= *end && e.answered >= *start)
    }

    fn push(
        &mut self,
        kind: &str,
        at: Micros,
        subject: String,
        detail: String,
        client: Option<&ClientLog>,
    ) {
        *self.counts.entry(kind.to_owned()).or_default() += 1;
        if client.is_some() {
            let listed = self
                .out
                .iter()
                .filter(|v| v.kind == kind && v.subject == subject)
                .count();
            if listed >= PER_CLIENT {
                return;
            }
        }
        let context = self.context(at, client);
        self.out.push(Violation {
            kind: kind.to_owned(),
            seed: self.input.seed,
            at_s: secs(at),
            subject,
            detail,
            context,
        });
    }

    /// Faults active within 10 s of `at`, and the client's connections around it.
    fn context(&self, at: Micros, client: Option<&ClientLog>) -> Vec<String> {
        let near = |t: Micros| t + 10_000_000 >= at && t <= at + 10_000_000;
        let mut ctx: Vec<String> = self
            .input
            .faults
            .iter()
            .filter(|f| near(f.started) || near(f.healed) || (f.started <= at && f.healed >= at))
            .map(|f| {
                format!(
                    "fault #{} {} on {} from {:.3}s to {:.3}s {}",
                    f.id,
                    f.kind.name(),
                    f.target,
                    secs(f.started),
                    secs(f.healed),
                    f.note
                )
            })
            .collect();
        if let Some(cl) = client {
            for (n, conn) in cl.conns.iter().enumerate() {
                let end = conn.closed.unwrap_or(self.input.end);
                if near(conn.opened) || near(end) || (conn.opened <= at && end >= at) {
                    let first = conn.frames.first().map(|f| f.seq);
                    let last = conn.frames.last().map(|f| f.seq);
                    ctx.push(format!(
                        "connection {n}: 101 at {:.3}s (since {:?}), ended at {:.3}s ({}), {} frames, seqs {first:?}..={last:?}, gaps {:?}",
                        secs(conn.opened),
                        conn.since,
                        secs(end),
                        if conn.end.is_empty() { "open at the end" } else { &conn.end },
                        conn.frames.len(),
                        conn.gaps
                    ));
                }
            }
        }
        ctx
    }

    /// Frames of events the publishers never published (or that do not exist).
    fn phantoms(&mut self, client: &ClientLog) {
        let events = &self.input.events[client.instance];
        let subject = format!("client {} (instance {})", client.id, client.instance);
        for conn in &client.conns {
            for f in &conn.frames {
                let known = f.seq >= 1 && (f.seq as usize) <= events.len();
                if !known || events[f.seq as usize - 1].outcome == Outcome::Never {
                    let detail = if known {
                        format!(
                            "received seq {}, which the publisher answered as never published",
                            f.seq
                        )
                    } else {
                        format!("received seq {}, which was never sent", f.seq)
                    };
                    self.push("phantom_frame", f.at, subject.clone(), detail, Some(client));
                }
            }
        }
    }

    fn resumable(&mut self, client: &ClientLog) {
        let Some(first) = client.conns.first() else {
            return;
        };
        let subject = format!(
            "resumable client {} (instance {})",
            client.id, client.instance
        );
        // Uniqueness and order across every connection.
        let mut seen = HashSet::new();
        let mut max = 0u64;
        for conn in &client.conns {
            for f in &conn.frames {
                if !seen.insert(f.seq) {
                    let d = format!("seq {} received again", f.seq);
                    self.push("duplicate", f.at, subject.clone(), d, Some(client));
                } else if f.seq < max {
                    let d = format!("seq {} after seq {max}", f.seq);
                    self.push("out_of_order", f.at, subject.clone(), d, Some(client));
                }
                max = max.max(f.seq);
            }
        }
        // Gap ranges: (since, first seq after the gap).
        let mut excused: Vec<(u64, u64)> = Vec::new();
        for (n, conn) in client.conns.iter().enumerate() {
            for (at, since) in &conn.gaps {
                let Some(since) = since else {
                    let d = "stream.gap on a since=now connection".to_owned();
                    self.push("unjustified_gap", *at, subject.clone(), d, Some(client));
                    continue;
                };
                let next = client.conns[n..]
                    .iter()
                    .flat_map(|c| c.frames.iter())
                    .find(|f| f.at >= *at)
                    .map_or(u64::MAX, |f| f.seq);
                excused.push((*since, next));
                self.gap_justified(client, &subject, *at, *since);
            }
        }
        let events = &self.input.events[client.instance];
        let mut missing: Vec<&EventRec> = Vec::new();
        for e in events {
            if e.outcome != Outcome::Accepted || e.sent <= first.opened || seen.contains(&e.seq) {
                continue;
            }
            if excused.iter().any(|(s, n)| e.seq > *s && e.seq < *n) || self.lost_with_redis(e) {
                continue;
            }
            missing.push(e);
        }
        self.report_missing(
            client,
            &subject,
            &missing,
            "resumable client never received it",
        );
    }

    /// A gap at `at` after `since` must follow a data-losing Redis fault, or HISTORY_SIZE
    /// newer events.
    fn gap_justified(&mut self, client: &ClientLog, subject: &str, at: Micros, since: u64) {
        let events = &self.input.events[client.instance];
        let Some(since_ev) = events.get(since as usize - 1) else {
            return;
        };
        let lost = self
            .input
            .faults
            .iter()
            .any(|f| f.kind.loses_redis_data() && f.healed >= since_ev.sent && f.started <= at);
        let newer = events
            .iter()
            .filter(|e| e.seq > since && e.sent < at && e.outcome != Outcome::Never)
            .count() as u64;
        if !lost && newer < self.input.history_size {
            let d = format!(
                "stream.gap after seq {since} with only {newer} newer events and no Redis data loss since it was sent at {:.3}s",
                secs(since_ev.sent)
            );
            self.push("unjustified_gap", at, subject.to_owned(), d, Some(client));
        }
    }

    fn plain(&mut self, client: &ClientLog) {
        let subject = format!("plain client {} (instance {})", client.id, client.instance);
        let events = &self.input.events[client.instance];
        let mut missing: Vec<&EventRec> = Vec::new();
        for conn in &client.conns {
            for (at, _) in &conn.gaps {
                let d = "stream.gap on a connection without since".to_owned();
                self.push("gap_without_since", *at, subject.clone(), d, Some(client));
            }
            let mut seen = HashSet::new();
            let mut max = 0u64;
            for f in &conn.frames {
                if !seen.insert(f.seq) {
                    let d = format!("seq {} received twice on one connection", f.seq);
                    self.push("duplicate", f.at, subject.clone(), d, Some(client));
                } else if f.seq < max {
                    let d = format!("seq {} after seq {max} on one connection", f.seq);
                    self.push("out_of_order", f.at, subject.clone(), d, Some(client));
                }
                max = max.max(f.seq);
            }
            let end = conn.closed.unwrap_or(self.input.end);
            // During and shortly after a Redis fault the pod may still be catching up.
            let cut = self
                .impaired
                .iter()
                .filter(|(s, e)| end >= *s && end <= *e)
                .map(|(s, _)| *s)
                .min()
                .unwrap_or(Micros::MAX);
            let slow = conn.end.starts_with("close 1008");
            for e in events {
                if e.outcome != Outcome::Accepted
                    || e.sent <= conn.opened
                    || e.answered + PLAIN_GRACE >= end
                    || e.sent >= cut
                    || (slow && e.seq > max)
                    || seen.contains(&e.seq)
                    || self.lost_with_redis(e)
                {
                    continue;
                }
                missing.push(e);
            }
        }
        self.report_missing(client, &subject, &missing, "lost while connected");
    }

    /// Whether `e` was sent during a Redis fault's catch-up window on a connection of `client`
    /// that opened within that window (the known product issue of docs/reliability.md:
    /// a connection joining a pod that is catching up after a resubscribe can miss frames).
    fn joined_during_catch_up(&self, client: &ClientLog, e: &EventRec) -> bool {
        self.impaired.iter().any(|(start, end)| {
            e.sent >= *start
                && e.sent <= *end
                && client.conns.iter().any(|c| {
                    c.opened >= *start
                        && c.opened <= *end
                        && c.opened <= e.sent
                        && c.closed.is_none_or(|t| t >= e.answered)
                })
        })
    }

    /// One violation per run of consecutive missing seqs; those explained by
    /// [`Checker::joined_during_catch_up`] are reported as `missing_in_catch_up`.
    fn report_missing(
        &mut self,
        client: &ClientLog,
        subject: &str,
        missing: &[&EventRec],
        why: &str,
    ) {
        let (known, other): (Vec<&EventRec>, Vec<&EventRec>) = missing
            .iter()
            .partition(|e| self.joined_during_catch_up(client, e));
        self.report_runs(client, subject, &other, why, "missing");
        let why =
            format!("{why} (connection opened while its pod was catching up after a Redis fault)");
        self.report_runs(client, subject, &known, &why, "missing_in_catch_up");
    }

    fn report_runs(
        &mut self,
        client: &ClientLog,
        subject: &str,
        missing: &[&EventRec],
        why: &str,
        kind: &str,
    ) {
        let mut i = 0;
        while i < missing.len() {
            let mut j = i;
            while j + 1 < missing.len() && missing[j + 1].seq == missing[j].seq + 1 {
                j += 1;
            }
            let (a, b) = (missing[i], missing[j]);
            let d = format!(
                "{} accepted event(s) seq {}..={} (sent {:.3}s..{:.3}s): {why}",
                j - i + 1,
                a.seq,
                b.seq,
                secs(a.sent),
                secs(b.sent)
            );
            self.push(kind, a.sent, subject.to_owned(), d, Some(client));
            i = j + 1;
        }
    }

    fn readiness(&mut self) {
        let input = self.input;
        for f in input.faults.iter().filter(|f| f.kind.impairs_redis()) {
            // A Sentinel failover gives service back before the old primary returns: the
            // processes follow the Sentinels within one probe interval (stall timeout / 3).
            let back = match f.failed_over {
                Some(at) => f.healed.min(at + input.stall_timeout / 3),
                None => f.healed,
            };
            if back < f.started + input.stall_timeout + READY_SLACK {
                continue;
            }
            for g in input.gateways {
                let lived =
                    g.started <= f.started && g.ended.is_none_or(|e| e > f.healed + 1_000_000);
                if !lived {
                    continue;
                }
                let unready = g.samples.iter().any(|s| {
                    s.at >= f.started && s.at <= f.healed + 1_000_000 && s.ready == Some(false)
                });
                if !unready {
                    let d = format!(
                        "{} answered /readyz 200 (or timed out) throughout fault #{} {} of {:.1}s",
                        g.name,
                        f.id,
                        f.kind.name(),
                        secs(f.healed - f.started)
                    );
                    self.push("readyz_stayed_ready", f.started, g.name.clone(), d, None);
                }
            }
        }
    }
}

/// Recovery of each fault: from its start until every client that had received a frame in
/// the 5 s before it has received an event sent after it started; per kind p50/p99/max.
fn recovery(input: &Input<'_>) -> BTreeMap<String, Recovery> {
    let mut per_kind: BTreeMap<FaultKind, (usize, Vec<f64>, usize)> = BTreeMap::new();
    let frames: Vec<Vec<(Micros, u64)>> = input
        .clients
        .iter()
        .map(|c| {
            c.conns
                .iter()
                .flat_map(|conn| conn.frames.iter().map(|f| (f.at, f.seq)))
                .collect()
        })
        .collect();
    for f in input.faults {
        let entry = per_kind.entry(f.kind).or_default();
        entry.0 += 1;
        if f.target == "none" {
            continue;
        }
        let t = f.started;
        let mut worst: Option<Micros> = Some(0);
        let mut any = false;
        for (c, frames) in input.clients.iter().zip(&frames) {
            let recent = frames
                .iter()
                .any(|(at, _)| *at <= t && *at + 5_000_000 >= t);
            if !recent {
                continue;
            }
            let events = &input.events[c.instance];
            let Some(after) = events
                .iter()
                .find(|e| e.sent >= t && e.outcome == Outcome::Accepted)
                .map(|e| e.seq)
            else {
                continue;
            };
            any = true;
            match frames.iter().find(|(at, seq)| *at >= t && *seq >= after) {
                Some((at, _)) => worst = worst.map(|w| w.max(at - t)),
                None => worst = None,
            }
        }
        if !any {
            continue;
        }
        match worst {
            Some(w) => entry.1.push(w as f64 / 1e6),
            None => entry.2 += 1,
        }
    }
    per_kind
        .into_iter()
        .map(|(kind, (faults, mut times, unrecovered))| {
            times.sort_by(f64::total_cmp);
            let q = |p: f64| {
                if times.is_empty() {
                    0.0
                } else {
                    let i = ((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1;
                    (times[i] * 1e3).round() / 1e3
                }
            };
            (
                kind.name().to_owned(),
                Recovery {
                    faults,
                    measured: times.len(),
                    unrecovered,
                    p50_s: q(0.5),
                    p99_s: q(0.99),
                    max_s: q(1.0),
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests;
