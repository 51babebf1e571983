//! The system under chaos: a private Postgres, Redis (one server behind the black-holing
//! [`FaultProxy`], a 3-master Cluster, or a Sentinel-managed primary and two replicas), two publishers and three gateways behind the
//! harness's [`Balancer`], one account and the run's instances seeded by SQL. Processes that a
//! fault takes away leave an empty slot until the fault puts a new one in.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use uuid::Uuid;

use super::history::{lock, now, GatewayLife, Recorder};
use super::schedule::RedisVariant;
use crate::{
    run_cli_json, Balancer, Bin, FaultProxy, PgServer, RedisCluster, RedisSentinel, RedisServer,
    Service, TestDb,
};

/// Upper bound for a (re)started service to become ready; generous because a Redis or
/// Postgres fault may be under way.
pub const READY: Duration = Duration::from_secs(90);
/// The publishers' ingest key.
pub const API_KEY: &str = "chaos-publisher-key";
/// Frames of history per instance (the product's default, passed explicitly since the
/// checker relies on it).
pub const HISTORY_SIZE: u64 = 1000;
/// `REDIS_STALL_TIMEOUT` of both binaries (the default, explicit for the readiness check).
pub const STALL_TIMEOUT: Duration = Duration::from_secs(3);
/// `SHUTDOWN_TIMEOUT` of the gateways.
pub const SHUTDOWN: Duration = Duration::from_secs(10);

/// Redis as the variant runs it.
pub enum Redis {
    /// One server; the services reach it only through the proxy.
    Single {
        server: RedisServer,
        proxy: FaultProxy,
    },
    /// A 3-master cluster, reached directly.
    Cluster(RedisCluster),
    /// A primary, two replicas and three Sentinels (`RedisSentinel::start_guarded`), reached
    /// directly through the Sentinels.
    Sentinel(RedisSentinel),
}

impl Redis {
    fn url(&self) -> String {
        match self {
            Redis::Single { proxy, .. } => proxy.redis_url(),
            Redis::Cluster(c) => c.url(),
            Redis::Sentinel(s) => s.url(),
        }
    }
}

/// One instance of the run.
#[derive(Debug, Clone)]
pub struct Inst {
    pub id: String,
    pub name: String,
}

/// A running gateway or publisher and the index of its [`GatewayLife`] (gateways only).
pub struct Slot {
    pub svc: Arc<Service>,
    pub life: usize,
    /// Set by a fault before it signals the process, so the crash monitor knows the exit was
    /// planned.
    pub planned_exit: bool,
}

/// Everything the run started.
pub struct System {
    pub pg: PgServer,
    pub db: TestDb,
    pub redis: Redis,
    pub balancer: Balancer,
    pub gateways: Mutex<Vec<Option<Slot>>>,
    pub publishers: Mutex<Vec<Option<Slot>>>,
    pub instances: Vec<Inst>,
    pub token: String,
    pub recorder: Arc<Recorder>,
    prefix: String,
    gateway_count: Mutex<usize>,
}

impl System {
    /// Starts everything: Postgres, Redis, `instances` instances, 2 publishers, 3 gateways and
    /// the balancer in front of them.
    pub async fn start(
        variant: RedisVariant,
        instances: usize,
        recorder: Arc<Recorder>,
    ) -> anyhow::Result<System> {
        let pg = PgServer::start_private()
            .await
            .context("starting postgres")?;
        let db = pg.fresh_database().await?;
        let redis = match variant {
            RedisVariant::Cluster => Redis::Cluster(
                RedisCluster::start()
                    .await
                    .context("starting the cluster")?,
            ),
            RedisVariant::Sentinel => Redis::Sentinel(
                RedisSentinel::start_guarded()
                    .await
                    .context("starting sentinel")?,
            ),
            RedisVariant::Single => {
                let server = RedisServer::start().await.context("starting redis")?;
                let proxy = FaultProxy::in_front_of(&server).await?;
                Redis::Single { server, proxy }
            }
        };
        let cli_env = vec![
            ("DATABASE_URL", db.url.clone()),
            ("RUST_LOG", "warn".to_owned()),
        ];
        run_cli_json(Bin::Publisher, &["migrate"], &cli_env).await?;
        let account = run_cli_json(Bin::Publisher, &["account", "create"], &cli_env).await?;
        let field = |k: &str| {
            account[k]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("account create printed no {k}: {account}"))
        };
        let account_id: Uuid = field("id")?.parse().context("account id")?;
        let token = field("token")?;
        let client = db.client().await?;
        // Tokens in plain text (no ENCRYPTION_KEY), hashed like ryze_core::token::hash; the
        // clients use the account token anyway.
        client
            .batch_execute(&format!(
                "INSERT INTO instances (id, account_id, name, token_hash, token_secret) \
                 SELECT gen_random_uuid(), '{account_id}', 'chaos-' || i, \
                        sha256(convert_to('chaos-' || i, 'UTF8')), convert_to('chaos-' || i, 'UTF8') \
                 FROM generate_series(0, {instances} - 1) i; \
                 INSERT INTO websocket_configs (instance_id, enabled, media_base64) \
                 SELECT id, true, false FROM instances WHERE account_id = '{account_id}';"
            ))
            .await
            .context("seeding instances")?;
        let mut insts = Vec::new();
        for i in 0..instances {
            let name = format!("chaos-{i}");
            let row = client
                .query_one("SELECT id FROM instances WHERE name = $1", &[&name])
                .await?;
            let id: Uuid = row.get(0);
            insts.push(Inst {
                id: id.to_string(),
                name,
            });
        }
        let balancer = Balancer::start(Vec::new()).await?;
        let system = System {
            pg,
            db,
            redis,
            balancer,
            gateways: Mutex::new(Vec::new()),
            publishers: Mutex::new(Vec::new()),
            instances: insts,
            token,
            recorder,
            prefix: crate::unique_prefix(),
            gateway_count: Mutex::new(0),
        };
        for _ in 0..2 {
            let p = system.spawn_publisher().await?;
            lock(&system.publishers).push(Some(p));
        }
        for _ in 0..3 {
            let g = system.spawn_gateway().await?;
            lock(&system.gateways).push(Some(g));
        }
        system.update_balancer();
        Ok(system)
    }

    fn service_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DATABASE_URL", self.db.url.clone()),
            ("REDIS_URL", self.redis.url()),
            ("REDIS_PREFIX", self.prefix.clone()),
            // CHAOS_RUST_LOG (e.g. `warn,ryze_gateway=info`) with RYZE_TEST_ECHO_LOGS=1 shows
            // what the services did around a violation.
            (
                "RUST_LOG",
                std::env::var("CHAOS_RUST_LOG").unwrap_or_else(|_| crate::QUIET_LOG.to_owned()),
            ),
            ("HISTORY_SIZE", HISTORY_SIZE.to_string()),
            (
                "REDIS_STALL_TIMEOUT",
                format!("{}s", STALL_TIMEOUT.as_secs()),
            ),
        ]
    }

    /// A new gateway, ready; its readiness life is registered with the recorder.
    pub async fn spawn_gateway(&self) -> anyhow::Result<Slot> {
        let mut env = self.service_env();
        env.extend([
            ("RATE_LIMIT_PER_MINUTE", "100000000".to_owned()),
            ("SHUTDOWN_TIMEOUT", format!("{}s", SHUTDOWN.as_secs())),
            // Rebalancing takes part in the chaos once replaced gateways come up.
            ("REBALANCE_WARMUP", "10s".to_owned()),
            ("REBALANCE_MIN_AGE", "10s".to_owned()),
        ]);
        let svc = Service::spawn(Bin::Gateway, &[], &env).await?;
        svc.wait_ready(READY).await?;
        let n = {
            let mut c = lock(&self.gateway_count);
            *c += 1;
            *c
        };
        let mut lives = lock(&self.recorder.gateways);
        lives.push(GatewayLife {
            name: format!("gateway #{n} (pid {})", svc.pid()),
            started: now(),
            ended: None,
            samples: Vec::new(),
        });
        Ok(Slot {
            svc: Arc::new(svc),
            life: lives.len() - 1,
            planned_exit: false,
        })
    }

    /// A new publisher, ready.
    pub async fn spawn_publisher(&self) -> anyhow::Result<Slot> {
        let mut env = self.service_env();
        env.extend([
            ("PUBLISHER_API_KEY", API_KEY.to_owned()),
            ("PUBLIC_BASE_URL", "https://chaos.invalid".to_owned()),
        ]);
        let svc = Service::spawn(Bin::Publisher, &[], &env).await?;
        svc.wait_ready(READY).await?;
        Ok(Slot {
            svc: Arc::new(svc),
            life: usize::MAX,
            planned_exit: false,
        })
    }

    /// Points the balancer at the gateways present now (as a Service's endpoints follow pods).
    pub fn update_balancer(&self) {
        let addrs = lock(&self.gateways)
            .iter()
            .flatten()
            .map(|s| s.svc.addr())
            .collect();
        self.balancer.set_backends(addrs);
    }

    /// The ingest URLs of the publishers present now, in slot order.
    pub fn ingest_urls(&self) -> Vec<Option<String>> {
        lock(&self.publishers)
            .iter()
            .map(|s| s.as_ref().map(|s| s.svc.url("/v1/events")))
            .collect()
    }

    /// The gateways present now.
    pub fn live_gateways(&self) -> Vec<Arc<Service>> {
        lock(&self.gateways)
            .iter()
            .flatten()
            .map(|s| s.svc.clone())
            .collect()
    }

    /// `ws://<balancer>/ws/<name>`.
    pub fn ws_url(&self, instance: usize) -> String {
        self.balancer
            .ws_url(&format!("/ws/{}", self.instances[instance].name))
    }
}
