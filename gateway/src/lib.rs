//! ryze-gateway: the public HTTP and WebSocket edge. A library on `ryze-core` alone; the
//! `ryze-gateway` binary (`gateway/cmd`) composes it with the embedded publisher.
//!
//! Layout:
//! - [`config`]: flags and environment, parsed once.
//! - [`app`]: builds everything from the config and runs it until shutdown.
//! - [`embed`]: what a component running in the gateway's process (the embedded publisher)
//!   gets from it, and gives.
//! - [`server`]: the accept loop (header timeout, upgrades, graceful stop, EMFILE back-off).
//! - [`open_files`]: `RLIMIT_NOFILE` raised at start-up, and the connection cap it allows.
//! - [`routes`]: the public router (config API, `/ws`, `/health`) and the admin router.
//! - [`auth`]: tokens, ownership, and the positive-only auth cache; [`origin`]: the allowlist.
//! - [`ratelimit`]: fixed windows shared through Redis.
//! - [`hub`]: instance → local clients, subscription lifecycle, fan-out.
//! - [`outbox`]: a connection's bounded queue; [`connection`]: its socket loop.
//! - [`broker`]: where frames come from (Redis, or in process); [`resume`]: `since`, replay
//!   and gaps (SPEC §5.7).
//! - [`rebalance`]: pods share their connection counts through Redis; a pod well above the
//!   fleet mean closes its excess, paced, with 1001 `rebalancing` (SPEC D39).
//! - [`control`]: control messages (config changed, instance deleted) applied to the auth
//!   cache and the hub.
//! - [`readiness`]: every condition `/readyz` depends on, in one place.
//! - [`metrics`], [`error`], [`state`], [`console`]; logs and traces are set up by
//!   `ryze_telemetry`.

pub mod app;
pub mod auth;
pub mod broker;
pub mod config;
pub mod connection;
pub mod console;
pub mod control;
pub mod embed;
pub mod error;
pub mod hub;
pub mod metrics;
pub mod open_files;
pub mod origin;
pub mod outbox;
pub mod ratelimit;
pub mod readiness;
pub mod rebalance;
pub mod resume;
pub mod routes;
pub mod server;
pub mod state;
