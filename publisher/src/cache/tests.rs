//! The cache over a stand-in for Postgres, on Tokio's paused clock.

use super::*;
use std::sync::atomic::{AtomicBool, AtomicUsize};

const TTL: Duration = Duration::from_secs(5);

/// Postgres as the cache sees it: rows by id, a lookup counter, and an outage switch.
#[derive(Default)]
struct Rows {
    rows: Mutex<HashMap<Uuid, InstanceDelivery>>,
    lookups: AtomicUsize,
    down: AtomicBool,
}

impl Rows {
    fn with(ids: &[(Uuid, &str)]) -> Rows {
        let rows = Rows::default();
        for (id, name) in ids {
            rows.put(*id, name);
        }
        rows
    }

    fn put(&self, id: Uuid, name: &str) {
        let row = InstanceDelivery {
            name: name.to_owned(),
            token: format!("token-{name}"),
            config: None,
        };
        self.lock().insert(id, row);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, InstanceDelivery>> {
        self.rows.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lookups(&self) -> usize {
        self.lookups.load(Ordering::SeqCst)
    }

    async fn fetch(&self, ids: Vec<Uuid>) -> Result<HashMap<Uuid, InstanceDelivery>, StoreError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::ConnectTimeout);
        }
        let rows = self.lock();
        Ok(ids
            .iter()
            .filter_map(|id| rows.get(id).map(|d| (*id, d.clone())))
            .collect())
    }
}

async fn get(
    cache: &ConfigCache,
    rows: &Rows,
    id: Uuid,
) -> Result<Option<Arc<Delivery>>, StoreError> {
    let mut found = cache.get_many_with(&[id], |m| rows.fetch(m)).await?;
    Ok(found.remove(&id).flatten())
}

fn name(d: Option<Arc<Delivery>>) -> Option<String> {
    d.map(|d| d.name.clone())
}

#[tokio::test(start_paused = true)]
async fn a_fresh_entry_is_served_from_memory_until_the_ttl_passes() {
    let id = Uuid::new_v4();
    let (cache, rows) = (ConfigCache::new(TTL), Rows::with(&[(id, "a")]));
    let first = get(&cache, &rows, id).await.unwrap().expect("found");
    assert_eq!(rows.lookups(), 1);
    tokio::time::advance(TTL - Duration::from_millis(1)).await;
    let again = get(&cache, &rows, id).await.unwrap().expect("found");
    assert!(Arc::ptr_eq(&first, &again), "served from memory");
    assert_eq!(rows.lookups(), 1);
    // The row changed without a NOTIFY: the TTL is the safety net.
    rows.put(id, "renamed");
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(
        name(get(&cache, &rows, id).await.unwrap()),
        Some("renamed".into())
    );
    assert_eq!(rows.lookups(), 2);
}

#[tokio::test(start_paused = true)]
async fn only_the_misses_are_looked_up_and_in_one_query() {
    let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let (cache, rows) = (ConfigCache::new(TTL), Rows::with(&[(a, "a"), (b, "b")]));
    get(&cache, &rows, a).await.unwrap();
    let asked = Mutex::new(Vec::new());
    let found = cache
        .get_many_with(&[a, b, c], |misses| {
            asked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(misses.iter().copied());
            rows.fetch(misses)
        })
        .await
        .unwrap();
    let mut asked = asked.into_inner().unwrap_or_else(|p| p.into_inner());
    asked.sort();
    let mut expected = vec![b, c];
    expected.sort();
    assert_eq!(asked, expected, "a was fresh");
    assert_eq!(rows.lookups(), 2);
    assert_eq!(name(found[&a].clone()), Some("a".into()));
    assert_eq!(name(found[&b].clone()), Some("b".into()));
    assert!(found[&c].is_none(), "c names no instance");
}

#[tokio::test(start_paused = true)]
async fn invalidate_drops_one_entry_and_clear_drops_all() {
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let (cache, rows) = (ConfigCache::new(TTL), Rows::with(&[(a, "a"), (b, "b")]));
    get(&cache, &rows, a).await.unwrap();
    get(&cache, &rows, b).await.unwrap();
    assert_eq!(rows.lookups(), 2);
    rows.put(a, "a2");
    cache.invalidate(a);
    assert_eq!(
        name(get(&cache, &rows, a).await.unwrap()),
        Some("a2".into())
    );
    assert_eq!(name(get(&cache, &rows, b).await.unwrap()), Some("b".into()));
    assert_eq!(rows.lookups(), 3, "b stayed cached");
    cache.clear();
    get(&cache, &rows, a).await.unwrap();
    get(&cache, &rows, b).await.unwrap();
    assert_eq!(rows.lookups(), 5);
}

#[tokio::test(start_paused = true)]
async fn an_invalidation_racing_a_lookup_keeps_its_answer_out_of_the_cache() {
    let id = Uuid::new_v4();
    let (cache, rows) = (ConfigCache::new(TTL), Rows::with(&[(id, "old")]));
    // The NOTIFY arrives while the query is in flight: its answer may predate the change.
    let found = cache
        .get_many_with(&[id], |misses| {
            cache.invalidate(id);
            rows.fetch(misses)
        })
        .await
        .unwrap();
    assert_eq!(
        name(found[&id].clone()),
        Some("old".into()),
        "still answered"
    );
    rows.put(id, "new");
    assert_eq!(
        name(get(&cache, &rows, id).await.unwrap()),
        Some("new".into())
    );
    assert_eq!(rows.lookups(), 2, "the raced answer was not stored");
}

#[tokio::test(start_paused = true)]
async fn unknown_instances_are_never_cached() {
    let id = Uuid::new_v4();
    let (cache, rows) = (ConfigCache::new(TTL), Rows::default());
    assert!(get(&cache, &rows, id).await.unwrap().is_none());
    // Created a moment later: it publishes at once.
    rows.put(id, "new");
    assert_eq!(
        name(get(&cache, &rows, id).await.unwrap()),
        Some("new".into())
    );
    assert_eq!(rows.lookups(), 2);
}

#[tokio::test(start_paused = true)]
async fn with_postgres_down_an_expired_entry_is_served_stale_and_a_missing_one_fails() {
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let (cache, rows) = (ConfigCache::new(TTL), Rows::with(&[(a, "a"), (b, "b")]));
    get(&cache, &rows, a).await.unwrap();
    tokio::time::advance(TTL * 2).await;
    rows.down.store(true, Ordering::SeqCst);
    assert_eq!(name(get(&cache, &rows, a).await.unwrap()), Some("a".into()));
    assert_eq!(rows.lookups(), 2, "the expired entry was asked for first");
    // One miss without a stale entry fails the whole lookup.
    let both = cache.get_many_with(&[a, b], |m| rows.fetch(m)).await;
    assert!(matches!(both, Err(StoreError::ConnectTimeout)), "{both:?}");
}

#[tokio::test(start_paused = true)]
async fn a_deleted_instance_is_forgotten_and_not_served_stale() {
    let id = Uuid::new_v4();
    let (cache, rows) = (ConfigCache::new(TTL), Rows::with(&[(id, "a")]));
    get(&cache, &rows, id).await.unwrap();
    tokio::time::advance(TTL).await;
    rows.lock().remove(&id);
    assert!(get(&cache, &rows, id).await.unwrap().is_none());
    rows.down.store(true, Ordering::SeqCst);
    assert!(get(&cache, &rows, id).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn a_zero_ttl_caches_nothing() {
    let id = Uuid::new_v4();
    let (cache, rows) = (ConfigCache::new(Duration::ZERO), Rows::with(&[(id, "a")]));
    get(&cache, &rows, id).await.unwrap();
    get(&cache, &rows, id).await.unwrap();
    assert_eq!(rows.lookups(), 2);
    assert!(cache.lock().is_empty());
}

#[tokio::test(start_paused = true)]
async fn expired_entries_are_swept_once_the_map_grows() {
    let (cache, rows) = (ConfigCache::new(TTL), Rows::default());
    let stale = Arc::new(Delivery::from(InstanceDelivery {
        name: "old".into(),
        token: "t".into(),
        config: None,
    }));
    {
        let mut entries = cache.lock();
        for _ in 0..SWEEP_AT {
            entries.insert(Uuid::new_v4(), (stale.clone(), Instant::now()));
        }
    }
    tokio::time::advance(TTL / 2).await;
    let fresh = Uuid::new_v4();
    cache.lock().insert(fresh, (stale.clone(), Instant::now()));
    tokio::time::advance(TTL / 2).await;
    let id = Uuid::new_v4();
    rows.put(id, "a");
    get(&cache, &rows, id).await.unwrap();
    let entries = cache.lock();
    assert_eq!(entries.len(), 2, "the expired ones went");
    assert!(entries.contains_key(&fresh) && entries.contains_key(&id));
}
