//! History on the publisher side (SPEC D37, CONTRACT §5): with `HISTORY_SIZE` above 0 every
//! published frame is appended to `<prefix>:hist:<id>` in the same script call that publishes
//! it with a version-2 header carrying the entry id; an instance a resumable client may come
//! back to gets appends without publishes; an instance nobody watches costs nothing; history
//! is trimmed and expires; `HISTORY_SIZE=0` is the version-1 behaviour; a flushed script
//! cache is refilled.
//!
//! A raw Redis subscriber stands in for the gateway, and the live and resume keys are set by
//! hand (the gateway's job), so each case is exact.

use ryze_tests::fixtures as common;

use common::{batch, publish_expect, System, WAIT};
use fred::prelude::*;
use serde_json::json;
use std::collections::HashMap;

/// History settings of the publishers below.
const SIZE: usize = 100;
const TTL_MS: i64 = 30_000;

fn history_env() -> Vec<(&'static str, String)> {
    vec![
        ("HISTORY_SIZE", SIZE.to_string()),
        ("HISTORY_TTL", format!("{TTL_MS}ms")),
    ]
}

/// A system (one publisher with `publisher_env`, one gateway for the config) and a raw
/// subscriber of the instance's channel.
struct Bench {
    sys: System,
    redis: Client,
    rx: tokio::sync::broadcast::Receiver<fred::types::Message>,
    subscriber: Client,
}

impl Bench {
    async fn start(publisher_env: &[(&'static str, String)]) -> Bench {
        let env = common::Env::new().await;
        let sys =
            System::start_in(env, "hist", json!({"enabled": true}), 1, &[], publisher_env).await;
        let url = sys.env.redis_url.clone().expect("redis");
        let connect = |url: &str| {
            let config = fred::types::config::Config::from_url(url).expect("redis url");
            fred::types::Builder::from_config(config)
                .build()
                .expect("client")
        };
        let redis = connect(&url);
        redis.init().await.expect("redis connects");
        let subscriber = connect(&url);
        let rx = subscriber.message_rx();
        subscriber.init().await.expect("subscriber connects");
        subscriber
            .subscribe(format!("{}:ws:{}", sys.env.prefix, sys.inst.id))
            .await
            .expect("SUBSCRIBE");
        Bench {
            sys,
            redis,
            rx,
            subscriber,
        }
    }

    fn key(&self, kind: &str) -> String {
        format!("{}:{kind}:{}", self.sys.env.prefix, self.sys.inst.id)
    }

    /// Sets `<prefix>:<kind>:<id>` as a gateway would (`live` or `resume`).
    async fn mark(&self, kind: &str) {
        let _: () = self
            .redis
            .set(
                self.key(kind),
                1,
                Some(fred::types::Expiration::PX(60_000)),
                None,
                false,
            )
            .await
            .expect("SET marker");
    }

    /// The next message on the instance's channel: (header, frame).
    async fn next(&mut self) -> (String, String) {
        let msg = tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("a message on the instance channel")
            .expect("receiver");
        let body = msg.value.as_bytes().expect("bytes").to_vec();
        let text = String::from_utf8(body).expect("UTF-8");
        let (header, frame) = text.split_once('\n').expect("a header line");
        (header.to_owned(), frame.to_owned())
    }

    /// Entries of the history stream, oldest first: (id, fields).
    async fn entries(&self, start: &str, end: &str) -> Vec<(String, HashMap<String, String>)> {
        self.redis
            .xrange(self.key("hist"), start, end, None)
            .await
            .expect("XRANGE")
    }

    async fn xlen(&self) -> usize {
        self.redis.xlen(self.key("hist")).await.expect("XLEN")
    }
}

/// `2 <micros> <offset>` → (micros, offset).
fn v2(header: &str) -> (String, String) {
    let parts: Vec<&str> = header.split(' ').collect();
    assert_eq!(
        (parts.len(), parts[0]),
        (3, "2"),
        "version-2 header: {header:?}"
    );
    (parts[1].to_owned(), parts[2].to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn published_frames_carry_the_offset_of_a_history_entry_that_already_holds_them() {
    let mut b = Bench::start(&history_env()).await;
    b.mark("live").await;
    // Several requests of several events; each message is checked against the stream the
    // moment it arrives: an offset missing then would be a frame seen before history had it.
    let mut sent = Vec::new();
    for round in 0..5 {
        let items: Vec<String> = (0..4)
            .map(|i| {
                let data = format!(r#"{{"round":{round},"i":{i}}}"#);
                sent.push(b.sys.frame("call.update", &data));
                b.sys.item("call.update", &data)
            })
            .collect();
        publish_expect(&b.sys.publisher, &batch(&items), 4, 0, 0, 0).await;
    }
    let mut offsets = Vec::new();
    for expected in &sent {
        let (header, frame) = b.next().await;
        assert_eq!(
            &frame, expected,
            "frames arrive in publish order, byte for byte"
        );
        let (micros, offset) = v2(&header);
        let entry = b.entries(&offset, &offset).await;
        assert_eq!(
            entry.len(),
            1,
            "offset {offset} is in the stream when its frame arrives"
        );
        assert_eq!(
            entry[0].1.get("f"),
            Some(&frame),
            "the entry holds the exact frame"
        );
        assert_eq!(entry[0].1.get("t"), Some(&micros), "and the publish stamp");
        offsets.push(offset);
    }
    let all: Vec<String> = b.entries("-", "+").await.into_iter().map(|e| e.0).collect();
    assert_eq!(all, offsets, "one entry per frame, in the same order");

    let ttl: i64 = b.redis.pttl(b.key("hist")).await.expect("PTTL");
    assert!(ttl > 0 && ttl <= TTL_MS, "PTTL {ttl} within HISTORY_TTL");
}

#[tokio::test(flavor = "multi_thread")]
async fn resumable_instances_get_history_without_a_publish_and_unwatched_ones_get_nothing() {
    let mut b = Bench::start(&history_env()).await;
    let nobody = r#"{"n":"nobody"}"#;
    publish_expect(
        &b.sys.publisher,
        &b.sys.item("call.update", nobody),
        0,
        0,
        1,
        0,
    )
    .await;
    assert_eq!(
        b.xlen().await,
        0,
        "an instance nobody watches costs nothing"
    );
    let exists: i64 = b.redis.exists(b.key("hist")).await.expect("EXISTS");
    assert_eq!(exists, 0);

    b.mark("resume").await;
    let resumable = r#"{"n":"resumable"}"#;
    publish_expect(
        &b.sys.publisher,
        &b.sys.item("call.update", resumable),
        0,
        0,
        1,
        0,
    )
    .await;
    let entries = b.entries("-", "+").await;
    assert_eq!(entries.len(), 1, "appended for the resumable client");
    assert_eq!(
        entries[0].1.get("f"),
        Some(&b.sys.frame("call.update", resumable))
    );

    // Not published: the next message on the channel is the sentinel sent once live.
    b.mark("live").await;
    let sentinel = r#"{"n":"sentinel"}"#;
    publish_expect(
        &b.sys.publisher,
        &b.sys.item("call.update", sentinel),
        1,
        0,
        0,
        0,
    )
    .await;
    let (header, frame) = b.next().await;
    assert_eq!(frame, b.sys.frame("call.update", sentinel));
    let ids: Vec<String> = b.entries("-", "+").await.into_iter().map(|e| e.0).collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(v2(&header).1, ids[1]);
}

#[tokio::test(flavor = "multi_thread")]
async fn history_is_trimmed_near_history_size_and_survives_a_script_flush() {
    let mut b = Bench::start(&history_env()).await;
    b.mark("live").await;
    let items: Vec<String> = (0..SIZE + 50)
        .map(|i| b.sys.item("message.status", &format!(r#"{{"i":{i}}}"#)))
        .collect();
    publish_expect(&b.sys.publisher, &batch(&items), SIZE + 50, 0, 0, 0).await;
    // `MAXLEN ~` trims whole stream nodes (100 entries by default): documented bound.
    let len = b.xlen().await;
    assert!(
        (SIZE..=SIZE + 100).contains(&len),
        "XLEN {len} within [HISTORY_SIZE, HISTORY_SIZE + 100]"
    );
    // Those frames are not looked at: a fresh receiver starts after them.
    b.rx = b.subscriber.message_rx();

    // A restarted or flushed Redis forgets scripts: EVALSHA fails, EVAL takes over.
    let _: () = b.redis.script_flush(false).await.expect("SCRIPT FLUSH");
    let data = r#"{"after":"flush"}"#;
    publish_expect(
        &b.sys.publisher,
        &b.sys.item("call.update", data),
        1,
        0,
        0,
        0,
    )
    .await;
    let (header, frame) = loop {
        let msg = match tokio::time::timeout(WAIT, b.rx.recv())
            .await
            .expect("a message")
        {
            Ok(msg) => msg,
            // Frames of the batch above overflowing the receiver: not looked at.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(e) => panic!("receiver: {e}"),
        };
        let text = String::from_utf8(msg.value.as_bytes().expect("bytes").to_vec()).unwrap();
        let (header, frame) = text.split_once('\n').expect("a header line");
        if !frame.contains("message.status") {
            break (header.to_owned(), frame.to_owned());
        }
    };
    assert_eq!(frame, b.sys.frame("call.update", data));
    let offset = v2(&header).1;
    assert_eq!(b.entries(&offset, &offset).await.len(), 1);
    // And the script is cached again for the next request.
    let cached: Vec<bool> = b
        .redis
        .script_exists(vec![publisher_script_sha1()])
        .await
        .expect("SCRIPT EXISTS");
    assert_eq!(cached, vec![true]);
}

#[tokio::test(flavor = "multi_thread")]
async fn history_size_zero_publishes_version_one_and_keeps_no_stream() {
    let mut b = Bench::start(&[("HISTORY_SIZE", "0".to_owned())]).await;
    b.mark("live").await;
    b.mark("resume").await;
    let data = r#"{"n":1}"#;
    publish_expect(
        &b.sys.publisher,
        &b.sys.item("call.update", data),
        1,
        0,
        0,
        0,
    )
    .await;
    let (header, frame) = b.next().await;
    assert_eq!(frame, b.sys.frame("call.update", data));
    assert!(
        header.starts_with("1 ") && header.split(' ').count() == 2,
        "version-1 header: {header:?}"
    );
    let exists: i64 = b.redis.exists(b.key("hist")).await.expect("EXISTS");
    assert_eq!(exists, 0, "no history stream with HISTORY_SIZE=0");
}

/// SHA-1 of the publisher's history script, as `SCRIPT LOAD` would report it.
fn publisher_script_sha1() -> String {
    ryze_publisher::outlet::history::HistoryScript::new(ryze_core::history::Retention {
        size: 1,
        ttl: std::time::Duration::from_secs(1),
    })
    .sha1()
    .to_owned()
}
