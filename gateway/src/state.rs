//! What every request handler shares: one `Arc`, cloned per request.

use crate::auth::AuthCache;
use crate::connection::SessionLimits;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::origin::OriginPolicy;
use crate::ratelimit::RateLimiter;
use ryze_core::store::Store;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// WebSocket buffer and queue sizes, set explicitly (library defaults cost ~128 KiB each).
#[derive(Debug, Clone, Copy)]
pub struct WsLimits {
    /// The library's hard cap on a client frame: above `WS_MAX_MESSAGE_BYTES`, so an
    /// oversized message is read whole and answered with a clean 1009.
    pub read_frame_cap: usize,
    /// `WS_SEND_QUEUE`.
    pub send_queue: usize,
    /// `WS_SEND_QUEUE_BYTES`.
    pub send_queue_bytes: usize,
    /// The WebSocket library's own read buffer, allocated with the connection: 0, so an idle
    /// connection holds none (the session's `SessionIo` reads ahead in chunks instead).
    pub read_buffer: usize,
    /// Bytes buffered before the library writes to the socket.
    pub write_buffer: usize,
    /// Hard cap of the library's write buffer: above the largest frame.
    pub max_write_buffer: usize,
    /// What the connection loop enforces: message size, ping interval, pong timeout.
    pub session: SessionLimits,
}

/// Shared state of the public and admin routers.
pub struct Shared {
    /// Postgres.
    pub store: Store,
    /// Positive auth cache for /ws (D30).
    pub cache: Arc<AuthCache>,
    /// Local registry and fan-out.
    pub hub: Hub,
    /// Rate limiting (D8).
    pub limiter: RateLimiter,
    /// Origin allowlist (D9).
    pub origins: OriginPolicy,
    /// Metrics.
    pub metrics: Metrics,
    /// `MAX_CONNECTIONS` permits (D26).
    pub connections: Arc<Semaphore>,
    /// WebSocket sizes and heartbeat.
    pub ws: WsLimits,
    /// Every connection task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Cancelled when shutdown starts: readiness fails from that moment.
    pub draining: CancellationToken,
    /// Process start, for `/health` uptime.
    pub started: Instant,
    /// `HTTP_HEADER_TIMEOUT`, which also bounds reading a request body once its head arrived:
    /// a body that trickles or stalls is cut off like a slow head.
    pub http_header_timeout: std::time::Duration,
    /// `TRUST_PROXY_HEADERS`.
    pub trust_proxy_headers: bool,
}

/// The handlers' state.
pub type AppState = Arc<Shared>;
