//! Benchmark tooling shared by the `ryze-load` worker and the `ryze-bench` orchestrator
//! (`make bench`, docs/benchmarks.md).
//!
//! - [`histogram`]: a mergeable log-linear histogram of microseconds.
//! - [`procfs`]: RSS, CPU seconds, open files and limits from `/proc`.
//! - [`protocol`]: the JSON lines a worker prints and the stamp it reads from frames.
//! - [`fleet`]: spawning and steering `ryze-load` workers, merging their reports.
//! - [`system`]: the system under test (Postgres, Redis, gateways, publisher) and its counters.
//! - [`profile`]: optional `perf` profiles of the gateways while they publish.
//! - [`publish`]: paced publishing through `POST /v1/events`.
//! - [`scenarios`]: the scenarios, each returning its raw numbers.
//! - [`report`]: the Markdown written into docs/benchmarks.md.

pub mod fleet;
pub mod histogram;
pub mod procfs;
pub mod profile;
pub mod protocol;
pub mod publish;
pub mod report;
pub mod scenarios;
pub mod system;
