//! The publisher embedded in the gateway's process (`--embedded-publisher`): `/v1/events` on the
//! gateway's public listener, publishing into the hub (no Redis) or to Redis as a standalone
//! publisher would, with its metrics in the gateway's registry.

use prometheus_client::registry::Registry;
use ryze_core::bus::{Bus, BusError};
use ryze_core::history::Retention;
use ryze_core::settings::Ingest;
use ryze_gateway::config::Validated;
use ryze_gateway::embed::{Fanout, Guest, Host};
use ryze_publisher::metrics::Metrics;
use ryze_publisher::outlet::RedisOutlet;
use ryze_publisher::{Publisher, Settings};
use std::sync::Arc;

/// The embedded publisher, configured from the gateway's settings.
pub struct EmbeddedPublisher {
    settings: Settings,
    history: Option<Retention>,
    metrics: Option<Metrics>,
}

impl EmbeddedPublisher {
    /// From the gateway's validated config and its `/v1/events` settings.
    pub fn new(config: &Validated, ingest: Ingest) -> EmbeddedPublisher {
        EmbeddedPublisher {
            settings: Settings::new(ingest, config.gateway.config_cache_ttl),
            history: config.history.retention(),
            metrics: None,
        }
    }
}

impl Guest for EmbeddedPublisher {
    fn register_metrics(&mut self, registry: &mut Registry) {
        self.metrics = Some(Metrics::register_in(registry));
    }

    fn start(self: Box<Self>, host: Host) -> Result<axum::Router, BusError> {
        let metrics = self.metrics.unwrap_or_default();
        let bus: Arc<dyn Bus> = match host.fanout {
            Fanout::InProcess(bus) => bus,
            Fanout::Redis(target) => {
                let outlet = RedisOutlet::connect(target, host.names.clone(), self.history)?;
                outlet.watch("default", metrics.clone(), &host.tasks, host.stop.clone());
                outlet
            }
        };
        let publisher = Publisher::with_metrics(host.store, bus, self.settings, metrics);
        host.tasks
            .spawn(ryze_publisher::relay::run(publisher.clone(), host.stop));
        Ok(ryze_publisher::routes::ingest(publisher))
    }
}
