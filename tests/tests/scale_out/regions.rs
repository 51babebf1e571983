//! Multi-region: three plain Redis servers stand for three regions, each with its own
//! gateway (`REDIS_URL` = that region's Redis); one publisher publishes to all of them
//! (`REGION_REDIS_URLS=eu=…,us=…,ap=…`, no `REDIS_URL`).

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{
    batch, configure, connect, envelope, frame, item, post_events, publish_expect, ws_url,
    ControlWatcher, Env, Instance, READY, WAIT,
};
use crate::{metric, next_probe, probe, publish_until_delivered};
use ryze_tests::{pg, RedisServer, Service, WsClient};

/// The regions, in `REGION_REDIS_URLS` order.
const REGIONS: [&str; 3] = ["eu", "us", "ap"];
/// Upper bound for one ingest request while a region is down. The region's Redis round trip
/// is bounded at 2 s inside the publisher; none of it may show up in ingest.
const INGEST_BOUND: Duration = Duration::from_secs(1);
/// Ingest requests while a region's Redis hangs, and the bound on their total duration.
const HUNG_EVENTS: u64 = 10;
const HUNG_TOTAL_BOUND: Duration = Duration::from_millis(1500);

struct Region {
    name: &'static str,
    redis: RedisServer,
    gw: Service,
}

struct World {
    env: Env,
    regions: Vec<Region>,
    publisher: Service,
}

/// Three regional Redis servers with a gateway each, and one publisher for all of them.
async fn start_world(extra: &[(&'static str, String)]) -> World {
    let db = pg().await.fresh_database().await.expect("fresh database");
    // No REDIS_URL in the shared environment: each gateway gets its region's.
    let env = Env::with(db.url, None, None).await;
    let mut regions = Vec::new();
    for name in REGIONS {
        let redis = RedisServer::start().await.expect("regional redis");
        let mut gw_env = extra.to_vec();
        gw_env.push(("REDIS_URL", redis.url()));
        let gw = env.gateway(&gw_env).await;
        regions.push(Region { name, redis, gw });
    }
    let spec: Vec<String> = regions
        .iter()
        .map(|r| format!("{}={}", r.name, r.redis.url()))
        .collect();
    let mut pub_env = extra.to_vec();
    pub_env.push(("REGION_REDIS_URLS", spec.join(",")));
    let publisher = env.publisher(&pub_env).await;
    World {
        env,
        regions,
        publisher,
    }
}

impl World {
    /// Creates `name`, enables it (through the first region's gateway) and connects one
    /// client per region.
    async fn instance_with_clients(&self, name: &str) -> (Instance, Vec<WsClient>) {
        let inst = self.env.create_instance(name).await;
        configure(
            &self.regions[0].gw,
            name,
            &self.env.account_token,
            json!({"enabled": true}),
        )
        .await;
        let mut clients = Vec::new();
        for r in &self.regions {
            clients.push(connect(&r.gw, name, &self.env.account_token).await);
        }
        (inst, clients)
    }

    fn dropped_sample(region: &str) -> String {
        format!("ryze_publisher_region_dropped_total{{region=\"{region}\"}}")
    }

    async fn dropped(&self, region: &str) -> f64 {
        metric(
            &self.publisher.url("/metrics"),
            &Self::dropped_sample(region),
        )
        .await
        .unwrap_or(0.0)
    }
}

/// Publishes one probe and returns how long the ingest request took (asserting its 202).
async fn timed_publish(publisher: &Service, inst: &Instance, data: &str) -> Duration {
    let t = Instant::now();
    publish_expect(
        publisher,
        &item(&inst.id, "message.exchange", data),
        1,
        0,
        0,
        0,
    )
    .await;
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_region_receives_and_a_stopped_region_delays_nothing_and_resumes_by_itself() {
    let w = start_world(&[]).await;
    let (inst, mut clients) = w.instance_with_clients("fleet").await;

    // Every region receives every event, exactly as published.
    let mut baseline = Duration::ZERO;
    for seq in 0..3 {
        let data = probe("all", seq);
        baseline = baseline.max(timed_publish(&w.publisher, &inst, &data).await);
        for (r, c) in w.regions.iter().zip(clients.iter_mut()) {
            assert_eq!(
                c.next_text(WAIT).await.unwrap(),
                frame("message.exchange", &data, &inst),
                "region {}",
                r.name
            );
        }
    }
    // Each region keeps its own history (on by default, D37), with its own offsets.
    let key = format!("{}:hist:{}", w.env.prefix, inst.id);
    for r in &w.regions {
        let len = r.redis.cli(&["XLEN", &key]).await.unwrap();
        assert_eq!(len.trim(), "3", "history of region {}", r.name);
    }

    // ap's Redis goes away. Its gateway reports not ready; its client stays connected.
    let ap = &w.regions[2];
    ap.redis.stop().await.unwrap();
    ap.gw.wait_not_ready(WAIT).await.unwrap();

    // Ingest still answers 202 at once, and eu and us get every event in order.
    let mut slowest = Duration::ZERO;
    for seq in 0..5 {
        slowest = slowest.max(timed_publish(&w.publisher, &inst, &probe("outage", seq)).await);
    }
    assert!(
        slowest < INGEST_BOUND,
        "ingest took {slowest:?} while ap was down (before: at most {baseline:?})"
    );
    for (r, c) in w.regions.iter().zip(clients.iter_mut()).take(2) {
        for seq in 0..5 {
            assert_eq!(
                c.next_text(WAIT).await.unwrap(),
                frame("message.exchange", &probe("outage", seq), &inst),
                "region {} during the ap outage",
                r.name
            );
        }
    }

    // The lost messages are counted for ap, and only for ap.
    let deadline = tokio::time::Instant::now() + WAIT;
    while w.dropped("ap").await < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no drops counted for ap within {WAIT:?}; publisher output:\n{}",
            w.publisher.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(w.dropped("eu").await, 0.0);
    assert_eq!(w.dropped("us").await, 0.0);

    // ap's Redis returns: its gateway becomes ready again and new events reach it, on the
    // socket that stayed open. (Frames of the outage may or may not show up late in ap: the
    // test skips them; it only requires that new events arrive.)
    ap.redis.restart().await.unwrap();
    ap.gw
        .wait_ready(READY)
        .await
        .expect("ap gateway ready again");
    {
        let [eu, us, ap_client] = &mut clients[..] else {
            unreachable!()
        };
        publish_until_delivered(
            &w.publisher,
            &inst,
            &mut [("eu", eu), ("us", us), ("ap", ap_client)],
            "resumed",
        )
        .await;
    }
    let last = probe("last", 0);
    timed_publish(&w.publisher, &inst, &last).await;
    let expected = frame("message.exchange", &last, &inst);
    for (r, c) in w.regions.iter().zip(clients.iter_mut()) {
        next_probe(c, &expected, &inst, r.name).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn config_changes_and_deletions_reach_every_region_through_the_relayed_control_channel() {
    // Caches that would outlive the test: only the control channel can invalidate them.
    let w = start_world(&[
        ("CONFIG_CACHE_TTL", "10m".to_owned()),
        ("RATE_LIMIT_PER_MINUTE", "10000".to_owned()),
    ])
    .await;
    let (inst, mut clients) = w.instance_with_clients("orders").await;
    // Relay messages as us receives them (any region would do: each has its own queue).
    let mut watcher = ControlWatcher::start(&w.regions[1].redis.url(), &w.env.prefix).await;

    // Warm the publisher's cache with the unfiltered config.
    let first = probe("all", 0);
    publish_expect(
        &w.publisher,
        &item(&inst.id, "message.exchange", &first),
        1,
        0,
        0,
        0,
    )
    .await;
    for c in clients.iter_mut() {
        assert_eq!(
            c.next_text(WAIT).await.unwrap(),
            frame("message.exchange", &first, &inst)
        );
    }

    // A filter set through the us gateway applies everywhere: a filtered event, then an
    // allowed sentinel; in every region the next frame is the sentinel.
    configure(
        &w.regions[1].gw,
        "orders",
        &w.env.account_token,
        json!({"enabled": true, "events": ["message.status"]}),
    )
    .await;
    watcher.wait("config_changed", &inst.id).await;
    let sentinel = r#"{"sentinel":1}"#;
    publish_expect(
        &w.publisher,
        &batch(&[
            item(&inst.id, "message.exchange", r#"{"filtered":true}"#),
            item(&inst.id, "message.status", sentinel),
        ]),
        1,
        1,
        0,
        0,
    )
    .await;
    for (r, c) in w.regions.iter().zip(clients.iter_mut()) {
        assert_eq!(
            c.next_text(WAIT).await.unwrap(),
            frame("message.status", sentinel, &inst),
            "region {}: the filtered event arrived (or nothing did)",
            r.name
        );
    }

    // Disabling through the ap gateway: every region's gateway drops its cached "enabled"
    // (cached for 10 minutes) on the relayed config_changed and refuses new upgrades.
    configure(
        &w.regions[2].gw,
        "orders",
        &w.env.account_token,
        json!({"enabled": false}),
    )
    .await;
    watcher.wait("config_changed", &inst.id).await;
    let disabled = envelope(
        "WebSocket is not enabled for this instance. Configure it first using POST \
         /api/events/websocket/orders",
    );
    for r in &w.regions {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match WsClient::connect(&ws_url(&r.gw, "orders"), &[("token", &inst.token)]).await {
                Ok(c) => {
                    drop(c);
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "region {}: still upgrading a disabled instance after {WAIT:?}",
                        r.name
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    assert_eq!(e.status(), Some(400), "region {}: {e}", r.name);
                    assert_eq!(e.body(), Some(disabled.as_str()), "region {}", r.name);
                    break;
                }
            }
        }
    }

    // Deleting the instance closes its clients in every region.
    let out = w.env.delete_instance("orders").await;
    assert_eq!(out["deleted"], true, "{out}");
    for (r, c) in w.regions.iter().zip(clients.iter_mut()) {
        assert_eq!(
            c.expect_close(WAIT).await.unwrap(),
            Some((1008, "instance deleted".to_owned())),
            "region {}",
            r.name
        );
    }
}

/// Sends SIGCONT to a process stopped with SIGSTOP when dropped (also when a test panics), so
/// its supervisor can stop it normally.
struct Frozen(u32);

impl Frozen {
    fn freeze(pid: u32) -> Frozen {
        signal("STOP", pid);
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal("CONT", self.0);
    }
}

fn signal(name: &str, pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-s", name, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -s {name} {pid}: {status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_region_delays_neither_ingest_nor_the_other_regions() {
    let w = start_world(&[]).await;
    let (inst, mut clients) = w.instance_with_clients("fleet").await;

    // ap's Redis stops answering (SIGSTOP) but keeps its connections open: the slow-region
    // case, where only timeouts tell. Each event still takes the normal path everywhere else.
    let ap = &w.regions[2];
    let frozen = Frozen::freeze(ap.redis.pid().unwrap());
    let mut took = Vec::new();
    for seq in 0..HUNG_EVENTS {
        let data = probe("hung", seq);
        took.push(timed_publish(&w.publisher, &inst, &data).await);
        for (r, c) in w.regions.iter().zip(clients.iter_mut()).take(2) {
            assert_eq!(
                c.next_text(WAIT).await.unwrap(),
                frame("message.exchange", &data, &inst),
                "region {} while ap hangs",
                r.name
            );
        }
    }
    // The first request may wait once for the hung region's fast-path answer (250 ms); after
    // that no request may wait for it (waiting each time would add up to 2.5 s here).
    let total: Duration = took.iter().sum();
    assert!(
        total < HUNG_TOTAL_BOUND,
        "{HUNG_EVENTS} ingest requests took {total:?} while ap's Redis hung: {took:?}"
    );

    // ap answers again: new events reach it by themselves. (What was queued for it while it
    // hung may arrive first, late: the test skips those frames.)
    drop(frozen);
    ap.gw.wait_ready(READY).await.expect("ap gateway ready");
    let [_, _, ap_client] = &mut clients[..] else {
        unreachable!()
    };
    publish_until_delivered(&w.publisher, &inst, &mut [("ap", ap_client)], "thawed").await;

    // And ingest trusts ap's answers again: an instance nobody watches anywhere is skipped
    // (`noListeners`), which it is not while any region's answer is missing.
    let nobody = w.env.create_instance("nobody").await;
    configure(
        &w.regions[0].gw,
        "nobody",
        &w.env.account_token,
        json!({"enabled": true}),
    )
    .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = post_events(
            &w.publisher,
            &item(&nobody.id, "message.exchange", &probe("nobody", 0)),
        )
        .await;
        assert_eq!(status, 202, "{body}");
        if body.contains(r#""noListeners":1"#) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the fast path did not come back after ap recovered: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// §5.7, D37 in every region: each region keeps its own history with region-local offsets, and
/// resuming works in each against that region's gateway.
#[tokio::test(flavor = "multi_thread")]
async fn resume_works_in_every_region_with_region_local_offsets() {
    let world = start_world(&[]).await;
    let inst = world.env.create_instance("resumable").await;
    configure(
        &world.regions[0].gw,
        "resumable",
        &world.env.account_token,
        json!({"enabled": true}),
    )
    .await;
    for r in &world.regions[..2] {
        crate::resume_round_trip(&world.publisher, &r.gw, &r.gw, &inst, &inst.token).await;
    }
}
