//! Opt-in resume on `/ws/:instance` (SPEC §5.7, D36), the gateway's side: `since` parsing,
//! replay of retained frames then live ones with no gap or duplicate at the seam, `stream.gap`,
//! and frames without `since` left byte-identical.
//!
//! History is written here the way the publisher writes it (one script: XADD to
//! `<prefix>:hist:<id>`, then PUBLISH with the version-2 header carrying the entry id), so these
//! tests pin the gateway to the wire contract (CONTRACT §5) on their own.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use ryze_tests::fixtures as common;

use common::{configure, ws_url, Env, Instance, WAIT};
use fred::prelude::*;
use fred::types::scripts::Script;
use ryze_tests::{Service, WsClient};
use serde_json::{json, Value as Json};

const INVALID_SINCE: &str = r#"{"success":false,"error":{"message":"Invalid since parameter"}}"#;

/// The publisher's append-and-publish, as CONTRACT §5 fixes it (with `p`, the previous entry's
/// id, which lets the gateway tell a trimmed offset from a lost frame).
const APPEND_AND_PUBLISH: &str = r#"
local previous = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local id
if #previous > 0 then
  id = redis.call('XADD', KEYS[1], '*', 'f', ARGV[2], 't', ARGV[3], 'p', previous[1][1])
else
  id = redis.call('XADD', KEYS[1], '*', 'f', ARGV[2], 't', ARGV[3])
end
redis.call('PUBLISH', ARGV[1], '2 ' .. ARGV[3] .. ' ' .. id .. '\n' .. ARGV[2])
return id
"#;

/// A stand-in publisher writing history and publishing version-2 messages.
struct History {
    client: Client,
    script: Script,
    key: String,
    channel: String,
    instance: Instance,
}

impl History {
    async fn new(env: &Env, instance: &Instance) -> History {
        let url = env.redis_url.as_deref().unwrap();
        let client = Builder::from_config(Config::from_url(url).unwrap())
            .build()
            .unwrap();
        client.init().await.unwrap();
        History {
            client,
            script: Script::from_lua(APPEND_AND_PUBLISH),
            key: format!("{}:hist:{}", env.prefix, instance.id),
            channel: format!("{}:ws:{}", env.prefix, instance.id),
            instance: instance.clone(),
        }
    }

    /// The frame of event `seq`, as the publisher builds it.
    fn frame(&self, seq: u64) -> String {
        format!(
            r#"{{"event":"message.status","data":{{"seq":{seq}}},"instanceData":{{"baseUrl":"https://api.example.com","instance":{},"token":{}}}}}"#,
            Json::String(self.instance.name.clone()),
            Json::String(self.instance.token.clone()),
        )
    }

    /// Appends and publishes event `seq`; returns its offset.
    async fn publish(&self, seq: u64) -> String {
        self.script
            .evalsha_with_reload(
                &self.client,
                vec![self.key.clone()],
                vec![self.channel.clone(), self.frame(seq), "1".to_owned()],
            )
            .await
            .unwrap()
    }

    async fn trim_to(&self, n: u64) {
        let _: i64 = self
            .client
            .custom(
                fred::types::CustomCommand::new_static("XTRIM", None, false),
                vec![self.key.clone(), "MAXLEN".to_owned(), n.to_string()],
            )
            .await
            .unwrap();
    }
}

struct World {
    env: Env,
    inst: Instance,
    gw: Service,
    history: History,
}

async fn world() -> World {
    let env = Env::new().await;
    let inst = env.create_instance("sales").await;
    let gw = env.gateway(&[]).await;
    configure(&gw, "sales", &env.account_token, json!({"enabled": true})).await;
    let history = History::new(&env, &inst).await;
    World {
        env,
        inst,
        gw,
        history,
    }
}

async fn connect_since(w: &World, since: &str) -> WsClient {
    let url = format!("{}?since={since}", ws_url(&w.gw, &w.inst.name));
    WsClient::connect(&url, &[("token", &w.inst.token)])
        .await
        .unwrap_or_else(|e| panic!("since={since}: {e}"))
}

/// The next frame: its JSON, and the exact text.
async fn next(c: &mut WsClient) -> (Json, String) {
    let text = c.next_text(WAIT).await.expect("a frame");
    (serde_json::from_str(&text).expect("JSON frame"), text)
}

/// Reads frames until `seq`, asserting each is the next expected one with the right offset.
async fn expect_seqs(
    c: &mut WsClient,
    w: &World,
    seqs: impl Iterator<Item = u64>,
    offsets: &[(u64, String)],
) {
    for seq in seqs {
        let (v, text) = next(c).await;
        assert_eq!(v["data"]["seq"], seq, "expected seq {seq}, got {text}");
        let offset = offsets
            .iter()
            .find(|(s, _)| *s == seq)
            .map(|(_, o)| o.clone());
        if let Some(offset) = offset {
            // The offset is the last top-level key, spliced into the published bytes.
            assert_eq!(
                text,
                format!(
                    "{},\"offset\":\"{offset}\"}}",
                    &w.history.frame(seq)[..w.history.frame(seq).len() - 1]
                ),
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_since_is_400_invalid_since_parameter_after_the_config_check() {
    let w = world().await;
    let long = format!("{}-1", "1".repeat(64));
    for since in [
        "",
        "abc",
        "1",
        "1-x",
        "-1-1",
        &long,
        "now&since=now",
        "1-1&since=2-2",
    ] {
        let url = format!("{}?since={since}", ws_url(&w.gw, &w.inst.name));
        let err = WsClient::connect(&url, &[("token", &w.inst.token)])
            .await
            .err()
            .unwrap_or_else(|| panic!("since={since} was accepted"));
        assert_eq!(err.status(), Some(400), "since={since}");
        assert_eq!(err.body(), Some(INVALID_SINCE), "since={since}");
    }
    // Step 6 (config) comes first: an instance never configured.
    let idle = w.env.create_instance("idle").await;
    let url = format!("{}?since=abc", ws_url(&w.gw, &idle.name));
    let err = WsClient::connect(&url, &[("token", &idle.token)])
        .await
        .err()
        .unwrap();
    assert_eq!(err.status(), Some(400));
    assert!(
        err.body().unwrap().contains("WebSocket is not enabled"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn since_now_gets_live_frames_with_offsets_and_others_get_the_bytes_unchanged() {
    let w = world().await;
    let mut plain = common::connect(&w.gw, &w.inst.name, &w.inst.token).await;
    let mut resumable = connect_since(&w, "now").await;
    let offset = w.history.publish(1).await;
    let (_, text) = next(&mut plain).await;
    assert_eq!(
        text,
        w.history.frame(1),
        "no since: byte-identical frame, no offset"
    );
    expect_seqs(&mut resumable, &w, 1..=1, &[(1, offset)]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn resuming_replays_what_followed_the_offset_then_live_frames_with_no_gap_or_duplicate() {
    let w = world().await;
    // A listener keeps the instance subscribed, so every frame is published live as well.
    let mut watcher = connect_since(&w, "now").await;
    let mut offsets = Vec::new();
    for seq in 1..=20 {
        offsets.push((seq, w.history.publish(seq).await));
    }
    expect_seqs(&mut watcher, &w, 1..=20, &offsets).await;

    // Resume at several offsets while publishing continues: the seam must hold each time.
    let publisher = {
        let history = History::new(&w.env, &w.inst).await;
        tokio::spawn(async move {
            let mut more = Vec::new();
            for seq in 21..=220 {
                more.push((seq, history.publish(seq).await));
                if seq % 20 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            more
        })
    };
    let mut clients = Vec::new();
    for from in [3u64, 10, 19] {
        let since = offsets[(from - 1) as usize].1.clone();
        clients.push((from, connect_since(&w, &since).await));
    }
    let more = publisher.await.unwrap();
    offsets.extend(more);
    for (from, mut c) in clients {
        expect_seqs(&mut c, &w, from + 1..=220, &offsets).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_offset_no_longer_retained_gets_stream_gap_first_then_what_is_retained() {
    let w = world().await;
    let mut watcher = connect_since(&w, "now").await;
    let mut offsets = Vec::new();
    for seq in 1..=10 {
        offsets.push((seq, w.history.publish(seq).await));
    }
    expect_seqs(&mut watcher, &w, 1..=10, &offsets).await;
    w.history.trim_to(3).await; // keeps 8, 9, 10
    let gone = offsets[1].1.clone(); // seq 2: 3..7 were trimmed after it
    let mut c = connect_since(&w, &gone).await;
    let (gap, text) = next(&mut c).await;
    assert_eq!(gap["event"], "stream.gap", "{text}");
    assert_eq!(gap["data"], json!({"since": gone}));
    assert_eq!(gap["instanceData"]["instance"], w.inst.name.as_str());
    assert!(gap.get("offset").is_none(), "{text}");
    expect_seqs(&mut c, &w, 8..=10, &offsets).await;

    // Only the offset itself trimmed (seq 7): nothing after it is missing, so no gap.
    let mut c = connect_since(&w, &offsets[6].1).await;
    expect_seqs(&mut c, &w, 8..=10, &offsets).await;

    // An offset this stream never issued (another instance's, or region's): a gap, then live.
    let mut c = connect_since(&w, "1-0").await;
    let (gap, _) = next(&mut c).await;
    assert_eq!(gap["event"], "stream.gap");
    expect_seqs(&mut c, &w, 8..=10, &offsets).await;
    let live = w.history.publish(11).await;
    expect_seqs(&mut c, &w, 11..=11, &[(11, live)]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_any_history_the_gap_comes_before_the_first_live_frame() {
    let w = world().await;
    let mut c = connect_since(&w, "5-0").await;
    let offset = w.history.publish(1).await;
    let (gap, text) = next(&mut c).await;
    assert_eq!(gap["event"], "stream.gap", "{text}");
    assert_eq!(gap["data"]["since"], "5-0");
    expect_seqs(&mut c, &w, 1..=1, &[(1, offset)]).await;
}

/// D38: after the gateway's Redis connections went silent and were replaced, a client
/// *without* `since` gets, from history, everything published meanwhile, in order, once.
#[tokio::test(flavor = "multi_thread")]
async fn after_a_black_hole_a_client_without_since_misses_nothing_history_retained() {
    let env = Env::new().await;
    let inst = env.create_instance("sales").await;
    let proxy = ryze_tests::FaultProxy::in_front_of(ryze_tests::redis().await)
        .await
        .unwrap();
    let gw = env
        .gateway(&[
            ("REDIS_URL", proxy.redis_url()),
            ("REDIS_STALL_TIMEOUT", "1s".to_owned()),
        ])
        .await;
    configure(&gw, "sales", &env.account_token, json!({"enabled": true})).await;
    let history = History::new(&env, &inst).await;
    let w = World {
        env,
        inst,
        gw,
        history,
    };
    let mut client = common::connect(&w.gw, &w.inst.name, &w.inst.token).await;
    w.history.publish(1).await;
    let (first, _) = next(&mut client).await;
    assert_eq!(first["data"]["seq"], 1);

    proxy.blackhole_existing();
    // Published while the gateway's subscription is dead: only history has these.
    for seq in 2..=30 {
        w.history.publish(seq).await;
    }
    w.gw.wait_not_ready(WAIT).await.unwrap();
    w.gw.wait_ready(common::READY).await.unwrap();
    for seq in 31..=40 {
        w.history.publish(seq).await;
    }
    for seq in 2..=40 {
        let (v, text) = next(&mut client).await;
        assert_eq!(v["data"]["seq"], seq, "in order, once: {text}");
        assert_eq!(text, w.history.frame(seq), "no offset without since");
    }
}

/// D35 for resume: a client that reads keeps its connection through a replay of a whole
/// history's worth of frames (1,000 here, HISTORY_SIZE's default), far more than its 256-frame
/// send queue: replayed frames are written by the session itself, outside the queue.
#[tokio::test(flavor = "multi_thread")]
async fn a_reading_client_survives_replaying_a_whole_history() {
    let w = world().await;
    let first = w.history.publish(0).await;
    let mut offsets = vec![(0, first.clone())];
    for seq in 1..=1000 {
        offsets.push((seq, w.history.publish(seq).await));
    }
    let mut c = connect_since(&w, &first).await;
    expect_seqs(&mut c, &w, 1..=1000, &offsets).await;
    // Still open and live afterwards (a slow-consumer close would have ended the stream).
    let live = w.history.publish(1001).await;
    expect_seqs(&mut c, &w, 1001..=1001, &[(1001, live)]).await;
}
