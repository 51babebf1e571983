//! Rebalancing's view of the fleet (D39): the mean, this pod's share, the pods, and the
//! decisions taken.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct Outcome {
    pub(super) outcome: &'static str,
}

/// Rebalancing's view of the fleet (D39).
pub(super) struct FleetGauges {
    pub(super) mean: Gauge<f64, AtomicU64>,
    pub(super) share: Gauge<f64, AtomicU64>,
    pub(super) pods: Gauge,
    pub(super) decisions: Family<Outcome, Counter>,
}

impl FleetGauges {
    pub(super) fn register(registry: &mut Registry) -> FleetGauges {
        let fleet = FleetGauges {
            mean: Gauge::default(),
            share: Gauge::default(),
            pods: Gauge::default(),
            decisions: Family::default(),
        };
        for outcome in [
            "off",
            "warmup",
            "single_pod",
            "not_ready",
            "balanced",
            "closing",
            "unknown",
        ] {
            let _ = fleet.decisions.get_or_create(&Outcome { outcome });
        }
        registry.register(
            "ryze_gateway_fleet_mean_connections",
            "Mean open connections per gateway pod, from the pods' Redis records (0 without Redis)",
            fleet.mean.clone(),
        );
        registry.register(
            "ryze_gateway_fleet_share",
            "This pod's open connections over the fleet mean (rebalancing acts above REBALANCE_THRESHOLD)",
            fleet.share.clone(),
        );
        registry.register(
            "ryze_gateway_fleet_pods",
            "Gateway pods with a live Redis record, this one included",
            fleet.pods.clone(),
        );
        registry.register(
            "ryze_gateway_rebalance_decisions",
            "Rebalancing evaluations, by outcome (unknown: the fleet could not be read)",
            fleet.decisions.clone(),
        );
        fleet
    }
}
