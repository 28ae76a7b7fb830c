//! Makes the database the truth again after anything was lost: queued executions that no
//! queue holds are offered again, and running executions whose node stopped renewing
//! their lease are settled (put back in the queue if they never began, else failed and
//! retried if their job allows). Started by `app`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::domain::{Execution, ExecutionStatus, Millis, RetryPolicy, now_millis};
use crate::services::{ServiceError, Services, next_attempt};
use crate::store::{ClaimedExecution, Settled};
use crate::telemetry::ReconcilerAction;

/// How often a pass runs.
pub(crate) const RECONCILE_EVERY: Duration = Duration::from_secs(2);
/// A queued execution this long past due is assumed lost by the in-process queue, which
/// ignores an id it already holds, so offering too early costs nothing.
pub(crate) const STALE_QUEUED_EMBEDDED: Duration = Duration::from_secs(2);
/// The same for Redis, which does not deduplicate: an execution merely waiting behind a
/// long backlog would be offered again and again, so wait longer before presuming it
/// lost.
pub(crate) const STALE_QUEUED_DISTRIBUTED: Duration = Duration::from_secs(20);
/// Distributed, how long before an execution offered again is offered once more. Redis
/// does not deduplicate, and a long backlog keeps executions queued for long: offering
/// them every pass grew the stream to 36 entries a queued row. A queue that loses its
/// backlog says so ([`crate::queue::Queue::losses`]) and gets everything offered at once,
/// so this only bounds how long an id lost some other way waits.
const OFFERED_AGAIN_AFTER: Duration = Duration::from_secs(600);
/// The lease of the one node that offers stranded executions again (distributed).
pub(crate) const REOFFER_LEASE: &str = "reconciler";
/// Rows handled per query.
const PAGE: u32 = 10_000;

/// What the reconciler of a node must agree on with its workers.
#[derive(Debug, Clone)]
pub(crate) struct ReconcilerSettings {
    /// This node's id, under which its workers hold their leases.
    pub node_id: String,
    /// How long the workers' claims last without renewal.
    pub lease: Duration,
    /// The backoff of an execution failed because its node died.
    pub retry: RetryPolicy,
}

/// The reconciler of one node, with what it remembers between passes.
pub(crate) struct Reconciler {
    services: Services,
    settings: ReconcilerSettings,
    /// No other process can hold a lease (the embedded deployment, whose data directory
    /// is locked): every running row left from before this start belongs to a dead
    /// process and is taken over at once instead of after its lease runs out.
    sole_node: bool,
    database: DatabaseWatch,
    /// Distributed: when this node last offered each stranded execution again.
    offered: HashMap<String, Instant>,
    /// The queue's [`crate::queue::Queue::losses`] at the last pass.
    losses_seen: u64,
}

impl Reconciler {
    pub(crate) fn new(services: Services, settings: ReconcilerSettings, sole_node: bool) -> Self {
        let losses_seen = services.queue.losses();
        let database = DatabaseWatch::new(settings.lease / 3, Instant::now());
        Self {
            services,
            settings,
            sole_node,
            database,
            offered: HashMap::new(),
            losses_seen,
        }
    }

    /// The pass before the workers start: every due queued execution is offered (the
    /// in-process queue starts empty), and what a dead process held is taken over (all
    /// running rows when this is the sole node, else those held under this node's id).
    pub(crate) async fn start_up(&mut self) -> Result<(), ServiceError> {
        let now = now_millis();
        self.offer_due_queued(now).await?;
        let held_by_the_dead = if self.sole_node {
            self.services
                .store
                .expired_executions(Millis::MAX, 1_000)
                .await?
        } else {
            self.services
                .store
                .executions_held_by(&self.settings.node_id, 1_000)
                .await?
        };
        for execution in &held_by_the_dead {
            settle_expired(&self.services, &self.settings, execution, Millis::MAX, now).await?;
        }
        self.settle_expired_leases(now).await
    }

    /// One periodic pass.
    async fn pass(&mut self) -> Result<(), ServiceError> {
        let now = now_millis();
        let losses = self.services.queue.losses();
        if losses != self.losses_seen {
            // The queue lost its backlog (Redis restarted empty): everything queued is
            // offered now, not once it looks stale.
            tracing::warn!("the queue lost its entries; offering every queued execution again");
            self.losses_seen = losses;
            self.offered.clear();
            self.offer_due_queued(now).await?;
        } else if self.sole_node {
            let stale = now - STALE_QUEUED_EMBEDDED.as_millis() as Millis;
            let queued = self
                .services
                .store
                .due_queued_executions(stale, PAGE)
                .await?;
            if !queued.is_empty() {
                self.services.queue.push(&queued).await?;
                self.offered_again(queued.len());
            }
        } else {
            self.offer_stranded(now).await?;
        }
        if self.database.may_judge_leases(Instant::now()) {
            self.settle_expired_leases(now).await?;
        }
        Ok(())
    }

    async fn offer_due_queued(&self, now: Millis) -> Result<(), ServiceError> {
        let queued = self.services.store.due_queued_executions(now, PAGE).await?;
        if !queued.is_empty() {
            tracing::info!(count = queued.len(), "offering queued executions");
            self.services.queue.push(&queued).await?;
            self.offered_again(queued.len());
        }
        Ok(())
    }

    fn offered_again(&self, count: usize) {
        self.services
            .telemetry
            .record_reconciler(ReconcilerAction::Offered, count);
    }

    /// Distributed: offers queued executions that look stranded again, by one node (the
    /// holder of [`REOFFER_LEASE`]) and each once per [`OFFERED_AGAIN_AFTER`].
    async fn offer_stranded(&mut self, now: Millis) -> Result<(), ServiceError> {
        let ttl = 3 * RECONCILE_EVERY.as_millis() as Millis;
        let leads = self
            .services
            .store
            .acquire_lease(REOFFER_LEASE, &self.settings.node_id, now, ttl)
            .await?
            .is_some();
        if !leads {
            self.offered.clear();
            return Ok(());
        }
        self.offered
            .retain(|_, at| at.elapsed() < OFFERED_AGAIN_AFTER);
        let stale = now - STALE_QUEUED_DISTRIBUTED.as_millis() as Millis;
        let stranded: Vec<String> = self
            .services
            .store
            .due_queued_executions(stale, PAGE)
            .await?
            .into_iter()
            .filter(|id| !self.offered.contains_key(id))
            .collect();
        if stranded.is_empty() {
            return Ok(());
        }
        tracing::info!(
            count = stranded.len(),
            "offering stranded queued executions again"
        );
        self.services.queue.push(&stranded).await?;
        self.offered_again(stranded.len());
        let at = Instant::now();
        self.offered.extend(stranded.into_iter().map(|id| (id, at)));
        Ok(())
    }

    async fn settle_expired_leases(&self, now: Millis) -> Result<(), ServiceError> {
        for execution in self.services.store.expired_executions(now, 1_000).await? {
            settle_expired(&self.services, &self.settings, &execution, now, now).await?;
        }
        Ok(())
    }
}

/// Settles one execution whose node stopped renewing its lease: back to the queue if its
/// handler never began, else failed, with its next attempt if its job allows one.
async fn settle_expired(
    services: &Services,
    settings: &ReconcilerSettings,
    execution: &Execution,
    expired_before: Millis,
    now: Millis,
) -> Result<(), ServiceError> {
    // Worked out before the settlement, which creates it in the same commit as the
    // failure (and not at all if the execution turns out not to have begun).
    let retry = match services.store.get_job(&execution.job_id).await? {
        Some(job) => {
            let claimed = ClaimedExecution {
                id: execution.id.clone(),
                job_id: execution.job_id.clone(),
                module: execution.module.clone(),
                job: execution.job.clone(),
                attempt: execution.attempt,
                trigger: execution.trigger,
                retry_of: execution.retry_of.clone(),
                input: execution.input.to_string(),
                scheduled_at: execution.scheduled_at,
                run_after: execution.run_after,
                job_revision: None,
            };
            next_attempt(&settings.retry, &claimed, &job, now)
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
    let telemetry = &services.telemetry;
    let ended = |status, action| {
        telemetry.record_reconciler(action, 1);
        telemetry.record_ended(&execution.module, &execution.job, status);
    };
    match settled {
        Settled::NotExpired => {}
        Settled::Requeued => {
            telemetry.record_reconciler(ReconcilerAction::Requeued, 1);
            tracing::info!(execution = %execution.id, node = ?execution.node_id, "execution lease expired before its handler began; back in the queue");
            services
                .queue
                .push(std::slice::from_ref(&execution.id))
                .await?;
        }
        Settled::Cancelled => {
            ended(ExecutionStatus::Cancelled, ReconcilerAction::Cancelled);
            services
                .logs
                .finish(&execution.id, ExecutionStatus::Cancelled);
        }
        Settled::Failed => {
            ended(ExecutionStatus::Failed, ReconcilerAction::Failed);
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
pub(crate) async fn run(mut reconciler: Reconciler, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(RECONCILE_EVERY) => {}
            _ = stop.changed() => return,
        }
        match reconciler.pass().await {
            Ok(()) => reconciler.database.answered(Instant::now()),
            Err(err) => {
                reconciler.database.failed();
                tracing::warn!(error = %err, "reconciler pass failed; retrying");
            }
        }
    }
}

/// Whether the database has answered long enough for expired leases to mean anything.
///
/// During an outage no node can renew, so every lease may run out although its node is
/// alive and still running its executions. Once the database is back, live nodes renew
/// at their lease keeper's next tick (half a second); leases are judged only after the
/// database has answered for `grace`, well past that, so only nodes that stay silent
/// lose theirs.
#[derive(Debug)]
struct DatabaseWatch {
    grace: Duration,
    answering_since: Option<Instant>,
}

impl DatabaseWatch {
    /// Started after the start-up pass, which answered.
    fn new(grace: Duration, now: Instant) -> Self {
        Self {
            grace,
            answering_since: Some(now),
        }
    }

    fn answered(&mut self, now: Instant) {
        self.answering_since.get_or_insert(now);
    }

    fn failed(&mut self) {
        self.answering_since = None;
    }

    fn may_judge_leases(&self, now: Instant) -> bool {
        self.answering_since
            .is_some_and(|since| now.duration_since(since) >= self.grace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_judged_only_once_the_database_answered_for_the_grace_after_an_outage() {
        let grace = Duration::from_secs(10);
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let mut database = DatabaseWatch::new(grace, start);
        assert!(!database.may_judge_leases(at(9)));
        assert!(database.may_judge_leases(at(10)));
        database.answered(at(12));
        assert!(database.may_judge_leases(at(12)), "answering all along");

        database.failed();
        assert!(!database.may_judge_leases(at(50)), "while it is down");
        database.answered(at(60));
        assert!(!database.may_judge_leases(at(60)));
        database.answered(at(62));
        assert!(!database.may_judge_leases(at(69)), "live nodes renew first");
        assert!(database.may_judge_leases(at(70)));
    }
}
