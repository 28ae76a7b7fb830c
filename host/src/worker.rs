//! The worker pool of one node: takes ids off the queue, claims them in the database
//! (only `QUEUED` rows, so a duplicate delivery never runs twice), runs each in a fresh
//! instance, and hands the result to the recorder, which writes results in batches and
//! schedules retries. Started by `app`; nothing imports it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

use crate::domain::{
    ExecutionResult, ExecutionStatus, Job, Millis, NewExecution, Outcome, RetryPolicy, RunContext,
    Trigger, new_id, now_millis,
};
use crate::queue::Delivery;
use crate::runtime::{CancelToken, RunRequest, StartListener};
use crate::services::budgets::ModuleBudgets;
use crate::services::jobs::effective_limits;
use crate::services::{LocalRunner, Services, WorkerReservation, next_attempt};
use crate::store::{ClaimedExecution, Retry};
use crate::telemetry::FinishedRun;

/// The error kind of a run refused because its module used up a run or fuel budget. It
/// is not retried: the next run its job's trigger creates after the window resets runs.
const BUDGET_EXHAUSTED: &str = "BUDGET_EXHAUSTED";

/// How a node runs executions.
#[derive(Debug, Clone)]
pub(crate) struct WorkerSettings {
    /// Executions running at once on this node.
    pub concurrency: usize,
    /// Most ids claimed in one database round trip.
    pub claim_batch: usize,
    /// How long a claim is valid without renewal; a node that dies loses its
    /// executions to the reconciler after this.
    pub lease: Duration,
    pub node_id: String,
    pub retry: RetryPolicy,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            concurrency: 8,
            claim_batch: 128,
            lease: Duration::from_secs(30),
            node_id: format!("node-{}", &new_id()[24..]),
            retry: RetryPolicy::default(),
        }
    }
}

/// What `/metrics` counts a recorded result by, beyond the result itself.
struct RunFacts {
    module: String,
    /// The module's job.
    handler: String,
    /// Whether the run started (one refused before it did has no duration to observe).
    ran: bool,
    /// The module's budgets, whose fuel budgets count the run's fuel once recorded.
    budgets: Option<Arc<ModuleBudgets>>,
}

impl RunFacts {
    /// The facts of a run that started, taken from its claim.
    fn of_run(claimed: ClaimedExecution, budgets: Option<Arc<ModuleBudgets>>) -> Self {
        Self {
            module: claimed.module,
            handler: claimed.job,
            ran: true,
            budgets,
        }
    }
}

/// When an execution became due: its schedule (a cron tick, the moment a manual or event
/// run was asked for), or for a retry the end of its backoff. One put back in the queue
/// (its node stopped before its handler began) keeps that moment, so its wait includes
/// the detour.
fn due_at(claimed: &ClaimedExecution) -> Millis {
    match claimed.trigger {
        Trigger::Retry => claimed.run_after,
        Trigger::Manual | Trigger::Cron | Trigger::Event => claimed.scheduled_at,
    }
}

/// Whether an outcome deserves another attempt.
fn is_retryable(outcome: &Outcome) -> bool {
    match outcome {
        Outcome::Failed { kind, .. } => kind.is_retryable(),
        Outcome::TimedOut { .. } => true,
        Outcome::Completed { .. } | Outcome::Cancelled => false,
    }
}

enum Recorded {
    Finished {
        result: Box<ExecutionResult>,
        retry: Option<Box<NewExecution>>,
        run: RunFacts,
    },
    /// Shutdown gave up on it: back to `QUEUED` for the next start.
    Requeue(String),
}

struct Shared {
    services: Services,
    settings: WorkerSettings,
    recorder: mpsc::Sender<Recorded>,
    /// Set when the shutdown grace period ran out: interrupted runs are requeued, not
    /// recorded as cancelled.
    abandoning: AtomicBool,
    /// Shared by the dispatcher and the runs requests start here.
    jobs: tokio::sync::Mutex<JobCache>,
    /// Told by the runtime when a run's guest code starts: `services.running`.
    began: Arc<dyn StartListener>,
}

/// The running pool; [`WorkerPool::shutdown`] stops it.
#[derive(Debug)]
pub(crate) struct WorkerPool {
    stop: watch::Sender<bool>,
    dispatcher: JoinHandle<()>,
    recorder: JoinHandle<()>,
    keeper: JoinHandle<()>,
    beginnings: JoinHandle<()>,
    running: Arc<Semaphore>,
    services: Services,
    concurrency: usize,
    /// Weak, so the recorder's channel closes once the tasks holding `Shared` end.
    shared: std::sync::Weak<Shared>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl WorkerPool {
    pub(crate) fn start(services: Services, settings: WorkerSettings) -> Self {
        let (recorder_tx, recorder_rx) = mpsc::channel(4096);
        let (stop, stop_rx) = watch::channel(false);
        let concurrency = settings.concurrency.max(1);
        let shared = Arc::new(Shared {
            services: services.clone(),
            settings,
            recorder: recorder_tx,
            abandoning: AtomicBool::new(false),
            jobs: tokio::sync::Mutex::new(JobCache::default()),
            began: Arc::new(services.running.clone()),
        });
        let running = Arc::new(Semaphore::new(concurrency));
        let recorder = tokio::spawn(record(services.clone(), recorder_rx));
        let keeper = tokio::spawn(keep_leases(shared.clone(), stop_rx.clone()));
        let beginnings = tokio::spawn(record_beginnings(shared.clone(), stop_rx.clone()));
        services.local_runner.attach(Arc::new(PoolRunner {
            shared: shared.clone(),
            running: running.clone(),
            stop: stop_rx.clone(),
        }));
        let dispatcher = tokio::spawn(dispatch(shared.clone(), running.clone(), stop_rx));
        Self {
            stop,
            dispatcher,
            recorder,
            keeper,
            beginnings,
            running,
            services,
            concurrency,
            shared: Arc::downgrade(&shared),
        }
    }

    /// Stops taking work, lets running executions finish for up to `grace`, then
    /// interrupts the rest and puts them back in the queue for the next start.
    pub(crate) async fn shutdown(self, grace: Duration) {
        // Detached first: the runner holds the shared state, whose recorder channel must
        // close for the recorder to end.
        self.services.local_runner.detach();
        let _ = self.stop.send(true);
        let _ = self.dispatcher.await;
        let drained =
            tokio::time::timeout(grace, self.running.acquire_many(self.concurrency as u32)).await;
        if drained.is_err() {
            tracing::warn!(
                running = self.services.running.len(),
                "shutdown grace period over; interrupting and requeueing running executions"
            );
            if let Some(shared) = self.shared.upgrade() {
                shared.abandoning.store(true, Ordering::SeqCst);
            }
            self.services.running.cancel_all();
            let _ = self.running.acquire_many(self.concurrency as u32).await;
        }
        self.keeper.abort();
        self.beginnings.abort();
        // The recorder ends once every sender (the runners, the shared state) is gone.
        let _ = tokio::time::timeout(Duration::from_secs(10), self.recorder).await;
    }
}

async fn dispatch(shared: Arc<Shared>, running: Arc<Semaphore>, mut stop: watch::Receiver<bool>) {
    let services = &shared.services;
    loop {
        if *stop.borrow() {
            break;
        }
        // Take work only with a slot free. The slot is held through the blocking read, so
        // the queue always has a worker however many runs requests start here (they take
        // only the other slots), and the first execution claimed starts at once.
        let first = tokio::select! {
            permit = running.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            _ = stop.changed() => break,
        };
        // No more than the free workers: a claim is a promise to run the execution now.
        // One claimed beyond them would wait `RUNNING` under this node's lease, and be
        // lost with the node should it die before a worker freed up.
        let wanted = (1 + running.available_permits()).min(shared.settings.claim_batch.max(1));
        let deliveries = tokio::select! {
            popped = services.queue.pop(wanted, Duration::from_millis(500)) => popped,
            _ = stop.changed() => break,
        };
        let mut deliveries = match deliveries {
            Ok(deliveries) if deliveries.is_empty() => continue,
            Ok(deliveries) => deliveries,
            Err(err) => {
                tracing::warn!(error = %err, "queue unavailable; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        // A worker for each delivery but the first; requests starting runs here may
        // have taken some during the read, and what finds no worker goes back.
        let mut permits = vec![first];
        while permits.len() < deliveries.len() {
            match running.clone().try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => break,
            }
        }
        let surplus = deliveries.split_off(permits.len());
        if !surplus.is_empty() {
            give_back(services, surplus).await;
        }
        let ids: Vec<String> = deliveries.iter().map(|d| d.id.clone()).collect();
        let now = now_millis();
        let lease_until = now + shared.settings.lease.as_millis() as Millis;
        let node_id = &shared.settings.node_id;
        let mut claim = services
            .store
            .claim_executions(&ids, node_id, now, lease_until)
            .await;
        if claim.is_err() {
            // Once more at once, on another connection: after a database restart the
            // pool's first use of each old connection fails, and the entries in hand
            // would otherwise wait out a lease before anyone took them again.
            claim = services
                .store
                .claim_executions(&ids, node_id, now, lease_until)
                .await;
        }
        let claimed = match claim {
            Ok(claimed) => claimed,
            Err(err) => {
                // The rows stay QUEUED, offered again for whichever node claims first.
                tracing::warn!(error = %err, "could not claim executions; giving them back");
                give_back(services, deliveries).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        // Off the path to the runs: an entry left unacknowledged only comes back after
        // the lease, and its claim then finds the row taken and skips it.
        let queue = services.queue.clone();
        tokio::spawn(async move {
            if let Err(err) = queue.ack(&deliveries).await {
                tracing::warn!(error = %err, "could not acknowledge deliveries");
            }
        });
        if claimed.is_empty() {
            continue;
        }
        // Registered at once, so a claimed execution keeps its lease renewed and can be
        // cancelled before it starts.
        let tokens = register(services, &claimed);
        let Some(jobs) = jobs_or_requeue(&shared, &claimed).await else {
            continue;
        };
        // Each claimed execution has its worker; those left over are freed here. Runs
        // start on the guest threads, where their guest code will run: one hop, not two.
        let guest_threads = services.runtime.guest_threads();
        for ((execution, cancel), permit) in claimed.into_iter().zip(tokens).zip(permits) {
            let job = jobs.get(&execution.job_id).cloned();
            let shared = shared.clone();
            guest_threads.spawn(async move {
                run_one(&shared, execution, job, cancel).await;
                drop(permit);
            });
        }
    }
}

/// Puts deliveries this node took but will not claim back on the queue, for whichever
/// worker is free first; the rows were never touched, so they are still `QUEUED`.
async fn give_back(services: &Services, deliveries: Vec<Delivery>) {
    let ids: Vec<String> = deliveries.iter().map(|d| d.id.clone()).collect();
    // Offered again before the old entries are acknowledged: should the push fail,
    // the unacknowledged entries (or, in-process, the reconciler) bring them back.
    match services.queue.push(&ids).await {
        Ok(()) => {
            if let Err(err) = services.queue.ack(&deliveries).await {
                tracing::warn!(error = %err, "could not acknowledge deliveries given back");
            }
        }
        Err(err) => {
            tracing::warn!(error = %err, "could not give deliveries back to the queue; the reconciler will offer them again");
        }
    }
}

/// The pool as requests see it: runs they create here start on its free workers.
struct PoolRunner {
    shared: Arc<Shared>,
    running: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
}

impl LocalRunner for PoolRunner {
    fn node_id(&self) -> &str {
        &self.shared.settings.node_id
    }

    fn lease(&self) -> Duration {
        self.shared.settings.lease
    }

    fn reserve(&self, count: usize) -> Option<WorkerReservation> {
        if *self.stop.borrow() {
            return None;
        }
        // Taken one by one, so each run can free its own; taking fails as a whole (those
        // already taken are dropped) when one is missing.
        let permits = (0..count)
            .map(|_| self.running.clone().try_acquire_owned().ok())
            .collect::<Option<Vec<_>>>()?;
        Some(WorkerReservation(permits))
    }

    fn start(&self, reservation: WorkerReservation, executions: Vec<ClaimedExecution>) {
        let services = &self.shared.services;
        // Registered before this returns, like a claimed batch: a cancel or a lease
        // renewal finds them from now on.
        let tokens = register(services, &executions);
        let shared = self.shared.clone();
        let WorkerReservation(permits) = reservation;
        let guest_threads = services.runtime.guest_threads().clone();
        guest_threads.clone().spawn(async move {
            let Some(jobs) = jobs_or_requeue(&shared, &executions).await else {
                return;
            };
            let mut runs = executions.into_iter().zip(tokens).zip(permits).peekable();
            while let Some(((execution, cancel), permit)) = runs.next() {
                let job = jobs.get(&execution.job_id).cloned();
                if runs.peek().is_none() {
                    // The last one (the only one, for a single run) needs no task of
                    // its own.
                    run_one(&shared, execution, job, cancel).await;
                    drop(permit);
                    break;
                }
                let shared = shared.clone();
                guest_threads.spawn(async move {
                    run_one(&shared, execution, job, cancel).await;
                    drop(permit);
                });
            }
        });
    }
}

/// Registers executions this node holds as running here, each with the token that
/// interrupts it.
fn register(services: &Services, executions: &[ClaimedExecution]) -> Vec<CancelToken> {
    executions
        .iter()
        .map(|execution| {
            let token = CancelToken::default();
            services.running.register(&execution.id, token.clone());
            token
        })
        .collect()
}

/// The jobs of executions this node holds, from the shared cache; `None`, with the
/// executions given back to the queue, when they cannot be read now.
async fn jobs_or_requeue(
    shared: &Shared,
    executions: &[ClaimedExecution],
) -> Option<HashMap<String, Arc<Job>>> {
    let services = &shared.services;
    let jobs = shared
        .jobs
        .lock()
        .await
        .for_claimed(services, executions)
        .await;
    match jobs {
        Ok(jobs) => Some(jobs),
        Err(err) => {
            tracing::warn!(error = %err, "could not load jobs; requeueing the executions held");
            requeue_unstarted(services, executions).await;
            None
        }
    }
}

/// Gives claimed executions that never started back to the queue.
async fn requeue_unstarted(services: &Services, claimed: &[ClaimedExecution]) {
    let ids: Vec<String> = claimed.iter().map(|c| c.id.clone()).collect();
    for id in &ids {
        services.running.unregister(id);
    }
    if let Err(err) = services.store.requeue_executions(&ids).await {
        tracing::warn!(error = %err, "could not requeue claimed executions; the reconciler will take them over");
    }
    let _ = services.queue.push(&ids).await;
}

/// Most job definitions the dispatcher keeps; past it, it starts afresh.
const CACHED_JOBS: usize = 4096;

/// The job definitions of recent claims, each with the revision it was read for. A claim
/// says which revision of its job is current, so a definition is read again only after
/// it changed (on any node), and a hit is never older than what the claim saw.
#[derive(Default)]
struct JobCache {
    jobs: HashMap<String, (i64, Arc<Job>)>,
}

impl JobCache {
    /// The jobs of `claimed` that still exist, by id; reads only those not cached at
    /// their current revision.
    async fn for_claimed(
        &mut self,
        services: &Services,
        claimed: &[ClaimedExecution],
    ) -> Result<HashMap<String, Arc<Job>>, crate::store::StoreError> {
        let mut current: HashMap<String, Arc<Job>> = HashMap::new();
        let mut stale: Vec<String> = Vec::new();
        for execution in claimed {
            if current.contains_key(&execution.job_id) || stale.contains(&execution.job_id) {
                continue;
            }
            let Some(revision) = execution.job_revision else {
                self.jobs.remove(&execution.job_id);
                continue;
            };
            match self.jobs.get(&execution.job_id) {
                Some((cached, job)) if *cached == revision => {
                    current.insert(execution.job_id.clone(), job.clone());
                }
                _ => stale.push(execution.job_id.clone()),
            }
        }
        if stale.is_empty() {
            return Ok(current);
        }
        let read = services.store.get_jobs(&stale).await?;
        if self.jobs.len() + read.len() > CACHED_JOBS {
            self.jobs.clear();
        }
        for job in read {
            let job = Arc::new(job);
            // Keyed by the revision the claim saw: the definition read after it is at
            // least that new, so a later claim of the same revision may use it.
            if let Some(revision) = claimed
                .iter()
                .find(|c| c.job_id == job.id)
                .and_then(|c| c.job_revision)
            {
                self.jobs.insert(job.id.clone(), (revision, job.clone()));
            }
            current.insert(job.id.clone(), job);
        }
        Ok(current)
    }
}

/// Records an execution that could not start, with the reason.
async fn refuse(shared: &Shared, claimed: &ClaimedExecution, reason: String) {
    refuse_as(shared, claimed, reason, "NOT_RUNNABLE").await;
}

/// Records an execution that could not start, with the reason and its error kind. It is
/// never retried: what stopped it does not pass within a backoff.
async fn refuse_as(shared: &Shared, claimed: &ClaimedExecution, reason: String, kind: &str) {
    let result = ExecutionResult {
        id: claimed.id.clone(),
        status: ExecutionStatus::Failed,
        result: None,
        error: Some(reason),
        error_kind: Some(kind.to_owned()),
        finished_at: now_millis(),
        duration_ms: 0.0,
        fuel_consumed: 0,
        memory_peak_bytes: 0,
        cpu_time_ms: 0.0,
        logs: Vec::new(),
        outbound: Vec::new(),
    };
    let _ = shared
        .recorder
        .send(Recorded::Finished {
            result: Box::new(result),
            retry: None,
            run: RunFacts {
                module: claimed.module.clone(),
                handler: claimed.job.clone(),
                ran: false,
                budgets: None,
            },
        })
        .await;
}

async fn run_one(
    shared: &Shared,
    claimed: ClaimedExecution,
    job: Option<Arc<Job>>,
    cancel: CancelToken,
) {
    let services = &shared.services;
    let Some(job) = job else {
        services.running.unregister(&claimed.id);
        refuse(shared, &claimed, "its job was deleted before it ran".into()).await;
        return;
    };
    let runnable = match services.modules.resolve(&job.module).await {
        Ok(runnable) => runnable,
        Err(crate::services::modules::Unrunnable::Unavailable(reason)) => {
            services.running.unregister(&claimed.id);
            tracing::warn!(execution = %claimed.id, %reason, "module lookup failed; requeueing");
            let _ = shared.recorder.send(Recorded::Requeue(claimed.id)).await;
            return;
        }
        Err(reason) => {
            services.running.unregister(&claimed.id);
            refuse(shared, &claimed, reason.to_string()).await;
            return;
        }
    };
    // Opened from the job already loaded with the batch: no database round trip per run.
    let config = match services.open_config(&job) {
        Ok(config) => config,
        Err(reason) => {
            services.running.unregister(&claimed.id);
            tracing::warn!(execution = %claimed.id, job = %job.name, %reason, "a secret setting does not open; execution refused");
            refuse(shared, &claimed, reason.to_string()).await;
            return;
        }
    };
    // Counted here, after everything else that could refuse the run: a run refused for
    // another reason takes nothing from its module's budgets.
    if let Some(budgets) = &runnable.budgets {
        match budgets
            .admit_run(services.store.as_ref(), now_millis())
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(exhausted)) => {
                services.running.unregister(&claimed.id);
                let reason = exhausted.message(&job.module);
                refuse_as(shared, &claimed, reason, BUDGET_EXHAUSTED).await;
                return;
            }
            Err(err) => {
                services.running.unregister(&claimed.id);
                tracing::warn!(execution = %claimed.id, error = %err, "cannot count the run against its module's budgets; requeueing");
                let _ = shared.recorder.send(Recorded::Requeue(claimed.id)).await;
                return;
            }
        }
    }
    let outbound_budget =
        (runnable.budgets.as_ref()).and_then(|budgets| budgets.outbound_port(&services.store));
    let module = runnable.module;
    let spec = module.manifest.job(&job.job);
    let limits = effective_limits(&job, spec, &services.settings.defaults);
    let request = RunRequest {
        job: job.job.clone(),
        input: claimed.input.clone(),
        context: RunContext {
            execution_id: claimed.id.clone(),
            attempt: claimed.attempt,
            trigger: claimed.trigger,
            scheduled_at_ms: claimed.scheduled_at.max(0) as u64,
        },
        limits,
        grants: runnable.grants,
        config: config.values,
        redact: config.redactor,
        cancel,
        log_observer: Some(services.logs.start(&claimed.id)),
        // Once guest code runs, should this node die, the execution ran and is settled
        // by its job's retry policy, not simply offered again. Not before: a run in
        // flight may wait a while for a CPU.
        start_listener: Some(shared.began.clone()),
        outbound_budget,
    };
    services
        .telemetry
        .observe_dispatch(claimed.trigger, now_millis() - due_at(&claimed));
    let report = services.runtime.run(&module, request).await;
    services.running.unregister(&claimed.id);
    if matches!(report.outcome, Outcome::Cancelled) && shared.abandoning.load(Ordering::SeqCst) {
        let _ = shared.recorder.send(Recorded::Requeue(claimed.id)).await;
        return;
    }
    let now = now_millis();
    let retry = if is_retryable(&report.outcome) {
        next_attempt(&shared.settings.retry, &claimed, &job, now)
    } else {
        None
    };
    let result = ExecutionResult::from_outcome(
        claimed.id.clone(),
        &report.outcome,
        &report.usage,
        report.logs,
        report.outbound,
        now,
    );
    let _ = shared
        .recorder
        .send(Recorded::Finished {
            result: Box::new(result),
            retry: retry.map(Box::new),
            run: RunFacts::of_run(claimed, runnable.budgets),
        })
        .await;
}

/// Most results written in one transaction.
const RECORD_BATCH: usize = 1024;

/// Writes results in batches. Ends when every sender is gone: the dispatcher, the
/// lease keeper and every runner hold one through `Shared`.
async fn record(services: Services, mut results: mpsc::Receiver<Recorded>) {
    let mut batch = Vec::with_capacity(RECORD_BATCH);
    while results.recv_many(&mut batch, RECORD_BATCH).await > 0 {
        let mut finished = Vec::with_capacity(batch.len());
        let mut runs = Vec::with_capacity(batch.len());
        let mut retries = Vec::new();
        let mut requeue = Vec::new();
        for item in batch.drain(..) {
            match item {
                Recorded::Finished { result, retry, run } => {
                    if let Some(retry) = retry {
                        retries.push(Retry {
                            failed: result.id.clone(),
                            next: *retry,
                        });
                    }
                    finished.push(*result);
                    runs.push(run);
                }
                Recorded::Requeue(id) => requeue.push(id),
            }
        }
        if !requeue.is_empty() {
            retry_forever("requeue executions", || {
                services.store.requeue_executions(&requeue)
            })
            .await;
            let _ = services.queue.push(&requeue).await;
        }
        if finished.is_empty() {
            continue;
        }
        // A failure and its next attempt are written in one transaction.
        let recorded = retry_forever("record results", || {
            services.store.record_results(&finished, &retries)
        })
        .await;
        let recorded: std::collections::HashSet<&str> =
            recorded.iter().map(String::as_str).collect();
        services.telemetry.record_finished(
            finished
                .iter()
                .zip(&runs)
                .filter(|(result, _)| recorded.contains(result.id.as_str()))
                .map(|(result, run)| FinishedRun {
                    module: &run.module,
                    handler: &run.handler,
                    status: result.status,
                    duration_ms: run.ran.then_some(result.duration_ms),
                    fuel_consumed: result.fuel_consumed,
                }),
        );
        for (result, run) in finished.iter().zip(&runs) {
            if !recorded.contains(result.id.as_str()) {
                continue;
            }
            for tally in &result.outbound {
                services.telemetry.record_outbound(&run.module, tally);
            }
        }
        for result in &finished {
            if recorded.contains(result.id.as_str()) {
                services.logs.finish(&result.id, result.status);
            } else {
                // Not running under this node any more: its lease expired (the node was
                // cut off from the database for longer than the lease) and it was
                // settled without this result. Said loudly, since the run's work is lost.
                tracing::warn!(
                    execution = %result.id,
                    status = result.status.as_str(),
                    "result refused: the execution was no longer running here (its lease expired and it was settled meanwhile)"
                );
            }
        }
        count_fuel(&services, &finished, &runs, &recorded).await;
        for retry in retries
            .iter()
            .filter(|retry| recorded.contains(retry.failed.as_str()))
        {
            let _ = services
                .queue
                .push_delayed(&retry.next.id, retry.next.run_after)
                .await;
        }
    }
}

/// Adds the fuel of recorded runs to their modules' fuel budgets. After the results'
/// commit, not in it: should this fail (or the node die in between), a run's fuel goes
/// uncounted, which errs towards letting a module run rather than stopping it wrongly.
async fn count_fuel(
    services: &Services,
    finished: &[ExecutionResult],
    runs: &[RunFacts],
    recorded: &std::collections::HashSet<&str>,
) {
    let now = now_millis();
    for (result, run) in finished.iter().zip(runs) {
        let Some(budgets) = &run.budgets else {
            continue;
        };
        if !recorded.contains(result.id.as_str()) {
            continue;
        }
        let counted = budgets
            .record_fuel(services.store.as_ref(), result.fuel_consumed, now)
            .await;
        if let Err(err) = counted {
            tracing::warn!(execution = %result.id, module = %run.module, error = %err, "could not count the run's fuel against its module's budgets");
        }
    }
}

/// Repeats a database write until it succeeds: results must not be lost while the
/// database is briefly unavailable (the executions stay leased meanwhile).
async fn retry_forever<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, crate::store::StoreError>>,
{
    let mut delay = Duration::from_millis(100);
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(err) => {
                tracing::warn!(error = %err, "could not {what}; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Renews the leases of executions running here and relays cancel requests made on
/// other nodes.
async fn keep_leases(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let services = &shared.services;
    let renew_every = shared.settings.lease / 3;
    let mut last_renewal = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.changed() => {}
        }
        let ids = services.running.ids();
        if ids.is_empty() {
            continue;
        }
        if let Ok(cancelled) = services.store.cancel_requested(&ids).await {
            for id in cancelled {
                services.running.cancel(&id);
            }
        }
        if last_renewal.elapsed() >= renew_every {
            let until = now_millis() + shared.settings.lease.as_millis() as Millis;
            match services
                .store
                .renew_leases(&ids, &shared.settings.node_id, until)
                .await
            {
                Ok(()) => last_renewal = tokio::time::Instant::now(),
                // Tried again at the next tick, not a renewal period later: once the
                // database answers again, this node's leases are renewed before other
                // nodes' reconcilers judge them (they wait a while after an outage).
                Err(err) => tracing::warn!(error = %err, "could not renew leases"),
            }
        }
    }
}

/// How long the writer of beginnings gathers them before writing. A run that ends
/// within it is recorded with its result and never needs the mark; one longer is marked
/// about this long after its start. It bounds the window in which a node's death makes a
/// run that did begin look as if it never had, so that it runs again as the same
/// attempt instead of failing.
const BEGINNINGS_GATHERED_FOR: Duration = Duration::from_millis(50);

/// Writes down which executions' handlers began, in batches, off the path to the
/// handlers: from then on a lost lease fails them (and retries them if their job
/// allows) instead of putting them back in the queue.
async fn record_beginnings(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let services = &shared.services;
    loop {
        tokio::select! {
            () = services.running.some_began() => {}
            _ = stop.changed() => return,
        }
        tokio::time::sleep(BEGINNINGS_GATHERED_FOR).await;
        let began = services.running.began_unrecorded();
        if began.is_empty() {
            continue;
        }
        match services.store.mark_handlers_began(&began).await {
            Ok(()) => services.running.began_recorded(&began),
            Err(err) => {
                tracing::warn!(error = %err, "could not record which runs began; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                // Still unrecorded: taken again at once.
                services.running.retry_beginnings();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_temporary_failures_and_timeouts_are_retried() {
        use crate::domain::FailureKind;
        let failed = |kind| Outcome::Failed {
            kind,
            message: String::new(),
        };
        assert!(is_retryable(&failed(FailureKind::Transient)));
        assert!(is_retryable(&Outcome::TimedOut {
            timeout: Duration::from_secs(1)
        }));
        assert!(!is_retryable(&failed(FailureKind::Permanent)));
        assert!(!is_retryable(&failed(FailureKind::OutOfFuel)));
        assert!(!is_retryable(&Outcome::Cancelled));
    }
}
