//! Positive-only auth cache for /ws (SPEC D30): reconnect storms must not hammer Postgres,
//! yet "configure, then connect" must never fail, so negative results are never stored.

use super::Token;
use ryze_core::store::{InstanceRef, Principal};
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

#[derive(Default)]
struct Maps {
    principals: HashMap<[u8; 32], (Principal, Instant)>,
    instances: HashMap<(Uuid, String), (InstanceRef, Instant)>,
    enabled: HashMap<Uuid, Instant>,
}

/// Token → principal, (account, name) → instance, instance → "enabled", each for at most
/// `ttl`, and dropped at once when the control channel reports a change to the instance.
/// Concurrent misses of one key share one database query ([`SingleFlight`]), so a reconnect
/// storm onto a cold pod costs one query per distinct token, not one per connection.
pub struct AuthCache {
    ttl: Duration,
    maps: Mutex<Maps>,
    /// In-flight token lookups, by token hash.
    pub tokens: SingleFlight<[u8; 32], Option<Principal>>,
    /// In-flight instance lookups, by (account, name).
    pub instances: SingleFlight<(Uuid, String), Option<InstanceRef>>,
    /// In-flight "is it enabled" lookups, by instance id.
    pub configs: SingleFlight<Uuid, bool>,
}

/// Coalesces concurrent lookups of one key: the first caller queries, the others await its
/// answer. Only answers are shared (found or not found); if the query fails, each waiter
/// queries on its own, so an error is never fanned out or cached.
pub struct SingleFlight<K, V> {
    inflight: Mutex<HashMap<K, Arc<tokio::sync::OnceCell<Option<V>>>>>,
}

impl<K: Hash + Eq + Clone, V: Clone> Default for SingleFlight<K, V> {
    fn default() -> Self {
        SingleFlight {
            inflight: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> SingleFlight<K, V> {
    /// Runs `query` unless a lookup of `key` is already in flight, in which case its answer
    /// is shared. `query` may run again for a waiter whose leader failed.
    pub async fn run<E, Fut>(&self, key: K, query: impl Fn() -> Fut) -> Result<V, E>
    where
        Fut: Future<Output = Result<V, E>>,
    {
        let cell = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            inflight.entry(key.clone()).or_default().clone()
        };
        let mut own_error = None;
        let shared = cell
            .get_or_init(|| async {
                match query().await {
                    Ok(v) => Some(v),
                    Err(e) => {
                        own_error = Some(e);
                        None
                    }
                }
            })
            .await
            .clone();
        {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            if inflight.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                inflight.remove(&key);
            }
        }
        match (shared, own_error) {
            (Some(v), _) => Ok(v),
            (None, Some(e)) => Err(e),
            // The leader failed: ask for ourselves rather than share its error.
            (None, None) => query().await,
        }
    }
}

impl AuthCache {
    /// An empty cache whose entries live at most `ttl`.
    pub fn new(ttl: Duration) -> AuthCache {
        AuthCache {
            ttl,
            maps: Mutex::new(Maps::default()),
            tokens: SingleFlight::default(),
            instances: SingleFlight::default(),
            configs: SingleFlight::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fresh(&self, at: Instant) -> bool {
        at.elapsed() < self.ttl
    }

    /// A cached principal for this token.
    pub fn principal(&self, token: &Token) -> Option<Principal> {
        let key = ryze_core::token::hash(token.expose());
        let maps = self.lock();
        maps.principals
            .get(&key)
            .filter(|(_, at)| self.fresh(*at))
            .map(|(p, _)| p.clone())
    }

    /// Remembers a resolved token.
    pub fn put_principal(&self, token: &Token, principal: Principal) {
        if self.ttl.is_zero() {
            return;
        }
        let key = ryze_core::token::hash(token.expose());
        let mut maps = self.lock();
        maps.principals.insert(key, (principal, Instant::now()));
    }

    /// A cached instance of an account by name.
    pub fn instance(&self, account_id: Uuid, name: &str) -> Option<InstanceRef> {
        let maps = self.lock();
        maps.instances
            .get(&(account_id, name.to_owned()))
            .filter(|(_, at)| self.fresh(*at))
            .map(|(i, _)| i.clone())
    }

    /// Remembers an instance found by name.
    pub fn put_instance(&self, instance: InstanceRef) {
        if self.ttl.is_zero() {
            return;
        }
        let mut maps = self.lock();
        maps.instances.insert(
            (instance.account_id, instance.name.clone()),
            (instance, Instant::now()),
        );
    }

    /// Whether the instance was recently seen enabled.
    pub fn is_enabled(&self, instance_id: Uuid) -> bool {
        self.lock()
            .enabled
            .get(&instance_id)
            .is_some_and(|at| self.fresh(*at))
    }

    /// Remembers that the instance's config is enabled (a disabled one is never cached).
    pub fn put_enabled(&self, instance_id: Uuid) {
        if !self.ttl.is_zero() {
            self.lock().enabled.insert(instance_id, Instant::now());
        }
    }

    /// Drops everything known about an instance (control channel: changed or deleted).
    pub fn invalidate(&self, instance_id: Uuid) {
        let mut maps = self.lock();
        maps.enabled.remove(&instance_id);
        maps.instances.retain(|_, (i, _)| i.id != instance_id);
        maps.principals
            .retain(|_, (p, _)| !matches!(p, Principal::Instance(i) if i.id == instance_id));
    }

    /// Drops everything (the control channel was down: changes may have been missed).
    pub fn clear(&self) {
        *self.lock() = Maps::default();
    }

    /// Removes expired entries; called periodically so the maps stay bounded.
    pub fn sweep(&self) {
        let mut maps = self.lock();
        let ttl = self.ttl;
        maps.principals.retain(|_, (_, at)| at.elapsed() < ttl);
        maps.instances.retain(|_, (_, at)| at.elapsed() < ttl);
        maps.enabled.retain(|_, at| at.elapsed() < ttl);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalidation_drops_every_entry_of_the_instance() {
        let c = AuthCache::new(Duration::from_secs(60));
        let inst = InstanceRef {
            id: Uuid::new_v4(),
            account_id: Uuid::new_v4(),
            name: "a".into(),
        };
        let t = Token("t".into());
        c.put_principal(&t, Principal::Instance(inst.clone()));
        c.put_instance(inst.clone());
        c.put_enabled(inst.id);
        assert!(c.principal(&t).is_some() && c.is_enabled(inst.id));
        c.invalidate(inst.id);
        assert!(c.principal(&t).is_none());
        assert!(c.instance(inst.account_id, "a").is_none());
        assert!(!c.is_enabled(inst.id));
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_query_and_errors_are_not_shared() {
        let flight: SingleFlight<u8, u32> = SingleFlight::default();
        let calls = std::sync::atomic::AtomicU32::new(0);
        let gate = tokio::sync::Notify::new();
        let query = || async {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            gate.notified().await;
            Ok::<u32, ()>(7)
        };
        let both = futures_util::future::join(flight.run(1, query), async {
            tokio::task::yield_now().await;
            let second = flight.run(1, query);
            gate.notify_waiters();
            second.await
        });
        let (a, b) = tokio::time::timeout(Duration::from_secs(5), both)
            .await
            .unwrap();
        assert_eq!((a, b), (Ok(7), Ok(7)));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        let failing: SingleFlight<u8, u32> = SingleFlight::default();
        assert_eq!(
            failing.run(1, || async { Err::<u32, &str>("down") }).await,
            Err("down")
        );
    }

    #[test]
    fn zero_ttl_caches_nothing() {
        let c = AuthCache::new(Duration::ZERO);
        c.put_enabled(Uuid::nil());
        assert!(!c.is_enabled(Uuid::nil()));
    }
}
