//! Integration-test harness for ryze-events: private servers and real processes.
//!
//! Layout:
//! - [`postgres`]: a private PostgreSQL (`initdb` in a temp dir, free port). [`pg()`] is shared
//!   per test binary and hands out [`TestDb`]s via [`PgServer::fresh_database`];
//!   [`PgServer::start_private`] gives one a test may stop and start (outages).
//! - [`redis`]: a private `redis-server` on a free port. [`redis()`] is shared (isolate with
//!   [`unique_prefix()`]); [`RedisServer::start`] gives one a test may stop and restart.
//!   [`RedisServer::start_tls`] serves TLS only, with certificates from [`tls`].
//! - [`sentinel`]: a primary, a replica and three Sentinels ([`RedisSentinel`]).
//! - [`tls`]: a throwaway CA, server and client certificate made with `openssl` ([`TestCerts`]).
//! - [`process`]: the project's binaries as child processes ([`Service`], [`Bin`]) with captured
//!   logs, readiness waits and signals; [`run_cli`] for one-shot admin commands; [`free_port`].
//! - [`proxy`]: [`FaultProxy`], a loopback TCP proxy in front of Redis/Postgres that
//!   black-holes or resets connections on demand (silent network failures a stopped server
//!   cannot produce).
//! - [`balancer`]: [`Balancer`], a loopback round-robin TCP load balancer whose backend list a
//!   test changes at runtime (as a Kubernetes Service gains pods).
//! - [`certs`]: a throwaway CA with server and client certificates (`openssl` CLI), and
//!   [`PgServer::start_private_tls`] for a TLS-only Postgres.
//! - [`client`]: the shared [`http()`] client and [`WsClient`], whose [`WsConnectError`] carries
//!   a refused upgrade's status and body.
//! - [`chaos`]: the chaos soak (issue 21): seeded faults under load and an invariant checker
//!   over the recorded history (`make chaos`, tests/tests/chaos.rs).
//! - [`fixtures`]: what the test binaries share beyond the servers (`use ryze_tests::fixtures
//!   as common;`): a migrated database with an account, a [`fixtures::System`] of running
//!   services, request and frame helpers, raw clients, resumable clients, browser runs.
//! - [`wait`]: [`eventually`], which polls a condition that has no event to await.
//! - `supervisor` (private): the `sh` wrapper that ties every server to the test process, so
//!   nothing outlives a panic or a killed test binary.
//!
//! Tests await conditions (`/readyz`, a frame, a log line, a close code), each under a timeout
//! as upper bound; none sleeps.

pub mod balancer;
pub mod certs;
pub mod chaos;
pub mod client;
pub mod cluster;
pub mod fixtures;
pub mod metrics;
pub mod postgres;
pub mod process;
pub mod proxy;
pub mod redis;
pub mod sentinel;
mod supervisor;
pub mod tls;
pub mod wait;

pub use balancer::Balancer;
pub use certs::Certs;
pub use client::{http, WsClient, WsConnectError};
pub use cluster::{ClusterNode, RedisCluster, SlotOwner};
pub use postgres::{pg, try_pg, PgServer, TestDb};
pub use process::{
    describe, free_port, reported_addr, run_cli, run_cli_json, run_program, Bin, Listeners,
    Service, QUIET_LOG,
};
pub use proxy::FaultProxy;
pub use redis::{redis, try_redis, unique_prefix, ClientAuth, RedisServer};
pub use sentinel::RedisSentinel;
pub use supervisor::{pid_is_alive, Frozen};
pub use tls::TestCerts;
pub use wait::{eventually, eventually_every};
