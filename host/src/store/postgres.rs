//! The distributed backend: one PostgreSQL database shared by every node. Brings its
//! connections and what PostgreSQL does its own way (the hot path's array statements,
//! row locks, commit durability, the words of [`Sql`] it spells differently); the rest
//! of the store is written once in `shared`. Decides no policy (that is the services'
//! job).
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

use std::borrow::Cow;
use std::collections::HashSet;
use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{
    PgBindIterExt, PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow, Postgres,
};
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Pool, QueryBuilder, Transaction};

use super::convert::{StoredInput, corrupt, db, in_given_order, int, json_text, stored_inputs};
use super::shared::usage::{
    COUNT_DURATIONS, COUNT_LATENCY, COUNT_OUTBOUND, Counted, STEPS_CTE, count_runs_sql,
};
use super::shared::{
    Backend, adopt_large_job_inputs, claimed_columns, insert_inputs, int4, take_idempotency_key,
};
use super::sql::{Sql, claimed_from_row, statement_runners};
use super::{
    ClaimedExecution, ExecutionFilter, IdempotencyKey, ManualOutcome, ManualRun, Retry, StoreError,
    failpoint,
};
use crate::domain::usage::OutboundTally;
use crate::domain::{ExecutionResult, ExecutionStatus, Millis, NewExecution};
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

/// The PostgreSQL store of a distributed deployment.
#[derive(Debug, Clone)]
pub(crate) struct PostgresStore {
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
    pub(crate) async fn connect(url: &str) -> Result<Self, StoreError> {
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
        let store = Self {
            pool,
            claims,
            flushes,
        };
        // Nodes starting together may both store one input: the writes are the same and
        // idempotent.
        adopt_large_job_inputs(&store).await?;
        super::shared::adopt_metric_samples(&store).await?;
        Ok(store)
    }
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
     RETURNING e.id, e.job_id, e.module, e.job, e.attempt, e.trigger, e.retry_of, ",
    execution_input!(),
    ", e.scheduled_at, e.run_after, (SELECT revision FROM jobs j WHERE j.id = e.job_id) AS job_revision"
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
    "RETURNING ",
    claimed_columns!()
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

/// The recording of up to [`MAX_ROWS`] results (`$1` to `$9` and `$16`, a column each),
/// the log lines (`$10` to `$15`) of the executions it recorded, and their usage counts
/// (`$17` to `$19`: each result's duration bucket, log bytes and outbound requests; see
/// `shared/usage.rs`), all in one statement. With `calls`, also the runs' outbound
/// requests per host (`$20` to `$30`) and their latency histograms (`$31` to `$34`).
/// `(e.status || '')`: see "Finding executions by a list of ids" above.
fn record_statement(calls: bool) -> String {
    let mut sql = format!(
        "WITH recorded AS ( \
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
             RETURNING e.id, e.job_id, e.module, e.job, e.status, e.finished_at, \
                 e.duration_ms, e.cpu_time_ms, e.fuel_consumed, e.memory_peak_bytes \
         ), logged AS ( \
             INSERT INTO execution_logs (execution_id, seq, ts, level, message, fields) \
             SELECT l.execution_id, l.seq, l.ts, l.level, l.message, l.fields \
             FROM UNNEST($10::text[], $11::int4[], $12::int8[], $13::text[], $14::text[], \
                         $15::text[]) \
                 AS l (execution_id, seq, ts, level, message, fields) \
             WHERE l.execution_id IN (SELECT id FROM recorded) \
             ON CONFLICT DO NOTHING \
         ), done AS ( \
             SELECT r.id, r.job_id, r.module, r.job, r.status, r.finished_at, r.duration_ms, \
                 r.cpu_time_ms, r.fuel_consumed, r.memory_peak_bytes, \
                 x.bucket, x.log_bytes, x.outbound_requests \
             FROM recorded r \
             JOIN UNNEST($1::text[], $17::int8[], $18::int8[], $19::int8[]) \
                 AS x (id, bucket, log_bytes, outbound_requests) ON x.id = r.id \
         ), {STEPS_CTE}, counted AS ({count_runs}), timed AS ({COUNT_DURATIONS})",
        count_runs = count_runs_sql("GREATEST"),
    );
    if calls {
        sql.push_str(&format!(
            ", calls AS ( \
                 SELECT * FROM UNNEST($20::text[], $21::text[], $22::int8[], $23::int8[], \
                     $24::int8[], $25::int8[], $26::int8[], $27::int8[], $28::int8[], \
                     $29::int8[], $30::int8[]) \
                 AS c (id, host, requests, responses_2xx, responses_3xx, responses_4xx, \
                       responses_5xx, errors, denied, bytes_sent, bytes_received) \
             ), call_latency AS ( \
                 SELECT * FROM UNNEST($31::text[], $32::text[], $33::int8[], $34::int8[]) \
                 AS l (id, host, bucket, count) \
             ), called AS ({COUNT_OUTBOUND}), waited AS ({COUNT_LATENCY})"
        ));
    }
    sql.push_str(" SELECT id FROM recorded");
    sql
}

/// [`record_statement`] of batches without outbound requests (nearly all), and of those
/// with.
static RECORD: LazyLock<String> = LazyLock::new(|| record_statement(false));
static RECORD_WITH_CALLS: LazyLock<String> = LazyLock::new(|| record_statement(true));

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
    let counted: Vec<Counted<'_>> = results.iter().map(|r| Counted::recorded(r)).collect();
    let calls: Vec<(&str, &OutboundTally)> = results
        .iter()
        .flat_map(|r| r.outbound.iter().map(move |t| (r.id.as_str(), t)))
        .collect();
    let statement = if calls.is_empty() {
        RECORD.as_str()
    } else {
        RECORD_WITH_CALLS.as_str()
    };
    let query = sqlx::query_scalar(AssertSqlSafe(statement))
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
        .bind(counted.iter().map(|c| c.bucket).bind_iter())
        .bind(counted.iter().map(|c| c.log_bytes).bind_iter())
        .bind(counted.iter().map(Counted::outbound_requests).bind_iter());
    let latency: Vec<(&str, &str, i64, i64)> = calls
        .iter()
        .flat_map(|(id, t)| {
            t.latency
                .buckets()
                .map(move |(b, n)| (*id, t.host.as_str(), i64::from(b), n))
        })
        .collect();
    let query = if calls.is_empty() {
        query
    } else {
        query
            .bind(calls.iter().map(|(id, _)| *id).bind_iter())
            .bind(calls.iter().map(|(_, t)| t.host.as_str()).bind_iter())
            .bind(calls.iter().map(|(_, t)| t.requests).bind_iter())
            .bind(calls.iter().map(|(_, t)| t.responses_2xx).bind_iter())
            .bind(calls.iter().map(|(_, t)| t.responses_3xx).bind_iter())
            .bind(calls.iter().map(|(_, t)| t.responses_4xx).bind_iter())
            .bind(calls.iter().map(|(_, t)| t.responses_5xx).bind_iter())
            .bind(calls.iter().map(|(_, t)| t.errors).bind_iter())
            .bind(calls.iter().map(|(_, t)| t.denied).bind_iter())
            .bind(calls.iter().map(|(_, t)| t.bytes_sent).bind_iter())
            .bind(calls.iter().map(|(_, t)| t.bytes_received).bind_iter())
            .bind(latency.iter().map(|l| l.0).bind_iter())
            .bind(latency.iter().map(|l| l.1).bind_iter())
            .bind(latency.iter().map(|l| l.2).bind_iter())
            .bind(latency.iter().map(|l| l.3).bind_iter())
    };
    query.fetch_all(conn).await.map_err(db)
}

#[async_trait::async_trait]
impl Backend for PostgresStore {
    type Db = Postgres;

    fn reader(&self) -> &Pool<Postgres> {
        &self.pool
    }

    fn writer(&self) -> &Pool<Postgres> {
        &self.pool
    }

    fn named_pools(&self) -> Vec<(&'static str, &Pool<Postgres>)> {
        vec![("main", &self.pool), ("claims", &self.claims)]
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.pool.begin().await.map_err(db)
    }

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

    async fn insert_executions(
        conn: &mut PgConnection,
        batch: &[&NewExecution],
    ) -> Result<Vec<String>, StoreError> {
        let mut batch = batch.to_vec();
        batch.sort_by(|a, b| insertion_order(a).cmp(&insertion_order(b)));
        insert_executions(conn, &batch).await
    }

    async fn enqueue(&self, executions: &[NewExecution]) -> Result<Vec<String>, StoreError> {
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
                take_idempotency_key::<Postgres>(&mut tx, key, job_id, runs, status, now).await?
            {
                return Ok(earlier);
            }
        }
        // A statement of their own, before the runs: a body written by a `WITH` clause
        // of the insert would be invisible to its `RETURNING`, which reads the input.
        insert_inputs::<Postgres>(&mut tx, &inputs.bodies, now).await?;
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

    async fn claim(
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

    async fn record(
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

    async fn give_back_space(&self) -> Result<bool, StoreError> {
        // Autovacuum makes deleted rows' space reusable; the tables keep their size.
        Ok(false)
    }

    async fn flush_commits(&self) -> Result<(), StoreError> {
        if self.flushes {
            sqlx::query("SELECT pg_logical_emit_message(true, 'runcell', '')")
                .execute(&self.pool)
                .await
                .map_err(db)?;
        }
        Ok(())
    }

    fn push_execution_filter(query: &mut QueryBuilder<Postgres>, filter: &ExecutionFilter) {
        query.push(" WHERE true");
        if let Some(job_id) = &filter.job_id {
            query.push(" AND job_id = ").push_bind(job_id.as_str());
        }
        if let Some(status) = filter.status {
            // A literal, not a parameter: only then can the planner see that the query
            // implies a partial index's predicate (the migration lists which serves
            // which status). The value is one of our own constants.
            query.push(format_args!(" AND status = '{}'", status.as_str()));
        }
    }

    async fn list_keys(
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
}

impl Sql for Postgres {
    statement_runners!();

    fn text(text: &str) -> Cow<'_, str> {
        pg_text(text)
    }

    fn push_ids(query: &mut QueryBuilder<Self>, column: &str, ids: &[String]) {
        query.push(format_args!("{column} = ANY("));
        query.push_bind(ids);
        query.push(")");
    }

    fn bind_key<'q>(
        query: Query<'q, Self, Self::Arguments>,
        key: &str,
    ) -> Query<'q, Self, Self::Arguments> {
        query.bind(key.as_bytes())
    }

    const MAX_ROWS: usize = MAX_ROWS;
    const FOR_UPDATE: &'static str = " FOR UPDATE";
    const FOR_SHARE: &'static str = " FOR SHARE";
    const FOR_UPDATE_SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";

    /// See "Finding executions by a list of ids" above.
    const BY_KEY_STATUS: &'static str = "(status || '')";

    /// PostgreSQL plans by statistics, and `enable_seqscan = off` leaves it the index.
    const QUEUED_DUE_INDEX: &'static str = "";
    const RUNNING_LEASE_INDEX: &'static str = "";

    const GREATEST: &'static str = "GREATEST";
    const BUCKET_LIST: &'static str = "string_agg(bucket || ':' || count, ',')";
    const VERSION_UPLOAD_ORDER: &'static str = "seq";

    const USERNAME_LOCK: Option<&'static str> =
        Some("SELECT pg_advisory_xact_lock(hashtext('runcell.username:' || lower($1)))");
}

#[cfg(test)]
mod tests {
    use sqlx::Row;

    use super::super::shared::list_executions_statement;
    use super::*;
    use crate::domain::{Trigger, new_id};
    use crate::store::Store;

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
            let plan: Vec<String> = sqlx::raw_sql(AssertSqlSafe(format!(
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
            let plan: Vec<String> = sqlx::raw_sql(AssertSqlSafe(format!(
                "SET plan_cache_mode = {mode}; \
                 PREPARE record (text[], text[], text[], text[], text[], int8[], float8[], \
                     int8[], int8[], text[], int4[], int8[], text[], text[], text[], float8[], \
                     int8[], int8[], int8[]) \
                     AS {record}; \
                 EXPLAIN EXECUTE record('{{{wanted}}}', '{{}}', '{{}}', '{{}}', '{{}}', \
                     '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', \
                     '{{}}', '{{}}', '{{}}', '{{}}', '{{}}'); \
                 DEALLOCATE record; \
                 RESET plan_cache_mode;",
                record = *RECORD,
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
            let mut query =
                list_executions_statement::<PostgresStore>("EXPLAIN ", filter, cursor, 51);
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
