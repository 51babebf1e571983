//! The system under chaos: a private Postgres, Redis (one server behind the black-holing
//! [`FaultProxy`], a 3-master Cluster, or a Sentinel-managed primary and two replicas), two publishers and three gateways behind the
//! harness's [`Balancer`], one account and the run's instances seeded by SQL. Processes that a
//! fault takes away leave an empty slot until the fault puts a new one in.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;

use super::history::{lock, now, GatewayLife, Recorder};
use super::schedule::RedisVariant;
use crate::fixtures::Env;
use crate::{
    Balancer, FaultProxy, PgServer, RedisCluster, RedisSentinel, RedisServer, Service, TestDb,
};

/// Upper bound for a (re)started service to become ready; generous because a Redis or
/// Postgres fault may be under way.
pub const READY: Duration = Duration::from_secs(90);
/// The publishers' ingest key.
pub use crate::fixtures::API_KEY;
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
    pub recorder: Arc<Recorder>,
    /// The database, the account whose token every client connects with, and the prefix.
    pub env: Env,
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
        let env = Env::create(db.url.clone(), Some(redis.url()), None).await?;
        let names: Vec<String> = (0..instances).map(|i| format!("chaos-{i}")).collect();
        let ids = env.seed_instances(&names, &[]).await?;
        let insts = names
            .into_iter()
            .map(|name| Inst {
                id: ids[&name].to_string(),
                name,
            })
            .collect();
        let balancer = Balancer::start(Vec::new()).await?;
        let system = System {
            pg,
            db,
            redis,
            balancer,
            gateways: Mutex::new(Vec::new()),
            publishers: Mutex::new(Vec::new()),
            instances: insts,
            recorder,
            env,
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

    /// What both binaries get besides the environment's database, Redis and prefix.
    fn service_env() -> Vec<(&'static str, String)> {
        vec![
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
        let mut env = System::service_env();
        env.extend([
            ("RATE_LIMIT_PER_MINUTE", "100000000".to_owned()),
            ("SHUTDOWN_TIMEOUT", format!("{}s", SHUTDOWN.as_secs())),
            // Rebalancing takes part in the chaos once replaced gateways come up.
            ("REBALANCE_WARMUP", "10s".to_owned()),
            ("REBALANCE_MIN_AGE", "10s".to_owned()),
        ]);
        let svc = self.env.spawn_gateway(&env, READY).await?;
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
        let svc = self
            .env
            .spawn_publisher(&System::service_env(), READY)
            .await?;
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
