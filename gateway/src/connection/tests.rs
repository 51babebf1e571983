//! The session loop over an in-memory socket (no TCP, so the outbox stays in queue mode),
//! with paused time: the pong deadline, pings answered, queued frames and close requests.

use super::*;
use crate::resume::Resume;
use futures_util::{SinkExt, StreamExt};
use tokio::io::DuplexStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

const LIMITS: SessionLimits = SessionLimits {
    max_message_bytes: 4096,
    ping_interval: Duration::from_secs(30),
    pong_timeout: Duration::from_secs(60),
};

/// A session task on one end of an in-memory socket, and a client on the other.
async fn session(
    outbox: Arc<Outbox>,
) -> (
    tokio::task::JoinHandle<Ended>,
    WebSocketStream<DuplexStream>,
) {
    let (server, client) = tokio::io::duplex(64 * 1024);
    let server = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
    let client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
    let task = tokio::spawn(async move {
        run(server, outbox, LIMITS, &Metrics::new(0), Resume::default()).await
    });
    (task, client)
}

fn frame(text: &'static str) -> Frame {
    Frame {
        text: Utf8Bytes::from_static(text),
        published_micros: 0,
        offset: None,
        with_offset: None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_client_that_never_answers_pings_is_closed_after_the_pong_timeout() {
    let outbox = Arc::new(Outbox::new(16, 1 << 20));
    let (task, _client) = session(outbox).await;
    // The client never reads, so no PONG ever goes back; paused time runs to the deadline.
    assert_eq!(task.await.unwrap(), Ended::Closed(close::PONG_TIMEOUT));
}

#[tokio::test(start_paused = true)]
async fn a_client_that_answers_pings_outlives_many_pong_timeouts() {
    let outbox = Arc::new(Outbox::new(16, 1 << 20));
    let (task, mut client) = session(outbox.clone()).await;
    let pings = tokio::spawn(async move {
        let mut pings = 0;
        // Reading answers each PING (the library queues the PONG and sends it on flush).
        while let Some(Ok(msg)) = client.next().await {
            if msg.is_ping() {
                pings += 1;
                client.flush().await.unwrap();
            }
            if let tungstenite::Message::Close(frame) = msg {
                return (pings, frame.map(|f| u16::from(f.code)));
            }
        }
        (pings, None)
    });
    tokio::time::sleep(LIMITS.pong_timeout * 5).await;
    assert!(
        !task.is_finished(),
        "the session outlived five pong timeouts"
    );
    outbox.close(close::SHUTDOWN);
    assert_eq!(task.await.unwrap(), Ended::Closed(close::SHUTDOWN));
    let (pings, code) = pings.await.unwrap();
    assert!(pings >= 9, "pinged every 30 s: {pings}");
    assert_eq!(code, Some(1001));
}

#[tokio::test(start_paused = true)]
async fn queued_frames_go_out_in_order_then_a_close_request_ends_the_session_with_its_code() {
    let outbox = Arc::new(Outbox::new(16, 1 << 20));
    outbox.push(&frame("one"));
    outbox.push(&frame("two"));
    let (task, mut client) = session(outbox.clone()).await;
    let mut next_text = async || loop {
        match client.next().await.unwrap().unwrap() {
            tungstenite::Message::Text(t) => return Some(t.to_string()),
            tungstenite::Message::Close(f) => return f.map(|f| format!("close {}", f.code)),
            _ => {}
        }
    };
    assert_eq!(next_text().await.as_deref(), Some("one"));
    assert_eq!(next_text().await.as_deref(), Some("two"));
    outbox.push(&frame("three"));
    assert_eq!(next_text().await.as_deref(), Some("three"));
    outbox.close(close::REBALANCING);
    assert_eq!(next_text().await.as_deref(), Some("close 1001"));
    drop(client);
    assert_eq!(task.await.unwrap(), Ended::Closed(close::REBALANCING));
}
