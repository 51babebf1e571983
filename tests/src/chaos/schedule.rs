//! The fault schedule: drawn once from the seed before anything starts, so the same
//! `CHAOS_SEED` (and the same duration and Redis variant) replays the same faults at the same
//! offsets, with the same durations and targets. Arrivals are Poisson (exponential gaps), so
//! faults overlap at random; the kinds cycle through a shuffled list, so every kind the variant
//! supports occurs about equally often.

use serde::Serialize;

use super::rng::Rng;

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// `kill -9` of a gateway; a new one replaces it after the fault's duration.
    GatewayKill,
    /// SIGTERM of a gateway (drain, must exit 0); a new one replaces it after the duration.
    GatewayTerm,
    /// `kill -9` of a publisher; restarted after the duration.
    PublisherKill,
    /// Redis stopped, started again (empty) after the duration.
    RedisRestart,
    /// Redis `SIGSTOP`, `SIGCONT` after the duration: a wedged server.
    RedisPause,
    /// Every Redis connection of the services black-holed by the proxy, new ones too, healed
    /// after the duration (healed connections stay dead until their owner replaces them).
    RedisBlackhole,
    /// A Redis Cluster master stopped, started again after the duration (cluster variant).
    ClusterMasterKill,
    /// `kill -9` of the Sentinel-managed primary (Sentinel promotes the replica); the killed
    /// server starts again, empty, after the duration and is turned into a replica (Sentinel
    /// variant).
    SentinelFailover,
    /// SIGSTOP of the Sentinel-managed primary, SIGCONT after the duration: past Sentinel's
    /// `down-after` it fails over, and the old primary rejoins as a replica (Sentinel variant).
    SentinelPause,
    /// Postgres stopped, started again after the duration.
    PostgresRestart,
    /// A client of one instance that stops reading (tiny receive buffer) for the duration.
    StalledClient,
    /// 1,000 events to one instance in one ingest request.
    Burst,
}

impl FaultKind {
    /// The snake_case name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::GatewayKill => "gateway_kill",
            FaultKind::GatewayTerm => "gateway_term",
            FaultKind::PublisherKill => "publisher_kill",
            FaultKind::RedisRestart => "redis_restart",
            FaultKind::RedisPause => "redis_pause",
            FaultKind::RedisBlackhole => "redis_blackhole",
            FaultKind::ClusterMasterKill => "cluster_master_kill",
            FaultKind::SentinelFailover => "sentinel_failover",
            FaultKind::SentinelPause => "sentinel_pause",
            FaultKind::PostgresRestart => "postgres_restart",
            FaultKind::StalledClient => "stalled_client",
            FaultKind::Burst => "burst",
        }
    }

    /// Whether this fault can lose frames Redis had accepted (history and in-flight pub/sub
    /// messages are gone with the server's memory, or were not replicated yet).
    pub fn loses_redis_data(self) -> bool {
        matches!(
            self,
            FaultKind::RedisRestart
                | FaultKind::ClusterMasterKill
                | FaultKind::SentinelFailover
                | FaultKind::SentinelPause
        )
    }

    /// Whether this fault makes Redis unreachable or silent for the services.
    pub fn impairs_redis(self) -> bool {
        matches!(
            self,
            FaultKind::RedisRestart
                | FaultKind::RedisPause
                | FaultKind::RedisBlackhole
                | FaultKind::ClusterMasterKill
                | FaultKind::SentinelFailover
                | FaultKind::SentinelPause
        )
    }

    /// Range of the fault's duration in seconds.
    fn duration_range(self) -> (f64, f64) {
        match self {
            FaultKind::GatewayKill | FaultKind::GatewayTerm => (1.0, 6.0),
            FaultKind::PublisherKill => (1.0, 5.0),
            FaultKind::RedisRestart | FaultKind::ClusterMasterKill => (0.5, 5.0),
            // Long enough for Sentinel to notice (down-after 1 s) and promote the replica.
            FaultKind::SentinelFailover => (3.0, 8.0),
            FaultKind::RedisPause | FaultKind::RedisBlackhole | FaultKind::SentinelPause => {
                (1.0, 8.0)
            }
            FaultKind::PostgresRestart => (1.0, 6.0),
            FaultKind::StalledClient => (5.0, 20.0),
            FaultKind::Burst => (0.0, 0.0),
        }
    }
}

/// Which Redis the system runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RedisVariant {
    /// One redis-server behind the black-holing proxy.
    Single,
    /// A 3-master Redis Cluster (`redis-cluster://`, sharded pub/sub).
    Cluster,
    /// A primary, a replica and three Sentinels (`redis-sentinel://`).
    Sentinel,
}

impl RedisVariant {
    /// The fault kinds this variant injects.
    pub fn kinds(self) -> Vec<FaultKind> {
        // The order matters: the seed shuffles this list, so a change would move every
        // recorded seed's schedule.
        let mut kinds = vec![
            FaultKind::GatewayKill,
            FaultKind::GatewayTerm,
            FaultKind::PublisherKill,
            FaultKind::RedisPause,
            FaultKind::PostgresRestart,
            FaultKind::StalledClient,
            FaultKind::Burst,
        ];
        match self {
            RedisVariant::Single => {
                kinds.extend([FaultKind::RedisRestart, FaultKind::RedisBlackhole]);
            }
            RedisVariant::Cluster => kinds.push(FaultKind::ClusterMasterKill),
            RedisVariant::Sentinel => {
                // A pause of the primary is a failover there: its own kind.
                for kind in &mut kinds {
                    if *kind == FaultKind::RedisPause {
                        *kind = FaultKind::SentinelPause;
                    }
                }
                kinds.push(FaultKind::SentinelFailover);
            }
        }
        kinds
    }
}

/// One planned fault.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedFault {
    /// Sequence number in the schedule.
    pub id: usize,
    pub kind: FaultKind,
    /// Seconds after the start of the chaos phase.
    pub at: f64,
    /// Seconds the fault lasts (0 for a burst).
    pub duration: f64,
    /// Random number picking the target (gateway, publisher, instance, cluster node) modulo
    /// their count, so the schedule does not depend on the system's size.
    pub target: u64,
}

/// Draws the schedule: faults starting within `[0, seconds)` with exponential gaps of mean
/// `mean_gap` seconds.
pub fn plan(seed: u64, seconds: f64, mean_gap: f64, variant: RedisVariant) -> Vec<PlannedFault> {
    let mut rng = Rng::new(seed ^ 0x00C4_A05C_4A05_5EED);
    let mut kinds = variant.kinds();
    rng.shuffle(&mut kinds);
    let mut out = Vec::new();
    let mut at = rng.range(0.5, mean_gap);
    while at < seconds {
        let kind = kinds[out.len() % kinds.len()];
        if out.len() % kinds.len() == kinds.len() - 1 {
            rng.shuffle(&mut kinds);
        }
        let (lo, hi) = kind.duration_range();
        out.push(PlannedFault {
            id: out.len(),
            kind,
            at,
            duration: rng.range(lo, hi),
            target: rng.next_u64(),
        });
        at += -mean_gap * (1.0 - rng.unit()).ln();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_the_same_schedule_and_covers_every_kind() {
        let a = plan(7, 600.0, 6.0, RedisVariant::Single);
        let b = plan(7, 600.0, 6.0, RedisVariant::Single);
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        assert!(a.len() > 50, "{} faults", a.len());
        for kind in RedisVariant::Single.kinds() {
            assert!(a.iter().filter(|f| f.kind == kind).count() >= 5, "{kind:?}");
        }
        assert!(a.windows(2).all(|w| w[0].at <= w[1].at));
        assert_ne!(
            format!("{a:?}"),
            format!("{:?}", plan(8, 600.0, 6.0, RedisVariant::Single))
        );
    }
}
