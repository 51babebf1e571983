//! What the gateway and the publisher must agree on, and nothing else.
//!
//! Layout:
//! - [`event`]: the six event types and the per-instance filter set.
//! - [`envelope`]: the frame a client receives (`{"event","data","instanceData"}`), built once.
//! - [`bus`]: the fan-out bus trait the publisher sends through (Redis or in process).
//! - [`wire`]: the Redis message body: a one-line header followed by the frame bytes.
//! - [`channel`]: Redis channel and key names, and the control-channel messages.
//! - [`history`]: `HISTORY_SIZE`/`HISTORY_TTL`, the per-instance history's retention (D37).
//! - [`close`]: the WebSocket close-code table (SPEC D7).
//! - [`config`]: parsing helpers shared by both binaries' configuration (durations, byte sizes).
//! - [`token`]: token hashing for lookup and AES-256-GCM sealing at rest.
//! - [`redis`]: `REDIS_URL` parsing (plain, TLS, Cluster, Sentinel) and client settings.
//! - [`tls`]: rustls client configurations (CA bundle or system roots, optional client cert).
//! - [`liveness`]: noticing a Redis connection that stopped delivering (D38).
//! - [`shutdown`]: the SIGTERM/SIGINT trigger.
//! - [`store`]: the Postgres store (schema migrations, tokens, instances, configs, NOTIFY).
//! - [`trust`]: trust anchors (a CA file or the system store) and rustls settings (ring) for
//!   every TLS client here.

pub mod bus;
pub mod channel;
pub mod close;
pub mod config;
pub mod envelope;
pub mod event;
pub mod history;
pub mod liveness;
pub mod redis;
pub mod shutdown;
pub mod store;
pub mod tls;
pub mod token;
pub mod trust;
pub mod wire;
