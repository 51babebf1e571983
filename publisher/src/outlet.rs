//! The publisher's buses ([`ryze_core::bus::Bus`]): Redis, one per region or one in all.
//!
//! - [`redis`]: [`RedisOutlet`], one Redis (plain, Sentinel or Cluster), with history (D37).
//! - [`history`]: the script that appends a frame to history and publishes it atomically.
//! - [`regions`]: [`regions::RegionsOutlet`], every region of `REGION_REDIS_URLS`.

pub mod history;
pub mod redis;
pub mod regions;

pub use self::redis::RedisOutlet;

/// How each Redis of an outlet is used.
#[derive(Debug, Clone, Copy)]
pub struct RedisOptions {
    /// `REDIS_STALL_TIMEOUT`: the bound on every round trip, and the liveness rule (D38).
    pub stall_timeout: std::time::Duration,
    /// The retention with history on (`HISTORY_SIZE` > 0), `None` for plain publishes
    /// (version-1 headers).
    pub history: Option<ryze_core::history::Retention>,
}
