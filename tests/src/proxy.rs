//! [`FaultProxy`]: a loopback TCP proxy that injects network faults between our binaries and
//! Redis/Postgres.
//!
//! Stopping a server only produces the clean failures (refused connects, FIN, RST). The faults
//! that hurt in production are silent: a NAT or load-balancer entry that expires, a failover
//! behind a VIP, where the socket stays open and nothing ever comes back. The proxy reproduces
//! those on demand ([`FaultProxy::blackhole_existing`], [`FaultProxy::blackhole_all`]), and
//! abrupt resets too ([`FaultProxy::reset_all`]).
//!
//! One accept task; one task per connection, which copies both directions with its own loops
//! (so it can stop mid-stream, which `copy_bidirectional` cannot) through one fixed buffer per
//! direction. A black-holed connection is no longer read at all, so the kernel buffers fill
//! and the writer eventually blocks, as behind a real black hole, while both sockets stay
//! open. Every task watches the proxy's [`CancellationToken`] and ends when the proxy drops.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Per direction and connection: the proxy never holds more than this many bytes in flight.
const BUF_SIZE: usize = 16 * 1024;
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// A TCP proxy on `127.0.0.1:<free port>` forwarding to one upstream, whose connections can be
/// black-holed or reset on demand.
///
/// Point a binary at [`FaultProxy::addr`] instead of the server to test how it survives
/// silent network failures (no FIN, no RST, nothing arrives) that stopping the server cannot
/// produce. Dropping the proxy stops the accept loop and closes every connection.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// Cancelled on drop: ends the accept loop and every connection task.
    shutdown: CancellationToken,
}

struct Shared {
    /// Open connections by id, each with its controls. Never locked across an `.await`.
    conns: Mutex<Conns>,
    accepted: AtomicU64,
}

#[derive(Default)]
struct Conns {
    by_id: HashMap<u64, ConnCtl>,
    next_id: u64,
    /// Set by `blackhole_all`, cleared by `heal`: new connections start black-holed. Kept
    /// under the same lock as `by_id` so a connection accepted concurrently is either in the
    /// map when `blackhole_all` runs or sees the flag.
    blackhole_new: bool,
}

/// One connection's controls, shared by the proxy and the connection's task.
#[derive(Clone)]
struct ConnCtl {
    /// Cancelled to black-hole the connection (never un-cancelled).
    blackhole: CancellationToken,
    /// Cancelled to reset the connection.
    reset: CancellationToken,
    /// The proxy's shutdown token.
    shutdown: CancellationToken,
}

impl Shared {
    fn conns(&self) -> MutexGuard<'_, Conns> {
        // A panic while holding the lock leaves the map consistent (single inserts/removes).
        self.conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl FaultProxy {
    /// A proxy in front of a private or shared `redis-server` on loopback.
    pub async fn in_front_of(server: &crate::RedisServer) -> anyhow::Result<FaultProxy> {
        FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], server.port()))).await
    }

    /// `redis://127.0.0.1:<proxy port>`: the `REDIS_URL` that goes through the proxy.
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port())
    }

    /// Binds `127.0.0.1:0` and starts forwarding every accepted connection to `upstream`.
    ///
    /// The listener is bound here and kept, so the port cannot be taken by anyone else between
    /// choosing it and using it (no `free_port()` race). Must be called inside a tokio runtime;
    /// the tasks it spawns live until the proxy is dropped.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the fault proxy on 127.0.0.1:0")?;
        let addr = listener
            .local_addr()
            .context("reading the fault proxy's address")?;
        let shared = Arc::new(Shared {
            conns: Mutex::new(Conns::default()),
            accepted: AtomicU64::new(0),
        });
        let shutdown = CancellationToken::new();
        tokio::spawn(accept_loop(
            listener,
            upstream,
            Arc::clone(&shared),
            shutdown.clone(),
        ));
        Ok(FaultProxy {
            addr,
            shared,
            shutdown,
        })
    }

    /// The address clients connect to instead of the upstream's.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port of [`FaultProxy::addr`], for URLs such as `redis://127.0.0.1:<port>`.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Black-holes every connection open now, as after a NAT/LB timeout or a failover behind a
    /// load balancer: nothing flows in either direction any more (bytes the proxy had read but
    /// not yet written are discarded; after that it reads nothing, so the kernel buffers fill),
    /// yet both sockets stay open: no FIN, no RST reaches either side.
    ///
    /// Connections accepted afterwards pass normally. A black-holed connection stays dead
    /// until its client closes it, [`FaultProxy::reset_all`], or the proxy drops; if the
    /// upstream closes it meanwhile, the client is not told. Returns how many connections were
    /// newly black-holed (ones already black-holed are not counted again).
    pub fn blackhole_existing(&self) -> usize {
        let conns = self.shared.conns();
        blackhole(&conns)
    }

    /// Black-holes everything until [`FaultProxy::heal`]: the connections open now, as
    /// [`FaultProxy::blackhole_existing`] does, and every new one, which is accepted (the
    /// client's connect succeeds) and then never answered, nor forwarded upstream.
    pub fn blackhole_all(&self) {
        let mut conns = self.shared.conns();
        conns.blackhole_new = true;
        blackhole(&conns);
    }

    /// Ends [`FaultProxy::blackhole_all`]: new connections pass again. Connections already
    /// black-holed stay dead until closed, as a client must notice and reconnect.
    pub fn heal(&self) {
        self.shared.conns().blackhole_new = false;
    }

    /// Resets every open connection (black-holed ones included): both sockets are closed with
    /// `SO_LINGER` 0, so the client and the upstream see a TCP RST (a crashed middlebox, a
    /// killed peer). Returns how many connections were reset. The resets happen in the
    /// connections' tasks just after this returns.
    pub fn reset_all(&self) -> usize {
        let conns = self.shared.conns();
        conns
            .by_id
            .values()
            .filter(|ctl| !ctl.reset.is_cancelled())
            .inspect(|ctl| ctl.reset.cancel())
            .count()
    }

    /// Connections open right now, black-holed ones included, for assertions such as "the
    /// gateway opened a new connection". A connection counts from its accept until its client
    /// closes it (or a reset, or the upstream closing a connection that is not black-holed).
    pub fn open_connections(&self) -> usize {
        self.shared.conns().by_id.len()
    }

    /// Connections accepted since start, for assertions such as "the client reconnected"
    /// that must not depend on when the old connection was closed.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    /// Stops the accept loop (closing the listener) and every connection task (closing both
    /// sockets: a FIN, or a RST where the kernel still held unread bytes, as on a black-holed
    /// connection), so no connection outlives the proxy. The tasks end at their next poll,
    /// just after this returns.
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Cancels the black-hole token of every connection not yet black-holed; returns how many.
fn blackhole(conns: &Conns) -> usize {
    conns
        .by_id
        .values()
        .filter(|ctl| !ctl.blackhole.is_cancelled())
        .inspect(|ctl| ctl.blackhole.cancel())
        .count()
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let client = match accepted {
            Ok((client, _)) => client,
            Err(e) => {
                tracing::warn!(error = %e, "fault proxy: accept failed");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let (id, ctl) = {
            let mut conns = shared.conns();
            let id = conns.next_id;
            conns.next_id += 1;
            let ctl = ConnCtl {
                blackhole: CancellationToken::new(),
                reset: CancellationToken::new(),
                shutdown: shutdown.clone(),
            };
            if conns.blackhole_new {
                ctl.blackhole.cancel();
            }
            conns.by_id.insert(id, ctl.clone());
            (id, ctl)
        };
        let registered = Registered {
            id,
            shared: Arc::clone(&shared),
        };
        tokio::spawn(async move {
            // Dropped when the task ends or is cancelled (runtime shutdown): unregisters.
            let _registered = registered;
            connection(client, upstream, ctl).await;
        });
    }
}

/// Removes a connection from the open set when its task ends, however it ends.
struct Registered {
    id: u64,
    shared: Arc<Shared>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.shared.conns().by_id.remove(&self.id);
    }
}

/// How a connection's forwarding or holding ended.
enum End {
    /// A side closed or failed; drop both sockets.
    Closed,
    /// `reset_all`: close both sockets with a RST.
    Reset,
    /// The proxy was dropped.
    Shutdown,
    /// `blackhole_*`: stop forwarding, keep the sockets.
    Blackholed,
}

/// Runs one connection: connects upstream (unless born black-holed), forwards until
/// black-holed, then holds the sockets without reading them.
async fn connection(client: TcpStream, upstream_addr: SocketAddr, ctl: ConnCtl) {
    let mut client = client;
    let _ = client.set_nodelay(true);
    let mut upstream = None;
    if !ctl.blackhole.is_cancelled() {
        let connected = tokio::select! {
            biased;
            _ = ctl.shutdown.cancelled() => return,
            _ = ctl.reset.cancelled() => {
                abort(&client);
                return;
            }
            connected = TcpStream::connect(upstream_addr) => connected,
        };
        match connected {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                upstream = Some(stream);
            }
            Err(e) => {
                // The closest a proxy can get to "connection refused" once it has accepted.
                tracing::debug!(error = %e, %upstream_addr, "fault proxy: upstream connect failed");
                abort(&client);
                return;
            }
        }
    }
    let mut end = match upstream.as_mut() {
        Some(up) if !ctl.blackhole.is_cancelled() => forward(&mut client, up, &ctl).await,
        _ => End::Blackholed,
    };
    if let End::Blackholed = end {
        end = hold(&client, &mut upstream, &ctl).await;
    }
    if let End::Reset = end {
        abort(&client);
        if let Some(up) = &upstream {
            abort(up);
        }
    }
    // Both sockets drop here (FIN unless `abort` set SO_LINGER 0).
}

/// Copies both directions until one side fails, both have closed, or a control fires.
async fn forward(client: &mut TcpStream, upstream: &mut TcpStream, ctl: &ConnCtl) -> End {
    let (mut client_rd, mut client_wr) = client.split();
    let (mut upstream_rd, mut upstream_wr) = upstream.split();
    let both = async {
        tokio::try_join!(
            pump(&mut client_rd, &mut upstream_wr),
            pump(&mut upstream_rd, &mut client_wr),
        )
    };
    tokio::select! {
        biased;
        _ = ctl.shutdown.cancelled() => End::Shutdown,
        _ = ctl.reset.cancelled() => End::Reset,
        // Whatever `pump` had read but not yet written is discarded with its future.
        _ = ctl.blackhole.cancelled() => End::Blackholed,
        _ = both => End::Closed,
    }
}

/// Copies `from` to `to` through one fixed buffer; on EOF passes the half-close on.
async fn pump<R, W>(from: &mut R, to: &mut W) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buf[..n]).await?;
    }
}

/// Holds a black-holed connection without reading either socket, until the client closes it
/// (then both are dropped), a reset, or shutdown. If the upstream closes first, only its
/// socket is dropped: the client must not learn about it.
async fn hold(client: &TcpStream, upstream: &mut Option<TcpStream>, ctl: &ConnCtl) -> End {
    enum Event {
        End(End),
        UpstreamClosed,
    }
    loop {
        let event = tokio::select! {
            biased;
            _ = ctl.shutdown.cancelled() => Event::End(End::Shutdown),
            _ = ctl.reset.cancelled() => Event::End(End::Reset),
            _ = peer_closed(client) => Event::End(End::Closed),
            _ = peer_closed_opt(upstream.as_ref()) => Event::UpstreamClosed,
        };
        match event {
            Event::End(end) => return end,
            Event::UpstreamClosed => *upstream = None,
        }
    }
}

async fn peer_closed_opt(stream: Option<&TcpStream>) {
    match stream {
        Some(stream) => peer_closed(stream).await,
        None => std::future::pending().await,
    }
}

/// Resolves once the peer has closed (FIN or RST), without reading any data: arrived bytes
/// stay in the kernel's receive buffer, as on a connection nobody reads.
///
/// Readiness that only says "data arrived" is cleared (a `try_io` returning `WouldBlock`) so
/// the wait resumes at the next socket event instead of spinning; tokio never clears the
/// read-closed flag, so a close is never missed.
async fn peer_closed(stream: &TcpStream) {
    loop {
        match stream.ready(Interest::READABLE).await {
            Ok(ready) if ready.is_read_closed() => return,
            Ok(_) => {
                let _ = stream.try_io(Interest::READABLE, || {
                    Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
                });
            }
            Err(_) => return,
        }
    }
}

/// Makes dropping `stream` send a RST instead of a FIN.
fn abort(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}
