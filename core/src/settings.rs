//! Setting groups both binaries read, declared once and flattened into each binary's
//! configuration (`#[command(flatten)]`), each with the checks clap cannot make and the typed
//! values the process builds from it. `global = true` lets the publisher's admin subcommands
//! take them too; it changes nothing for the gateway.

use crate::redis::RedisTarget;
use crate::store::{Store, StoreError, StoreOptions};
use crate::tls::TlsFiles;
use crate::token::{TokenCipher, TokenError};
use secrecy::{ExposeSecret, SecretString};
use std::path::PathBuf;
use std::time::Duration;

/// Postgres: `DATABASE_URL`, `DATABASE_POOL_SIZE`, `ENCRYPTION_KEY`.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseSettings {
    /// Postgres URL (required): `postgres://…` or `key=value …`; libpq's `sslmode`
    /// (disable, prefer [default], require, verify-ca, verify-full) and `sslrootcert` apply.
    #[arg(
        id = "database_url",
        long = "database-url",
        env = "DATABASE_URL",
        value_name = "DATABASE_URL",
        hide_env_values = true,
        global = true
    )]
    pub url: Option<SecretString>,
    /// Maximum pooled Postgres connections.
    #[arg(
        id = "database_pool_size",
        long = "database-pool-size",
        env = "DATABASE_POOL_SIZE",
        value_name = "DATABASE_POOL_SIZE",
        default_value_t = 16,
        global = true
    )]
    pub pool_size: usize,
    /// Base64 of a 32-byte AES-256-GCM key for instance tokens at rest (optional).
    #[arg(
        id = "encryption_key",
        long = "encryption-key",
        env = "ENCRYPTION_KEY",
        value_name = "ENCRYPTION_KEY",
        hide_env_values = true,
        global = true
    )]
    pub encryption_key: Option<SecretString>,
}

/// The store could not be opened from the settings.
#[derive(Debug, thiserror::Error)]
pub enum OpenStoreError {
    /// `DATABASE_URL` is unset (validation reports it first).
    #[error("DATABASE_URL is required")]
    MissingUrl,
    /// `ENCRYPTION_KEY` is not a usable key.
    #[error(transparent)]
    Key(#[from] TokenError),
    /// The URL or its TLS settings are refused.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl DatabaseSettings {
    /// Problems clap cannot see: a missing or unusable URL, a bad key, an empty pool.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        match &self.url {
            None => problems.push("DATABASE_URL is required".to_owned()),
            Some(url) => problems.extend(crate::config::database_url_problem(url.expose_secret())),
        }
        if let Err(e) = self.cipher() {
            problems.push(e.to_string());
        }
        if self.pool_size == 0 {
            problems.push("DATABASE_POOL_SIZE must be greater than 0".to_owned());
        }
        problems
    }

    /// The token cipher from `ENCRYPTION_KEY` (none: tokens stored as they are).
    pub fn cipher(&self) -> Result<TokenCipher, TokenError> {
        TokenCipher::from_setting(self.encryption_key.as_ref())
    }

    /// Opens the pool (connections are made lazily).
    pub fn open(&self) -> Result<Store, OpenStoreError> {
        let url = self.url.as_ref().ok_or(OpenStoreError::MissingUrl)?;
        let options = StoreOptions {
            pool_size: self.pool_size,
            timeout: Duration::from_secs(2),
        };
        Ok(Store::new(url.expose_secret(), &options, self.cipher()?)?)
    }
}

/// The fan-out Redis: `REDIS_URL`, its TLS files, `REDIS_PREFIX`, `REDIS_STALL_TIMEOUT`.
#[derive(Debug, Clone, clap::Args)]
pub struct RedisSettings {
    /// Redis URL: redis[s]://, redis[s]-cluster://host:port,... or
    /// redis[s]-sentinel://host:port,...?sentinelServiceName=NAME (rediss = TLS). Required,
    /// except by a gateway running the embedded publisher (unset: in-process fan-out) and by a
    /// publisher given REGION_REDIS_URLS.
    #[arg(
        id = "redis_url",
        long = "redis-url",
        env = "REDIS_URL",
        value_name = "REDIS_URL",
        hide_env_values = true,
        global = true
    )]
    pub url: Option<SecretString>,
    /// PEM bundle of the CAs that sign the Redis server certificate (rediss…); unset = the
    /// system trust store.
    #[arg(
        id = "redis_tls_ca_file",
        long = "redis-tls-ca-file",
        env = "REDIS_TLS_CA_FILE",
        value_name = "REDIS_TLS_CA_FILE",
        global = true
    )]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS to Redis (needs REDIS_TLS_KEY_FILE).
    #[arg(
        id = "redis_tls_cert_file",
        long = "redis-tls-cert-file",
        env = "REDIS_TLS_CERT_FILE",
        value_name = "REDIS_TLS_CERT_FILE",
        global = true
    )]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of REDIS_TLS_CERT_FILE.
    #[arg(
        id = "redis_tls_key_file",
        long = "redis-tls-key-file",
        env = "REDIS_TLS_KEY_FILE",
        value_name = "REDIS_TLS_KEY_FILE",
        global = true
    )]
    pub tls_key_file: Option<PathBuf>,
    /// Prefix of every Redis channel and key.
    #[arg(
        id = "redis_prefix",
        long = "redis-prefix",
        env = "REDIS_PREFIX",
        value_name = "REDIS_PREFIX",
        default_value = "ryze",
        global = true
    )]
    pub prefix: String,
    /// A Redis connection that answers nothing this long is stalled: `/readyz` fails (and the
    /// publisher's publishes fail with 503) while the connection is replaced (SPEC D38).
    #[arg(
        id = "redis_stall_timeout",
        long = "redis-stall-timeout",
        env = "REDIS_STALL_TIMEOUT",
        value_name = "REDIS_STALL_TIMEOUT",
        default_value = "3s",
        value_parser = crate::config::parse_duration,
        global = true
    )]
    pub stall_timeout: Duration,
}

impl RedisSettings {
    /// `REDIS_TLS_CA_FILE`, `REDIS_TLS_CERT_FILE`, `REDIS_TLS_KEY_FILE` (read when a Redis URL
    /// asks for TLS).
    pub fn tls_files(&self) -> TlsFiles {
        TlsFiles {
            ca: self.tls_ca_file.clone(),
            cert: self.tls_cert_file.clone(),
            key: self.tls_key_file.clone(),
        }
    }

    /// `REDIS_URL` parsed, if set.
    pub fn target(&self) -> Option<Result<RedisTarget, crate::redis::RedisUrlError>> {
        self.url
            .as_ref()
            .map(|url| RedisTarget::parse(url.expose_secret()))
    }

    /// Problems clap cannot see: an unusable `REDIS_URL`, a stall timeout too short to judge,
    /// and TLS files that are missing or unreadable while some URL asks for TLS (`other_tls`:
    /// a URL outside this group does, such as a region's).
    pub fn problems(&self, other_tls: bool) -> Vec<String> {
        let mut problems = Vec::new();
        let mut uses_tls = other_tls;
        match self.target() {
            Some(Ok(target)) => uses_tls |= target.tls,
            Some(Err(e)) => problems.push(format!("REDIS_URL: {e}")),
            None => {}
        }
        problems.extend(crate::redis::tls_problem(&self.tls_files(), uses_tls));
        if self.stall_timeout < Duration::from_millis(30) {
            problems.push("REDIS_STALL_TIMEOUT must be at least 30ms".to_owned());
        }
        problems
    }
}

/// What an ingest endpoint needs: `PUBLISHER_API_KEY`, `PUBLIC_BASE_URL`, `MAX_INGEST_BYTES`.
#[derive(Debug, Clone, clap::Args)]
pub struct IngestSettings {
    /// Bearer key of /v1/events (required to serve it).
    #[arg(
        id = "publisher_api_key",
        long = "publisher-api-key",
        env = "PUBLISHER_API_KEY",
        value_name = "PUBLISHER_API_KEY",
        hide_env_values = true,
        global = true
    )]
    pub api_key: Option<SecretString>,
    /// instanceData.baseUrl (required to serve /v1/events).
    #[arg(
        id = "public_base_url",
        long = "public-base-url",
        env = "PUBLIC_BASE_URL",
        value_name = "PUBLIC_BASE_URL",
        value_parser = crate::config::parse_base_url,
        global = true
    )]
    pub base_url: Option<String>,
    /// Largest /v1/events body.
    #[arg(
        id = "max_ingest_bytes",
        long = "max-ingest-bytes",
        env = "MAX_INGEST_BYTES",
        value_name = "MAX_INGEST_BYTES",
        default_value = "16MiB",
        value_parser = crate::config::parse_bytes,
        global = true
    )]
    pub max_bytes: usize,
}

impl IngestSettings {
    /// When /v1/events is served: the key and base URL are required (`suffix` ends each
    /// message, e.g. ` with EMBEDDED_PUBLISHER=true`).
    pub fn problems(&self, suffix: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if self
            .api_key
            .as_ref()
            .is_none_or(|k| k.expose_secret().is_empty())
        {
            problems.push(format!("PUBLISHER_API_KEY is required{suffix}"));
        }
        if self.base_url.is_none() {
            problems.push(format!("PUBLIC_BASE_URL is required{suffix}"));
        }
        problems
    }
}
