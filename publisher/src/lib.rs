//! ryze-publisher: takes raw events from the platform, applies each instance's config,
//! builds the envelope once, and publishes it to the instance's fan-out channel.
//!
//! Layout:
//! - [`config`]: flags, environment and admin subcommands.
//! - [`app`]: the standalone service (ingest + admin endpoints) and its shutdown.
//! - [`routes`]: `POST /v1/events` (also mounted by the gateway in embedded mode).
//! - [`ingest`]: validation, filtering, shaping, publishing of one request.
//! - [`cache`]: per-instance delivery config, invalidated by Postgres NOTIFY.
//! - [`relay`]: NOTIFY → cache invalidation and `<prefix>:ctl` messages.
//! - [`outlet`]: where frames go (Redis, or the gateway's hub in process).
//! - [`metrics`], [`cmd`] (admin CLI), [`error`].

pub mod app;
pub mod cache;
pub mod cmd;
pub mod config;
pub mod error;
pub mod ingest;
pub mod metrics;
pub mod outlet;
pub mod relay;
pub mod routes;

use cache::ConfigCache;
use ryze_core::bus::Bus;
use ryze_core::settings::Ingest;
use ryze_core::store::Store;
use secrecy::SecretString;
use std::sync::Arc;
use std::time::Duration;

/// Publisher settings shared by the standalone and embedded modes.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `PUBLIC_BASE_URL` without a trailing `/` (D11).
    pub base_url: String,
    /// `PUBLISHER_API_KEY`.
    pub api_key: SecretString,
    /// `MAX_INGEST_BYTES`.
    pub max_ingest_bytes: usize,
    /// `CONFIG_CACHE_TTL`: the safety net behind NOTIFY.
    pub cache_ttl: Duration,
}

impl Settings {
    /// From the validated ingest settings both binaries share.
    pub fn new(ingest: Ingest, cache_ttl: Duration) -> Settings {
        Settings {
            base_url: ingest.base_url,
            api_key: ingest.api_key,
            max_ingest_bytes: ingest.max_bytes,
            cache_ttl,
        }
    }
}

/// Everything a request or the relay needs.
pub struct Publisher {
    /// Postgres.
    pub store: Store,
    /// Delivery configs by instance id.
    pub cache: ConfigCache,
    /// Where frames go.
    pub outlet: Arc<dyn Bus>,
    /// Settings.
    pub settings: Settings,
    /// Metrics.
    pub metrics: metrics::Metrics,
}

impl Publisher {
    /// A publisher over `store` and `outlet`.
    pub fn new(store: Store, outlet: Arc<dyn Bus>, settings: Settings) -> Arc<Publisher> {
        Publisher::with_metrics(store, outlet, settings, metrics::Metrics::new())
    }

    /// A publisher sharing `metrics` with its outlet (per-region drop counters).
    pub fn with_metrics(
        store: Store,
        outlet: Arc<dyn Bus>,
        settings: Settings,
        metrics: metrics::Metrics,
    ) -> Arc<Publisher> {
        Arc::new(Publisher {
            cache: ConfigCache::new(settings.cache_ttl),
            store,
            outlet,
            settings,
            metrics,
        })
    }
}
