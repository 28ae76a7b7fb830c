//! Durable state: modules, jobs, executions and their logs, events, module key-value
//! data, module metric series, and the registry of nodes and the leases they hold. The
//! database is the source of truth for every execution; queues only carry ids.
//!
//! Functions are named by the state change they make and return domain types. Each
//! backend (SQLite embedded, PostgreSQL distributed) implements [`Store`] and passes the
//! same behavioural tests. Knows nothing of wasm or HTTP.

/// The `input` of an execution as read back: its own column, or, when the input is
/// stored once in `execution_inputs` (see [`INLINE_INPUT_MAX`]), that body. `CASE` is
/// evaluated lazily by both databases, so a row with its input inline (nearly every
/// row, and every row of the hot path's benchmarks) costs one `IS NULL` test, no
/// lookup. Written for a query whose only `executions` is unaliased; the subquery's
/// `input_hash` is the outer row's, `execution_inputs` having no column of that name.
macro_rules! execution_input {
    () => {
        "CASE WHEN input_hash IS NULL THEN input \
         ELSE (SELECT i.body FROM execution_inputs i WHERE i.hash = input_hash) END AS input"
    };
}

pub(crate) mod alerts;
pub(crate) mod auth;
#[cfg(test)]
mod callers;
mod convert;
mod postgres;
mod shared;
mod sql;
mod sqlite;
#[cfg(test)]
pub(crate) mod tests;

pub(crate) use auth::AuthStore;
pub(crate) use postgres::PostgresStore;
pub use sqlite::SqliteStore;

use crate::domain::budget::{Budget, BudgetCounter};
use crate::domain::endpoint::{Endpoint, EndpointCheck, UptimeCount};
use crate::domain::metrics::{MetricSeries, ModuleMetricsSummary, Rollup, SeriesAdmission};
use crate::domain::retention::{PrunePlan, Pruned};
use crate::domain::upload::{UploadOutcome, UploadRecord};
use crate::domain::usage::{OutboundRow, RouteOutbound, UsageQuery, UsageRow};
use crate::domain::{
    CodeApproval, Event, Execution, ExecutionResult, ExecutionStatus, Job, LogEntry, Manifest,
    Millis, ModuleRecord, ModuleStatus, ModuleVersion, NewExecution, NodeHeartbeat, Page,
    PoolState, PublisherKey, Uploader,
};

/// Why a storage call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule was violated; the message names what already exists.
    #[error("{0}")]
    Conflict(String),
    /// The database cannot serve now: the connection was lost or never came (pool
    /// timeout, I/O, closed pool), it is shutting down or out of resources, it refused a
    /// write as read-only, or a transaction lost to a concurrent one. Retrying later may
    /// succeed.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database answered, but refused the statement (a constraint other than
    /// uniqueness, a schema mismatch, a bug in a query). Retrying will not help.
    #[error("database error: {0}")]
    Database(String),
    /// Stored data could not be read back (a bug or a hand-edited row).
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

/// Crash injection for tests: fails the operation at a named point between two steps of
/// one transaction, as a lost connection or a killed process would, when the operation
/// concerns an execution a test armed the point for (so tests running in parallel do not
/// trip each other's points). Compiled to nothing outside tests.
#[inline]
fn failpoint<'a>(
    point: &str,
    executions: impl IntoIterator<Item = &'a str>,
) -> Result<(), StoreError> {
    #[cfg(test)]
    if failpoints::armed(point, executions) {
        return Err(StoreError::Database(format!("fail point `{point}`")));
    }
    #[cfg(not(test))]
    let _ = (point, executions.into_iter());
    Ok(())
}

#[cfg(test)]
pub(crate) mod failpoints {
    use std::sync::Mutex;

    static ARMED: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

    /// Makes `point` fail every operation concerning `execution` until disarmed.
    pub(crate) fn arm(point: &str, execution: &str) {
        let mut armed = ARMED.lock().unwrap_or_else(|e| e.into_inner());
        armed.push((point.to_owned(), execution.to_owned()));
    }

    pub(crate) fn disarm(point: &str, execution: &str) {
        let mut armed = ARMED.lock().unwrap_or_else(|e| e.into_inner());
        armed.retain(|(p, e)| !(p == point && e == execution));
    }

    pub(super) fn armed<'a>(point: &str, executions: impl IntoIterator<Item = &'a str>) -> bool {
        let armed = ARMED.lock().unwrap_or_else(|e| e.into_inner());
        executions
            .into_iter()
            .any(|id| armed.iter().any(|(p, e)| p == point && e == id))
    }
}

/// The longest input, in bytes of JSON text, stored in an execution's own row. A longer
/// one is written once to `execution_inputs`, keyed by its SHA-256, and rows refer to
/// it (migration 0017 explains the tables).
///
/// The threat is amplification: a bulk request of 15 bytes creating 10,000 executions
/// (the most one request may) of a job whose stored input is 1 MiB (the most a body may
/// carry) wrote 10 GiB. With the limit, inputs copied into rows amount to at most
/// `10,000 × 1 KiB`, 10 MiB a request, next to the 2–3 MiB its rows take anyway.
/// Nearly every real input (`null`, `{}`, a few ids or settings) is far below it, and
/// those keep the hot path exactly as it was: no hash, no second write, no lookup when
/// a claim reads them back. Above it, one hash per distinct input (SHA-256 runs at
/// several hundred MB/s, so 1 MiB costs a few milliseconds) and one
/// `INSERT ... ON CONFLICT DO NOTHING` per batch.
pub(crate) const INLINE_INPUT_MAX: usize = 1024;

/// Expired idempotency keys each keyed request deletes, at most. A request takes one key
/// and deletes up to this many expired ones in the same transaction, so expired keys
/// are cleared far faster than keys are taken and the table stays near the keys of the
/// last expiry period, with a bounded cost per request (one walk of the expiry index).
pub(crate) const EXPIRED_KEYS_PER_REQUEST: i64 = 32;

/// A client's key for one request that creates manual runs, so that a retry of it (say,
/// after a timeout that hid whether it was carried out) creates nothing new.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// The client's key, as it sent it.
    pub key: String,
    /// A digest of what the request asked (route, job, inputs): a request under the same
    /// key must ask the same to be answered as a retry.
    pub fingerprint: String,
    /// Until when the key holds; from then on it is free for a new request.
    pub expires_at: Millis,
}

/// What a request for manual runs did.
#[derive(Debug, Clone, PartialEq)]
pub enum ManualOutcome<T> {
    /// The runs were created.
    Created(T),
    /// The job cannot run now (gone, disabled, or its module gone or disabled); nothing
    /// was created (the caller reads why).
    NotRunnable,
    /// An earlier request under the same key asked the same and created these runs;
    /// nothing new was created.
    Replayed(EarlierRuns),
    /// An earlier request under the same key, still unexpired, asked something else;
    /// nothing was created.
    KeyReused,
}

impl<T> ManualOutcome<T> {
    /// The runs, if they were created now.
    pub fn created(self) -> Option<T> {
        match self {
            Self::Created(runs) => Some(runs),
            Self::NotRunnable | Self::Replayed(_) | Self::KeyReused => None,
        }
    }

    /// The same outcome with the created runs converted by `convert`.
    pub(crate) fn try_map<U, E>(
        self,
        convert: impl FnOnce(T) -> Result<U, E>,
    ) -> Result<ManualOutcome<U>, E> {
        Ok(match self {
            Self::Created(runs) => ManualOutcome::Created(convert(runs)?),
            Self::NotRunnable => ManualOutcome::NotRunnable,
            Self::Replayed(earlier) => ManualOutcome::Replayed(earlier),
            Self::KeyReused => ManualOutcome::KeyReused,
        })
    }
}

/// The runs an earlier request under an idempotency key created, as it was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EarlierRuns {
    /// In the order of that request's inputs.
    pub ids: Vec<String>,
    /// `RUNNING` if they were started on the node that took the request, `QUEUED`
    /// otherwise (what they were then, not what they are now).
    pub status: ExecutionStatus,
}

/// What inputs and idempotency keys take in a database, for tests to see that a large
/// input is stored once and expired keys go.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageCounts {
    /// Bytes of input text in `executions` rows.
    pub inline_input_bytes: i64,
    /// Rows of `execution_inputs`, and the bytes of their bodies.
    pub stored_inputs: i64,
    pub stored_input_bytes: i64,
    /// Rows of `idempotency_keys`, expired or not.
    pub idempotency_keys: i64,
}

/// Filters for listing executions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecutionFilter {
    pub job_id: Option<String>,
    pub status: Option<ExecutionStatus>,
}

/// What a cancel request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelEffect {
    /// It was queued: now `CANCELLED`, it will never start.
    CancelledQueued,
    /// It is running: flagged; the worker running it interrupts it.
    FlaggedRunning,
    /// It had already ended; nothing changed.
    AlreadyFinal(ExecutionStatus),
    /// No such execution.
    NotFound,
}

/// Queued executions, as [`Store::count_queued`] counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueuedCount {
    /// Due now: waiting for a worker.
    pub due: u64,
    /// Due later: waiting out a retry's backoff.
    pub delayed: u64,
}

/// An execution a worker now owns, with what it needs to run it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedExecution {
    pub id: String,
    pub job_id: String,
    /// The module and the module's job it runs, as the execution was created.
    pub module: String,
    pub job: String,
    pub attempt: u32,
    pub trigger: crate::domain::Trigger,
    pub retry_of: Option<String>,
    /// JSON text.
    pub input: String,
    pub scheduled_at: Millis,
    /// Not before this time: when it became due (a retry's backoff ends here).
    pub run_after: Millis,
    /// The revision of its job's definition at the claim; `None` when the job is gone.
    pub job_revision: Option<i64>,
}

/// The next attempt of a failed execution, created only together with the failure.
#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    /// The execution whose failure it follows.
    pub failed: String,
    pub next: NewExecution,
}

/// What settling an execution whose lease expired did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Its handler never began: back in the queue, same attempt.
    Requeued,
    /// Its handler never began and a cancel was asked: `CANCELLED`.
    Cancelled,
    /// Its handler began: `FAILED`, with its retry if one was given.
    Failed,
    /// It is no longer running with an expired lease (renewed, or settled already).
    NotExpired,
}

/// A manual run to queue.
#[derive(Debug, Clone, PartialEq)]
pub struct ManualRun {
    pub id: String,
    /// JSON text; `None` for the job's stored input.
    pub input: Option<String>,
}

/// Who uploaded a module version, and whether its bytes are approved as installed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VersionUpload {
    pub uploaded_by: Option<Uploader>,
    /// The publisher key id the upload's signature named, verified or not.
    pub signed_by: Option<String>,
    /// Set when the uploader may vouch for the code (an admin), or a pinned key signed
    /// it (`approval.key`): then the version's code is approved. `None`: it waits.
    pub approval: Option<CodeApproval>,
}

/// The fencing token of one tenure of a lease: it grows by one each time the lease
/// changes hands and never goes back, so a write carrying an older token is known to
/// come from a holder that has since lost the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseToken(pub u64);

/// The durable state of a Runcell deployment.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Answers when the database is reachable (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// What inputs and idempotency keys take now; tests only.
    #[cfg(test)]
    async fn storage_counts(&self) -> Result<StorageCounts, StoreError>;

    // ---- usage -----------------------------------------------------------------------

    /// What runs consumed in `query`'s window, from the rollups: one row per group and
    /// point, ordered by group then point.
    async fn usage_runs(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError>;

    /// The outbound requests of runs in `query`'s window, from the rollups: one row per
    /// module, host and point, ordered so.
    async fn usage_outbound(&self, query: &UsageQuery) -> Result<Vec<OutboundRow>, StoreError>;

    /// Counts outbound requests made outside runs (by module routes) in the outbound
    /// rollups, each `(module, minute, tallies)` added to its points in one commit.
    async fn count_route_outbound(&self, requests: &[RouteOutbound]) -> Result<(), StoreError>;

    // ---- retention -------------------------------------------------------------------

    /// Deletes one batch of what `plan` says has expired: at most `limit` rows of each
    /// kind (final executions with their logs, log lines, usage rows of each step,
    /// stored inputs nothing refers to). Never touches an execution that is not final.
    /// Called until it deletes nothing.
    async fn prune_history(&self, plan: &PrunePlan, limit: u32) -> Result<Pruned, StoreError>;

    /// Gives space freed by deletions back to the file system, a bounded amount per
    /// call; `true` while there is more. Called after pruning.
    async fn reclaim_space(&self) -> Result<bool, StoreError>;

    // ---- modules -------------------------------------------------------------------

    /// Records an uploaded version and makes it the module's current one, creating the
    /// module (`ENABLED`) on its first upload. Uploading bytes the module already has
    /// makes that version current again without a duplicate: it keeps its first upload's
    /// time and uploader, and its approval, which `upload.approval` gives it if it had
    /// none. An approval by a publisher key counts only while the key is pinned to the
    /// module (checked in the same transaction). Atomic: a failure leaves nothing behind.
    async fn install_module_version(
        &self,
        manifest: &Manifest,
        content_hash: &str,
        wasm: &[u8],
        upload: &VersionUpload,
        now: Millis,
    ) -> Result<ModuleRecord, StoreError>;

    async fn get_module(&self, name: &str) -> Result<Option<ModuleRecord>, StoreError>;

    /// All modules, by name.
    async fn list_modules(&self) -> Result<Vec<ModuleRecord>, StoreError>;

    /// Every version ever uploaded, newest first.
    async fn list_module_versions(&self, name: &str) -> Result<Vec<ModuleVersion>, StoreError>;

    /// Enables or disables a module; `None` if it does not exist.
    async fn set_module_status(
        &self,
        name: &str,
        status: ModuleStatus,
        now: Millis,
    ) -> Result<Option<ModuleRecord>, StoreError>;

    /// Records that administrator `approver` approved `capabilities` for module `name`,
    /// granted it `outbound_grant` (`None`: the outbound hosts its current version asks
    /// for), and approved the code of its version `content_hash` (kept as it was if
    /// already approved), only while that version is current: `Conflict` if another
    /// version became current meanwhile (an approval must never reach code its approver
    /// did not see); `None` if the module does not exist.
    async fn approve_module_version(
        &self,
        name: &str,
        content_hash: &str,
        capabilities: &crate::domain::Capabilities,
        outbound_grant: Option<&[String]>,
        approver: &str,
        now: Millis,
    ) -> Result<Option<ModuleRecord>, StoreError>;

    /// Pins a publisher key to module `name`, or updates the comment of a key already
    /// pinned; returns the key as stored, `None` if the module does not exist.
    async fn pin_publisher_key(
        &self,
        name: &str,
        key: &PublisherKey,
    ) -> Result<Option<PublisherKey>, StoreError>;

    /// Unpins key `key_id` from module `name` and withdraws the approvals its signatures
    /// gave (those versions wait for an admin again); `false` if it was not pinned.
    async fn unpin_publisher_key(&self, name: &str, key_id: &str) -> Result<bool, StoreError>;

    /// The keys pinned to module `name`, oldest first.
    async fn publisher_keys(&self, name: &str) -> Result<Vec<PublisherKey>, StoreError>;

    /// Removes a module, its versions, its key-value data and, with `with_jobs`, the jobs
    /// that use it (their executions stay as history). `false` if it did not exist.
    async fn delete_module(&self, name: &str, with_jobs: bool) -> Result<bool, StoreError>;

    /// The component bytes with this content hash.
    async fn module_wasm(&self, content_hash: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// The jobs that use module `name`, by name.
    async fn jobs_using_module(&self, name: &str) -> Result<Vec<Job>, StoreError>;

    // ---- uploads being followed -----------------------------------------------------

    /// Records an upload as it arrives, and forgets those made longer ago than
    /// [`crate::domain::upload::UPLOAD_KEPT_FOR_MS`].
    async fn create_upload(&self, upload: &UploadRecord) -> Result<(), StoreError>;

    /// Records how upload `id` ended; `false` if it is unknown or already finished.
    async fn finish_upload(&self, id: &str, outcome: &UploadOutcome) -> Result<bool, StoreError>;

    /// Upload `id`, if it is still remembered.
    async fn get_upload(&self, id: &str) -> Result<Option<UploadRecord>, StoreError>;

    // ---- consumption budgets ---------------------------------------------------------

    /// Replaces module `name`'s budgets; `None` if the module does not exist.
    async fn set_module_budgets(
        &self,
        name: &str,
        budgets: &[Budget],
        now: Millis,
    ) -> Result<Option<ModuleRecord>, StoreError>;

    /// Charges each counter its amount, all or none: refused (returning the index of the
    /// first counter that refused) when one of them already reached its limit. Atomic
    /// across nodes: concurrent charges never take a counter past its limit. An amount of
    /// 0 only checks that the counter is below its limit.
    async fn charge_budgets(
        &self,
        charges: &[(BudgetCounter, i64)],
    ) -> Result<Option<usize>, StoreError>;

    /// Adds each amount to its counter, past the limit if need be (what was used).
    async fn add_budget_usage(&self, amounts: &[(BudgetCounter, i64)]) -> Result<(), StoreError>;

    /// What each counter (all of one module) used so far, in the order given.
    async fn budget_usage(&self, counters: &[BudgetCounter]) -> Result<Vec<u64>, StoreError>;

    /// Deletes the counters of windows that started before `before`; how many.
    async fn prune_budget_counters(&self, before: Millis) -> Result<u64, StoreError>;

    // ---- jobs ----------------------------------------------------------------------

    /// Creates a job; `Conflict` if the name is taken.
    async fn insert_job(&self, job: &Job) -> Result<(), StoreError>;

    async fn get_job(&self, id: &str) -> Result<Option<Job>, StoreError>;

    /// Jobs by id (missing ids are skipped).
    async fn get_jobs(&self, ids: &[String]) -> Result<Vec<Job>, StoreError>;

    /// Jobs ordered by creation, `limit` after the job with id `cursor`.
    async fn list_jobs(&self, cursor: Option<&str>, limit: u32) -> Result<Page<Job>, StoreError>;

    /// Replaces a job's definition; `false` if it does not exist, `Conflict` if renamed
    /// onto another job's name.
    async fn update_job(&self, job: &Job) -> Result<bool, StoreError>;

    async fn delete_job(&self, id: &str) -> Result<bool, StoreError>;

    /// Enabled jobs with a schedule whose `next_run_at` is at or before `now`.
    async fn due_scheduled_jobs(&self, now: Millis) -> Result<Vec<Job>, StoreError>;

    /// Sets when a scheduled job fires next.
    async fn set_job_next_run(
        &self,
        id: &str,
        next_run_at: Option<Millis>,
    ) -> Result<(), StoreError>;

    /// Enabled jobs with an `on_event` pattern.
    async fn event_subscribed_jobs(&self) -> Result<Vec<Job>, StoreError>;

    // ---- executions ----------------------------------------------------------------

    /// Creates executions in state `QUEUED` in one transaction and returns the ids that
    /// were created: a row whose (job, cron tick) already exists is skipped, so a tick
    /// fires once however many schedulers try.
    async fn enqueue_executions(
        &self,
        executions: &[NewExecution],
    ) -> Result<Vec<String>, StoreError>;

    /// Queues manual runs of job `job_id` in one transaction, reading the job as it
    /// writes (one round trip where reading first would take three): only while the job
    /// is enabled and its module exists and is enabled. Each run takes the job's module,
    /// job name and, without an input of its own, its stored input (by reference when it
    /// is large: never copied per run). Returns the ids created in the order given, or
    /// [`ManualOutcome::NotRunnable`] when the job cannot run now and nothing was queued.
    ///
    /// With `key`, the key is taken in the same transaction, with the ids it answers:
    /// a request under a key already taken and unexpired creates nothing and gets the
    /// earlier runs ([`ManualOutcome::Replayed`]) if it asks the same (same
    /// fingerprint), [`ManualOutcome::KeyReused`] otherwise. Of concurrent requests
    /// under one key exactly one creates runs; the others wait for it and replay it. A
    /// request that creates nothing (the job cannot run) does not take the key. Each
    /// keyed request also deletes a few expired keys.
    async fn enqueue_manual(
        &self,
        job_id: &str,
        runs: &[ManualRun],
        now: Millis,
        key: Option<&IdempotencyKey>,
    ) -> Result<ManualOutcome<Vec<String>>, StoreError>;

    /// Creates manual runs as [`Store::enqueue_manual`] does, but already `RUNNING` on
    /// `node_id` with a lease until `lease_until`, as if queued and claimed at `now`: for
    /// a node with a free worker for each run, which starts them itself without a trip
    /// through the queue and a claim. Returns them as claimed, in the order given; the
    /// other outcomes are those of [`Store::enqueue_manual`], and create nothing.
    ///
    /// Like a claim, the rows may not yet be durable when this returns: start them, then
    /// await [`Store::flush`] before telling anyone they exist.
    async fn start_manual(
        &self,
        job_id: &str,
        runs: &[ManualRun],
        now: Millis,
        node_id: &str,
        lease_until: Millis,
        key: Option<&IdempotencyKey>,
    ) -> Result<ManualOutcome<Vec<ClaimedExecution>>, StoreError>;

    /// Waits until every write committed before the call survives a crash of the
    /// database server.
    async fn flush(&self) -> Result<(), StoreError>;

    /// Moves the given executions from `QUEUED` to `RUNNING` for `node_id`, holding a
    /// lease until `lease_until`. Only rows still queued, due (`run_after <= now`) and
    /// not cancelled are claimed; the rest are skipped, so a duplicate delivery never
    /// runs an execution twice.
    ///
    /// Each claimed row carries its job's current revision, so a caller holding
    /// definitions knows which it must read again.
    async fn claim_executions(
        &self,
        ids: &[String],
        node_id: &str,
        now: Millis,
        lease_until: Millis,
    ) -> Result<Vec<ClaimedExecution>, StoreError>;

    /// Extends the lease of running executions held by `node_id`.
    async fn renew_leases(
        &self,
        ids: &[String],
        node_id: &str,
        lease_until: Millis,
    ) -> Result<(), StoreError>;

    /// Records final results and their logs, and creates the next attempt of each
    /// recorded failure in `retries`, all in one transaction: a crash cannot leave a
    /// failure recorded without its retry. Only rows still `RUNNING` are updated; returns
    /// the ids that were (a retry whose failure was not recorded is not created).
    async fn record_results(
        &self,
        results: &[ExecutionResult],
        retries: &[Retry],
    ) -> Result<Vec<String>, StoreError>;

    /// Notes that the handlers of running executions `ids` began (the worker calls it in
    /// batches, about every half second): from then on a lost lease fails them rather
    /// than putting them back in the queue.
    async fn mark_handlers_began(&self, ids: &[String]) -> Result<(), StoreError>;

    /// Puts running executions back to `QUEUED` (graceful shutdown gave up on them).
    async fn requeue_executions(&self, ids: &[String]) -> Result<(), StoreError>;

    async fn get_execution(&self, id: &str) -> Result<Option<Execution>, StoreError>;

    /// Executions newest first, `limit` after the one with id `cursor`.
    async fn list_executions(
        &self,
        filter: &ExecutionFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Execution>, StoreError>;

    /// Log lines of an execution with `seq > after`, in order, at most `limit`.
    async fn execution_logs(
        &self,
        id: &str,
        after: Option<u32>,
        limit: u32,
    ) -> Result<Vec<LogEntry>, StoreError>;

    /// Cancels a queued execution or flags a running one.
    async fn cancel_execution(&self, id: &str, now: Millis) -> Result<CancelEffect, StoreError>;

    /// Ids of running executions that have been asked to stop.
    async fn cancel_requested(&self, ids: &[String]) -> Result<Vec<String>, StoreError>;

    /// Queued executions due at `now`, oldest first (the reconciler re-enqueues them).
    async fn due_queued_executions(
        &self,
        now: Millis,
        limit: u32,
    ) -> Result<Vec<String>, StoreError>;

    /// How many executions are queued, by whether they are due at `now`; read at each
    /// scrape of `/metrics`. It walks the partial index of queued rows, so it costs what
    /// the backlog holds, not what the history does.
    async fn count_queued(&self, now: Millis) -> Result<QueuedCount, StoreError>;

    /// The state of this store's connection pools, from memory (no I/O).
    fn pools(&self) -> Vec<PoolState>;

    /// Running executions whose lease expired before `now`.
    async fn expired_executions(
        &self,
        now: Millis,
        limit: u32,
    ) -> Result<Vec<Execution>, StoreError>;

    /// Running executions held by node `node_id`, whatever their lease (a node that
    /// restarts under the same id takes back what its previous process held).
    async fn executions_held_by(
        &self,
        node_id: &str,
        limit: u32,
    ) -> Result<Vec<Execution>, StoreError>;

    /// Settles running execution `id` if its lease expired before `expired_before`, in
    /// one transaction. One whose handler never began goes back to `QUEUED` with the same
    /// attempt (or ends `CANCELLED` if a cancel was asked meanwhile): it did not fail, it
    /// never ran. One whose handler began is `FAILED` (`LEASE_EXPIRED`, with `error`,
    /// finished at `now`), and `retry`, if given, is created with it.
    async fn settle_expired_execution(
        &self,
        id: &str,
        expired_before: Millis,
        now: Millis,
        error: &str,
        retry: Option<&NewExecution>,
    ) -> Result<Settled, StoreError>;

    // ---- events --------------------------------------------------------------------

    async fn insert_event(&self, event: &Event) -> Result<(), StoreError>;

    /// The depth of the event that started execution `id` (or the first attempt it
    /// retries); `None` when no event did, or the execution is gone.
    async fn starting_event_depth(&self, execution_id: &str) -> Result<Option<u32>, StoreError>;

    /// Events newest first, optionally of one topic.
    async fn list_events(
        &self,
        topic: Option<&str>,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Event>, StoreError>;

    // ---- module data ---------------------------------------------------------------

    async fn kv_get(&self, module: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    async fn kv_set(
        &self,
        module: &str,
        key: &str,
        value: &[u8],
        now: Millis,
    ) -> Result<(), StoreError>;
    async fn kv_delete(&self, module: &str, key: &str) -> Result<(), StoreError>;
    async fn kv_list_keys(
        &self,
        module: &str,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<String>, StoreError>;

    // ---- module metrics ----------------------------------------------------------------

    /// The id of `module`'s series of metric `name` with `labels` (as
    /// [`labels_text`](crate::domain::metrics::labels_text) writes them), created at
    /// `now` if it is new and the module has fewer than `max_series` series. Otherwise
    /// [`SeriesAdmission::Refused`], and the refused sample is counted (as
    /// [`Store::count_refused_metric_sample`] does) in the same transaction. Exact
    /// across nodes: two nodes admitting series of one module at once take turns.
    async fn admit_metric_series(
        &self,
        module: &str,
        name: &str,
        labels: &str,
        now: Millis,
        max_series: u32,
    ) -> Result<SeriesAdmission, StoreError>;

    /// Counts a sample of `module` refused at `now` because it would have started a
    /// series past the module's bound.
    async fn count_refused_metric_sample(
        &self,
        module: &str,
        now: Millis,
    ) -> Result<(), StoreError>;

    /// Adds samples `(series id, value, time)` to the minute, hour and day rollups of
    /// their series, all or none. `false`, writing nothing, when one of the series no
    /// longer exists (pruned since its id was read).
    async fn add_metric_samples(&self, samples: &[(i64, f64, Millis)]) -> Result<bool, StoreError>;

    /// `module`'s series, of every metric or only of `name`, by name and labels, each
    /// with its latest value.
    async fn metric_series(
        &self,
        module: &str,
        name: Option<&str>,
    ) -> Result<Vec<MetricSeries>, StoreError>;

    /// Each module that has metric series or refused samples, by name, or only
    /// `module`; a module with neither is absent.
    async fn metric_summaries(
        &self,
        module: Option<&str>,
    ) -> Result<Vec<ModuleMetricsSummary>, StoreError>;

    /// The rollups of width `width` (one of
    /// [`ROLLUP_WIDTHS`](crate::domain::metrics::ROLLUP_WIDTHS)) of series `series`
    /// that start in `[from, to)`, as `(series id, start, rollup)` ordered by series and
    /// start.
    async fn metric_rollups(
        &self,
        series: &[i64],
        width: Millis,
        from: Millis,
        to: Millis,
    ) -> Result<Vec<(i64, Millis, Rollup)>, StoreError>;

    // ---- alerts ----------------------------------------------------------------------

    /// Alerting's rules, channels, silences, history and outbox.
    fn alerts(&self) -> &dyn alerts::AlertStore;

    // ---- endpoint monitors -----------------------------------------------------------

    /// Creates an endpoint monitor; `Conflict` if the name is taken.
    async fn insert_endpoint(&self, endpoint: &Endpoint) -> Result<(), StoreError>;

    async fn get_endpoint(&self, id: &str) -> Result<Option<Endpoint>, StoreError>;

    /// Endpoints ordered by creation, `limit` after the one with id `cursor`.
    async fn list_endpoints(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Endpoint>, StoreError>;

    /// Replaces an endpoint's definition; `false` if it does not exist, `Conflict` if
    /// renamed onto another endpoint's name.
    async fn update_endpoint(&self, endpoint: &Endpoint) -> Result<bool, StoreError>;

    /// Removes an endpoint and its checks; `false` if it did not exist.
    async fn delete_endpoint(&self, id: &str) -> Result<bool, StoreError>;

    /// Enabled endpoints whose next check is due at or before `now`, longest due first,
    /// at most `limit`.
    async fn due_endpoints(&self, now: Millis, limit: u32) -> Result<Vec<Endpoint>, StoreError>;

    /// The checker's claim, fenced like [`Store::advance_schedules`]: for each `(id, due,
    /// next)`, moves the endpoint's next check from `due` to `next` if it is still due
    /// at `due` and enabled, all in one transaction, only while `holder` holds `lease`
    /// with `token` unexpired at `now`. Returns the ids moved (each interval is claimed
    /// once, so it is checked once), or `None`, moving nothing, without the lease.
    async fn claim_endpoint_checks(
        &self,
        claims: &[(String, Millis, Millis)],
        lease: &str,
        holder: &str,
        token: LeaseToken,
        now: Millis,
    ) -> Result<Option<Vec<String>>, StoreError>;

    /// Records a check; `false`, writing nothing, when the endpoint already has one for
    /// that due time or no longer exists.
    async fn record_endpoint_check(&self, check: &EndpointCheck) -> Result<bool, StoreError>;

    /// An endpoint's checks due in `[from, to)`, newest first, at most `limit`, before
    /// the due time `cursor` (the `nextCursor` of the previous page).
    async fn endpoint_checks(
        &self,
        endpoint_id: &str,
        from: Millis,
        to: Millis,
        cursor: Option<Millis>,
        limit: u32,
    ) -> Result<Page<EndpointCheck>, StoreError>;

    /// For each of `since`, how many of the endpoint's checks were due since then and
    /// how many of them were up; in the order given.
    async fn endpoint_uptime(
        &self,
        endpoint_id: &str,
        since: &[Millis],
    ) -> Result<Vec<UptimeCount>, StoreError>;

    // ---- nodes and leases ------------------------------------------------------------

    /// Records a node's report of itself, replacing its previous one. Called by every
    /// node at start and then periodically.
    async fn heartbeat_node(&self, node: &NodeHeartbeat) -> Result<(), StoreError>;

    /// Every node that ever reported, by node id (a stable order for listings; the age
    /// of `last_heartbeat_at` tells which are alive).
    async fn list_nodes(&self) -> Result<Vec<NodeHeartbeat>, StoreError>;

    /// Takes or renews the lease `name` for `holder` until `now + ttl_ms`. Succeeds if
    /// the lease is free (never taken, released, or expired at `now`) or already held by
    /// `holder`; `None` while someone else holds it. A renewal, or a holder taking back
    /// its own expired lease that nobody took meanwhile, keeps the token; any other
    /// change of holder bumps it. Called by a would-be cron leader on every round, well
    /// within `ttl_ms` of the last.
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: Millis,
        ttl_ms: Millis,
    ) -> Result<Option<LeaseToken>, StoreError>;

    /// Who holds the lease `name` at `now`, if anyone.
    async fn lease_holder(&self, name: &str, now: Millis) -> Result<Option<String>, StoreError>;

    /// Gives up the lease `name` if `holder` holds it, so another may take it without
    /// waiting for it to expire (a leader shutting down). `false` if `holder` did not.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<bool, StoreError>;

    /// Sets the `next_run_at` of scheduled jobs, all in one transaction, only if the
    /// lease `lease` is still held by `holder` with `token` and unexpired at `now`:
    /// the cron leader's write, fenced so that a leader that lost its lease (paused,
    /// partitioned) cannot move schedules back under its successor. Returns `false`,
    /// changing nothing, if the lease is not held so. If a job appears twice, its last
    /// update wins; unknown jobs are skipped.
    async fn advance_schedules(
        &self,
        updates: &[(String, Option<Millis>)],
        lease: &str,
        holder: &str,
        token: LeaseToken,
        now: Millis,
    ) -> Result<bool, StoreError>;
}
