//! `DATABASE_URL`: what tokio-postgres parses, plus libpq's TLS settings it does not.
//!
//! tokio-postgres 0.7 knows `sslmode=disable|prefer|require` and refuses `sslrootcert`, so
//! [`DatabaseTarget::parse`] takes `sslmode` and `sslrootcert` out of the URL (both the
//! `postgres://` form and the `key=value` form), hands the rest to tokio-postgres, and
//! builds the rustls connector ([`super::tls`]). Every error names a setting, never the URL:
//! it may hold a password.
//!
//! Unless the URL says otherwise, connections get TCP keepalives (idle 10 s, then a probe
//! every 5 s, dropped after 3 unanswered: a dead peer is noticed within about 25 s instead of
//! the kernel's 2 h).

use super::tls::{PgTls, TlsPolicy};
use crate::trust::{Roots, TrustError};
use std::path::PathBuf;
use std::time::Duration;

/// Idle time before the first keepalive probe.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// Time between unanswered probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Unanswered probes before the connection is dropped.
pub const KEEPALIVE_RETRIES: u32 = 3;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS when the server offers it, else plain (libpq's default). Verifies like `Require`.
    Prefer,
    /// TLS or nothing; the certificate is not checked, unless `sslrootcert` is given, in which
    /// case the chain is (as `VerifyCa`), like libpq.
    Require,
    /// TLS; the chain must lead to `sslrootcert` (or a system CA); the name is not checked.
    VerifyCa,
    /// TLS; chain as `VerifyCa`, and the certificate must name the host.
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// A `DATABASE_URL` that cannot be used. No variant carries the URL.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseUrlError {
    /// tokio-postgres refused what remains once the TLS settings are taken out.
    #[error("invalid DATABASE_URL")]
    Parse(#[source] tokio_postgres::Error),
    /// A `key=value` list that does not tokenize (an unterminated quote, a missing `=`).
    #[error("invalid DATABASE_URL: {0}")]
    Syntax(&'static str),
    /// `sslmode` is not one of libpq's five.
    #[error(
        "unknown sslmode {0:?} in DATABASE_URL (expected disable, prefer, require, verify-ca \
         or verify-full)"
    )]
    SslMode(String),
    /// libpq refuses `sslrootcert=system` with anything weaker than `verify-full`.
    #[error("sslmode={0} cannot be used with sslrootcert=system (use verify-full)")]
    WeakSystemRoots(&'static str),
    /// The `sslrootcert` file (or the system store) cannot be used.
    #[error("DATABASE_URL sslrootcert")]
    RootCert(#[source] TrustError),
}

/// A validated `DATABASE_URL`: the tokio-postgres config (TLS settings, keepalives applied)
/// and the TLS connector every connection of the store uses, pooled or listening.
#[derive(Clone)]
pub struct DatabaseTarget {
    config: tokio_postgres::Config,
    ssl_mode: SslMode,
    root_cert: Option<Roots>,
    tls: PgTls,
}

impl std::fmt::Debug for DatabaseTarget {
    // Never the config: it holds the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseTarget")
            .field("ssl_mode", &self.ssl_mode)
            .field("root_cert", &self.root_cert)
            .finish_non_exhaustive()
    }
}

impl DatabaseTarget {
    /// Parses and validates `url` (reads the `sslrootcert` file, or the system store when
    /// verification needs it). Called once, by the settings' validation
    /// ([`crate::settings::DatabaseSettings::validate`]), or by [`crate::store::Store::new`].
    pub fn parse(url: &str) -> Result<DatabaseTarget, DatabaseUrlError> {
        let split = split_tls_params(url)?;
        let root_cert = split.sslrootcert.as_deref().map(|p| match p {
            "system" => Roots::System,
            path => Roots::File(PathBuf::from(path)),
        });
        let system = root_cert == Some(Roots::System);
        let ssl_mode = match split.sslmode.as_deref() {
            Some(s) => SslMode::parse(s).ok_or_else(|| DatabaseUrlError::SslMode(s.to_owned()))?,
            // libpq: sslrootcert=system defaults to verify-full.
            None if system => SslMode::VerifyFull,
            None => SslMode::Prefer,
        };
        if system && ssl_mode != SslMode::VerifyFull {
            return Err(DatabaseUrlError::WeakSystemRoots(ssl_mode.as_str()));
        }
        let mut config: tokio_postgres::Config =
            split.rest.parse().map_err(DatabaseUrlError::Parse)?;
        config.ssl_mode(match ssl_mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let keys = &split.keys;
        let set = |k: &str| keys.iter().any(|s| s == k);
        if !set("keepalives") {
            config.keepalives(true);
        }
        if !set("keepalives_idle") {
            config.keepalives_idle(KEEPALIVE_IDLE);
        }
        if !set("keepalives_interval") {
            config.keepalives_interval(KEEPALIVE_INTERVAL);
        }
        if !set("keepalives_retries") {
            config.keepalives_retries(KEEPALIVE_RETRIES);
        }
        let policy = match (ssl_mode, &root_cert) {
            (SslMode::Disable, _) => TlsPolicy::EncryptOnly,
            (SslMode::Prefer | SslMode::Require, None) => TlsPolicy::EncryptOnly,
            (SslMode::Prefer | SslMode::Require | SslMode::VerifyCa, roots) => {
                TlsPolicy::Chain(roots.clone().unwrap_or(Roots::System))
            }
            (SslMode::VerifyFull, roots) => TlsPolicy::Full(roots.clone().unwrap_or(Roots::System)),
        };
        let tls = PgTls::new(&policy, ssl_mode).map_err(DatabaseUrlError::RootCert)?;
        Ok(DatabaseTarget {
            config,
            ssl_mode,
            root_cert,
            tls,
        })
    }

    /// The effective `sslmode` (`prefer` when the URL names none).
    pub fn ssl_mode(&self) -> SslMode {
        self.ssl_mode
    }

    /// The tokio-postgres config (holds the password: never log it).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The same, for the store to adjust (connect timeout, application name).
    pub(crate) fn config_mut(&mut self) -> &mut tokio_postgres::Config {
        &mut self.config
    }

    /// The connector of every connection to this target.
    pub(crate) fn tls(&self) -> &PgTls {
        &self.tls
    }
}

/// `url` without its `sslmode` and `sslrootcert`, their values, and every key it sets.
#[derive(Debug, Default, PartialEq)]
struct Split {
    rest: String,
    sslmode: Option<String>,
    sslrootcert: Option<String>,
    keys: Vec<String>,
}

const TLS_KEYS: [&str; 2] = ["sslmode", "sslrootcert"];

fn split_tls_params(url: &str) -> Result<Split, DatabaseUrlError> {
    let prefix = ["postgres://", "postgresql://"]
        .into_iter()
        .find(|p| url.starts_with(p));
    match prefix {
        Some(p) => Ok(split_url(url, p.len())),
        None => split_keyword_list(url),
    }
}

/// URL form. As tokio-postgres does, the credentials end at the first `@`, and the query
/// starts at the first `?` after them.
fn split_url(url: &str, prefix_len: usize) -> Split {
    let after_creds = url[prefix_len..]
        .find('@')
        .map_or(prefix_len, |i| prefix_len + i + 1);
    let Some(q) = url[after_creds..].find('?').map(|i| after_creds + i) else {
        return Split {
            rest: url.to_owned(),
            ..Split::default()
        };
    };
    let mut split = Split::default();
    let mut kept = Vec::new();
    for pair in url[q + 1..].split('&').filter(|p| !p.is_empty()) {
        let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(raw_key);
        let value = decode(raw_value);
        match key.as_str() {
            "sslmode" => split.sslmode = Some(value),
            "sslrootcert" => split.sslrootcert = Some(value),
            _ => kept.push(pair),
        }
        split.keys.push(key);
    }
    split.rest = if kept.is_empty() {
        url[..q].to_owned()
    } else {
        format!("{}?{}", &url[..q], kept.join("&"))
    };
    split
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// `key=value` form, tokenized as tokio-postgres (and libpq) do: whitespace around `=`,
/// values bare or in single quotes, `\` escaping the next character.
fn split_keyword_list(s: &str) -> Result<Split, DatabaseUrlError> {
    let mut split = Split::default();
    let mut rest = String::with_capacity(s.len());
    let mut chars = s.char_indices().peekable();
    let mut kept_from = 0;
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            break;
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        if chars.next_if(|(_, c)| *c == '=').is_none() {
            return Err(DatabaseUrlError::Syntax("expected `=` after a keyword"));
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let quoted = chars.next_if(|(_, c)| *c == '\'').is_some();
        let mut value = String::new();
        let mut closed = !quoted;
        while let Some((_, c)) = chars.next() {
            match c {
                '\'' if quoted => {
                    closed = true;
                    break;
                }
                c if c.is_whitespace() && !quoted => break,
                '\\' => value.extend(chars.next().map(|(_, c)| c)),
                c => value.push(c),
            }
        }
        if !closed {
            return Err(DatabaseUrlError::Syntax("unterminated quoted value"));
        }
        let end = chars.peek().map_or(s.len(), |&(i, _)| i);
        if TLS_KEYS.contains(&key.as_str()) {
            rest.push_str(&s[kept_from..start]);
            kept_from = end;
            if key == "sslmode" {
                split.sslmode = Some(value);
            } else {
                split.sslrootcert = Some(value);
            }
        }
        split.keys.push(key);
    }
    rest.push_str(&s[kept_from..]);
    split.rest = rest;
    Ok(split)
}

#[cfg(test)]
#[path = "target/tests.rs"]
mod tests;
