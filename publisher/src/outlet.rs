//! Where published frames go: Redis (standalone or embedded with Redis), or the gateway's hub
//! (embedded without Redis). One trait so the ingest path is the same for both.

use fred::prelude::*;
use futures_util::future::BoxFuture;
use ryze_core::channel::{ControlMessage, Names};
use ryze_core::redis::{RedisTarget, RedisUrlError};
use ryze_core::tls::{TlsError, TlsFiles};
use std::time::Duration;
use uuid::Uuid;

/// Upper bound on one round trip to Redis from the ingest path.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// One message to publish: the wire header plus the frame, built once.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Target instance (channel `<prefix>:ws:<id>`).
    pub instance_id: Uuid,
    /// The exact Redis message body (shared, not copied, across regions).
    pub body: bytes::Bytes,
}

/// The bus could not take the messages.
#[derive(Debug, thiserror::Error)]
pub enum OutletError {
    /// Redis failed or timed out.
    #[error("redis unavailable")]
    Redis(#[from] fred::error::Error),
    /// Redis did not answer in time.
    #[error("redis timed out")]
    Timeout,
    /// The Redis URL does not parse (configuration validation normally catches it first).
    #[error("invalid Redis URL: {0}")]
    BadUrl(#[from] RedisUrlError),
    /// The Redis TLS files could not be loaded (validation normally catches it first).
    #[error("Redis TLS settings: {0}")]
    Tls(#[from] TlsError),
    /// The in-process bus is not wired yet.
    #[error("event bus unavailable")]
    Unavailable,
}

/// A fan-out bus as the publisher sees it.
pub trait Outlet: Send + Sync + 'static {
    /// For each id: could some gateway hold a client of it? Must never answer `false` for an
    /// instance whose client already got its 101 (false positives are harmless).
    fn listening<'a>(&'a self, ids: &'a [Uuid]) -> BoxFuture<'a, Result<Vec<bool>, OutletError>>;
    /// Publishes in order.
    fn publish(&self, messages: Vec<Outgoing>) -> BoxFuture<'_, Result<(), OutletError>>;
    /// Sends a control message to every gateway.
    fn control<'a>(&'a self, msg: &'a ControlMessage) -> BoxFuture<'a, Result<(), OutletError>>;
    /// Whether the outlet can take messages now (publisher readiness).
    fn is_ready(&self) -> bool {
        true
    }
}

/// The Redis bus: `PUBLISH` (or `SPUBLISH` on a cluster) on the instance channels.
pub struct RedisOutlet {
    client: Client,
    names: Names,
    clustered: bool,
}

impl RedisOutlet {
    /// Creates the client and starts connecting (readiness reports when it is connected).
    /// `tls` is read only when the URL asks for TLS.
    pub fn connect(url: &str, tls: &TlsFiles, names: Names) -> Result<RedisOutlet, OutletError> {
        let target = RedisTarget::parse(url)?.with_tls_files(tls)?;
        let client = target.client(32)?;
        client.connect();
        Ok(RedisOutlet {
            client,
            names,
            clustered: target.clustered,
        })
    }

    /// Whether the connection is up.
    pub fn is_connected(&self) -> bool {
        self.client.is_connected()
    }
}

pub mod regions;

async fn bounded<T>(
    f: impl std::future::Future<Output = Result<T, fred::error::Error>>,
) -> Result<T, OutletError> {
    match tokio::time::timeout(REDIS_TIMEOUT, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(OutletError::Timeout),
    }
}

impl Outlet for RedisOutlet {
    fn listening<'a>(&'a self, ids: &'a [Uuid]) -> BoxFuture<'a, Result<Vec<bool>, OutletError>> {
        Box::pin(async move {
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            if !self.client.is_connected() {
                return Err(OutletError::Unavailable);
            }
            bounded(async {
                let pipeline = self.client.pipeline();
                for id in ids {
                    let _: () = pipeline.exists(self.names.live_key(*id)).await?;
                }
                let counts: Vec<i64> = pipeline.all().await?;
                Ok(counts.into_iter().map(|n| n > 0).collect())
            })
            .await
        })
    }

    fn publish(&self, messages: Vec<Outgoing>) -> BoxFuture<'_, Result<(), OutletError>> {
        Box::pin(async move {
            if messages.is_empty() {
                return Ok(());
            }
            // Fail fast while disconnected: the client would hold the commands for the
            // reconnect, and a caller told 503 could still see them published later.
            if !self.client.is_connected() {
                return Err(OutletError::Unavailable);
            }
            bounded(async {
                let pipeline = self.client.pipeline();
                for m in messages {
                    let channel = self.names.instance_channel(m.instance_id);
                    let body = m.body;
                    if self.clustered {
                        let _: () = pipeline.spublish(channel, body).await?;
                    } else {
                        let _: () = pipeline.publish(channel, body).await?;
                    }
                }
                let _: Vec<Value> = pipeline.all().await?;
                Ok(())
            })
            .await
        })
    }

    fn is_ready(&self) -> bool {
        self.is_connected()
    }

    fn control<'a>(&'a self, msg: &'a ControlMessage) -> BoxFuture<'a, Result<(), OutletError>> {
        Box::pin(async move {
            let body = serde_json::to_string(msg).unwrap_or_default();
            bounded(async {
                let _: i64 = self
                    .client
                    .publish(self.names.control_channel(), body)
                    .await?;
                Ok(())
            })
            .await
        })
    }
}
