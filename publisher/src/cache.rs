//! Per-instance delivery config (name, decrypted token, filter), filled from Postgres on a
//! miss, dropped on NOTIFY, with `CONFIG_CACHE_TTL` as the safety net. Unknown instances are
//! never cached: an instance created a moment ago must publish at once.

use ryze_core::event::EventFilter;
use ryze_core::store::{InstanceDelivery, Store, StoreError};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
// Tokio's clock (the system's, unless a test pauses it).
use tokio::time::Instant;
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
        Ok(self.get_many(store, &[id]).await?.remove(&id).flatten())
    }

    /// The delivery configs of distinct instances (`None` for ids that name none): fresh
    /// entries from memory, every miss in one query.
    pub async fn get_many(
        &self,
        store: &Store,
        ids: &[Uuid],
    ) -> Result<HashMap<Uuid, Option<Arc<Delivery>>>, StoreError> {
        self.get_many_with(ids, |misses| async move {
            store.instance_deliveries(&misses).await
        })
        .await
    }

    /// [`ConfigCache::get_many`] with the misses looked up by `fetch`.
    async fn get_many_with<F, Fut>(
        &self,
        ids: &[Uuid],
        fetch: F,
    ) -> Result<HashMap<Uuid, Option<Arc<Delivery>>>, StoreError>
    where
        F: FnOnce(Vec<Uuid>) -> Fut,
        Fut: Future<Output = Result<HashMap<Uuid, InstanceDelivery>, StoreError>>,
    {
        let mut out = HashMap::with_capacity(ids.len());
        let mut misses = Vec::new();
        {
            let entries = self.lock();
            for id in ids {
                match entries.get(id) {
                    Some((d, at)) if at.elapsed() < self.ttl => {
                        out.insert(*id, Some(d.clone()));
                    }
                    _ => misses.push(*id),
                }
            }
        }
        if misses.is_empty() {
            return Ok(out);
        }
        let fetched_at = Instant::now();
        let generation = self.generation.load(Ordering::SeqCst);
        let span = tracing::info_span!(
            "config_cache.refresh",
            instances = misses.len(),
            found = tracing::field::Empty,
        );
        let mut found = match fetch(misses.clone()).instrument(span.clone()).await {
            Ok(found) => found,
            Err(e) => {
                // Postgres is down: an expired entry is still the best knowledge we have, and
                // open streams must keep flowing (a NOTIFY still removes a changed entry).
                let stale: Option<Vec<(Uuid, Arc<Delivery>)>> = {
                    let entries = self.lock();
                    misses
                        .iter()
                        .map(|id| entries.get(id).map(|(d, _)| (*id, d.clone())))
                        .collect()
                };
                let Some(stale) = stale else { return Err(e) };
                tracing::debug!(instances = misses.len(), error = %e, "serving stale configs while the database is unavailable");
                out.extend(stale.into_iter().map(|(id, d)| (id, Some(d))));
                return Ok(out);
            }
        };
        span.record("found", found.len());
        let mut entries = self.lock();
        let current = self.generation.load(Ordering::SeqCst) == generation;
        if current && !self.ttl.is_zero() && entries.len() + misses.len() >= SWEEP_AT {
            // Bounded: expired entries (and the decrypted tokens in them) are swept once the
            // map grows.
            let ttl = self.ttl;
            entries.retain(|_, (_, at)| at.elapsed() < ttl);
        }
        for id in misses {
            match found.remove(&id) {
                Some(d) => {
                    let d = Arc::new(Delivery::from(d));
                    // An invalidation that raced this query wins: store nothing.
                    if current && !self.ttl.is_zero() {
                        entries.insert(id, (d.clone(), fetched_at));
                    }
                    out.insert(id, Some(d));
                }
                None => {
                    entries.remove(&id);
                    out.insert(id, None);
                }
            }
        }
        Ok(out)
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

#[cfg(test)]
mod tests;
