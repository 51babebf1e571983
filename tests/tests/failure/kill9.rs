//! Item 4: one of two gateways is killed with SIGKILL under traffic. The survivor's clients
//! lose nothing; the dead pod's clients reconnect to the survivor, after which its counters
//! and the Redis subscriptions are exactly what its clients need (no ghost subscriptions).

use std::time::Duration;

use serde_json::json;

use crate::common::{configure, numsub, Env, Instance, System, WAIT};
use crate::{collect, connect_via, eventually, metric_in, publish_end, publish_seqs, scrape};
use crate::{Feed, FRAME_WAIT};
use ryze_tests::redis;

/// Clients per instance on each pod.
const PER_POD: usize = 6;

#[tokio::test(flavor = "multi_thread")]
async fn gateway_kill9_loses_nothing_on_the_other_pod_and_leaves_no_ghost_subscriptions() {
    let env = Env::new().await;
    let mut sys = System::start_in(
        env,
        "sales",
        json!({"enabled": true}),
        2,
        &[("RATE_LIMIT_PER_MINUTE", "100000".into())],
        &[],
    )
    .await;
    let mut instances: Vec<Instance> = vec![sys.inst.clone()];
    for name in ["north", "south"] {
        let inst = sys.env.create_instance(name).await;
        configure(
            sys.gw(),
            name,
            &sys.env.account_token,
            json!({"enabled": true}),
        )
        .await;
        sys.watcher.wait("config_changed", &inst.id).await;
        instances.push(inst);
    }
    let shared = redis().await;
    let mut survivors = Vec::new();
    let mut doomed = Vec::new();
    for inst in &instances {
        for k in 0..PER_POD {
            let token = if k % 2 == 0 {
                &sys.env.account_token
            } else {
                &inst.token
            };
            let a = connect_via(&sys.gateways[0], &inst.name, token, k)
                .await
                .unwrap();
            survivors.push((inst.clone(), collect(a, FRAME_WAIT)));
            let b = connect_via(&sys.gateways[1], &inst.name, token, k)
                .await
                .unwrap();
            doomed.push((inst.clone(), token.clone(), k, b));
        }
        assert_eq!(numsub(shared, &sys.env.prefix, &inst.id).await, 2);
    }

    let ids: Vec<String> = instances.iter().map(|i| i.id.clone()).collect();
    let feed = Feed::start_ids(
        sys.publisher.url("/v1/events"),
        ids,
        Duration::from_millis(10),
    );
    feed.wait_published(20, WAIT).await;
    let mut victim = sys.gateways.pop().unwrap();
    victim.kill9();
    let status = victim.wait_exit(WAIT).await.unwrap();
    assert_eq!(ryze_tests::describe(status), "signal 9");
    // The dead pod's clients see their connections end (no close frame: nobody sent one).
    for (inst, _, _, c) in &mut doomed {
        let end = c.expect_close(WAIT).await;
        assert!(
            matches!(end, Ok(None)) || end.is_err(),
            "{}: {end:?}",
            inst.name
        );
    }
    feed.wait_published(20, WAIT).await;
    // They reconnect to the survivor.
    let survivor = sys.gw();
    let mut reconnected = Vec::new();
    for (inst, token, k, _) in doomed {
        let c = connect_via(survivor, &inst.name, &token, k).await.unwrap();
        reconnected.push((inst, collect(c, FRAME_WAIT)));
    }
    feed.wait_published(20, WAIT).await;
    let rounds = feed.stop().await;

    let clients = (2 * PER_POD * instances.len()) as f64;
    let text = scrape(survivor).await;
    assert_eq!(metric_in(&text, "ryze_gateway_connections"), clients);
    assert_eq!(metric_in(&text, "ryze_gateway_redis_subscriptions"), 3.0);
    assert_eq!(
        metric_in(&text, "ryze_gateway_redis_subscriptions_confirmed"),
        3.0
    );
    for inst in &instances {
        assert_eq!(
            metric_in(
                &text,
                &format!(
                    "ryze_gateway_instance_connections{{instance=\"{}\"}}",
                    inst.id
                )
            ),
            (2 * PER_POD) as f64,
            "{}",
            inst.name
        );
    }
    // Redis drops the dead pod's subscriber connection once the kernel closed its socket.
    for inst in &instances {
        eventually("one subscriber per instance channel", WAIT, || async {
            match numsub(shared, &sys.env.prefix, &inst.id).await {
                1 => Ok(()),
                n => Err(format!("{}: NUMSUB {n}", inst.name)),
            }
        })
        .await;
    }

    // A numbered run after the failover reaches every client, old and reconnected.
    publish_seqs(&sys.publisher, &instances, 1_000_000..1_000_100, 25).await;
    publish_end(&sys.publisher, &instances).await;
    let accepted: Vec<u64> = rounds
        .iter()
        .filter(|r| r.published)
        .map(|r| r.seq)
        .collect();
    assert_eq!(
        accepted.len(),
        rounds.len(),
        "the publisher refused rounds while a gateway died"
    );
    let numbered: Vec<u64> = (1_000_000..1_000_100).collect();
    for (inst, handle) in survivors {
        let (_c, seen, error) = handle.await.unwrap();
        assert!(error.is_none(), "{}: {error:?}", inst.name);
        assert!(seen.iter().all(|s| s.instance == inst.name));
        let seqs: Vec<u64> = seen.iter().map(|s| s.seq).collect();
        let mut want = accepted.clone();
        want.extend(&numbered);
        assert!(
            seqs == want,
            "{}: a survivor's client lost or reordered frames ({} of {})",
            inst.name,
            seqs.len(),
            want.len()
        );
    }
    for (inst, handle) in reconnected {
        let (_c, seen, error) = handle.await.unwrap();
        assert!(error.is_none(), "{}: {error:?}", inst.name);
        let seqs: Vec<u64> = seen.iter().map(|s| s.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{}", inst.name);
        assert!(
            seqs.ends_with(&numbered),
            "{}: a reconnected client missed part of the numbered run",
            inst.name
        );
    }
}
