//! Rebalancing after scale-out (SPEC D39): a pod holding more than `REBALANCE_THRESHOLD` times
//! the fleet's mean connection count closes its excess with 1001 `rebalancing`, paced, so the
//! clients reconnect (through the load balancer) onto the pods the autoscaler added.
//!
//! **Fleet records.** Every `REBALANCE_INTERVAL` each pod writes `<prefix>:pod:<pod id>` =
//! `"<connections> <ready 0|1>"` with `SET … PX` three intervals (so a dead pod drops out by
//! itself), and adds its id to the sorted set `<prefix>:pods` scored by the write's unix
//! milliseconds. Readers take at most [`MAX_PODS`] ids from that index and `GET` their records
//! in one pipeline; ids whose record expired are ignored, and ids not written for
//! [`PRUNE_AFTER`] are removed, so the index stays bounded without any `SCAN` (which would walk
//! the whole keyspace, and every master of a cluster). Clock skew between pods only affects
//! pruning, never liveness (that is the record's TTL).
//!
//! **Closing.** The decision is [`decision::decide`]. Candidates are spread across instances
//! (round-robin, oldest first within one) and never younger than `REBALANCE_MIN_AGE`. Closes
//! are paced at `REBALANCE_RATE` per second; between closes the pod re-evaluates with its live
//! count (and a fleet re-read every interval) and stops as soon as it is within the threshold.
//! One round runs until then, taking more candidates when the first ones are used up (about a
//! third of the reconnects land back on this pod behind a round-robin balancer), rather than
//! waiting an interval per batch of land-backs.
//!
//! **The fleet total is kept while clients move** (docs/decisions.md, "Rebalancing"): a client
//! this pod closed is counted nowhere until it reconnects and that pod's record is rewritten,
//! so the counted mean sinks while closing, and a pod trusting it would close below its line.
//! Closes are counted as moving clients, and a read within [`MOVING_FOR`] of the last close
//! never shows a smaller fleet than the largest read since: the pod never closes a connection
//! that takes it below `REBALANCE_THRESHOLD` × the real mean. A pod that closed nothing keeps
//! the largest total too, until it has not been read for [`MOVING_FOR`]: the pods receiving
//! the moving clients see the same sinking total, and would otherwise close some of them.
//! (If clients really left meanwhile, pods act on the smaller fleet once the window is over.)
//! Without Redis (embedded single-process mode) rebalancing does not run.

pub mod decision;

use crate::broker::redis::RedisBroker;
use crate::state::AppState;
use decision::{decide, Decision, Fleet, KeptTotal, PodLoad, Policy};
use fred::prelude::*;
use ryze_core::channel::Names;
use ryze_core::close;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Most pods read from the index (a fleet larger than this is read partially: the mean is
/// still a fair estimate).
pub const MAX_PODS: i64 = 1024;
/// An index entry not refreshed for this long is pruned (its record expired long before).
pub const PRUNE_AFTER: Duration = Duration::from_secs(300);
/// The pod's own count is recounted at least this often while closing (a recount walks every
/// client; in between, each close requested lowers it by one).
const RECOUNT: Duration = Duration::from_millis(100);
/// Shortest pause between two batches of closes.
const STEP: Duration = Duration::from_millis(10);
/// Closes that may be saved up while the loop wakes late (a loaded pod, a slow fleet read):
/// this long at `REBALANCE_RATE`, so the rate holds on average without bursting after a stall.
const BURST: Duration = Duration::from_millis(100);
/// After this pod's last close, or after the fleet total was last read at its largest, reads
/// keep that total for this long (at least a record lifetime): a client reconnects within its
/// backoff cap (30 s, SPEC §5.6), and a total that sank meanwhile is one whose clients are
/// still moving.
pub const MOVING_FOR: Duration = Duration::from_secs(30);

/// Rebalancing settings (`REBALANCE_*`).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// `REBALANCE_THRESHOLD` (0 = off) and `REBALANCE_WARMUP`.
    pub policy: Policy,
    /// `REBALANCE_INTERVAL`: how often records are written and read.
    pub interval: Duration,
    /// `REBALANCE_RATE`: closes per second at most.
    pub rate: u32,
    /// `REBALANCE_MIN_AGE`: younger connections are never closed.
    pub min_age: Duration,
}

/// Why the fleet could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RebalanceError {
    /// Redis refused or could not be reached.
    #[error("fleet records unavailable")]
    Redis(#[from] fred::error::Error),
}

/// The rebalancing loop of one pod.
pub struct Rebalancer {
    state: AppState,
    redis: Arc<RedisBroker>,
    names: Names,
    pod: Uuid,
    settings: Settings,
    started: Instant,
    /// The fleet total kept while clients move.
    kept: KeptTotal,
}

impl Rebalancer {
    /// A rebalancer for the pod serving `state`, sharing its records through `redis`.
    pub fn new(
        state: AppState,
        redis: Arc<RedisBroker>,
        names: Names,
        settings: Settings,
    ) -> Rebalancer {
        Rebalancer {
            state,
            redis,
            names,
            pod: Uuid::new_v4(),
            settings,
            started: Instant::now(),
            kept: KeptTotal::new(Instant::now()),
        }
    }

    /// Runs until `stop`; then removes this pod's record (best effort).
    pub async fn run(mut self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(pod.id = %self.pod, threshold = self.settings.policy.threshold, "rebalancing records started");
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let Some(fleet) = self.observe().await else {
                continue;
            };
            let decision = decide(&fleet, self.settings.policy, self.started.elapsed());
            self.state.metrics.rebalance_decision(decision.label());
            if let Decision::Close(n) = decision {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = self.close_excess(fleet, n) => {}
                }
                // Start the next interval afresh: the fleet was re-read while closing.
                tick.reset();
            }
        }
        let _ = self.remove_record().await;
    }

    /// How long a fleet total is kept after it was last read or after this pod's last close.
    fn moving_for(&self) -> Duration {
        MOVING_FOR.max(self.settings.interval * 3)
    }

    /// Writes this pod's record and reads the fleet's; updates the gauges. `None` (logged)
    /// when Redis fails: nothing is decided on a partial view. Within [`MOVING_FOR`] of
    /// this pod's last close or of the last read of the largest total, the fleet total never
    /// reads smaller than that (the difference is [`Fleet::moving`]).
    async fn observe(&mut self) -> Option<Fleet> {
        let own = self.state.hub.open_clients() as u64;
        let own_ready = crate::readiness::check(&self.state).is_ok();
        match self.exchange(own, own_ready).await {
            Ok(others) => {
                let mut fleet = Fleet {
                    own,
                    own_ready,
                    others,
                    moving: 0,
                };
                let window = self.moving_for();
                fleet.moving = self.kept.read(fleet.counted(), Instant::now(), window);
                self.state
                    .metrics
                    .fleet_observed(fleet.pods(), fleet.mean(), fleet.share());
                Some(fleet)
            }
            Err(e) => {
                self.state.metrics.rebalance_decision("unknown");
                tracing::warn!(error = %e, error.chain = ?e, "rebalancing: fleet records unavailable");
                None
            }
        }
    }

    /// One round trip to write, one to read the index, one to read the records.
    async fn exchange(&self, own: u64, ready: bool) -> Result<Vec<PodLoad>, RebalanceError> {
        let redis = self.redis.commands();
        let index = self.names.pods_index();
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as f64;
        let ttl = self.settings.interval * 3;
        let me = self.pod.to_string();
        let record = PodLoad {
            connections: own,
            ready,
        };
        let write = redis.pipeline();
        let _: () = write
            .set(
                self.names.pod_key(self.pod),
                record.encode(),
                Some(Expiration::PX(ttl.as_millis() as i64)),
                None,
                false,
            )
            .await?;
        let _: () = write
            .zadd(&index, None, None, false, false, (now_ms, me.as_str()))
            .await?;
        let _: () = write
            .zremrangebyscore(
                &index,
                f64::NEG_INFINITY,
                now_ms - PRUNE_AFTER.as_millis() as f64,
            )
            .await?;
        let _: () = write
            .pexpire(&index, PRUNE_AFTER.as_millis() as i64, None)
            .await?;
        let _: Vec<Value> = write.all().await?;
        let ids: Vec<String> = redis
            .zrange(&index, 0, MAX_PODS - 1, None, false, None, false)
            .await?;
        let ids: Vec<Uuid> = ids
            .iter()
            .filter(|id| **id != me)
            .filter_map(|id| id.parse().ok())
            .collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // One GET per record (not MGET): records hash to different slots on a cluster.
        let read = redis.pipeline();
        for id in &ids {
            let _: () = read.get(self.names.pod_key(*id)).await?;
        }
        let values: Vec<Option<String>> = read.all().await?;
        Ok(values
            .iter()
            .flatten()
            .filter_map(|v| PodLoad::parse(v))
            .collect())
    }

    /// Closes connections, paced, re-evaluating before each batch, until within the threshold
    /// (or no connection is old enough).
    async fn close_excess(&mut self, mut fleet: Fleet, n: u64) {
        let hub = self.state.hub.clone();
        let mut candidates = hub
            .rebalance_candidates(n as usize, self.settings.min_age)
            .into_iter();
        if candidates.as_slice().is_empty() {
            tracing::debug!(excess = n, "rebalancing: no connection old enough to close");
            return;
        }
        tracing::info!(
            pod.id = %self.pod,
            own = fleet.own,
            mean = fleet.mean(),
            excess = n,
            "rebalancing: closing excess connections"
        );
        let moving_for = self.moving_for();
        let rate = f64::from(self.settings.rate.max(1));
        let step = STEP.max(Duration::from_secs_f64(1.0 / rate));
        let per_step = ((rate * step.as_secs_f64()).round() as u64).max(1);
        // A token bucket rather than `per_step` per tick: ticks that wake late (Delay) would
        // otherwise lower the rate, by 3x on a loaded 2-core machine.
        let cap = (rate * BURST.as_secs_f64()).max(per_step as f64);
        let mut tokens = per_step as f64;
        let mut filled = Instant::now();
        let mut pace = tokio::time::interval(step);
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_observe = Instant::now() + self.settings.interval;
        let mut next_recount = Instant::now() + RECOUNT;
        let mut closed = 0u64;
        let ended = loop {
            pace.tick().await;
            let now = Instant::now();
            tokens = (tokens + rate * (now - filled).as_secs_f64()).min(cap);
            filled = now;
            if now >= next_observe {
                // Refreshes this pod's record too, so it never expires while closing.
                let Some(fresh) = self.observe().await else {
                    break "unknown";
                };
                fleet = fresh;
                next_observe = now + self.settings.interval;
                next_recount = now + RECOUNT;
            } else if now >= next_recount {
                fleet.recount(hub.open_clients() as u64);
                next_recount = now + RECOUNT;
            }
            let remaining = match decide(&fleet, self.settings.policy, self.started.elapsed()) {
                Decision::Close(m) => m,
                other => break other.label(),
            };
            let want = remaining.min(tokens as u64);
            let mut batch = want;
            while batch > 0 {
                let outbox = match candidates.next() {
                    Some(outbox) => outbox,
                    None => {
                        // Used up: the land-backs and others keep it above its line.
                        candidates = hub
                            .rebalance_candidates(remaining as usize, self.settings.min_age)
                            .into_iter();
                        match candidates.next() {
                            Some(outbox) => outbox,
                            None => break,
                        }
                    }
                };
                if outbox.close_requested().is_none() {
                    outbox.close(close::REBALANCING);
                    fleet.closed_one();
                    closed += 1;
                    batch -= 1;
                }
            }
            if batch < want {
                tokens -= (want - batch) as f64;
                // Some closed: their clients are moving.
                self.kept
                    .closed(fleet.counted() + fleet.moving, Instant::now(), moving_for);
            }
            if batch > 0 {
                break "too_young";
            }
        };
        tracing::info!(pod.id = %self.pod, closed, ended, own = fleet.own, mean = fleet.mean(),
            "rebalancing: round done");
    }

    async fn remove_record(&self) -> Result<(), RebalanceError> {
        let redis = self.redis.commands();
        let _: i64 = redis.del(self.names.pod_key(self.pod)).await?;
        let _: i64 = redis
            .zrem(self.names.pods_index(), self.pod.to_string())
            .await?;
        Ok(())
    }
}
