//! Item 5: a reconnect storm. Many clients over several instances reconnect to one gateway
//! at the same moment: all of them succeed, Postgres sees a bounded number of queries (the
//! auth cache, SPEC D30), and a connect for another instance is not stalled behind them.
//!
//! Postgres queries are counted with `pg_stat_statements` on a private server (its counters
//! are updated as each statement ends, unlike `pg_stat_database`, which backends flush lazily).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use crate::common::{self, Env, Instance, WAIT};
use crate::{bulk_instances, connect_via, eventually, metric};
use ryze_tests::{redis, PgServer, Service, TestDb, WsClient};

/// Clients in the storm (2 cores, debug build: this fits well inside the test budget).
const CLIENTS: usize = 2000;
/// Instances they spread over.
const INSTANCES: usize = 8;
/// Upper bound for one connect during the storm (it must complete, not be fast).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// A private Postgres with `pg_stat_statements` loaded, and a fresh database with the
/// extension created.
async fn pg_with_statement_stats() -> (PgServer, TestDb) {
    let server = PgServer::start_private().await.unwrap();
    let admin = connect(&server.admin_url()).await;
    admin
        .batch_execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
        .await
        .unwrap();
    drop(admin);
    server.stop().await.unwrap();
    server.start().await.unwrap();
    let db = server.fresh_database().await.unwrap();
    db.client()
        .await
        .unwrap()
        .batch_execute("CREATE EXTENSION pg_stat_statements")
        .await
        .unwrap();
    (server, db)
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// Statements run in `db` since the last reset, the statistics' own queries excluded; and
/// the busiest ones, for the message.
async fn statements(stats: &tokio_postgres::Client, db: &str) -> (i64, Vec<(i64, String)>) {
    let rows = stats
        .query(
            "SELECT s.calls, s.query FROM pg_stat_statements s \
             JOIN pg_database d ON d.oid = s.dbid \
             WHERE d.datname = $1 AND s.query NOT ILIKE '%pg_stat_statements%' \
             ORDER BY s.calls DESC",
            &[&db],
        )
        .await
        .unwrap();
    let top: Vec<(i64, String)> = rows
        .iter()
        .map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1)))
        .collect();
    (top.iter().map(|(c, _)| c).sum(), top)
}

/// Client `k`'s instance, token and token source: half use the account token, half their
/// instance's own, over all three sources.
fn plan(k: usize, instances: &[Instance], account: &str) -> (Instance, String, usize) {
    let inst = instances[k % instances.len()].clone();
    let token = if k % 2 == 0 {
        account.to_owned()
    } else {
        inst.token.clone()
    };
    (inst, token, k % 3)
}

/// Connects clients `range` to `gw`, `parallel` at a time.
async fn connect_all(
    gw: &Service,
    instances: &[Instance],
    account: &str,
    range: std::ops::Range<usize>,
    parallel: usize,
) -> Vec<(Instance, WsClient)> {
    futures_util::stream::iter(range)
        .map(|k| {
            let (inst, token, source) = plan(k, instances, account);
            async move {
                let Ok(c) = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    connect_via(gw, &inst.name, &token, source),
                )
                .await
                else {
                    panic!("client {k}: no answer within {CONNECT_TIMEOUT:?}")
                };
                let c = c.unwrap_or_else(|e| panic!("client {k}: {e}"));
                (inst, c)
            }
        })
        .buffer_unordered(parallel)
        .collect()
        .await
}

/// The storm: clients held on `first` drop their connections and all reconnect at once to
/// `target`, while one client of a never-used instance connects too. Returns the number of
/// statements Postgres ran during the storm.
async fn storm(cold_target: bool) -> i64 {
    let (_server, db) = pg_with_statement_stats().await;
    let env = Env::with(db.url.clone(), Some(redis().await.url()), None).await;
    let instances = bulk_instances(&env, "storm", INSTANCES).await;
    let bystander = bulk_instances(&env, "bystander", 1).await.remove(0);
    let publisher = env.publisher(&[]).await;
    let settings = [("RATE_LIMIT_PER_MINUTE", "1000000".to_owned())];
    let first = env.gateway(&settings).await;
    let second = if cold_target {
        Some(env.gateway(&settings).await)
    } else {
        None
    };
    let target = second.as_ref().unwrap_or(&first);
    let account = env.account_token.clone();

    let started = Instant::now();
    let held = connect_all(&first, &instances, &account, 0..CLIENTS, 64).await;
    println!(
        "storm: {CLIENTS} clients over {INSTANCES} instances connected in {:?}",
        started.elapsed()
    );

    let stats = connect(&db.url).await;
    stats
        .batch_execute("SELECT pg_stat_statements_reset()")
        .await
        .unwrap();
    // Every client loses its connection at once...
    drop(held);
    // ...and reconnects at once.
    let started = Instant::now();
    let target_addr = Arc::new(target.ws_url(""));
    let mut tasks = Vec::with_capacity(CLIENTS);
    for k in 0..CLIENTS {
        let (inst, token, source) = plan(k, &instances, &account);
        let base = target_addr.clone();
        tasks.push(tokio::spawn(async move {
            let url = format!("{base}/ws/{}", common::segment(&inst.name));
            let attempt = async {
                match source {
                    0 => WsClient::connect(&url, &[("token", token.as_str())]).await,
                    1 => {
                        let bearer = format!("Bearer {token}");
                        WsClient::connect(&url, &[("Authorization", bearer.as_str())]).await
                    }
                    _ => WsClient::connect(&format!("{url}?token={token}"), &[]).await,
                }
            };
            let Ok(c) = tokio::time::timeout(CONNECT_TIMEOUT, attempt).await else {
                panic!("client {k}: no answer within {CONNECT_TIMEOUT:?}")
            };
            let c = c.unwrap_or_else(|e| panic!("client {k} refused during the storm: {e}"));
            (inst, c)
        }));
    }
    // A client of another instance, in the middle of the storm.
    let bystander_started = Instant::now();
    let mut by = tokio::time::timeout(
        WAIT,
        WsClient::connect(
            &common::ws_url(target, &bystander.name),
            &[("token", bystander.token.as_str())],
        ),
    )
    .await
    .expect("a connect for another instance stalled behind the storm")
    .unwrap();
    let bystander_took = bystander_started.elapsed();
    let mut clients = Vec::with_capacity(CLIENTS);
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    let took = started.elapsed();
    let (queries, top) = statements(&stats, &db.name).await;
    println!(
        "storm ({} cache): {CLIENTS} reconnects in {took:?}, {queries} Postgres statements; \
         the bystander connected after {bystander_took:?}; busiest: {:?}",
        if cold_target { "cold" } else { "warm" },
        top.iter().take(4).collect::<Vec<_>>()
    );

    // Every reconnected client is live: one event per instance reaches all of them.
    eventually(
        "the gauge counts exactly the reconnected clients",
        WAIT,
        || async {
            let n = metric(target, "ryze_gateway_connections").await;
            if n == (CLIENTS + 1) as f64 {
                Ok(())
            } else {
                Err(format!("{n}"))
            }
        },
    )
    .await;
    let mut all = instances.clone();
    all.push(bystander.clone());
    let items: Vec<String> = all
        .iter()
        .map(|i| common::item(&i.id, "label.update", r#"{"after":"storm"}"#))
        .collect();
    common::publish_expect(&publisher, &common::batch(&items), all.len(), 0, 0, 0).await;
    let reads = futures_util::future::join_all(clients.iter_mut().map(|(inst, c)| async {
        let got = c.next_text(WAIT).await.unwrap();
        assert_eq!(
            got,
            common::frame("label.update", r#"{"after":"storm"}"#, inst)
        );
    }));
    reads.await;
    assert_eq!(
        by.next_text(WAIT).await.unwrap(),
        common::frame("label.update", r#"{"after":"storm"}"#, &bystander)
    );
    queries
}

#[tokio::test(flavor = "multi_thread")]
async fn reconnect_storm_to_the_same_gateway_succeeds_with_few_postgres_queries() {
    let queries = storm(false).await;
    assert!(
        (queries as usize) < CLIENTS / 10,
        "{queries} Postgres statements for {CLIENTS} reconnects: the auth cache does not \
         bound them"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reconnect_storm_onto_a_gateway_with_a_cold_cache_runs_few_postgres_queries() {
    // The clients of a lost pod all land on a pod that never saw their tokens.
    let queries = storm(true).await;
    assert!(
        (queries as usize) < CLIENTS / 10,
        "{queries} Postgres statements for {CLIENTS} reconnects onto a cold cache: \
         concurrent misses of the same token or instance all go to Postgres"
    );
}
