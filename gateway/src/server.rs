//! The accept loop: HTTP/1.1 with upgrades, a request-head timeout against slowloris, the
//! peer address for rate limiting, and graceful shutdown. (axum::serve sets no header timeout.)

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

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
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
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
