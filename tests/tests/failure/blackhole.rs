//! SPEC D38: Redis connections that stay open while nothing flows (black-holed by a failover
//! behind a NAT or load balancer) are noticed, reported and replaced, with no fixed sleeps:
//! every step awaits the state it names.

use serde_json::json;

use crate::common::{connect, Env, System, READY, WAIT};
use crate::{collect, metric, publish_end, publish_seqs, status_of, Feed, FRAME_WAIT};
use ryze_tests::{redis, FaultProxy};

/// Short enough to keep the tests quick, long enough for a loaded 2-core CI machine.
const STALL: &str = "1s";

/// Sequence numbers published once the pod is ready again.
const AFTER: std::ops::Range<u64> = 2_000_000..2_000_100;

/// Which service reaches Redis through the black-holing proxy (the other goes directly).
enum Through {
    Gateway,
    Publisher,
}

/// A system on one enabled instance `name` whose gateway or publisher reaches Redis through
/// a [`FaultProxy`] with the short stall timeout.
async fn behind_proxy(name: &str, through: Through) -> (FaultProxy, System) {
    let proxy = FaultProxy::in_front_of(redis().await).await.expect("proxy");
    let env = Env::new().await;
    let via_proxy = [
        ("REDIS_URL", proxy.redis_url()),
        ("REDIS_STALL_TIMEOUT", STALL.to_owned()),
    ];
    let (gateway, publisher): (&[_], &[_]) = match through {
        Through::Gateway => (&via_proxy, &[]),
        Through::Publisher => (&[], &via_proxy),
    };
    let sys = System::start_in(env, name, json!({"enabled": true}), 1, gateway, publisher).await;
    (proxy, sys)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_black_holed_gateway_turns_unready_replaces_its_connections_and_delivers_again() {
    let (proxy, sys) = behind_proxy("sales", Through::Gateway).await;
    let client = connect(sys.gw(), &sys.inst.name, &sys.inst.token).await;
    let frames = collect(client, FRAME_WAIT);
    let feed = Feed::start_ids(
        sys.publisher.url("/v1/events"),
        vec![sys.inst.id.clone()],
        std::time::Duration::from_millis(20),
    );
    feed.wait_published(10, WAIT).await;
    let accepted_before = proxy.accepted();

    assert!(proxy.blackhole_existing() >= 2, "both connections held");
    sys.gw()
        .wait_not_ready(WAIT)
        .await
        .expect("not ready while stalled");
    sys.gw()
        .wait_for_log("redis connection stalled", WAIT)
        .await
        .expect("a WARN line names the stall");
    sys.gw().wait_ready(READY).await.expect("ready again");
    assert!(
        proxy.accepted() > accepted_before,
        "the gateway opened fresh connections"
    );
    assert!(
        metric(
            sys.gw(),
            "ryze_gateway_redis_stalls_total{connection=\"subscriber\"}"
        )
        .await
            >= 1.0
    );
    let logs = sys.gw().logs();
    assert!(
        logs.lines().any(|l| l.contains("WARN")
            && l.contains("connection=\"subscriber\"")
            && l.contains("silent_ms")),
        "the WARN line names the connection and how long it was silent:\n{logs}"
    );
    let ready_at = tokio::time::Instant::now();
    feed.wait_published(10, WAIT).await;
    let rounds = feed.stop().await;
    publish_seqs(&sys.publisher, std::slice::from_ref(&sys.inst), AFTER, 20).await;
    publish_end(&sys.publisher, std::slice::from_ref(&sys.inst)).await;

    let (_client, seen, error) = frames.await.expect("collector");
    assert!(error.is_none(), "the client stayed connected: {error:?}");
    let seqs: Vec<u64> = seen.iter().map(|s| s.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "in order, no duplicate: {seqs:?}"
    );
    // Everything published once the pod was ready again arrived.
    for r in rounds.iter().filter(|r| r.published && r.sent >= ready_at) {
        assert!(
            seqs.contains(&r.seq),
            "round {} sent after readiness was lost",
            r.seq
        );
    }
    for seq in AFTER {
        assert!(seqs.contains(&seq), "seq {seq} after readiness was lost");
    }
}

/// Sequence numbers published while the gateway's connections are black-holed.
const HIDDEN: std::ops::Range<u64> = 3_000_000..3_000_010;

/// D38 for a pod that has delivered no frame of the instance yet: it catches up from where
/// history stood when its subscription was confirmed (not only from a last delivered frame).
#[tokio::test(flavor = "multi_thread")]
async fn a_pod_that_delivered_nothing_yet_still_catches_up_what_a_black_hole_hid() {
    let (proxy, sys) = behind_proxy("quiet", Through::Gateway).await;
    let client = connect(sys.gw(), &sys.inst.name, &sys.inst.token).await;
    let frames = collect(client, FRAME_WAIT);

    // Nothing has been published for the instance yet; now nothing flows either way.
    assert!(proxy.blackhole_existing() >= 2, "both connections held");
    // The publisher reaches Redis directly: these are in history and published.
    publish_seqs(&sys.publisher, std::slice::from_ref(&sys.inst), HIDDEN, 5).await;
    sys.gw()
        .wait_not_ready(WAIT)
        .await
        .expect("not ready while stalled");
    sys.gw().wait_ready(READY).await.expect("ready again");
    publish_end(&sys.publisher, std::slice::from_ref(&sys.inst)).await;

    let (_client, seen, error) = frames.await.expect("collector");
    assert!(error.is_none(), "the client stayed connected: {error:?}");
    let seqs: Vec<u64> = seen.iter().map(|s| s.seq).collect();
    assert_eq!(
        seqs,
        HIDDEN.collect::<Vec<_>>(),
        "every event published during the black hole, once, in order, before the end marker"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_black_holed_publisher_answers_503_fails_readiness_and_recovers() {
    let (proxy, sys) = behind_proxy("sales", Through::Publisher).await;
    let mut client = connect(sys.gw(), &sys.inst.name, &sys.inst.token).await;
    let event = crate::common::item(&sys.inst.id, "message.status", r#"{"seq":1}"#);
    crate::common::publish_expect(&sys.publisher, &event, 1, 0, 0, 0).await;
    client
        .next_text(WAIT)
        .await
        .expect("delivered before the fault");

    // Everything black-holed, new connections too: the stall lasts until healed.
    proxy.blackhole_all();
    // A publish on the dead connection is refused within the stall timeout, not held.
    let (status, body) = crate::common::post_events(&sys.publisher, &event).await;
    assert_eq!(
        (status, body.as_str()),
        (
            503,
            crate::common::envelope("Failed to publish event").as_str()
        )
    );
    sys.publisher
        .wait_not_ready(WAIT)
        .await
        .expect("publisher not ready while stalled");
    sys.publisher
        .wait_for_log("redis connection stalled", WAIT)
        .await
        .expect("a WARN line names the stall");
    proxy.heal();
    sys.publisher.wait_ready(READY).await.expect("ready again");
    assert!(
        metric(
            &sys.publisher,
            "ryze_publisher_redis_stalls_total{region=\"default\"}"
        )
        .await
            >= 1.0
    );
    assert_eq!(status_of(&sys.publisher.url("/readyz")).await, 200);
    let after = crate::common::item(&sys.inst.id, "message.status", r#"{"seq":2}"#);
    crate::common::publish_expect(&sys.publisher, &after, 1, 0, 0, 0).await;
    let got = client
        .next_json(WAIT)
        .await
        .expect("delivered after recovery");
    assert_eq!(got["data"]["seq"], 2, "{got}");
}
