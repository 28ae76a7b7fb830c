//! The distributed backend: one PostgreSQL database shared by every node. Owns the SQL
//! for PostgreSQL and the mapping between rows and domain types; decides no policy (that
//! is the services' job).
//!
//! # Many nodes, one database
//!
//! Every statement is written for writers on other nodes at the same moment:
//!
//! - A claim locks the rows it takes with `FOR UPDATE SKIP LOCKED` and re-checks
//!   `status = 'QUEUED'` on the latest row version, so of two nodes handed the same id
//!   exactly one runs it, and neither waits for the other.
//! - A cron tick is an `INSERT ... ON CONFLICT DO NOTHING` against the unique
//!   (job, tick) index; enqueuers insert in one global order of those keys, so two
//!   schedulers firing overlapping ticks wait for each other instead of deadlocking.
//! - The cron leader's writes are fenced by its lease token (see `advance_schedules`).
//!
//! # The hot path in single statements
//!
//! Enqueue, claim and record (with its log lines) are each **one** statement per batch
//! of up to [`MAX_ROWS`] rows: every column travels as one array parameter and
//! `UNNEST` turns the arrays back into rows. The statement text is the same for every
//! batch size, so each connection prepares it once; and since a statement is atomic by
//! itself, a batch costs one round trip and one commit, with no `BEGIN` and `COMMIT`
//! around it.
//!
//! Measured on the 2-core reference machine, server on the same machine
//! (`hot_path_throughput_of_20000_executions`, release build, machine otherwise idle):
//! enqueue + claim + record without logs moves 15,000 to 17,800 executions per second
//! in batches of 1,000, 11,700 to 12,500 in batches of 200 and 6,000 to 9,200 in
//! batches of 50. Large batches are bound by the server's work per row: each execution
//! is written three times, never as a HOT update (its status is in index predicates),
//! so each write adds a heap tuple and an entry in the primary key, in
//! `executions_by_job` (about 15% of the server's time) and in a partial index. Small
//! batches are bound by the latency of a statement, so callers should batch.
//!
//! # Finding executions by a list of ids
//!
//! Statements that act on executions named by a list of ids, `id = ANY($1)` (claim,
//! renew, requeue), must be driven by the primary key: one index probe per id. Their
//! test of `status` would also let the planner pick a partial index
//! (`executions_queued_due`, `executions_running_lease`) and check every queued or
//! running row against the list instead, one by one in a generic plan: that is what
//! it chose on a backlog its statistics had not caught up with, and claiming 20,000
//! queued executions cost 0.5 s per batch of 1,000, against 14 ms by key. So those
//! statements write the test as `(status || '') = '...'`, which means the same but
//! matches no index predicate, leaving the primary key as the only index they can use
//! (the analogue of SQLite's unary `+` in the SQLite backend). Recording joins the
//! results as rows (`UPDATE ... FROM UNNEST`) and writes its test the same way: with a
//! plain `status = 'RUNNING'`, plans made while the table was nearly empty compared
//! every result of a batch with every running row, in a nested loop, or walked the
//! partial index, whose entries include every row version not yet vacuumed; a run of
//! 60,000 no-op executions slowed to 3,900/s. Finally, every connection runs with
//! `enable_seqscan = off`: each statement here has an index to use, and a full read of
//! `executions` is only ever chosen from statistics that lag a table grown in seconds.
//!
//! Missing statistics also misjudge a listing. A page of a job's executions, newest
//! first, is a walk down `executions_by_job` that stops after one page; but until
//! the table is first analyzed (in a new deployment, autovacuum's first pass comes a
//! minute or more into a burst), the planner's default estimates give the job a
//! handful of rows, and it gathers all of them through a bitmap of the index and
//! sorts them, for every page: 26 ms a page for a job 20,000 runs old (0.8 ms by the
//! walk), and 5.5 s of database time to page through 60,000. No statement here gains
//! from a bitmap (each reads one index in its order, or looks rows up by key), so
//! connections also run with `enable_bitmapscan = off`.
//!
//! # Durability
//!
//! Every statement but the claim commits as the server's `synchronous_commit` says (on,
//! by default): an execution reported created, or a result reported recorded, survives
//! a crash of the database server. Committing with `synchronous_commit = off` saves the
//! WAL flush (0.15–0.2 ms), but a crash could then undo commits already acknowledged:
//!
//! - an enqueue: an execution the API accepted, its id already on the queue, would
//!   vanish, so it is lost;
//! - a record: a finished run would fall back to `RUNNING` and be failed as
//!   `LEASE_EXPIRED`, so its result is lost;
//! - a claim: the row would fall back to `QUEUED`; the run's result is then refused
//!   (the row is no longer `RUNNING`) and the reconciler runs it again. No execution is
//!   lost, and a later synchronous commit of anything flushes the claim too (the WAL is
//!   one sequence), but a job with side effects runs twice.
//!
//! So only the claim can be asynchronous without losing an execution, at the price of
//! duplicate runs after a database crash, as after a node crash. It is, through a pool
//! of its own: the claim sits between `execute` and the handler's start, and at 500
//! executions/s its flush took 0.15 of the 1.1 ms from one to the other.
//!
//! A manual run started by the node that takes the request ([`Store::start_manual`]) is
//! claimed as it is created, so its insert goes through the same pool: the run starts
//! without waiting for the flush (0.15–0.4 ms on the machine of `BENCHMARKS.md`). The
//! caller then waits for [`Store::flush`] before it answers: a transactional WAL message
//! committed synchronously, whose flush covers every earlier commit. So an execution is
//! still reported created only once it is durable; a database crash in between loses a
//! run that has started, but the request that made it fails, so nobody was told it
//! exists. A role that may not call `pg_logical_emit_message` inserts durably instead.
//!
//! # Text
//!
//! PostgreSQL `TEXT` cannot hold NUL, which a guest may well print. Text that comes from
//! a run (log lines, errors, event topics, metric names) has NUL replaced by U+FFFD
//! rather than losing the whole record to an encoding error; key-value keys are bytes
//! (see the migration) and keep it.

mod auth;

use std::borrow::Cow;
use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{
    PgBindIterExt, PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow, Postgres,
};
use sqlx::{ConnectOptions, Connection, QueryBuilder, Row};

use super::convert::{
    StoredInput, approval_raced, claimed_in_given_order, code_approval, corrupt, db,
    earlier_request, in_given_order, input_hash, int, is_unique_violation, json_text,
    large_input_hash, last_update_per_job, page, page_fetch, parse_job_config, parse_level,
    parse_status, parse_trigger, run_ids_json, stored_inputs, uploader,
};
use super::{
    CancelEffect, ClaimedExecution, EXPIRED_KEYS_PER_REQUEST, ExecutionFilter, INLINE_INPUT_MAX,
    IdempotencyKey, LeaseToken, ManualOutcome, ManualRun, Retry, Settled, Store, StoreError,
    VersionUpload, failpoint,
};
use crate::domain::{
    Event, Execution, ExecutionResult, ExecutionStatus, Job, JobConfig, LogEntry, Manifest,
    MetricSample, Millis, ModuleRecord, ModuleStatus, ModuleVersion, NewExecution, NodeHeartbeat,
    Page, PublisherKey, now_millis,
};

/// Applied by [`PostgresStore::connect`]. Nodes starting together do not race on it:
/// sqlx 0.9's PostgreSQL migrator (`Migrator::run`, locking on by default) takes
/// `pg_advisory_lock` on a key derived from the database name before it reads the
/// applied versions and releases it after the last migration, so one node migrates and
/// the others wait, then find nothing left to do. The lock is a session lock, so it is
/// taken on a connection of its own that is closed afterwards: a migration that fails
/// half-way cannot leave the lock held by a pooled connection.
static MIGRATOR: Migrator = sqlx::migrate!("../migrations/postgres");

/// Connections per node. Each hot-path call is one short statement, so a handful keeps
/// the worker pool, the reconciler and the API busy; the database's `max_connections`
/// (100 by default) is shared by every node, so more per node would limit how many
/// nodes a deployment can have without buying throughput.
const MAX_CONNECTIONS: u32 = 8;

/// Connections for claims, besides [`MAX_CONNECTIONS`]: a node's dispatcher claims one
/// batch at a time; requests starting their runs here at once use the others.
const CLAIM_CONNECTIONS: u32 = 4;

/// How long connecting may take before `connect` gives up with a clear error, rather
/// than a node hanging at start on an unreachable or firewalled address.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Rows per statement. Arrays have no parameter limit, so this only bounds how many row
/// locks one statement holds and how large one message grows; per-statement overhead is
/// already negligible at a few hundred rows.
const MAX_ROWS: usize = 1_000;

/// Columns of `executions` read into [`Execution`], in one place for every query.
macro_rules! execution_columns {
    () => {
        concat!(
            "id, job_id, module, job, status, trigger, attempt, retry_of, ",
            execution_input!(),
            ", result, error, error_kind, scheduled_at, run_after, cron_tick, event_id, \
             created_at, started_at, finished_at, duration_ms, fuel_consumed, \
             memory_peak_bytes, node_id, cancel_requested, cpu_time_ms"
        )
    };
}

/// The `WITH` clause that stores a job's input (parameter `$input`) once when it is
/// large: `$hash` is its hash, NULL for an input kept inline only; `$now` the time. In
/// the statement that writes the job, whose foreign key is checked at its end, when the
/// body is there.
macro_rules! store_job_input {
    ($input:literal, $hash:literal, $now:literal) => {
        concat!(
            "WITH input AS ( \
                 INSERT INTO execution_inputs (hash, body, created_at) \
                 SELECT ",
            $hash,
            "::text, ",
            $input,
            ", ",
            $now,
            " WHERE ",
            $hash,
            "::text IS NOT NULL \
                 ON CONFLICT DO NOTHING \
             ) "
        )
    };
}

/// Columns of `jobs` read into [`Job`].
macro_rules! job_columns {
    () => {
        "id, name, module, job, schedule, input, enabled, max_attempts, timeout_ms, fuel, \
         memory_bytes, on_event, config, next_run_at, created_at, updated_at"
    };
}

/// A module joined with its current version, read into [`ModuleRecord`].
macro_rules! select_module {
    () => {
        "SELECT m.name AS name, m.status AS status, m.created_at AS created_at, \
                m.updated_at AS updated_at, m.approved_capabilities AS approved_capabilities, \
                v.version AS version, \
                v.content_hash AS content_hash, v.size_bytes AS size_bytes, \
                v.manifest AS manifest, v.uploaded_at AS uploaded_at, \
                v.uploaded_by AS uploaded_by, v.uploader_role AS uploader_role, \
                v.uploader_token AS uploader_token, v.signed_by AS signed_by, \
                v.approved_at AS approved_at, v.approved_by AS approved_by, \
                v.approved_key AS approved_key \
         FROM modules m \
         JOIN module_versions v ON v.module = m.name AND v.content_hash = m.current_hash"
    };
}

/// The PostgreSQL store of a distributed deployment.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// For claims only: their commits do not wait for the log to reach the disk (see
    /// "Durability" above).
    claims: PgPool,
    /// Whether the role may write the WAL message [`Store::flush`] waits on, so manual
    /// runs can be started through `claims`.
    flushes: bool,
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/database`)
    /// and brings its schema up to date. Fails within a few seconds, naming the server
    /// (never the password), if it cannot be reached.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|err| StoreError::Database(format!("invalid PostgreSQL URL: {err}")))?
            .application_name("runcell");
        let server = format!(
            "{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or(options.get_username())
        );
        let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, options.connect())
            .await
            .map_err(|_| {
                StoreError::Database(format!(
                    "cannot reach PostgreSQL at {server}: no answer within {}s",
                    CONNECT_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|err| {
                StoreError::Database(format!("cannot connect to PostgreSQL at {server}: {err}"))
            })?;
        let migrated = MIGRATOR.run(&mut conn).await;
        let flushes = sqlx::query_scalar::<_, bool>(
            "SELECT has_function_privilege('pg_logical_emit_message(boolean, text, text)', 'execute')",
        )
        .fetch_one(&mut conn)
        .await;
        // Closing ends the session, and with it the migration lock whatever happened.
        let _ = conn.close().await;
        migrated.map_err(|err| {
            StoreError::Database(format!("migrating PostgreSQL at {server}: {err}"))
        })?;
        let flushes = flushes.map_err(db)?;
        if !flushes {
            tracing::info!(
                "this role may not call pg_logical_emit_message; manual runs started at once wait for their insert to be durable"
            );
        }
        let pool_options = || {
            PgPoolOptions::new()
                .acquire_timeout(CONNECT_TIMEOUT)
                // A liveness ping before every use would double the round trips of the
                // hot path; a connection that died fails its statement and is discarded.
                .test_before_acquire(false)
        };
        let connect_error = |err: sqlx::Error| {
            StoreError::Database(format!("cannot connect to PostgreSQL at {server}: {err}"))
        };
        // See "Finding executions by a list of ids" above.
        let options = options.options([("enable_seqscan", "off"), ("enable_bitmapscan", "off")]);
        let claims = pool_options()
            .max_connections(CLAIM_CONNECTIONS)
            .connect_lazy_with(options.clone().options([("synchronous_commit", "off")]));
        let pool = pool_options()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await
            .map_err(connect_error)?;
        adopt_large_job_inputs(&pool).await?;
        Ok(Self {
            pool,
            claims,
            flushes,
        })
    }

    /// The rows of manual runs of `job_id`, created in one transaction, or why none were
    /// (see [`Store::enqueue_manual`]).
    async fn create_manual(
        &self,
        job_id: &str,
        runs: &[ManualRun],
        now: Millis,
        started_by: Option<(&str, Millis)>,
        key: Option<&IdempotencyKey>,
    ) -> Result<ManualOutcome<Vec<PgRow>>, StoreError> {
        let inputs = stored_inputs(runs.iter().map(|run| run.input.as_deref()));
        let mut created = Vec::with_capacity(runs.len());
        // Started runs are claimed: committed as claims are (see "Durability" above).
        let pool = if started_by.is_some() && self.flushes {
            &self.claims
        } else {
            &self.pool
        };
        let rows: Vec<_> = runs.iter().zip(&inputs.rows).collect();
        // The common case, one statement: atomic by itself.
        if runs.len() <= MAX_ROWS && inputs.bodies.is_empty() && key.is_none() {
            let mut conn = pool.acquire().await.map_err(db)?;
            created.extend(insert_manual(&mut conn, job_id, &rows, now, started_by).await?);
            return Ok(if created.is_empty() {
                ManualOutcome::NotRunnable
            } else {
                ManualOutcome::Created(created)
            });
        }
        let mut tx = pool.begin().await.map_err(db)?;
        if let Some(key) = key {
            let status = if started_by.is_some() {
                ExecutionStatus::Running
            } else {
                ExecutionStatus::Queued
            };
            if let Some(earlier) =
                take_idempotency_key(&mut tx, key, job_id, runs, status, now).await?
            {
                return Ok(earlier);
            }
        }
        // A statement of their own, before the runs: a body written by a `WITH` clause
        // of the insert would be invisible to its `RETURNING`, which reads the input.
        insert_inputs(&mut tx, &inputs.bodies, now).await?;
        for chunk in rows.chunks(MAX_ROWS) {
            let rows = insert_manual(&mut tx, job_id, chunk, now, started_by).await?;
            // The job cannot run; later chunks would see the same job. Returning drops
            // (rolls back) the transaction, with the key and the inputs written before.
            if rows.is_empty() {
                return Ok(ManualOutcome::NotRunnable);
            }
            created.extend(rows);
        }
        tx.commit().await.map_err(db)?;
        Ok(ManualOutcome::Created(created))
    }
}

/// Stores once the large inputs of jobs written before inputs were stored once
/// (migration 0017), so that their manual runs refer to the input instead of copying
/// it. Runs at every start; after the first, it finds nothing to do. Nodes starting
/// together may both store one: the writes are the same and idempotent.
async fn adopt_large_job_inputs(pool: &PgPool) -> Result<(), StoreError> {
    let jobs: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, input FROM jobs WHERE input_hash IS NULL AND octet_length(input) > $1",
    )
    .bind(INLINE_INPUT_MAX as i64)
    .fetch_all(pool)
    .await
    .map_err(db)?;
    for (id, input) in jobs {
        let hash = input_hash(&input);
        let mut tx = pool.begin().await.map_err(db)?;
        insert_inputs(&mut tx, &[(hash.clone(), input.as_str())], now_millis()).await?;
        sqlx::query("UPDATE jobs SET input_hash = $1 WHERE id = $2 AND input = $3")
            .bind(&hash)
            .bind(&id)
            .bind(&input)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
    }
    Ok(())
}

/// Writes each of `bodies` (`(hash, body)`, see [`stored_inputs`]) to
/// `execution_inputs` unless it is there already.
async fn insert_inputs(
    conn: &mut PgConnection,
    bodies: &[(String, &str)],
    now: Millis,
) -> Result<(), StoreError> {
    if bodies.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO execution_inputs (hash, body, created_at) \
         SELECT hash, body, $3 FROM UNNEST($1::text[], $2::text[]) AS b (hash, body) \
         ON CONFLICT DO NOTHING",
    )
    .bind(bodies.iter().map(|(hash, _)| hash.as_str()).bind_iter())
    .bind(bodies.iter().map(|(_, body)| *body).bind_iter())
    .bind(now)
    .execute(conn)
    .await
    .map_err(db)?;
    Ok(())
}

/// Takes idempotency key `key` for manual runs `runs` of `job_id` (answered with
/// `status`), first deleting a few expired keys; `None` once taken, or what the
/// earlier request that holds it means for this one. Only in the transaction that
/// creates the runs. A concurrent request under the same key waits at the insert
/// until this transaction ends: if it committed, that request finds the key taken and
/// reads what this one created; if it rolled back, that request takes the key.
async fn take_idempotency_key(
    conn: &mut PgConnection,
    key: &IdempotencyKey,
    job_id: &str,
    runs: &[ManualRun],
    status: ExecutionStatus,
    now: Millis,
) -> Result<Option<ManualOutcome<Vec<PgRow>>>, StoreError> {
    // `SKIP LOCKED`: requests pruning at once share the work instead of waiting for
    // (or deadlocking on) each other's rows.
    sqlx::query(
        "DELETE FROM idempotency_keys WHERE key IN \
             (SELECT key FROM idempotency_keys WHERE expires_at <= $1 \
              ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
    )
    .bind(now)
    .bind(EXPIRED_KEYS_PER_REQUEST)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    // An expired row under the key (one the deletion above did not reach) is replaced.
    let taken: Option<String> = sqlx::query_scalar(
        "INSERT INTO idempotency_keys \
             (key, fingerprint, job_id, execution_ids, status, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, \
             job_id = EXCLUDED.job_id, execution_ids = EXCLUDED.execution_ids, \
             status = EXCLUDED.status, created_at = EXCLUDED.created_at, \
             expires_at = EXCLUDED.expires_at \
         WHERE idempotency_keys.expires_at <= EXCLUDED.created_at \
         RETURNING key",
    )
    .bind(pg_text(&key.key))
    .bind(&key.fingerprint)
    .bind(job_id)
    .bind(run_ids_json(runs)?)
    .bind(status.as_str())
    .bind(now)
    .bind(key.expires_at)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    if taken.is_some() {
        return Ok(None);
    }
    let (fingerprint, execution_ids, status): (String, String, String) = sqlx::query_as(
        "SELECT fingerprint, execution_ids, status FROM idempotency_keys WHERE key = $1",
    )
    .bind(pg_text(&key.key))
    .fetch_one(&mut *conn)
    .await
    .map_err(db)?;
    earlier_request(key, &fingerprint, &execution_ids, &status).map(Some)
}

// ---- conversions ---------------------------------------------------------------------

/// PostgreSQL's INTEGER is signed 32-bit; a count above `i32::MAX` (never a real
/// attempt number, log position or worker count) is stored as `i32::MAX`.
fn int4(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// `text` as PostgreSQL can store it: NUL, which `TEXT` rejects, becomes U+FFFD.
fn pg_text(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(text)
    }
}

/// The smallest byte string above every key that starts with `prefix`, if one exists:
/// the prefix without its trailing 0xFF bytes, its last byte bumped. Keys are stored as
/// their UTF-8 bytes, so `prefix <= key < bound` is exactly "key starts with prefix".
fn prefix_upper_bound(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut bound = prefix.to_vec();
    while let Some(last) = bound.pop() {
        if last < u8::MAX {
            bound.push(last + 1);
            return Some(bound);
        }
    }
    None
}

/// Reads one column, reporting which one was wrong.
fn col<'r, T>(row: &'r PgRow, name: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    row.try_get(name).map_err(|err| corrupt(name, err))
}

fn col_u64(row: &PgRow, name: &str) -> Result<u64, StoreError> {
    let value: i64 = col(row, name)?;
    u64::try_from(value).map_err(|_| corrupt(name, format!("negative value {value}")))
}

fn col_opt_u64(row: &PgRow, name: &str) -> Result<Option<u64>, StoreError> {
    let value: Option<i64> = col(row, name)?;
    value
        .map(|v| u64::try_from(v).map_err(|_| corrupt(name, format!("negative value {v}"))))
        .transpose()
}

fn col_u32(row: &PgRow, name: &str) -> Result<u32, StoreError> {
    let value: i32 = col(row, name)?;
    u32::try_from(value).map_err(|_| corrupt(name, format!("negative value {value}")))
}

fn col_json<T: serde::de::DeserializeOwned>(row: &PgRow, name: &str) -> Result<T, StoreError> {
    let text: &str = col(row, name)?;
    serde_json::from_str(text).map_err(|err| corrupt(name, err))
}

fn col_config(row: &PgRow) -> Result<JobConfig, StoreError> {
    parse_job_config(col(row, "config")?)
}

fn col_opt_json(row: &PgRow, name: &str) -> Result<Option<serde_json::Value>, StoreError> {
    let text: Option<&str> = col(row, name)?;
    text.map(|t| serde_json::from_str(t).map_err(|err| corrupt(name, err)))
        .transpose()
}

fn module_from_row(row: &PgRow) -> Result<ModuleRecord, StoreError> {
    let name: String = col(row, "name")?;
    let status: &str = col(row, "status")?;
    Ok(ModuleRecord {
        status: ModuleStatus::parse(status)
            .ok_or_else(|| corrupt("status", format!("unknown `{status}`")))?,
        current: version_from_row(row, name.clone())?,
        approved: col_json(row, "approved_capabilities")?,
        created_at: col(row, "created_at")?,
        updated_at: col(row, "updated_at")?,
        name,
    })
}

fn version_from_row(row: &PgRow, module: String) -> Result<ModuleVersion, StoreError> {
    Ok(ModuleVersion {
        module,
        version: col(row, "version")?,
        content_hash: col(row, "content_hash")?,
        size_bytes: col_u64(row, "size_bytes")?,
        manifest: col_json::<Manifest>(row, "manifest")?,
        uploaded_at: col(row, "uploaded_at")?,
        uploaded_by: uploader(
            col(row, "uploaded_by")?,
            col(row, "uploader_role")?,
            col(row, "uploader_token")?,
        )?,
        signed_by: col(row, "signed_by")?,
        approval: code_approval(
            col(row, "approved_at")?,
            col(row, "approved_by")?,
            col(row, "approved_key")?,
        ),
    })
}

fn publisher_key_from_row(row: &PgRow) -> Result<PublisherKey, StoreError> {
    Ok(PublisherKey {
        id: col(row, "key_id")?,
        public_key: col(row, "public_key")?,
        comment: col(row, "comment")?,
        pinned_by: col(row, "pinned_by")?,
        pinned_at: col(row, "pinned_at")?,
    })
}

fn job_from_row(row: &PgRow) -> Result<Job, StoreError> {
    Ok(Job {
        id: col(row, "id")?,
        name: col(row, "name")?,
        module: col(row, "module")?,
        job: col(row, "job")?,
        schedule: col(row, "schedule")?,
        input: col_json(row, "input")?,
        enabled: col(row, "enabled")?,
        max_attempts: col_u32(row, "max_attempts")?,
        timeout_ms: col_opt_u64(row, "timeout_ms")?,
        fuel: col_opt_u64(row, "fuel")?,
        memory_bytes: col_opt_u64(row, "memory_bytes")?,
        on_event: col(row, "on_event")?,
        config: col_config(row)?,
        next_run_at: col(row, "next_run_at")?,
        created_at: col(row, "created_at")?,
        updated_at: col(row, "updated_at")?,
    })
}

fn execution_from_row(row: &PgRow) -> Result<Execution, StoreError> {
    Ok(Execution {
        id: col(row, "id")?,
        job_id: col(row, "job_id")?,
        module: col(row, "module")?,
        job: col(row, "job")?,
        status: parse_status(col(row, "status")?)?,
        trigger: parse_trigger(col(row, "trigger")?)?,
        attempt: col_u32(row, "attempt")?,
        retry_of: col(row, "retry_of")?,
        input: col_json(row, "input")?,
        result: col_opt_json(row, "result")?,
        error: col(row, "error")?,
        error_kind: col(row, "error_kind")?,
        scheduled_at: col(row, "scheduled_at")?,
        run_after: col(row, "run_after")?,
        cron_tick: col(row, "cron_tick")?,
        event_id: col(row, "event_id")?,
        created_at: col(row, "created_at")?,
        started_at: col(row, "started_at")?,
        finished_at: col(row, "finished_at")?,
        duration_ms: col(row, "duration_ms")?,
        fuel_consumed: col_opt_u64(row, "fuel_consumed")?,
        memory_peak_bytes: col_opt_u64(row, "memory_peak_bytes")?,
        cpu_time_ms: col(row, "cpu_time_ms")?,
        node_id: col(row, "node_id")?,
        cancel_requested: col(row, "cancel_requested")?,
    })
}

fn claimed_from_row(row: &PgRow) -> Result<ClaimedExecution, StoreError> {
    Ok(ClaimedExecution {
        id: col(row, "id")?,
        job_id: col(row, "job_id")?,
        attempt: col_u32(row, "attempt")?,
        trigger: parse_trigger(col(row, "trigger")?)?,
        retry_of: col(row, "retry_of")?,
        input: col(row, "input")?,
        scheduled_at: col(row, "scheduled_at")?,
        job_revision: col(row, "job_revision")?,
    })
}

fn log_from_row(row: &PgRow) -> Result<LogEntry, StoreError> {
    let fields: Option<serde_json::Map<String, serde_json::Value>> = {
        let text: Option<&str> = col(row, "fields")?;
        text.map(|t| serde_json::from_str(t).map_err(|err| corrupt("fields", err)))
            .transpose()?
    };
    Ok(LogEntry {
        seq: col_u32(row, "seq")?,
        ts_ms: col_u64(row, "ts")?,
        level: parse_level(col(row, "level")?)?,
        message: col(row, "message")?,
        fields: fields.unwrap_or_default(),
    })
}

fn event_from_row(row: &PgRow) -> Result<Event, StoreError> {
    Ok(Event {
        id: col(row, "id")?,
        topic: col(row, "topic")?,
        payload: col_json(row, "payload")?,
        source: col(row, "source")?,
        created_at: col(row, "created_at")?,
    })
}

fn sample_from_row(row: &PgRow) -> Result<MetricSample, StoreError> {
    Ok(MetricSample {
        name: col(row, "name")?,
        value: col(row, "value")?,
        labels: col_json(row, "labels")?,
        ts_ms: col(row, "ts")?,
    })
}

fn node_from_row(row: &PgRow) -> Result<NodeHeartbeat, StoreError> {
    Ok(NodeHeartbeat {
        node_id: col(row, "node_id")?,
        started_at: col(row, "started_at")?,
        last_heartbeat_at: col(row, "last_heartbeat_at")?,
        workers: col_u32(row, "workers")?,
        running: col_u32(row, "running")?,
        version: col(row, "version")?,
    })
}

/// The module called `name` with its current version, read on `conn` (which may be in
/// a transaction).
async fn fetch_module(
    conn: &mut PgConnection,
    name: &str,
) -> Result<Option<ModuleRecord>, StoreError> {
    sqlx::query(concat!(select_module!(), " WHERE m.name = $1"))
        .bind(name)
        .fetch_optional(conn)
        .await
        .map_err(db)?
        .as_ref()
        .map(module_from_row)
        .transpose()
}

/// A failed job write as the service needs it: a taken name is a `Conflict` that names
/// the name.
fn job_conflict(job: &Job, err: sqlx::Error) -> StoreError {
    if is_unique_violation(&err) {
        match &err {
            sqlx::Error::Database(e) if e.constraint() == Some("jobs_name_unique") => {
                StoreError::Conflict(format!("a job named `{}` already exists", job.name))
            }
            _ => StoreError::Conflict(format!("a job with id `{}` already exists", job.id)),
        }
    } else {
        db(err)
    }
}

/// The order enqueuers insert rows in, the same on every node: rows that may collide
/// on the unique (job, cron tick) index by that key, then the rest by id. Two
/// transactions inserting overlapping rows then meet on their first common key, and the
/// second waits for the first instead of each waiting for a row the other holds.
fn insertion_order(execution: &NewExecution) -> (bool, &str, Millis, &str) {
    match execution.cron_tick {
        Some(tick) => (false, execution.job_id.as_str(), tick, ""),
        None => (true, "", 0, execution.id.as_str()),
    }
}

/// The claim of up to [`MAX_ROWS`] executions by id (`$1`) for node `$2` at time `$3`,
/// leased until `$4`. See the module documentation for the form of the status test.
const CLAIM: &str = concat!(
    "UPDATE executions e SET status = 'RUNNING', node_id = $2, started_at = $3, \
         lease_expires_at = $4 \
     FROM (SELECT id FROM executions \
           WHERE id = ANY($1) AND (status || '') = 'QUEUED' AND NOT cancel_requested \
               AND run_after <= $3 \
           FOR UPDATE SKIP LOCKED) c \
     WHERE e.id = c.id \
     RETURNING e.id, e.job_id, e.attempt, e.trigger, e.retry_of, ",
    execution_input!(),
    ", e.scheduled_at, (SELECT revision FROM jobs j WHERE j.id = e.job_id) AS job_revision"
);

/// The manual runs of one job (`$1` ids, `$2` inputs or NULL for the job's stored input,
/// `$3` the hashes of inputs stored once (see [`stored_inputs`]), `$4` now, `$5` the
/// job), created only while the job and its module are enabled. A run without an input
/// of its own takes the job's stored input, by reference when the job has it stored
/// once.
macro_rules! runnable_manual_runs {
    () => {
        " FROM UNNEST($1::text[], $2::text[], $3::text[]) WITH ORDINALITY \
                 AS r (id, input, input_hash, position) \
             CROSS JOIN jobs j JOIN modules m ON m.name = j.module \
         WHERE j.id = $5 AND j.enabled AND m.status = 'ENABLED' \
         ORDER BY r.position \
         ON CONFLICT DO NOTHING "
    };
}

/// The `input, input_hash` of a manual run (see [`runnable_manual_runs`]).
macro_rules! manual_run_input {
    () => {
        "COALESCE(r.input, CASE WHEN j.input_hash IS NULL THEN j.input ELSE '' END), \
         CASE WHEN r.input IS NULL THEN j.input_hash ELSE r.input_hash END"
    };
}

const ENQUEUE_MANUAL: &str = concat!(
    "INSERT INTO executions (id, job_id, module, job, status, trigger, attempt, input, \
         input_hash, scheduled_at, run_after, created_at) \
     SELECT r.id, j.id, j.module, j.job, 'QUEUED', 'manual', 1, ",
    manual_run_input!(),
    ", $4, $4, $4",
    runnable_manual_runs!(),
    "RETURNING id"
);

/// The same runs already claimed by node `$6`, leased until `$7`; returns what [`CLAIM`]
/// does.
const START_MANUAL: &str = concat!(
    "INSERT INTO executions (id, job_id, module, job, status, trigger, attempt, input, \
         input_hash, scheduled_at, run_after, created_at, started_at, node_id, \
         lease_expires_at) \
     SELECT r.id, j.id, j.module, j.job, 'RUNNING', 'manual', 1, ",
    manual_run_input!(),
    ", $4, $4, $4, $4, $6, $7",
    runnable_manual_runs!(),
    "RETURNING id, job_id, attempt, trigger, retry_of, ",
    execution_input!(),
    ", scheduled_at, \
         (SELECT revision FROM jobs WHERE jobs.id = executions.job_id) AS job_revision"
);

/// Creates up to [`MAX_ROWS`] manual runs, each with its input as stored, queued or,
/// given a node and its lease, already started there; returns the rows
/// [`ENQUEUE_MANUAL`] or [`START_MANUAL`] return. The inputs stored once must be
/// written before.
async fn insert_manual(
    conn: &mut PgConnection,
    job_id: &str,
    runs: &[(&ManualRun, &StoredInput<'_>)],
    now: Millis,
    started_by: Option<(&str, Millis)>,
) -> Result<Vec<PgRow>, StoreError> {
    let statement = if started_by.is_some() {
        START_MANUAL
    } else {
        ENQUEUE_MANUAL
    };
    let mut query = sqlx::query(statement)
        .bind(runs.iter().map(|(run, _)| run.id.as_str()).bind_iter())
        .bind(runs.iter().map(|(_, (input, _))| *input).bind_iter())
        .bind(
            runs.iter()
                .map(|(_, (_, hash))| hash.as_deref())
                .bind_iter(),
        )
        .bind(now)
        .bind(job_id);
    if let Some((node_id, lease_until)) = started_by {
        query = query.bind(node_id).bind(lease_until);
    }
    query.fetch_all(conn).await.map_err(db)
}

/// Pushes the statement listing one page (`fetch` rows) of the executions `filter`
/// selects, newest first, after `cursor`.
fn push_list_executions(
    query: &mut QueryBuilder<Postgres>,
    filter: &ExecutionFilter,
    cursor: Option<&str>,
    fetch: i64,
) {
    query.push(concat!(
        "SELECT ",
        execution_columns!(),
        " FROM executions WHERE true"
    ));
    if let Some(job_id) = &filter.job_id {
        query.push(" AND job_id = ").push_bind(job_id.as_str());
    }
    if let Some(status) = filter.status {
        // A literal, not a parameter: only then can the planner see that the query
        // implies a partial index's predicate (the migration lists which serves
        // which status). The value is one of our own constants.
        query.push(format_args!(" AND status = '{}'", status.as_str()));
    }
    if let Some(cursor) = cursor {
        query.push(" AND id < ").push_bind(cursor);
    }
    query.push(" ORDER BY id DESC LIMIT ").push_bind(fetch);
}

/// Creates the queued executions of `batch` (at most [`MAX_ROWS`]) and returns the ids
/// of those created. Rows are inserted in the order given (`WITH ORDINALITY`), so of two
/// rows with one cron tick the first is kept. Large inputs are written once to
/// `execution_inputs` by the `WITH` clause (`$14`, `$15`), in the same statement: the
/// rows' foreign keys are checked at its end, when those are there.
async fn insert_executions(
    conn: &mut PgConnection,
    batch: &[&NewExecution],
) -> Result<Vec<String>, StoreError> {
    let inputs = stored_inputs(batch.iter().map(|e| Some(e.input.as_str())));
    sqlx::query_scalar(
        "WITH inputs AS ( \
             INSERT INTO execution_inputs (hash, body, created_at) \
             SELECT hash, body, $16 FROM UNNEST($14::text[], $15::text[]) AS b (hash, body) \
             ON CONFLICT DO NOTHING \
         ) \
         INSERT INTO executions (id, job_id, module, job, status, trigger, attempt, \
             retry_of, input, input_hash, scheduled_at, run_after, cron_tick, event_id, \
             created_at) \
         SELECT id, job_id, module, job, 'QUEUED', trigger, attempt, retry_of, input, \
             input_hash, scheduled_at, run_after, cron_tick, event_id, created_at \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                     $6::int4[], $7::text[], $8::text[], $9::int8[], $10::int8[], \
                     $11::int8[], $12::text[], $13::int8[], $17::text[]) \
             WITH ORDINALITY AS n (id, job_id, module, job, trigger, attempt, retry_of, \
                 input, scheduled_at, run_after, cron_tick, event_id, created_at, \
                 input_hash, position) \
         ORDER BY position \
         ON CONFLICT DO NOTHING \
         RETURNING id",
    )
    .bind(batch.iter().map(|e| e.id.as_str()).bind_iter())
    .bind(batch.iter().map(|e| e.job_id.as_str()).bind_iter())
    .bind(batch.iter().map(|e| e.module.as_str()).bind_iter())
    .bind(batch.iter().map(|e| e.job.as_str()).bind_iter())
    .bind(batch.iter().map(|e| e.trigger.as_str()).bind_iter())
    .bind(batch.iter().map(|e| int4(e.attempt)).bind_iter())
    .bind(batch.iter().map(|e| e.retry_of.as_deref()).bind_iter())
    .bind(inputs.rows.iter().map(|(input, _)| *input).bind_iter())
    .bind(batch.iter().map(|e| e.scheduled_at).bind_iter())
    .bind(batch.iter().map(|e| e.run_after).bind_iter())
    .bind(batch.iter().map(|e| e.cron_tick).bind_iter())
    .bind(batch.iter().map(|e| e.event_id.as_deref()).bind_iter())
    .bind(batch.iter().map(|e| e.created_at).bind_iter())
    .bind(
        inputs
            .bodies
            .iter()
            .map(|(hash, _)| hash.as_str())
            .bind_iter(),
    )
    .bind(inputs.bodies.iter().map(|(_, body)| *body).bind_iter())
    .bind(batch.first().map_or(0, |e| e.created_at))
    .bind(
        inputs
            .rows
            .iter()
            .map(|(_, hash)| hash.as_deref())
            .bind_iter(),
    )
    .fetch_all(conn)
    .await
    .map_err(db)
}

/// The recording of up to [`MAX_ROWS`] results (`$1` to `$9` and `$16`, a column each)
/// and the log lines (`$10` to `$15`) of the executions it recorded.
/// `(e.status || '')`: see "Finding executions by a list of ids" above.
const RECORD: &str = "WITH recorded AS ( \
         UPDATE executions e SET status = r.status, result = r.result, \
             error = r.error, error_kind = r.error_kind, \
             finished_at = r.finished_at, duration_ms = r.duration_ms, \
             fuel_consumed = r.fuel_consumed, memory_peak_bytes = r.memory_peak_bytes, \
             cpu_time_ms = r.cpu_time_ms, lease_expires_at = NULL \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                     $6::int8[], $7::float8[], $8::int8[], $9::int8[], $16::float8[]) \
             AS r (id, status, result, error, error_kind, finished_at, duration_ms, \
                   fuel_consumed, memory_peak_bytes, cpu_time_ms) \
         WHERE e.id = r.id AND (e.status || '') = 'RUNNING' \
         RETURNING e.id \
     ), logged AS ( \
         INSERT INTO execution_logs (execution_id, seq, ts, level, message, fields) \
         SELECT l.execution_id, l.seq, l.ts, l.level, l.message, l.fields \
         FROM UNNEST($10::text[], $11::int4[], $12::int8[], $13::text[], $14::text[], \
                     $15::text[]) \
             AS l (execution_id, seq, ts, level, message, fields) \
         WHERE l.execution_id IN (SELECT id FROM recorded) \
         ON CONFLICT DO NOTHING \
     ) \
     SELECT id FROM recorded";

/// Records `results` (at most [`MAX_ROWS`], one per id) and the log lines of those
/// recorded, in one statement; returns the ids recorded. The log insert reads the ids
/// the update returned, so a result for an execution not running writes no line.
async fn record_batch(
    conn: &mut PgConnection,
    results: &[&ExecutionResult],
) -> Result<Vec<String>, StoreError> {
    let mut logs = Vec::new();
    for result in results {
        for log in &result.logs {
            let fields = if log.fields.is_empty() {
                None
            } else {
                Some(json_text("fields", &log.fields)?)
            };
            logs.push((result.id.as_str(), log, fields));
        }
    }
    sqlx::query_scalar(RECORD)
        .bind(results.iter().map(|r| r.id.as_str()).bind_iter())
        .bind(results.iter().map(|r| r.status.as_str()).bind_iter())
        .bind(results.iter().map(|r| r.result.as_deref()).bind_iter())
        .bind(
            results
                .iter()
                .map(|r| r.error.as_deref().map(pg_text))
                .bind_iter(),
        )
        .bind(
            results
                .iter()
                .map(|r| r.error_kind.as_deref().map(pg_text))
                .bind_iter(),
        )
        .bind(results.iter().map(|r| r.finished_at).bind_iter())
        .bind(results.iter().map(|r| r.duration_ms).bind_iter())
        .bind(results.iter().map(|r| int(r.fuel_consumed)).bind_iter())
        .bind(results.iter().map(|r| int(r.memory_peak_bytes)).bind_iter())
        .bind(logs.iter().map(|(id, _, _)| *id).bind_iter())
        .bind(logs.iter().map(|(_, log, _)| int4(log.seq)).bind_iter())
        .bind(logs.iter().map(|(_, log, _)| int(log.ts_ms)).bind_iter())
        .bind(
            logs.iter()
                .map(|(_, log, _)| log.level.as_str())
                .bind_iter(),
        )
        .bind(
            logs.iter()
                .map(|(_, log, _)| pg_text(&log.message))
                .bind_iter(),
        )
        .bind(
            logs.iter()
                .map(|(_, _, fields)| fields.as_deref())
                .bind_iter(),
        )
        .bind(results.iter().map(|r| r.cpu_time_ms).bind_iter())
        .fetch_all(conn)
        .await
        .map_err(db)
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    #[cfg(test)]
    async fn storage_counts(&self) -> Result<super::StorageCounts, StoreError> {
        let (inline_input_bytes, stored_inputs, stored_input_bytes, idempotency_keys) =
            sqlx::query_as(
                "SELECT (SELECT COALESCE(SUM(octet_length(input)), 0)::int8 FROM executions), \
                        (SELECT COUNT(*) FROM execution_inputs), \
                        (SELECT COALESCE(SUM(octet_length(body)), 0)::int8 FROM execution_inputs), \
                        (SELECT COUNT(*) FROM idempotency_keys)",
            )
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        Ok(super::StorageCounts {
            inline_input_bytes,
            stored_inputs,
            stored_input_bytes,
            idempotency_keys,
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    // ---- modules -------------------------------------------------------------------

    async fn install_module_version(
        &self,
        manifest: &Manifest,
        content_hash: &str,
        wasm: &[u8],
        upload: &VersionUpload,
        now: Millis,
    ) -> Result<ModuleRecord, StoreError> {
        let manifest_json = json_text("manifest", manifest)?;
        let mut tx = self.pool.begin().await.map_err(db)?;
        let approval = match &upload.approval {
            Some(approval) if approval.key.is_some() => {
                // A key unpinned since the upload was checked approves nothing; the share
                // lock makes an unpinning that races this upload wait, then withdraw
                // what this upload recorded.
                let pinned: Option<i32> = sqlx::query_scalar(
                    "SELECT 1 FROM module_publisher_keys WHERE module = $1 AND key_id = $2 \
                     FOR SHARE",
                )
                .bind(&manifest.name)
                .bind(&approval.key)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
                pinned.and(Some(approval))
            }
            other => other.as_ref(),
        };
        let uploader = upload.uploaded_by.as_ref();
        sqlx::query(
            "INSERT INTO module_blobs (content_hash, bytes) VALUES ($1, $2) \
             ON CONFLICT DO NOTHING",
        )
        .bind(content_hash)
        .bind(wasm)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        // A new module starts enabled; an existing one keeps its status and switches
        // its current version.
        sqlx::query(
            "INSERT INTO modules (name, status, current_hash, created_at, updated_at) \
             VALUES ($1, 'ENABLED', $2, $3, $3) \
             ON CONFLICT (name) DO UPDATE SET \
                 current_hash = excluded.current_hash, updated_at = excluded.updated_at",
        )
        .bind(&manifest.name)
        .bind(content_hash)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        // Bytes this module already had: the existing version row stays as it was, but
        // gains the approval this upload brings if it had none.
        sqlx::query(
            "INSERT INTO module_versions \
                 (module, version, content_hash, size_bytes, manifest, uploaded_at, \
                  uploaded_by, uploader_role, uploader_token, signed_by, \
                  approved_at, approved_by, approved_key) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             ON CONFLICT (module, content_hash) DO UPDATE SET \
                 approved_by = CASE WHEN module_versions.approved_at IS NULL \
                     THEN excluded.approved_by ELSE module_versions.approved_by END, \
                 approved_key = CASE WHEN module_versions.approved_at IS NULL \
                     THEN excluded.approved_key ELSE module_versions.approved_key END, \
                 approved_at = COALESCE(module_versions.approved_at, excluded.approved_at)",
        )
        .bind(&manifest.name)
        .bind(&manifest.version)
        .bind(content_hash)
        .bind(int(wasm.len() as u64))
        .bind(manifest_json)
        .bind(now)
        .bind(uploader.map(|u| u.username.as_str()))
        .bind(uploader.map(|u| u.role.as_str()))
        .bind(uploader.and_then(|u| u.token.as_deref()))
        .bind(upload.signed_by.as_deref())
        .bind(approval.map(|a| a.at))
        .bind(approval.map(|a| a.by.as_str()))
        .bind(approval.and_then(|a| a.key.as_deref()))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        let record = fetch_module(&mut tx, &manifest.name)
            .await?
            .ok_or_else(|| {
                StoreError::Database(format!(
                    "module `{}` vanished while installing",
                    manifest.name
                ))
            })?;
        tx.commit().await.map_err(db)?;
        Ok(record)
    }

    async fn get_module(&self, name: &str) -> Result<Option<ModuleRecord>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        fetch_module(&mut conn, name).await
    }

    async fn list_modules(&self) -> Result<Vec<ModuleRecord>, StoreError> {
        sqlx::query(concat!(select_module!(), " ORDER BY m.name"))
            .fetch_all(&self.pool)
            .await
            .map_err(db)?
            .iter()
            .map(module_from_row)
            .collect()
    }

    async fn list_module_versions(&self, name: &str) -> Result<Vec<ModuleVersion>, StoreError> {
        sqlx::query(
            "SELECT version, content_hash, size_bytes, manifest, uploaded_at, uploaded_by, \
                    uploader_role, uploader_token, signed_by, approved_at, approved_by, \
                    approved_key \
             FROM module_versions WHERE module = $1 \
             ORDER BY uploaded_at DESC, seq DESC",
        )
        .bind(name)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(|row| version_from_row(row, name.to_owned()))
        .collect()
    }

    async fn set_module_status(
        &self,
        name: &str,
        status: ModuleStatus,
        now: Millis,
    ) -> Result<Option<ModuleRecord>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let updated =
            sqlx::query("UPDATE modules SET status = $1, updated_at = $2 WHERE name = $3")
                .bind(status.as_str())
                .bind(now)
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(db)?
                .rows_affected();
        if updated == 0 {
            return Ok(None);
        }
        let record = fetch_module(&mut tx, name).await?;
        tx.commit().await.map_err(db)?;
        Ok(record)
    }

    async fn approve_module_version(
        &self,
        name: &str,
        content_hash: &str,
        capabilities: &crate::domain::Capabilities,
        approver: &str,
        now: Millis,
    ) -> Result<Option<ModuleRecord>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        // Locked: an upload racing this approval waits, then finds it done.
        let current: Option<String> =
            sqlx::query_scalar("SELECT current_hash FROM modules WHERE name = $1 FOR UPDATE")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
        match current {
            None => return Ok(None),
            Some(current) if current != content_hash => {
                return Err(approval_raced(name, content_hash, &current));
            }
            Some(_) => {}
        }
        sqlx::query(
            "UPDATE modules SET approved_capabilities = $1, updated_at = $2 WHERE name = $3",
        )
        .bind(json_text("approved_capabilities", capabilities)?)
        .bind(now)
        .bind(name)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        sqlx::query(
            "UPDATE module_versions SET approved_at = $1, approved_by = $2, approved_key = NULL \
             WHERE module = $3 AND content_hash = $4 AND approved_at IS NULL",
        )
        .bind(now)
        .bind(approver)
        .bind(name)
        .bind(content_hash)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        let record = fetch_module(&mut tx, name).await?;
        tx.commit().await.map_err(db)?;
        Ok(record)
    }

    async fn pin_publisher_key(
        &self,
        name: &str,
        key: &PublisherKey,
    ) -> Result<Option<PublisherKey>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        // Inserted only if the module exists (the foreign key would fail loudly).
        sqlx::query(
            "INSERT INTO module_publisher_keys \
                 (module, key_id, public_key, comment, pinned_by, pinned_at) \
             SELECT name, $1, $2, $3, $4, $5 FROM modules WHERE name = $6 \
             ON CONFLICT (module, key_id) DO UPDATE SET comment = excluded.comment",
        )
        .bind(&key.id)
        .bind(&key.public_key)
        .bind(&key.comment)
        .bind(&key.pinned_by)
        .bind(key.pinned_at)
        .bind(name)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        let stored = sqlx::query(
            "SELECT key_id, public_key, comment, pinned_by, pinned_at \
             FROM module_publisher_keys WHERE module = $1 AND key_id = $2",
        )
        .bind(name)
        .bind(&key.id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?
        .as_ref()
        .map(publisher_key_from_row)
        .transpose()?;
        tx.commit().await.map_err(db)?;
        Ok(stored)
    }

    async fn unpin_publisher_key(&self, name: &str, key_id: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let deleted =
            sqlx::query("DELETE FROM module_publisher_keys WHERE module = $1 AND key_id = $2")
                .bind(name)
                .bind(key_id)
                .execute(&mut *tx)
                .await
                .map_err(db)?
                .rows_affected();
        if deleted == 0 {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE module_versions SET approved_at = NULL, approved_by = NULL, approved_key = NULL \
             WHERE module = $1 AND approved_key = $2",
        )
        .bind(name)
        .bind(key_id)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(true)
    }

    async fn publisher_keys(&self, name: &str) -> Result<Vec<PublisherKey>, StoreError> {
        sqlx::query(
            "SELECT key_id, public_key, comment, pinned_by, pinned_at \
             FROM module_publisher_keys WHERE module = $1 ORDER BY pinned_at, key_id",
        )
        .bind(name)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(publisher_key_from_row)
        .collect()
    }

    async fn delete_module(&self, name: &str, with_jobs: bool) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        // Its versions go with it (ON DELETE CASCADE).
        let deleted = sqlx::query("DELETE FROM modules WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
        if deleted == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM kv WHERE module = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        if with_jobs {
            sqlx::query("DELETE FROM jobs WHERE module = $1")
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        // Bytes no other module's version shares are garbage now. A concurrent install
        // of the same bytes holds a key-share lock on the blob through its foreign key,
        // so the blob is either kept for it or the install fails; never a dangling row.
        sqlx::query(
            "DELETE FROM module_blobs WHERE NOT EXISTS \
                 (SELECT 1 FROM module_versions v WHERE v.content_hash = module_blobs.content_hash)",
        )
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(true)
    }

    async fn module_wasm(&self, content_hash: &str) -> Result<Option<Vec<u8>>, StoreError> {
        sqlx::query_scalar("SELECT bytes FROM module_blobs WHERE content_hash = $1")
            .bind(content_hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)
    }

    async fn jobs_using_module(&self, name: &str) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar("SELECT name FROM jobs WHERE module = $1 ORDER BY name")
            .bind(name)
            .fetch_all(&self.pool)
            .await
            .map_err(db)
    }

    // ---- jobs ----------------------------------------------------------------------

    async fn insert_job(&self, job: &Job) -> Result<(), StoreError> {
        let input = json_text("input", &job.input)?;
        sqlx::query(concat!(
            store_job_input!("$6", "$17", "$16"),
            "INSERT INTO jobs (",
            job_columns!(),
            ", input_hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
             $14, $15, $16, $17)"
        ))
        .bind(&job.id)
        .bind(&job.name)
        .bind(&job.module)
        .bind(&job.job)
        .bind(&job.schedule)
        .bind(&input)
        .bind(job.enabled)
        .bind(int4(job.max_attempts))
        .bind(job.timeout_ms.map(int))
        .bind(job.fuel.map(int))
        .bind(job.memory_bytes.map(int))
        .bind(&job.on_event)
        .bind(job.config.to_stored_json())
        .bind(job.next_run_at)
        .bind(job.created_at)
        .bind(job.updated_at)
        .bind(large_input_hash(&input))
        .execute(&self.pool)
        .await
        .map_err(|err| job_conflict(job, err))?;
        Ok(())
    }

    async fn get_job(&self, id: &str) -> Result<Option<Job>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?
        .as_ref()
        .map(job_from_row)
        .transpose()
    }

    async fn get_jobs(&self, ids: &[String]) -> Result<Vec<Job>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        sqlx::query(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE id = ANY($1) ORDER BY id"
        ))
        .bind(ids)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(job_from_row)
        .collect()
    }

    async fn list_jobs(&self, cursor: Option<&str>, limit: u32) -> Result<Page<Job>, StoreError> {
        let (limit, fetch) = page_fetch(limit);
        let mut query =
            QueryBuilder::<Postgres>::new(concat!("SELECT ", job_columns!(), " FROM jobs"));
        if let Some(cursor) = cursor {
            query.push(" WHERE id > ").push_bind(cursor);
        }
        query.push(" ORDER BY id LIMIT ").push_bind(fetch);
        let rows = query.build().fetch_all(&self.pool).await.map_err(db)?;
        let jobs = rows.iter().map(job_from_row).collect::<Result<_, _>>()?;
        Ok(page(jobs, limit, |job: &Job| &job.id))
    }

    async fn update_job(&self, job: &Job) -> Result<bool, StoreError> {
        let input = json_text("input", &job.input)?;
        let updated = sqlx::query(concat!(
            store_job_input!("$5", "$16", "$14"),
            "UPDATE jobs SET name = $1, module = $2, job = $3, schedule = $4, input = $5, \
                 enabled = $6, max_attempts = $7, timeout_ms = $8, fuel = $9, \
                 memory_bytes = $10, on_event = $11, config = $12, next_run_at = $13, \
                 updated_at = $14, revision = revision + 1, input_hash = $16 \
             WHERE id = $15"
        ))
        .bind(&job.name)
        .bind(&job.module)
        .bind(&job.job)
        .bind(&job.schedule)
        .bind(&input)
        .bind(job.enabled)
        .bind(int4(job.max_attempts))
        .bind(job.timeout_ms.map(int))
        .bind(job.fuel.map(int))
        .bind(job.memory_bytes.map(int))
        .bind(&job.on_event)
        .bind(job.config.to_stored_json())
        .bind(job.next_run_at)
        .bind(job.updated_at)
        .bind(&job.id)
        .bind(large_input_hash(&input))
        .execute(&self.pool)
        .await
        .map_err(|err| job_conflict(job, err))?
        .rows_affected();
        Ok(updated > 0)
    }

    async fn delete_job(&self, id: &str) -> Result<bool, StoreError> {
        let deleted = sqlx::query("DELETE FROM jobs WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db)?
            .rows_affected();
        Ok(deleted > 0)
    }

    async fn due_scheduled_jobs(&self, now: Millis) -> Result<Vec<Job>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE enabled AND schedule IS NOT NULL AND next_run_at <= $1 \
              ORDER BY next_run_at, id"
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(job_from_row)
        .collect()
    }

    async fn set_job_next_run(
        &self,
        id: &str,
        next_run_at: Option<Millis>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET next_run_at = $1 WHERE id = $2")
            .bind(next_run_at)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn event_subscribed_jobs(&self) -> Result<Vec<Job>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE enabled AND on_event IS NOT NULL ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(job_from_row)
        .collect()
    }

    // ---- executions ----------------------------------------------------------------

    async fn enqueue_executions(
        &self,
        executions: &[NewExecution],
    ) -> Result<Vec<String>, StoreError> {
        if executions.is_empty() {
            return Ok(Vec::new());
        }
        let mut ordered: Vec<&NewExecution> = executions.iter().collect();
        // Stable: of two rows with one key, the first given is inserted first and kept.
        ordered.sort_by(|a, b| insertion_order(a).cmp(&insertion_order(b)));
        let mut created = HashSet::with_capacity(executions.len());
        if ordered.len() <= MAX_ROWS {
            let mut conn = self.pool.acquire().await.map_err(db)?;
            created.extend(insert_executions(&mut conn, &ordered).await?);
        } else {
            let mut tx = self.pool.begin().await.map_err(db)?;
            for chunk in ordered.chunks(MAX_ROWS) {
                created.extend(insert_executions(&mut tx, chunk).await?);
            }
            tx.commit().await.map_err(db)?;
        }
        Ok(in_given_order(executions.iter().map(|e| &e.id), created))
    }

    async fn enqueue_manual(
        &self,
        job_id: &str,
        runs: &[ManualRun],
        now: Millis,
        key: Option<&IdempotencyKey>,
    ) -> Result<ManualOutcome<Vec<String>>, StoreError> {
        self.create_manual(job_id, runs, now, None, key)
            .await?
            .try_map(|rows| {
                let created = rows
                    .iter()
                    .map(|row| col(row, "id"))
                    .collect::<Result<HashSet<String>, _>>()?;
                Ok(in_given_order(runs.iter().map(|run| &run.id), created))
            })
    }

    async fn start_manual(
        &self,
        job_id: &str,
        runs: &[ManualRun],
        now: Millis,
        node_id: &str,
        lease_until: Millis,
        key: Option<&IdempotencyKey>,
    ) -> Result<ManualOutcome<Vec<ClaimedExecution>>, StoreError> {
        let started_by = Some((node_id, lease_until));
        self.create_manual(job_id, runs, now, started_by, key)
            .await?
            .try_map(|rows| {
                let started = rows
                    .iter()
                    .map(claimed_from_row)
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(claimed_in_given_order(runs, started))
            })
    }

    async fn flush(&self) -> Result<(), StoreError> {
        if self.flushes {
            sqlx::query("SELECT pg_logical_emit_message(true, 'runcell', '')")
                .execute(&self.pool)
                .await
                .map_err(db)?;
        }
        Ok(())
    }

    async fn claim_executions(
        &self,
        ids: &[String],
        node_id: &str,
        now: Millis,
        lease_until: Millis,
    ) -> Result<Vec<ClaimedExecution>, StoreError> {
        let mut claimed = Vec::with_capacity(ids.len());
        // One conditional statement per chunk, no transaction: each row's claim stands
        // alone. The inner SELECT locks what it takes; a row another node is claiming
        // at this moment is skipped, not waited for (that node will run it, or, should
        // its claim roll back, the reconciler re-enqueues it). A row whose claim was
        // committed since this statement began is re-checked by the lock and dropped.
        for chunk in ids.chunks(MAX_ROWS) {
            let rows = sqlx::query(CLAIM)
                .bind(chunk)
                .bind(node_id)
                .bind(now)
                .bind(lease_until)
                .fetch_all(&self.claims)
                .await
                .map_err(db)?;
            for row in &rows {
                claimed.push(claimed_from_row(row)?);
            }
        }
        Ok(claimed)
    }

    async fn renew_leases(
        &self,
        ids: &[String],
        node_id: &str,
        lease_until: Millis,
    ) -> Result<(), StoreError> {
        for chunk in ids.chunks(MAX_ROWS) {
            sqlx::query(
                "UPDATE executions SET lease_expires_at = $1 \
                 WHERE id = ANY($2) AND (status || '') = 'RUNNING' AND node_id = $3",
            )
            .bind(lease_until)
            .bind(chunk)
            .bind(node_id)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        }
        Ok(())
    }

    async fn record_results(
        &self,
        results: &[ExecutionResult],
        retries: &[Retry],
    ) -> Result<Vec<String>, StoreError> {
        // One result per id: should a batch carry two, the first wins, as it would
        // have had they come in two batches.
        let mut seen = HashSet::with_capacity(results.len());
        let mut unique: Vec<&ExecutionResult> = results
            .iter()
            .filter(|r| seen.insert(r.id.as_str()))
            .collect();
        if unique.is_empty() {
            return Ok(Vec::new());
        }
        // Rows locked in id order, the same on every node.
        unique.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        let mut updated: HashSet<String> = HashSet::with_capacity(unique.len());
        if unique.len() <= MAX_ROWS && retries.is_empty() {
            let mut conn = self.pool.acquire().await.map_err(db)?;
            updated.extend(record_batch(&mut conn, &unique).await?);
        } else {
            let mut tx = self.pool.begin().await.map_err(db)?;
            for chunk in unique.chunks(MAX_ROWS) {
                updated.extend(record_batch(&mut tx, chunk).await?);
            }
            failpoint(
                "record_results.before_retries",
                retries.iter().map(|r| r.failed.as_str()),
            )?;
            let mut retries: Vec<&NewExecution> = retries
                .iter()
                .filter(|retry| updated.contains(&retry.failed))
                .map(|retry| &retry.next)
                .collect();
            retries.sort_by(|a, b| insertion_order(a).cmp(&insertion_order(b)));
            for chunk in retries.chunks(MAX_ROWS) {
                insert_executions(&mut tx, chunk).await?;
            }
            tx.commit().await.map_err(db)?;
        }
        let mut seen = HashSet::with_capacity(updated.len());
        Ok(results
            .iter()
            .filter(|r| updated.contains(&r.id) && seen.insert(r.id.as_str()))
            .map(|r| r.id.clone())
            .collect())
    }

    async fn requeue_executions(&self, ids: &[String]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let now = now_millis();
        let mut tx = self.pool.begin().await.map_err(db)?;
        for chunk in ids.chunks(MAX_ROWS) {
            // Requeued, unless someone asked it to stop: a queued row with the flag set
            // would never be claimed again, so it ends cancelled instead.
            sqlx::query(
                "UPDATE executions SET \
                     status = CASE WHEN cancel_requested THEN 'CANCELLED' ELSE 'QUEUED' END, \
                     finished_at = CASE WHEN cancel_requested THEN $1 END, \
                     error = CASE WHEN cancel_requested THEN 'cancelled' END, \
                     error_kind = CASE WHEN cancel_requested THEN 'CANCELLED' END, \
                     started_at = CASE WHEN cancel_requested THEN started_at END, \
                     node_id = NULL, lease_expires_at = NULL \
                 WHERE id = ANY($2) AND (status || '') = 'RUNNING'",
            )
            .bind(now)
            .bind(chunk)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    async fn get_execution(&self, id: &str) -> Result<Option<Execution>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            execution_columns!(),
            " FROM executions WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?
        .as_ref()
        .map(execution_from_row)
        .transpose()
    }

    async fn list_executions(
        &self,
        filter: &ExecutionFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Execution>, StoreError> {
        let (limit, fetch) = page_fetch(limit);
        let mut query = QueryBuilder::<Postgres>::new("");
        push_list_executions(&mut query, filter, cursor, fetch);
        let rows = query.build().fetch_all(&self.pool).await.map_err(db)?;
        let executions = rows
            .iter()
            .map(execution_from_row)
            .collect::<Result<_, _>>()?;
        Ok(page(executions, limit, |e: &Execution| &e.id))
    }

    async fn execution_logs(
        &self,
        id: &str,
        after: Option<u32>,
        limit: u32,
    ) -> Result<Vec<LogEntry>, StoreError> {
        sqlx::query(
            "SELECT seq, ts, level, message, fields FROM execution_logs \
             WHERE execution_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(id)
        .bind(after.map_or(-1, i64::from))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(log_from_row)
        .collect()
    }

    async fn cancel_execution(&self, id: &str, now: Millis) -> Result<CancelEffect, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        // Locked, so a claim running now either took it before (and it is flagged) or
        // skips it and finds it cancelled.
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM executions WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
        let Some(status) = status else {
            return Ok(CancelEffect::NotFound);
        };
        let effect = match parse_status(&status)? {
            ExecutionStatus::Queued => {
                sqlx::query(
                    "UPDATE executions SET status = 'CANCELLED', finished_at = $1, \
                         error = 'cancelled before it started', error_kind = 'CANCELLED' \
                     WHERE id = $2",
                )
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                CancelEffect::CancelledQueued
            }
            ExecutionStatus::Running => {
                sqlx::query("UPDATE executions SET cancel_requested = true WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                CancelEffect::FlaggedRunning
            }
            final_status => CancelEffect::AlreadyFinal(final_status),
        };
        tx.commit().await.map_err(db)?;
        Ok(effect)
    }

    async fn cancel_requested(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        let mut flagged = Vec::new();
        for chunk in ids.chunks(MAX_ROWS) {
            let ids: Vec<String> = sqlx::query_scalar(
                "SELECT id FROM executions \
                 WHERE id = ANY($1) AND (status || '') = 'RUNNING' AND cancel_requested",
            )
            .bind(chunk)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            flagged.extend(ids);
        }
        Ok(flagged)
    }

    async fn due_queued_executions(
        &self,
        now: Millis,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar(
            "SELECT id FROM executions \
             WHERE status = 'QUEUED' AND run_after <= $1 AND NOT cancel_requested \
             ORDER BY run_after, id LIMIT $2",
        )
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db)
    }

    async fn next_queued_due(&self) -> Result<Option<Millis>, StoreError> {
        sqlx::query_scalar("SELECT MIN(run_after) FROM executions WHERE status = 'QUEUED'")
            .fetch_one(&self.pool)
            .await
            .map_err(db)
    }

    async fn expired_executions(
        &self,
        now: Millis,
        limit: u32,
    ) -> Result<Vec<Execution>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            execution_columns!(),
            " FROM executions WHERE status = 'RUNNING' AND lease_expires_at < $1 \
              ORDER BY lease_expires_at, id LIMIT $2"
        ))
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(execution_from_row)
        .collect()
    }

    async fn executions_held_by(
        &self,
        node_id: &str,
        limit: u32,
    ) -> Result<Vec<Execution>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            execution_columns!(),
            " FROM executions WHERE status = 'RUNNING' AND node_id = $1 \
              ORDER BY lease_expires_at, id LIMIT $2"
        ))
        .bind(node_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(execution_from_row)
        .collect()
    }

    async fn settle_expired_execution(
        &self,
        id: &str,
        expired_before: Millis,
        now: Millis,
        error: &str,
        retry: Option<&NewExecution>,
    ) -> Result<Settled, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let held: Option<(bool, bool)> = sqlx::query_as(
            "SELECT handler_began, cancel_requested FROM executions \
             WHERE id = $1 AND status = 'RUNNING' AND lease_expires_at < $2 FOR UPDATE",
        )
        .bind(id)
        .bind(expired_before)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let settled = match held {
            None => return Ok(Settled::NotExpired),
            Some((false, false)) => {
                sqlx::query(
                    "UPDATE executions SET status = 'QUEUED', started_at = NULL, node_id = NULL, \
                         lease_expires_at = NULL WHERE id = $1",
                )
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                Settled::Requeued
            }
            Some((false, true)) => {
                sqlx::query(
                    "UPDATE executions SET status = 'CANCELLED', error = 'cancelled', \
                         error_kind = 'CANCELLED', finished_at = $1, lease_expires_at = NULL \
                     WHERE id = $2",
                )
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                Settled::Cancelled
            }
            Some((true, _)) => {
                sqlx::query(
                    "UPDATE executions SET status = 'FAILED', error = $1, \
                         error_kind = 'LEASE_EXPIRED', finished_at = $2, lease_expires_at = NULL \
                     WHERE id = $3",
                )
                .bind(pg_text(error))
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                failpoint("settle_expired_execution.before_retry", [id])?;
                if let Some(retry) = retry {
                    insert_executions(&mut tx, &[retry]).await?;
                }
                Settled::Failed
            }
        };
        tx.commit().await.map_err(db)?;
        Ok(settled)
    }

    async fn mark_handlers_began(&self, ids: &[String]) -> Result<(), StoreError> {
        for chunk in ids.chunks(MAX_ROWS) {
            sqlx::query(
                "UPDATE executions SET handler_began = TRUE \
                 WHERE id = ANY($1) AND (status || '') = 'RUNNING'",
            )
            .bind(chunk)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        }
        Ok(())
    }

    // ---- events --------------------------------------------------------------------

    async fn insert_event(&self, event: &Event) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO events (id, topic, payload, source, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&event.id)
        .bind(pg_text(&event.topic))
        .bind(json_text("payload", &event.payload)?)
        .bind(pg_text(&event.source))
        .bind(event.created_at)
        .execute(&self.pool)
        .await
        .map_err(|err| {
            if is_unique_violation(&err) {
                StoreError::Conflict(format!("an event with id `{}` already exists", event.id))
            } else {
                db(err)
            }
        })?;
        Ok(())
    }

    async fn list_events(
        &self,
        topic: Option<&str>,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Event>, StoreError> {
        let (limit, fetch) = page_fetch(limit);
        let mut query = QueryBuilder::<Postgres>::new(
            "SELECT id, topic, payload, source, created_at FROM events WHERE true",
        );
        if let Some(topic) = topic {
            query
                .push(" AND topic = ")
                .push_bind(pg_text(topic).into_owned());
        }
        if let Some(cursor) = cursor {
            query.push(" AND id < ").push_bind(cursor);
        }
        query.push(" ORDER BY id DESC LIMIT ").push_bind(fetch);
        let rows = query.build().fetch_all(&self.pool).await.map_err(db)?;
        let events = rows.iter().map(event_from_row).collect::<Result<_, _>>()?;
        Ok(page(events, limit, |e: &Event| &e.id))
    }

    // ---- module data ---------------------------------------------------------------

    async fn kv_get(&self, module: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        sqlx::query_scalar("SELECT value FROM kv WHERE module = $1 AND key = $2")
            .bind(module)
            .bind(key.as_bytes())
            .fetch_optional(&self.pool)
            .await
            .map_err(db)
    }

    async fn kv_set(
        &self,
        module: &str,
        key: &str,
        value: &[u8],
        now: Millis,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO kv (module, key, value, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (module, key) DO UPDATE SET \
                 value = excluded.value, updated_at = excluded.updated_at",
        )
        .bind(module)
        .bind(key.as_bytes())
        .bind(value)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn kv_delete(&self, module: &str, key: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM kv WHERE module = $1 AND key = $2")
            .bind(module)
            .bind(key.as_bytes())
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn kv_list_keys(
        &self,
        module: &str,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        // A key range, not LIKE: no character of a prefix is a wildcard.
        let mut query = QueryBuilder::<Postgres>::new("SELECT key FROM kv WHERE module = ");
        query
            .push_bind(module)
            .push(" AND key >= ")
            .push_bind(prefix.as_bytes());
        if let Some(bound) = prefix_upper_bound(prefix.as_bytes()) {
            query.push(" AND key < ").push_bind(bound);
        }
        query
            .push(" ORDER BY key LIMIT ")
            .push_bind(i64::from(limit));
        let keys: Vec<Vec<u8>> = query
            .build_query_scalar()
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        keys.into_iter()
            .map(|key| String::from_utf8(key).map_err(|err| corrupt("key", err)))
            .collect()
    }

    async fn insert_metric_samples(
        &self,
        module: &str,
        samples: &[MetricSample],
    ) -> Result<(), StoreError> {
        if samples.is_empty() {
            return Ok(());
        }
        let mut rows = Vec::with_capacity(samples.len());
        for sample in samples {
            rows.push((sample, json_text("labels", &sample.labels)?));
        }
        let mut tx = self.pool.begin().await.map_err(db)?;
        for chunk in rows.chunks(MAX_ROWS) {
            // In the order given: the identity column is the order among equal times.
            sqlx::query(
                "INSERT INTO metric_samples (module, name, labels, value, ts) \
                 SELECT $1, name, labels, value, ts \
                 FROM UNNEST($2::text[], $3::text[], $4::float8[], $5::int8[]) \
                     WITH ORDINALITY AS s (name, labels, value, ts, position) \
                 ORDER BY position",
            )
            .bind(module)
            .bind(chunk.iter().map(|(s, _)| pg_text(&s.name)).bind_iter())
            .bind(chunk.iter().map(|(_, labels)| labels.as_str()).bind_iter())
            .bind(chunk.iter().map(|(s, _)| s.value).bind_iter())
            .bind(chunk.iter().map(|(s, _)| s.ts_ms).bind_iter())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    async fn metric_samples(
        &self,
        module: &str,
        name: &str,
        since: Millis,
        limit: u32,
    ) -> Result<Vec<MetricSample>, StoreError> {
        sqlx::query(
            "SELECT name, labels, value, ts FROM metric_samples \
             WHERE module = $1 AND name = $2 AND ts >= $3 ORDER BY ts, id LIMIT $4",
        )
        .bind(module)
        .bind(pg_text(name))
        .bind(since)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(sample_from_row)
        .collect()
    }

    // ---- nodes and leases ------------------------------------------------------------

    async fn heartbeat_node(&self, node: &NodeHeartbeat) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO nodes \
                 (node_id, started_at, last_heartbeat_at, workers, running, version) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (node_id) DO UPDATE SET \
                 started_at = excluded.started_at, \
                 last_heartbeat_at = excluded.last_heartbeat_at, \
                 workers = excluded.workers, running = excluded.running, \
                 version = excluded.version",
        )
        .bind(&node.node_id)
        .bind(node.started_at)
        .bind(node.last_heartbeat_at)
        .bind(int4(node.workers))
        .bind(int4(node.running))
        .bind(&node.version)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn list_nodes(&self) -> Result<Vec<NodeHeartbeat>, StoreError> {
        sqlx::query(
            "SELECT node_id, started_at, last_heartbeat_at, workers, running, version \
             FROM nodes ORDER BY node_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(node_from_row)
        .collect()
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: Millis,
        ttl_ms: Millis,
    ) -> Result<Option<LeaseToken>, StoreError> {
        // One statement: the row either does not exist (first tenure, token 1) or is
        // updated only if free, expired or ours. Two would-be holders racing serialise
        // on the row lock, and the second re-evaluates the condition against the
        // first's committed row, so it cannot also win. Every SET expression reads the
        // row as it was.
        let token: Option<i64> = sqlx::query_scalar(
            "INSERT INTO leases (name, holder, token, expires_at) VALUES ($1, $2, 1, $3) \
             ON CONFLICT (name) DO UPDATE SET \
                 token = CASE WHEN leases.holder = excluded.holder \
                              THEN leases.token ELSE leases.token + 1 END, \
                 holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE leases.holder = excluded.holder OR leases.holder IS NULL \
                 OR leases.expires_at <= $4 \
             RETURNING token",
        )
        .bind(name)
        .bind(holder)
        .bind(now.saturating_add(ttl_ms))
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        token
            .map(|t| {
                u64::try_from(t)
                    .map(LeaseToken)
                    .map_err(|_| corrupt("token", format!("negative value {t}")))
            })
            .transpose()
    }

    async fn lease_holder(&self, name: &str, now: Millis) -> Result<Option<String>, StoreError> {
        let holder: Option<Option<String>> =
            sqlx::query_scalar("SELECT holder FROM leases WHERE name = $1 AND expires_at > $2")
                .bind(name)
                .bind(now)
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
        Ok(holder.flatten())
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<bool, StoreError> {
        let released =
            sqlx::query("UPDATE leases SET holder = NULL WHERE name = $1 AND holder = $2")
                .bind(name)
                .bind(holder)
                .execute(&self.pool)
                .await
                .map_err(db)?
                .rows_affected();
        Ok(released > 0)
    }

    async fn advance_schedules(
        &self,
        updates: &[(String, Option<Millis>)],
        lease: &str,
        holder: &str,
        token: LeaseToken,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let updates = last_update_per_job(updates);
        let mut tx = self.pool.begin().await.map_err(db)?;
        // FOR SHARE holds off a takeover (an update of this row) until this transaction
        // ends, so the lease cannot change hands between the check and the updates; and
        // should a takeover have committed since the statement began, the lock reads
        // the new row, which no longer matches.
        let held: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM leases \
             WHERE name = $1 AND holder = $2 AND token = $3 AND expires_at > $4 \
             FOR SHARE",
        )
        .bind(lease)
        .bind(holder)
        .bind(int(token.0))
        .bind(now)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        if held.is_none() {
            return Ok(false);
        }
        for chunk in updates.chunks(MAX_ROWS) {
            sqlx::query(
                "UPDATE jobs SET next_run_at = u.next_run_at \
                 FROM UNNEST($1::text[], $2::int8[]) AS u (id, next_run_at) \
                 WHERE jobs.id = u.id",
            )
            .bind(chunk.iter().map(|(id, _)| *id).bind_iter())
            .bind(
                chunk
                    .iter()
                    .map(|(_, next_run_at)| *next_run_at)
                    .bind_iter(),
            )
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Trigger, new_id};

    /// Queues 2,000 executions and returns the ids of the first 100 as an array
    /// literal's contents: a backlog enqueued faster than statistics follow.
    async fn queue_backlog(store: &PostgresStore) -> String {
        queue_executions(store, "job-1", 2_000).await[..100].join(",")
    }

    /// Queues `count` executions of `job_id` and returns their ids.
    async fn queue_executions(store: &PostgresStore, job_id: &str, count: usize) -> Vec<String> {
        let backlog: Vec<NewExecution> = (0..count)
            .map(|_| NewExecution {
                id: new_id(),
                job_id: job_id.to_owned(),
                module: "m".to_owned(),
                job: "work".to_owned(),
                trigger: Trigger::Manual,
                attempt: 1,
                retry_of: None,
                input: "{}".to_owned(),
                scheduled_at: 0,
                run_after: 0,
                cron_tick: None,
                event_id: None,
                created_at: 0,
            })
            .collect();
        store.enqueue_executions(&backlog).await.unwrap();
        backlog.into_iter().map(|e| e.id).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_claim_finds_each_execution_by_its_id_whatever_the_plan() {
        let (store, database) = super::super::tests::fresh_postgres().await;
        // A backlog enqueued faster than statistics follow: where the planner once
        // scanned every queued row for each claim.
        let wanted = queue_backlog(&store).await;
        let mut conn = PgConnection::connect(&database.url).await.unwrap();
        // Custom plans see the ids; a generic plan, used once a statement has run a few
        // times, does not, and is the one that went wrong.
        for mode in ["force_generic_plan", "force_custom_plan"] {
            let plan: Vec<String> = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "SET plan_cache_mode = {mode}; \
                 PREPARE claim (text[], text, bigint, bigint) AS {CLAIM}; \
                 EXPLAIN EXECUTE claim('{{{wanted}}}', 'n', 0, 1); \
                 DEALLOCATE claim;"
            )))
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .iter()
            .map(|row| row.get::<String, _>(0))
            .collect();
            let plan = plan.join("\n");
            assert!(plan.contains("executions_pkey"), "{mode}:\n{plan}");
            assert!(!plan.contains("executions_queued_due"), "{mode}:\n{plan}");
        }
        let _ = conn.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recording_finds_each_execution_by_its_id_whatever_the_plan() {
        let (store, _database) = super::super::tests::fresh_postgres().await;
        let wanted = queue_backlog(&store).await;
        // A connection of the store's own pool, with the settings every node runs with.
        let mut conn = store.pool.acquire().await.unwrap();
        for mode in ["force_generic_plan", "force_custom_plan"] {
            let plan: Vec<String> = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "SET plan_cache_mode = {mode}; \
                 PREPARE record (text[], text[], text[], text[], text[], int8[], float8[], \
                     int8[], int8[], text[], int4[], int8[], text[], text[], text[], float8[]) \
                     AS {RECORD}; \
                 EXPLAIN EXECUTE record('{{{wanted}}}', '{{}}', '{{}}', '{{}}', '{{}}', \
                     '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', \
                     '{{}}', '{{}}'); \
                 DEALLOCATE record; \
                 RESET plan_cache_mode;"
            )))
            .fetch_all(&mut *conn)
            .await
            .unwrap()
            .iter()
            .map(|row| row.get::<String, _>(0))
            .collect();
            let plan = plan.join("\n");
            assert!(plan.contains("executions_pkey"), "{mode}:\n{plan}");
            assert!(
                !plan.contains("executions_running_lease"),
                "{mode}:\n{plan}"
            );
            assert!(!plan.contains("Seq Scan on executions"), "{mode}:\n{plan}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_page_of_a_jobs_executions_walks_its_index_whatever_the_statistics() {
        let (store, _database) = super::super::tests::fresh_postgres().await;
        // A table never analyzed yet, as in a new deployment until autovacuum's first
        // pass: the planner's default estimates give the job a handful of rows.
        let mut ids = queue_executions(&store, "job-1", 2_000).await;
        ids.sort();
        sqlx::query(
            "UPDATE executions SET status = 'COMPLETED', finished_at = 1 WHERE id = ANY($1)",
        )
        .bind(&ids)
        .execute(&store.pool)
        .await
        .unwrap();
        let mut conn = store.pool.acquire().await.unwrap();
        let by_job = ExecutionFilter {
            job_id: Some("job-1".to_owned()),
            status: None,
        };
        let completed_of_job = ExecutionFilter {
            status: Some(ExecutionStatus::Completed),
            ..by_job.clone()
        };
        let middle = ids[1_000].as_str();
        for (filter, cursor) in [
            (&by_job, None),
            (&completed_of_job, None),
            (&completed_of_job, Some(middle)),
        ] {
            let mut query = QueryBuilder::new("EXPLAIN ");
            push_list_executions(&mut query, filter, cursor, 51);
            let plan: Vec<String> = query
                .build()
                .fetch_all(&mut *conn)
                .await
                .unwrap()
                .iter()
                .map(|row| row.get::<String, _>(0))
                .collect();
            let plan = plan.join("\n");
            assert!(
                plan.contains("Index Scan Backward using executions_by_job"),
                "{filter:?} after {cursor:?}:\n{plan}"
            );
            assert!(
                !plan.contains("Sort"),
                "{filter:?} after {cursor:?}:\n{plan}"
            );
        }
        // The walk finds what the listing promises.
        let page = store
            .list_executions(&completed_of_job, Some(middle), 50)
            .await
            .unwrap();
        let expected: Vec<&str> = ids[950..1_000].iter().rev().map(String::as_str).collect();
        let listed: Vec<&str> = page.items.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(listed, expected);
    }

    #[test]
    fn a_key_prefix_bound_bumps_the_last_byte_that_can_grow() {
        assert_eq!(prefix_upper_bound(b"abc").as_deref(), Some(&b"abd"[..]));
        assert_eq!(prefix_upper_bound(b"a\xff\xff").as_deref(), Some(&b"b"[..]));
        assert_eq!(prefix_upper_bound(b""), None);
        assert_eq!(prefix_upper_bound(b"\xff"), None);
        // The bound of a UTF-8 prefix is above every UTF-8 continuation of it.
        let bound = prefix_upper_bound("é".as_bytes()).unwrap();
        assert!("é\u{10FFFF}".as_bytes() < bound.as_slice());
        assert!("ê".as_bytes() >= bound.as_slice());
    }

    #[test]
    fn nul_is_the_only_character_text_loses() {
        assert_eq!(pg_text("plain"), "plain");
        assert!(matches!(pg_text("plain"), Cow::Borrowed(_)));
        assert_eq!(pg_text("a\0b\0"), "a\u{FFFD}b\u{FFFD}");
    }
}
