//! The publisher's configuration and admin subcommands, parsed once at start-up.

use clap::{Parser, Subcommand};
use ryze_core::config::parse_duration;
use ryze_core::history::HistoryConfig;
use ryze_core::settings::{DatabaseSettings, IngestSettings, RedisSettings};
use ryze_telemetry::TelemetrySettings;
use secrecy::{ExposeSecret, SecretString};
use std::net::SocketAddr;
use std::time::Duration;
use uuid::Uuid;

/// Log output format (one definition for both binaries).
pub use ryze_telemetry::LogFormat;

/// `ryze-publisher`: internal ingest service and admin CLI.
#[derive(Debug, Clone, Parser)]
#[command(name = "ryze-publisher", version, about)]
pub struct Config {
    /// Admin command; without one, the service runs.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Listener for /v1/events, /livez, /readyz, /metrics.
    #[arg(
        long,
        env = "LISTEN_ADDR",
        default_value = "0.0.0.0:8081",
        global = true
    )]
    pub listen_addr: SocketAddr,
    /// Postgres.
    #[command(flatten)]
    pub database: DatabaseSettings,
    /// The fan-out Redis (or REGION_REDIS_URLS, below).
    #[command(flatten)]
    pub redis: RedisSettings,
    /// Logs and traces.
    #[command(flatten)]
    pub telemetry: TelemetrySettings,
    /// `/v1/events`.
    #[command(flatten)]
    pub ingest: IngestSettings,
    /// Publish to every region: `eu=redis://…,us=redis://…` (replaces REDIS_URL for publishing).
    #[arg(long, env = "REGION_REDIS_URLS", hide_env_values = true, global = true)]
    pub region_redis_urls: Option<SecretString>,
    /// Per-instance history in Redis (SPEC D37).
    #[command(flatten)]
    pub history: HistoryConfig,
    /// Safety-net TTL of the config cache (NOTIFY normally invalidates at once).
    #[arg(long, env = "CONFIG_CACHE_TTL", default_value = "5s", value_parser = parse_duration, global = true)]
    pub config_cache_ttl: Duration,
    /// Upper bound on shutdown.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration, global = true)]
    pub shutdown_timeout: Duration,
}

/// Admin commands; each prints JSON on stdout.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Applies the schema (idempotent).
    Migrate,
    /// Accounts.
    Account {
        #[command(subcommand)]
        action: AccountCommand,
    },
    /// Instances.
    Instance {
        #[command(subcommand)]
        action: InstanceCommand,
    },
}

/// `account …`
#[derive(Debug, Clone, Subcommand)]
pub enum AccountCommand {
    /// Creates an account and prints `{"id","token"}`.
    Create {
        /// Display name.
        #[arg(long)]
        name: Option<String>,
        /// Token to use instead of a generated UUIDv4.
        #[arg(long)]
        token: Option<String>,
    },
}

/// `instance …`
#[derive(Debug, Clone, Subcommand)]
pub enum InstanceCommand {
    /// Creates an instance and prints `{"id","name","token"}`.
    Create {
        /// Owning account id.
        #[arg(long)]
        account: Uuid,
        /// Instance name (unique within the account).
        #[arg(long)]
        name: String,
        /// Token to use instead of a generated UUIDv4.
        #[arg(long)]
        token: Option<String>,
    },
    /// Deletes an instance (its config goes with it; its clients are closed with 1008).
    Delete {
        /// Owning account id.
        #[arg(long)]
        account: Uuid,
        /// Instance name.
        #[arg(long)]
        name: String,
    },
}

impl Config {
    /// Every problem clap cannot see, all at once.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = self.database.problems();
        problems.extend(self.telemetry.problems());
        problems.extend(self.history.problems());
        if self.command.is_some() {
            // Admin commands use Postgres alone.
            return ryze_core::config::into_result(problems);
        }
        if self.redis.url.is_none() && self.region_redis_urls.is_none() {
            problems.push("REDIS_URL (or REGION_REDIS_URLS) is required".to_owned());
        }
        let mut regions_use_tls = false;
        if let Some(spec) = &self.region_redis_urls {
            match crate::outlet::regions::parse_regions(spec.expose_secret()) {
                Ok(regions) => {
                    regions_use_tls = regions.iter().any(|(_, url)| {
                        ryze_core::redis::RedisTarget::parse(url).is_ok_and(|t| t.tls)
                    })
                }
                Err(e) => problems.push(format!("REGION_REDIS_URLS: {e}")),
            }
        }
        problems.extend(self.redis.problems(regions_use_tls));
        problems.extend(self.ingest.problems(""));
        ryze_core::config::into_result(problems)
    }
}
