#![allow(clippy::unwrap_used)]
//! Scale-out topologies end to end (issue 12), with real processes on loopback only:
//!
//! - `cluster`: a 3-master Redis Cluster (`redis-cluster://`, sharded pub/sub). Clients on two
//!   gateways receive events of instances whose channels hash to different masters; a master
//!   stopped and restarted on the same port and nodes.conf → readiness recovers, the
//!   subscriptions come back, delivery resumes on the same sockets. The control channel
//!   (deletion → 1008) and the shared rate-limit bucket work in cluster mode.
//! - `regions`: three plain Redis servers as three regions, a gateway in each, one publisher
//!   with `REGION_REDIS_URLS`. An event reaches every region; a stopped region neither slows
//!   ingest nor the other regions, its drops are counted, and it resumes by itself; deletions
//!   and config changes reach every region through the relayed control channel.
//!
//! Every wait is bounded; where recovery timing is not specified (after a restart) the tests
//! publish until the event arrives, within a bound.

use ryze_tests::fixtures as common;

#[path = "scale_out/cluster.rs"]
mod cluster;
#[path = "scale_out/regions.rs"]
mod regions;

use std::time::Duration;

use common::{frame, item, post_events, Instance, WAIT};
use futures_util::StreamExt;
use ryze_tests::{Service, WsClient};
use tokio_tungstenite::tungstenite::Message;

/// Upper bound for delivery to resume after a Redis node or server came back.
const RECOVERY: Duration = Duration::from_secs(60);
/// How long one round of [`publish_until_delivered`] waits for a frame per client.
const ROUND_WAIT: Duration = Duration::from_millis(400);

/// `{"probe":"<tag>","seq":<n>}`: the data of a probe event.
fn probe(tag: &str, seq: u64) -> String {
    format!(r#"{{"probe":"{tag}","seq":{seq}}}"#)
}

/// The (tag, seq) of a probe frame of `inst`, checking that the frame is exactly what the
/// publisher builds for that event. Panics on anything else.
fn parse_probe(text: &str, event: &str, inst: &Instance) -> (String, u64) {
    let v: serde_json::Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("frame is not JSON ({e}): {text}"));
    let tag = v["data"]["probe"]
        .as_str()
        .unwrap_or_else(|| panic!("not a probe frame of {}: {text}", inst.name))
        .to_owned();
    let seq = v["data"]["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("probe frame without seq: {text}"));
    assert_eq!(
        text,
        frame(event, &probe(&tag, seq), inst),
        "frame of {} is not the exact published frame",
        inst.name
    );
    (tag, seq)
}

/// The next text frame within `timeout`: `Ok(None)` when none came; panics on a close or an
/// ended stream (these tests keep their sockets open through every outage).
async fn next_text_or_none(client: &mut WsClient, timeout: Duration, who: &str) -> Option<String> {
    // One bound over several reads, each awaiting the next message: not a poll.
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, client.stream().next()).await {
            Err(_) => return None,
            Ok(Some(Ok(Message::Text(t)))) => return Some(t.as_str().to_owned()),
            Ok(Some(Ok(Message::Close(f)))) => panic!("{who}: socket closed: {f:?}"),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => panic!("{who}: socket failed: {e}"),
            Ok(None) => panic!("{who}: socket ended"),
        }
    }
}

/// Publishes probe events `tag`/0, 1, 2, … for `inst` until every client in `clients` has
/// received one of them (bounded by [`RECOVERY`]). Ingest errors while Redis recovers are
/// tolerated (the bound still applies). Frames of earlier probes that are still queued are
/// skipped; anything else fails. Returns the number of events published.
async fn publish_until_delivered(
    publisher: &Service,
    inst: &Instance,
    clients: &mut [(&str, &mut WsClient)],
    tag: &str,
) -> u64 {
    const EVENT: &str = "message.exchange";
    // Not `eventually`: each round publishes a new probe and reads every client, and the
    // failure names the clients still waiting.
    let deadline = tokio::time::Instant::now() + RECOVERY;
    let mut done = vec![false; clients.len()];
    let mut seq = 0;
    let mut last_ingest = String::new();
    while done.iter().any(|d| !d) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{tag}: no probe of {} reached {:?} within {RECOVERY:?} ({seq} published; last \
             ingest answer {last_ingest})",
            inst.name,
            clients
                .iter()
                .zip(&done)
                .filter(|(_, d)| !**d)
                .map(|((who, _), _)| *who)
                .collect::<Vec<_>>(),
        );
        let (status, body) = post_events(publisher, &item(&inst.id, EVENT, &probe(tag, seq))).await;
        last_ingest = format!("{status} {body}");
        seq += 1;
        for ((who, client), done) in clients.iter_mut().zip(done.iter_mut()) {
            // Read everything that arrived; stop early once a current probe was seen.
            while !*done {
                let Some(text) = next_text_or_none(client, ROUND_WAIT, who).await else {
                    break;
                };
                let (got_tag, got_seq) = parse_probe(&text, EVENT, inst);
                if got_tag == tag {
                    assert!(got_seq < seq, "{who}: probe {got_seq} was never published");
                    *done = true;
                } else {
                    eprintln!("{who}: skipping a late frame of probe {got_tag}/{got_seq}");
                }
            }
        }
    }
    seq
}

/// Reads frames until `expected` arrives (exact text), skipping frames of earlier probes of
/// `inst` (left over from [`publish_until_delivered`]). Fails on any other frame or at `WAIT`.
async fn next_probe(client: &mut WsClient, expected: &str, inst: &Instance, who: &str) {
    // One bound over several reads, each awaiting the next message: not a poll.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(text) = next_text_or_none(client, left, who).await else {
            panic!("{who}: {expected} did not arrive within {WAIT:?}");
        };
        if text == expected {
            return;
        }
        // Must be an earlier probe (parse_probe panics on anything else).
        parse_probe(&text, "message.exchange", inst);
    }
}

/// The value of one sample in Prometheus text (`name{labels}` exactly as exposed), if any.
async fn metric(url: &str, sample: &str) -> Option<f64> {
    ryze_tests::metrics::Exposition::scrape(url)
        .await
        .unwrap()
        .get(sample)
}

/// The next frame's (`data.seq`, `offset`, text).
async fn next_seq(c: &mut WsClient) -> (Option<u64>, Option<String>, String) {
    let text = c.next_text(WAIT).await.expect("a frame");
    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON frame");
    (
        v["data"]["seq"].as_u64(),
        v["offset"].as_str().map(str::to_owned),
        text,
    )
}

/// SPEC §5.7 on this deployment: a `since=now` client on `a` sees offsets; a client resuming on
/// `b` from the second offset gets exactly the frames after it (with the same offsets), then
/// live frames. Returns the offsets seen.
async fn resume_round_trip(
    publisher: &Service,
    a: &Service,
    b: &Service,
    inst: &Instance,
    token: &str,
) -> Vec<String> {
    let connect_since = |gw: &Service, since: String| {
        let url = format!("{}?since={since}", common::ws_url(gw, &inst.name));
        let token = token.to_owned();
        async move {
            WsClient::connect(&url, &[("token", token.as_str())])
                .await
                .unwrap_or_else(|e| panic!("since={since}: {e}"))
        }
    };
    let mut live = connect_since(a, "now".to_owned()).await;
    let mut offsets = Vec::new();
    for seq in 1..=4u64 {
        common::publish_expect(
            publisher,
            &item(&inst.id, "message.status", &format!(r#"{{"seq":{seq}}}"#)),
            1,
            0,
            0,
            0,
        )
        .await;
        let (got, offset, text) = next_seq(&mut live).await;
        assert_eq!(got, Some(seq), "{text}");
        offsets.push(offset.unwrap_or_else(|| panic!("no offset on a since=now frame: {text}")));
    }
    let mut resumed = connect_since(b, offsets[1].clone()).await;
    for seq in 3..=4u64 {
        let (got, offset, text) = next_seq(&mut resumed).await;
        assert_eq!(
            got,
            Some(seq),
            "replayed after the offset, nothing before: {text}"
        );
        assert_eq!(offset.as_deref(), Some(offsets[seq as usize - 1].as_str()));
    }
    common::publish_expect(
        publisher,
        &item(&inst.id, "message.status", r#"{"seq":5}"#),
        1,
        0,
        0,
        0,
    )
    .await;
    for c in [&mut live, &mut resumed] {
        let (got, offset, text) = next_seq(c).await;
        assert_eq!(got, Some(5), "then live: {text}");
        offsets.push(offset.expect("offset"));
    }
    offsets
}
