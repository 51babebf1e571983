//! The system under test: a private Postgres (with `pg_stat_statements` when it can be
//! loaded) and Redis, two gateways and one publisher as real processes, one account and the
//! benchmark's instances seeded by SQL, and the counters the scenarios read (gateway
//! `/metrics`, Redis `INFO`, Postgres statement counts, `/proc`).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio_postgres::NoTls;
use uuid::Uuid;

use super::procfs;
use ryze_tests::fixtures::{merge, Env};
use ryze_tests::metrics::Exposition;
use ryze_tests::{http, PgServer, RedisServer, Service, TestDb};

/// Upper bound for a service to become ready.
const READY: Duration = Duration::from_secs(60);
/// The publisher's ingest key.
pub use ryze_tests::fixtures::API_KEY;
/// Requests per token per minute: every benchmark client shares one account token.
pub const RATE_LIMIT: &str = "100000000";

/// Instances every run creates besides the `m-<i>` ones.
pub const NAMED: [&str; 5] = ["idle", "fanout", "hot", "media", "resume"];

/// The running system.
pub struct System {
    /// Postgres (private: it is restarted once to load `pg_stat_statements`).
    pub pg: PgServer,
    /// The benchmark database.
    pub db: TestDb,
    /// Redis.
    pub redis: RedisServer,
    /// Gateways `A` and `B`.
    pub gateways: Vec<Service>,
    /// The publisher.
    pub publisher: Service,
    /// Instance name → id (the named ones and `m-0` … `m-<many-1>`).
    pub ids: HashMap<String, Uuid>,
    /// `m-<i>` instances created.
    pub many: usize,
    /// Whether `pg_stat_statements` is loaded (else only transaction counts are reported).
    pub statements: bool,
    /// The database, account (whose token every client connects with) and Redis every
    /// service of the benchmark shares.
    pub env: Env,
}

impl System {
    /// Starts everything and seeds `many` extra instances.
    pub async fn start(many: usize) -> anyhow::Result<System> {
        let pg = PgServer::start_private()
            .await
            .context("starting postgres")?;
        let statements = match enable_statements(&pg).await {
            Ok(()) => true,
            Err(e) => {
                eprintln!("ryze-bench: pg_stat_statements unavailable ({e:#}); counting transactions only");
                false
            }
        };
        let db = pg.fresh_database().await?;
        let redis = RedisServer::start()
            .await
            .context("starting redis-server")?;
        let env = Env::create(db.url.clone(), Some(redis.url()), None).await?;
        if statements {
            db.client()
                .await?
                .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                .await
                .context("CREATE EXTENSION pg_stat_statements")?;
        }
        let names: Vec<String> = (0..many)
            .map(|i| format!("m-{i}"))
            .chain(NAMED.iter().map(|n| (*n).to_owned()))
            .collect();
        let ids = env.seed_instances(&names, &["media"]).await?;
        let publisher = spawn_publisher(&env, &[]).await?;
        let mut system = System {
            pg,
            db,
            redis,
            gateways: Vec::new(),
            publisher,
            ids,
            many,
            statements,
            env,
        };
        for _ in 0..2 {
            let gw = system.spawn_gateway().await?;
            system.gateways.push(gw);
        }
        Ok(system)
    }

    /// Starts one more gateway and waits until it is ready.
    pub async fn spawn_gateway(&self) -> anyhow::Result<Service> {
        let settings = [
            ("RATE_LIMIT_PER_MINUTE", RATE_LIMIT.to_owned()),
            ("RUST_LOG", ryze_tests::QUIET_LOG.to_owned()),
        ];
        self.env.spawn_gateway(&settings, READY).await
    }

    /// Replaces both gateways with fresh processes, so a scenario's RSS, CPU and caches do
    /// not carry what an earlier one left (the allocator keeps freed memory).
    pub async fn restart_gateways(&mut self) -> anyhow::Result<()> {
        for i in 0..self.gateways.len() {
            self.replace_gateway(i).await?;
        }
        Ok(())
    }

    /// Replaces gateway `i` (e.g. after it was killed) with a fresh one.
    pub async fn replace_gateway(&mut self, i: usize) -> anyhow::Result<()> {
        let gw = self.spawn_gateway().await?;
        // Dropping the old service kills it (if it still runs) before the new one takes its
        // place; its clients have left or are gone.
        let mut old = std::mem::replace(&mut self.gateways[i], gw);
        old.kill9();
        let _ = old.wait_exit(Duration::from_secs(10)).await;
        Ok(())
    }

    /// Replaces the publisher with a fresh one whose environment adds `extra` (e.g.
    /// `HISTORY_SIZE=0`); the old one is stopped first, so only one appends at a time.
    pub async fn restart_publisher(
        &mut self,
        extra: &[(&'static str, String)],
    ) -> anyhow::Result<()> {
        self.publisher.kill9();
        let _ = self.publisher.wait_exit(Duration::from_secs(10)).await;
        self.publisher = spawn_publisher(&self.env, extra).await?;
        Ok(())
    }

    /// The `/ws` URL template of gateway `gw` for instance `name` (`{i}` allowed), with the
    /// account token in the query.
    pub fn ws_url(&self, gw: usize, name: &str) -> String {
        self.gateways[gw].ws_url(&format!("/ws/{name}?token={}", self.env.account_token))
    }

    /// The id of a seeded instance.
    pub fn id(&self, name: &str) -> anyhow::Result<Uuid> {
        self.ids
            .get(name)
            .copied()
            .with_context(|| format!("no instance {name}"))
    }

    /// `POST /v1/events` on the publisher.
    pub fn ingest_url(&self) -> String {
        self.publisher.url("/v1/events")
    }

    /// Forgets Postgres statement counts (no-op without `pg_stat_statements`).
    pub async fn pg_reset(&self) -> anyhow::Result<()> {
        if self.statements {
            let c = self.db.client().await?;
            c.batch_execute("SELECT pg_stat_statements_reset()").await?;
        }
        Ok(())
    }

    /// Statements run in the benchmark database since [`System::pg_reset`], by text (the
    /// benchmark's own monitoring queries excluded), most frequent first.
    pub async fn pg_statements(&self) -> anyhow::Result<Vec<(String, i64)>> {
        if !self.statements {
            return Ok(Vec::new());
        }
        let c = self.db.client().await?;
        let rows = c
            .query(
                "SELECT query, calls FROM pg_stat_statements \
                 WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                   AND query NOT ILIKE '%pg_stat%' \
                 ORDER BY calls DESC",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
            .collect())
    }

    /// Committed transactions of the benchmark database (`pg_stat_database.xact_commit`;
    /// backends report it with up to a second of delay).
    pub async fn pg_xact_commit(&self) -> anyhow::Result<i64> {
        let c = self.db.client().await?;
        let row = c
            .query_one(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
                &[],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Redis `INFO commandstats` as command → calls.
    pub async fn redis_commands(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let text = self.redis.cli(&["INFO", "commandstats"]).await?;
        Ok(text
            .lines()
            .filter_map(|l| {
                let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = rest
                    .strip_prefix("calls=")?
                    .split(',')
                    .next()?
                    .parse()
                    .ok()?;
                Some((name.to_owned(), calls))
            })
            .collect())
    }

    /// One numeric field of Redis `INFO` (e.g. `pubsub_channels`).
    pub async fn redis_info(&self, field: &str) -> anyhow::Result<u64> {
        let text = self.redis.cli(&["INFO"]).await?;
        text.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("INFO has no {field}"))
    }

    /// CPU seconds of Redis so far.
    pub fn redis_cpu(&self) -> f64 {
        self.redis.pid().map_or(0.0, procfs::cpu_seconds)
    }

    /// CPU seconds of every Postgres process so far (the postmaster's children included),
    /// from `/proc`: the postmaster and every process whose parent it is.
    pub fn pg_cpu(&self) -> f64 {
        let Some(root) = self.pg.pid() else {
            return 0.0;
        };
        let mut total = procfs::cpu_seconds(root);
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                if parent_of(pid) == Some(root) {
                    total += procfs::cpu_seconds(pid);
                }
            }
        }
        total
    }
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Loads `pg_stat_statements`: `ALTER SYSTEM`, then a restart of the private server.
async fn enable_statements(pg: &PgServer) -> anyhow::Result<()> {
    let (client, conn) = tokio_postgres::connect(&pg.admin_url(), NoTls).await?;
    let driver = tokio::spawn(conn);
    client
        .batch_execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
        .await?;
    drop(client);
    let _ = driver.await;
    pg.stop().await?;
    pg.start().await?;
    let (client, conn) = tokio_postgres::connect(&pg.admin_url(), NoTls).await?;
    tokio::spawn(conn);
    let row = client
        .query_one("SHOW shared_preload_libraries", &[])
        .await?;
    let loaded: String = row.get(0);
    if !loaded.contains("pg_stat_statements") {
        bail!("shared_preload_libraries is {loaded:?} after the restart");
    }
    Ok(())
}

async fn spawn_publisher(env: &Env, extra: &[(&'static str, String)]) -> anyhow::Result<Service> {
    let base = vec![
        ("PUBLIC_BASE_URL", "https://bench.invalid".to_owned()),
        ("RUST_LOG", ryze_tests::QUIET_LOG.to_owned()),
    ];
    env.spawn_publisher(&merge(base, extra), READY).await
}

/// A gateway's `/metrics` text.
pub async fn metrics(gw: &Service) -> anyhow::Result<String> {
    let resp = http()
        .get(gw.admin_url("/metrics"))
        .timeout(Duration::from_secs(10))
        .send()
        .await?;
    Ok(resp.text().await?)
}

/// The sum of every series of metric `name` whose labels contain `label` (`""` for all).
pub fn metric(text: &str, name: &str, label: &str) -> f64 {
    Exposition::parse(text).sum(name, label)
}

/// Quantiles of the gateway's own `ryze_publish_to_send_seconds` (publisher stamp → write
/// done) between two scrapes of every gateway: (share of frames within each bucket bound in
/// ms, count). The buckets are coarse (…, 1, 2.5, 5, 10 ms, …).
pub fn send_latency_buckets(before: &[String], after: &[String]) -> (Vec<(f64, f64)>, f64) {
    let name = "ryze_publish_to_send_seconds_bucket{le=\"";
    let mut bounds: Vec<(f64, f64)> = Vec::new();
    for (b, a) in before.iter().zip(after) {
        for (text, sign) in [(a, 1.0), (b, -1.0)] {
            for (key, v) in Exposition::parse(text).samples() {
                let Some(le) = key.strip_prefix(name).and_then(|r| r.strip_suffix("\"}")) else {
                    continue;
                };
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse::<f64>().unwrap_or(f64::INFINITY)
                };
                match bounds.iter_mut().find(|(l, _)| *l == le) {
                    Some((_, n)) => *n += sign * v,
                    None => bounds.push((le, sign * v)),
                }
            }
        }
    }
    bounds.sort_by(|x, y| x.0.total_cmp(&y.0));
    let total = bounds.last().map_or(0.0, |(_, n)| *n);
    let shares = bounds
        .iter()
        .map(|(le, n)| (le * 1000.0, if total > 0.0 { n / total } else { 0.0 }))
        .collect();
    (shares, total)
}

/// Waits until the gateway reports `n` open connections (at most `timeout`).
pub async fn wait_connections(gw: &Service, n: f64, timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let text = metrics(gw).await?;
        let now = metric(&text, "ryze_gateway_connections", "");
        if (now - n).abs() < 0.5 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("gateway still has {now} connections after {timeout:?} (waiting for {n})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
