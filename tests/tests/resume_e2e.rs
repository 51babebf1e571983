//! Resume end to end (issue 17, "Tests"): the real publisher (history script, version-2
//! headers), real gateways and a real Redis, under continuous traffic.
//!
//! - Drain: SIGTERM one of two gateways while ~200 events/s are published to its instances;
//!   resumable clients reconnect to the other gateway with `since=<last offset>` and see every
//!   event once, in order, with no `stream.gap`.
//! - Redis restart: a client *without* `since` misses nothing published once Redis is back
//!   (D38: after the resubscribe the gateway catches up from history).
//!
//! Every wait is bounded; the only timers pace the publisher. Polled conditions (clients
//! connected, rounds accepted) are polled with [`ryze_tests::eventually`].

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use ryze_tests::fixtures as common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::resumable::{
    all_published, check_exactly_once, publish_end, resumable_client, wait_all, Feed, Progress,
};
use common::{configure, Env, System, READY, WAIT};
use ryze_tests::{eventually, pg, Balancer, RedisServer, WsClient};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Drain (issue 17, "Tests"): 20 resumable clients over 4 instances on gateway A; about 200
/// events/s in all through the real publisher; SIGTERM A. Each client's own loop reconnects to
/// gateway B with `since=<last offset>` on 1001. Every client must see every seq from its first
/// frame to the last published one exactly once, in order, with strictly increasing offsets and
/// no `stream.gap`.
///
/// What breaks it: frames published between A's 1001 and B's 101 missing from history (the
/// publisher skipping the append while no gateway holds a client), a replay/live seam that
/// drops or repeats a frame on B, a gap frame for a retained offset, A not closing with 1001
/// `server shutting down`, or the publisher refusing a round.
#[tokio::test(flavor = "multi_thread")]
async fn draining_a_gateway_loses_nothing_for_resumed_clients() {
    const CLIENTS_PER_INSTANCE: usize = 5;
    let mut sys = System::start("drain-0", json!({"enabled": true}), 2, &[]).await;
    let mut instances = vec![sys.inst.clone()];
    for i in 1..4 {
        let name = format!("drain-{i}");
        let inst = sys.env.create_instance(&name).await;
        configure(
            sys.gw(),
            &name,
            &sys.env.account_token,
            json!({"enabled": true}),
        )
        .await;
        sys.watcher.wait("config_changed", &inst.id).await;
        instances.push(inst);
    }
    let (a, b) = (&sys.gateways[0], &sys.gateways[1]);

    let mut clients = Vec::new();
    for inst in &instances {
        for _ in 0..CLIENTS_PER_INSTANCE {
            let progress = Arc::new(Progress::default());
            let urls = vec![common::ws_url(a, &inst.name), common::ws_url(b, &inst.name)];
            let handle = resumable_client(urls, 2, inst.token.clone(), progress.clone());
            clients.push((inst.name.clone(), progress, handle));
        }
    }
    eventually("every client connected to A", WAIT, || async {
        let waiting = clients
            .iter()
            .filter(|(_, p, _)| !p.connected.load(Ordering::SeqCst))
            .count();
        (waiting == 0)
            .then_some(())
            .ok_or(format!("{waiting} not connected"))
    })
    .await;
    // 4 events every 20 ms: 200 events/s.
    let feed = Feed::start(&sys.publisher, &instances, Duration::from_millis(20));
    // Every client has an offset to resume from before the drain starts.
    eventually("every client saw a frame on A", WAIT, || async {
        let waiting = clients
            .iter()
            .filter(|(_, p, _)| p.frames.load(Ordering::SeqCst) == 0)
            .count();
        (waiting == 0)
            .then_some(())
            .ok_or(format!("{waiting} without a frame"))
    })
    .await;
    feed.wait_published(25, WAIT).await;

    a.sigterm();
    eventually("every client reconnected to B", WAIT, || async {
        let left = clients
            .iter()
            .filter(|(_, p, h)| !p.moved.load(Ordering::SeqCst) && !h.is_finished())
            .count();
        (left == 0)
            .then_some(())
            .ok_or(format!("{left} not on B yet"))
    })
    .await;
    // Keep publishing for a while with everyone on B (about a second).
    feed.wait_published(50, WAIT).await;
    let rounds = feed.stop().await;
    publish_end(&sys.publisher, &instances).await;

    let last = all_published(&rounds);
    let replayed = ryze_tests::http()
        .get(b.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .lines()
        .find(|l| l.starts_with("ryze_gateway_frames_replayed"))
        .map(str::to_owned);
    for (name, _, handle) in clients {
        let log = tokio::time::timeout(WAIT * 2, handle)
            .await
            .expect("client finishes")
            .unwrap();
        check_exactly_once(&name, &log, last);
        assert_eq!(
            log.closes,
            [(1001, "server shutting down".to_owned())],
            "{name}"
        );
        assert_eq!(log.sinces.len(), 2, "{name}");
        assert_ne!(log.sinces[1], "now", "{name}");
    }
    let status = sys.gateways[0].wait_exit(WAIT).await.unwrap();
    assert!(status.success(), "gateway A after SIGTERM: {status:?}");
    println!(
        "drain: {} rounds of {} events; B {}",
        rounds.len(),
        instances.len(),
        replayed.unwrap_or_else(|| "has no frames_replayed metric".into())
    );
}

/// Redis restart, client without `since` (D38): Redis is stopped under steady traffic, stays
/// away until the publisher refused some rounds, and comes back empty (no persistence). Every
/// round the publisher published after the restart must reach the client once, in order:
/// rounds published before the gateway resubscribed are in the new history, which the gateway
/// reads after its resubscribe; later ones arrive live. Rounds published before the stop may
/// be lost with the old server (their history is gone), so only order and uniqueness are
/// asserted for them. Every round sent once both services were ready again must be published.
///
/// What breaks it: the gateway not catching up from history after the resubscribe (frames
/// published between Redis's return and the resubscribe lost), catch-up and live frames
/// overlapping (a duplicate) or interleaving (out of order), an offset leaking to a client
/// without `since`, or the services not becoming ready again.
#[tokio::test(flavor = "multi_thread")]
async fn after_a_redis_restart_a_client_without_since_misses_nothing_published_since() {
    let private = RedisServer::start().await.unwrap();
    let db = pg().await.fresh_database().await.unwrap();
    let env = Env::with(db.url, Some(private.url()), None).await;
    let sys = System::start_in(env, "restart", json!({"enabled": true}), 1, &[], &[]).await;
    let instances = vec![sys.inst.clone()];

    let client = common::connect(sys.gw(), &sys.inst.name, &sys.env.account_token).await;
    let collector = collect_plain(client);
    let feed = Feed::start(&sys.publisher, &instances, Duration::from_millis(20));
    feed.wait_published(20, WAIT).await;

    private.stop().await.unwrap();
    sys.gw().wait_not_ready(WAIT).await.unwrap();
    // Keep Redis away until the publisher refused some rounds: a real outage.
    feed.wait_refused(3, WAIT).await;
    private.restart().await.unwrap();
    let back_at = Instant::now();
    sys.gw().wait_ready(READY).await.unwrap();
    let gw_ready_at = Instant::now();
    sys.publisher.wait_ready(READY).await.unwrap();
    let ready_at = Instant::now();
    feed.wait_published(50, WAIT).await;
    let rounds = feed.stop().await;
    publish_end(&sys.publisher, &instances).await;

    let (seen, error) = tokio::time::timeout(WAIT * 2, collector)
        .await
        .expect("collector finishes")
        .unwrap();
    assert!(error.is_none(), "client: {error:?}");
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "out of order or duplicated: {seen:?}"
    );
    for r in rounds.iter().filter(|r| r.sent >= ready_at) {
        assert!(
            r.published,
            "round {} sent with everything ready: {:?}",
            r.seq, r.answer
        );
    }
    let must: Vec<u64> = rounds
        .iter()
        .filter(|r| r.published && r.sent >= back_at)
        .map(|r| r.seq)
        .collect();
    let missing: Vec<u64> = must
        .iter()
        .copied()
        .filter(|s| seen.binary_search(s).is_err())
        .collect();
    assert!(
        missing.is_empty(),
        "published after Redis came back but never delivered: {missing:?} (seen {seen:?})"
    );
    // A round answered with anything but 202 `published` or a 503 never reached Redis.
    for seq in &seen {
        let r = &rounds[(*seq - 1) as usize];
        assert!(
            r.published || r.answer.as_ref().is_some_and(|(s, _)| *s == 503),
            "seq {seq} was delivered but answered {:?}",
            r.answer
        );
    }
    let lost = rounds
        .iter()
        .filter(|r| r.published && r.sent < back_at && seen.binary_search(&r.seq).is_err())
        .count();
    // How much of the catch-up path this run exercised: rounds published after Redis was
    // back but before the gateway reported ready again (resubscribed).
    let before_resubscribe = rounds
        .iter()
        .filter(|r| r.published && r.sent >= back_at && r.sent < gw_ready_at)
        .count();
    println!(
        "redis restart: {} rounds, {} published after the restart (all delivered; \
         {before_resubscribe} of them before the gateway was ready again), {lost} published \
         before it lost with the old server",
        rounds.len(),
        must.len()
    );
}

/// Reads a plain client's frames until the end marker: the `data.seq` of each, asserting no
/// frame carries an offset. Errors end the collection.
fn collect_plain(mut c: WsClient) -> JoinHandle<(Vec<u64>, Option<String>)> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            let v = match c.next_json(WAIT).await {
                Ok(v) => v,
                Err(e) => return (seen, Some(format!("{e:#}"))),
            };
            if v["data"]["end"] == true {
                return (seen, None);
            }
            assert!(v.get("offset").is_none(), "offset without since: {v}");
            seen.push(v["data"]["seq"].as_u64().expect("data.seq"));
        }
    })
}

/// Rolling restart (issue 18, "Tests"): three gateways behind the harness's round-robin
/// [`Balancer`] (as a Kubernetes Service), 60 resumable clients of 4 instances spread over them
/// through it, about 100 events/s through the real publisher. Each gateway in turn gets SIGTERM,
/// exits, and is replaced in the balancer's backend list by a new one, ready, while the feed
/// goes on. Each client's loop reconnects through the balancer with `since=<last offset>` on
/// 1001 (retrying when the balancer forwards it to the gateway that is shutting down). Every
/// client must see every seq from its first frame to the last exactly once, in order, no
/// `stream.gap`, and must have been drained at least once (its first gateway was restarted).
///
/// Rebalancing is off here (`REBALANCE_THRESHOLD=0`) so that every close is a drain's;
/// `rebalance::scale_out_of_2000_clients_converges_and_loses_nothing` covers resume across
/// rebalancing.
///
/// What breaks it: a restart losing frames published while clients reconnect (history not
/// appended, a resume served from the wrong offset), a duplicate at the replay/live seam, a
/// drain closing with anything but 1001, a new gateway refusing resumes, or a client still
/// disconnected when the end marker is published (it would then time out).
#[tokio::test(flavor = "multi_thread")]
async fn rolling_restart_of_three_gateways_loses_nothing_for_resumed_clients() {
    const CLIENTS_PER_INSTANCE: usize = 15;
    const INSTANCES: usize = 4;
    let settings = [("REBALANCE_THRESHOLD", "0".to_owned())];
    let mut sys = System::start("roll-0", json!({"enabled": true}), 3, &settings).await;
    let mut instances = vec![sys.inst.clone()];
    for i in 1..INSTANCES {
        let name = format!("roll-{i}");
        let inst = sys.env.create_instance(&name).await;
        configure(
            sys.gw(),
            &name,
            &sys.env.account_token,
            json!({"enabled": true}),
        )
        .await;
        sys.watcher.wait("config_changed", &inst.id).await;
        instances.push(inst);
    }
    let balancer = Balancer::start(sys.gateways.iter().map(|g| g.addr()).collect())
        .await
        .unwrap();
    let mut progress = Vec::new();
    let mut clients = Vec::new();
    for inst in &instances {
        for _ in 0..CLIENTS_PER_INSTANCE {
            let p = Arc::new(Progress::default());
            let url = balancer.ws_url(&format!("/ws/{}", common::segment(&inst.name)));
            clients.push((
                inst.name.clone(),
                resumable_client(vec![url], 50, inst.token.clone(), p.clone()),
            ));
            progress.push(p);
        }
    }
    wait_all("every client connected", &progress, |p| {
        p.connected.load(Ordering::SeqCst)
    })
    .await;
    // 4 events every 40 ms: 100 events/s.
    let feed = Feed::start(&sys.publisher, &instances, Duration::from_millis(40));
    wait_all("every client saw a frame", &progress, |p| {
        p.frames.load(Ordering::SeqCst) > 0
    })
    .await;

    for i in 0..sys.gateways.len() {
        sys.gateways[i].sigterm();
        let status = sys.gateways[i].wait_exit(WAIT).await.unwrap();
        assert!(status.success(), "gateway {i} after SIGTERM: {status:?}");
        sys.gateways[i] = sys.env.gateway(&settings).await; // ready
        balancer.set_backends(sys.gateways.iter().map(|g| g.addr()).collect());
        feed.wait_published(10, WAIT).await;
    }
    // Everyone is connected again before the end marker (a client still reconnecting would
    // get it from history anyway, but this proves the fleet carries all of them).
    let total = (CLIENTS_PER_INSTANCE * INSTANCES) as f64;
    eventually(
        "every client connected after the restarts",
        WAIT,
        || async {
            let mut sum = 0.0;
            for gw in &sys.gateways {
                sum += common::metric(gw, "ryze_gateway_connections").await;
            }
            (sum == total)
                .then_some(())
                .ok_or(format!("{sum} of {total}"))
        },
    )
    .await;
    feed.wait_published(10, WAIT).await;
    let rounds = feed.stop().await;
    publish_end(&sys.publisher, &instances).await;

    let last = all_published(&rounds);
    let mut resumes = 0;
    for (name, handle) in clients {
        let log = tokio::time::timeout(WAIT * 2, handle)
            .await
            .expect("client finishes")
            .unwrap();
        check_exactly_once(&name, &log, last);
        assert!(!log.closes.is_empty(), "{name}: never drained");
        assert!(
            log.closes
                .iter()
                .all(|c| *c == (1001, "server shutting down".to_owned())),
            "{name}: {:?}",
            log.closes
        );
        assert!(log.sinces[1..].iter().all(|s| s != "now"), "{name}");
        resumes += log.closes.len();
    }
    println!(
        "rolling restart: {} rounds of {INSTANCES} events, {resumes} resumes",
        rounds.len()
    );
}
