//! Makes the database the truth again after anything was lost: queued executions that no
//! queue holds are offered again, and running executions whose node stopped renewing
//! their lease are failed (and retried if their job allows). Started by `app`.

use std::time::Duration;

use tokio::sync::watch;

use crate::domain::{Millis, now_millis};
use crate::services::Services;
use crate::store::ClaimedExecution;
use crate::worker::{WorkerSettings, next_attempt};

/// How often a pass runs.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(2);
/// A queued execution this long past due is assumed lost by the in-process queue, which
/// ignores an id it already holds, so offering too early costs nothing.
pub const STALE_QUEUED_EMBEDDED: Duration = Duration::from_secs(2);
/// The same for Redis, which does not deduplicate: an execution merely waiting behind a
/// long backlog would be offered again and again, so wait longer before presuming it
/// lost (a flushed or restarted Redis).
pub const STALE_QUEUED_DISTRIBUTED: Duration = Duration::from_secs(20);
/// Rows handled per query.
const PAGE: u32 = 10_000;

/// One pass. `startup` re-offers every due queued row (the in-process queue starts
/// empty); later passes only those that look stranded. `sole_node` says no other
/// process can hold a lease (the embedded deployment, whose data directory is locked):
/// every running row left from before this start belongs to a dead process and is taken
/// over at once instead of after its lease runs out.
pub async fn reconcile(
    services: &Services,
    settings: &WorkerSettings,
    startup: bool,
    sole_node: bool,
) -> Result<(), crate::services::ServiceError> {
    let stale = if sole_node {
        STALE_QUEUED_EMBEDDED
    } else {
        STALE_QUEUED_DISTRIBUTED
    };
    let now = now_millis();
    let expiry_horizon = if startup && sole_node {
        now + settings.lease.as_millis() as Millis + 1
    } else {
        now
    };
    let cutoff = if startup {
        now
    } else {
        now - stale.as_millis() as Millis
    };
    let queued = services.store.due_queued_executions(cutoff, PAGE).await?;
    if !queued.is_empty() {
        if startup {
            tracing::info!(count = queued.len(), "re-offering queued executions");
        }
        services.queue.push(&queued).await?;
    }
    for execution in services
        .store
        .expired_executions(expiry_horizon, 1_000)
        .await?
    {
        let failed = services
            .store
            .fail_expired_execution(
                &execution.id,
                "its node stopped while running it (lease expired)",
                expiry_horizon,
            )
            .await?;
        if !failed {
            continue;
        }
        tracing::warn!(execution = %execution.id, node = ?execution.node_id, "execution lease expired");
        services
            .logs
            .finish(&execution.id, crate::domain::ExecutionStatus::Failed);
        let Some(job) = services.store.get_job(&execution.job_id).await? else {
            continue;
        };
        let claimed = ClaimedExecution {
            id: execution.id.clone(),
            job_id: execution.job_id.clone(),
            attempt: execution.attempt,
            trigger: execution.trigger,
            retry_of: execution.retry_of.clone(),
            input: execution.input.to_string(),
            scheduled_at: execution.scheduled_at,
            job_revision: None,
        };
        if let Some(retry) = next_attempt(settings, &claimed, &job, now) {
            let created = services
                .store
                .enqueue_executions(std::slice::from_ref(&retry))
                .await?;
            if !created.is_empty() {
                services
                    .queue
                    .push_delayed(&retry.id, retry.run_after)
                    .await?;
            }
        }
    }
    Ok(())
}

/// Runs a pass every [`RECONCILE_EVERY`] until `stop` turns true.
pub async fn run(
    services: Services,
    settings: WorkerSettings,
    sole_node: bool,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(RECONCILE_EVERY) => {}
            _ = stop.changed() => return,
        }
        if let Err(err) = reconcile(&services, &settings, false, sole_node).await {
            tracing::warn!(error = %err, "reconciler pass failed; retrying");
        }
    }
}
