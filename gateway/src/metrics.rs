//! Prometheus metrics of the gateway (CONTRACT §6), served on the admin listener.
//!
//! Label values are bounded: reasons and statuses are fixed sets, and per-instance series are
//! limited to the `METRICS_INSTANCE_LABELS` busiest instances, recomputed at each scrape.

use fleet::{FleetGauges, Outcome};
use latency::Latency;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use ryze_core::wire::now_micros;
use std::sync::Arc;
use uuid::Uuid;

mod fleet;
mod latency;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Connection {
    connection: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Status {
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Instance {
    instance: String,
}

struct Inner {
    registry: Registry,
    fleet: FleetGauges,
    connections: Gauge,
    opened: Counter,
    closed: Family<Reason, Counter>,
    rejected: Family<Status, Counter>,
    frames_sent: Counter,
    frames_dropped: Family<Reason, Counter>,
    subscriptions: Gauge,
    subscriptions_confirmed: Gauge,
    instance_connections: Family<Instance, Gauge>,
    publish_to_send: Latency,
    rate_limit_fallback: Counter,
    redis_reconnects: Counter,
    redis_stalls: Family<Connection, Counter>,
    frames_replayed: Counter,
    gaps_sent: Counter,
    history_read: Histogram,
    connection_cap: Gauge,
    accept_errors: Family<Reason, Counter>,
    instance_labels: usize,
}

/// A cheap-to-clone handle on every gateway metric.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

/// Latency buckets from 100 µs to 10 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

impl Metrics {
    /// Registers every series; `instance_labels` caps the per-instance gauge.
    pub fn new(instance_labels: usize) -> Metrics {
        Metrics::with(instance_labels, |_| ())
    }

    /// Like [`Metrics::new`], with `guest`'s families in the same registry (the embedded
    /// publisher's), so `/metrics` is one exposition.
    pub fn with(instance_labels: usize, guest: impl FnOnce(&mut Registry)) -> Metrics {
        let mut registry = Registry::default();
        guest(&mut registry);
        let connections = Gauge::default();
        let opened = Counter::default();
        let closed = Family::<Reason, Counter>::default();
        let rejected = Family::<Status, Counter>::default();
        let frames_sent = Counter::default();
        let frames_dropped = Family::<Reason, Counter>::default();
        let subscriptions = Gauge::default();
        let subscriptions_confirmed = Gauge::default();
        let instance_connections = Family::<Instance, Gauge>::default();
        let publish_to_send = Latency::new(&LATENCY_BUCKETS);
        let rate_limit_fallback = Counter::default();
        let redis_reconnects = Counter::default();
        let redis_stalls = Family::<Connection, Counter>::default();
        let frames_replayed = Counter::default();
        let gaps_sent = Counter::default();
        let history_read = Histogram::new(LATENCY_BUCKETS);
        registry.register(
            "ryze_gateway_frames_replayed",
            "Retained frames written to resuming (since) connections before their live frames",
            frames_replayed.clone(),
        );
        registry.register(
            "ryze_gateway_stream_gaps",
            "stream.gap frames sent: a resuming client's offset was no longer retained",
            gaps_sent.clone(),
        );
        registry.register(
            "ryze_gateway_history_read_seconds",
            "Time to read an instance's history for a resuming connection",
            history_read.clone(),
        );
        let connection_cap = Gauge::default();
        let accept_errors = Family::<Reason, Counter>::default();
        for reason in ["open_files", "other"] {
            let _ = accept_errors.get_or_create(&Reason { reason });
        }
        registry.register(
            "ryze_gateway_connection_cap",
            "Effective connection cap: min(MAX_CONNECTIONS, open-files soft limit - reserve)",
            connection_cap.clone(),
        );
        registry.register(
            "ryze_gateway_accept_errors",
            "accept() failures on either listener, by reason (open_files: EMFILE/ENFILE)",
            accept_errors.clone(),
        );
        for connection in ["subscriber", "commands"] {
            // Present at 0 from the start, so alerts can use rate() at once.
            let _ = redis_stalls.get_or_create(&Connection { connection });
        }
        registry.register(
            "ryze_gateway_redis_stalls",
            "Redis connections found stalled (silent past REDIS_STALL_TIMEOUT) and replaced, by connection",
            redis_stalls.clone(),
        );
        registry.register(
            "ryze_gateway_connections",
            "Open WebSocket connections on this pod",
            connections.clone(),
        );
        registry.register(
            "ryze_gateway_connections_opened",
            "WebSocket connections opened",
            opened.clone(),
        );
        registry.register(
            "ryze_gateway_connections_closed",
            "WebSocket connections closed, by reason",
            closed.clone(),
        );
        registry.register(
            "ryze_gateway_upgrade_rejected",
            "Upgrade requests refused before the 101, by HTTP status",
            rejected.clone(),
        );
        registry.register(
            "ryze_gateway_frames_sent",
            "Frames written to client sockets",
            frames_sent.clone(),
        );
        registry.register(
            "ryze_gateway_frames_dropped",
            "Frames not delivered, by reason",
            frames_dropped.clone(),
        );
        registry.register(
            "ryze_gateway_redis_subscriptions",
            "Instance channels this pod wants subscribed",
            subscriptions.clone(),
        );
        registry.register(
            "ryze_gateway_redis_subscriptions_confirmed",
            "Instance channel subscriptions confirmed on the current Redis connection",
            subscriptions_confirmed.clone(),
        );
        registry.register(
            "ryze_gateway_instance_connections",
            "Open connections per instance (busiest METRICS_INSTANCE_LABELS instances only)",
            instance_connections.clone(),
        );
        registry.register(
            "ryze_publish_to_send_seconds",
            "Publisher stamp to gateway socket write",
            publish_to_send.clone(),
        );
        registry.register(
            "ryze_gateway_rate_limit_fallback",
            "Rate-limit checks answered by per-pod counters because Redis was unreachable",
            rate_limit_fallback.clone(),
        );
        registry.register(
            "ryze_gateway_redis_reconnects",
            "Reconnections of the Redis subscriber connection",
            redis_reconnects.clone(),
        );
        let fleet = FleetGauges::register(&mut registry);
        Metrics(Arc::new(Inner {
            registry,
            fleet,
            connections,
            opened,
            closed,
            rejected,
            frames_sent,
            frames_dropped,
            subscriptions,
            subscriptions_confirmed,
            instance_connections,
            publish_to_send,
            rate_limit_fallback,
            redis_reconnects,
            redis_stalls,
            frames_replayed,
            gaps_sent,
            history_read,
            connection_cap,
            accept_errors,
            instance_labels,
        }))
    }

    /// A connection completed its upgrade.
    pub fn connection_opened(&self) {
        self.0.opened.inc();
        self.0.connections.inc();
    }

    /// A connection ended, for `reason`.
    pub fn connection_closed(&self, reason: &'static str) {
        self.0.connections.dec();
        self.0.closed.get_or_create(&Reason { reason }).inc();
    }

    /// An upgrade was refused with `status`.
    pub fn upgrade_rejected(&self, status: u16) {
        self.0.rejected.get_or_create(&Status { status }).inc();
    }

    /// `n` frames written; `latencies` in seconds since the publisher's stamp.
    pub fn frames_sent(&self, n: u64, latencies: impl Iterator<Item = f64>) {
        self.0.frames_sent.inc_by(n);
        latencies.for_each(|l| self.0.publish_to_send.observe_n(l, 1));
    }

    /// `n` copies of the frame stamped `published_micros` written just now.
    pub fn frames_sent_alike(&self, n: u64, published_micros: u64) {
        if n > 0 {
            self.0.frames_sent.inc_by(n);
            let secs = now_micros().saturating_sub(published_micros) as f64 / 1e6;
            self.0.publish_to_send.observe_n(secs, n);
        }
    }

    /// One frame dropped for `reason`.
    pub fn frame_dropped(&self, reason: &'static str) {
        self.frames_dropped_n(reason, 1);
    }

    /// `n` frames dropped for `reason`.
    pub fn frames_dropped_n(&self, reason: &'static str, n: u64) {
        let reason = Reason { reason };
        self.0.frames_dropped.get_or_create(&reason).inc_by(n);
    }

    /// A rate-limit check fell back to per-pod counters.
    pub fn rate_limit_fallback(&self) {
        self.0.rate_limit_fallback.inc();
    }

    /// Retained frames and `stream.gap` frames written to a resuming connection.
    pub fn frames_replayed(&self, frames: u64, gaps: u64) {
        self.0.frames_replayed.inc_by(frames);
        self.0.gaps_sent.inc_by(gaps);
    }

    /// One history read for a resuming connection took `seconds`.
    pub fn history_read(&self, seconds: f64) {
        self.0.history_read.observe(seconds);
    }

    /// A Redis connection was found stalled and is being replaced (D38).
    pub fn redis_stall(&self, connection: &'static str) {
        self.0
            .redis_stalls
            .get_or_create(&Connection { connection })
            .inc();
    }

    /// The effective connection cap (set once at start-up).
    pub fn set_connection_cap(&self, cap: usize) {
        self.0
            .connection_cap
            .set(i64::try_from(cap).unwrap_or(i64::MAX));
    }

    /// `accept()` failed; `reason` is `open_files` (EMFILE/ENFILE) or `other`.
    pub fn accept_error(&self, reason: &'static str) {
        self.0.accept_errors.get_or_create(&Reason { reason }).inc();
    }

    /// Rebalancing read the fleet: `pods` with a record, `mean` connections, this pod's `share`.
    pub fn fleet_observed(&self, pods: usize, mean: f64, share: f64) {
        self.0.fleet.pods.set(pods as i64);
        self.0.fleet.mean.set(mean);
        self.0.fleet.share.set(share);
    }

    /// One rebalancing evaluation ended with `outcome`.
    pub fn rebalance_decision(&self, outcome: &'static str) {
        self.0
            .fleet
            .decisions
            .get_or_create(&Outcome { outcome })
            .inc();
    }

    /// One more reconnect of the subscriber connection.
    pub fn redis_reconnect(&self) {
        self.0.redis_reconnects.inc();
    }

    /// Renders the text exposition, refreshing the gauges computed at scrape time.
    pub fn render(
        &self,
        subscriptions: (usize, usize),
        mut per_instance: Vec<(Uuid, usize)>,
    ) -> String {
        self.0.subscriptions.set(subscriptions.0 as i64);
        self.0.subscriptions_confirmed.set(subscriptions.1 as i64);
        per_instance.sort_unstable_by_key(|e| std::cmp::Reverse(e.1));
        per_instance.truncate(self.0.instance_labels);
        self.0.instance_connections.clear();
        for (id, n) in per_instance {
            self.0
                .instance_connections
                .get_or_create(&Instance {
                    instance: id.to_string(),
                })
                .set(n as i64);
        }
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.0.registry);
        out
    }
}
