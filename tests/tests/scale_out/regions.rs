//! Multi-region: three plain Redis servers stand for three regions, each with its own
//! gateway (`REDIS_URL` = that region's Redis); one publisher publishes to all of them
//! (`REGION_REDIS_URLS=eu=…,us=…,ap=…`, no `REDIS_URL`).

use serde_json::json;

use crate::common::{
    batch, configure, connect, envelope, frame, item, post_events, publish_expect, ws_url,
    ControlWatcher, Env, Instance, READY, WAIT,
};
use crate::{metric, next_probe, probe, publish_until_delivered};
use ryze_tests::{eventually, pg, Frozen, RedisServer, Service, WsClient};

/// The regions, in `REGION_REDIS_URLS` order.
const REGIONS: [&str; 3] = ["eu", "us", "ap"];
/// The publisher's `REDIS_STALL_TIMEOUT` in the outage tests: it bounds every Redis round trip
/// (and so any wait for a down or hung region), and it is far beyond [`WAIT`]. An ingest
/// request that waited for the region would therefore not finish within its `WAIT` guard:
/// the tests assert that behaviour, not a duration that depends on the machine.
const LONG_STALL: (&str, &str) = ("REDIS_STALL_TIMEOUT", "60s");
/// Ingest requests while a region's Redis hangs.
const HUNG_EVENTS: u64 = 10;

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

/// Three regional Redis servers with a gateway each, and one publisher for all of them. `extra`
/// goes to every process, `publisher_extra` to the publisher only.
async fn start_world(
    extra: &[(&'static str, String)],
    publisher_extra: &[(&'static str, &str)],
) -> World {
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
    pub_env.extend(publisher_extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
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

/// Publishes one probe (asserting its 202). The request must complete within [`WAIT`]: with
/// [`LONG_STALL`], one that waited for a down or hung region could not. (How long ingest takes
/// in each case is measured by the `regions` benchmark scenario, not here: issue 15.)
async fn guarded_publish(publisher: &Service, inst: &Instance, data: &str, when: &str) {
    let body = item(&inst.id, "message.exchange", data);
    let publish = publish_expect(publisher, &body, 1, 0, 0, 0);
    tokio::time::timeout(WAIT, publish).await.unwrap_or_else(|_| {
        panic!("ingest of {data} did not complete within {WAIT:?} {when}: it waited for the region")
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn every_region_receives_and_a_stopped_region_delays_nothing_and_resumes_by_itself() {
    let w = start_world(&[], &[LONG_STALL]).await;
    let (inst, mut clients) = w.instance_with_clients("fleet").await;

    // Every region receives every event, exactly as published.
    for seq in 0..3 {
        let data = probe("all", seq);
        guarded_publish(&w.publisher, &inst, &data, "before the outage").await;
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

    // Ingest still answers 202 without waiting for ap (each request within its guard, see
    // `LONG_STALL`; ap stays down until all have answered), and eu and us get every event in
    // order.
    for seq in 0..5 {
        let data = probe("outage", seq);
        guarded_publish(&w.publisher, &inst, &data, "while ap was down").await;
    }
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

    // The lost messages are counted for ap, and only for ap. `LONG_STALL` does not delay the
    // count: ap's connection is gone (not hung), so its worker fails each job at once
    // (`publish` fails fast while disconnected) and counts it; the stall timeout bounds only
    // round trips on a connection that still looks up.
    eventually("drops counted for ap", WAIT, || async {
        match w.dropped("ap").await {
            d if d >= 1.0 => Ok(()),
            d => Err(format!(
                "{d} dropped; publisher output:\n{}",
                w.publisher.logs()
            )),
        }
    })
    .await;
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
    guarded_publish(&w.publisher, &inst, &last, "after ap recovered").await;
    let expected = frame("message.exchange", &last, &inst);
    for (r, c) in w.regions.iter().zip(clients.iter_mut()) {
        next_probe(c, &expected, &inst, r.name).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn config_changes_and_deletions_reach_every_region_through_the_relayed_control_channel() {
    // Caches that would outlive the test: only the control channel can invalidate them.
    let w = start_world(
        &[
            ("CONFIG_CACHE_TTL", "10m".to_owned()),
            ("RATE_LIMIT_PER_MINUTE", "10000".to_owned()),
        ],
        &[],
    )
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
        let what = format!(
            "region {}: upgrades of the disabled instance refused",
            r.name
        );
        let e = eventually(&what, WAIT, || async {
            match WsClient::connect(&ws_url(&r.gw, "orders"), &[("token", &inst.token)]).await {
                Ok(_) => Err("still upgrading a disabled instance".to_owned()),
                Err(e) => Ok(e),
            }
        })
        .await;
        assert_eq!(e.status(), Some(400), "region {}: {e}", r.name);
        assert_eq!(e.body(), Some(disabled.as_str()), "region {}", r.name);
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

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_region_delays_neither_ingest_nor_the_other_regions() {
    let w = start_world(&[], &[LONG_STALL]).await;
    let (inst, mut clients) = w.instance_with_clients("fleet").await;

    // ap's Redis stops answering (SIGSTOP) but keeps its connections open: the slow-region
    // case, where only timeouts tell. Each event still takes the normal path everywhere else.
    let ap = &w.regions[2];
    let frozen = Frozen::freeze(ap.redis.pid().unwrap());
    for seq in 0..HUNG_EVENTS {
        let data = probe("hung", seq);
        guarded_publish(&w.publisher, &inst, &data, "while ap's Redis hung").await;
        for (r, c) in w.regions.iter().zip(clients.iter_mut()).take(2) {
            assert_eq!(
                c.next_text(WAIT).await.unwrap(),
                frame("message.exchange", &data, &inst),
                "region {} while ap hangs",
                r.name
            );
        }
    }
    // Ingest gave up on ap's fast-path answer once (the publisher's bounded wait, which the
    // first request may pay) and then stopped asking it: ap was marked slow exactly once while
    // it hung. (Its connection stays up for `LONG_STALL`, so this is the path every request
    // took; a request waiting for ap's answer would have blown its guard above.)
    // (Other regions may be marked slow too on a loaded machine: only ap's lines count, and
    // its line may still be on its way through the output pipe.)
    const SLOW: &str = "region slow to answer";
    let ap_marked = |logs: &str| {
        logs.lines()
            .filter(|l| l.contains(SLOW) && l.contains("region=ap"))
            .count()
    };
    eventually("ap marked slow", WAIT, || async {
        match ap_marked(&w.publisher.logs()) {
            0 => Err(format!(
                "not yet; publisher output:\n{}",
                w.publisher.logs()
            )),
            _ => Ok(()),
        }
    })
    .await;
    let logs = w.publisher.logs();
    let marked = ap_marked(&logs);
    assert_eq!(
        marked, 1,
        "ap marked slow {marked} times; publisher output:\n{logs}"
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
    let nobody_item = item(&nobody.id, "message.exchange", &probe("nobody", 0));
    eventually(
        "the fast path came back after ap recovered",
        WAIT,
        || async {
            let (status, body) = post_events(&w.publisher, &nobody_item).await;
            assert_eq!(status, 202, "{body}");
            if body.contains(r#""noListeners":1"#) {
                Ok(())
            } else {
                Err(body)
            }
        },
    )
    .await;
}

/// §5.7, D37 in every region: each region keeps its own history with region-local offsets, and
/// resuming works in each against that region's gateway.
#[tokio::test(flavor = "multi_thread")]
async fn resume_works_in_every_region_with_region_local_offsets() {
    let world = start_world(&[], &[]).await;
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
