//! Cron: fires each due scheduled job once per tick. Of all the nodes of a deployment,
//! only the holder of the `scheduler` lease fires (renewed every round, expiring when
//! its holder stops, fenced so a holder that lost it cannot move schedules), and the
//! database's uniqueness on (job, cron tick) is the final guard, so two schedulers (or
//! a restart mid-tick) can never create two executions for one tick. After downtime a
//! job whose ticks were missed fires once, for the oldest missed tick, then continues
//! from now. Started by `app`.

use std::time::Duration;

use tokio::sync::watch;

use crate::domain::{Millis, NewExecution, Trigger, new_id, now_millis};
use crate::services::Services;
use crate::services::schedule::Schedule;
use crate::store::LeaseToken;

/// How often due jobs are looked for; a tick fires at most this late.
pub(crate) const SCHEDULER_POLL: Duration = Duration::from_millis(200);
pub(crate) use crate::domain::SCHEDULER_LEASE;
/// How long the lease outlives its holder's last renewal: the longest cron pauses when
/// the leader dies without releasing it. Many rounds long, so a slow round or a brief
/// database hiccup does not hand the lease over.
pub(crate) const SCHEDULER_LEASE_TTL: Duration = Duration::from_secs(5);

/// The scheduler's claim to fire: the lease it holds.
#[derive(Debug, Clone)]
pub(crate) struct Leadership {
    pub holder: String,
    pub token: LeaseToken,
}

/// Runs until `stop` turns true, firing only while this node (`holder`) leads.
pub(crate) async fn run(services: Services, holder: String, mut stop: watch::Receiver<bool>) {
    let mut leading = false;
    loop {
        let now = now_millis();
        let ttl = SCHEDULER_LEASE_TTL.as_millis() as Millis;
        match services
            .store
            .acquire_lease(SCHEDULER_LEASE, &holder, now, ttl)
            .await
        {
            Ok(Some(token)) => {
                if !leading {
                    tracing::info!(node = %holder, token = token.0, "this node now runs cron");
                    leading = true;
                }
                let leadership = Leadership {
                    holder: holder.clone(),
                    token,
                };
                if let Err(err) = fire_due(&services, now, Some(&leadership)).await {
                    tracing::warn!(error = %err, "scheduler pass failed; retrying");
                }
            }
            Ok(None) => {
                if leading {
                    tracing::info!(node = %holder, "another node now runs cron");
                    leading = false;
                }
            }
            Err(err) => tracing::warn!(error = %err, "cannot take the scheduler lease; retrying"),
        }
        tokio::select! {
            () = tokio::time::sleep(SCHEDULER_POLL) => {}
            _ = stop.changed() => break,
        }
    }
    if leading {
        // Hand over at once instead of after the lease expires.
        let _ = services.store.release_lease(SCHEDULER_LEASE, &holder).await;
    }
}

/// Creates the executions of every job due at `now` and moves each job to its next tick;
/// with `leadership`, the move is fenced by the lease. Returns the ids created.
pub(crate) async fn fire_due(
    services: &Services,
    now: Millis,
    leadership: Option<&Leadership>,
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
    // Ticks another scheduler fired already were skipped, so each is counted once.
    services.telemetry.record_cron_ticks(created.len());
    services.queue.push(&created).await?;
    match leadership {
        Some(leadership) => {
            let advanced = services
                .store
                .advance_schedules(
                    &next_runs,
                    SCHEDULER_LEASE,
                    &leadership.holder,
                    leadership.token,
                    now,
                )
                .await?;
            if !advanced {
                // Another node leads now; the ticks created above are unique, so its
                // scheduler will skip them.
                tracing::info!("lost the scheduler lease mid-round");
            }
        }
        None => {
            for (job_id, next) in next_runs {
                services.store.set_job_next_run(&job_id, next).await?;
            }
        }
    }
    Ok(created)
}
