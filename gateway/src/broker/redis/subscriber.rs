//! The subscriber connection: frames and control messages into the hub, and the
//! subscriptions that must be confirmed again after every reconnect.

use super::RedisBroker;
use crate::control::Control;
use crate::hub::Hub;
use fred::prelude::*;
use fred::types::Message;
use ryze_core::channel::ControlMessage;
use ryze_core::wire;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

/// Channels per SUBSCRIBE command when resubscribing after a reconnect.
const RESUBSCRIBE_CHUNK: usize = 500;

/// Messages waiting behind the one being dispatched from which the fan-out counts as behind
/// Redis and leaves writes to the sessions, which coalesce them. Well above one ingest
/// request's instances (published together, each for other clients, so nothing would
/// coalesce), well below the subscriber's broadcast capacity (docs/benchmarks.md).
const BEHIND_MESSAGES: usize = 128;

impl RedisBroker {
    pub(super) async fn read(
        self: Arc<Self>,
        mut messages: tokio::sync::broadcast::Receiver<Message>,
        hub: Hub,
        control: Control,
        shutdown: CancellationToken,
    ) {
        let control_channel = self.names.control_channel();
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
            if *msg.channel == *self.probe_channel || self.shard_probes.heard(&msg.channel) {
                continue;
            }
            if *msg.channel == *control_channel {
                match serde_json::from_slice::<ControlMessage>(&body) {
                    Ok(c) => control.apply(&c),
                    Err(e) => tracing::warn!(error = %e, "ignoring malformed control message"),
                }
                continue;
            }
            let Some(id) = self.names.parse_instance_channel(&msg.channel) else {
                continue;
            };
            match wire::decode(body) {
                Ok(frame) => hub.dispatch(id, frame, messages.len() >= BEHIND_MESSAGES),
                Err(e) => {
                    self.metrics.frame_dropped("bad_wire");
                    tracing::debug!(error = %e, "dropping undecodable message");
                }
            }
        }
    }

    pub(super) async fn watch(
        self: Arc<Self>,
        mut reconnects: tokio::sync::broadcast::Receiver<Server>,
        mut errors: tokio::sync::broadcast::Receiver<(fred::error::Error, Option<Server>)>,
        hub: Hub,
        control: Control,
        shutdown: CancellationToken,
    ) {
        // The first connection may have happened before we listened for reconnects.
        let first = self.subscriber.wait_for_connect();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = first => if r.is_ok() { self.resync(&hub, &control).await },
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
                            self.resync(&hub, &control).await;
                            let (wanted, confirmed) = self.subscription_counts();
                            let span = tracing::Span::current();
                            span.record("subscriptions.wanted", wanted);
                            span.record("subscriptions.confirmed", confirmed);
                        }
                        .instrument(span)
                        .await;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => self.resync(&hub, &control).await,
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
    pub(super) async fn resync(&self, hub: &Hub, control: &Control) {
        let wanted: Vec<Uuid> = {
            let mut s = self.lock();
            s.confirmed.clear();
            s.control_confirmed = false;
            s.wanted.iter().copied().collect()
        };
        // D38: what was published while unsubscribed comes from history, before newer frames.
        let held = hub.hold(&wanted);
        // Control messages may have been missed while disconnected.
        control.missed();
        // Judge the new connection afresh (D38): silence before it says nothing about it.
        self.subscriber_silence.reset();
        self.shard_probes.reset();
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

    /// Every second: resubscribe whatever is wanted but not confirmed (a resubscribe that
    /// failed after a reconnect), while connected.
    pub(super) async fn repair(&self, hub: &Hub) {
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

    /// The control channel and this pod's probe channel, in one SUBSCRIBE; on a cluster, the
    /// sharded probe channels too (one SSUBSCRIBE each, routed to their masters).
    pub(super) async fn subscribe_own_channels(&self) -> Result<(), fred::error::Error> {
        self.subscriber
            .subscribe(vec![
                self.names.control_channel(),
                self.probe_channel.clone(),
            ])
            .await?;
        for channel in self.shard_probes.channels() {
            self.subscriber.ssubscribe(channel).await?;
        }
        Ok(())
    }

    pub(super) async fn subscribe_channels(&self, ids: &[Uuid]) -> Result<(), fred::error::Error> {
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
}
