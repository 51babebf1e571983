//! The local registry: instance → this pod's clients, and each instance's subscription
//! lifecycle (Centrifuge's hub, in our terms).
//!
//! - An instance is subscribed on the broker when its first holder joins; the 101 is sent only
//!   after that subscription is confirmed on the current Redis connection (D1 step 9). It is
//!   unsubscribed `UNSUBSCRIBE_DELAY` after its last holder leaves, so a quick reconnect costs
//!   no Redis round trip. Broker calls for one instance never overlap: an entry is not removed
//!   while its SUBSCRIBE is in flight, and joiners wait while its UNSUBSCRIBE is in flight.
//! - Fan-out takes a shard lock, hands the frame to each client's [`Outbox`] without
//!   blocking (which writes it straight to an idle socket, else queues a refcounted copy),
//!   and releases the lock; nothing awaits while holding it.
//! - A full outbox is not closed at once (D35). The instance gets a backlog and its own task,
//!   which waits up to `WS_SLOW_CONSUMER_GRACE` for room (for all full clients together) and
//!   then delivers the backlog in order. Only a client that stopped draining is closed (1008),
//!   and no other instance waits: the Redis reader never blocks on a client.

use crate::broker::Broker;
use crate::metrics::Metrics;
use crate::outbox::{Frame, Outbox};
use ryze_core::close;
use ryze_core::wire::Offset;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tungstenite::Utf8Bytes;
use uuid::Uuid;

mod catch_up;
mod drain;
mod fanout;
mod pick;
mod subscription;
#[cfg(test)]
mod testing;

const SHARDS: usize = 64;

/// How long an upgrade waits for its instance's subscription before 503 (D26).
pub const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Frames an instance may have waiting behind a stalled client before new ones are dropped
/// (counted as `instance_backlog`).
const BACKLOG_FRAMES: usize = 4096;
/// Frames of one instance closer together than this are queued for the sessions' writers,
/// which send whatever waits in one write, rather than written one by one by the fan-out
/// (docs/benchmarks.md: direct writes halved the sparse p99 but doubled it at 200 events/s).
const DIRECT_SPACING: Duration = Duration::from_millis(20);
/// Instances with more local clients than this are always queued: one thread writing every
/// socket in turn delays the last ones (and the next frame) more than the writers' wake-ups
/// cost (10,000 clients at 10 events/s: p99 2.7 s direct, 0.6 s queued).
const DIRECT_WIDTH: usize = 2048;
/// Larger frames are always queued: copying a 200 KB media frame into every socket in turn
/// keeps the Redis reader busy for the whole event, where the writers share the copying
/// across threads (500 clients at 20 events/s of 200 KB: p99 278 ms direct, 233 ms queued).
const DIRECT_MAX_BYTES: usize = 16 * 1024;

/// A cheap-to-clone handle on the registry.
#[derive(Clone)]
pub struct Hub(Arc<Inner>);

struct Inner {
    shards: Box<[Mutex<HashMap<Uuid, Entry>>]>,
    broker: Broker,
    metrics: Metrics,
    tasks: TaskTracker,
    /// Cancelled at shutdown: pending unsubscribes are abandoned (the process is leaving and
    /// Redis drops its subscriptions with the connection; an UNSUBSCRIBE would only add load).
    shutdown: CancellationToken,
    /// Set when the drain starts: no new client may join (it would miss its 1001).
    draining: CancellationToken,
    unsubscribe_delay: Duration,
    slow_grace: Duration,
    next_conn: AtomicU64,
}

/// A connected client of an instance on this pod.
#[derive(Clone)]
struct Client {
    conn: u64,
    outbox: Arc<Outbox>,
    /// When it attached: rebalancing never closes a connection younger than
    /// `REBALANCE_MIN_AGE` (D39). Read only by rebalancing, never per frame.
    opened: Instant,
}

enum Sub {
    Idle,
    /// SUBSCRIBE in flight; the watch flips when it resolves.
    Pending(watch::Receiver<bool>),
    Active,
    /// UNSUBSCRIBE in flight; the watch flips when it resolves.
    Unsubscribing(watch::Receiver<bool>),
}

struct Entry {
    /// Memberships: upgrades waiting for their 101 plus connected clients.
    holders: usize,
    clients: Vec<Client>,
    /// Connection ids among `clients` that resume (`since`): while any, each frame also gets
    /// its offset-carrying text, made once here rather than once per connection.
    resumable: Vec<u64>,
    sub: Sub,
    /// Bumped each time `holders` leaves 0, so a stale delayed unsubscribe does nothing.
    generation: u64,
    /// Frames waiting behind a stalled client, in order; `Some` while the instance's delivery
    /// task runs.
    backlog: Option<mpsc::Sender<Frame>>,
    /// The offset of the last frame delivered, or where history stood when the subscription
    /// was confirmed (history on): where a catch-up starts.
    last_offset: Option<Offset>,
    /// Live frames held while a catch-up from history runs (see `catch_up`).
    held: Option<Vec<Frame>>,
    /// After a catch-up: the last offset it delivered from history. Live copies of those
    /// frames may still be on their way from the subscriber connection (history is read on
    /// the other connection, whose reply can overtake them); they are dropped, not sent twice.
    caught_up_through: Option<Offset>,
    /// When the last live frame was dispatched (or its inline writes ended): frames closer
    /// together than [`DIRECT_SPACING`] are left to the writers, which coalesce them.
    last_dispatch: Option<Instant>,
}

impl Entry {
    fn new() -> Entry {
        Entry {
            holders: 0,
            clients: Vec::new(),
            resumable: Vec::new(),
            sub: Sub::Idle,
            generation: 0,
            backlog: None,
            last_offset: None,
            held: None,
            caught_up_through: None,
            last_dispatch: None,
        }
    }

    /// Whether a live frame of `len` bytes dispatched now should be written straight to idle
    /// sockets by the fan-out (see `fanout`): only while frames of this instance come apart
    /// (each would go out alone anyway), the instance is narrow enough and the frame small
    /// enough for one thread to write it everywhere without holding up the next frame.
    /// Records the dispatch.
    fn direct_now(&mut self, now: Instant, len: usize) -> bool {
        let apart = self
            .last_dispatch
            .is_none_or(|last| now.saturating_duration_since(last) >= DIRECT_SPACING);
        self.last_dispatch = Some(now);
        apart && self.clients.len() <= DIRECT_WIDTH && len <= DIRECT_MAX_BYTES
    }

    /// The fan-out finished writing a frame itself at `now`: spacing counts from here, so a
    /// frame that waited while those writes ran is queued, and an instance whose inline
    /// writes take longer than its frames' spacing cannot keep the Redis reader writing.
    fn wrote_inline(&mut self, now: Instant) {
        self.last_dispatch = Some(now);
    }

    /// A frame for this instance's clients: with its offset-carrying text, made once here,
    /// while any client resumes.
    fn frame(&self, text: Utf8Bytes, published_micros: u64, offset: Option<Offset>) -> Frame {
        let with_offset = match offset {
            Some(offset) if !self.resumable.is_empty() => Some(Utf8Bytes::from(
                ryze_core::envelope::with_offset(text.as_str(), offset),
            )),
            _ => None,
        };
        Frame {
            text,
            published_micros,
            offset,
            with_offset,
        }
    }
}

/// Why joining an instance failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The subscription was not confirmed within [`SUBSCRIBE_TIMEOUT`], or the pod is draining.
    #[error("subscription to the instance channel not confirmed")]
    Unavailable,
}

/// Settings of the hub.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// `UNSUBSCRIBE_DELAY`.
    pub unsubscribe_delay: Duration,
    /// `WS_SLOW_CONSUMER_GRACE`.
    pub slow_grace: Duration,
    /// Cancelled when shutdown starts (the app's draining token): joins are refused from then.
    pub draining: CancellationToken,
}

impl Hub {
    /// An empty hub on `broker`.
    pub fn new(
        broker: Broker,
        metrics: Metrics,
        tasks: TaskTracker,
        shutdown: CancellationToken,
        options: HubOptions,
    ) -> Hub {
        let shards = (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect();
        Hub(Arc::new(Inner {
            shards,
            broker,
            metrics,
            tasks,
            shutdown,
            draining: options.draining,
            unsubscribe_delay: options.unsubscribe_delay,
            slow_grace: options.slow_grace,
            next_conn: AtomicU64::new(1),
        }))
    }

    /// The broker this hub subscribes through.
    pub fn broker(&self) -> &Broker {
        &self.0.broker
    }

    fn shard(&self, id: Uuid) -> MutexGuard<'_, HashMap<Uuid, Entry>> {
        let idx = (id.as_u128() as usize) % SHARDS;
        self.0.shards[idx].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes every client of the instance on this pod with `code` (its instance was deleted).
    pub fn close_instance(&self, id: Uuid, code: close::CloseCode) {
        let shard = self.shard(id);
        if let Some(e) = shard.get(&id) {
            for client in &e.clients {
                client.outbox.close(code);
            }
        }
    }

    /// Whether this pod holds a client (or an upgrade in progress) of the instance.
    pub fn has_holders(&self, id: Uuid) -> bool {
        self.shard(id).get(&id).is_some_and(|e| e.holders > 0)
    }

    /// Connected clients per instance (for the capped per-instance metric).
    pub fn client_counts(&self) -> Vec<(Uuid, usize)> {
        let mut out = Vec::new();
        for shard in self.0.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            out.extend(
                shard
                    .iter()
                    .filter(|(_, e)| !e.clients.is_empty())
                    .map(|(id, e)| (*id, e.clients.len())),
            );
        }
        out
    }
}

/// A hold on an instance: keeps it subscribed while alive.
pub struct Membership {
    hub: Hub,
    id: Uuid,
    conn: Option<u64>,
}

impl Membership {
    /// Registers the client's outbox: from now on it receives the instance's frames. While the
    /// instance has a backlog, the new client joins at the backlog's next frame.
    pub fn attach(&mut self, outbox: Arc<Outbox>) -> u64 {
        self.attach_as(outbox, false)
    }

    /// Like [`Membership::attach`], for a resumable (`since`) client: from now on the
    /// instance's frames also carry their offset-carrying text.
    pub fn attach_resumable(&mut self, outbox: Arc<Outbox>) -> u64 {
        self.attach_as(outbox, true)
    }

    fn attach_as(&mut self, outbox: Arc<Outbox>, resumable: bool) -> u64 {
        let conn = self.hub.0.next_conn.fetch_add(1, Ordering::Relaxed);
        let mut shard = self.hub.shard(self.id);
        if let Some(e) = shard.get_mut(&self.id) {
            e.clients.push(Client {
                conn,
                outbox,
                opened: Instant::now(),
            });
            if resumable {
                e.resumable.push(conn);
            }
        }
        self.conn = Some(conn);
        conn
    }

    /// The instance held.
    pub fn instance_id(&self) -> Uuid {
        self.id
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.hub.leave(self.id, self.conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry_with(clients: usize) -> Entry {
        let mut e = Entry::new();
        e.clients = (0..clients as u64)
            .map(|conn| Client {
                conn,
                outbox: Arc::new(Outbox::new(8, 1 << 16)),
                opened: Instant::now(),
            })
            .collect();
        e
    }

    #[tokio::test(start_paused = true)]
    async fn frames_go_straight_to_sockets_only_when_apart_small_and_the_instance_is_narrow() {
        const SMALL: usize = 444;
        let mut sparse = entry_with(10);
        assert!(sparse.direct_now(Instant::now(), SMALL), "first frame");
        tokio::time::advance(DIRECT_SPACING).await;
        assert!(sparse.direct_now(Instant::now(), SMALL), "apart");
        tokio::time::advance(DIRECT_SPACING / 4).await;
        assert!(!sparse.direct_now(Instant::now(), SMALL), "close together");
        // Spacing counts from the last frame, direct or not.
        tokio::time::advance(DIRECT_SPACING * 3 / 4).await;
        assert!(
            !sparse.direct_now(Instant::now(), SMALL),
            "close to the last one"
        );
        tokio::time::advance(DIRECT_SPACING).await;
        assert!(sparse.direct_now(Instant::now(), SMALL), "apart again");
        tokio::time::advance(DIRECT_SPACING).await;
        assert!(
            !sparse.direct_now(Instant::now(), DIRECT_MAX_BYTES + 1),
            "too large"
        );
        tokio::time::advance(DIRECT_SPACING).await;
        assert!(
            sparse.direct_now(Instant::now(), DIRECT_MAX_BYTES),
            "small enough"
        );

        // Inline writes that took longer than the spacing: the next frame waited, queue it.
        tokio::time::advance(DIRECT_SPACING).await;
        assert!(sparse.direct_now(Instant::now(), SMALL), "apart once more");
        tokio::time::advance(DIRECT_SPACING * 2).await;
        sparse.wrote_inline(Instant::now());
        assert!(
            !sparse.direct_now(Instant::now(), SMALL),
            "waited behind the last frame's writes"
        );

        let mut wide = entry_with(DIRECT_WIDTH + 1);
        assert!(!wide.direct_now(Instant::now(), SMALL), "too wide");
        wide.clients.truncate(DIRECT_WIDTH);
        tokio::time::advance(DIRECT_SPACING).await;
        assert!(wide.direct_now(Instant::now(), SMALL), "narrow enough");
    }
}
