//! Redis Cluster (`REDIS_URL=redis-cluster://…`): sharded pub/sub across masters, recovery
//! after a master restart, the control channel and the shared rate-limit bucket, and history
//! (D37) next to the shard channel: instance ids are hash-tagged on a cluster
//! (`<prefix>:ws:{<id>}`, `<prefix>:hist:{<id>}`), so one slot holds both.

use serde_json::json;

use crate::common::{
    batch, configure, connect, envelope, frame, item, publish_expect, ws_url, Env, Instance, READY,
    WAIT,
};
use crate::{next_probe, probe, publish_until_delivered};
use ryze_tests::{eventually, pg, RedisCluster, Service, SlotOwner, WsClient};

/// Most instances created while looking for two channels on different masters (each new one
/// lands on another master with probability 2/3, so 12 fail together with ~(1/3)^11).
const MAX_TRIES: usize = 12;

/// A migrated database with an account, a publisher and two gateways, all on the cluster.
async fn start(cluster: &RedisCluster, gateway_env: &[(&'static str, String)]) -> Setup {
    let db = pg().await.fresh_database().await.expect("fresh database");
    let env = Env::with(db.url, Some(cluster.url()), None).await;
    let publisher = env.publisher(&[]).await;
    let a = env.gateway(gateway_env).await;
    let b = env.gateway(gateway_env).await;
    Setup {
        env,
        publisher,
        a,
        b,
    }
}

struct Setup {
    env: Env,
    publisher: Service,
    a: Service,
    b: Service,
}

impl Setup {
    /// Creates and enables `name`, connects a client on each gateway, deletes the instance
    /// with the admin CLI and asserts both clients get 1008 `instance deleted`.
    async fn deletion_closes_clients_on_both_gateways(&self, name: &str) {
        let inst = self.env.create_instance(name).await;
        configure(&self.a, name, &inst.token, json!({"enabled": true})).await;
        let mut on_a = connect(&self.a, name, &inst.token).await;
        let mut on_b = connect(&self.b, name, &inst.token).await;
        let out = self.env.delete_instance(name).await;
        assert_eq!(out["deleted"], true, "{out}");
        for (who, c) in [("on a", &mut on_a), ("on b", &mut on_b)] {
            assert_eq!(
                c.expect_close(WAIT).await.unwrap(),
                Some((1008, "instance deleted".to_owned())),
                "{name} {who}"
            );
        }
    }

    /// The instance's shard channel (hash-tagged on a cluster).
    fn channel(&self, inst: &Instance) -> String {
        format!("{}:ws:{{{}}}", self.env.prefix, inst.id)
    }

    /// The instance's history key (same hash tag as its channel).
    fn history_key(&self, inst: &Instance) -> String {
        format!("{}:hist:{{{}}}", self.env.prefix, inst.id)
    }

    /// Creates and enables instances until two have channels whose slots are served by
    /// different masters; returns them with their owners.
    async fn two_instances_on_different_masters(
        &self,
        cluster: &RedisCluster,
    ) -> ((Instance, SlotOwner), (Instance, SlotOwner)) {
        let mut seen: Vec<(Instance, SlotOwner)> = Vec::new();
        for i in 0..MAX_TRIES {
            let inst = self.env.create_instance(&format!("shard-{i}")).await;
            let owner = cluster.owner_of(&self.channel(&inst)).await.unwrap();
            if let Some(pos) = seen.iter().position(|(_, o)| o.index != owner.index) {
                let first = seen.swap_remove(pos);
                for name in [&first.0.name, &inst.name] {
                    configure(
                        &self.a,
                        name,
                        &self.env.account_token,
                        json!({"enabled": true}),
                    )
                    .await;
                }
                return (first, (inst, owner));
            }
            seen.push((inst, owner));
        }
        panic!("{MAX_TRIES} instances all hashed to one master: {seen:?}");
    }
}

/// `PUBSUB SHARDNUMSUB <channel>` on master `i`: sharded subscribers held by that node.
async fn shard_numsub(cluster: &RedisCluster, i: usize, channel: &str) -> u64 {
    let out = cluster
        .cli(i, &["PUBSUB", "SHARDNUMSUB", channel])
        .await
        .expect("PUBSUB SHARDNUMSUB");
    out.lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("unexpected SHARDNUMSUB output {out:?}"))
}

/// Polls until master `i` holds `want` sharded subscribers of `channel` (bounded by `WAIT`).
async fn wait_shard_numsub(cluster: &RedisCluster, i: usize, channel: &str, want: u64) {
    let what = format!("{want} sharded subscribers of {channel} on master {i}");
    eventually(&what, WAIT, || async {
        match shard_numsub(cluster, i, channel).await {
            n if n == want => Ok(()),
            n => Err(format!(
                "{channel} has {n} sharded subscribers on master {i}"
            )),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sharded_delivery_spans_masters_and_resumes_on_the_same_sockets_after_a_master_restart() {
    let cluster = RedisCluster::start().await.expect("redis cluster");
    let s = start(&cluster, &[]).await;
    let ((x, x_owner), (y, y_owner)) = s.two_instances_on_different_masters(&cluster).await;
    let token = s.env.account_token.clone();
    let mut xa = connect(&s.a, &x.name, &token).await;
    let mut xb = connect(&s.b, &x.name, &token).await;
    let mut ya = connect(&s.a, &y.name, &token).await;
    let mut yb = connect(&s.b, &y.name, &token).await;

    // Sharded pub/sub: each gateway's SSUBSCRIBE sits on the master owning the slot, and no
    // classic SUBSCRIBE exists for the instance channels anywhere.
    for (inst, owner) in [(&x, &x_owner), (&y, &y_owner)] {
        let channel = s.channel(inst);
        wait_shard_numsub(&cluster, owner.index, &channel, 2).await;
        for i in 0..cluster.nodes().len() {
            let classic = cluster
                .cli(i, &["PUBSUB", "NUMSUB", &channel])
                .await
                .unwrap();
            assert!(
                classic.ends_with("\n0"),
                "classic subscribers on {i}: {classic}"
            );
        }
    }

    // One request, two instances on two masters: every client gets its own instance's frame.
    let (dx, dy) = (probe("before", 0), probe("before", 0));
    publish_expect(
        &s.publisher,
        &batch(&[
            item(&x.id, "message.exchange", &dx),
            item(&y.id, "message.exchange", &dy),
        ]),
        2,
        0,
        0,
        0,
    )
    .await;
    for (c, inst, data) in [
        (&mut xa, &x, &dx),
        (&mut xb, &x, &dx),
        (&mut ya, &y, &dy),
        (&mut yb, &y, &dy),
    ] {
        assert_eq!(
            c.next_text(WAIT).await.unwrap(),
            frame("message.exchange", data, inst)
        );
    }
    // History (on by default) went to the master that owns the channel's slot.
    for (inst, owner) in [(&x, &x_owner), (&y, &y_owner)] {
        let key = s.history_key(inst);
        assert_eq!(cluster.owner_of(&key).await.unwrap().index, owner.index);
        let len = cluster.cli(owner.index, &["XLEN", &key]).await.unwrap();
        assert_eq!(len.trim(), "1", "history of {key} on its master");
    }

    // Stop the master serving x's channel and bring it back on the same port and nodes.conf.
    // /readyz may or may not fail meanwhile (the repair tick is 1 s); what must hold is that
    // it recovers, and that delivery resumes on the sockets that stayed open.
    cluster.stop_node(x_owner.index).await.unwrap();
    cluster.start_node(x_owner.index).await.unwrap();
    s.a.wait_ready(READY).await.expect("gateway a ready again");
    s.b.wait_ready(READY).await.expect("gateway b ready again");
    // Readiness means every wanted subscription is live: once both gateways answer 200, the
    // restarted master (which lost its subscribers with its process) holds both again.
    assert_eq!(
        shard_numsub(&cluster, x_owner.index, &s.channel(&x)).await,
        2,
        "ready gateways without their subscriptions on the restarted master"
    );
    assert_eq!(
        shard_numsub(&cluster, y_owner.index, &s.channel(&y)).await,
        2
    );

    publish_until_delivered(
        &s.publisher,
        &x,
        &mut [("x on a", &mut xa), ("x on b", &mut xb)],
        "after-restart",
    )
    .await;
    publish_until_delivered(
        &s.publisher,
        &y,
        &mut [("y on a", &mut ya), ("y on b", &mut yb)],
        "after-restart",
    )
    .await;

    // The control channel survived the restart too: deleting x closes its clients on both
    // gateways, and y keeps receiving.
    s.env.delete_instance(&x.name).await;
    for (who, c) in [("x on a", &mut xa), ("x on b", &mut xb)] {
        assert_eq!(
            c.expect_close(WAIT).await.unwrap(),
            Some((1008, "instance deleted".to_owned())),
            "{who}"
        );
    }
    let last = probe("last", 0);
    publish_expect(
        &s.publisher,
        &item(&y.id, "message.exchange", &last),
        1,
        0,
        0,
        0,
    )
    .await;
    let expected = frame("message.exchange", &last, &y);
    next_probe(&mut ya, &expected, &y, "y on a").await;
    next_probe(&mut yb, &expected, &y, "y on b").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn control_channel_and_shared_rate_limit_work_on_a_cluster() {
    const LIMIT: usize = 6;
    let cluster = RedisCluster::start().await.expect("redis cluster");
    let s = start(&cluster, &[("RATE_LIMIT_PER_MINUTE", LIMIT.to_string())]).await;

    // Deletion reaches both gateways through <prefix>:ctl, which is classic pub/sub on a
    // cluster (a PUBLISH on any node reaches subscribers on every node).
    s.deletion_closes_clients_on_both_gateways("doomed").await;

    // Rate limits: one bucket per token shared by both gateways through the cluster (the
    // per-pod fallback would let LIMIT + 1 requests alternating between two pods through).
    let mut proven = false;
    for _ in 0..3 {
        let token = format!("bogus-{}", uuid::Uuid::new_v4());
        let mut statuses = Vec::new();
        let mut resets = Vec::new();
        let mut last = None;
        for i in 0..=LIMIT {
            let gw = if i % 2 == 0 { &s.a } else { &s.b };
            let e = match WsClient::connect(&ws_url(gw, "sales"), &[("token", &token)]).await {
                Ok(_) => panic!("a bogus token was upgraded"),
                Err(e) => e,
            };
            statuses.push(e.status().unwrap());
            resets.push(e.header("x-ratelimit-reset").map(str::to_owned));
            last = Some(e);
        }
        if resets.iter().any(|r| r != &resets[0]) {
            continue; // straddled a window boundary
        }
        let mut want = vec![401; LIMIT];
        want.push(429);
        assert_eq!(statuses, want, "alternating between two gateways");
        let last = last.unwrap();
        assert_eq!(
            last.body(),
            Some(envelope("Rate limit exceeded. Try again later.").as_str()),
            "{last}"
        );
        proven = true;
        break;
    }
    assert!(proven, "every attempt straddled a window boundary");
    assert_eq!(
        crate::metric(
            &s.a.admin_url("/metrics"),
            "ryze_gateway_rate_limit_fallback_total"
        )
        .await
        .unwrap_or(0.0),
        0.0,
        "gateway a counted locally instead of in the cluster"
    );

    // Restart a master holding control-channel subscribers: the gateways subscribe again
    // (readiness includes the control channel) and deletions keep working.
    let ctl = format!("{}:ctl", s.env.prefix);
    let counts = ctl_numsub(&cluster, &ctl).await;
    assert_eq!(
        counts.iter().sum::<u64>(),
        2,
        "ctl subscribers per master: {counts:?}"
    );
    let holder = counts.iter().position(|n| *n > 0).unwrap();
    cluster.restart_node(holder).await.unwrap();
    s.a.wait_ready(READY).await.expect("gateway a ready again");
    s.b.wait_ready(READY).await.expect("gateway b ready again");
    let counts = ctl_numsub(&cluster, &ctl).await;
    assert_eq!(
        counts.iter().sum::<u64>(),
        2,
        "ready gateways without their ctl subscription: {counts:?}"
    );
    s.deletion_closes_clients_on_both_gateways("doomed-2").await;
}

/// `PUBSUB NUMSUB <ctl>` on each master (classic subscriptions are counted per node).
async fn ctl_numsub(cluster: &RedisCluster, ctl: &str) -> Vec<u64> {
    let mut counts = Vec::new();
    for i in 0..cluster.nodes().len() {
        let out = cluster.cli(i, &["PUBSUB", "NUMSUB", ctl]).await.unwrap();
        counts.push(
            out.lines()
                .last()
                .and_then(|l| l.trim().parse().ok())
                .unwrap_or_else(|| panic!("unexpected NUMSUB output {out:?}")),
        );
    }
    counts
}

#[tokio::test(flavor = "multi_thread")]
async fn subscriptions_follow_a_slot_migrated_to_another_master() {
    let cluster = RedisCluster::start().await.expect("redis cluster");
    let s = start(&cluster, &[]).await;
    let ((x, x_owner), (_, other)) = s.two_instances_on_different_masters(&cluster).await;
    let token = s.env.account_token.clone();
    let mut xa = connect(&s.a, &x.name, &token).await;
    let mut xb = connect(&s.b, &x.name, &token).await;
    let channel = s.channel(&x);
    wait_shard_numsub(&cluster, x_owner.index, &channel, 2).await;

    // Move x's slot to the other master: Redis drops the subscribers on the old owner
    // (server-side `sunsubscribe`) and the gateways must subscribe again on the new one.
    let slot = cluster.keyslot(&channel).await.unwrap();
    cluster.migrate_slot(slot, other.index).await.unwrap();
    assert_eq!(shard_numsub(&cluster, x_owner.index, &channel).await, 0);
    wait_shard_numsub(&cluster, other.index, &channel, 2).await;
    s.a.wait_ready(READY).await.expect("gateway a ready");
    s.b.wait_ready(READY).await.expect("gateway b ready");
    publish_until_delivered(
        &s.publisher,
        &x,
        &mut [("x on a", &mut xa), ("x on b", &mut xb)],
        "migrated",
    )
    .await;
}

/// §5.7 on a cluster: history and the shard channel share a slot; a client resuming on the
/// other gateway gets exactly the frames after its offset, then live ones.
#[tokio::test(flavor = "multi_thread")]
async fn resume_works_on_a_cluster() {
    let cluster = RedisCluster::start().await.expect("cluster");
    let setup = start(&cluster, &[]).await;
    let inst = setup.env.create_instance("resumable").await;
    configure(&setup.a, "resumable", &inst.token, json!({"enabled": true})).await;
    crate::resume_round_trip(&setup.publisher, &setup.a, &setup.b, &inst, &inst.token).await;
}

/// D38 on a cluster: a pod holds a subscriber connection per master, and a wedged master
/// (SIGSTOP) must show in `/readyz` whichever master it is — not only the one that happens to
/// carry the pod's plain probe channel. Ready again once it wakes.
#[tokio::test(flavor = "multi_thread")]
async fn a_wedged_master_makes_the_pods_unready_whichever_master_it_is() {
    let cluster = RedisCluster::start().await.expect("cluster");
    // Long enough that no master marks a wedged one failed (the cluster would then refuse
    // everything, and every pod would turn unready whatever its probes cover).
    for i in 0..cluster.nodes().len() {
        cluster
            .cli(i, &["CONFIG", "SET", "cluster-node-timeout", "600000"])
            .await
            .expect("CONFIG SET");
    }
    let s = start(&cluster, &[("REDIS_STALL_TIMEOUT", "1s".to_owned())]).await;
    for i in 0..cluster.nodes().len() {
        let pid = cluster.node(i).pid().expect("master running");
        let frozen = ryze_tests::Frozen::freeze(pid);
        for (name, gw) in [("a", &s.a), ("b", &s.b)] {
            gw.wait_not_ready(WAIT)
                .await
                .unwrap_or_else(|e| panic!("gateway {name} with master {i} wedged: {e:#}"));
        }
        drop(frozen);
        for gw in [&s.a, &s.b] {
            gw.wait_ready(READY)
                .await
                .expect("ready once the master wakes");
        }
    }
}
