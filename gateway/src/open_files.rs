//! The open-files limit (`RLIMIT_NOFILE`) and the connection cap it allows.
//!
//! Every WebSocket is one descriptor. A pod whose `MAX_CONNECTIONS` exceeds what its limit
//! allows would run out of descriptors first: `accept()` then fails with EMFILE, and new
//! handshakes wait unanswered in the kernel's accept queue. So at start-up the soft limit is
//! raised to the hard one (as Go's runtime does; the soft limit is often 1024 while the hard
//! one is far higher), and the connection semaphore gets the *effective* cap:
//! `min(MAX_CONNECTIONS, soft - reserve)`. Past it an upgrade gets the ordinary 503
//! `Server at capacity`, which needs a descriptor only for as long as the answer takes.

/// Descriptors kept for everything that is not a WebSocket, beyond the Postgres pool: stdio,
/// the runtime's epoll and wake-up descriptors, both listeners, the Redis connections
/// (subscriber, commands, the embedded publisher's; a cluster's nodes or Sentinels), the
/// Postgres NOTIFY listener, admin requests (probes, scrapes), REST requests and refusals in
/// flight on the public listener, the OTLP exporter, and files read at start-up.
pub const RESERVE_MARGIN: u64 = 64;

/// Below this effective cap a WARN says the pod can hardly serve (raise the hard limit).
pub const LOW_CAP: usize = 16;

/// The open-files limits after start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The soft limit in force (what `open`/`accept` are held to).
    pub soft: u64,
    /// The hard limit (the ceiling an unprivileged process may raise its soft limit to).
    pub hard: u64,
    /// The soft limit before it was raised; `None` when it already equalled the hard one.
    pub raised_from: Option<u64>,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns both.
pub fn raise_to_hard() -> std::io::Result<Limits> {
    let (before, hard) = rlimit::Resource::NOFILE.get()?;
    // Also clamps to kern.maxfilesperproc on macOS, where setrlimit refuses more.
    let soft = rlimit::increase_nofile_limit(u64::MAX)?;
    Ok(Limits {
        soft,
        hard,
        raised_from: (soft != before).then_some(before),
    })
}

/// Descriptors reserved for non-WebSocket use: the Postgres pool, its NOTIFY listener, and
/// [`RESERVE_MARGIN`].
pub fn reserve(database_pool_size: usize) -> u64 {
    (database_pool_size as u64)
        .saturating_add(1)
        .saturating_add(RESERVE_MARGIN)
}

/// `min(max_connections, soft - reserve)`, never below zero (then every upgrade is refused).
pub fn connection_cap(max_connections: usize, soft: u64, reserve: u64) -> usize {
    let allowed = soft.saturating_sub(reserve);
    usize::try_from(allowed).map_or(max_connections, |allowed| allowed.min(max_connections))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_is_the_pool_its_listener_and_the_margin() {
        assert_eq!(reserve(16), 16 + 1 + 64);
        assert_eq!(reserve(usize::MAX), u64::MAX);
    }

    #[test]
    fn cap_is_max_connections_when_the_limit_allows_it() {
        assert_eq!(connection_cap(100_000, 1_048_576, reserve(16)), 100_000);
        assert_eq!(connection_cap(100_000, u64::MAX, reserve(16)), 100_000);
    }

    #[test]
    fn cap_is_the_limit_minus_the_reserve_when_lower() {
        assert_eq!(connection_cap(100_000, 256, reserve(16)), 256 - 81);
        assert_eq!(connection_cap(100_000, 1024, reserve(4)), 1024 - 69);
        // Exactly at the boundary both agree.
        assert_eq!(connection_cap(175, 256, 81), 175);
    }

    #[test]
    fn cap_is_zero_when_the_reserve_takes_everything() {
        assert_eq!(connection_cap(100_000, 64, reserve(16)), 0);
        assert_eq!(connection_cap(100_000, 0, 0), 0);
    }

    #[test]
    fn raising_leaves_soft_at_the_hard_limit() {
        let limits = raise_to_hard().expect("getrlimit");
        assert!(limits.soft <= limits.hard);
        #[cfg(target_os = "linux")]
        assert_eq!(limits.soft, limits.hard);
    }
}
