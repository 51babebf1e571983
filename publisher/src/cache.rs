//! Per-instance delivery config (name, decrypted token, filter), filled from Postgres on a
//! miss, dropped on NOTIFY, with `CONFIG_CACHE_TTL` as the safety net. Unknown instances are
//! never cached: an instance created a moment ago must publish at once.

use ryze_core::event::EventFilter;
use ryze_core::store::{InstanceDelivery, Store, StoreError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::Instrument;
use uuid::Uuid;

/// Entries at which expired ones are swept.
const SWEEP_AT: usize = 10_000;

/// What shaping an instance's frames needs.
#[derive(Debug)]
pub struct Delivery {
    /// `instanceData.instance`.
    pub name: String,
    /// `instanceData.token`.
    pub token: String,
    /// Whether a config row exists and is enabled.
    pub enabled: bool,
    /// The `events` filter.
    pub filter: EventFilter,
    /// `mediaBase64`.
    pub media_base64: bool,
}

impl From<InstanceDelivery> for Delivery {
    fn from(d: InstanceDelivery) -> Delivery {
        let (enabled, filter, media_base64) = match d.config {
            Some(c) => (
                c.enabled,
                EventFilter::from_events(&c.events),
                c.media_base64,
            ),
            None => (false, EventFilter::default(), false),
        };
        Delivery {
            name: d.name,
            token: d.token,
            enabled,
            filter,
            media_base64,
        }
    }
}

/// The cache.
pub struct ConfigCache {
    ttl: Duration,
    entries: Mutex<HashMap<Uuid, (Arc<Delivery>, Instant)>>,
    /// Bumped by every invalidation: a fetch that raced one is not stored.
    generation: AtomicU64,
}

impl ConfigCache {
    /// An empty cache.
    pub fn new(ttl: Duration) -> ConfigCache {
        ConfigCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, (Arc<Delivery>, Instant)>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The delivery config of an instance; `None` when it does not exist.
    pub async fn get(&self, store: &Store, id: Uuid) -> Result<Option<Arc<Delivery>>, StoreError> {
        if let Some((d, at)) = self.lock().get(&id) {
            if at.elapsed() < self.ttl {
                return Ok(Some(d.clone()));
            }
        }
        let fetched_at = Instant::now();
        let generation = self.generation.load(Ordering::SeqCst);
        let span = tracing::info_span!(
            "config_cache.refresh",
            instance.id = %id,
            found = tracing::field::Empty,
        );
        let found = match store.instance_delivery(id).instrument(span.clone()).await {
            Ok(found) => found,
            Err(e) => {
                // Postgres is down: an expired entry is still the best knowledge we have, and
                // open streams must keep flowing (a NOTIFY still removes a changed entry).
                if let Some((d, _)) = self.lock().get(&id) {
                    tracing::debug!(instance.id = %id, error = %e, "serving a stale config while the database is unavailable");
                    return Ok(Some(d.clone()));
                }
                return Err(e);
            }
        };
        span.record("found", found.is_some());
        let Some(found) = found else {
            self.lock().remove(&id);
            return Ok(None);
        };
        let d = Arc::new(Delivery::from(found));
        if !self.ttl.is_zero() {
            let mut entries = self.lock();
            if self.generation.load(Ordering::SeqCst) == generation {
                // Bounded: expired entries (and the decrypted tokens in them) are swept once
                // the map grows.
                if entries.len() >= SWEEP_AT {
                    let ttl = self.ttl;
                    entries.retain(|_, (_, at)| at.elapsed() < ttl);
                }
                entries.insert(id, (d.clone(), fetched_at));
            }
        }
        Ok(Some(d))
    }

    /// Drops an instance's entry (NOTIFY).
    pub fn invalidate(&self, id: Uuid) {
        let mut entries = self.lock();
        self.generation.fetch_add(1, Ordering::SeqCst);
        entries.remove(&id);
    }

    /// Drops everything (the LISTEN connection was lost: notifications may be missing).
    pub fn clear(&self) {
        let mut entries = self.lock();
        self.generation.fetch_add(1, Ordering::SeqCst);
        entries.clear();
    }
}
