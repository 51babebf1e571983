//! Publisher metrics (CONTRACT §6): `ryze_publisher_events_total{event,outcome}`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// What became of an ingested event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Sent to the bus.
    Published,
    /// Dropped by the `events` filter.
    Filtered,
    /// Dropped: the config is disabled or absent.
    Disabled,
    /// Skipped: no gateway holds a client of the instance.
    NoListeners,
    /// The instance id names no instance.
    UnknownInstance,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Published => "published",
            Outcome::Filtered => "filtered",
            Outcome::Disabled => "disabled",
            Outcome::NoListeners => "no_listeners",
            Outcome::UnknownInstance => "unknown_instance",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    event: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegionLabel {
    region: String,
}

struct Inner {
    /// Its own, or `None` when registered in the gateway's (embedded mode).
    registry: Option<Registry>,
    events: Family<Labels, Counter>,
    region_dropped: Family<RegionLabel, Counter>,
    redis_stalls: Family<RegionLabel, Counter>,
}

/// The publisher's metrics.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl Metrics {
    /// Registers the series in a registry of its own.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let inner = Metrics::families(&mut registry);
        Metrics(Arc::new(Inner {
            registry: Some(registry),
            ..inner
        }))
    }

    /// Registers the series in `registry` (the gateway's, in embedded mode): one exposition,
    /// rendered by its owner.
    pub fn register_in(registry: &mut Registry) -> Metrics {
        Metrics(Arc::new(Metrics::families(registry)))
    }

    fn families(registry: &mut Registry) -> Inner {
        let events = Family::<Labels, Counter>::default();
        let region_dropped = Family::<RegionLabel, Counter>::default();
        registry.register(
            "ryze_publisher_events",
            "Ingested events by type and outcome",
            events.clone(),
        );
        registry.register(
            "ryze_publisher_region_dropped",
            "Messages not delivered to a region's Redis (queue full or region unreachable)",
            region_dropped.clone(),
        );
        let redis_stalls = Family::<RegionLabel, Counter>::default();
        registry.register(
            "ryze_publisher_redis_stalls",
            "Redis connections found stalled (no answer within REDIS_STALL_TIMEOUT) and replaced, by region (`default` without REGION_REDIS_URLS)",
            redis_stalls.clone(),
        );
        Inner {
            registry: None,
            events,
            region_dropped,
            redis_stalls,
        }
    }

    /// Counts one stalled Redis connection (D38).
    pub fn redis_stall(&self, region: &str) {
        self.0
            .redis_stalls
            .get_or_create(&RegionLabel {
                region: region.to_owned(),
            })
            .inc();
    }

    /// Counts one event.
    pub fn event(&self, event: &'static str, outcome: Outcome) {
        self.0
            .events
            .get_or_create(&Labels {
                event,
                outcome: outcome.label(),
            })
            .inc();
    }

    /// `n` messages for `region` were dropped.
    pub fn region_dropped(&self, region: &str, n: u64) {
        self.0
            .region_dropped
            .get_or_create(&RegionLabel {
                region: region.to_owned(),
            })
            .inc_by(n);
    }

    /// Text exposition (empty when the registry is the gateway's).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Some(registry) = &self.0.registry {
            let _ = prometheus_client::encoding::text::encode(&mut out, registry);
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
