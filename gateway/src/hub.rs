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

use crate::auth::AuthCache;
use crate::broker::Broker;
use crate::metrics::Metrics;
use crate::outbox::{Frame, Outbox, Push};
use ryze_core::channel::{ControlMessage, ControlOp};
use ryze_core::close;
use ryze_core::wire::{Offset, WireFrame};
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
mod pick;

const SHARDS: usize = 64;

/// How long an upgrade waits for its instance's subscription before 503 (D26).
pub const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Frames an instance may have waiting behind a stalled client before new ones are dropped
/// (counted as `instance_backlog`).
const BACKLOG_FRAMES: usize = 4096;

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
    /// The offset of the last frame delivered (history on): where a catch-up starts.
    last_offset: Option<Offset>,
    /// Live frames held while a catch-up from history runs (see `catch_up`).
    held: Option<Vec<Frame>>,
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
        }
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

enum Step {
    Ready,
    Wait(watch::Receiver<bool>),
    Start(watch::Sender<bool>, watch::Receiver<bool>),
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

    /// Holds the instance and waits until its channel subscription is confirmed on the current
    /// broker connection. Dropping the membership (or the client attached to it) releases it.
    pub async fn join(&self, id: Uuid) -> Result<Membership, JoinError> {
        if self.0.draining.is_cancelled() {
            return Err(JoinError::Unavailable);
        }
        {
            let mut shard = self.shard(id);
            let e = shard.entry(id).or_insert_with(Entry::new);
            if e.holders == 0 {
                e.generation += 1;
            }
            e.holders += 1;
        }
        let membership = Membership {
            hub: self.clone(),
            id,
            conn: None,
        };
        let deadline = Instant::now() + SUBSCRIBE_TIMEOUT;
        loop {
            let step = {
                let mut shard = self.shard(id);
                let Some(e) = shard.get_mut(&id) else {
                    return Err(JoinError::Unavailable);
                };
                match &e.sub {
                    Sub::Active => Step::Ready,
                    Sub::Pending(rx) | Sub::Unsubscribing(rx) => Step::Wait(rx.clone()),
                    Sub::Idle => {
                        let (tx, rx) = watch::channel(false);
                        e.sub = Sub::Pending(rx.clone());
                        Step::Start(tx, rx)
                    }
                }
            };
            match step {
                Step::Ready => {
                    // Active in the hub; after a Redis reconnect it may not be confirmed yet.
                    return if self.0.broker.wait_confirmed(id, deadline).await {
                        Ok(membership)
                    } else {
                        Err(JoinError::Unavailable)
                    };
                }
                Step::Start(tx, mut rx) => {
                    let hub = self.clone();
                    self.0
                        .tasks
                        .spawn(async move { hub.subscribe(id, tx).await });
                    if tokio::time::timeout_at(deadline, rx.wait_for(|done| *done))
                        .await
                        .is_err()
                    {
                        return Err(JoinError::Unavailable);
                    }
                }
                Step::Wait(mut rx) => {
                    if tokio::time::timeout_at(deadline, rx.wait_for(|done| *done))
                        .await
                        .is_err()
                    {
                        return Err(JoinError::Unavailable);
                    }
                }
            }
            // Look again: the subscription resolved (either way), or an unsubscribe finished.
            let failed = {
                let shard = self.shard(id);
                shard.get(&id).is_none_or(|e| matches!(e.sub, Sub::Idle))
            };
            if failed {
                return Err(JoinError::Unavailable);
            }
        }
    }

    async fn subscribe(&self, id: Uuid, done: watch::Sender<bool>) {
        let ok = match self.0.broker.subscribe(id).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(instance.id = %id, error = %e, "instance subscription failed");
                false
            }
        };
        {
            let mut shard = self.shard(id);
            // The entry cannot be removed while Pending (see `expire`).
            if let Some(e) = shard.get_mut(&id) {
                e.sub = if ok { Sub::Active } else { Sub::Idle };
            }
        }
        let _ = done.send(true);
    }

    fn leave(&self, id: Uuid, conn: Option<u64>) {
        let generation = {
            let mut shard = self.shard(id);
            let Some(e) = shard.get_mut(&id) else { return };
            if let Some(conn) = conn {
                if let Some(pos) = e.clients.iter().position(|c| c.conn == conn) {
                    e.clients.swap_remove(pos);
                }
                if let Some(pos) = e.resumable.iter().position(|c| *c == conn) {
                    e.resumable.swap_remove(pos);
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
        self.schedule_expire(id, generation);
    }

    fn schedule_expire(&self, id: Uuid, generation: u64) {
        let hub = self.clone();
        self.0.tasks.spawn(async move {
            tokio::select! {
                _ = hub.0.shutdown.cancelled() => {}
                _ = tokio::time::sleep(hub.0.unsubscribe_delay) => hub.expire(id, generation).await,
            }
        });
    }

    async fn expire(&self, id: Uuid, generation: u64) {
        let done = {
            let mut shard = self.shard(id);
            let Some(e) = shard.get_mut(&id) else { return };
            if e.holders > 0 || e.generation != generation {
                return;
            }
            match e.sub {
                Sub::Idle => {
                    shard.remove(&id);
                    return;
                }
                // Never overlap broker calls for one instance: look again later.
                Sub::Pending(_) | Sub::Unsubscribing(_) => None,
                Sub::Active => {
                    let (tx, rx) = watch::channel(false);
                    e.sub = Sub::Unsubscribing(rx);
                    Some(tx)
                }
            }
        };
        let Some(done) = done else {
            self.schedule_expire(id, generation);
            return;
        };
        self.0.broker.unsubscribe(id).await;
        let resubscribe = {
            let mut shard = self.shard(id);
            match shard.get_mut(&id) {
                Some(e) if e.holders == 0 => {
                    shard.remove(&id);
                    None
                }
                Some(e) => {
                    // Someone joined while we unsubscribed: subscribe again for them.
                    let (tx, rx) = watch::channel(false);
                    e.sub = Sub::Pending(rx);
                    Some(tx)
                }
                None => None,
            }
        };
        let _ = done.send(true);
        if let Some(tx) = resubscribe {
            self.subscribe(id, tx).await;
        }
    }

    /// Delivers one frame to every local client of the instance without ever blocking the
    /// caller: a client with a full queue moves the instance's delivery to its own task.
    /// `behind`: more frames are already waiting, so they are queued for the connections'
    /// writers (which send them several per write) instead of written one by one here.
    pub fn dispatch(&self, id: Uuid, wire: WireFrame, behind: bool) {
        let Ok(text) = Utf8Bytes::try_from(wire.frame) else {
            self.0.metrics.frame_dropped("invalid");
            return;
        };
        let mut shard = self.shard(id);
        let Some(e) = shard.get_mut(&id) else {
            self.0.metrics.frame_dropped("no_clients");
            return;
        };
        let frame = e.frame(text, wire.published_micros, wire.offset);
        if let Some(held) = &mut e.held {
            // A catch-up from history is under way (after a resubscribe): behind it.
            if held.len() < BACKLOG_FRAMES {
                held.push(frame);
            } else {
                self.0.metrics.frame_dropped("instance_backlog");
            }
            return;
        }
        self.deliver(shard, id, frame, !behind);
    }

    /// Delivers `frame` to the instance's clients (behind its backlog, if any), releasing the
    /// shard lock before anything that could wait.
    fn deliver(
        &self,
        mut shard: MutexGuard<'_, HashMap<Uuid, Entry>>,
        id: Uuid,
        frame: Frame,
        write_now: bool,
    ) {
        let Some(e) = shard.get_mut(&id) else {
            self.0.metrics.frame_dropped("no_clients");
            return;
        };
        if frame.offset.is_some() {
            e.last_offset = frame.offset;
        }
        if let Some(backlog) = &e.backlog {
            // Order: behind the frames already waiting.
            if backlog.try_send(frame).is_err() {
                self.0.metrics.frame_dropped("instance_backlog");
            }
            return;
        }
        let stalled = push_all(&e.clients, &frame, &self.0.metrics, write_now);
        if stalled.is_empty() {
            return;
        }
        let (tx, rx) = mpsc::channel(BACKLOG_FRAMES);
        e.backlog = Some(tx);
        drop(shard);
        let hub = self.clone();
        self.0
            .tasks
            .spawn(async move { hub.drain_backlog(id, frame, stalled, rx).await });
    }

    /// The instance's delivery task while it has a stalled client: finish the stalled frame,
    /// then deliver the backlog in order, then hand delivery back to [`Hub::dispatch`].
    async fn drain_backlog(
        &self,
        id: Uuid,
        first: Frame,
        stalled: Vec<Arc<Outbox>>,
        mut backlog: mpsc::Receiver<Frame>,
    ) {
        self.settle(&first, stalled).await;
        loop {
            let next = {
                let mut shard = self.shard(id);
                match backlog.try_recv() {
                    Ok(frame) => {
                        let clients = shard
                            .get(&id)
                            .map(|e| e.clients.clone())
                            .unwrap_or_default();
                        Some((frame, clients))
                    }
                    Err(_) => {
                        // Empty, checked under the lock `dispatch` pushes under: nothing is lost.
                        if let Some(e) = shard.get_mut(&id) {
                            e.backlog = None;
                        }
                        None
                    }
                }
            };
            let Some((frame, clients)) = next else { return };
            let stalled = push_all(&clients, &frame, &self.0.metrics, false);
            if !stalled.is_empty() {
                self.settle(&frame, stalled).await;
            }
        }
    }

    /// Waits (all together, at most `WS_SLOW_CONSUMER_GRACE`) for full outboxes to make room
    /// for the frame; those that do not are closed as slow consumers (D7, D13, D35).
    async fn settle(&self, frame: &Frame, outboxes: Vec<Arc<Outbox>>) {
        let len = frame.text.len();
        let grace = self.0.slow_grace;
        let metrics = &self.0.metrics;
        let waits = outboxes.iter().map(|outbox| async move {
            if tokio::time::timeout(grace, outbox.room_for(len))
                .await
                .is_ok()
            {
                match outbox.push_as(frame, false) {
                    Push::Sent => return metrics.frames_sent_alike(1, frame.published_micros),
                    Push::Queued | Push::Closed => return,
                    Push::Full => {}
                }
            }
            outbox.close(close::SLOW_CONSUMER);
        });
        futures_util::future::join_all(waits).await;
    }

    /// Applies a control-channel message.
    pub fn control(&self, msg: &ControlMessage) {
        self.0.cache.invalidate(msg.instance_id);
        if msg.op == ControlOp::InstanceDeleted {
            let shard = self.shard(msg.instance_id);
            if let Some(e) = shard.get(&msg.instance_id) {
                for client in &e.clients {
                    client.outbox.close(close::INSTANCE_DELETED);
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

    fn open_outboxes(&self) -> Vec<Arc<Outbox>> {
        let mut outboxes = Vec::new();
        for shard in self.0.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            outboxes.extend(
                shard
                    .values()
                    .flat_map(|e| e.clients.iter().map(|c| c.outbox.clone()))
                    .filter(|o| o.close_requested().is_none()),
            );
        }
        outboxes
    }

    /// Closes every client with 1001, paced at `rate` per second so reconnects spread over the
    /// surviving pods, but fast enough to finish within `budget` (the pace rises if needed).
    /// New joins are refused from the start. Returns once every close has been requested.
    pub async fn drain(&self, rate: u32, budget: Duration) {
        self.0.draining.cancel();
        let outboxes = self.open_outboxes();
        let budget_secs = (budget.as_secs_f64() * 0.8).max(0.1);
        let rate = (rate as f64).max(outboxes.len() as f64 / budget_secs);
        // Close in 10 ms steps of rate/100 clients (at least one).
        let per_step = ((rate / 100.0).ceil() as usize).max(1);
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        for chunk in outboxes.chunks(per_step) {
            tick.tick().await;
            for outbox in chunk {
                outbox.close(close::SHUTDOWN);
            }
        }
        // Upgrades that were past their join when the drain started attach afterwards.
        for outbox in self.open_outboxes() {
            outbox.close(close::SHUTDOWN);
        }
    }
}

/// Pushes to every outbox (writing to idle sockets if `write_now`); returns the full ones.
/// Frames written at once are counted here, once per dispatch, rather than per delivery.
fn push_all(clients: &[Client], frame: &Frame, m: &Metrics, write_now: bool) -> Vec<Arc<Outbox>> {
    let mut sent = 0;
    let mut stalled = Vec::new();
    for c in clients {
        match c.outbox.push_as(frame, write_now) {
            Push::Sent => sent += 1,
            Push::Full => stalled.push(c.outbox.clone()),
            Push::Queued | Push::Closed => {}
        }
    }
    m.frames_sent_alike(sent, frame.published_micros);
    stalled
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
