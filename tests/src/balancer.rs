//! [`Balancer`]: a loopback round-robin TCP load balancer, as a Kubernetes Service spreads new
//! connections over the ready pods. Each accepted connection goes to the next backend of a
//! list the test can change at any time ([`Balancer::set_backends`]); existing connections
//! stay where they are (that is what rebalancing must fix).
//!
//! One accept task, one task per connection copying both directions
//! (`copy_bidirectional`); every task ends when the balancer drops.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// A round-robin TCP balancer on `127.0.0.1:<free port>`. Dropping it stops the accept loop
/// and closes every forwarded connection.
pub struct Balancer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
}

struct Shared {
    backends: Mutex<Vec<SocketAddr>>,
    next: AtomicU64,
    /// Connections forwarded, per backend address, in accept order.
    forwarded: Mutex<Vec<SocketAddr>>,
}

impl Balancer {
    /// Starts balancing over `backends` (which may be empty: connections are then dropped).
    pub async fn start(backends: Vec<SocketAddr>) -> anyhow::Result<Balancer> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the balancer")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            backends: Mutex::new(backends),
            next: AtomicU64::new(0),
            forwarded: Mutex::new(Vec::new()),
        });
        let shutdown = CancellationToken::new();
        tokio::spawn(accept_loop(listener, shared.clone(), shutdown.clone()));
        Ok(Balancer {
            addr,
            shared,
            shutdown,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://<balancer><path>`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Replaces the backend list; new connections use it from now on.
    pub fn set_backends(&self, backends: Vec<SocketAddr>) {
        *self
            .shared
            .backends
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = backends;
    }

    /// How many connections were forwarded to `backend` so far.
    pub fn forwarded_to(&self, backend: SocketAddr) -> usize {
        self.shared
            .forwarded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|a| **a == backend)
            .count()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let client = match accepted {
            Ok((client, _)) => client,
            Err(_) => {
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let backend = {
            let backends = shared.backends.lock().unwrap_or_else(|p| p.into_inner());
            if backends.is_empty() {
                continue;
            }
            let i = shared.next.fetch_add(1, Ordering::Relaxed) as usize % backends.len();
            backends[i]
        };
        shared
            .forwarded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(backend);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let Ok(mut upstream) = TcpStream::connect(backend).await else {
                return;
            };
            let mut client = client;
            let _ = client.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
            }
        });
    }
}
