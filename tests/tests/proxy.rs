//! Tests of [`FaultProxy`]: bytes pass both ways; black-holed connections stay open but
//! silent while new ones pass; `blackhole_all` until `heal`; resets; dropping the proxy closes
//! everything; and a real Redis client through it.
//!
//! "Nothing arrives" is asserted as a read that neither returns data nor ends (EOF or error)
//! within [`SILENCE`]: a short timeout is the assertion itself here, not a wait for something.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::ClientLike;
use ryze_tests::{redis, FaultProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Upper bound for something that must happen.
const WAIT: Duration = Duration::from_secs(10);
/// How long a black-holed connection must stay silent and open.
const SILENCE: Duration = Duration::from_millis(300);

/// A loopback echo server standing in for Redis/Postgres, counting its connections so tests
/// can tell what the upstream saw.
struct Echo {
    addr: SocketAddr,
    /// Connections the echo server accepted.
    accepted: Arc<AtomicU64>,
    /// Connections it has not yet seen closed.
    open: Arc<AtomicUsize>,
}

async fn echo_server() -> Echo {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding the echo server");
    let addr = listener.local_addr().expect("echo server address");
    let accepted = Arc::new(AtomicU64::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    let (acc, opn) = (Arc::clone(&accepted), Arc::clone(&open));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            acc.fetch_add(1, Ordering::SeqCst);
            opn.fetch_add(1, Ordering::SeqCst);
            let opn = Arc::clone(&opn);
            tokio::spawn(async move {
                let (mut rd, mut wr) = stream.split();
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
                opn.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Echo {
        addr,
        accepted,
        open,
    }
}

/// Sends `msg` and expects it echoed back within [`WAIT`].
async fn assert_echoes(stream: &mut TcpStream, msg: &[u8]) {
    stream.write_all(msg).await.expect("writing to the proxy");
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(WAIT, stream.read_exact(&mut buf))
        .await
        .expect("no echo in time")
        .expect("echo read failed");
    assert_eq!(buf, msg);
}

/// Sends `msg` and asserts that for [`SILENCE`] nothing comes back and the connection is not
/// closed (no EOF, no error).
async fn assert_silent_but_open(stream: &mut TcpStream, msg: &[u8]) {
    stream
        .write_all(msg)
        .await
        .expect("writing to a black-holed connection");
    let mut buf = [0u8; 64];
    match tokio::time::timeout(SILENCE, stream.read(&mut buf)).await {
        Err(_elapsed) => {}
        Ok(Ok(0)) => panic!("a black-holed connection was closed (EOF)"),
        Ok(Ok(n)) => panic!("a black-holed connection delivered {n} bytes"),
        Ok(Err(e)) => panic!("a black-holed connection failed: {e}"),
    }
}

/// Expects the connection to end (EOF or an error such as a reset) within [`WAIT`]; returns
/// how it ended.
async fn closed(stream: &mut TcpStream) -> io::Result<usize> {
    let mut buf = [0u8; 64];
    loop {
        let read = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("the connection was not closed in time");
        match read {
            Ok(n) if n > 0 => continue,
            end => return end,
        }
    }
}

/// Polls `value` until it equals `want`, bounded by [`WAIT`].
async fn eventually_eq(what: &str, want: usize, value: impl Fn() -> usize) {
    ryze_tests::eventually(what, WAIT, || {
        let now = value();
        async move {
            if now == want {
                Ok(())
            } else {
                Err(format!("{now}, wanted {want}"))
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bytes_pass_through_both_ways() {
    let echo = echo_server().await;
    let proxy = FaultProxy::start(echo.addr).await.unwrap();
    assert_eq!(proxy.addr().ip().to_string(), "127.0.0.1");
    assert_eq!(proxy.addr().port(), proxy.port());

    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_echoes(&mut client, b"hello").await;
    assert_eq!(proxy.accepted(), 1);
    assert_eq!(proxy.open_connections(), 1);

    // Far more than the proxy's buffers: written and read concurrently, all of it arrives
    // intact.
    let big: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let (mut rd, mut wr) = client.split();
    let mut back = vec![0u8; big.len()];
    let (w, r) = tokio::time::timeout(WAIT, async {
        tokio::join!(wr.write_all(&big), rd.read_exact(&mut back))
    })
    .await
    .expect("4 MiB did not pass in time");
    w.unwrap();
    r.unwrap();
    assert!(back == big, "the 4 MiB came back altered");

    // A client half-close passes on: the echo server ends its side, so the client sees EOF.
    client.shutdown().await.unwrap();
    assert_eq!(closed(&mut client).await.unwrap(), 0);
    eventually_eq("the proxy forgets the closed connection", 0, || {
        proxy.open_connections()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn blackholed_connection_stays_open_but_silent_while_new_connections_pass() {
    let echo = echo_server().await;
    let proxy = FaultProxy::start(echo.addr).await.unwrap();
    let mut old = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_echoes(&mut old, b"before").await;

    assert_eq!(proxy.blackhole_existing(), 1);
    assert_silent_but_open(&mut old, b"after").await;

    let mut new = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_echoes(&mut new, b"new").await;
    assert_eq!(proxy.accepted(), 2);
    assert_eq!(proxy.open_connections(), 2);
    // The upstream was told nothing either: its side of the old connection is still open.
    assert_eq!(echo.open.load(Ordering::SeqCst), 2);

    // Only the new connection is newly black-holed.
    assert_eq!(proxy.blackhole_existing(), 1);
    assert_silent_but_open(&mut new, b"again").await;
    assert_silent_but_open(&mut old, b"still").await;

    // Closing a black-holed client connection releases it in the proxy.
    drop(old);
    eventually_eq(
        "the proxy forgets the closed black-holed connection",
        1,
        || proxy.open_connections(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn blackholed_connection_is_not_read_so_the_writer_eventually_blocks() {
    let echo = echo_server().await;
    let proxy = FaultProxy::start(echo.addr).await.unwrap();
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_echoes(&mut client, b"ping").await;
    proxy.blackhole_existing();

    // Far more than loopback socket buffers can take: the write can only finish if someone
    // reads, and nobody does.
    let flood = vec![0u8; 64 * 1024 * 1024];
    let wrote = tokio::time::timeout(Duration::from_secs(1), client.write_all(&flood)).await;
    assert!(wrote.is_err(), "64 MiB were accepted by a black hole");
}

#[tokio::test(flavor = "multi_thread")]
async fn blackhole_all_silences_new_connections_until_heal() {
    let echo = echo_server().await;
    let proxy = FaultProxy::start(echo.addr).await.unwrap();
    let mut before = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_echoes(&mut before, b"before").await;

    proxy.blackhole_all();
    assert_silent_but_open(&mut before, b"x").await;
    // Accepted (the connect succeeds), then silent, and never forwarded upstream.
    let mut during = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_silent_but_open(&mut during, b"y").await;
    assert_eq!(proxy.accepted(), 2);
    assert_eq!(proxy.open_connections(), 2);
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 1);

    proxy.heal();
    let mut after = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_echoes(&mut after, b"after").await;
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 2);
    // Healing does not revive connections black-holed before.
    assert_silent_but_open(&mut during, b"z").await;
    assert_eq!(proxy.open_connections(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_all_resets_open_and_blackholed_connections() {
    let echo = echo_server().await;
    let proxy = FaultProxy::start(echo.addr).await.unwrap();
    let mut live = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_echoes(&mut live, b"live").await;
    let mut dead = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_echoes(&mut dead, b"dead").await;
    assert_eq!(proxy.blackhole_existing(), 2);
    let mut live2 = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_echoes(&mut live2, b"live2").await;
    drop(live);

    eventually_eq("the closed connection is forgotten", 2, || {
        proxy.open_connections()
    })
    .await;
    assert_eq!(proxy.reset_all(), 2);
    for stream in [&mut dead, &mut live2] {
        match closed(stream).await {
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            other => panic!("expected a reset, got {other:?}"),
        }
    }
    eventually_eq("reset connections are forgotten", 0, || {
        proxy.open_connections()
    })
    .await;
    eventually_eq("the upstream sees its connections end", 0, || {
        echo.open.load(Ordering::SeqCst)
    })
    .await;

    // The proxy itself keeps working.
    let mut next = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_echoes(&mut next, b"next").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dropping_the_proxy_closes_every_connection_and_the_listener() {
    let echo = echo_server().await;
    let proxy = FaultProxy::start(echo.addr).await.unwrap();
    let addr = proxy.addr();
    let mut live = TcpStream::connect(addr).await.unwrap();
    assert_echoes(&mut live, b"live").await;
    let mut dead = TcpStream::connect(addr).await.unwrap();
    assert_echoes(&mut dead, b"dead").await;
    proxy.blackhole_existing();
    proxy.blackhole_all();
    let mut born_dead = TcpStream::connect(addr).await.unwrap();
    assert_silent_but_open(&mut born_dead, b"nothing").await;

    drop(proxy);
    for stream in [&mut live, &mut dead, &mut born_dead] {
        // EOF, or a reset where the proxy dropped unread bytes.
        let _ = closed(stream).await;
    }
    eventually_eq("the upstream sees its connections end", 0, || {
        echo.open.load(Ordering::SeqCst)
    })
    .await;
    // The listener is gone: connects are refused (one racing the shutdown may still land in
    // the backlog, hence the retry).
    ryze_tests::eventually("the proxy refuses connections", WAIT, || async {
        match TcpStream::connect(addr).await {
            Ok(_) => Err("the proxy still accepts".to_owned()),
            Err(_) => Ok(()),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_ping_through_the_proxy_times_out_once_blackholed() {
    let server = redis().await;
    let upstream: SocketAddr = ([127, 0, 0, 1], server.port()).into();
    let proxy = FaultProxy::start(upstream).await.unwrap();

    let connect = || async {
        let url = format!("redis://127.0.0.1:{}", proxy.port());
        let config = fred::types::config::Config::from_url(&url).unwrap();
        let client = fred::types::Builder::from_config(config).build().unwrap();
        tokio::time::timeout(WAIT, client.init())
            .await
            .expect("fred connects in time")
            .expect("fred connects");
        client
    };
    let client = connect().await;
    let pong: String = client.ping(None).await.unwrap();
    assert_eq!(pong, "PONG");
    assert_eq!(proxy.open_connections(), 1);

    assert_eq!(proxy.blackhole_existing(), 1);
    let ping = tokio::time::timeout(Duration::from_secs(1), client.ping::<String>(None)).await;
    assert!(
        ping.is_err(),
        "PING answered through a black hole: {ping:?}"
    );

    // A new connection passes: what a client that detects the dead one should do.
    let fresh = connect().await;
    let pong: String = fresh.ping(None).await.unwrap();
    assert_eq!(pong, "PONG");
    assert_eq!(proxy.accepted(), 2);

    let _ = fresh.quit().await;
    // The black-holed client's QUIT would hang: dropping the proxy ends its connection.
    drop(proxy);
    drop(client);
}
