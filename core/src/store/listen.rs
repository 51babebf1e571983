//! A dedicated connection that `LISTEN`s on `ryze_config` (pooled connections cannot, since
//! notifications arrive on the connection that listens).

use super::{Store, StoreError};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use uuid::Uuid;

/// The notification channel the schema's triggers send on.
pub const CONFIG_CHANNEL: &str = "ryze_config";

/// Receives instance ids whose config or identity changed. When the connection is lost,
/// [`ConfigListener::recv`] returns `None`: the owner must reconnect and treat every cached
/// entry as stale, since notifications sent meanwhile are gone.
pub struct ConfigListener {
    rx: mpsc::UnboundedReceiver<Uuid>,
    // Dropping the client closes the connection, which ends the reader task.
    _client: tokio_postgres::Client,
}

impl std::fmt::Debug for ConfigListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigListener").finish_non_exhaustive()
    }
}

impl ConfigListener {
    /// The next changed instance id, or `None` once the connection is lost.
    pub async fn recv(&mut self) -> Option<Uuid> {
        self.rx.recv().await
    }
}

impl Store {
    /// Opens the LISTEN connection. Returns once `LISTEN` is acknowledged, so no change
    /// committed after this returns can be missed.
    pub async fn listen_config(&self) -> Result<ConfigListener, StoreError> {
        // The pool's connector: same TLS checks, same failure log, same keepalives.
        let target = self.target();
        let (client, mut connection) = tokio::time::timeout(
            self.connect_timeout(),
            target.config().connect(target.tls().clone()),
        )
        .await
        .map_err(|_| StoreError::ConnectTimeout)??;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(|cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                        match Uuid::parse_str(n.payload()) {
                            Ok(id) => {
                                if tx.send(id).is_err() {
                                    break;
                                }
                            }
                            Err(_) => tracing::warn!(
                                payload.len = n.payload().len(),
                                "ignoring malformed ryze_config notification"
                            ),
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "config LISTEN connection lost");
                        break;
                    }
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN {CONFIG_CHANNEL}"))
            .await?;
        Ok(ConfigListener {
            rx,
            _client: client,
        })
    }
}
