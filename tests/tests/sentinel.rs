//! Redis Sentinel (issue 16, item 3): both binaries on `redis-sentinel://…` follow a failover
//! on their own, in plain text and over TLS. A real primary, replica and three Sentinels
//! ([`ryze_tests::RedisSentinel`]).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use ryze_tests::fixtures as common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{configure, connect, Env, API_KEY, READY, WAIT};
use ryze_tests::{pg, RedisSentinel, TestCerts};
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Upper bound from the kill to the first delivery: generous (down-after 1 s, election,
/// the clients' capped reconnect backoff of 5 s); the measured figure is printed, not asserted.
const FAILOVER_BOUND: Duration = Duration::from_secs(60);
/// Pace of the traffic kept up across the failover.
const PERIOD: Duration = Duration::from_millis(50);

#[tokio::test(flavor = "multi_thread")]
async fn both_binaries_follow_a_sentinel_failover_after_the_primary_is_killed() {
    let setup = RedisSentinel::start().await.unwrap();
    follow_failover(&setup, &[]).await;
}

/// The same over TLS (`rediss-sentinel://`, every server and Sentinel TLS only): after the
/// failover both binaries reach the promoted replica over TLS, verified against the CA file.
#[tokio::test(flavor = "multi_thread")]
async fn both_binaries_follow_a_sentinel_failover_over_tls() {
    let certs = Arc::new(TestCerts::generate().await.unwrap());
    let setup = RedisSentinel::start_tls(certs.clone()).await.unwrap();
    assert!(setup.url().starts_with("rediss-sentinel://"));
    follow_failover(&setup, &certs.redis_env(false)).await;
}

/// Kills the primary of `setup` under traffic; a gateway and a publisher (with `extra`
/// settings) become unready, follow the promoted replica and deliver again.
async fn follow_failover(setup: &RedisSentinel, extra: &[(&'static str, String)]) {
    let db = pg().await.fresh_database().await.unwrap();
    let env = Env::with(db.url, Some(setup.url()), None).await;
    let inst = env.create_instance("ha").await;
    let gw = env.gateway(extra).await;
    let publisher = env.publisher(extra).await;
    configure(&gw, "ha", &env.account_token, json!({"enabled": true})).await;
    let mut client = connect(&gw, "ha", &env.account_token).await;
    let ingest = publisher.url("/v1/events");
    let publish = {
        let (ingest, id) = (ingest.clone(), inst.id.clone());
        move |seq: u64| post_seq(ingest.clone(), id.clone(), seq)
    };
    assert_eq!(publish(0).await, 202);
    let first = client.next_json(WAIT).await.unwrap();
    assert_eq!(first["data"]["seq"], 0);

    // Traffic under the failover: one event every PERIOD, whatever the answer.
    let stop = CancellationToken::new();
    let next_seq = Arc::new(AtomicU64::new(1));
    let feed = tokio::spawn({
        let (stop, next_seq) = (stop.clone(), next_seq.clone());
        let publish = publish.clone();
        async move {
            let mut tick = tokio::time::interval(PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let seq = next_seq.fetch_add(1, Ordering::SeqCst);
                publish(seq).await;
            }
        }
    });
    // Let some traffic flow before the kill.
    let before = client.next_json(WAIT).await.unwrap();
    assert!(before["data"]["seq"].as_u64().unwrap() >= 1);

    let killed_at = Instant::now();
    let first_after_kill = next_seq.load(Ordering::SeqCst);
    setup.primary().kill().unwrap();
    gw.wait_not_ready(WAIT).await.unwrap();
    publisher.wait_not_ready(WAIT).await.unwrap();

    // The first frame of an event published after the kill.
    let delivered_after = tokio::time::timeout(FAILOVER_BOUND, async {
        loop {
            let v = client.next_json(FAILOVER_BOUND).await.unwrap();
            if v["data"]["seq"].as_u64().unwrap() >= first_after_kill {
                return killed_at.elapsed();
            }
        }
    })
    .await
    .expect("no delivery after the failover");
    eprintln!(
        "sentinel failover: SIGKILL of the primary to the first delivered event: {:.2} s",
        delivered_after.as_secs_f64()
    );
    stop.cancel();
    feed.await.unwrap();

    setup.wait_replica_promoted(FAILOVER_BOUND).await.unwrap();
    gw.wait_ready(READY).await.unwrap();
    publisher.wait_ready(READY).await.unwrap();
    // Both now talk to the promoted replica: an event published now is delivered.
    let data = r#"{"after":"failover"}"#;
    common::publish_expect(
        &publisher,
        &common::item(&inst.id, "instance.state", data),
        1,
        0,
        0,
        0,
    )
    .await;
    loop {
        let text = client.next_text(WAIT).await.unwrap();
        if text.contains(r#""after":"failover""#) {
            assert_eq!(text, common::frame("instance.state", data, &inst));
            break;
        }
    }
    assert_eq!(
        common::numsub(setup.replica(), &env.prefix, &inst.id).await,
        1,
        "the gateway is not subscribed on the promoted replica"
    );
}

/// The Sentinels switch to another primary while the old one keeps answering as a primary
/// (as after a failover during which it was paused or cut off, until a Sentinel demotes it,
/// up to 10 s later; here never). Both binaries must leave it for the one the Sentinels name:
/// otherwise the publisher writes where pods that connected after the switch never read.
/// Without the primary watch, both stay on the old primary and the gateway never subscribes
/// on the new one.
#[tokio::test(flavor = "multi_thread")]
async fn both_binaries_leave_a_primary_the_sentinels_no_longer_name() {
    let setup = RedisSentinel::start().await.unwrap();
    let db = pg().await.fresh_database().await.unwrap();
    let env = Env::with(db.url, Some(setup.url()), None).await;
    let inst = env.create_instance("moved").await;
    let gw = env.gateway(&[]).await;
    let publisher = env.publisher(&[]).await;
    configure(&gw, "moved", &env.account_token, json!({"enabled": true})).await;
    let mut client = connect(&gw, "moved", &env.account_token).await;
    assert_eq!(
        post_seq(publisher.url("/v1/events"), inst.id.clone(), 0).await,
        202
    );
    assert_eq!(client.next_json(WAIT).await.unwrap()["data"]["seq"], 0);
    let old = setup.primary();
    assert_eq!(common::numsub(old, &env.prefix, &inst.id).await, 1);

    let new = ryze_tests::RedisServer::start().await.unwrap();
    setup.renominate(&new).await.unwrap();
    ryze_tests::eventually(
        "the gateway subscribed on the named primary only",
        WAIT,
        || async {
            let on_new = common::numsub(&new, &env.prefix, &inst.id).await;
            let on_old = common::numsub(old, &env.prefix, &inst.id).await;
            if (on_new, on_old) == (1, 0) {
                Ok(())
            } else {
                Err(format!(
                    "subscribers: {on_new} on the named primary, {on_old} on the old one"
                ))
            }
        },
    )
    .await;
    gw.wait_ready(READY).await.unwrap();
    publisher.wait_ready(READY).await.unwrap();
    // Delivered through the named primary: the only server the gateway listens on, and one
    // the old primary does not replicate to.
    let seq = ryze_tests::eventually(
        "an event published after the switch delivered",
        WAIT,
        || {
            let ingest = publisher.url("/v1/events");
            let id = inst.id.clone();
            async move {
                match post_seq(ingest, id, 1).await {
                    202 => Ok(()),
                    status => Err(format!("ingest answered {status}")),
                }
            }
        },
    );
    seq.await;
    assert_eq!(client.next_json(WAIT).await.unwrap()["data"]["seq"], 1);
}

/// Publishes `{"seq":n}` as a `message.status` event; the status, or 0 without an answer.
async fn post_seq(ingest: String, instance_id: String, seq: u64) -> u16 {
    let body = common::item(
        &instance_id,
        "message.status",
        &format!(r#"{{"seq":{seq}}}"#),
    );
    ryze_tests::http()
        .post(ingest)
        .header("authorization", format!("Bearer {API_KEY}"))
        .header("content-type", "application/json")
        .body(body)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}
