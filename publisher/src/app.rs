//! The standalone publisher service: `/v1/events`, `/livez`, `/readyz`, `/metrics` on one
//! listener, the NOTIFY relay, and graceful shutdown.

use crate::config::{Fanout, Service};
use crate::outlet::regions::RegionsOutlet;
use crate::outlet::RedisOutlet;
use crate::{Publisher, Settings};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use ryze_core::bus::{Bus, BusError};
use ryze_core::channel::Names;
use ryze_core::settings::Database;
use ryze_core::store::StoreError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

struct Admin {
    publisher: Arc<Publisher>,
    draining: CancellationToken,
}

/// Why the publisher service could not start, or stopped serving (`main` logs it and exits 1).
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The Postgres pool could not be built.
    #[error("opening the Postgres pool: {0}")]
    Store(#[from] StoreError),
    /// The Redis clients could not be built.
    #[error("setting up the Redis clients: {0}")]
    Redis(#[from] BusError),
    /// `LISTEN_ADDR` could not be bound.
    #[error("binding LISTEN_ADDR {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// Serving failed (the listener's address or an accept error).
    #[error("serving: {0}")]
    Serve(#[source] std::io::Error),
}

/// A built publisher service.
pub struct App {
    listener: TcpListener,
    router: Router,
    tasks: TaskTracker,
    stop: CancellationToken,
    draining: CancellationToken,
    shutdown_timeout: Duration,
}

impl App {
    /// Builds the service and binds its listener.
    pub async fn build(database: &Database, config: Service) -> Result<App, AppError> {
        let store = database.open()?;
        let names = Names::new(config.prefix.clone());
        let tasks = TaskTracker::new();
        let stop = CancellationToken::new();
        let publisher_metrics = crate::metrics::Metrics::new();
        let history = config.history.retention();
        let outlet: Arc<dyn Bus> = match config.fanout {
            Fanout::Regions(regions) => Arc::new(RegionsOutlet::connect(
                regions,
                names,
                history,
                publisher_metrics.clone(),
                &tasks,
                stop.clone(),
            )?),
            Fanout::Redis(target) => {
                let outlet = RedisOutlet::connect(target, names, history)?;
                outlet.watch("default", publisher_metrics.clone(), &tasks, stop.clone());
                outlet
            }
        };
        let settings = Settings::new(config.ingest, config.config_cache_ttl);
        let publisher = Publisher::with_metrics(store, outlet, settings, publisher_metrics);
        let draining = CancellationToken::new();
        tasks.spawn(crate::relay::run(publisher.clone(), stop.clone()));
        let admin = Arc::new(Admin {
            publisher: publisher.clone(),
            draining: draining.clone(),
        });
        // Request spans on the ingest route only: probes and scrapes would flood the traces.
        let ingest = crate::routes::ingest(publisher).layer(ryze_telemetry::http_trace_layer());
        let router = ingest.merge(
            Router::new()
                .route("/livez", get(|| async { "ok" }))
                .route("/readyz", get(readyz))
                .route("/metrics", get(metrics))
                .with_state(admin),
        );
        let addr = config.listen_addr;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| AppError::Bind { addr, source })?;
        Ok(App {
            listener,
            router,
            tasks,
            stop,
            draining,
            shutdown_timeout: config.shutdown_timeout,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `signal`, then stops accepting, finishes in-flight requests, and exits.
    pub async fn run_until_stopped(
        self,
        signal: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        let draining = self.draining.clone();
        // Named in the start line: with port 0 in LISTEN_ADDR the kernel picks the port.
        let listen_addr = self.listener.local_addr().map_err(AppError::Serve)?;
        let serve = axum::serve(self.listener, self.router).with_graceful_shutdown(async move {
            signal.await;
            tracing::info!("shutdown started");
            draining.cancel();
        });
        tracing::info!(listen_addr = %listen_addr, "publisher started");
        serve.await.map_err(AppError::Serve)?;
        self.stop.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(self.shutdown_timeout, self.tasks.wait()).await;
        tracing::info!("publisher stopped");
        Ok(())
    }
}

async fn readyz(State(a): State<Arc<Admin>>) -> Response {
    // A Postgres certificate that does not verify keeps the pod unready (its ERROR line says
    // why); an unreachable Postgres does not: cached configs keep serving (docs/decisions.md).
    if !a.draining.is_cancelled()
        && a.publisher.outlet.is_ready()
        && !a.publisher.store.tls_failing()
    {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

async fn metrics(State(a): State<Arc<Admin>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        a.publisher.metrics.render(),
    )
        .into_response()
}
