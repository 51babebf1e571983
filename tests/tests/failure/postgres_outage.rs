//! Item 3: Postgres goes away and comes back. Open streams keep flowing, new upgrades get
//! 500 `Failed to get instance`, `/health` says 503 `degraded`, readiness ignores Postgres,
//! and everything recovers without restarting a process.

use std::time::Duration;

use serde_json::json;

use crate::common::{self, configure, envelope, post_events, ws_url, Env, Instance, System};
use crate::common::{READY, WAIT};
use crate::{collect, eventually, publish_end, publish_seqs, status_of, Feed, FRAME_WAIT};
use ryze_tests::{redis, PgServer, WsClient};

/// A system on a private Postgres with `sales` and `north` configured and a publisher with
/// `publisher_env`.
async fn system_on_private_pg(publisher_env: &[(&'static str, String)]) -> (PgServer, System) {
    let server = PgServer::start_private().await.unwrap();
    let db = server.fresh_database().await.unwrap();
    let env = Env::with(db.url, Some(redis().await.url()), None).await;
    let sys = System::start_in(
        env,
        "sales",
        json!({"enabled": true}),
        1,
        &[],
        publisher_env,
    )
    .await;
    (server, sys)
}

async fn add_instance(sys: &mut System, name: &str) -> Instance {
    let inst = sys.env.create_instance(name).await;
    configure(
        sys.gw(),
        name,
        &sys.env.account_token,
        json!({"enabled": true}),
    )
    .await;
    sys.watcher.wait("config_changed", &inst.id).await;
    inst
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_outage_keeps_open_streams_refuses_new_upgrades_and_recovers_without_restart() {
    // The publisher keeps what it has seen for the whole outage here; what happens when the
    // outage outlasts its CONFIG_CACHE_TTL is the next test.
    let (server, mut sys) = system_on_private_pg(&[("CONFIG_CACHE_TTL", "1h".into())]).await;
    let north = add_instance(&mut sys, "north").await;
    // Configured but never connected to nor published for: nothing about it is cached.
    let unseen = add_instance(&mut sys, "unseen").await;
    let seen = vec![sys.inst.clone(), north.clone()];
    let mut collectors = Vec::new();
    for inst in &seen {
        let a = common::connect(sys.gw(), &inst.name, &sys.env.account_token).await;
        let b = common::connect(sys.gw(), &inst.name, &inst.token).await;
        collectors.push((inst.clone(), collect(a, FRAME_WAIT)));
        collectors.push((inst.clone(), collect(b, FRAME_WAIT)));
    }
    // The publisher caches both instances with their first events.
    publish_seqs(&sys.publisher, &seen, 0..5, 5).await;

    server.stop().await.unwrap();
    let gw = sys.gw();
    // Open streams keep flowing: a numbered run during the outage.
    publish_seqs(&sys.publisher, &seen, 5..105, 20).await;
    // New upgrades that need the database: an uncached token, and a cached account token
    // naming an uncached instance.
    for (name, token) in [
        ("unseen", unseen.token.as_str()),
        ("unseen", sys.env.account_token.as_str()),
    ] {
        match WsClient::connect(&ws_url(gw, name), &[("token", token)]).await {
            Ok(_) => panic!("upgrade of /ws/{name} succeeded with Postgres down"),
            Err(e) => {
                assert_eq!(e.status(), Some(500), "{e}");
                assert_eq!(e.body(), Some(envelope("Failed to get instance").as_str()));
            }
        }
    }
    let resp = ryze_tests::http()
        .get(gw.url("/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let health: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(
        health["checks"]["db"]
            .as_str()
            .is_some_and(|s| s.starts_with("fail: ")),
        "{health}"
    );
    assert_eq!(health["checks"]["redis"], "ok", "{health}");
    // Readiness ignores Postgres (docs/decisions.md).
    assert_eq!(status_of(&gw.admin_url("/readyz")).await, 200);
    // The publisher cannot resolve an instance it never saw: 503, nothing published.
    let (status, body) = post_events(
        &sys.publisher,
        &common::item(&unseen.id, "call.update", "{}"),
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (503, envelope("Failed to publish event").as_str())
    );

    server.start().await.unwrap();
    // Recovery, nothing restarted: new upgrades work again...
    let mut late = eventually("an upgrade after Postgres returned", WAIT, || async {
        WsClient::connect(&ws_url(gw, "unseen"), &[("token", &unseen.token)])
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    eventually("/health ok again", WAIT, || async {
        match status_of(&gw.url("/health")).await {
            200 => Ok(()),
            s => Err(format!("status {s}")),
        }
    })
    .await;
    // ...the publisher resolves instances again...
    let data = r#"{"after":"postgres returned"}"#;
    eventually(
        "the publisher resolves an uncached instance",
        WAIT,
        || async {
            match post_events(
                &sys.publisher,
                &common::item(&unseen.id, "call.update", data),
            )
            .await
            {
                (202, _) => Ok(()),
                (s, b) => Err(format!("{s} {b}")),
            }
        },
    )
    .await;
    assert_eq!(
        late.next_text(WAIT).await.unwrap(),
        common::frame("call.update", data, &unseen)
    );
    // ...and config changes reach open connections again (the publisher listens again).
    eventually(
        "the publisher listens for config changes again",
        WAIT,
        || async {
            match sys
                .publisher
                .logs()
                .matches("listening for config changes")
                .count()
            {
                n if n >= 2 => Ok(()),
                n => Err(format!("{n} LISTEN starts")),
            }
        },
    )
    .await;
    configure(
        gw,
        "unseen",
        &sys.env.account_token,
        json!({"enabled": true, "events": ["label.update"]}),
    )
    .await;
    sys.watcher.wait("config_changed", &unseen.id).await;
    common::publish_expect(
        &sys.publisher,
        &common::batch(&[
            common::item(&unseen.id, "call.update", r#"{"filtered":true}"#),
            common::item(&unseen.id, "label.update", r#"{"kept":true}"#),
        ]),
        1,
        1,
        0,
        0,
    )
    .await;
    assert_eq!(
        late.next_text(WAIT).await.unwrap(),
        common::frame("label.update", r#"{"kept":true}"#, &unseen)
    );
    // The streams that lived through the outage are still whole and current.
    publish_seqs(&sys.publisher, &seen, 105..110, 5).await;
    publish_end(&sys.publisher, &seen).await;
    for (inst, handle) in collectors {
        let (_c, got, error) = handle.await.unwrap();
        assert!(error.is_none(), "{}: {error:?}", inst.name);
        let seqs: Vec<u64> = got.iter().map(|s| s.seq).collect();
        assert_eq!(seqs, (0..110).collect::<Vec<_>>(), "{}", inst.name);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn open_streams_keep_flowing_through_a_postgres_outage_longer_than_config_cache_ttl() {
    // No config can change while Postgres is down, so the last known delivery config stays
    // right for the whole outage; dropping it when the TTL runs out only stops every stream.
    let (server, sys) = system_on_private_pg(&[("CONFIG_CACHE_TTL", "1s".into())]).await;
    let c = common::connect(sys.gw(), &sys.inst.name, &sys.inst.token).await;
    let collector = collect(c, FRAME_WAIT);
    publish_seqs(&sys.publisher, std::slice::from_ref(&sys.inst), 0..1, 1).await;

    server.stop().await.unwrap();
    // Three TTLs of steady traffic.
    let feed = Feed::start_ids(
        sys.publisher.url("/v1/events"),
        vec![sys.inst.id.clone()],
        Duration::from_millis(50),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rounds = feed.stop().await;
    server.start().await.unwrap();
    sys.gw().wait_ready(READY).await.unwrap();
    let refused: Vec<_> = rounds.iter().filter(|r| !r.published).collect();
    assert!(
        refused.is_empty(),
        "{} of {} rounds refused during the outage, first {:?} at {:?} into it",
        refused.len(),
        rounds.len(),
        refused[0].answer,
        refused[0].sent - rounds[0].sent
    );
    publish_end(&sys.publisher, std::slice::from_ref(&sys.inst)).await;
    let (_c, seen, error) = collector.await.unwrap();
    assert!(error.is_none(), "{error:?}");
    assert_eq!(seen.len(), rounds.len() + 1);
}
