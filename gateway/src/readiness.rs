//! `/readyz` (and the fleet's view of this pod, D39): every condition a gateway's readiness
//! depends on, judged in one place so the answer and its reason cannot disagree.
//!
//! Postgres is not a condition (open streams keep flowing without it, and failing every pod at
//! once would turn a partial outage into a total one), except a failing TLS handshake: that
//! does not heal by waiting and must show.

use crate::state::Shared;

/// Why the pod is not ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// Shutdown started: the pod is draining its connections.
    #[error("draining")]
    Draining,
    /// The fan-out is not live (its reason: stalled, disconnected, unconfirmed subscriptions,
    /// stale live keys).
    #[error("redis: {0}")]
    Redis(&'static str),
    /// Postgres refuses the TLS handshake (a wrong CA or certificate).
    #[error("postgres TLS handshake failing")]
    PostgresTls,
}

/// Ready, or the first reason not to be.
pub fn check(state: &Shared) -> Result<(), NotReady> {
    if state.draining.is_cancelled() {
        return Err(NotReady::Draining);
    }
    state.hub.broker().readiness().map_err(NotReady::Redis)?;
    if state.store.tls_failing() {
        return Err(NotReady::PostgresTls);
    }
    Ok(())
}
