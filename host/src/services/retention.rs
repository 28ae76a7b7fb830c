//! Keeps history bounded: on one node of the deployment at a time (the holder of
//! [`RETENTION_LEASE`]), every `--prune-every`, deletes what the retention settings say
//! has expired, a batch at a time with pauses between batches so the runs being
//! recorded meanwhile wait for a few milliseconds at most, then gives the space back.
//! Usage totals do not change: they live in the rollups, which have their own retention.

use std::time::Duration;

use tokio::sync::watch;

use super::Services;
use crate::domain::retention::{Pruned, Retention};
use crate::domain::{Millis, now_millis};
use crate::store::{Store, StoreError};

/// The lease whose holder prunes.
pub(crate) const RETENTION_LEASE: &str = "retention";

/// Rows of each kind one batch deletes, at most: a few milliseconds of the write lock.
const BATCH: u32 = 1_000;
/// Between two batches: the writer is free for the hot path meanwhile.
const PAUSE: Duration = Duration::from_millis(20);
/// Space given back after one pass, at most (in calls of a few MiB each), so a pass
/// ends even if something else keeps freeing pages.
const MAX_RECLAIM_CALLS: u32 = 10_000;

/// How long budget counters are kept after their window started: past the longest
/// window (a day), nothing reads them any more.
const BUDGET_COUNTERS_KEPT: Millis = 2 * crate::domain::window::DAY;

/// Deletes everything `retention` says has expired at `now`, and budget counters of
/// windows long over, then gives the space back; returns what it deleted of the history.
pub(crate) async fn prune_once(
    store: &dyn Store,
    retention: &Retention,
    now: Millis,
) -> Result<Pruned, StoreError> {
    let plan = retention.plan(now);
    let mut total = Pruned::default();
    loop {
        let batch = store.prune_history(&plan, BATCH).await?;
        if batch.is_empty() {
            break;
        }
        total.add(batch);
        tokio::time::sleep(PAUSE).await;
    }
    // A few rows per module and window: one statement, no batches.
    store
        .prune_budget_counters(now - BUDGET_COUNTERS_KEPT)
        .await?;
    if !total.is_empty() {
        for _ in 0..MAX_RECLAIM_CALLS {
            if !store.reclaim_space().await? {
                break;
            }
            tokio::time::sleep(PAUSE).await;
        }
    }
    Ok(total)
}

/// Prunes every `every` while this node holds the retention lease, until `stop`.
pub(crate) async fn run(
    services: Services,
    retention: Retention,
    every: Duration,
    node_id: String,
    mut stop: watch::Receiver<bool>,
) {
    let ttl = Millis::try_from(every.as_millis().saturating_mul(3)).unwrap_or(Millis::MAX);
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let leads = services
            .store
            .acquire_lease(RETENTION_LEASE, &node_id, now_millis(), ttl)
            .await;
        match leads {
            Ok(Some(_)) => {}
            Ok(None) => continue,
            Err(err) => {
                tracing::warn!(error = %err, "cannot take the retention lease; pruning later");
                continue;
            }
        }
        match prune_once(services.store.as_ref(), &retention, now_millis()).await {
            Ok(pruned) if !pruned.is_empty() => tracing::info!(
                executions = pruned.executions,
                log_lines = pruned.log_lines,
                usage_rows = pruned.usage_rows,
                inputs = pruned.inputs,
                endpoint_checks = pruned.endpoint_checks,
                alerts = pruned.alerts,
                "pruned expired history"
            ),
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "pruning failed; trying again later"),
        }
    }
}
