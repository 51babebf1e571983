//! The rustls connector of every Postgres connection (pool and LISTEN), and the log line that
//! says why a handshake failed.
//!
//! `tokio-postgres-rustls` does the TLS plumbing (and SCRAM channel binding); this wrapper
//! only watches the handshake's outcome. A refused server certificate is an operator's problem
//! (wrong `sslrootcert`, expired or renamed certificate), so the first failure is logged at
//! ERROR and the rest at DEBUG until a handshake succeeds again: the pool retries on every
//! request, and one line per request would drown the log.

use super::target::SslMode;
use crate::trust::{self, ChainOnly, EncryptOnly, Roots, TrustError};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres_rustls::MakeRustlsConnect;

/// What the connector checks of the server's certificate.
#[derive(Debug, Clone)]
pub(crate) enum TlsPolicy {
    /// Nothing (encryption only).
    EncryptOnly,
    /// The chain up to these roots.
    Chain(Roots),
    /// The chain and the host name.
    Full(Roots),
}

/// A `MakeTlsConnect` for tokio-postgres: rustls (ring) configured by [`TlsPolicy`], sharing
/// one failure state between every connection made through clones of it.
#[derive(Clone)]
pub(crate) struct PgTls {
    inner: MakeRustlsConnect,
    ssl_mode: SslMode,
    /// True after a failed handshake was logged at ERROR, until one succeeds.
    failing: Arc<AtomicBool>,
}

impl PgTls {
    /// Builds the connector; reads the CA file or the system store when the policy needs it.
    pub(crate) fn new(policy: &TlsPolicy, ssl_mode: SslMode) -> Result<PgTls, TrustError> {
        let verifier = match policy {
            TlsPolicy::EncryptOnly => Arc::new(EncryptOnly::default()) as _,
            TlsPolicy::Chain(roots) => Arc::new(ChainOnly::new(roots.load()?)) as _,
            TlsPolicy::Full(roots) => trust::full_verifier(roots.load()?)?,
        };
        Ok(PgTls {
            inner: MakeRustlsConnect::new(trust::client_config(verifier)),
            ssl_mode,
            failing: Arc::new(AtomicBool::new(false)),
        })
    }
}

impl PgTls {
    /// A TLS handshake failed (a certificate that did not verify, most often) and none has
    /// succeeded since: the processes report not ready meanwhile.
    pub(crate) fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }
}

impl<S> MakeTlsConnect<S> for PgTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
    type TlsConnect = Watched<<MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect>;
    type Error = <MakeRustlsConnect as MakeTlsConnect<S>>::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Self::TlsConnect, Self::Error> {
        Ok(Watched {
            inner: MakeTlsConnect::<S>::make_tls_connect(&mut self.inner, domain)?,
            host: domain.to_owned(),
            ssl_mode: self.ssl_mode,
            failing: Arc::clone(&self.failing),
        })
    }
}

/// One handshake, logged when it fails.
pub(crate) struct Watched<T> {
    inner: T,
    host: String,
    ssl_mode: SslMode,
    failing: Arc<AtomicBool>,
}

type Handshake<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, T> TlsConnect<S> for Watched<T>
where
    T: TlsConnect<S> + Send + 'static,
    T::Future: Send + 'static,
    T::Error: std::error::Error + 'static,
    S: 'static,
{
    type Stream = T::Stream;
    type Error = T::Error;
    type Future = Handshake<T::Stream, T::Error>;

    fn connect(self, stream: S) -> Self::Future {
        let Watched {
            inner,
            host,
            ssl_mode,
            failing,
        } = self;
        let handshake = inner.connect(stream);
        Box::pin(async move {
            let result = handshake.await;
            match &result {
                Ok(_) => {
                    if failing.swap(false, Ordering::Relaxed) {
                        tracing::info!(db.host = %host, "Postgres TLS handshake succeeds again");
                    }
                }
                Err(e) => log_failure(e, &host, ssl_mode, &failing),
            }
            result
        })
    }
}

fn log_failure(
    e: &(dyn std::error::Error + 'static),
    host: &str,
    ssl_mode: SslMode,
    failing: &AtomicBool,
) {
    let certificate = trust::is_certificate_error(e);
    if failing.swap(true, Ordering::Relaxed) {
        tracing::debug!(db.host = %host, error = %e, "Postgres TLS handshake failed again");
    } else if certificate {
        tracing::error!(
            db.host = %host,
            sslmode = ssl_mode.as_str(),
            error = %e,
            "Postgres server certificate did not verify; check sslrootcert and sslmode in \
             DATABASE_URL (logged once until a handshake succeeds)"
        );
    } else {
        tracing::error!(
            db.host = %host,
            sslmode = ssl_mode.as_str(),
            error = %e,
            "Postgres TLS handshake failed (logged once until a handshake succeeds)"
        );
    }
}
