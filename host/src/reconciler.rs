//! Makes the database the truth again after anything was lost: queued executions that no
//! queue holds are offered again, and running executions whose node stopped renewing
//! their lease are failed (and retried if their job allows). Started by `app`.

use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::domain::{Execution, ExecutionStatus, Millis, now_millis};
use crate::services::Services;
use crate::store::{ClaimedExecution, Settled};
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
/// over at once instead of after its lease runs out. `judge_leases` is false while the
/// database has only just come back (see [`run`]): expired leases are then left alone.
pub async fn reconcile(
    services: &Services,
    settings: &WorkerSettings,
    startup: bool,
    sole_node: bool,
    judge_leases: bool,
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
    if !judge_leases {
        return Ok(());
    }
    if startup && !sole_node {
        // Rows this node id holds belong to its previous process, which is dead: this
        // one has not claimed anything yet. Taken back now, not a lease later.
        for execution in services
            .store
            .executions_held_by(&settings.node_id, 1_000)
            .await?
        {
            settle_expired(services, settings, &execution, Millis::MAX, now).await?;
        }
    }
    for execution in services
        .store
        .expired_executions(expiry_horizon, 1_000)
        .await?
    {
        settle_expired(services, settings, &execution, expiry_horizon, now).await?;
    }
    Ok(())
}

/// Settles one execution whose node stopped renewing its lease: back to the queue if its
/// handler never began, else failed, with its next attempt if its job allows one.
async fn settle_expired(
    services: &Services,
    settings: &WorkerSettings,
    execution: &Execution,
    expired_before: Millis,
    now: Millis,
) -> Result<(), crate::services::ServiceError> {
    // Worked out before the settlement, which creates it in the same commit as the
    // failure (and not at all if the execution turns out not to have begun).
    let retry = match services.store.get_job(&execution.job_id).await? {
        Some(job) => {
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
            next_attempt(settings, &claimed, &job, now)
        }
        None => None,
    };
    let settled = services
        .store
        .settle_expired_execution(
            &execution.id,
            expired_before,
            now,
            "its node stopped while running it (lease expired)",
            retry.as_ref(),
        )
        .await?;
    match settled {
        Settled::NotExpired => {}
        Settled::Requeued => {
            tracing::info!(execution = %execution.id, node = ?execution.node_id, "execution lease expired before its handler began; back in the queue");
            services
                .queue
                .push(std::slice::from_ref(&execution.id))
                .await?;
        }
        Settled::Cancelled => {
            services
                .logs
                .finish(&execution.id, ExecutionStatus::Cancelled);
        }
        Settled::Failed => {
            tracing::warn!(execution = %execution.id, node = ?execution.node_id, "execution lease expired");
            services.logs.finish(&execution.id, ExecutionStatus::Failed);
            if let Some(retry) = retry {
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
///
/// After the database was unreachable, expired leases are not judged until it has
/// answered for a third of a lease: during an outage no node can renew, so every lease
/// may have run out although its node is alive and still running its executions. Live
/// nodes renew at their keeper's next tick once the database is back, well within that
/// wait; only leases of nodes that stay silent are then taken over.
pub async fn run(
    services: Services,
    settings: WorkerSettings,
    sole_node: bool,
    mut stop: watch::Receiver<bool>,
) {
    let grace = settings.lease / 3;
    let mut answering_since = Some(Instant::now());
    loop {
        tokio::select! {
            () = tokio::time::sleep(RECONCILE_EVERY) => {}
            _ = stop.changed() => return,
        }
        let judge_leases = answering_since.is_some_and(|since| since.elapsed() >= grace);
        match reconcile(&services, &settings, false, sole_node, judge_leases).await {
            Ok(()) => {
                answering_since.get_or_insert_with(Instant::now);
            }
            Err(err) => {
                answering_since = None;
                tracing::warn!(error = %err, "reconciler pass failed; retrying");
            }
        }
    }
}
