//! Fixtures shared by the integration test binaries (`mod common;`), re-exported here:
//! - `env`: a migrated database with one account ([`Env`]), instances, and [`System`] (a
//!   publisher, gateways, one configured instance and a control watcher);
//! - `api`: URLs, config and ingest requests, the exact frame and error texts, metrics;
//! - `control`: NUMSUB of instance channels and [`ControlWatcher`], which tells when a config
//!   change reached the publisher;
//! - `raw`: raw HTTP for handshake errors and [`RawWs`], a WebSocket that never answers pings;
//! - [`browser`] and [`resumable`] (used by name): node/Chromium runs, and resumable clients
//!   with a continuous feed.

// Every test binary compiles its own copy of this module and uses a different subset of it;
// each helper here is used by at least one binary (checked when this module was split).
#![allow(dead_code)]

use std::time::Duration;

mod api;
pub mod browser;
mod control;
mod env;
mod raw;
pub mod resumable;

// The same reason: a binary that uses nothing of a submodule leaves its re-export unused.
#[allow(unused_imports)]
pub use {api::*, control::*, env::*, raw::*};

/// Upper bound for anything a test awaits (a frame, a close, readiness, a relay message).
pub const WAIT: Duration = Duration::from_secs(20);
/// Upper bound for a service to become ready.
pub const READY: Duration = Duration::from_secs(30);
/// The ingest key of every publisher the fixtures start.
pub const API_KEY: &str = "test-publisher-key";
/// `PUBLIC_BASE_URL` of every publisher, with a trailing `/` that D11 drops.
pub const BASE_URL: &str = "https://api.example.com/";
/// What `instanceData.baseUrl` must then read.
pub const EXPECTED_BASE_URL: &str = "https://api.example.com";
