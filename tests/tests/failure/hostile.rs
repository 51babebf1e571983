//! Item 6: hostile and slow clients, all at once, next to a well-behaved client of the same
//! instance that must receive every event: one that never reads, one that floods small
//! frames, one that sends 4097 bytes, one that never answers PING, and slowloris requests
//! that never finish their head.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{self, segment, RawWs, System, WAIT};
use crate::{collect, eventually, metric, metric_in, publish_end, scrape, FRAME_WAIT};

/// Frames in the numbered run, and their padding (enough to back up a client that never
/// reads, as in ws_gateway's slow-consumer test).
const EVENTS: u64 = 200;
const PAD: usize = 64 * 1024;
/// Small frames the flooder sends.
const FLOOD: usize = 20_000;

fn padded(seq: u64) -> String {
    format!(r#"{{"seq":{seq},"pad":"{}"}}"#, "h".repeat(PAD))
}

/// How a raw TCP peer's connection ended.
#[derive(Debug)]
enum Ended {
    /// EOF or reset after this long, with what the server sent first (if anything).
    Closed(Duration, String),
    /// Still open at the deadline.
    Open,
}

/// Writes `parts` one after another, `gap` apart, then waits (bounded) for the server to end
/// the connection, reading whatever it sends.
async fn trickle(addr: std::net::SocketAddr, parts: Vec<Vec<u8>>, gap: Duration) -> Ended {
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut received = Vec::new();
    // Not a poll: reads and paced writes race an upper bound, and "still open" is a result.
    let deadline = start + WAIT;
    let mut parts = parts.into_iter();
    let mut next_write = start;
    loop {
        let mut buf = [0u8; 1024];
        tokio::select! {
            r = stream.read(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    return Ended::Closed(
                        start.elapsed(),
                        String::from_utf8_lossy(&received).into_owned(),
                    )
                }
                Ok(n) => received.extend_from_slice(&buf[..n]),
            },
            _ = tokio::time::sleep_until(next_write) => match parts.next() {
                Some(part) => {
                    if stream.write_all(&part).await.is_err() {
                        return Ended::Closed(
                            start.elapsed(),
                            String::from_utf8_lossy(&received).into_owned(),
                        );
                    }
                    next_write = Instant::now() + gap;
                }
                None => next_write = deadline,
            },
            _ = tokio::time::sleep_until(deadline) => return Ended::Open,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_clients_are_handled_while_a_well_behaved_client_receives_every_event() {
    let sys = System::start(
        "sales",
        json!({"enabled": true}),
        1,
        &[
            ("WS_PING_INTERVAL", "500ms".into()),
            ("WS_PONG_TIMEOUT", "3s".into()),
            ("HTTP_HEADER_TIMEOUT", "1s".into()),
            ("WS_SEND_QUEUE", "32".into()),
            ("WS_SEND_QUEUE_BYTES", "2MiB".into()),
            ("RATE_LIMIT_PER_MINUTE", "100000".into()),
        ],
    )
    .await;
    let gw = sys.gw();
    let addr = gw.addr();
    let path = format!("/ws/{}", segment(&sys.inst.name));
    let token = sys.env.account_token.clone();

    // Slowloris, started first so they are open through everything else: half a handshake
    // then silence; the same head one byte every 100 ms; a TCP connection that sends nothing.
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         token: {token}\r\n"
    );
    let half = tokio::spawn(trickle(
        addr,
        vec![head.as_bytes().to_vec()],
        Duration::ZERO,
    ));
    let drip = tokio::spawn(trickle(
        addr,
        head.bytes().map(|b| vec![b]).collect(),
        Duration::from_millis(100),
    ));
    let idle = tokio::spawn(trickle(addr, Vec::new(), Duration::ZERO));

    let good = collect(
        common::connect(gw, &sys.inst.name, &token).await,
        FRAME_WAIT,
    );
    // Never reads (and so never answers PING); its small receive buffer backs the server up.
    let mut never_reads = RawWs::connect(addr, &path, &token, Some(16 * 1024)).await;
    // Reads, but answers PINGs with text frames, never with a PONG.
    let mut mute = RawWs::connect(addr, &path, &sys.inst.token, None).await;
    mute.on_ping = Some("not a pong".to_owned());
    let mute = tokio::spawn(async move { mute.read_until_close(WAIT).await.unwrap() });
    // Sends one message over the 4096-byte limit.
    let mut oversize = common::connect(gw, &sys.inst.name, &sys.inst.token).await;
    oversize.send_text(&"x".repeat(4097)).await.unwrap();
    let oversize = tokio::spawn(async move { oversize.expect_close(WAIT).await.unwrap() });
    // Floods small text and binary frames while it reads (and so answers PINGs).
    let flooder = common::connect(gw, &sys.inst.name, &token).await;
    let flooder = tokio::spawn(async move {
        let mut flooder = flooder;
        let (mut sink, mut stream) = flooder.stream().split();
        let write = async {
            for i in 0..FLOOD {
                let msg = if i % 2 == 0 {
                    Message::text(format!("flood {i}"))
                } else {
                    Message::binary(vec![i as u8; 16])
                };
                sink.feed(msg).await.unwrap();
                if i % 500 == 0 {
                    sink.flush().await.unwrap();
                }
            }
            sink.flush().await.unwrap();
        };
        let read = async {
            let mut seqs = Vec::new();
            loop {
                let msg = tokio::time::timeout(FRAME_WAIT, stream.next())
                    .await
                    .expect("flooder: no frame in time")
                    .expect("flooder: stream ended")
                    .expect("flooder: read error");
                if let Message::Text(t) = msg {
                    let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                    if v["data"]["end"] == true {
                        return seqs;
                    }
                    seqs.push(v["data"]["seq"].as_u64().unwrap());
                }
            }
        };
        let ((), seqs) = tokio::join!(write, read);
        drop((sink, stream));
        (flooder, seqs)
    });

    // The numbered run, in requests of 20.
    for start in (0..EVENTS).step_by(20) {
        let items: Vec<String> = (start..start + 20)
            .map(|seq| sys.item("message.exchange", &padded(seq)))
            .collect();
        common::publish_expect(&sys.publisher, &common::batch(&items), 20, 0, 0, 0).await;
    }
    publish_end(&sys.publisher, std::slice::from_ref(&sys.inst)).await;

    let (good_client, seen, error) = good.await.unwrap();
    assert!(error.is_none(), "well-behaved client: {error:?}");
    let seqs: Vec<u64> = seen.iter().map(|s| s.seq).collect();
    assert_eq!(seqs, (0..EVENTS).collect::<Vec<_>>(), "well-behaved client");

    let (flooder, flooder_seqs) = flooder.await.unwrap();
    assert_eq!(
        flooder_seqs,
        (0..EVENTS).collect::<Vec<_>>(),
        "client frames have no effect (D7): the flooder is an ordinary reader"
    );

    let end = never_reads.read_until_close(WAIT).await.unwrap();
    println!(
        "client that never reads: closed with {:?} after {} frames",
        end.close,
        end.texts.len()
    );
    assert!(
        matches!(
            &end.close,
            Some((1008, r)) if r == "slow consumer"
        ) || matches!(&end.close, Some((1001, r)) if r == "pong timeout"),
        "{:?}",
        end.close
    );
    assert!((end.texts.len() as u64) < EVENTS);
    for (i, text) in end.texts.iter().enumerate() {
        assert!(
            *text == sys.frame("message.exchange", &padded(i as u64)),
            "client that never reads: frame {i} is not the prefix"
        );
    }

    let end = mute.await.unwrap();
    assert_eq!(end.close, Some((1001, "pong timeout".to_owned())), "mute");
    assert!(end.pings >= 1);
    assert_eq!(
        oversize.await.unwrap(),
        Some((1009, "message too big".to_owned()))
    );

    // Slowloris: each is closed by the server once HTTP_HEADER_TIMEOUT (1 s) has run out,
    // without any response.
    for (label, task, min) in [
        ("half a handshake", half, Duration::from_millis(900)),
        ("one byte every 100 ms", drip, Duration::from_millis(900)),
        ("nothing at all", idle, Duration::from_millis(900)),
    ] {
        match task.await.unwrap() {
            Ended::Closed(after, sent) => {
                println!("slowloris ({label}): closed after {after:?}, server sent {sent:?}");
                assert!(after >= min, "{label}: closed after only {after:?}");
                assert!(
                    after < Duration::from_secs(5),
                    "{label}: closed only after {after:?}"
                );
                assert!(
                    sent.is_empty() || sent.starts_with("HTTP/1.1 408"),
                    "{label}: {sent:?}"
                );
            }
            Ended::Open => panic!("slowloris ({label}): still open after {WAIT:?}"),
        }
    }

    // Only the two readers are left; the others are counted by their reasons.
    eventually("two connections left", WAIT, || async {
        let n = metric(gw, "ryze_gateway_connections").await;
        if n == 2.0 {
            Ok(())
        } else {
            Err(format!("{n} open"))
        }
    })
    .await;
    let text = scrape(gw).await;
    assert_eq!(
        metric_in(
            &text,
            "ryze_gateway_connections_closed_total{reason=\"message_too_big\"}"
        ),
        1.0
    );
    assert!(
        metric_in(
            &text,
            "ryze_gateway_connections_closed_total{reason=\"pong_timeout\"}"
        ) >= 1.0
    );
    good_client.close().await.unwrap();
    flooder.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_config_post_whose_body_never_completes_is_cut_off() {
    // Slowloris on the body: the head arrives at once, the declared body never does. With a
    // bogus token the gateway answers 401 at once (unauthenticated bodies are never read,
    // D20); with a valid one it waits for the body, and nothing bounds that wait.
    let env = crate::common::Env::new().await;
    env.create_instance("sales").await;
    let gw = env.gateway(&[("HTTP_HEADER_TIMEOUT", "1s".into())]).await;
    let head = format!(
        "POST /api/events/websocket/sales HTTP/1.1\r\nHost: {}\r\ntoken: {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"enabled\":",
        gw.addr(),
        env.account_token
    );
    match trickle(gw.addr(), vec![head.into_bytes()], Duration::ZERO).await {
        Ended::Closed(after, sent) => {
            println!("stalled body: ended after {after:?}, server sent {sent:?}");
        }
        Ended::Open => panic!("a POST with a stalled body is still open after {WAIT:?}"),
    }
}
