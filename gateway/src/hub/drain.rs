//! Shutdown: every client closed with 1001, paced so reconnects spread over the surviving pods.

use super::Hub;
use crate::outbox::Outbox;
use ryze_core::close;
use std::sync::Arc;
use std::time::Duration;

impl Hub {
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
