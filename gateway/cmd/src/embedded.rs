//! The publisher embedded in the gateway's process (`--embedded-publisher`): `/v1/events` on the
//! gateway's public listener, publishing into the hub (no Redis) or to Redis as a standalone
//! publisher would, with its metrics in the gateway's registry.

use anyhow::Context;
use prometheus_client::registry::Registry;
use ryze_core::bus::Bus;
use ryze_gateway::config::Config;
use ryze_gateway::embed::{Guest, Host};
use ryze_publisher::metrics::Metrics;
use ryze_publisher::outlet::{RedisOptions, RedisOutlet};
use ryze_publisher::{Publisher, Settings};
use secrecy::ExposeSecret;
use std::sync::Arc;

/// The embedded publisher, configured from the gateway's settings.
pub struct EmbeddedPublisher {
    config: Config,
    settings: Settings,
    metrics: Option<Metrics>,
}

impl EmbeddedPublisher {
    /// From the gateway's config (validation already required the publisher's settings).
    pub fn new(config: &Config) -> anyhow::Result<EmbeddedPublisher> {
        let settings = Settings::new(&config.ingest, config.config_cache_ttl)?;
        Ok(EmbeddedPublisher {
            config: config.clone(),
            settings,
            metrics: None,
        })
    }
}

impl Guest for EmbeddedPublisher {
    fn register_metrics(&mut self, registry: &mut Registry) {
        self.metrics = Some(Metrics::register_in(registry));
    }

    fn start(self: Box<Self>, host: Host) -> anyhow::Result<axum::Router> {
        let metrics = self.metrics.unwrap_or_default();
        let bus: Arc<dyn Bus> = match host.bus {
            Some(bus) => bus,
            None => {
                let config = &self.config;
                let url = config.redis.url.as_ref().context("REDIS_URL")?;
                let outlet = RedisOutlet::connect(
                    url.expose_secret(),
                    &config.redis.tls_files(),
                    host.names.clone(),
                    RedisOptions {
                        stall_timeout: config.redis.stall_timeout,
                        history: config.history.retention(),
                    },
                )?;
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
