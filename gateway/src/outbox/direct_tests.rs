//! Direct mode against a real loopback socket.

use super::wire::Header;
use super::{Frame, Outbox, Push};
use crate::metrics::Metrics;
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tungstenite::Utf8Bytes;

async fn connected(max_frames: usize) -> (Arc<Outbox>, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (server, _) = l.accept().await.unwrap();
    server.writable().await.unwrap();
    let o = Arc::new(Outbox::new(max_frames, 64 << 20));
    o.connect(server, Metrics::new(0));
    assert!(o.go_direct(false, None));
    (o, client)
}

fn frame(text: String) -> Frame {
    Frame {
        text: Utf8Bytes::from(text),
        published_micros: 0,
        offset: None,
        with_offset: None,
    }
}

fn encoded(text: &str) -> Vec<u8> {
    let mut v = Header::text(text.len()).as_slice().to_vec();
    v.extend_from_slice(text.as_bytes());
    v
}

#[tokio::test]
async fn an_idle_socket_takes_the_frame_at_once() {
    let (o, mut client) = connected(4).await;
    assert_eq!(o.push(&frame("hello".into())), Push::Sent);
    let mut got = [0u8; 7];
    client.read_exact(&mut got).await.unwrap();
    assert_eq!(got.to_vec(), encoded("hello"));
}

#[tokio::test]
async fn a_full_socket_queues_in_order_with_control_bytes_between_frames() {
    let (o, mut client) = connected(1_000).await;
    let texts: Vec<String> = (0..400)
        .map(|i| format!("{i:05}{}", "y".repeat(60_000)))
        .collect();
    let mut expected = Vec::new();
    let mut queued = 0;
    for (i, t) in texts.iter().enumerate() {
        match o.push(&frame(t.clone())) {
            Push::Sent => {}
            Push::Queued => queued += 1,
            other => panic!("frame {i}: {other:?}"),
        }
        expected.extend(encoded(t));
        if i == 200 {
            // A control frame from the library joins the stream between two frames.
            let ping = [0x89u8, 0];
            let n = std::future::poll_fn(|cx| o.poll_write_raw(cx, &ping))
                .await
                .unwrap();
            assert_eq!(n, 2);
            expected.extend(ping);
        }
    }
    assert!(queued > 0, "the client reads nothing: the socket must fill");
    let writer = {
        let o = o.clone();
        tokio::spawn(async move { o.flush().await })
    };
    let mut got = vec![0u8; expected.len()];
    client.read_exact(&mut got).await.unwrap();
    writer.await.unwrap().unwrap();
    assert!(got == expected, "bytes differ from the frames in order");
    assert_eq!(
        o.push(&frame("after".into())),
        Push::Sent,
        "drained: direct again"
    );
}

#[tokio::test]
async fn stop_keeps_a_started_frame_and_drops_the_rest() {
    let (o, mut client) = connected(1_000).await;
    let big = "z".repeat(1 << 20);
    let mut sent = Vec::new();
    while o.push(&frame(big.clone())) == Push::Sent {
        sent.extend(encoded(&big));
    }
    o.push(&frame(big.clone()));
    o.stop(ryze_core::close::SLOW_CONSUMER);
    assert_eq!(o.push(&frame(big.clone())), Push::Closed);
    {
        let s = o.lock();
        assert!(s.wire.len() <= 1, "only a started frame may stay");
        assert_eq!(s.wire.len(), usize::from(s.sent > 0));
    }
    let mut got = vec![0u8; sent.len()];
    client.read_exact(&mut got).await.unwrap();
    assert!(got == sent);
}
