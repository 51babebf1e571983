//! Builds the gateway from its config and runs it until a shutdown signal, then drains.

use crate::auth::AuthCache;
use crate::broker::memory::MemoryBroker;
use crate::broker::redis::RedisBroker;
use crate::broker::Broker;
use crate::config::Validated;
use crate::connection::SessionLimits;
use crate::control::Control;
use crate::embed::{Fanout, Guest, Host};
use crate::hub::{Hub, HubOptions};
use crate::metrics::Metrics;
use crate::open_files;
use crate::origin::OriginPolicy;
use crate::ratelimit::RateLimiter;
use crate::routes::{self, Extras};
use crate::state::{AppState, Shared, WsLimits};
use ryze_core::bus::BusError;
use ryze_core::channel::Names;
use ryze_core::store::StoreError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why the gateway could not start, or stopped serving (`main` logs it and exits 1).
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The Postgres pool could not be built.
    #[error("opening the Postgres pool: {0}")]
    Store(#[from] StoreError),
    /// The Redis clients could not be built.
    #[error("setting up the Redis clients: {0}")]
    Redis(#[from] fred::error::Error),
    /// The embedded publisher could not start.
    #[error("starting the embedded publisher: {0}")]
    Guest(#[from] BusError),
    /// A listener could not be bound.
    #[error("binding {setting} {addr}: {source}")]
    Bind {
        setting: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// A bound listener could not report its address.
    #[error("reading the listen address: {0}")]
    Listener(#[source] std::io::Error),
}

/// A built gateway: listeners bound, background tasks started.
pub struct App {
    public: TcpListener,
    admin: TcpListener,
    public_router: axum::Router,
    admin_router: axum::Router,
    state: AppState,
    stops: Stops,
    drain_rate: u32,
    shutdown_timeout: Duration,
    header_timeout: Duration,
}

impl App {
    /// Connects what must be connected, binds both listeners, starts background loops, and
    /// starts `guest` (the embedded publisher) on the gateway's store, bus and listener.
    pub async fn build(
        config: Validated,
        mut guest: Option<Box<dyn Guest>>,
    ) -> Result<App, AppError> {
        // Before anything opens a descriptor of its own.
        let connection_cap = connection_cap(&config);
        let store = config.database.open()?;
        let metrics = Metrics::with(config.gateway.metrics_instance_labels, |registry| {
            if let Some(guest) = guest.as_mut() {
                guest.register_metrics(registry);
            }
        });
        metrics.set_connection_cap(connection_cap);
        // Hash-tagged with Redis Cluster, as the publishers name them (history key and shard
        // channel in one slot).
        let clustered = config
            .redis
            .target
            .as_ref()
            .is_some_and(|target| target.clustered);
        let names = Names::new(config.redis.prefix.clone()).with_hash_tags(clustered);
        let tasks = TaskTracker::new();
        let stops = Stops::new();
        let background = stops.background.clone();
        let cache = Arc::new(AuthCache::new(config.gateway.config_cache_ttl));
        // The guest publishes where the hub listens: into it, or to the same Redis.
        let (broker, guest_fanout) = match &config.redis.target {
            Some(target) => (
                Broker::Redis(RedisBroker::connect(
                    target,
                    names.clone(),
                    metrics.clone(),
                    config.history.history_ttl,
                )?),
                Fanout::Redis(target.clone()),
            ),
            None => {
                let memory = Arc::new(MemoryBroker::default());
                (Broker::Memory(memory.clone()), Fanout::InProcess(memory))
            }
        };
        let hub = Hub::new(
            broker.clone(),
            metrics.clone(),
            tasks.clone(),
            background.clone(),
            HubOptions {
                unsubscribe_delay: config.gateway.unsubscribe_delay,
                slow_grace: config.gateway.ws_slow_consumer_grace,
                draining: stops.draining.clone(),
            },
        );
        let control = Control::new(hub.clone(), cache.clone());
        match &broker {
            Broker::Redis(r) => r.start(hub.clone(), control, &tasks, background.clone()),
            Broker::Memory(m) => m.attach(hub.clone(), control),
        }
        let limiter = RateLimiter::new(
            config.gateway.rate_limit_per_minute,
            broker.redis().cloned(),
            names.clone(),
            metrics.clone(),
        );
        let write_buffer = 8 * 1024;
        let state: AppState = Arc::new(Shared {
            store: store.clone(),
            cache: cache.clone(),
            hub,
            limiter,
            origins: OriginPolicy::parse(config.gateway.allowed_ws_origins.as_deref()),
            metrics,
            connections: Arc::new(Semaphore::new(connection_cap)),
            ws: WsLimits {
                read_frame_cap: (config.gateway.ws_max_message_bytes * 4).max(64 * 1024),
                send_queue: config.gateway.ws_send_queue,
                send_queue_bytes: config.gateway.ws_send_queue_bytes,
                // None held while idle (1 KiB per connection otherwise): see connection::io.
                read_buffer: 0,
                write_buffer,
                // A cap, not an allocation: above any frame a publisher can produce (its
                // MAX_INGEST_BYTES; 64 MiB covers every sane setting), or the write would fail.
                max_write_buffer: config
                    .gateway
                    .ws_send_queue_bytes
                    .max(config.max_ingest_bytes)
                    .max(64 << 20)
                    + write_buffer,
                session: SessionLimits {
                    max_message_bytes: config.gateway.ws_max_message_bytes,
                    ping_interval: config.gateway.ws_ping_interval,
                    pong_timeout: config.gateway.ws_pong_timeout,
                },
            },
            tasks: tasks.clone(),
            draining: stops.draining.clone(),
            started: Instant::now(),
            http_header_timeout: config.gateway.http_header_timeout,
            trust_proxy_headers: config.gateway.trust_proxy_headers,
        });

        let mut extras = Extras {
            ingest: None,
            console: config.gateway.console_enabled,
        };
        if let Some(guest) = guest {
            extras.ingest = Some(guest.start(Host {
                store: store.clone(),
                fanout: guest_fanout,
                names: names.clone(),
                tasks: tasks.clone(),
                stop: background.clone(),
            })?);
        }

        if let Broker::Redis(redis) = &broker {
            let rebalancer = crate::rebalance::Rebalancer::new(
                state.clone(),
                redis.clone(),
                names.clone(),
                crate::rebalance::Settings {
                    policy: crate::rebalance::decision::Policy {
                        threshold: config.gateway.rebalance_threshold,
                        warmup: config.gateway.rebalance_warmup,
                    },
                    interval: config.gateway.rebalance_interval,
                    rate: config.gateway.rebalance_rate,
                    min_age: config.gateway.rebalance_min_age,
                },
            );
            tasks.spawn(rebalancer.run(background.clone()));
        } else {
            tracing::info!("rebalancing off: no Redis (single process)");
        }

        // Expired cache entries are swept so the maps stay bounded.
        {
            let cache = cache.clone();
            let stop = background.clone();
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(30));
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => cache.sweep(),
                    }
                }
            });
        }

        // While a Postgres TLS handshake is failing the pod is not ready, so no request would
        // try again: retry on our own, so a fixed certificate heals readiness by itself.
        {
            let store = store.clone();
            let stop = background.clone();
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => if store.tls_failing() {
                            let _ = store.ping().await;
                        },
                    }
                }
            });
        }

        let bind = |setting, addr| {
            crate::server::bind(addr).map_err(|source| AppError::Bind {
                setting,
                addr,
                source,
            })
        };
        let public = bind("LISTEN_ADDR", config.gateway.listen_addr)?;
        let admin = bind("ADMIN_LISTEN_ADDR", config.gateway.admin_listen_addr)?;
        Ok(App {
            public_router: routes::router(state.clone(), extras),
            admin_router: routes::admin::router(state.clone()),
            public,
            admin,
            state,
            stops,
            drain_rate: config.gateway.drain_rate,
            shutdown_timeout: config.gateway.shutdown_timeout,
            header_timeout: config.gateway.http_header_timeout,
        })
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    /// Serves until `signal` resolves, then: readiness fails, accepting stops, connections
    /// close with 1001 at `DRAIN_RATE`, all bounded by `SHUTDOWN_TIMEOUT`.
    pub async fn run_until_stopped(
        self,
        signal: impl std::future::Future<Output = ()>,
    ) -> Result<(), AppError> {
        let state = self.state;
        let stops = self.stops;
        // Named in the start line: with port 0 in LISTEN_ADDR the kernel picks the port, and
        // this line is where an operator (or the test harness) learns it.
        let public_addr = self.public.local_addr().map_err(AppError::Listener)?;
        let admin_addr = self.admin.local_addr().map_err(AppError::Listener)?;
        let servers = TaskTracker::new();
        servers.spawn(crate::server::serve(
            self.public,
            self.public_router,
            self.header_timeout,
            stops.public.clone(),
            state.tasks.clone(),
            state.metrics.clone(),
        ));
        servers.spawn(crate::server::serve(
            self.admin,
            self.admin_router,
            self.header_timeout,
            stops.admin.clone(),
            TaskTracker::new(),
            state.metrics.clone(),
        ));
        tracing::info!(
            listen_addr = %public_addr,
            admin_listen_addr = %admin_addr,
            "gateway started"
        );
        signal.await;
        tracing::info!(
            drain_rate = self.drain_rate,
            "shutdown started: readiness failing, draining connections"
        );
        // Readiness fails and the public listener stops accepting (its token is a child).
        stops.draining.cancel();
        let drained = tokio::time::timeout(self.shutdown_timeout, async {
            state
                .hub
                .drain(self.drain_rate, self.shutdown_timeout)
                .await;
            stops.background.cancel();
            state.tasks.close();
            state.tasks.wait().await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!("shutdown timeout reached with connections still open; exiting anyway");
        }
        // Whatever is left (background tasks after a timeout, the admin listener) stops now.
        stops.root.cancel();
        servers.close();
        let _ = tokio::time::timeout(Duration::from_secs(1), servers.wait()).await;
        tracing::info!("gateway stopped");
        Ok(())
    }
}

/// The shutdown tokens: one root, and a child per phase, so cancelling the root stops
/// everything while the phases can still be stopped one by one, in order.
struct Stops {
    root: CancellationToken,
    /// Shutdown started: readiness fails, joins are refused; parent of `public`.
    draining: CancellationToken,
    /// The public listener stops accepting.
    public: CancellationToken,
    /// Background loops (Redis reader, heartbeats, rebalancer, caches, the embedded publisher).
    background: CancellationToken,
    /// The admin listener (last: `/readyz` answers 503 throughout the drain).
    admin: CancellationToken,
}

impl Stops {
    fn new() -> Stops {
        let root = CancellationToken::new();
        let draining = root.child_token();
        Stops {
            public: draining.child_token(),
            background: root.child_token(),
            admin: root.child_token(),
            draining,
            root,
        }
    }
}

/// Raises the soft open-files limit to the hard one and returns the effective connection cap,
/// `min(MAX_CONNECTIONS, soft - reserve)` (see [`crate::open_files`]), logging both limits.
fn connection_cap(config: &Validated) -> usize {
    let max = config.gateway.max_connections.min(Semaphore::MAX_PERMITS);
    let limits = match open_files::raise_to_hard() {
        Ok(limits) => limits,
        Err(e) => {
            tracing::warn!(
                error = %e,
                connection_cap = max,
                "open-files limit unknown; connection cap is MAX_CONNECTIONS"
            );
            return max;
        }
    };
    let reserve = open_files::reserve(config.database.pool_size);
    let cap = open_files::connection_cap(max, limits.soft, reserve);
    tracing::info!(
        soft_limit = limits.soft,
        hard_limit = limits.hard,
        raised_from = limits.raised_from,
        reserve,
        max_connections = config.gateway.max_connections,
        connection_cap = cap,
        "open-files limit"
    );
    if cap < open_files::LOW_CAP {
        tracing::warn!(
            soft_limit = limits.soft,
            reserve,
            connection_cap = cap,
            "open-files limit leaves almost no room for connections; raise the hard limit"
        );
    }
    cap
}
