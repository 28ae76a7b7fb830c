//! Reading executions and their logs, awaiting their end, cancelling them, and what a
//! failed one is tried again as.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;

use super::{ServiceError, Services};
use crate::domain::{
    Execution, ExecutionStatus, Job, LogEntry, Millis, NewExecution, Page, RetryPolicy, Trigger,
    new_id, now_millis,
};
use crate::queue::Queue;
use crate::runtime::{CancelToken, StartListener};
use crate::store::{CancelEffect, ClaimedExecution, ExecutionFilter};

/// When a waiter first re-reads an execution it awaits, in case the end does not reach
/// this process's log hub: a short run on another node may end before that node hears
/// that someone here waits for it (and then relays nothing), or the node died, or Redis
/// was away. The pause doubles after each read, up to [`WAIT_BACKSTOP_MAX`]: a short run
/// is answered within tens of milliseconds, a long one costs a read a second at most.
/// Ends that do reach the hub answer at once.
const WAIT_BACKSTOP_FIRST: Duration = Duration::from_millis(50);
/// The longest an end that never reached the hub can go unseen.
const WAIT_BACKSTOP_MAX: Duration = Duration::from_secs(1);

/// Executions running in this process, so a cancel reaches them at once, and whether
/// their handlers began (which decides, should this node die, whether they are failed or
/// put back in the queue).
#[derive(Debug, Clone, Default)]
pub struct RunningRegistry {
    held: Arc<Mutex<HashMap<String, Held>>>,
    /// Woken when a handler begins, for the task that writes that down.
    began: Arc<tokio::sync::Notify>,
}

#[derive(Debug)]
struct Held {
    token: CancelToken,
    began: Began,
}

/// Where an execution held here stands with its handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Began {
    /// Claimed, not started: its module is loading or it waits for its settings.
    NotYet,
    /// Started, not yet written to the database.
    Unrecorded,
    /// Started, and the database knows it.
    Recorded,
}

/// Puts executions already stored as `QUEUED` on the queue. The rows are the truth: when
/// the queue is down, the request that made them still succeeds, and the reconciler
/// offers them again once the queue answers, so nothing is lost and the caller is not
/// told to retry what already happened.
pub(crate) async fn offer(queue: &dyn Queue, ids: &[String]) {
    if let Err(err) = queue.push(ids).await {
        tracing::warn!(
            error = %err,
            executions = ids.len(),
            "queue unavailable; the executions wait in the database until the reconciler offers them again"
        );
    }
}

/// This node's own workers, as a request that creates executions sees them: when one is
/// free for each, the request starts its executions here at once, created already
/// `RUNNING` under this node's lease, with no trip through the queue and no separate
/// claim. The worker pool implements it and attaches itself to [`Services`] while it
/// runs.
pub trait LocalRunner: Send + Sync {
    /// The node the workers belong to, recorded on what they run.
    fn node_id(&self) -> &str;

    /// How long a start holds its executions before the lease needs renewal.
    fn lease(&self) -> Duration;

    /// Takes `count` free workers; `None` when fewer are free or the pool is stopping.
    fn reserve(&self, count: usize) -> Option<WorkerReservation>;

    /// Runs executions the store created `RUNNING` for this node, each on a worker of
    /// `reservation`; unused workers are freed.
    fn start(&self, reservation: WorkerReservation, executions: Vec<ClaimedExecution>);
}

/// Workers taken by [`LocalRunner::reserve`], one permit each; freed when dropped unused.
#[derive(Debug)]
pub struct WorkerReservation(pub Vec<OwnedSemaphorePermit>);

/// Where [`Services`] finds the [`LocalRunner`] of this node, if one is attached.
#[derive(Clone, Default)]
pub struct AttachedRunner {
    runner: Arc<RwLock<Option<Arc<dyn LocalRunner>>>>,
}

impl AttachedRunner {
    pub fn attach(&self, runner: Arc<dyn LocalRunner>) {
        *self.runner.write().unwrap_or_else(|e| e.into_inner()) = Some(runner);
    }

    /// From now on, every execution goes through the queue (the pool is stopping).
    pub fn detach(&self) {
        self.runner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }

    pub fn get(&self) -> Option<Arc<dyn LocalRunner>> {
        self.runner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl std::fmt::Debug for AttachedRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachedRunner")
            .field("attached", &self.get().is_some())
            .finish()
    }
}

impl StartListener for RunningRegistry {
    fn started(&self, execution_id: &str) {
        self.mark_began(execution_id);
    }
}

impl RunningRegistry {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn register(&self, id: &str, token: CancelToken) {
        let held = Held {
            token,
            began: Began::NotYet,
        };
        self.held().insert(id.to_owned(), held);
    }

    pub fn unregister(&self, id: &str) {
        self.held().remove(id);
    }

    /// Notes that the execution's guest code is about to run; the worker pool writes it
    /// to the database (see [`RunningRegistry::began_unrecorded`]). The runtime says
    /// when, through [`StartListener`]: a run may wait for a CPU after it was handed over.
    pub fn mark_began(&self, id: &str) {
        if let Some(held) = self.held().get_mut(id)
            && held.began == Began::NotYet
        {
            held.began = Began::Unrecorded;
            self.began.notify_one();
        }
    }

    /// Wakes the writer of beginnings again, for those it could not write.
    pub fn retry_beginnings(&self) {
        self.began.notify_one();
    }

    /// Waits until a handler began since the last call.
    pub async fn some_began(&self) {
        self.began.notified().await;
    }

    /// Ids whose handlers began here and that the database does not know about yet.
    pub fn began_unrecorded(&self) -> Vec<String> {
        self.held()
            .iter()
            .filter(|(_, held)| held.began == Began::Unrecorded)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The database now knows that the handlers of `ids` began.
    pub fn began_recorded(&self, ids: &[String]) {
        let mut held = self.held();
        for id in ids {
            if let Some(held) = held.get_mut(id) {
                held.began = Began::Recorded;
            }
        }
    }

    /// Cancels the execution if it runs here; `false` otherwise.
    pub fn cancel(&self, id: &str) -> bool {
        match self.held().get(id) {
            Some(held) => {
                held.token.cancel();
                true
            }
            None => false,
        }
    }

    /// Ids running here now.
    pub fn ids(&self) -> Vec<String> {
        self.held().keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.held().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Cancels everything running here (shutdown).
    pub fn cancel_all(&self) {
        for held in self.held().values() {
            held.token.cancel();
        }
    }
}

impl Services {
    pub async fn get_execution(&self, id: &str) -> Result<Execution, ServiceError> {
        self.store
            .get_execution(id)
            .await?
            .ok_or_else(|| ServiceError::not_found("execution", id))
    }

    /// Execution `id` once it is final, or as it stands when `wait` passes or `stop`
    /// resolves (the server shutting down), whichever comes first. The log hub says when
    /// the run ends, relayed from the node that runs it in the distributed deployment;
    /// the store, re-read on that word and now and then (see [`WAIT_BACKSTOP_FIRST`]),
    /// says how. Dropping the future (a client that went away) leaves nothing behind.
    pub async fn await_execution(
        &self,
        id: &str,
        wait: Duration,
        stop: impl Future<Output = ()>,
    ) -> Result<Execution, ServiceError> {
        let deadline = tokio::time::Instant::now() + wait;
        // Watched before the first read: an end between the two is not missed.
        let mut end = self.logs.watch(id);
        let mut execution = self.get_execution(id).await?;
        let mut backstop = WAIT_BACKSTOP_FIRST;
        let mut stop = std::pin::pin!(stop);
        while !execution.status.is_final() {
            let waiting = tokio::select! {
                () = tokio::time::sleep_until(deadline) => false,
                () = &mut stop => false,
                _ = end.ended() => true,
                () = tokio::time::sleep(backstop) => {
                    backstop = (backstop * 2).min(WAIT_BACKSTOP_MAX);
                    true
                }
            };
            execution = self.get_execution(id).await?;
            if !waiting {
                break;
            }
        }
        Ok(execution)
    }

    pub async fn list_executions(
        &self,
        filter: &ExecutionFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Execution>, ServiceError> {
        Ok(self.store.list_executions(filter, cursor, limit).await?)
    }

    pub async fn execution_logs(
        &self,
        id: &str,
        after: Option<u32>,
        limit: u32,
    ) -> Result<Vec<LogEntry>, ServiceError> {
        self.get_execution(id).await?;
        Ok(self.store.execution_logs(id, after, limit).await?)
    }

    /// Cancels a queued execution (it never starts) or interrupts a running one at its
    /// next epoch tick. Returns the execution as it stands after the request.
    pub async fn cancel_execution(&self, id: &str) -> Result<Execution, ServiceError> {
        match self.store.cancel_execution(id, now_millis()).await? {
            CancelEffect::NotFound => return Err(ServiceError::not_found("execution", id)),
            CancelEffect::AlreadyFinal(status) => {
                return Err(ServiceError::Conflict(format!(
                    "execution `{id}` already ended ({})",
                    status.as_str()
                )));
            }
            CancelEffect::CancelledQueued => {
                self.logs.finish(id, ExecutionStatus::Cancelled);
                // Counted from the row read back, which names its module and job (should
                // that read fail, the caller gets the error and the count misses one).
                let execution = self.get_execution(id).await?;
                self.telemetry.record_ended(
                    &execution.module,
                    &execution.job,
                    ExecutionStatus::Cancelled,
                );
                return Ok(execution);
            }
            CancelEffect::FlaggedRunning => {
                // Running here: stop it now. Elsewhere: its node polls the flag.
                self.running.cancel(id);
            }
        }
        self.get_execution(id).await
    }
}

/// The next attempt of a failed execution, if its job allows one: for the worker when a
/// run fails, and for the reconciler when a run's node died under it.
pub(crate) fn next_attempt(
    retry: &RetryPolicy,
    claimed: &ClaimedExecution,
    job: &Job,
    now: Millis,
) -> Option<NewExecution> {
    if claimed.attempt >= job.max_attempts {
        return None;
    }
    let run_after = now + retry.delay(claimed.attempt).as_millis() as Millis;
    Some(NewExecution {
        id: new_id(),
        job_id: job.id.clone(),
        module: job.module.clone(),
        job: job.job.clone(),
        trigger: Trigger::Retry,
        attempt: claimed.attempt + 1,
        retry_of: Some(
            claimed
                .retry_of
                .clone()
                .unwrap_or_else(|| claimed.id.clone()),
        ),
        input: claimed.input.clone(),
        scheduled_at: claimed.scheduled_at,
        run_after,
        cron_tick: None,
        event_id: None,
        created_at: now,
    })
}
