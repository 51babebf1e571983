//! The accept loop: HTTP/1.1 with upgrades, a request-head timeout against slowloris, the
//! peer address for rate limiting, and graceful shutdown. (axum::serve sets no header timeout.)
//!
//! A failed `accept()` never ends the loop. Out of descriptors (EMFILE/ENFILE) it backs off,
//! 5 ms doubling to 1 s and reset by the next success, so it neither spins nor stalls long
//! once a descriptor frees; each failure is counted (`ryze_gateway_accept_errors`) and logged
//! at WARN at most once per 10 s with the number since the last line.

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::metrics::Metrics;

/// Pending connections the kernel may queue before accepting (capped by `somaxconn`). The
/// library default of 128 overflowed in reconnect storms, and each overflow costs the client
/// a one-second SYN retransmit.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener with a backlog sized for reconnect storms.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As TcpListener::bind does: a restarted pod can rebind while old sockets linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Largest request head accepted (hyper answers 431 beyond it).
const MAX_HEAD_BYTES: usize = 32 * 1024;

/// Serves `router` on `listener` until `stop` is cancelled; then stops accepting and lets
/// in-flight requests finish (upgraded sockets are owned by their sessions, not by this loop).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    header_timeout: Duration,
    stop: CancellationToken,
    tasks: TaskTracker,
    metrics: Metrics,
) {
    let mut failures = AcceptFailures::default();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    let Some(pause) = failures.failed(&e, &metrics, Instant::now()) else {
                        continue;
                    };
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(pause) => continue,
                    }
                }
            },
        };
        failures.succeeded();
        let _ = stream.set_nodelay(true);
        let service =
            router
                .clone()
                .map_request(move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    req
                });
        let stop = stop.clone();
        tasks.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(MAX_HEAD_BYTES);
            let conn = builder
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => log_conn_end(r, peer),
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    log_conn_end(conn.await, peer);
                }
            }
        });
    }
}

fn log_conn_end(result: Result<(), hyper::Error>, peer: SocketAddr) {
    if let Err(e) = result {
        tracing::debug!(peer.addr = %peer, error = %e, "http connection ended with an error");
    }
}

/// EMFILE and ENFILE (the same numbers on Linux and the BSDs); std has no stable `ErrorKind`.
const OPEN_FILES_ERRNOS: [i32; 2] = [24, 23];
/// First pause after a failed accept.
const BACKOFF_MIN: Duration = Duration::from_millis(5);
/// Longest pause (axum::serve always pauses this long).
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one WARN line per interval.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The accept loop's failure state: back-off and the rate limit of its WARN line.
#[derive(Default)]
struct AcceptFailures {
    /// The next pause; zero after a success.
    backoff: Duration,
    /// When the last WARN line was written.
    last_warn: Option<Instant>,
    /// Failures since the last WARN line.
    unlogged: u64,
}

impl AcceptFailures {
    /// Counts `e` and returns how long to pause before accepting again; `None` to retry at
    /// once (the peer gave up before we accepted: nothing is exhausted).
    fn failed(&mut self, e: &std::io::Error, metrics: &Metrics, now: Instant) -> Option<Duration> {
        use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
        if matches!(
            e.kind(),
            ConnectionAborted | ConnectionRefused | ConnectionReset
        ) {
            tracing::debug!(error = %e, "accept: peer gone before accept");
            return None;
        }
        let open_files = e
            .raw_os_error()
            .is_some_and(|n| OPEN_FILES_ERRNOS.contains(&n));
        metrics.accept_error(if open_files { "open_files" } else { "other" });
        self.unlogged += 1;
        if self
            .last_warn
            .is_none_or(|t| now.duration_since(t) >= WARN_EVERY)
        {
            tracing::warn!(
                error = %e,
                out_of_open_files = open_files,
                failures = self.unlogged,
                "accept failed; backing off (failures counts those since the last line)"
            );
            self.last_warn = Some(now);
            self.unlogged = 0;
        }
        self.backoff = (self.backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
        Some(self.backoff)
    }

    /// A connection was accepted: the next failure starts from the shortest pause.
    fn succeeded(&mut self) {
        self.backoff = Duration::ZERO;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emfile() -> std::io::Error {
        std::io::Error::from_raw_os_error(24)
    }

    #[test]
    fn out_of_descriptors_backs_off_doubling_to_a_cap_and_resets_on_success() {
        let metrics = Metrics::new(0);
        let mut f = AcceptFailures::default();
        let now = Instant::now();
        let pauses: Vec<_> = (0..10)
            .map(|_| f.failed(&emfile(), &metrics, now))
            .collect();
        assert_eq!(pauses[0], Some(BACKOFF_MIN));
        assert_eq!(pauses[1], Some(BACKOFF_MIN * 2));
        assert_eq!(pauses[9], Some(BACKOFF_MAX));
        // One WARN line so far; nine failures wait for the next.
        assert_eq!(f.unlogged, 9);
        f.succeeded();
        assert_eq!(f.failed(&emfile(), &metrics, now), Some(BACKOFF_MIN));
        let text = metrics.render((0, 0), Vec::new());
        assert!(
            text.contains(r#"ryze_gateway_accept_errors_total{reason="open_files"} 11"#),
            "{text}"
        );
    }

    #[test]
    fn the_warn_line_is_written_again_after_the_interval() {
        let metrics = Metrics::new(0);
        let mut f = AcceptFailures::default();
        let now = Instant::now();
        f.failed(&emfile(), &metrics, now);
        f.failed(&emfile(), &metrics, now + Duration::from_secs(1));
        assert_eq!(f.unlogged, 1);
        f.failed(&emfile(), &metrics, now + WARN_EVERY);
        assert_eq!(f.unlogged, 0);
    }

    #[test]
    fn a_peer_gone_before_accept_is_retried_at_once_and_not_counted() {
        let metrics = Metrics::new(0);
        let mut f = AcceptFailures::default();
        let e = std::io::Error::from(std::io::ErrorKind::ConnectionAborted);
        assert_eq!(f.failed(&e, &metrics, Instant::now()), None);
        assert_eq!(f.unlogged, 0);
    }
}
