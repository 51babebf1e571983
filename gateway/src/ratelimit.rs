//! Fixed-window rate limiting per token (client IP without one), shared by every pod through
//! Redis, with per-pod counters while Redis is unreachable (SPEC §2.4, D8, D25).

use crate::broker::redis::RedisBroker;
use crate::metrics::Metrics;
use fred::prelude::*;
use ryze_core::channel::Names;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Longest a Redis counter update may take before the per-pod fallback answers.
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);
const WINDOW_SECS: u64 = 60;

/// The outcome of one check, with everything the headers need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// `X-RateLimit-Limit`.
    pub limit: u64,
    /// `X-RateLimit-Remaining`: max(0, limit − count).
    pub remaining: u64,
    /// `X-RateLimit-Reset`: Unix seconds at which the window ends.
    pub reset: u64,
    /// `Retry-After` when refused: max(1, reset − now).
    pub retry_after: u64,
    /// Whether the request may proceed.
    pub allowed: bool,
}

/// The limiter: counts every request that reaches it, refused ones included (D25).
pub struct RateLimiter {
    limit: u64,
    redis: Option<Arc<RedisBroker>>,
    names: Names,
    metrics: Metrics,
    /// Per-pod counters of the current window only (swept when the window advances).
    local: Mutex<LocalCounts>,
}

#[derive(Default)]
struct LocalCounts {
    window: u64,
    counts: HashMap<String, u64>,
}

/// Most distinct keys counted per pod and window; beyond it new keys count as over the
/// limit, so memory stays bounded even under a flood of random tokens.
const MAX_LOCAL_KEYS: usize = 1_000_000;

impl RateLimiter {
    /// A limiter of `limit` requests per window; `redis` shares the counters across pods.
    pub fn new(
        limit: u64,
        redis: Option<Arc<RedisBroker>>,
        names: Names,
        metrics: Metrics,
    ) -> RateLimiter {
        RateLimiter {
            limit,
            redis,
            names,
            metrics,
            local: Mutex::new(LocalCounts::default()),
        }
    }

    /// Counts one request for `key` (already a hash: never a raw token) and decides.
    pub async fn check(&self, key: &str) -> Decision {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let window = now - now % WINDOW_SECS;
        let count = match self.redis_count(key, window).await {
            Some(n) => n,
            None => {
                if self.redis.is_some() {
                    self.metrics.rate_limit_fallback();
                }
                self.local_count(key, window)
            }
        };
        let reset = window + WINDOW_SECS;
        Decision {
            limit: self.limit,
            remaining: self.limit.saturating_sub(count),
            reset,
            retry_after: reset.saturating_sub(now).max(1),
            allowed: count <= self.limit,
        }
    }

    async fn redis_count(&self, key: &str, window: u64) -> Option<u64> {
        let redis = self.redis.as_ref()?;
        let client = redis.commands();
        if !client.is_connected() {
            return None;
        }
        let redis_key = self.names.rate_limit_key(key, window);
        let update = async {
            let count: u64 = client.incr(&redis_key).await?;
            // Only the request that created the counter sets its expiry: one round trip for
            // every other request of the window.
            if count == 1 {
                let _: i64 = client
                    .expire(&redis_key, (WINDOW_SECS * 2) as i64, None)
                    .await?;
            }
            Ok::<u64, fred::error::Error>(count)
        };
        match tokio::time::timeout(REDIS_TIMEOUT, update).await {
            Ok(Ok(n)) => Some(n),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "rate-limit counter in Redis failed; counting locally");
                None
            }
            Err(_) => None,
        }
    }

    fn local_count(&self, key: &str, window: u64) -> u64 {
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        if local.window != window {
            local.window = window;
            local.counts = HashMap::new();
        }
        if !local.counts.contains_key(key) && local.counts.len() >= MAX_LOCAL_KEYS {
            return u64::MAX;
        }
        let count = local.counts.entry(key.to_owned()).or_insert(0);
        *count += 1;
        *count
    }
}

/// The limiter key of a request: a hash of its token, else of its client IP.
pub fn key_for(token: Option<&str>, client_ip: &str) -> String {
    match token {
        Some(t) => format!("t:{}", hex::encode(&ryze_core::token::hash(t)[..16])),
        None => format!(
            "ip:{}",
            hex::encode(&ryze_core::token::hash(client_ip)[..16])
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_101st_request_in_a_window_is_refused() {
        let l = RateLimiter::new(100, None, Names::new("t"), Metrics::new(1));
        for i in 1..=100 {
            let d = l.check("k").await;
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 100 - i);
        }
        let d = l.check("k").await;
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        assert!(d.retry_after >= 1 && d.retry_after <= 60);
        assert_eq!(d.reset % 60, 0);
        assert!(l.check("other").await.allowed, "buckets are per key");
    }

    #[test]
    fn keys_never_contain_the_token() {
        let k = key_for(Some("secret-token"), "1.2.3.4");
        assert!(!k.contains("secret"));
        assert_ne!(k, key_for(None, "1.2.3.4"));
    }
}
