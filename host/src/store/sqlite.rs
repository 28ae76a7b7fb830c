//! The embedded backend: one SQLite file under the data directory. Brings its
//! connections and what SQLite does its own way (one writer, checkpointing, the hot
//! path's padded multi-row statements, the words of [`Sql`] it spells differently); the
//! rest of the store is written once in `shared`. Decides no policy (that is the
//! services' job) and never blocks the async runtime (sqlx runs each connection on its
//! own thread).
//!
//! # Connections: one writer, a few readers
//!
//! SQLite admits one writer per file at a time. Several writing connections would not
//! write faster; they would meet `SQLITE_BUSY`, and the busy handler behind
//! `busy_timeout` resolves that by sleeping and polling (sleeps grow to 100 ms), which
//! under thousands of writes per second turns lock contention into latency. Worse, a
//! transaction that reads before it writes fails at once with `SQLITE_BUSY_SNAPSHOT`
//! when another connection committed in between. So every write goes through a pool of
//! exactly **one** connection: contention becomes an in-process FIFO queue of tasks
//! waiting for that connection (no sleeping, no retry), every write transaction can
//! start with `BEGIN IMMEDIATE`, and its prepared-statement cache stays hot.
//!
//! Reads never wait for the writer: in WAL mode a reader sees the last committed
//! snapshot while the writer works, so reads use their own pool of read-only
//! connections. `busy_timeout` (5 s) remains for other processes that open the same
//! file (a backup, a second `runcell` pointed at the same data directory by mistake).
//!
//! # Batches
//!
//! The hot path (enqueue, claim, record) is batched: one multi-row statement per chunk
//! of at most [`MAX_ROWS`] rows, so recording a thousand executions costs a handful of
//! round trips to the connection's thread rather than a thousand. Chunks are padded to
//! a few fixed sizes so their statements are prepared once ([`padded_len`]).
//!
//! Measured on the 2-core reference machine (`hot_path_throughput_of_20000_executions`,
//! release build), enqueue + claim + record without logs moves about 28,000 executions
//! per second in batches of 200 to 1,000, and 18,000 in batches of 50: each statement
//! costs a commit (the touched pages of every index are rewritten into the WAL) and a
//! hand-off to the connection's thread, so callers should batch.

mod checkpoint;

use std::borrow::Cow;
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::query::Query;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Pool, QueryBuilder, Sqlite, SqlitePool, Transaction};

use self::checkpoint::Checkpointer;
use super::convert::{StoredInput, db, in_given_order, int, json_text, stored_inputs};
use super::shared::usage::{Counted, count_finished};
use super::shared::{
    Backend, Write, adopt_large_job_inputs, claimed_columns, insert_inputs, padded,
    take_idempotency_key,
};
use super::sql::{Sql, claimed_from_row, statement_runners};
use super::{
    ClaimedExecution, ExecutionFilter, INLINE_INPUT_MAX, IdempotencyKey, ManualOutcome, ManualRun,
    Retry, StoreError, failpoint,
};
use crate::domain::{ExecutionResult, ExecutionStatus, LogEntry, Millis, NewExecution};
static MIGRATOR: Migrator = sqlx::migrate!("../migrations/sqlite");

/// How long a statement waits for a lock held by another process before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Read connections. The machine this must run well on has two cores; reads are short
/// point lookups and pages, so a few connections keep the API responsive while the
/// worker pool writes, and more would only add threads.
const READ_CONNECTIONS: u32 = 4;

/// Rows per multi-row statement. SQLite accepts up to 32,766 bound values per
/// statement; the widest row bound here has 13 values, so 512 rows stay far below it
/// while making per-statement overhead negligible.
const MAX_ROWS: usize = 512;

/// Pages each `PRAGMA incremental_vacuum` gives back: 4 MiB of 4 KiB pages, a few
/// milliseconds of the write lock per call.
const VACUUM_PAGES: u32 = 1024;

/// How much of the database file each connection maps into memory.
const MMAP_BYTES: u64 = 256 * 1024 * 1024;
/// Page cache per connection, in KiB (SQLite's default is about 2 MiB).
const PAGE_CACHE_KIB: u64 = 16 * 1024;

/// The size the write-ahead log is cut back to once checkpointed, in bytes.
const WAL_SIZE_LIMIT: u64 = 64 * 1024 * 1024;

/// Prepared statements kept per connection: every padded size (see [`padded_len`]) of
/// every batched statement, plus the single-row ones, with room to spare.
const STATEMENT_CACHE: usize = 256;

/// The WHERE clause of the partial index `executions_ended_badly`, which a query must
/// repeat word for word for SQLite to use the index.
const ENDED_BADLY: &str = "(status = 'FAILED' OR status = 'TIMED_OUT' OR status = 'CANCELLED')";

/// The SQLite-file store of an embedded deployment.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Exactly one connection: see the module documentation.
    writer: SqlitePool,
    /// Read-only connections (for an in-memory database, the writer itself).
    reader: SqlitePool,
    /// Copies the log into the database file (none for an in-memory database); held
    /// for as long as the store lives, read only by tests.
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "held only to keep the checkpointer running")
    )]
    checkpointer: Option<Arc<Checkpointer>>,
}

impl SqliteStore {
    /// Opens (creating if missing, with its parent directory) the database file at
    /// `path` and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent).await.map_err(|err| {
                StoreError::Database(format!("cannot create {}: {err}", parent.display()))
            })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            .statement_cache_capacity(STATEMENT_CACHE)
            // Hot pages are read through the mapping and the page cache instead of a
            // `pread` copy per page (both grow only as the database does).
            .pragma("mmap_size", MMAP_BYTES.to_string())
            .pragma("cache_size", format!("-{PAGE_CACHE_KIB}"))
            // The checkpointer copies the log back; see `checkpoint`.
            .pragma("wal_autocheckpoint", "0")
            // A log that grew under a burst is cut back once it is copied.
            .pragma("journal_size_limit", WAL_SIZE_LIMIT.to_string());
        // Opened first: it creates the file, switches it to WAL and migrates it, all of
        // which the read-only connections cannot do.
        let writer = writer_pool_options()
            .connect_with(options.clone())
            .await
            .map_err(|err| open_error(path, &err))?;
        use_incremental_vacuum(&writer, path).await?;
        MIGRATOR
            .run(&writer)
            .await
            .map_err(|err| StoreError::Database(format!("migrating {}: {err}", path.display())))?;
        let checkpointer = Checkpointer::start(&options)
            .await
            .map_err(|err| open_error(path, &err))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READ_CONNECTIONS)
            .test_before_acquire(false)
            .connect_with(options.read_only(true))
            .await
            .map_err(|err| open_error(path, &err))?;
        let store = Self {
            writer,
            reader,
            checkpointer: Some(Arc::new(checkpointer)),
        };
        adopt_large_job_inputs(&store).await?;
        super::shared::adopt_metric_samples(&store).await?;
        Ok(store)
    }

    /// A private database that lives as long as this store (and its clones); for tests
    /// and throwaway local runs. Reads and writes share its single connection.
    pub async fn open_in_memory() -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new()
            .in_memory(true)
            .foreign_keys(true)
            .statement_cache_capacity(STATEMENT_CACHE);
        let writer = writer_pool_options()
            .connect_with(options)
            .await
            .map_err(db)?;
        MIGRATOR
            .run(&writer)
            .await
            .map_err(|err| StoreError::Database(format!("migrating: {err}")))?;
        let store = Self {
            reader: writer.clone(),
            writer,
            checkpointer: None,
        };
        adopt_large_job_inputs(&store).await?;
        super::shared::adopt_metric_samples(&store).await?;
        Ok(store)
    }
}

/// Makes the file give pruned history's space back (`auto_vacuum = INCREMENTAL`, then
/// `PRAGMA incremental_vacuum` after each pruning): without it, deleted pages are only
/// reused and the file never shrinks. The mode takes effect with a `VACUUM`: instant on
/// a new database, a rewrite of the whole file (logged) on one made before pruning
/// existed, once.
async fn use_incremental_vacuum(writer: &Pool<Sqlite>, path: &Path) -> Result<(), StoreError> {
    const INCREMENTAL: i64 = 2;
    let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum")
        .fetch_one(writer)
        .await
        .map_err(db)?;
    if mode == INCREMENTAL {
        return Ok(());
    }
    let tables: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_master")
        .fetch_one(writer)
        .await
        .map_err(db)?;
    if tables > 0 {
        tracing::info!(
            file = %path.display(),
            "rewriting the database once so that pruned history gives its space back"
        );
    }
    sqlx::query("PRAGMA auto_vacuum = INCREMENTAL")
        .execute(writer)
        .await
        .map_err(db)?;
    sqlx::query("VACUUM").execute(writer).await.map_err(db)?;
    Ok(())
}

/// The one writing connection, never closed for idleness: an in-memory database lives
/// only as long as its connection, and a file's WAL is cheapest kept open.
fn writer_pool_options() -> SqlitePoolOptions {
    SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        // A ping before each use would double every round trip to the connection's
        // thread; the readers skip it for the same reason.
        .test_before_acquire(false)
}

fn open_error(path: &Path, err: &sqlx::Error) -> StoreError {
    StoreError::Database(format!("cannot open {}: {err}", path.display()))
}

/// The smallest string above every string that starts with `prefix`, if one exists:
/// the prefix with its last character that can grow bumped to the next code point.
/// SQLite compares text byte by byte, and UTF-8 bytes sort like code points, so
/// `prefix <= key < bound` is exactly "key starts with prefix", and uses the index.
fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last {
            '\u{D7FF}' => Some('\u{E000}'),
            other => char::from_u32(u32::from(other) + 1),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// The creation of up to [`MAX_ROWS`] manual runs of `job_id`, each with its input as
/// stored (see [`stored_inputs`]), only while the job and its module are enabled:
/// queued, or, given a node and its lease, already started there (returning what
/// [`claim_statement`] returns). A run without an input of its own takes the job's
/// stored input, by reference when the job has it stored once.
fn manual_statement(
    runs: &[(&ManualRun, &StoredInput<'_>)],
    job_id: &str,
    now: Millis,
    started_by: Option<(&str, Millis)>,
) -> QueryBuilder<Sqlite> {
    let mut query = QueryBuilder::new("WITH runs (id, input, input_hash) AS (");
    query.push_values(padded(runs, MAX_ROWS), |mut row, (run, (input, hash))| {
        row.push_bind(run.id.as_str())
            .push_bind(*input)
            .push_bind(hash.as_deref());
    });
    query.push(
        ") INSERT INTO executions (id, job_id, module, job, status, trigger, attempt, input, \
             input_hash, scheduled_at, run_after, created_at, started_at, node_id, \
             lease_expires_at) \
         SELECT runs.id, jobs.id, jobs.module, jobs.job, ",
    );
    query
        .push_bind(if started_by.is_some() {
            "RUNNING"
        } else {
            "QUEUED"
        })
        .push(
            ", 'manual', 1, \
             COALESCE(runs.input, CASE WHEN jobs.input_hash IS NULL THEN jobs.input ELSE '' END), \
             CASE WHEN runs.input IS NULL THEN jobs.input_hash ELSE runs.input_hash END, ",
        )
        .push_bind(now)
        .push(", ")
        .push_bind(now)
        .push(", ")
        .push_bind(now)
        .push(", ")
        .push_bind(started_by.map(|_| now))
        .push(", ")
        .push_bind(started_by.map(|(node_id, _)| node_id))
        .push(", ")
        .push_bind(started_by.map(|(_, lease_until)| lease_until))
        .push(" FROM runs, jobs JOIN modules ON modules.name = jobs.module WHERE jobs.id = ")
        .push_bind(job_id)
        // The padding repeats the last run; its id conflicts and is skipped.
        .push(" AND jobs.enabled AND modules.status = 'ENABLED' ON CONFLICT DO NOTHING");
    if started_by.is_some() {
        query.push(concat!(" RETURNING ", claimed_columns!()));
    } else {
        query.push(" RETURNING id");
    }
    query
}

/// Creates the queued executions of `batch` (at most [`MAX_ROWS`]) and returns the ids
/// of those created. Any uniqueness conflict skips the row: a (job, cron tick) that
/// already fired, or an id already enqueued (a retried call). Large inputs are written
/// once to `execution_inputs` first, a second statement: see [`statements_for`].
async fn insert_executions(
    conn: &mut SqliteConnection,
    batch: &[&NewExecution],
) -> Result<Vec<String>, StoreError> {
    let inputs = stored_inputs(batch.iter().map(|e| Some(e.input.as_str())));
    if let Some(now) = batch.first().map(|e| e.created_at) {
        insert_inputs::<Sqlite>(conn, &inputs.bodies, now).await?;
    }
    let rows: Vec<_> = batch.iter().zip(&inputs.rows).collect();
    let mut query = QueryBuilder::new(
        "INSERT INTO executions (id, job_id, module, job, status, trigger, attempt, \
         retry_of, input, input_hash, scheduled_at, run_after, cron_tick, event_id, \
         created_at) ",
    );
    query.push_values(padded(&rows, MAX_ROWS), |mut row, (e, (input, hash))| {
        row.push_bind(e.id.as_str())
            .push_bind(e.job_id.as_str())
            .push_bind(e.module.as_str())
            .push_bind(e.job.as_str())
            .push("'QUEUED'")
            .push_bind(e.trigger.as_str())
            .push_bind(i64::from(e.attempt))
            .push_bind(e.retry_of.as_deref())
            .push_bind(*input)
            .push_bind(hash.as_deref())
            .push_bind(e.scheduled_at)
            .push_bind(e.run_after)
            .push_bind(e.cron_tick)
            .push_bind(e.event_id.as_deref())
            .push_bind(e.created_at);
    });
    query.push(" ON CONFLICT DO NOTHING RETURNING id");
    query.build_query_scalar().fetch_all(conn).await.map_err(db)
}

/// How many statements [`insert_executions`] runs for `executions` in chunks of
/// [`MAX_ROWS`], for [`Write::new`]: one per chunk, and one more for a chunk
/// with a large input.
fn statements_for(executions: &[&NewExecution]) -> usize {
    executions
        .chunks(MAX_ROWS)
        .map(|chunk| 1 + usize::from(chunk.iter().any(|e| e.input.len() > INLINE_INPUT_MAX)))
        .sum()
}

/// The claim of up to [`MAX_ROWS`] executions (`prefix` is for `EXPLAIN` in tests).
fn claim_statement(
    prefix: &str,
    ids: &[String],
    node_id: &str,
    now: Millis,
    lease_until: Millis,
) -> QueryBuilder<Sqlite> {
    let mut query = QueryBuilder::new(format!(
        "{prefix}UPDATE executions SET status = 'RUNNING', node_id = "
    ));
    query
        .push_bind(node_id)
        .push(", started_at = ")
        .push_bind(now)
        .push(", lease_expires_at = ")
        .push_bind(lease_until)
        // `+` keeps SQLite from driving the update by an index on these columns (a walk
        // over every queued row): the ids, looked up by key, drive it.
        .push(" WHERE +status = 'QUEUED' AND +cancel_requested = 0 AND +run_after <= ")
        .push_bind(now)
        .push(" AND ");
    <Sqlite as Sql>::push_ids(&mut query, "id", ids);
    query.push(concat!(" RETURNING ", claimed_columns!()));
    query
}

/// The recording of up to [`MAX_ROWS`] results, without their logs (`prefix` is for
/// `EXPLAIN` in tests).
fn record_statement(prefix: &str, results: &[&ExecutionResult]) -> QueryBuilder<Sqlite> {
    let mut query = QueryBuilder::new(format!(
        "{prefix}WITH r (id, status, result, error, error_kind, finished_at, duration_ms, \
                 fuel_consumed, memory_peak_bytes, cpu_time_ms) AS ("
    ));
    query.push_values(padded(results, MAX_ROWS), |mut row, r| {
        row.push_bind(r.id.as_str())
            .push_bind(r.status.as_str())
            .push_bind(r.result.as_deref())
            .push_bind(r.error.as_deref())
            .push_bind(r.error_kind.as_deref())
            .push_bind(r.finished_at)
            .push_bind(r.duration_ms)
            .push_bind(int(r.fuel_consumed))
            .push_bind(int(r.memory_peak_bytes))
            .push_bind(r.cpu_time_ms);
    });
    // `+` as in the claim: each row of `r` finds its execution by key, rather than every
    // running execution being matched against all of `r`.
    query.push(
        ") UPDATE executions SET status = r.status, result = r.result, \
             error = r.error, error_kind = r.error_kind, \
             finished_at = r.finished_at, duration_ms = r.duration_ms, \
             fuel_consumed = r.fuel_consumed, memory_peak_bytes = r.memory_peak_bytes, \
             cpu_time_ms = r.cpu_time_ms, lease_expires_at = NULL \
         FROM r WHERE executions.id = r.id AND +executions.status = 'RUNNING' \
         RETURNING executions.id",
    );
    query
}

#[async_trait::async_trait]
impl Backend for SqliteStore {
    type Db = Sqlite;

    fn reader(&self) -> &Pool<Sqlite> {
        &self.reader
    }

    fn writer(&self) -> &Pool<Sqlite> {
        &self.writer
    }

    fn named_pools(&self) -> Vec<(&'static str, &Pool<Sqlite>)> {
        vec![("writer", &self.writer), ("reader", &self.reader)]
    }

    /// Starts a write transaction that takes the write lock at once, so it never fails
    /// half-way to upgrade a read lock.
    async fn begin(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(db)
    }

    #[cfg(test)]
    async fn storage_counts(&self) -> Result<super::StorageCounts, StoreError> {
        let (inline_input_bytes, stored_inputs, stored_input_bytes, idempotency_keys) =
            sqlx::query_as(
                "SELECT (SELECT COALESCE(SUM(length(CAST(input AS BLOB))), 0) FROM executions), \
                        (SELECT COUNT(*) FROM execution_inputs), \
                        (SELECT COALESCE(SUM(length(CAST(body AS BLOB))), 0) FROM execution_inputs), \
                        (SELECT COUNT(*) FROM idempotency_keys)",
            )
            .fetch_one(&self.writer)
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
        conn: &mut SqliteConnection,
        batch: &[&NewExecution],
    ) -> Result<Vec<String>, StoreError> {
        insert_executions(conn, batch).await
    }

    async fn enqueue(&self, executions: &[NewExecution]) -> Result<Vec<String>, StoreError> {
        let mut created = HashSet::with_capacity(executions.len());
        let executions: Vec<&NewExecution> = executions.iter().collect();
        let mut write = Write::new(self, statements_for(&executions)).await?;
        for chunk in executions.chunks(MAX_ROWS) {
            created.extend(insert_executions(write.conn(), chunk).await?);
        }
        write.commit().await?;
        Ok(in_given_order(executions.iter().map(|e| &e.id), created))
    }

    async fn create_manual(
        &self,
        job_id: &str,
        runs: &[ManualRun],
        now: Millis,
        started_by: Option<(&str, Millis)>,
        key: Option<&IdempotencyKey>,
    ) -> Result<ManualOutcome<Vec<SqliteRow>>, StoreError> {
        let inputs = stored_inputs(runs.iter().map(|run| run.input.as_deref()));
        let statements = runs.len().div_ceil(MAX_ROWS)
            + usize::from(!inputs.bodies.is_empty())
            + if key.is_some() { 2 } else { 0 };
        let mut write = Write::new(self, statements).await?;
        if let Some(key) = key {
            let status = if started_by.is_some() {
                ExecutionStatus::Running
            } else {
                ExecutionStatus::Queued
            };
            if let Some(earlier) =
                take_idempotency_key::<Sqlite>(write.conn(), key, job_id, runs, status, now).await?
            {
                // Dropping the transaction rolls back the expired keys' deletion too;
                // the next keyed request does it.
                return Ok(earlier);
            }
        }
        insert_inputs::<Sqlite>(write.conn(), &inputs.bodies, now).await?;
        let mut created = Vec::with_capacity(runs.len());
        let rows: Vec<_> = runs.iter().zip(&inputs.rows).collect();
        for chunk in rows.chunks(MAX_ROWS) {
            let rows = manual_statement(chunk, job_id, now, started_by)
                .build()
                .fetch_all(write.conn())
                .await
                .map_err(db)?;
            // The write lock is held from the first chunk on, so only the first can
            // find the job not runnable; returning drops (rolls back) the transaction,
            // with the key and the inputs written before it.
            if rows.is_empty() {
                return Ok(ManualOutcome::NotRunnable);
            }
            created.extend(rows);
        }
        write.commit().await?;
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
        // alone, and the condition is what makes a duplicate delivery a no-op.
        for chunk in ids.chunks(MAX_ROWS) {
            let mut query = claim_statement("", chunk, node_id, now, lease_until);
            for row in query.build().fetch_all(&self.writer).await.map_err(db)? {
                claimed.push(claimed_from_row(&row)?);
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
        let results: Vec<&ExecutionResult> = results
            .iter()
            .filter(|r| seen.insert(r.id.as_str()))
            .collect();
        if results.is_empty() {
            return Ok(Vec::new());
        }
        let mut updated: HashSet<String> = HashSet::with_capacity(results.len());
        let log_lines: usize = results.iter().map(|r| r.logs.len()).sum();
        // The update, the usage counts (two statements at least), logs, retries.
        let mut write = Write::new(
            self,
            results.len().div_ceil(MAX_ROWS) * 3
                + log_lines.div_ceil(MAX_ROWS)
                + retries.len().div_ceil(MAX_ROWS),
        )
        .await?;
        for chunk in results.chunks(MAX_ROWS) {
            let mut query = record_statement("", chunk);
            let ids: Vec<String> = query
                .build_query_scalar()
                .fetch_all(write.conn())
                .await
                .map_err(db)?;
            updated.extend(ids);
        }
        // Counted only for the rows recorded now: a late duplicate counts nothing.
        let counted: Vec<Counted<'_>> = results
            .iter()
            .filter(|r| updated.contains(&r.id))
            .map(|r| Counted::recorded(r))
            .collect();
        count_finished::<Sqlite>(write.conn(), &counted).await?;
        // Logs only of the rows recorded now: a late duplicate writes none.
        let logs: Vec<(&str, &LogEntry)> = results
            .iter()
            .filter(|r| updated.contains(&r.id))
            .flat_map(|r| r.logs.iter().map(|log| (r.id.as_str(), log)))
            .collect();
        for chunk in logs.chunks(MAX_ROWS) {
            let mut rows = Vec::with_capacity(chunk.len());
            for (id, log) in chunk {
                let fields = if log.fields.is_empty() {
                    None
                } else {
                    Some(json_text("fields", &log.fields)?)
                };
                rows.push((*id, *log, fields));
            }
            let mut query = QueryBuilder::new(
                "INSERT INTO execution_logs (execution_id, seq, ts, level, message, fields) ",
            );
            query.push_values(padded(&rows, MAX_ROWS), |mut row, (id, log, fields)| {
                row.push_bind(*id)
                    .push_bind(i64::from(log.seq))
                    .push_bind(int(log.ts_ms))
                    .push_bind(log.level.as_str())
                    .push_bind(log.message.as_str())
                    .push_bind(fields.as_deref());
            });
            query.push(" ON CONFLICT DO NOTHING");
            query.build().execute(write.conn()).await.map_err(db)?;
        }
        failpoint(
            "record_results.before_retries",
            retries.iter().map(|r| r.failed.as_str()),
        )?;
        let retries: Vec<&NewExecution> = retries
            .iter()
            .filter(|retry| updated.contains(&retry.failed))
            .map(|retry| &retry.next)
            .collect();
        for chunk in retries.chunks(MAX_ROWS) {
            insert_executions(write.conn(), chunk).await?;
        }
        write.commit().await?;
        Ok(results
            .iter()
            .filter(|r| updated.contains(&r.id))
            .map(|r| r.id.clone())
            .collect())
    }

    async fn give_back_space(&self) -> Result<bool, StoreError> {
        // A bounded number of pages per call, so the write lock is held briefly; the
        // pruner calls again while the free list is not empty.
        let mut conn = self.writer.acquire().await.map_err(db)?;
        sqlx::query(AssertSqlSafe(format!(
            "PRAGMA incremental_vacuum({VACUUM_PAGES})"
        )))
        .execute(&mut *conn)
        .await
        .map_err(db)?;
        let free: i64 = sqlx::query_scalar("PRAGMA freelist_count")
            .fetch_one(&mut *conn)
            .await
            .map_err(db)?;
        Ok(free > 0)
    }

    async fn flush_commits(&self) -> Result<(), StoreError> {
        // Every commit is as durable as it gets here (WAL, `synchronous = NORMAL`: it
        // survives a crash of the process, not of the machine).
        Ok(())
    }

    fn push_execution_filter(query: &mut QueryBuilder<Sqlite>, filter: &ExecutionFilter) {
        // SQLite plans these without statistics; each case names the index that keeps it
        // cheap (the migration explains the choice).
        match (&filter.job_id, filter.status) {
            (Some(job_id), status @ (None | Some(ExecutionStatus::Completed))) => {
                query
                    .push(" INDEXED BY executions_by_job WHERE job_id = ")
                    .push_bind(job_id.as_str());
                if let Some(status) = status {
                    query.push(" AND status = ").push_bind(status.as_str());
                }
            }
            // The queued or running rows (a backlog, the workers' runs) sorted, rather
            // than a walk of every run the job ever had.
            (Some(job_id), Some(ExecutionStatus::Queued)) => {
                query
                    .push(" INDEXED BY executions_queued_due WHERE status = 'QUEUED' AND job_id = ")
                    .push_bind(job_id.as_str());
            }
            (Some(job_id), Some(ExecutionStatus::Running)) => {
                query
                    .push(" INDEXED BY executions_running_lease WHERE status = 'RUNNING' AND job_id = ")
                    .push_bind(job_id.as_str());
            }
            (
                Some(job_id),
                Some(
                    status @ (ExecutionStatus::Failed
                    | ExecutionStatus::TimedOut
                    | ExecutionStatus::Cancelled),
                ),
            ) => {
                query
                    .push(" INDEXED BY executions_job_ended_badly WHERE ")
                    .push(ENDED_BADLY)
                    .push(" AND job_id = ")
                    .push_bind(job_id.as_str())
                    .push(" AND status = ")
                    .push_bind(status.as_str());
            }
            (None, None) => {
                query.push(" WHERE 1 = 1");
            }
            (None, Some(ExecutionStatus::Queued)) => {
                query.push(" INDEXED BY executions_queued_due WHERE status = 'QUEUED'");
            }
            (None, Some(ExecutionStatus::Running)) => {
                query.push(" INDEXED BY executions_running_lease WHERE status = 'RUNNING'");
            }
            (None, Some(ExecutionStatus::Completed)) => {
                query.push(" WHERE status = 'COMPLETED'");
            }
            (
                None,
                Some(
                    status @ (ExecutionStatus::Failed
                    | ExecutionStatus::TimedOut
                    | ExecutionStatus::Cancelled),
                ),
            ) => {
                query
                    .push(" INDEXED BY executions_ended_badly WHERE ")
                    .push(ENDED_BADLY)
                    .push(" AND status = ")
                    .push_bind(status.as_str());
            }
        }
    }

    async fn list_keys(
        &self,
        module: &str,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        // A key range, not LIKE: no character of a prefix is a wildcard.
        let mut query = QueryBuilder::new("SELECT key FROM kv WHERE module = ");
        query
            .push_bind(module)
            .push(" AND key >= ")
            .push_bind(prefix);
        if let Some(bound) = prefix_upper_bound(prefix) {
            query.push(" AND key < ").push_bind(bound);
        }
        query
            .push(" ORDER BY key LIMIT ")
            .push_bind(i64::from(limit));
        query
            .build_query_scalar()
            .fetch_all(&self.reader)
            .await
            .map_err(db)
    }
}

impl Sql for Sqlite {
    statement_runners!();

    fn text(text: &str) -> Cow<'_, str> {
        Cow::Borrowed(text)
    }

    fn push_ids(query: &mut QueryBuilder<Self>, column: &str, ids: &[String]) {
        query.push(format_args!("{column} IN ("));
        let mut list = query.separated(", ");
        for id in padded(ids, MAX_ROWS) {
            list.push_bind(id.as_str());
        }
        query.push(")");
    }

    fn bind_key<'q>(
        query: Query<'q, Self, Self::Arguments>,
        key: &str,
    ) -> Query<'q, Self, Self::Arguments> {
        query.bind(key.to_owned())
    }

    const MAX_ROWS: usize = MAX_ROWS;

    /// The single writer's transactions exclude every other writer from their start.
    const FOR_UPDATE: &'static str = "";
    const FOR_SHARE: &'static str = "";
    const FOR_UPDATE_SKIP_LOCKED: &'static str = "";

    /// A unary `+` makes the column an expression no index covers, so the ids, looked
    /// up by key, drive the statement.
    const BY_KEY_STATUS: &'static str = "+status";

    const QUEUED_DUE_INDEX: &'static str = " INDEXED BY executions_queued_due";
    const RUNNING_LEASE_INDEX: &'static str = " INDEXED BY executions_running_lease";

    const GREATEST: &'static str = "MAX";
    const BUCKET_LIST: &'static str = "group_concat(bucket || ':' || count)";
    const VERSION_UPLOAD_ORDER: &'static str = "rowid";

    const USERNAME_LOCK: Option<&'static str> = None;
}

#[cfg(test)]
mod tests {
    use sqlx::Row;

    use super::super::shared::padded_len;
    use super::*;
    use crate::domain::{Manifest, Role, User};
    use crate::store::{AuthStore, Store, VersionUpload};

    /// Waits until the checkpointer has copied more than `beyond` frames.
    async fn pragma(store: &SqliteStore, name: &str) -> i64 {
        sqlx::query_scalar(AssertSqlSafe(format!("PRAGMA {name}")))
            .fetch_one(&store.writer)
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pruned_history_gives_its_space_back_to_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runcell.db");
        let store = SqliteStore::open(&path).await.unwrap();
        assert_eq!(pragma(&store, "auto_vacuum").await, 2, "incremental");
        let old = crate::domain::now_millis() - 40 * 86_400_000;
        let batch: Vec<NewExecution> = (0..3_000)
            .map(|i| NewExecution {
                // Just after the first id of its millisecond. The whole tail is matched: a
                // millisecond whose low 16 bits are 0x8000 shows `-8000-` in its time too.
                id: crate::domain::retention::first_id_at(old + i)
                    .replace("-8000-000000000000", "-8001-000000000000"),
                input: format!("{{\"padding\":\"{}\"}}", "x".repeat(900)),
                ..super::super::tests::manual("job", old)
            })
            .collect();
        store.enqueue_executions(&batch).await.unwrap();
        let ids: Vec<String> = batch.iter().map(|e| e.id.clone()).collect();
        store
            .claim_executions(&ids, "n", old, old + 1)
            .await
            .unwrap();
        let results: Vec<ExecutionResult> = ids
            .iter()
            .map(|id| ExecutionResult {
                id: id.clone(),
                status: ExecutionStatus::Completed,
                result: None,
                error: None,
                error_kind: None,
                finished_at: old + 1,
                duration_ms: 1.0,
                fuel_consumed: 1,
                memory_peak_bytes: 1,
                cpu_time_ms: 1.0,
                logs: Vec::new(),
                outbound: Vec::new(),
            })
            .collect();
        store.record_results(&results, &[]).await.unwrap();
        let full = pragma(&store, "page_count").await;
        let plan = crate::domain::retention::Retention::default().plan(crate::domain::now_millis());
        let mut pruned = 0;
        loop {
            let batch = store.prune_history(&plan, 1_000).await.unwrap();
            if batch.executions == 0 {
                break;
            }
            pruned += batch.executions;
        }
        assert_eq!(pruned, 3_000);
        while store.reclaim_space().await.unwrap() {}
        assert_eq!(pragma(&store, "freelist_count").await, 0);
        let left = pragma(&store, "page_count").await;
        assert!(left < full / 2, "{left} pages of {full} left");
    }

    async fn checkpointed_beyond(store: &SqliteStore, beyond: u64) -> u64 {
        let checkpointer = store
            .checkpointer
            .as_ref()
            .expect("a file has a checkpointer");
        for _ in 0..100 {
            let frames = checkpointer.checkpointed_frames();
            if frames > beyond {
                return frames;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no checkpoint within 5 s");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_is_checkpointed_in_the_background_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runcell.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let wal = dir.path().join("runcell.db-wal");
        let mut frames = 0;
        let mut sizes = Vec::new();
        for _ in 0..5 {
            let batch: Vec<NewExecution> = (0..2_000)
                .map(|_| super::super::tests::manual("job", 0))
                .collect();
            store.enqueue_executions(&batch).await.unwrap();
            sizes.push(std::fs::metadata(&wal).unwrap().len());
            frames = checkpointed_beyond(&store, frames).await;
        }
        // Without checkpoints the log would hold all five rounds; with them, each round
        // writes over the last from the start.
        assert!(
            sizes[4] <= sizes[0] * 2,
            "the log grew round after round: {sizes:?}"
        );
    }

    #[test]
    fn batches_are_padded_to_a_few_sizes_with_their_last_row() {
        let sizes: Vec<usize> = [1, 3, 5, 64, 65, 130, 500, MAX_ROWS]
            .into_iter()
            .map(|rows| padded_len(rows, MAX_ROWS))
            .collect();
        assert_eq!(sizes, [1, 4, 8, 64, 128, 192, MAX_ROWS, MAX_ROWS]);
        let padded: Vec<&str> = padded(&["a", "b", "c"], MAX_ROWS).copied().collect();
        assert_eq!(padded, ["a", "b", "c", "c"]);
    }

    /// What SQLite will do for a statement, one line per step.
    async fn plan(store: &SqliteStore, mut statement: QueryBuilder<Sqlite>) -> Vec<String> {
        statement
            .build()
            .fetch_all(&store.writer)
            .await
            .unwrap()
            .iter()
            .map(|row| row.get::<String, _>("detail"))
            .collect()
    }

    #[tokio::test]
    async fn claims_and_results_find_each_execution_by_its_id_whatever_the_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("plans.db"))
            .await
            .unwrap();
        // The index SQLite once preferred, walking every running execution per batch.
        sqlx::query("CREATE INDEX tempting ON executions (status, id)")
            .execute(&store.writer)
            .await
            .unwrap();
        let ids: Vec<String> = (0..100).map(|_| crate::domain::new_id()).collect();
        let results: Vec<ExecutionResult> = ids
            .iter()
            .map(|id| ExecutionResult {
                id: id.clone(),
                status: ExecutionStatus::Completed,
                result: None,
                error: None,
                error_kind: None,
                finished_at: 0,
                duration_ms: 0.0,
                fuel_consumed: 0,
                memory_peak_bytes: 0,
                cpu_time_ms: 0.0,
                logs: Vec::new(),
                outbound: Vec::new(),
            })
            .collect();
        let results: Vec<&ExecutionResult> = results.iter().collect();
        // Driven by that index, each batch compared every running execution with every
        // result: recording 20,000 executions took 14 s instead of 0.3 s.
        for plan in [
            plan(
                &store,
                claim_statement("EXPLAIN QUERY PLAN ", &ids, "n", 0, 0),
            )
            .await,
            plan(&store, record_statement("EXPLAIN QUERY PLAN ", &results)).await,
        ] {
            let executions: Vec<&String> = plan
                .iter()
                .filter(|step| step.contains(" executions "))
                .collect();
            assert!(!executions.is_empty(), "{plan:?}");
            assert!(
                executions
                    .iter()
                    .all(|step| step.starts_with("SEARCH") && step.ends_with("(id=?)")),
                "{plan:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_failed_install_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("atomic.db"))
            .await
            .unwrap();
        // Fails the last write of an install, after the blob and the module were written.
        sqlx::query(
            "CREATE TRIGGER refuse BEFORE INSERT ON module_versions \
             WHEN NEW.version = 'refused' BEGIN SELECT RAISE(ABORT, 'refused'); END",
        )
        .execute(&store.writer)
        .await
        .unwrap();
        let manifest = |version: &str| Manifest {
            name: "sync".to_owned(),
            version: version.to_owned(),
            description: String::new(),
            jobs: Vec::new(),
            capabilities: crate::domain::Capabilities::default(),
            settings: Vec::new(),
        };

        let failed = store
            .install_module_version(
                &manifest("refused"),
                "hash-new",
                b"new",
                &VersionUpload::default(),
                1,
            )
            .await;
        assert!(matches!(failed, Err(StoreError::Database(_))), "{failed:?}");
        assert_eq!(store.get_module("sync").await.unwrap(), None);
        assert_eq!(store.module_wasm("hash-new").await.unwrap(), None);

        let installed = store
            .install_module_version(
                &manifest("1"),
                "hash-1",
                b"one",
                &VersionUpload::default(),
                1,
            )
            .await
            .unwrap();
        assert!(
            store
                .install_module_version(
                    &manifest("refused"),
                    "hash-new",
                    b"new",
                    &VersionUpload::default(),
                    2
                )
                .await
                .is_err()
        );
        assert_eq!(store.get_module("sync").await.unwrap(), Some(installed));
        assert_eq!(store.module_wasm("hash-new").await.unwrap(), None);
    }

    #[test]
    fn a_prefix_bound_bumps_the_last_character_that_can_grow() {
        assert_eq!(prefix_upper_bound("abc").as_deref(), Some("abd"));
        assert_eq!(prefix_upper_bound("a%").as_deref(), Some("a&"));
        assert_eq!(
            prefix_upper_bound("a\u{D7FF}").as_deref(),
            Some("a\u{E000}")
        );
        assert_eq!(prefix_upper_bound("ab\u{10FFFF}").as_deref(), Some("ac"));
        assert_eq!(prefix_upper_bound(""), None);
        assert_eq!(prefix_upper_bound("\u{10FFFF}"), None);
    }

    /// A user row as an older version wrote it, when names still compared with case.
    async fn old_user(store: &SqliteStore, id: &str, username: &str, created_at: Millis) {
        sqlx::query(
            "INSERT INTO users (id, username, role, password_hash, disabled, created_at, updated_at) \
             VALUES ($1, $2, 'viewer', 'hash', 0, $3, $3)",
        )
        .bind(id)
        .bind(username)
        .bind(created_at)
        .execute(&store.writer)
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn names_that_differ_only_in_case_from_before_keep_working_and_no_new_one_joins() {
        let store = SqliteStore::open_in_memory().await.unwrap();
        old_user(&store, "u1", "Admin", 1).await;
        old_user(&store, "u2", "admin", 2).await;
        let found = |name: &'static str| {
            let store = store.clone();
            async move { store.user_by_name(name).await.unwrap().unwrap().0.id }
        };
        assert_eq!(found("Admin").await, "u1");
        assert_eq!(found("admin").await, "u2");
        // Another spelling reaches the oldest.
        assert_eq!(found("ADMIN").await, "u1");

        let user = User {
            id: "u3".into(),
            username: "aDmin".into(),
            role: Role::Viewer,
            disabled: false,
            created_at: 3,
            updated_at: 3,
        };
        let taken = store.insert_user(&user, "hash").await;
        assert!(matches!(taken, Err(StoreError::Conflict(_))), "{taken:?}");
        assert_eq!(store.count_users().await.unwrap(), 2);
    }
}
