//! Positive-only auth cache for /ws (SPEC D30): reconnect storms must not hammer Postgres,
//! yet "configure, then connect" must never fail, so negative results are never stored.

use super::Token;
use ryze_core::store::{InstanceRef, Principal};
use std::collections::HashMap;
use std::sync::Mutex;
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
pub struct AuthCache {
    ttl: Duration,
    maps: Mutex<Maps>,
}

impl AuthCache {
    /// An empty cache whose entries live at most `ttl`.
    pub fn new(ttl: Duration) -> AuthCache {
        AuthCache {
            ttl,
            maps: Mutex::new(Maps::default()),
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

    #[test]
    fn zero_ttl_caches_nothing() {
        let c = AuthCache::new(Duration::ZERO);
        c.put_enabled(Uuid::nil());
        assert!(!c.is_enabled(Uuid::nil()));
    }
}
