//! The publisher's buses ([`ryze_core::bus::Bus`]): Redis, one per region or one in all.
//!
//! - [`redis`]: [`RedisOutlet`], one Redis (plain, Sentinel or Cluster), with history (D37).
//! - [`history`]: the script that appends a frame to history and publishes it atomically.
//! - [`regions`]: [`regions::RegionsOutlet`], every region of `REGION_REDIS_URLS`.

pub mod history;
pub mod redis;
pub mod regions;

pub use self::redis::RedisOutlet;
