//! What every Redis connection of ours shares, whichever client it belongs to (the
//! gateway's subscriber and commands, the publisher's outlets, the primary watch's Sentinel
//! clients): timeouts, TCP keepalive and `TCP_NODELAY`, the reconnect policy, and the WARN
//! line a failing connection gets (fred logs those only at DEBUG).

use fred::prelude::*;
use fred::socket2::TcpKeepalive;
use fred::types::config::TcpConfig;
use std::time::Duration;

/// Idle time before the first TCP keepalive probe on a Redis connection.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// Time between unanswered keepalive probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Unanswered probes before the kernel drops the connection (so a dead peer is noticed
/// within idle + interval × retries = 25 s even when nothing is being sent).
pub const KEEPALIVE_RETRIES: u32 = 3;
/// At most one "connection failed" line per client this often (fred retries every few
/// seconds; the line says the same thing each time).
const LOG_FAILURES_EVERY: Duration = Duration::from_secs(30);

/// What every Redis connection of ours shares, the Sentinel clients of
/// [`super::primary::PrimaryWatch`] included: 2 s to connect and for fred's own commands, and
/// [`tcp_config`].
pub(super) fn base_connection() -> ConnectionConfig {
    ConnectionConfig {
        connection_timeout: Duration::from_secs(2),
        internal_command_timeout: Duration::from_secs(2),
        tcp: tcp_config(),
        ..ConnectionConfig::default()
    }
}

/// Reconnect at once, then back off exponentially from 100 ms up to 5 s, forever.
pub(super) fn reconnect_policy() -> ReconnectPolicy {
    ReconnectPolicy::new_exponential(0, 100, 5_000, 2)
}

/// `TCP_NODELAY` and keepalive for every Redis connection (Sentinels included).
pub(super) fn tcp_config() -> TcpConfig {
    TcpConfig {
        nodelay: Some(true),
        keepalive: Some(
            TcpKeepalive::new()
                .with_time(KEEPALIVE_IDLE)
                .with_interval(KEEPALIVE_INTERVAL)
                .with_retries(KEEPALIVE_RETRIES),
        ),
        ..TcpConfig::default()
    }
}

/// Logs failed connection attempts from the client's error stream at WARN, at most one line
/// per [`LOG_FAILURES_EVERY`]: fred reports them only at DEBUG, and a client that never
/// connects (wrong scheme, certificate that does not verify) would otherwise log nothing at
/// all while the pod stays unready. Needs a Tokio runtime; outside one it does nothing. The
/// task ends with the client.
pub(super) fn log_connection_failures(client: &Client) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let mut errors = client.error_rx();
    let client_id = client.id().to_owned();
    runtime.spawn(async move {
        let mut last: Option<tokio::time::Instant> = None;
        loop {
            let (error, server) = match errors.recv().await {
                Ok(e) => e,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            if last.is_some_and(|t| t.elapsed() < LOG_FAILURES_EVERY) {
                continue;
            }
            last = Some(tokio::time::Instant::now());
            // fred names the server only for some errors; the URL is never logged (password).
            let server = server.map(|s| s.to_string());
            let server = server.as_deref().unwrap_or("-");
            if is_tls_failure(&error) {
                tracing::warn!(
                    redis.client = %client_id,
                    redis.server = server,
                    error = %error,
                    "Redis TLS handshake failed: the server certificate did not verify, or the \
                     server refused this client; retrying"
                );
            } else {
                tracing::warn!(
                    redis.client = %client_id,
                    redis.server = server,
                    error = %error,
                    "Redis connection failed; retrying"
                );
            }
        }
    });
}

/// Whether a connection error came from TLS (fred wraps rustls's error in an I/O error).
fn is_tls_failure(error: &fred::error::Error) -> bool {
    if *error.kind() == fred::error::ErrorKind::Tls {
        return true;
    }
    let details = error.details();
    [
        "Certificate",
        "certificate",
        "AlertReceived",
        "HandshakeFailure",
        "InvalidMessage",
        "CorruptMessage",
        "PeerIncompatible",
        "PeerMisbehaved",
    ]
    .iter()
    .any(|needle| details.contains(needle))
}
