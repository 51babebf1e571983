//! Which clients rebalancing closes (D39): open ones, old enough, spread across instances.

use super::Hub;
use crate::outbox::Outbox;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

impl Hub {
    /// Open clients on this pod (those whose close was not requested yet): the count this pod
    /// shares with the fleet for rebalancing (D39).
    pub fn open_clients(&self) -> usize {
        let mut n = 0;
        for shard in self.0.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            n += shard
                .values()
                .flat_map(|e| e.clients.iter())
                .filter(|c| c.outbox.close_requested().is_none())
                .count();
        }
        n
    }

    /// Up to `n` open clients attached at least `min_age` ago, spread across instances:
    /// round-robin over the instances (largest first), oldest first within each (D39).
    pub fn rebalance_candidates(&self, n: usize, min_age: Duration) -> Vec<Arc<Outbox>> {
        if n == 0 {
            return Vec::new();
        }
        let now = Instant::now();
        let mut per_instance: Vec<Vec<(Instant, Arc<Outbox>)>> = Vec::new();
        for shard in self.0.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for e in shard.values() {
                let eligible: Vec<_> = e
                    .clients
                    .iter()
                    .filter(|c| {
                        c.outbox.close_requested().is_none()
                            && now.saturating_duration_since(c.opened) >= min_age
                    })
                    .map(|c| (c.opened, c.outbox.clone()))
                    .collect();
                if !eligible.is_empty() {
                    per_instance.push(eligible);
                }
            }
        }
        for list in &mut per_instance {
            list.sort_by_key(|(opened, _)| *opened);
        }
        per_instance.sort_by_key(|list| std::cmp::Reverse(list.len()));
        round_robin(per_instance, n)
    }
}

/// Takes up to `n` items: the first of each list in turn, then the second of each, and so on.
fn round_robin<T>(lists: Vec<Vec<(Instant, T)>>, n: usize) -> Vec<T> {
    let mut iters: Vec<_> = lists.into_iter().map(Vec::into_iter).collect();
    let mut out = Vec::with_capacity(n);
    while out.len() < n && !iters.is_empty() {
        iters.retain_mut(|it| match it.next() {
            Some((_, item)) if out.len() < n => {
                out.push(item);
                true
            }
            Some(_) => false,
            None => false,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::round_robin;
    use tokio::time::Instant;

    #[test]
    fn round_robin_spreads_across_lists_in_order() {
        let t = Instant::now();
        let lists = vec![
            vec![(t, "a1"), (t, "a2"), (t, "a3")],
            vec![(t, "b1")],
            vec![(t, "c1"), (t, "c2")],
        ];
        assert_eq!(round_robin(lists.clone(), 4), ["a1", "b1", "c1", "a2"]);
        assert_eq!(
            round_robin(lists.clone(), 10),
            ["a1", "b1", "c1", "a2", "c2", "a3"]
        );
        assert!(round_robin(lists, 0).is_empty());
    }
}
