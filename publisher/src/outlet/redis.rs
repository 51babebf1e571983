//! [`RedisOutlet`]: one Redis (plain, Sentinel or Cluster). With history off, `PUBLISH` (or
//! `SPUBLISH` on a cluster) of the version-1 body; with history on, one script call per frame
//! ([`super::history`]) that appends it to the instance's stream and publishes it with its
//! offset.

use super::history::{is_noscript, HistoryScript};
use crate::metrics::Metrics;
use fred::prelude::*;
use futures_util::future::BoxFuture;
use ryze_core::bus::{Audience, Bus, BusError, Outgoing};
use ryze_core::channel::{ControlMessage, Names};
use ryze_core::history::Retention;
use ryze_core::liveness::{replace, ticker, Answers};
use ryze_core::redis::primary::PrimaryWatch;
use ryze_core::redis::RedisTarget;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

/// The Redis bus: `PUBLISH` (or `SPUBLISH` on a cluster) on the instance channels, through the
/// history script when history is on.
pub struct RedisOutlet {
    client: Client,
    /// Hash-tagged on a cluster ([`Names::with_hash_tags`]).
    names: Names,
    /// `Some` with history on (`HISTORY_SIZE` > 0).
    history: Option<HistoryScript>,
    clustered: bool,
    /// `REDIS_STALL_TIMEOUT`: the bound on every round trip, and the liveness rule (D38).
    stall_timeout: Duration,
    /// Answers from Redis: the probe PINGs judge stalls; any round trip proves life.
    alive: Answers,
    /// Sentinel only: moves the client to the primary the Sentinels name, started by
    /// [`RedisOutlet::watch`] (see [`ryze_core::redis::primary`]).
    primary_watch: Option<Arc<PrimaryWatch>>,
}

impl RedisOutlet {
    /// Creates the client and starts connecting (readiness reports when it is connected and
    /// answering; see [`RedisOutlet::watch`]). `target` comes validated, TLS and stall timeout
    /// applied ([`ryze_core::settings::Redis`]); `history` is the retention with history on
    /// (`HISTORY_SIZE` > 0), `None` for plain publishes (version-1 headers). On a
    /// `redis-cluster://` URL the names are hash-tagged, as the gateway's are.
    pub fn connect(
        target: RedisTarget,
        names: Names,
        history: Option<Retention>,
    ) -> Result<Arc<RedisOutlet>, BusError> {
        let stall_timeout = target.stall_timeout;
        let target = target
            // A publish the client re-sent after its connection failed could run twice: the
            // first write may still be executed by a server that was only wedged.
            .write_once();
        let client = target.client(32)?;
        client.connect();
        Ok(Arc::new(RedisOutlet {
            client,
            names: names.with_hash_tags(target.clustered),
            history: history.map(HistoryScript::new),
            clustered: target.clustered,
            stall_timeout,
            alive: Answers::new(stall_timeout),
            primary_watch: PrimaryWatch::new(&target).map(Arc::new),
        }))
    }

    /// Whether the connection is up.
    pub fn is_connected(&self) -> bool {
        self.client.is_connected()
    }

    /// Starts the liveness probe (D38): a PING every probe interval. One unanswered within the
    /// stall timeout counts a stall (`ryze_publisher_redis_stalls_total{region}`), logs a WARN
    /// line and replaces the connection; readiness fails until a PING is answered again. A
    /// black-holed connection would otherwise hold every publish until its timeout. On a
    /// Sentinel URL it also keeps the client on the primary the Sentinels name.
    pub fn watch(
        self: &Arc<Self>,
        region: &str,
        metrics: Metrics,
        tasks: &TaskTracker,
        stop: CancellationToken,
    ) {
        if let Some(watch) = self.primary_watch.clone() {
            let client = vec![("publisher", self.client.clone())];
            tasks.spawn(watch.run_until(client, stop.clone().cancelled_owned()));
        }
        let outlet = self.clone();
        let region = region.to_owned();
        tasks.spawn(async move {
            let stall = outlet.stall_timeout;
            let mut tick = ticker(stall);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if !outlet.client.is_connected() {
                    continue;
                }
                match tokio::time::timeout(stall, outlet.client.ping::<String>(None)).await {
                    Ok(Ok(_)) => outlet.alive.answered(),
                    Ok(Err(e)) => {
                        tracing::debug!(region = %region, error = %e, "liveness probe failed");
                        outlet.judge(&region, &metrics);
                    }
                    Err(_) => outlet.judge(&region, &metrics),
                }
            }
        });
    }

    /// After a failed probe: silent past the stall timeout is a stall (fred's own check of
    /// unanswered commands may already be replacing the connection; replacing it once more
    /// is harmless). Counted and logged once per episode, which ends at the next answer.
    fn judge(&self, region: &str, metrics: &Metrics) {
        let Some(silent) = self.alive.failed() else {
            return;
        };
        metrics.redis_stall(region);
        tracing::warn!(
            region = %region,
            connection = "publisher",
            silent_ms = silent.as_millis() as u64,
            "redis connection stalled: nothing came back for longer than REDIS_STALL_TIMEOUT; replacing it"
        );
        replace(self.client.clone(), self.stall_timeout);
    }

    /// Connected and answering: a probe completed within the stall timeout (plus the probe
    /// interval it may be waiting for).
    fn is_live(&self) -> bool {
        self.client.is_connected() && self.alive.is_live()
    }

    /// Runs one round trip bounded by the stall timeout (a stalled connection answers 503
    /// instead of holding the request).
    async fn bounded<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, fred::error::Error>>,
    ) -> Result<T, BusError> {
        match tokio::time::timeout(self.stall_timeout, f).await {
            Ok(r) => {
                let value = r?;
                self.alive.heard();
                Ok(value)
            }
            Err(_) => Err(BusError::Timeout),
        }
    }

    /// Whether each of `keys` exists, in one round trip. One `MGET` on a single Redis (the
    /// live and resume keys are strings): fred flushes every command of a pipeline on its
    /// own, so `EXISTS` per key cost one write and one reply per instance of the request. A
    /// cluster keeps the `EXISTS` pipeline: `MGET` needs every key in one slot.
    async fn exist(&self, keys: Vec<String>) -> Result<Vec<bool>, fred::error::Error> {
        if !self.clustered {
            let values: Vec<Value> = self.client.mget(keys).await?;
            return Ok(values.iter().map(|v| !v.is_null()).collect());
        }
        let pipeline = self.client.pipeline();
        for key in keys {
            let _: () = pipeline.exists(key).await?;
        }
        let counts: Vec<i64> = pipeline.all().await?;
        Ok(counts.into_iter().map(|n| n > 0).collect())
    }

    /// Runs the history script for every message in one pipeline, in order. Each instance's
    /// first call is an `EVAL` (which also caches the script on the node that owns the
    /// instance's slot) and its later calls `EVALSHA`: they run after it on that node, so none
    /// can be refused with `NOSCRIPT` while an earlier frame of the same instance went through —
    /// which would publish them out of order (another publisher loading the script in the middle
    /// of the pipeline made that happen). Calls still refused with `NOSCRIPT` (only a
    /// `SCRIPT FLUSH` racing the request) go again as `EVAL`, in order.
    async fn append(
        &self,
        script: &HistoryScript,
        messages: Vec<Outgoing>,
    ) -> Result<(), fred::error::Error> {
        let pipeline = self.client.pipeline();
        let calls: Vec<_> = messages
            .iter()
            .map(|m| script.call(&self.names, self.clustered, m))
            .collect();
        let mut loaded: std::collections::HashSet<&str> = std::collections::HashSet::new();
        for (key, args) in &calls {
            let (cmd, args) = if loaded.insert(key.as_str()) {
                script.eval(key, args)
            } else {
                script.evalsha(key, args)
            };
            let _: () = pipeline.custom(cmd, args).await?;
        }
        let results: Vec<Result<Value, fred::error::Error>> = pipeline.try_all().await;
        let mut missing = Vec::new();
        for (i, result) in results.into_iter().enumerate() {
            match result {
                Ok(_) => {}
                Err(e) if is_noscript(&e) => missing.push(i),
                Err(e) => return Err(e),
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        tracing::debug!(
            calls = missing.len(),
            "history script not cached; sending it"
        );
        let pipeline = self.client.pipeline();
        for i in missing {
            let (key, args) = &calls[i];
            let (cmd, args) = script.eval(key, args);
            let _: () = pipeline.custom(cmd, args).await?;
        }
        let _: Vec<Value> = pipeline.all().await?;
        Ok(())
    }
}

impl Bus for RedisOutlet {
    fn listening<'a>(&'a self, ids: &'a [Uuid]) -> BoxFuture<'a, Result<Vec<bool>, BusError>> {
        Box::pin(async move {
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            if !self.client.is_connected() {
                return Err(BusError::Unavailable);
            }
            let keys = ids.iter().map(|id| self.names.live_key(*id)).collect();
            self.bounded(self.exist(keys)).await
        })
    }

    fn audience<'a>(&'a self, ids: &'a [Uuid]) -> BoxFuture<'a, Result<Vec<Audience>, BusError>> {
        Box::pin(async move {
            if self.history.is_none() {
                let live = self.listening(ids).await?;
                return Ok(live.into_iter().map(Audience::from_listening).collect());
            }
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            if !self.client.is_connected() {
                return Err(BusError::Unavailable);
            }
            // One round trip: the live key and the resume marker of every instance.
            let keys = ids
                .iter()
                .flat_map(|id| [self.names.live_key(*id), self.names.resume_key(*id)])
                .collect();
            let found = self.bounded(self.exist(keys)).await?;
            Ok(found
                .chunks(2)
                .map(|pair| match pair {
                    [true, _] => Audience::Live,
                    [_, true] => Audience::Resumable,
                    _ => Audience::Nobody,
                })
                .collect())
        })
    }

    fn publish(&self, messages: Vec<Outgoing>) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            if messages.is_empty() {
                return Ok(());
            }
            // Fail fast while disconnected: the client would hold the commands for the
            // reconnect, and a caller told 503 could still see them published later.
            if !self.client.is_connected() {
                return Err(BusError::Unavailable);
            }
            if let Some(script) = &self.history {
                return self.bounded(self.append(script, messages)).await;
            }
            self.bounded(async {
                let pipeline = self.client.pipeline();
                for m in messages {
                    if !m.live {
                        continue;
                    }
                    let channel = self.names.instance_channel(m.instance_id);
                    let body = m.body;
                    if self.clustered {
                        let _: () = pipeline.spublish(channel, body).await?;
                    } else {
                        let _: () = pipeline.publish(channel, body).await?;
                    }
                }
                let _: Vec<Value> = pipeline.all().await?;
                Ok(())
            })
            .await
        })
    }

    fn is_ready(&self) -> bool {
        self.is_live()
    }

    fn control<'a>(&'a self, msg: &'a ControlMessage) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let body = serde_json::to_string(msg).unwrap_or_default();
            self.bounded(async {
                let _: i64 = self
                    .client
                    .publish(self.names.control_channel(), body)
                    .await?;
                Ok(())
            })
            .await
        })
    }
}
