//! What `/metrics` answers: this node's counters and histograms (recorded as things
//! happen, see [`crate::telemetry`]) with the figures read at the scrape: the queued
//! backlog (one query on the partial index of queued rows), and from memory the runs in
//! flight, the instance pools, the CPU permits and the connection pools.

use std::time::Duration;

use super::Services;
use crate::domain::now_millis;
use crate::telemetry::Snapshot;

/// How long a scrape waits for the database's count of queued executions; past it the
/// figure is left out of that scrape rather than holding the scraper up.
const QUEUED_COUNT_TIMEOUT: Duration = Duration::from_secs(2);

impl Services {
    /// Every metric of this node, in the OpenMetrics text format.
    pub async fn metrics_text(&self) -> String {
        // Read before the count, whose own connection would show as in use.
        let database_pools = self.store.pools();
        let queued =
            tokio::time::timeout(QUEUED_COUNT_TIMEOUT, self.store.count_queued(now_millis())).await;
        let queued = match queued {
            Ok(Ok(count)) => Some((count.due, count.delayed)),
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "metrics: cannot count queued executions");
                None
            }
            Err(_) => {
                tracing::warn!(timeout = ?QUEUED_COUNT_TIMEOUT, "metrics: counting queued executions took too long");
                None
            }
        };
        let mut redis_pools = self.queue.pools();
        redis_pools.extend(self.logs.relay_pools());
        let snapshot = Snapshot {
            queued,
            running: self.running.len(),
            instances: self.runtime.instances(),
            cpu_guests: (self.runtime.cpu_guests_busy(), self.runtime.cpu_guests()),
            database_pools,
            redis_pools,
        };
        self.telemetry.encode(&snapshot)
    }
}
