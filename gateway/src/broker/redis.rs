//! Redis pub/sub: one subscriber connection per pod (one per owning node on a cluster, which
//! fred manages), plus one command connection for rate limits, live keys and health.
//!
//! Readiness means the subscriptions are live, not merely that a socket is open: the
//! best-known failure of this design is pub/sub silently lost after a Redis failover while
//! health stays green. So on every (re)connect all wanted channels are marked unconfirmed and
//! each is confirmed only when its SUBSCRIBE succeeds on the new connection.

mod history;
mod probe;

use super::BrokerError;
use crate::hub::Hub;
use crate::metrics::Metrics;
use fred::prelude::*;
use fred::types::cluster::ClusterRouting;
use fred::types::Message;
use ryze_core::channel::{ControlMessage, Names};
use ryze_core::liveness::{Answers, Silence};
use ryze_core::redis::RedisTarget;
use ryze_core::wire;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use uuid::Uuid;

/// How long a live key outlives its last heartbeat (publisher fast path, docs/publisher.md).
pub const LIVE_TTL: Duration = Duration::from_secs(30);
/// Frames fred may buffer for the reader before it lags (then frames are lost and counted).
const BROADCAST_CAPACITY: usize = 16_384;
/// Channels per SUBSCRIBE command when resubscribing after a reconnect.
const RESUBSCRIBE_CHUNK: usize = 500;
/// Cluster only: how often the slot map is re-read to catch slots that moved to another
/// master (see `check_slot_owners`).
const SLOT_CHECK_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Default)]
struct SubState {
    wanted: HashSet<Uuid>,
    confirmed: HashSet<Uuid>,
    control_confirmed: bool,
    /// When the live keys were last written successfully (the publisher's fast path relies on
    /// them: a pod whose heartbeat fails is not ready).
    live_ok_at: Option<std::time::Instant>,
    /// Cluster only: the master each confirmed sharded subscription was made on.
    shard_owner: HashMap<Uuid, Server>,
    /// Instances that had a resumable (`since`) client; their resume keys are refreshed
    /// with the live keys while the instance is wanted (see `history`).
    resumable: HashSet<Uuid>,
}

/// The pod's Redis connections and its subscription bookkeeping.
pub struct RedisBroker {
    subscriber: Client,
    commands: Client,
    names: Names,
    clustered: bool,
    state: Mutex<SubState>,
    /// Bumped whenever a subscription is confirmed, for joiners waiting after a reconnect.
    confirmations: tokio::sync::watch::Sender<u64>,
    metrics: Metrics,
    /// This pod's probe channel (D38; see `probe`).
    probe_channel: String,
    /// Probes published versus anything received on the subscriber connection.
    subscriber_silence: Silence,
    /// Answers to the probe PUBLISH on the command connection.
    commands_alive: Answers,
    /// `HISTORY_TTL`: how long a resume key outlives the last resumable client, so the
    /// publisher keeps appending for as long as the client may come back.
    resume_ttl: Duration,
}

impl RedisBroker {
    /// Creates both clients and starts connecting (without waiting: the pod reports not ready
    /// until Redis answers and every subscription is confirmed).
    pub fn connect(
        target: &RedisTarget,
        names: Names,
        metrics: Metrics,
        resume_ttl: Duration,
    ) -> Result<Arc<RedisBroker>, fred::error::Error> {
        let subscriber = target.client(BROADCAST_CAPACITY)?;
        let commands = target.client(32)?;
        subscriber.connect();
        commands.connect();
        Ok(Arc::new(RedisBroker {
            subscriber,
            commands,
            probe_channel: names.probe_channel(Uuid::new_v4()),
            names,
            clustered: target.clustered,
            state: Mutex::new(SubState::default()),
            confirmations: tokio::sync::watch::Sender::new(0),
            metrics,
            subscriber_silence: Silence::new(target.stall_timeout),
            commands_alive: Answers::new(target.stall_timeout),
            resume_ttl,
        }))
    }

    fn lock(&self) -> MutexGuard<'_, SubState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The command connection (rate-limit counters, live keys, health).
    pub fn commands(&self) -> &Client {
        &self.commands
    }

    /// Starts the reader (frames and control messages into the hub), the reconnect watcher
    /// and the live-key heartbeat.
    pub fn start(self: &Arc<Self>, hub: Hub, tasks: &TaskTracker, shutdown: CancellationToken) {
        let messages = self.subscriber.message_rx();
        let reconnects = self.subscriber.reconnect_rx();
        let errors = self.subscriber.error_rx();
        tasks.spawn(self.clone().read(messages, hub.clone(), shutdown.clone()));
        tasks.spawn(
            self.clone()
                .watch(reconnects, errors, hub, shutdown.clone()),
        );
        if self.clustered {
            tasks.spawn(self.clone().watch_slots(shutdown.clone()));
        }
        tasks.spawn(self.clone().probe_commands(shutdown.clone()));
        tasks.spawn(self.clone().watch_subscriber(shutdown.clone()));
        tasks.spawn(self.clone().heartbeat(shutdown));
    }

    /// Cluster only: `check_slot_owners` every `SLOT_CHECK_INTERVAL`, in its own task so a
    /// slow `CLUSTER SLOTS` (a node down) never holds up reconnect handling.
    async fn watch_slots(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(SLOT_CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => self.check_slot_owners().await,
            }
        }
    }

    async fn read(
        self: Arc<Self>,
        mut messages: tokio::sync::broadcast::Receiver<Message>,
        hub: Hub,
        shutdown: CancellationToken,
    ) {
        let control = self.names.control_channel();
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => return,
                m = messages.recv() => m,
            };
            let msg = match msg {
                Ok(m) => {
                    self.subscriber_silence.heard();
                    m
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    self.metrics.frames_dropped_n("broker_lag", n);
                    tracing::warn!(frames = n, "fan-out fell behind Redis; frames were lost");
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            let body = match msg.value {
                Value::Bytes(b) => b,
                Value::String(s) => s.into_inner(),
                _ => continue,
            };
            if *msg.channel == *self.probe_channel {
                continue;
            }
            if *msg.channel == *control {
                match serde_json::from_slice::<ControlMessage>(&body) {
                    Ok(c) => hub.control(&c),
                    Err(e) => tracing::warn!(error = %e, "ignoring malformed control message"),
                }
                continue;
            }
            let Some(id) = self.names.parse_instance_channel(&msg.channel) else {
                continue;
            };
            match wire::decode(body) {
                // More messages waiting: the fan-out is behind, let writes coalesce.
                Ok(frame) => hub.dispatch(id, frame, !messages.is_empty()),
                Err(e) => {
                    self.metrics.frame_dropped("bad_wire");
                    tracing::debug!(error = %e, "dropping undecodable message");
                }
            }
        }
    }

    async fn watch(
        self: Arc<Self>,
        mut reconnects: tokio::sync::broadcast::Receiver<Server>,
        mut errors: tokio::sync::broadcast::Receiver<(fred::error::Error, Option<Server>)>,
        hub: Hub,
        shutdown: CancellationToken,
    ) {
        // The first connection may have happened before we listened for reconnects.
        let first = self.subscriber.wait_for_connect();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = first => if r.is_ok() { self.resync(&hub).await },
        }
        let mut repair = tokio::time::interval(Duration::from_secs(1));
        repair.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = repair.tick() => self.repair(&hub).await,
                r = reconnects.recv() => match r {
                    Ok(server) => {
                        self.metrics.redis_reconnect();
                        let span = tracing::info_span!(
                            "redis.reconnect",
                            server = %server,
                            subscriptions.wanted = tracing::field::Empty,
                            subscriptions.confirmed = tracing::field::Empty,
                        );
                        async {
                            tracing::info!("redis subscriber reconnected; resubscribing");
                            self.resync(&hub).await;
                            let (wanted, confirmed) = self.subscription_counts();
                            let span = tracing::Span::current();
                            span.record("subscriptions.wanted", wanted);
                            span.record("subscriptions.confirmed", confirmed);
                        }
                        .instrument(span)
                        .await;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => self.resync(&hub).await,
                    Err(_) => return,
                },
                e = errors.recv() => if let Ok((e, _)) = e {
                    tracing::warn!(error = %e, "redis subscriber connection lost");
                    let mut s = self.lock();
                    s.confirmed.clear();
                    s.control_confirmed = false;
                },
            }
        }
    }

    /// After a (re)connect: nothing is confirmed until resubscribed on this connection.
    async fn resync(&self, hub: &Hub) {
        let wanted: Vec<Uuid> = {
            let mut s = self.lock();
            s.confirmed.clear();
            s.control_confirmed = false;
            s.wanted.iter().copied().collect()
        };
        // D38: what was published while unsubscribed comes from history, before newer frames.
        let held = hub.hold(&wanted);
        // Control messages may have been missed while disconnected.
        hub.clear_cache();
        // Judge the new connection afresh (D38): silence before it says nothing about it.
        self.subscriber_silence.reset();
        match self.subscribe_own_channels().await {
            Ok(()) => self.lock().control_confirmed = true,
            Err(e) => tracing::warn!(error = %e, "control channel subscription failed"),
        }
        match self.refresh_live(&wanted).await {
            Ok(()) => self.lock().live_ok_at = Some(std::time::Instant::now()),
            Err(e) => tracing::warn!(error = %e, "live keys not refreshed after reconnect"),
        }
        for chunk in wanted.chunks(RESUBSCRIBE_CHUNK) {
            let result = self.subscribe_channels(chunk).await;
            match result {
                Ok(()) => self.confirm(chunk),
                Err(e) => tracing::warn!(error = %e, "resubscribe failed; retrying"),
            }
        }
        hub.catch_up(held).await;
    }

    fn confirm(&self, ids: &[Uuid]) {
        // fred routed each SSUBSCRIBE by its cached slot map (following a MOVED, which also
        // refreshes that map), so the map now names the master that holds the subscription.
        let routing = if self.clustered {
            self.subscriber.cached_cluster_state()
        } else {
            None
        };
        {
            let mut s = self.lock();
            for id in ids {
                if s.wanted.contains(id) {
                    s.confirmed.insert(*id);
                    if let Some(owner) = routing.as_ref().and_then(|r| self.slot_owner(r, *id)) {
                        s.shard_owner.insert(*id, owner);
                    }
                }
            }
        }
        self.confirmations.send_modify(|v| *v += 1);
    }

    fn slot_owner(&self, routing: &ClusterRouting, id: Uuid) -> Option<Server> {
        let slot = fred::util::redis_keyslot(self.names.instance_channel(id).as_bytes());
        routing.get_server(slot).cloned()
    }

    /// Cluster only, every `SLOT_CHECK_INTERVAL`: re-reads the slot map (`CLUSTER SLOTS`) and
    /// unconfirms every sharded subscription whose slot is now served by another master, so
    /// the repair tick subscribes again on the new owner (and `/readyz` fails meanwhile).
    ///
    /// Needed because a master that loses a slot (resharding, a failover seen late) drops its
    /// subscribers of that slot's channels with a server-side `sunsubscribe`, which fred
    /// discards silently: the connection stays up, so no reconnect would ever resubscribe.
    async fn check_slot_owners(&self) {
        if !self.subscriber.is_connected() {
            return;
        }
        if let Err(e) = self.subscriber.sync_cluster().await {
            tracing::debug!(error = %e, "reading the cluster slot map failed");
            return;
        }
        let Some(routing) = self.subscriber.cached_cluster_state() else {
            return;
        };
        let moved = {
            let mut s = self.lock();
            let moved: Vec<Uuid> = s
                .confirmed
                .iter()
                .filter(|id| self.slot_owner(&routing, **id).as_ref() != s.shard_owner.get(id))
                .copied()
                .collect();
            for id in &moved {
                s.confirmed.remove(id);
                s.shard_owner.remove(id);
            }
            moved.len()
        };
        if moved > 0 {
            tracing::info!(
                subscriptions = moved,
                "cluster slots moved to another master; resubscribing there"
            );
        }
    }

    /// Every second: resubscribe whatever is wanted but not confirmed (a resubscribe that
    /// failed after a reconnect), while connected.
    async fn repair(&self, hub: &Hub) {
        if !self.subscriber.is_connected() {
            return;
        }
        let (control, missing): (bool, Vec<Uuid>) = {
            let s = self.lock();
            (
                !s.control_confirmed,
                s.wanted.difference(&s.confirmed).copied().collect(),
            )
        };
        if control && self.subscribe_own_channels().await.is_ok() {
            self.lock().control_confirmed = true;
        }
        let held = hub.hold(&missing);
        for chunk in missing.chunks(RESUBSCRIBE_CHUNK) {
            if self.subscribe_channels(chunk).await.is_ok() {
                self.confirm(chunk);
            }
        }
        hub.catch_up(held).await;
    }

    /// The control channel and this pod's probe channel, in one SUBSCRIBE.
    async fn subscribe_own_channels(&self) -> Result<(), fred::error::Error> {
        self.subscriber
            .subscribe(vec![
                self.names.control_channel(),
                self.probe_channel.clone(),
            ])
            .await
    }

    async fn subscribe_channels(&self, ids: &[Uuid]) -> Result<(), fred::error::Error> {
        if self.clustered {
            for id in ids {
                self.subscriber
                    .ssubscribe(self.names.instance_channel(*id))
                    .await?;
            }
            Ok(())
        } else {
            let channels: Vec<String> = ids
                .iter()
                .map(|id| self.names.instance_channel(*id))
                .collect();
            self.subscriber.subscribe(channels).await
        }
    }

    /// Waits until the instance's subscription is confirmed on the current connection.
    pub async fn wait_confirmed(&self, id: Uuid, deadline: tokio::time::Instant) -> bool {
        let mut changes = self.confirmations.subscribe();
        loop {
            if self.lock().confirmed.contains(&id) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                return false;
            }
        }
    }

    async fn refresh_live(&self, ids: &[Uuid]) -> Result<(), fred::error::Error> {
        for chunk in ids.chunks(1000) {
            let pipeline = self.commands.pipeline();
            for id in chunk {
                let _: () = pipeline
                    .set(
                        self.names.live_key(*id),
                        1,
                        Some(Expiration::EX(LIVE_TTL.as_secs() as i64)),
                        None,
                        false,
                    )
                    .await?;
            }
            let _: Vec<Value> = pipeline.all().await?;
        }
        Ok(())
    }

    async fn heartbeat(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(LIVE_TTL / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let wanted: Vec<Uuid> = self.lock().wanted.iter().copied().collect();
            match self.refresh_live(&wanted).await {
                Ok(()) => self.lock().live_ok_at = Some(std::time::Instant::now()),
                Err(e) => tracing::warn!(error = %e, "live-key heartbeat failed"),
            }
            self.refresh_resumable().await;
        }
    }

    /// Marks the instance live, subscribes, and returns once Redis confirmed the subscription.
    pub async fn subscribe(&self, id: Uuid) -> Result<(), BrokerError> {
        self.lock().wanted.insert(id);
        let result = async {
            self.refresh_live(&[id]).await?;
            self.subscribe_channels(&[id]).await
        }
        .await;
        match result {
            Ok(()) => {
                self.confirm(&[id]);
                Ok(())
            }
            Err(e) => {
                self.lock().wanted.remove(&id);
                Err(e.into())
            }
        }
    }

    /// Forgets the instance and unsubscribes.
    pub async fn unsubscribe(&self, id: Uuid) {
        {
            let mut s = self.lock();
            s.wanted.remove(&id);
            s.confirmed.remove(&id);
            s.shard_owner.remove(&id);
        }
        let channel = self.names.instance_channel(id);
        let result = if self.clustered {
            self.subscriber.sunsubscribe(channel).await
        } else {
            self.subscriber.unsubscribe(channel).await
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "unsubscribe failed (the server forgets it on reconnect)");
        }
    }

    /// Both connections up (the command one shares rate-limit buckets across pods) and neither
    /// stalled (D38), control channel confirmed, and every wanted subscription confirmed.
    pub fn is_ready(&self) -> bool {
        if !self.is_live() {
            return false;
        }
        let s = self.lock();
        self.subscriber.is_connected()
            && self.commands.is_connected()
            && s.control_confirmed
            && s.confirmed.len() == s.wanted.len()
            && (s.wanted.is_empty()
                || s.live_ok_at
                    .is_some_and(|at| at.elapsed() < LIVE_TTL * 2 / 3))
    }

    /// (wanted, confirmed).
    pub fn subscription_counts(&self) -> (usize, usize) {
        let s = self.lock();
        (s.wanted.len(), s.confirmed.len())
    }

    /// PING on the command connection, for `/health`.
    pub async fn ping(&self) -> Result<(), fred::error::Error> {
        let _: String = self.commands.ping(None).await?;
        Ok(())
    }
}
