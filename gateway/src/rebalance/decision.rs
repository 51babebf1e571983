//! The pure part of rebalancing (D39): from this pod's count and the fleet's records, how many
//! connections to close. No I/O, no clock: the caller passes the pod's uptime.

use std::time::Duration;

/// Another pod's record, as read from Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodLoad {
    /// Its open connections.
    pub connections: u64,
    /// Whether it reported ready.
    pub ready: bool,
}

impl PodLoad {
    /// Parses `"<connections> <ready 0|1>"`; `None` for anything else.
    pub fn parse(value: &str) -> Option<PodLoad> {
        let mut parts = value.split(' ');
        let connections = parts.next()?.parse().ok()?;
        let ready = match parts.next()? {
            "1" => true,
            "0" => false,
            _ => return None,
        };
        parts
            .next()
            .is_none()
            .then_some(PodLoad { connections, ready })
    }

    /// The value written to Redis.
    pub fn encode(self) -> String {
        format!("{} {}", self.connections, u8::from(self.ready))
    }
}

/// What this pod sees: itself and the other pods with a live record.
#[derive(Debug, Clone, PartialEq)]
pub struct Fleet {
    /// This pod's open connections.
    pub own: u64,
    /// Whether this pod is ready.
    pub own_ready: bool,
    /// Every other pod with a live record.
    pub others: Vec<PodLoad>,
    /// Clients counted nowhere right now but still part of the fleet: closed by this pod and
    /// reconnecting, or on a pod whose record is older than their reconnect. Counting them
    /// keeps the mean, and so the line this pod closes down to, from sinking while they move.
    pub moving: u64,
}

impl Fleet {
    /// Pods in the fleet, this one included.
    pub fn pods(&self) -> usize {
        self.others.len() + 1
    }

    /// Connections the records and this pod's own count show (without [`Fleet::moving`]).
    pub fn counted(&self) -> u64 {
        self.own + self.others.iter().map(|p| p.connections).sum::<u64>()
    }

    /// Mean connections per pod, this one included, [`Fleet::moving`] included.
    pub fn mean(&self) -> f64 {
        (self.counted() + self.moving) as f64 / self.pods() as f64
    }

    /// Takes this pod's fresh count and keeps the fleet total: clients that came back to this
    /// pod stop being moving, and a total that grew (new clients) is taken as it is.
    pub fn recount(&mut self, own: u64) {
        let total = self.counted() + self.moving;
        self.own = own;
        self.moving = total.saturating_sub(self.counted());
    }

    /// This pod closed one connection: its client is moving.
    pub fn closed_one(&mut self) {
        self.own = self.own.saturating_sub(1);
        self.moving += 1;
    }

    /// This pod's count over the mean (0 when the fleet holds nothing).
    pub fn share(&self) -> f64 {
        let mean = self.mean();
        if mean > 0.0 {
            self.own as f64 / mean
        } else {
            0.0
        }
    }
}

/// The fleet total a pod trusts while clients move. A client closed for rebalancing is counted
/// nowhere until it reconnects and its new pod's record is rewritten, so the read total sinks;
/// every pod (the closing one and those receiving the clients) keeps the largest total until
/// it has not been read, nor this pod closed, for a whole window.
#[derive(Debug, Clone, Copy)]
pub struct KeptTotal {
    total: u64,
    until: tokio::time::Instant,
}

impl KeptTotal {
    /// Nothing kept yet.
    pub fn new(now: tokio::time::Instant) -> KeptTotal {
        KeptTotal {
            total: 0,
            until: now,
        }
    }

    /// Takes a read total; returns the clients moving (kept total − `counted`). A total that
    /// grew, or one that stayed lower for a whole `window`, is taken as it is.
    pub fn read(&mut self, counted: u64, now: tokio::time::Instant, window: Duration) -> u64 {
        if counted >= self.total || now >= self.until {
            self.total = counted;
            self.until = now + window;
        }
        self.total - counted
    }

    /// This pod closed connections of a fleet of `total`: keep it for `window`.
    pub fn closed(&mut self, total: u64, now: tokio::time::Instant, window: Duration) {
        self.total = self.total.max(total);
        self.until = now + window;
    }
}

/// The rebalancing settings the decision needs.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// `REBALANCE_THRESHOLD`: 0 = off, else ≥ 1.
    pub threshold: f64,
    /// `REBALANCE_WARMUP`: no action during the pod's own first this-long.
    pub warmup: Duration,
}

/// What rebalancing does now, and why (the `outcome` label of
/// `ryze_gateway_rebalance_decisions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// `REBALANCE_THRESHOLD=0`.
    Off,
    /// Within the pod's own warm-up.
    Warmup,
    /// No other pod has a live record.
    SinglePod,
    /// This pod or another one is not ready (a deploy, a Redis outage): clients closed now
    /// could land on a pod about to leave.
    NotReady,
    /// Within the threshold.
    Balanced,
    /// Close this many (≥ 1).
    Close(u64),
}

impl Decision {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Decision::Off => "off",
            Decision::Warmup => "warmup",
            Decision::SinglePod => "single_pod",
            Decision::NotReady => "not_ready",
            Decision::Balanced => "balanced",
            Decision::Close(_) => "closing",
        }
    }
}

/// Decides: above `threshold × mean`, close `ceil(own - threshold × mean)`, but never more
/// than `own - mean` (a pod never pushes itself below the mean, so pods do not trade clients
/// back and forth).
pub fn decide(fleet: &Fleet, policy: Policy, uptime: Duration) -> Decision {
    if policy.threshold <= 0.0 {
        return Decision::Off;
    }
    if uptime < policy.warmup {
        return Decision::Warmup;
    }
    if fleet.others.is_empty() {
        return Decision::SinglePod;
    }
    if !fleet.own_ready || fleet.others.iter().any(|p| !p.ready) {
        return Decision::NotReady;
    }
    let mean = fleet.mean();
    let own = fleet.own as f64;
    let line = policy.threshold * mean;
    if own <= line {
        return Decision::Balanced;
    }
    let excess = (own - line).ceil();
    let to_mean = (own - mean).floor();
    let n = excess.min(to_mean);
    if n >= 1.0 {
        Decision::Close(n as u64)
    } else {
        Decision::Balanced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        threshold: 1.25,
        warmup: Duration::from_secs(60),
    };
    const UP: Duration = Duration::from_secs(120);

    fn fleet(own: u64, others: &[u64]) -> Fleet {
        Fleet {
            own,
            own_ready: true,
            others: others
                .iter()
                .map(|&connections| PodLoad {
                    connections,
                    ready: true,
                })
                .collect(),
            moving: 0,
        }
    }

    #[test]
    fn a_sunk_total_is_kept_for_a_window_after_its_last_read() {
        let window = Duration::from_secs(30);
        let t0 = tokio::time::Instant::now();
        let mut kept = KeptTotal::new(t0);
        assert_eq!(kept.read(2000, t0, window), 0);
        // Another pod closed 600: they are moving, whoever reads.
        assert_eq!(kept.read(1400, t0 + Duration::from_secs(10), window), 600);
        // Back at the total: the window starts again from this read.
        assert_eq!(kept.read(2000, t0 + Duration::from_secs(20), window), 0);
        assert_eq!(kept.read(1500, t0 + Duration::from_secs(49), window), 500);
        // Lower for a whole window: clients really left.
        assert_eq!(kept.read(1500, t0 + Duration::from_secs(50), window), 0);
        // A total that grew is taken at once.
        assert_eq!(kept.read(1700, t0 + Duration::from_secs(51), window), 0);
    }

    #[test]
    fn closing_keeps_the_total_from_the_last_close() {
        let window = Duration::from_secs(30);
        let t0 = tokio::time::Instant::now();
        let mut kept = KeptTotal::new(t0);
        assert_eq!(kept.read(300, t0, window), 0);
        kept.closed(300, t0 + Duration::from_secs(25), window);
        assert_eq!(kept.read(200, t0 + Duration::from_secs(54), window), 100);
        assert_eq!(kept.read(200, t0 + Duration::from_secs(55), window), 0);
    }

    #[test]
    fn closes_the_excess_over_the_threshold() {
        // mean 100, line 125: close 175.
        assert_eq!(
            decide(&fleet(300, &[0, 0]), POLICY, UP),
            Decision::Close(175)
        );
        // mean 110, line 137.5: ceil(12.5) = 13.
        assert_eq!(
            decide(&fleet(150, &[90, 90]), POLICY, UP),
            Decision::Close(13)
        );
    }

    #[test]
    fn never_below_the_mean() {
        // Threshold 1.0: the excess is exactly the distance to the mean.
        let policy = Policy {
            threshold: 1.0,
            ..POLICY
        };
        assert_eq!(
            decide(&fleet(300, &[0, 0]), policy, UP),
            Decision::Close(200)
        );
        // mean 1.5 with 2 and 1: line 1.5, excess ceil(0.5) = 1, to the mean floor(0.5) = 0.
        assert_eq!(decide(&fleet(2, &[1]), policy, UP), Decision::Balanced);
    }

    #[test]
    fn within_the_threshold_does_nothing() {
        assert_eq!(
            decide(&fleet(125, &[90, 85]), POLICY, UP),
            Decision::Balanced
        );
        assert_eq!(decide(&fleet(0, &[0, 0]), POLICY, UP), Decision::Balanced);
        assert_eq!(
            decide(&fleet(10, &[500, 500]), POLICY, UP),
            Decision::Balanced
        );
    }

    #[test]
    fn off_single_pod_warmup_and_not_ready() {
        let off = Policy {
            threshold: 0.0,
            ..POLICY
        };
        assert_eq!(decide(&fleet(300, &[0, 0]), off, UP), Decision::Off);
        assert_eq!(decide(&fleet(300, &[]), POLICY, UP), Decision::SinglePod);
        assert_eq!(
            decide(&fleet(300, &[0, 0]), POLICY, Duration::from_secs(59)),
            Decision::Warmup
        );
        let mut f = fleet(300, &[0, 0]);
        f.others[1].ready = false;
        assert_eq!(decide(&f, POLICY, UP), Decision::NotReady);
        let mut f = fleet(300, &[0, 0]);
        f.own_ready = false;
        assert_eq!(decide(&f, POLICY, UP), Decision::NotReady);
    }

    #[tokio::test(start_paused = true)]
    async fn warmup_ends_after_its_duration() {
        let started = tokio::time::Instant::now();
        let f = fleet(300, &[0, 0]);
        assert_eq!(decide(&f, POLICY, started.elapsed()), Decision::Warmup);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(decide(&f, POLICY, started.elapsed()), Decision::Warmup);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(decide(&f, POLICY, started.elapsed()), Decision::Close(175));
    }

    #[test]
    fn moving_clients_keep_the_line() {
        // 300 on this pod, 0 elsewhere: line 125. After 100 closes, with the other records not
        // yet showing them, the counted mean is 66.7 (line 83): without the moving clients the
        // pod would close 117 more and end below the real line.
        let mut f = fleet(200, &[0, 0]);
        assert_eq!(decide(&f, POLICY, UP), Decision::Close(117));
        f.moving = 100;
        assert_eq!(f.counted(), 200);
        assert_eq!(decide(&f, POLICY, UP), Decision::Close(75));
        f.own = 125;
        f.moving = 175;
        assert_eq!(decide(&f, POLICY, UP), Decision::Balanced);
    }

    #[test]
    fn closes_and_recounts_keep_the_total() {
        let mut f = fleet(300, &[0, 0]);
        for _ in 0..10 {
            f.closed_one();
        }
        assert_eq!((f.own, f.moving, f.mean()), (290, 10, 100.0));
        // Three came back to this pod.
        f.recount(293);
        assert_eq!((f.own, f.moving, f.mean()), (293, 7, 100.0));
        // Fifteen new clients arrived: the total grows.
        f.recount(315);
        assert_eq!((f.own, f.moving, f.mean()), (315, 0, 105.0));
    }

    #[test]
    fn mean_and_share() {
        let f = fleet(300, &[0, 0]);
        assert_eq!(f.pods(), 3);
        assert!((f.mean() - 100.0).abs() < 1e-9);
        assert!((f.share() - 3.0).abs() < 1e-9);
        assert_eq!(fleet(0, &[0]).share(), 0.0);
    }

    #[test]
    fn records_round_trip_and_reject_garbage() {
        let p = PodLoad {
            connections: 42,
            ready: true,
        };
        assert_eq!(p.encode(), "42 1");
        assert_eq!(PodLoad::parse("42 1"), Some(p));
        assert_eq!(
            PodLoad::parse("0 0"),
            Some(PodLoad {
                connections: 0,
                ready: false
            })
        );
        for bad in ["", "42", "42 2", "x 1", "42 1 extra", "-1 1"] {
            assert_eq!(PodLoad::parse(bad), None, "{bad:?}");
        }
    }
}
