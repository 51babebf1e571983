//! The close codes a client may see after the upgrade (SPEC §5.5, D7), in one table.
//!
//! Each constant's doc says what the client should do about it.

/// A close code and the reason text sent with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseCode {
    /// RFC 6455 status code.
    pub code: u16,
    /// Reason text sent in the Close frame (may be empty).
    pub reason: &'static str,
}

/// The pod is shutting down or draining: reconnect (with backoff); another pod will serve you.
pub const SHUTDOWN: CloseCode = CloseCode {
    code: 1001,
    reason: "server shutting down",
};
/// The pod holds more than its share of the fleet's connections (D39): reconnect (with backoff,
/// passing `since` to lose nothing); the load balancer will likely pick a less loaded pod.
pub const REBALANCING: CloseCode = CloseCode {
    code: 1001,
    reason: "rebalancing",
};
/// No PONG within the pong timeout: the server dropped you; reconnect when the network is back.
pub const PONG_TIMEOUT: CloseCode = CloseCode {
    code: 1001,
    reason: "pong timeout",
};
/// The client sent a message over the limit (4096 bytes): do not send messages; reconnect.
pub const MESSAGE_TOO_BIG: CloseCode = CloseCode {
    code: 1009,
    reason: "message too big",
};
/// The client did not drain its queue: read faster (never block the handler), then reconnect.
pub const SLOW_CONSUMER: CloseCode = CloseCode {
    code: 1008,
    reason: "slow consumer",
};
/// The instance was deleted: do not reconnect to it.
pub const INSTANCE_DELETED: CloseCode = CloseCode {
    code: 1008,
    reason: "instance deleted",
};
/// The client broke the WebSocket protocol: fix the client.
pub const PROTOCOL_ERROR: CloseCode = CloseCode {
    code: 1002,
    reason: "",
};
/// The client sent a text frame that is not UTF-8: fix the client.
pub const INVALID_PAYLOAD: CloseCode = CloseCode {
    code: 1007,
    reason: "",
};
/// The server failed: reconnect with backoff.
pub const INTERNAL_ERROR: CloseCode = CloseCode {
    code: 1011,
    reason: "internal error",
};
