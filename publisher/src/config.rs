//! The publisher's configuration and admin subcommands, parsed once at start-up.

use clap::{Parser, Subcommand};
use ryze_core::config::{parse_base_url, parse_bytes, parse_duration};
use ryze_core::history::HistoryConfig;
use ryze_core::tls::TlsFiles;
use ryze_core::token::TokenCipher;
use secrecy::{ExposeSecret, SecretString};
use std::net::SocketAddr;
use std::path::PathBuf;
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
    /// Postgres URL (required): `postgres://…` or `key=value …`; libpq's `sslmode`
    /// (disable, prefer [default], require, verify-ca, verify-full) and `sslrootcert` apply.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<SecretString>,
    /// Maximum pooled Postgres connections.
    #[arg(long, env = "DATABASE_POOL_SIZE", default_value_t = 16, global = true)]
    pub database_pool_size: usize,
    /// Redis URL (required to serve): redis[s]://, redis[s]-cluster://host:port,... or
    /// redis[s]-sentinel://host:port,...?sentinelServiceName=NAME (rediss = TLS).
    #[arg(long, env = "REDIS_URL", hide_env_values = true, global = true)]
    pub redis_url: Option<SecretString>,
    /// PEM bundle of the CAs that sign the Redis server certificate (rediss…); unset = the
    /// system trust store.
    #[arg(long, env = "REDIS_TLS_CA_FILE", global = true)]
    pub redis_tls_ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS to Redis (needs REDIS_TLS_KEY_FILE).
    #[arg(long, env = "REDIS_TLS_CERT_FILE", global = true)]
    pub redis_tls_cert_file: Option<PathBuf>,
    /// PEM private key of REDIS_TLS_CERT_FILE.
    #[arg(long, env = "REDIS_TLS_KEY_FILE", global = true)]
    pub redis_tls_key_file: Option<PathBuf>,
    /// Prefix of every Redis channel and key.
    #[arg(long, env = "REDIS_PREFIX", default_value = "ryze", global = true)]
    pub redis_prefix: String,
    /// Publish to every region: `eu=redis://…,us=redis://…` (replaces REDIS_URL for publishing).
    #[arg(long, env = "REGION_REDIS_URLS", hide_env_values = true, global = true)]
    pub region_redis_urls: Option<SecretString>,
    /// Base64 of a 32-byte AES-256-GCM key for instance tokens at rest (optional).
    #[arg(long, env = "ENCRYPTION_KEY", hide_env_values = true, global = true)]
    pub encryption_key: Option<SecretString>,
    /// Bearer key of /v1/events (required to serve).
    #[arg(long, env = "PUBLISHER_API_KEY", hide_env_values = true, global = true)]
    pub publisher_api_key: Option<SecretString>,
    /// instanceData.baseUrl (required to serve).
    #[arg(long, env = "PUBLIC_BASE_URL", value_parser = parse_base_url, global = true)]
    pub public_base_url: Option<String>,
    /// Largest /v1/events body.
    #[arg(long, env = "MAX_INGEST_BYTES", default_value = "16MiB", value_parser = parse_bytes, global = true)]
    pub max_ingest_bytes: usize,
    /// A Redis connection that answers nothing this long is stalled: publishes fail with 503,
    /// `/readyz` fails, and the connection is replaced (SPEC D38).
    #[arg(long, env = "REDIS_STALL_TIMEOUT", default_value = "3s", value_parser = parse_duration, global = true)]
    pub redis_stall_timeout: Duration,
    /// Per-instance history in Redis (SPEC D37).
    #[command(flatten)]
    pub history: HistoryConfig,
    /// Safety-net TTL of the config cache (NOTIFY normally invalidates at once).
    #[arg(long, env = "CONFIG_CACHE_TTL", default_value = "5s", value_parser = parse_duration, global = true)]
    pub config_cache_ttl: Duration,
    /// Upper bound on shutdown.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration, global = true)]
    pub shutdown_timeout: Duration,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// OTLP/HTTP endpoint for traces (http:// or https://); unset = no export.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", global = true)]
    pub otel_exporter_otlp_endpoint: Option<String>,
    /// PEM CA file the https:// collector's certificate must lead to (default: system CAs).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_CERTIFICATE", global = true)]
    pub otel_exporter_otlp_certificate: Option<std::path::PathBuf>,
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
        let mut problems = Vec::new();
        match &self.database_url {
            None => problems.push("DATABASE_URL is required".to_owned()),
            Some(url) => {
                problems.extend(ryze_core::config::database_url_problem(url.expose_secret()))
            }
        }
        if let Err(e) = self.cipher() {
            problems.push(e.to_string());
        }
        problems.extend(ryze_core::config::otlp_problems(
            self.otel_exporter_otlp_endpoint.as_deref(),
            self.otel_exporter_otlp_certificate.as_deref(),
        ));

        problems.extend(self.history.problems());
        if self.redis_stall_timeout < Duration::from_millis(30) {
            problems.push("REDIS_STALL_TIMEOUT must be at least 30ms".to_owned());
        }
        if self.command.is_none() {
            let mut uses_tls = false;
            match (&self.redis_url, &self.region_redis_urls) {
                (None, None) => {
                    problems.push("REDIS_URL (or REGION_REDIS_URLS) is required".to_owned())
                }
                (Some(url), _) => match ryze_core::redis::RedisTarget::parse(url.expose_secret()) {
                    Ok(target) => uses_tls |= target.tls,
                    Err(e) => problems.push(format!("REDIS_URL: {e}")),
                },
                (None, Some(_)) => {}
            }
            if let Some(spec) = &self.region_redis_urls {
                match crate::outlet::regions::parse_regions(spec.expose_secret()) {
                    Ok(regions) => {
                        uses_tls |= regions.iter().any(|(_, url)| {
                            ryze_core::redis::RedisTarget::parse(url).is_ok_and(|t| t.tls)
                        })
                    }
                    Err(e) => problems.push(format!("REGION_REDIS_URLS: {e}")),
                }
            }
            problems.extend(ryze_core::redis::tls_problem(
                &self.redis_tls_files(),
                uses_tls,
            ));
            if self
                .publisher_api_key
                .as_ref()
                .is_none_or(|k| k.expose_secret().is_empty())
            {
                problems.push("PUBLISHER_API_KEY is required".to_owned());
            }
            if self.public_base_url.is_none() {
                problems.push("PUBLIC_BASE_URL is required".to_owned());
            }
        }
        ryze_core::config::into_result(problems)
    }

    /// `REDIS_TLS_CA_FILE`, `REDIS_TLS_CERT_FILE`, `REDIS_TLS_KEY_FILE` (read when a Redis URL
    /// asks for TLS).
    pub fn redis_tls_files(&self) -> TlsFiles {
        TlsFiles {
            ca: self.redis_tls_ca_file.clone(),
            cert: self.redis_tls_cert_file.clone(),
            key: self.redis_tls_key_file.clone(),
        }
    }

    /// The token cipher from `ENCRYPTION_KEY`.
    pub fn cipher(&self) -> Result<TokenCipher, ryze_core::token::TokenError> {
        TokenCipher::from_setting(self.encryption_key.as_ref())
    }
}
