//! Redis pub/sub: one subscriber connection per pod (one per owning node on a cluster, which
//! fred manages), plus one command connection for rate limits, live keys and health.
//!
//! Readiness means the subscriptions are live, not merely that a socket is open: the
//! best-known failure of this design is pub/sub silently lost after a Redis failover while
//! health stays green. So on every (re)connect all wanted channels are marked unconfirmed and
//! each is confirmed only when its SUBSCRIBE succeeds on the new connection.
//!
//! By concern: [`subscriber`] (reading, resubscribing), [`live`] (live keys), [`slots`]
//! (cluster slot owners), [`probe`] (liveness, D38), [`history`] (resume reads, D37).

mod history;
mod live;
mod probe;
mod shards;
mod slots;
mod subscriber;

pub use live::LIVE_TTL;

use super::BrokerError;
use crate::control::Control;
use crate::hub::Hub;
use crate::metrics::Metrics;
use fred::prelude::*;
use ryze_core::channel::Names;
use ryze_core::liveness::{Answers, Silence};
use ryze_core::redis::primary::PrimaryWatch;
use ryze_core::redis::RedisTarget;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

/// Frames fred may buffer for the reader before it lags (then frames are lost and counted).
const BROADCAST_CAPACITY: usize = 16_384;

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
    /// Cluster only: a sharded probe channel per sixteenth of the slot space, each judged on
    /// its own, so every master's connection is proven (see `shards`).
    shard_probes: shards::ShardProbes,
    /// Answers to the probe PUBLISH on the command connection.
    commands_alive: Answers,
    /// `HISTORY_TTL`: how long a resume key outlives the last resumable client, so the
    /// publisher keeps appending for as long as the client may come back.
    resume_ttl: Duration,
    /// Sentinel only: moves both connections to the primary the Sentinels name, started by
    /// [`RedisBroker::start`] (see [`ryze_core::redis::primary`]).
    primary_watch: Option<Arc<PrimaryWatch>>,
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
        let probe_channel = names.probe_channel(Uuid::new_v4());
        Ok(Arc::new(RedisBroker {
            subscriber,
            commands,
            shard_probes: shards::ShardProbes::new(
                &probe_channel,
                target.clustered,
                target.stall_timeout,
            ),
            probe_channel,
            names,
            clustered: target.clustered,
            state: Mutex::new(SubState::default()),
            confirmations: tokio::sync::watch::Sender::new(0),
            metrics,
            subscriber_silence: Silence::new(target.stall_timeout),
            commands_alive: Answers::new(target.stall_timeout),
            resume_ttl,
            primary_watch: PrimaryWatch::new(target).map(Arc::new),
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
    /// the live-key heartbeat, and on Sentinel the primary watch.
    pub fn start(
        self: &Arc<Self>,
        hub: Hub,
        control: Control,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) {
        let messages = self.subscriber.message_rx();
        let reconnects = self.subscriber.reconnect_rx();
        let errors = self.subscriber.error_rx();
        tasks.spawn(
            self.clone()
                .read(messages, hub.clone(), control.clone(), shutdown.clone()),
        );
        tasks.spawn(
            self.clone()
                .watch(reconnects, errors, hub, control, shutdown.clone()),
        );
        if self.clustered {
            tasks.spawn(self.clone().watch_slots(shutdown.clone()));
        }
        tasks.spawn(self.clone().probe_commands(shutdown.clone()));
        tasks.spawn(self.clone().watch_subscriber(shutdown.clone()));
        if let Some(watch) = self.primary_watch.clone() {
            let clients = vec![
                ("subscriber", self.subscriber.clone()),
                ("commands", self.commands.clone()),
            ];
            tasks.spawn(watch.run_until(clients, shutdown.clone().cancelled_owned()));
        }
        tasks.spawn(self.clone().heartbeat(shutdown));
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

    /// Ready when both connections are up (the command one shares rate-limit buckets across
    /// pods) and neither stalled (D38), the control channel and every wanted subscription are
    /// confirmed, and the live keys are fresh; otherwise the first reason.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if !self.is_live() {
            return Err("connection stalled");
        }
        if !self.subscriber.is_connected() || !self.commands.is_connected() {
            return Err("disconnected");
        }
        let s = self.lock();
        if !s.control_confirmed {
            return Err("control channel unconfirmed");
        }
        if s.confirmed.len() != s.wanted.len() {
            return Err("subscriptions unconfirmed");
        }
        let fresh = |at: std::time::Instant| at.elapsed() < LIVE_TTL * 2 / 3;
        if !s.wanted.is_empty() && !s.live_ok_at.is_some_and(fresh) {
            return Err("live keys not refreshed");
        }
        Ok(())
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
