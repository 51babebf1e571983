//! Live keys: `<prefix>:live:<id>` for every instance this pod holds, refreshed on a
//! heartbeat, so the publisher skips instances nobody watches (its fast path) without ever
//! skipping one whose client already got its 101.

use super::RedisBroker;
use fred::prelude::*;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long a live key outlives its last heartbeat (publisher fast path, docs/publisher.md).
pub const LIVE_TTL: Duration = Duration::from_secs(30);

impl RedisBroker {
    pub(super) async fn refresh_live(&self, ids: &[Uuid]) -> Result<(), fred::error::Error> {
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

    pub(super) async fn heartbeat(self: Arc<Self>, shutdown: CancellationToken) {
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
}
