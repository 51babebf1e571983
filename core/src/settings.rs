//! Setting groups both binaries read, declared once and flattened into each binary's
//! configuration (`#[command(flatten)]`). Each group's `validate` makes the checks clap cannot
//! and returns the typed value the process runs on ([`Database`], [`Redis`], [`Ingest`]), so
//! nothing is checked twice. `global = true` lets the publisher's admin subcommands take them
//! too; it changes nothing for the gateway.

use crate::redis::RedisTarget;
use crate::store::{DatabaseTarget, Store, StoreError, StoreOptions};
use crate::tls::TlsFiles;
use crate::token::TokenCipher;
use secrecy::{ExposeSecret, SecretString};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[cfg(test)]
mod tests;

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

/// Postgres after validation: the parsed `DATABASE_URL` (its `sslrootcert` read), the pool
/// size and the token cipher.
#[derive(Debug, Clone)]
pub struct Database {
    target: DatabaseTarget,
    /// `DATABASE_POOL_SIZE` (above 0).
    pub pool_size: usize,
    cipher: TokenCipher,
}

impl Database {
    /// Opens the pool (connections are made lazily).
    pub fn open(&self) -> Result<Store, StoreError> {
        let options = StoreOptions {
            pool_size: self.pool_size,
            timeout: Duration::from_secs(2),
        };
        Store::with_target(self.target.clone(), &options, self.cipher.clone())
    }
}

impl DatabaseSettings {
    /// The settings as a [`Database`], or every problem clap cannot see: a missing or unusable
    /// URL, a bad key, an empty pool.
    pub fn validate(&self) -> Result<Database, Vec<String>> {
        let mut problems = Vec::new();
        let target = match &self.url {
            None => {
                problems.push("DATABASE_URL is required".to_owned());
                None
            }
            Some(url) => crate::config::parse_database_url(url.expose_secret())
                .map_err(|p| problems.push(p))
                .ok(),
        };
        let cipher = TokenCipher::from_setting(self.encryption_key.as_ref())
            .map_err(|e| problems.push(e.to_string()))
            .ok();
        if self.pool_size == 0 {
            problems.push("DATABASE_POOL_SIZE must be greater than 0".to_owned());
        }
        match (target, cipher) {
            (Some(target), Some(cipher)) if problems.is_empty() => Ok(Database {
                target,
                pool_size: self.pool_size,
                cipher,
            }),
            _ => Err(problems),
        }
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

/// The fan-out Redis after validation: `REDIS_URL` ready to connect (TLS files read, stall
/// timeout applied), and the same settings for other URLs (a publisher's regions).
#[derive(Clone)]
pub struct Redis {
    /// `REDIS_URL`; `None` when unset (each binary's `validate` says when that is allowed).
    pub target: Option<RedisTarget>,
    /// `REDIS_PREFIX`.
    pub prefix: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    stall_timeout: Duration,
}

impl std::fmt::Debug for Redis {
    // Never the target: its config holds the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.prefix)
            .field("stall_timeout", &self.stall_timeout)
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// `target` (another URL, parsed) with the TLS settings and stall timeout of this group.
    pub fn prepare(&self, target: RedisTarget) -> RedisTarget {
        let target = target.with_stall_timeout(self.stall_timeout);
        match &self.tls {
            Some(tls) => target.with_tls(tls.clone()),
            None => target,
        }
    }
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

    /// The settings as a [`Redis`], or every problem clap cannot see: an unusable `REDIS_URL`,
    /// a stall timeout too short to judge, and TLS files that are missing or unreadable while
    /// some URL asks for TLS (`other_tls`: a URL outside this group does, such as a region's,
    /// to be [`Redis::prepare`]d).
    pub fn validate(&self, other_tls: bool) -> Result<Redis, Vec<String>> {
        let mut problems = Vec::new();
        let target = match self.url.as_ref() {
            None => None,
            Some(url) => RedisTarget::parse(url.expose_secret())
                .map_err(|e| problems.push(format!("REDIS_URL: {e}")))
                .ok(),
        };
        let uses_tls = other_tls || target.as_ref().is_some_and(|t| t.tls);
        let tls = crate::redis::tls_config(&self.tls_files(), uses_tls)
            .map_err(|p| problems.push(p))
            .ok()
            .flatten()
            .map(Arc::new);
        if self.stall_timeout < Duration::from_millis(30) {
            problems.push("REDIS_STALL_TIMEOUT must be at least 30ms".to_owned());
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut redis = Redis {
            target: None,
            prefix: self.prefix.clone(),
            tls,
            stall_timeout: self.stall_timeout,
        };
        redis.target = target.map(|t| redis.prepare(t));
        Ok(redis)
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

/// An ingest endpoint's settings after validation.
#[derive(Debug, Clone)]
pub struct Ingest {
    /// `PUBLISHER_API_KEY` (not empty).
    pub api_key: SecretString,
    /// `PUBLIC_BASE_URL` without a trailing `/` (D11).
    pub base_url: String,
    /// `MAX_INGEST_BYTES`.
    pub max_bytes: usize,
}

impl IngestSettings {
    /// For a process that serves /v1/events: the settings as an [`Ingest`], or the missing
    /// key and base URL (`suffix` ends each message, e.g. ` with EMBEDDED_PUBLISHER=true`).
    pub fn validate(&self, suffix: &str) -> Result<Ingest, Vec<String>> {
        let api_key = self
            .api_key
            .clone()
            .filter(|k| !k.expose_secret().is_empty());
        let mut problems = Vec::new();
        if api_key.is_none() {
            problems.push(format!("PUBLISHER_API_KEY is required{suffix}"));
        }
        if self.base_url.is_none() {
            problems.push(format!("PUBLIC_BASE_URL is required{suffix}"));
        }
        match (api_key, self.base_url.clone()) {
            (Some(api_key), Some(base_url)) => Ok(Ingest {
                api_key,
                base_url,
                max_bytes: self.max_bytes,
            }),
            _ => Err(problems),
        }
    }
}
