//! Cron: fires each due scheduled job once per tick. The database's uniqueness on
//! (job, cron tick) is the final guard, so two schedulers (or a restart mid-tick) can
//! never create two executions for one tick. After downtime a job whose ticks were missed
//! fires once, for the oldest missed tick, then continues from now. Started by `app`.

use std::time::Duration;

use tokio::sync::watch;

use crate::domain::{Millis, NewExecution, Trigger, new_id, now_millis};
use crate::services::Services;
use crate::services::schedule::Schedule;

/// How often due jobs are looked for; a tick fires at most this late.
pub const SCHEDULER_POLL: Duration = Duration::from_millis(200);

/// Runs until `stop` turns true.
pub async fn run(services: Services, mut stop: watch::Receiver<bool>) {
    loop {
        if let Err(err) = fire_due(&services, now_millis()).await {
            tracing::warn!(error = %err, "scheduler pass failed; retrying");
        }
        tokio::select! {
            () = tokio::time::sleep(SCHEDULER_POLL) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Creates the executions of every job due at `now` and moves each job to its next tick.
/// Returns the ids created.
pub async fn fire_due(
    services: &Services,
    now: Millis,
) -> Result<Vec<String>, crate::services::ServiceError> {
    let due = services.store.due_scheduled_jobs(now).await?;
    if due.is_empty() {
        return Ok(Vec::new());
    }
    let mut executions = Vec::with_capacity(due.len());
    let mut next_runs = Vec::with_capacity(due.len());
    for job in due {
        let (Some(tick), Some(expression)) = (job.next_run_at, job.schedule.as_deref()) else {
            continue;
        };
        let next = Schedule::parse(expression)
            .ok()
            .and_then(|schedule| schedule.next_after(now));
        executions.push(NewExecution {
            id: new_id(),
            job_id: job.id.clone(),
            module: job.module.clone(),
            job: job.job.clone(),
            trigger: Trigger::Cron,
            attempt: 1,
            retry_of: None,
            input: job.input.to_string(),
            scheduled_at: tick,
            run_after: now,
            cron_tick: Some(tick),
            event_id: None,
            created_at: now,
        });
        next_runs.push((job.id, next));
    }
    let created = services.store.enqueue_executions(&executions).await?;
    services.queue.push(&created).await?;
    for (job_id, next) in next_runs {
        services.store.set_job_next_run(&job_id, next).await?;
    }
    Ok(created)
}
