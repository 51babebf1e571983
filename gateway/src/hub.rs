//! The local registry: instance → this pod's clients, and each instance's subscription
//! lifecycle (Centrifuge's hub, in our terms).
//!
//! - An instance is subscribed on the broker when its first holder joins; the 101 is sent only
//!   after that subscription is confirmed (D1 step 9). It is unsubscribed `UNSUBSCRIBE_DELAY`
//!   after its last holder leaves, so a quick reconnect costs no Redis round trip.
//! - Fan-out takes a shard lock, pushes a refcounted frame into each client's [`Outbox`]
//!   without blocking, and releases the lock before any await (no lock across `.await`).
//! - A full outbox is not closed at once (D35): the dispatcher waits up to
//!   `WS_SLOW_CONSUMER_GRACE` for room, for all full clients of the frame concurrently, so a
//!   reader that keeps up survives a burst and only a client that stopped draining is closed.

use crate::auth::AuthCache;
use crate::broker::Broker;
use crate::metrics::Metrics;
use crate::outbox::{Frame, Outbox, Push};
use axum::extract::ws::Utf8Bytes;
use ryze_core::channel::{ControlMessage, ControlOp};
use ryze_core::close;
use ryze_core::wire::WireFrame;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

const SHARDS: usize = 64;

/// How long an upgrade waits for its instance's subscription before 503 (D26).
pub const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A cheap-to-clone handle on the registry.
#[derive(Clone)]
pub struct Hub(Arc<Inner>);

struct Inner {
    shards: Box<[Mutex<HashMap<Uuid, Entry>>]>,
    broker: Broker,
    cache: Arc<AuthCache>,
    metrics: Metrics,
    tasks: TaskTracker,
    /// Cancelled at shutdown: pending unsubscribes are abandoned (the process is leaving and
    /// Redis drops its subscriptions with the connection; an UNSUBSCRIBE would only add load).
    shutdown: CancellationToken,
    unsubscribe_delay: Duration,
    slow_grace: Duration,
    next_conn: AtomicU64,
}

#[derive(Default)]
enum Sub {
    #[default]
    Idle,
    Pending(watch::Receiver<Option<bool>>),
    Active,
}

#[derive(Default)]
struct Entry {
    /// Memberships: upgrades waiting for their 101 plus connected clients.
    holders: usize,
    clients: Vec<(u64, Arc<Outbox>)>,
    sub: Sub,
    /// Bumped each time `holders` leaves 0, so a stale delayed unsubscribe does nothing.
    generation: u64,
}

/// Why joining an instance failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The subscription was not confirmed within [`SUBSCRIBE_TIMEOUT`].
    #[error("subscription to the instance channel not confirmed")]
    Unavailable,
}

/// Frames that did not fit: the caller awaits [`Hub::settle`] before the next frame.
#[must_use]
pub struct Stalled {
    frame: Frame,
    outboxes: Vec<Arc<Outbox>>,
}

/// Settings of the hub.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// `UNSUBSCRIBE_DELAY`.
    pub unsubscribe_delay: Duration,
    /// `WS_SLOW_CONSUMER_GRACE`.
    pub slow_grace: Duration,
}

impl Hub {
    /// An empty hub on `broker`.
    pub fn new(
        broker: Broker,
        cache: Arc<AuthCache>,
        metrics: Metrics,
        tasks: TaskTracker,
        shutdown: CancellationToken,
        options: HubOptions,
    ) -> Hub {
        let shards = (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect();
        Hub(Arc::new(Inner {
            shards,
            broker,
            cache,
            metrics,
            tasks,
            shutdown,
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

    /// Holds the instance and waits until its channel subscription is confirmed. Dropping the
    /// membership (or the client attached to it) releases the hold.
    pub async fn join(&self, id: Uuid) -> Result<Membership, JoinError> {
        let (wait, start) = {
            let mut shard = self.shard(id);
            let e = shard.entry(id).or_default();
            if e.holders == 0 {
                e.generation += 1;
            }
            e.holders += 1;
            match &e.sub {
                Sub::Active => (None, None),
                Sub::Pending(rx) => (Some(rx.clone()), None),
                Sub::Idle => {
                    let (tx, rx) = watch::channel(None);
                    e.sub = Sub::Pending(rx.clone());
                    (Some(rx), Some(tx))
                }
            }
        };
        let membership = Membership {
            hub: self.clone(),
            id,
            conn: None,
        };
        if let Some(tx) = start {
            let hub = self.clone();
            self.0
                .tasks
                .spawn(async move { hub.subscribe(id, tx).await });
        }
        if let Some(mut rx) = wait {
            let confirmed = tokio::time::timeout(SUBSCRIBE_TIMEOUT, rx.wait_for(Option::is_some))
                .await
                .ok()
                .and_then(|r| r.ok().map(|v| *v == Some(true)))
                .unwrap_or(false);
            if !confirmed {
                return Err(JoinError::Unavailable);
            }
        }
        Ok(membership)
    }

    async fn subscribe(&self, id: Uuid, done: watch::Sender<Option<bool>>) {
        let ok = match self.0.broker.subscribe(id).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(instance.id = %id, error = %e, "instance subscription failed");
                false
            }
        };
        let orphaned = {
            let mut shard = self.shard(id);
            match shard.get_mut(&id) {
                Some(e) => {
                    e.sub = if ok { Sub::Active } else { Sub::Idle };
                    false
                }
                None => ok,
            }
        };
        if orphaned {
            // Everyone left while we were subscribing: do not leave a ghost subscription.
            self.0.broker.unsubscribe(id).await;
        }
        let _ = done.send(Some(ok));
    }

    fn leave(&self, id: Uuid, conn: Option<u64>) {
        let generation = {
            let mut shard = self.shard(id);
            let Some(e) = shard.get_mut(&id) else { return };
            if let Some(conn) = conn {
                if let Some(pos) = e.clients.iter().position(|(c, _)| *c == conn) {
                    e.clients.swap_remove(pos);
                }
                if e.clients.is_empty() {
                    e.clients = Vec::new();
                }
            }
            e.holders = e.holders.saturating_sub(1);
            if e.holders > 0 {
                return;
            }
            e.generation
        };
        let hub = self.clone();
        self.0.tasks.spawn(async move {
            tokio::select! {
                _ = hub.0.shutdown.cancelled() => {}
                _ = tokio::time::sleep(hub.0.unsubscribe_delay) => hub.expire(id, generation).await,
            }
        });
    }

    async fn expire(&self, id: Uuid, generation: u64) {
        let unsubscribe = {
            let mut shard = self.shard(id);
            match shard.get(&id) {
                Some(e) if e.holders == 0 && e.generation == generation => {
                    let subscribed = !matches!(e.sub, Sub::Idle);
                    shard.remove(&id);
                    subscribed
                }
                _ => false,
            }
        };
        if unsubscribe {
            self.0.broker.unsubscribe(id).await;
        }
    }

    /// Pushes a frame to every local client of the instance without blocking. Returns the
    /// clients whose outbox was full; the caller must [`Hub::settle`] them before the next frame.
    pub fn dispatch(&self, id: Uuid, wire: WireFrame) -> Option<Stalled> {
        let Ok(text) = Utf8Bytes::try_from(wire.frame) else {
            self.0.metrics.frame_dropped("invalid");
            return None;
        };
        let frame = Frame {
            text,
            published_micros: wire.published_micros,
        };
        let mut stalled = Vec::new();
        {
            let shard = self.shard(id);
            let Some(e) = shard.get(&id) else {
                self.0.metrics.frame_dropped("no_clients");
                return None;
            };
            for (_, outbox) in &e.clients {
                if outbox.push(frame.clone()) == Push::Full {
                    stalled.push(outbox.clone());
                }
            }
        }
        (!stalled.is_empty()).then_some(Stalled {
            frame,
            outboxes: stalled,
        })
    }

    /// Waits (all together, at most `WS_SLOW_CONSUMER_GRACE`) for full outboxes to make room
    /// for the frame; those that do not are closed as slow consumers (D7, D13, D35).
    pub async fn settle(&self, stalled: Stalled) {
        let Stalled { frame, outboxes } = stalled;
        let len = frame.text.len();
        let grace = self.0.slow_grace;
        let waits = outboxes.iter().map(|outbox| {
            let frame = frame.clone();
            async move {
                if tokio::time::timeout(grace, outbox.room_for(len))
                    .await
                    .is_ok()
                {
                    match outbox.push(frame) {
                        Push::Queued | Push::Closed => return,
                        Push::Full => {}
                    }
                }
                outbox.close(close::SLOW_CONSUMER);
            }
        });
        futures_util::future::join_all(waits).await;
    }

    /// Dispatches and settles: the whole delivery of one frame.
    pub async fn deliver(&self, id: Uuid, wire: WireFrame) {
        if let Some(stalled) = self.dispatch(id, wire) {
            self.settle(stalled).await;
        }
    }

    /// Applies a control-channel message.
    pub fn control(&self, msg: &ControlMessage) {
        self.0.cache.invalidate(msg.instance_id);
        if msg.op == ControlOp::InstanceDeleted {
            let shard = self.shard(msg.instance_id);
            if let Some(e) = shard.get(&msg.instance_id) {
                for (_, outbox) in &e.clients {
                    outbox.close(close::INSTANCE_DELETED);
                }
            }
        }
    }

    /// Drops every cached auth entry (control messages may have been missed).
    pub fn clear_cache(&self) {
        self.0.cache.clear();
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

    /// Closes every client with 1001 at `rate` per second (paced so reconnects spread over
    /// the surviving pods). Returns once every close has been requested.
    pub async fn drain(&self, rate: u32) {
        let mut outboxes = Vec::new();
        for shard in self.0.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            outboxes.extend(
                shard
                    .values()
                    .flat_map(|e| e.clients.iter().map(|(_, o)| o.clone())),
            );
        }
        // Close in 10 ms steps; a step closes rate/100 clients (at least one).
        let per_step = (rate as usize).div_ceil(100).max(1);
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        for chunk in outboxes.chunks(per_step) {
            tick.tick().await;
            for outbox in chunk {
                outbox.close(close::SHUTDOWN);
            }
        }
    }
}

/// A hold on an instance: keeps it subscribed while alive.
pub struct Membership {
    hub: Hub,
    id: Uuid,
    conn: Option<u64>,
}

impl Membership {
    /// Registers the client's outbox: from now on it receives the instance's frames.
    pub fn attach(&mut self, outbox: Arc<Outbox>) -> u64 {
        let conn = self.hub.0.next_conn.fetch_add(1, Ordering::Relaxed);
        let mut shard = self.hub.shard(self.id);
        if let Some(e) = shard.get_mut(&self.id) {
            e.clients.push((conn, outbox));
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
