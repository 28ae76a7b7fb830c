//! What both databases do the same way, written once: [`Store`] for every [`Backend`].
//!
//! A backend (SQLite embedded, PostgreSQL distributed) brings its connections and what
//! it really does its own way: the hot path's batch statements (multi-row `VALUES` with
//! padded batch sizes on SQLite, array binds and `UNNEST` on PostgreSQL), how a claim
//! locks, how durable a commit is. Everything else (modules, jobs, the life of an
//! execution after its claim, events, module data, nodes and leases) is one statement
//! text and one row mapping here, with the few words the dialects spell differently
//! named on [`Sql`].

mod alerts;
mod auth;
mod budgets;
mod endpoints;
mod retention;
mod uploads;
pub(crate) mod usage;

use usage::Counted;

use std::collections::HashSet;

use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, Database, Pool, QueryBuilder, Transaction};

use super::convert::{
    approval_raced, claimed_in_given_order, db, earlier_request, int, is_unique_violation,
    json_text, page, page_fetch, parse_status, run_ids_json, stored_inputs,
};
use super::sql::{
    Bind, Columns, Run, Sql, claimed_from_row, event_from_row, execution_from_row, job_from_row,
    log_from_row, module_from_row, node_from_row, publisher_key_from_row, push_arg,
    version_from_row,
};
use super::sql::{rollup_from_row, series_from_row, summary_from_row};
use super::{
    CancelEffect, ClaimedExecution, EXPIRED_KEYS_PER_REQUEST, ExecutionFilter, INLINE_INPUT_MAX,
    IdempotencyKey, LeaseToken, ManualOutcome, ManualRun, QueuedCount, Retry, Settled, Store,
    StoreError, VersionUpload, failpoint,
};
use crate::domain::budget::{Budget, BudgetCounter};
use crate::domain::endpoint::{Endpoint, EndpointCheck, UptimeCount};
use crate::domain::metrics::{
    MetricSeries, ModuleMetricsSummary, ROLLUP_WIDTHS, Rollup, SeriesAdmission, labels_text,
    rollup_start,
};
use crate::domain::retention::{PrunePlan, Pruned};
use crate::domain::upload::{UploadOutcome, UploadRecord};
use crate::domain::usage::{OutboundRow, RouteOutbound, UsageQuery, UsageRow};
use crate::domain::window::DAY;
use crate::domain::{
    Event, Execution, ExecutionResult, ExecutionStatus, Job, LogEntry, Manifest, Millis,
    ModuleRecord, ModuleStatus, ModuleVersion, NewExecution, NodeHeartbeat, Page, PoolState,
    PublisherKey, now_millis,
};

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

/// What a claim returns of each execution, read into [`ClaimedExecution`]; for a
/// statement whose only `executions` is unaliased.
macro_rules! claimed_columns {
    () => {
        concat!(
            "id, job_id, module, job, attempt, trigger, retry_of, ",
            execution_input!(),
            ", scheduled_at, run_after, \
             (SELECT revision FROM jobs WHERE jobs.id = executions.job_id) AS job_revision"
        )
    };
}
pub(crate) use claimed_columns;

/// Columns of `jobs` read into [`Job`].
macro_rules! job_columns {
    () => {
        "id, name, module, job, schedule, input, enabled, max_attempts, timeout_ms, fuel, \
         memory_bytes, on_event, config, next_run_at, created_at, updated_at, schedule_source, \
         retain_days, retain_last"
    };
}

/// A module joined with its current version, read into [`ModuleRecord`].
macro_rules! select_module {
    () => {
        "SELECT m.name AS name, m.status AS status, m.created_at AS created_at, \
                m.updated_at AS updated_at, m.approved_capabilities AS approved_capabilities, \
                m.granted_outbound_hosts AS granted_outbound_hosts, m.budgets AS budgets, \
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

type Connection<B> = <<B as Backend>::Db as Database>::Connection;
type DbRow<B> = <<B as Backend>::Db as Database>::Row;

/// One database's connections and what it does its own way; [`Store`] is written once
/// on top of it.
#[async_trait::async_trait]
pub(crate) trait Backend: Send + Sync + 'static {
    type Db: Sql;

    /// Where reads go.
    fn reader(&self) -> &Pool<Self::Db>;

    /// Where writes go.
    fn writer(&self) -> &Pool<Self::Db>;

    /// Every pool of connections, by name, for [`Store::pools`].
    fn named_pools(&self) -> Vec<(&'static str, &Pool<Self::Db>)>;

    /// A transaction for writes that must apply together. SQLite's takes the write lock
    /// at once (`BEGIN IMMEDIATE`), so it never fails half-way to upgrade a read lock.
    async fn begin(&self) -> Result<Transaction<'static, Self::Db>, StoreError>;

    /// What inputs and idempotency keys take now; tests only.
    #[cfg(test)]
    async fn storage_counts(&self) -> Result<super::StorageCounts, StoreError>;

    // ---- the hot path ----------------------------------------------------------------

    /// Creates the queued executions of `batch` (at most [`Sql::MAX_ROWS`]), large
    /// inputs stored once, and returns the ids of those created: a uniqueness conflict (a
    /// (job, cron tick) that already fired, an id already enqueued) skips the row.
    async fn insert_executions(
        conn: &mut Connection<Self>,
        batch: &[&NewExecution],
    ) -> Result<Vec<String>, StoreError>;

    /// [`Store::enqueue_executions`].
    async fn enqueue(&self, executions: &[NewExecution]) -> Result<Vec<String>, StoreError>;

    /// The rows of manual runs of `job_id` (as a claim returns them when `started_by`
    /// is given, their ids otherwise), created in one transaction with the key taken by
    /// [`take_idempotency_key`], or why none were (see [`Store::enqueue_manual`]).
    async fn create_manual(
        &self,
        job_id: &str,
        runs: &[ManualRun],
        now: Millis,
        started_by: Option<(&str, Millis)>,
        key: Option<&IdempotencyKey>,
    ) -> Result<ManualOutcome<Vec<DbRow<Self>>>, StoreError>;

    /// [`Store::claim_executions`].
    async fn claim(
        &self,
        ids: &[String],
        node_id: &str,
        now: Millis,
        lease_until: Millis,
    ) -> Result<Vec<ClaimedExecution>, StoreError>;

    /// [`Store::record_results`].
    async fn record(
        &self,
        results: &[ExecutionResult],
        retries: &[Retry],
    ) -> Result<Vec<String>, StoreError>;

    /// [`Store::flush`].
    async fn flush_commits(&self) -> Result<(), StoreError>;

    /// [`Store::reclaim_space`].
    async fn give_back_space(&self) -> Result<bool, StoreError>;

    // ---- statements whose text differs ---------------------------------------------------

    /// The `WHERE` clause of a listing of executions, which each database plans its own
    /// way (see each backend).
    fn push_execution_filter(query: &mut QueryBuilder<Self::Db>, filter: &ExecutionFilter);

    /// [`Store::kv_list_keys`]: keys are text in SQLite and bytes in PostgreSQL, and
    /// each compares them its own way.
    async fn list_keys(
        &self,
        module: &str,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<String>, StoreError>;
}

/// The writing connection for one unit of work: a transaction for several statements,
/// the bare connection for one (a statement is atomic by itself, and `BEGIN` and
/// `COMMIT` would double its round trips on small batches).
pub(crate) enum Write<DB: Database> {
    Transaction(Transaction<'static, DB>),
    Statement(PoolConnection<DB>),
}

impl<DB: Database> Write<DB> {
    pub(crate) async fn new<B: Backend<Db = DB>>(
        backend: &B,
        statements: usize,
    ) -> Result<Self, StoreError> {
        Ok(if statements > 1 {
            Write::Transaction(backend.begin().await?)
        } else {
            Write::Statement(backend.writer().acquire().await.map_err(db)?)
        })
    }

    pub(crate) fn conn(&mut self) -> &mut DB::Connection {
        match self {
            Write::Transaction(tx) => tx,
            Write::Statement(conn) => conn,
        }
    }

    pub(crate) async fn commit(self) -> Result<(), StoreError> {
        match self {
            Write::Transaction(tx) => tx.commit().await.map_err(db),
            Write::Statement(_) => Ok(()),
        }
    }
}

pub(super) async fn read<B: Backend>(backend: &B) -> Result<PoolConnection<B::Db>, StoreError> {
    backend.reader().acquire().await.map_err(db)
}

pub(super) async fn write<B: Backend>(backend: &B) -> Result<PoolConnection<B::Db>, StoreError> {
    backend.writer().acquire().await.map_err(db)
}

/// Whether `holder` holds lease `lease` under `token` at `now`, for a write fenced by it
/// in the transaction on `conn`. The lease cannot change hands before that transaction
/// ends: SQLite's transaction holds the write lock from its start; PostgreSQL's
/// `FOR SHARE` holds off a takeover (an update of the lease's row), and should one have
/// committed since the statement began, the lock reads the new row, which no longer
/// matches.
pub(super) async fn lease_held<DB: Sql>(
    conn: &mut DB::Connection,
    lease: &str,
    holder: &str,
    token: LeaseToken,
    now: Millis,
) -> Result<bool, StoreError> {
    Ok(dynamic::<DB>(format!(
        "SELECT 1 FROM leases \
         WHERE name = $1 AND holder = $2 AND token = $3 AND expires_at > $4{}",
        DB::FOR_SHARE
    ))
    .arg(lease)
    .arg(holder)
    .arg(i64::try_from(token.0).unwrap_or(i64::MAX))
    .arg(now)
    .optional(conn)
    .await?
    .is_some())
}

/// A statement whose text is put together at run time from the words the dialects
/// spell differently.
pub(super) fn dynamic<DB: Sql>(sql: String) -> sqlx::query::Query<'static, DB, DB::Arguments> {
    sqlx::query(AssertSqlSafe(sql))
}

/// The number of rows a batch of `rows` is sent as. Preparing a statement of hundreds
/// of rows costs about as much as running it, and each batch size is a different
/// statement, so batches are padded to a few sizes (powers of two up to 64, then
/// multiples of 64) whose statements are prepared once and stay cached.
pub(crate) fn padded_len(rows: usize, max_rows: usize) -> usize {
    let padded = if rows <= 64 {
        rows.next_power_of_two()
    } else {
        rows.div_ceil(64) * 64
    };
    padded.min(max_rows)
}

/// `chunk` followed by copies of its last item up to [`padded_len`]. Only for
/// statements a repeated row cannot change: an `IN` list ignores it, an insert with
/// `ON CONFLICT DO NOTHING` skips it, and `UPDATE ... FROM` applies one of several
/// identical rows.
pub(crate) fn padded<T>(chunk: &[T], max_rows: usize) -> impl Iterator<Item = &T> {
    let padding = padded_len(chunk.len(), max_rows).saturating_sub(chunk.len());
    chunk
        .iter()
        .chain(std::iter::repeat_n(chunk.last(), padding).flatten())
}

/// The listing of one page (`fetch` rows) of the executions `filter` selects, newest
/// first, after `cursor` (`prefix` is for `EXPLAIN` in tests).
pub(crate) fn list_executions_statement<B: Backend>(
    prefix: &str,
    filter: &ExecutionFilter,
    cursor: Option<&str>,
    fetch: i64,
) -> QueryBuilder<B::Db> {
    let mut query = QueryBuilder::<B::Db>::new(format!(
        concat!("{}SELECT ", execution_columns!(), " FROM executions"),
        prefix
    ));
    B::push_execution_filter(&mut query, filter);
    if let Some(cursor) = cursor {
        query.push(" AND id < ");
        push_arg(&mut query, cursor);
    }
    query.push(" ORDER BY id DESC LIMIT ");
    push_arg(&mut query, fetch);
    query
}

/// The module called `name` with its current version, read on `conn` (which may be in
/// a transaction).
async fn fetch_module<DB: Sql>(
    conn: &mut DB::Connection,
    name: &str,
) -> Result<Option<ModuleRecord>, StoreError> {
    sqlx::query::<DB>(concat!(select_module!(), " WHERE m.name = $1"))
        .arg(name)
        .optional(conn)
        .await?
        .as_ref()
        .map(module_from_row)
        .transpose()
}

/// Writes each of `bodies` (`(hash, body)`, see [`stored_inputs`]) to
/// `execution_inputs` unless it is there already.
pub(crate) async fn insert_inputs<DB: Sql>(
    conn: &mut DB::Connection,
    bodies: &[(String, &str)],
    now: Millis,
) -> Result<(), StoreError> {
    // Three values a row: far below either database's limit of parameters.
    for chunk in bodies.chunks(DB::MAX_ROWS) {
        let mut query = QueryBuilder::<DB>::new(
            "INSERT INTO execution_inputs (hash, body, created_at) VALUES ",
        );
        for (i, (hash, body)) in chunk.iter().enumerate() {
            query.push(if i == 0 { "(" } else { ", (" });
            push_arg(&mut query, hash.as_str());
            query.push(", ");
            push_arg(&mut query, *body);
            query.push(", ");
            push_arg(&mut query, now);
            query.push(")");
        }
        query.push(" ON CONFLICT DO NOTHING");
        query.build().run(conn).await?;
    }
    Ok(())
}

/// Takes idempotency key `key` for manual runs `runs` of `job_id` (answered with
/// `status`), first deleting a few expired keys; `None` once taken, or what the
/// earlier request that holds it means for this one. Only in the transaction that
/// creates the runs. Two requests under one key serialise on it: SQLite's single writer
/// holds the write lock from the start of the transaction to its commit; PostgreSQL's
/// second insert waits on the first's uncommitted row, then finds it and replays it.
pub(crate) async fn take_idempotency_key<DB: Sql>(
    conn: &mut DB::Connection,
    key: &IdempotencyKey,
    job_id: &str,
    runs: &[ManualRun],
    status: ExecutionStatus,
    now: Millis,
) -> Result<Option<ManualOutcome<Vec<DB::Row>>>, StoreError> {
    // Requests pruning at once share the work instead of waiting for (or deadlocking
    // on) each other's rows.
    dynamic::<DB>(format!(
        "DELETE FROM idempotency_keys WHERE key IN \
             (SELECT key FROM idempotency_keys WHERE expires_at <= $1 \
              ORDER BY expires_at LIMIT $2{})",
        DB::FOR_UPDATE_SKIP_LOCKED
    ))
    .arg(now)
    .arg(EXPIRED_KEYS_PER_REQUEST)
    .run(&mut *conn)
    .await?;
    // An expired row under the key (one the deletion above did not reach) is replaced.
    let taken = sqlx::query::<DB>(
        "INSERT INTO idempotency_keys \
             (key, fingerprint, job_id, execution_ids, status, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (key) DO UPDATE SET fingerprint = excluded.fingerprint, \
             job_id = excluded.job_id, execution_ids = excluded.execution_ids, \
             status = excluded.status, created_at = excluded.created_at, \
             expires_at = excluded.expires_at \
         WHERE idempotency_keys.expires_at <= excluded.created_at \
         RETURNING key",
    )
    .arg(&*DB::text(&key.key))
    .arg(key.fingerprint.as_str())
    .arg(job_id)
    .arg(run_ids_json(runs)?)
    .arg(status.as_str())
    .arg(now)
    .arg(key.expires_at)
    .optional(&mut *conn)
    .await?;
    if taken.is_some() {
        return Ok(None);
    }
    let row = sqlx::query::<DB>(
        "SELECT fingerprint, execution_ids, status FROM idempotency_keys WHERE key = $1",
    )
    .arg(&*DB::text(&key.key))
    .one(&mut *conn)
    .await?;
    earlier_request(
        key,
        row.col("fingerprint")?,
        row.col("execution_ids")?,
        row.col("status")?,
    )
    .map(Some)
}

/// Stores once the large inputs of jobs written before inputs were stored once
/// (migration 0017), so that their manual runs refer to the input instead of copying
/// it. Runs at every start; after the first, it finds nothing to do (jobs are few, and
/// every job written since has its hash).
pub(crate) async fn adopt_large_job_inputs<B: Backend>(backend: &B) -> Result<(), StoreError> {
    let jobs = sqlx::query::<B::Db>(
        "SELECT id, input FROM jobs WHERE input_hash IS NULL AND octet_length(input) > $1",
    )
    .arg(INLINE_INPUT_MAX as i64)
    .all(&mut *write(backend).await?)
    .await?;
    for job in jobs {
        let id: &str = job.col("id")?;
        let input: &str = job.col("input")?;
        let hash = super::convert::input_hash(input);
        let mut tx = backend.begin().await?;
        insert_inputs::<B::Db>(&mut tx, &[(hash.clone(), input)], now_millis()).await?;
        sqlx::query::<B::Db>("UPDATE jobs SET input_hash = $1 WHERE id = $2 AND input = $3")
            .arg(hash.as_str())
            .arg(id)
            .arg(input)
            .run(&mut tx)
            .await?;
        tx.commit().await.map_err(db)?;
    }
    Ok(())
}

/// Runs a statement that writes a job; a taken name or id is a `Conflict` that names
/// it, as the service needs it.
async fn write_job<DB: Sql>(
    query: sqlx::query::Query<'_, DB, DB::Arguments>,
    conn: &mut DB::Connection,
    job: &Job,
) -> Result<u64, StoreError> {
    let err = match DB::execute(query, conn).await {
        Ok(changed) => return Ok(changed),
        Err(err) if is_unique_violation(&err) => err,
        Err(err) => return Err(db(err)),
    };
    // PostgreSQL names the constraint; SQLite only says which column in its message.
    let name_taken = match &err {
        sqlx::Error::Database(e) => {
            e.constraint() == Some("jobs_name_unique") || e.message().contains("jobs.name")
        }
        _ => false,
    };
    Err(StoreError::Conflict(if name_taken {
        format!("a job named `{}` already exists", job.name)
    } else {
        format!("a job with id `{}` already exists", job.id)
    }))
}

#[async_trait::async_trait]
impl<B: Backend> Store for B {
    #[cfg(test)]
    async fn storage_counts(&self) -> Result<super::StorageCounts, StoreError> {
        Backend::storage_counts(self).await
    }

    async fn usage_runs(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        usage::read_runs::<B::Db>(&mut *read(self).await?, query).await
    }

    async fn usage_outbound(&self, query: &UsageQuery) -> Result<Vec<OutboundRow>, StoreError> {
        usage::read_outbound::<B::Db>(&mut *read(self).await?, query).await
    }

    async fn count_route_outbound(&self, requests: &[RouteOutbound]) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        usage::count_route_outbound::<B::Db>(&mut tx, requests).await?;
        tx.commit().await.map_err(db)
    }

    async fn prune_history(&self, plan: &PrunePlan, limit: u32) -> Result<Pruned, StoreError> {
        retention::prune(self, plan, limit).await
    }

    async fn reclaim_space(&self) -> Result<bool, StoreError> {
        self.give_back_space().await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query::<B::Db>("SELECT 1")
            .run(&mut *read(self).await?)
            .await?;
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
        let mut tx = self.begin().await?;
        let approval = match &upload.approval {
            Some(approval) if approval.key.is_some() => {
                // A key unpinned since the upload was checked approves nothing; the lock
                // makes an unpinning that races this upload wait, then withdraw what
                // this upload recorded.
                let pinned = dynamic::<B::Db>(format!(
                    "SELECT 1 FROM module_publisher_keys WHERE module = $1 AND key_id = $2{}",
                    B::Db::FOR_SHARE
                ))
                .arg(manifest.name.as_str())
                .arg(approval.key.as_deref())
                .optional(&mut tx)
                .await?;
                pinned.and(Some(approval))
            }
            other => other.as_ref(),
        };
        let uploader = upload.uploaded_by.as_ref();
        sqlx::query::<B::Db>(
            "INSERT INTO module_blobs (content_hash, bytes) VALUES ($1, $2) \
             ON CONFLICT DO NOTHING",
        )
        .arg(content_hash)
        .arg(wasm)
        .run(&mut tx)
        .await?;
        // A new module starts enabled; an existing one keeps its status and switches
        // its current version.
        sqlx::query::<B::Db>(
            "INSERT INTO modules (name, status, current_hash, created_at, updated_at) \
             VALUES ($1, 'ENABLED', $2, $3, $3) \
             ON CONFLICT (name) DO UPDATE SET \
                 current_hash = excluded.current_hash, updated_at = excluded.updated_at",
        )
        .arg(manifest.name.as_str())
        .arg(content_hash)
        .arg(now)
        .run(&mut tx)
        .await?;
        // Bytes this module already had: the existing version row stays as it was, but
        // gains the approval this upload brings if it had none.
        sqlx::query::<B::Db>(
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
        .arg(manifest.name.as_str())
        .arg(manifest.version.as_str())
        .arg(content_hash)
        .arg(int(wasm.len() as u64))
        .arg(manifest_json)
        .arg(now)
        .arg(uploader.map(|u| u.username.as_str()))
        .arg(uploader.map(|u| u.role.as_str()))
        .arg(uploader.and_then(|u| u.token.as_deref()))
        .arg(upload.signed_by.as_deref())
        .arg(approval.map(|a| a.at))
        .arg(approval.map(|a| a.by.as_str()))
        .arg(approval.and_then(|a| a.key.as_deref()))
        .run(&mut tx)
        .await?;
        let record = fetch_module::<B::Db>(&mut tx, &manifest.name)
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
        fetch_module::<B::Db>(&mut *read(self).await?, name).await
    }

    async fn list_modules(&self) -> Result<Vec<ModuleRecord>, StoreError> {
        sqlx::query::<B::Db>(concat!(select_module!(), " ORDER BY m.name"))
            .all(&mut *read(self).await?)
            .await?
            .iter()
            .map(module_from_row)
            .collect()
    }

    async fn list_module_versions(&self, name: &str) -> Result<Vec<ModuleVersion>, StoreError> {
        dynamic::<B::Db>(format!(
            "SELECT version, content_hash, size_bytes, manifest, uploaded_at, uploaded_by, \
                    uploader_role, uploader_token, signed_by, approved_at, approved_by, \
                    approved_key \
             FROM module_versions WHERE module = $1 \
             ORDER BY uploaded_at DESC, {} DESC",
            B::Db::VERSION_UPLOAD_ORDER
        ))
        .arg(name)
        .all(&mut *read(self).await?)
        .await?
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
        let mut tx = self.begin().await?;
        let updated =
            sqlx::query::<B::Db>("UPDATE modules SET status = $1, updated_at = $2 WHERE name = $3")
                .arg(status.as_str())
                .arg(now)
                .arg(name)
                .run(&mut tx)
                .await?;
        if updated == 0 {
            return Ok(None);
        }
        let record = fetch_module::<B::Db>(&mut tx, name).await?;
        tx.commit().await.map_err(db)?;
        Ok(record)
    }

    async fn approve_module_version(
        &self,
        name: &str,
        content_hash: &str,
        capabilities: &crate::domain::Capabilities,
        outbound_grant: Option<&[String]>,
        approver: &str,
        now: Millis,
    ) -> Result<Option<ModuleRecord>, StoreError> {
        let mut tx = self.begin().await?;
        // Locked: an upload racing this approval waits, then finds it done.
        let current = dynamic::<B::Db>(format!(
            "SELECT current_hash FROM modules WHERE name = $1{}",
            B::Db::FOR_UPDATE
        ))
        .arg(name)
        .optional(&mut tx)
        .await?;
        let current: String = match current {
            None => return Ok(None),
            Some(row) => row.col("current_hash")?,
        };
        if current != content_hash {
            return Err(approval_raced(name, content_hash, &current));
        }
        let outbound_grant = outbound_grant
            .map(|hosts| json_text("granted_outbound_hosts", hosts))
            .transpose()?;
        sqlx::query::<B::Db>(
            "UPDATE modules SET approved_capabilities = $1, granted_outbound_hosts = $2, \
                    updated_at = $3 \
             WHERE name = $4",
        )
        .arg(json_text("approved_capabilities", capabilities)?)
        .arg(outbound_grant)
        .arg(now)
        .arg(name)
        .run(&mut tx)
        .await?;
        sqlx::query::<B::Db>(
            "UPDATE module_versions SET approved_at = $1, approved_by = $2, approved_key = NULL \
             WHERE module = $3 AND content_hash = $4 AND approved_at IS NULL",
        )
        .arg(now)
        .arg(approver)
        .arg(name)
        .arg(content_hash)
        .run(&mut tx)
        .await?;
        let record = fetch_module::<B::Db>(&mut tx, name).await?;
        tx.commit().await.map_err(db)?;
        Ok(record)
    }

    async fn pin_publisher_key(
        &self,
        name: &str,
        key: &PublisherKey,
    ) -> Result<Option<PublisherKey>, StoreError> {
        let mut tx = self.begin().await?;
        // Inserted only if the module exists (the foreign key would fail loudly).
        sqlx::query::<B::Db>(
            "INSERT INTO module_publisher_keys \
                 (module, key_id, public_key, comment, pinned_by, pinned_at) \
             SELECT name, $1, $2, $3, $4, $5 FROM modules WHERE name = $6 \
             ON CONFLICT (module, key_id) DO UPDATE SET comment = excluded.comment",
        )
        .arg(key.id.as_str())
        .arg(key.public_key.as_slice())
        .arg(key.comment.as_str())
        .arg(key.pinned_by.as_str())
        .arg(key.pinned_at)
        .arg(name)
        .run(&mut tx)
        .await?;
        let stored = sqlx::query::<B::Db>(
            "SELECT key_id, public_key, comment, pinned_by, pinned_at \
             FROM module_publisher_keys WHERE module = $1 AND key_id = $2",
        )
        .arg(name)
        .arg(key.id.as_str())
        .optional(&mut tx)
        .await?
        .as_ref()
        .map(publisher_key_from_row)
        .transpose()?;
        tx.commit().await.map_err(db)?;
        Ok(stored)
    }

    async fn unpin_publisher_key(&self, name: &str, key_id: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let deleted = sqlx::query::<B::Db>(
            "DELETE FROM module_publisher_keys WHERE module = $1 AND key_id = $2",
        )
        .arg(name)
        .arg(key_id)
        .run(&mut tx)
        .await?;
        if deleted == 0 {
            return Ok(false);
        }
        sqlx::query::<B::Db>(
            "UPDATE module_versions SET approved_at = NULL, approved_by = NULL, approved_key = NULL \
             WHERE module = $1 AND approved_key = $2",
        )
        .arg(name)
        .arg(key_id)
        .run(&mut tx)
        .await?;
        tx.commit().await.map_err(db)?;
        Ok(true)
    }

    async fn publisher_keys(&self, name: &str) -> Result<Vec<PublisherKey>, StoreError> {
        sqlx::query::<B::Db>(
            "SELECT key_id, public_key, comment, pinned_by, pinned_at \
             FROM module_publisher_keys WHERE module = $1 ORDER BY pinned_at, key_id",
        )
        .arg(name)
        .all(&mut *read(self).await?)
        .await?
        .iter()
        .map(publisher_key_from_row)
        .collect()
    }

    async fn delete_module(&self, name: &str, with_jobs: bool) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        // Its versions go with it (ON DELETE CASCADE).
        let deleted = sqlx::query::<B::Db>("DELETE FROM modules WHERE name = $1")
            .arg(name)
            .run(&mut tx)
            .await?;
        if deleted == 0 {
            return Ok(false);
        }
        sqlx::query::<B::Db>("DELETE FROM kv WHERE module = $1")
            .arg(name)
            .run(&mut tx)
            .await?;
        // A module installed later under the same name starts with fresh budgets.
        sqlx::query::<B::Db>("DELETE FROM budget_counters WHERE module = $1")
            .arg(name)
            .run(&mut tx)
            .await?;
        if with_jobs {
            sqlx::query::<B::Db>("DELETE FROM jobs WHERE module = $1")
                .arg(name)
                .run(&mut tx)
                .await?;
        }
        // Bytes no other module's version shares are garbage now. A concurrent install
        // of the same bytes either waits for this transaction (SQLite's single writer)
        // or holds a key-share lock on the blob through its foreign key (PostgreSQL), so
        // the blob is either kept for it or the install fails; never a dangling row.
        sqlx::query::<B::Db>(
            "DELETE FROM module_blobs WHERE NOT EXISTS \
                 (SELECT 1 FROM module_versions v WHERE v.content_hash = module_blobs.content_hash)",
        )
        .run(&mut tx)
        .await?;
        tx.commit().await.map_err(db)?;
        Ok(true)
    }

    async fn module_wasm(&self, content_hash: &str) -> Result<Option<Vec<u8>>, StoreError> {
        sqlx::query::<B::Db>("SELECT bytes FROM module_blobs WHERE content_hash = $1")
            .arg(content_hash)
            .optional(&mut *read(self).await?)
            .await?
            .map(|row| row.col("bytes"))
            .transpose()
    }

    async fn jobs_using_module(&self, name: &str) -> Result<Vec<Job>, StoreError> {
        sqlx::query::<B::Db>(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE module = $1 ORDER BY name"
        ))
        .arg(name)
        .all(&mut *read(self).await?)
        .await?
        .iter()
        .map(job_from_row)
        .collect()
    }

    // ---- uploads being followed -----------------------------------------------------

    async fn create_upload(&self, upload: &UploadRecord) -> Result<(), StoreError> {
        uploads::create(self, upload).await
    }

    async fn finish_upload(&self, id: &str, outcome: &UploadOutcome) -> Result<bool, StoreError> {
        uploads::finish(self, id, outcome).await
    }

    async fn get_upload(&self, id: &str) -> Result<Option<UploadRecord>, StoreError> {
        uploads::get(self, id).await
    }

    // ---- consumption budgets ---------------------------------------------------------

    async fn set_module_budgets(
        &self,
        name: &str,
        budgets: &[Budget],
        now: Millis,
    ) -> Result<Option<ModuleRecord>, StoreError> {
        budgets::set(self, name, budgets, now).await
    }

    async fn charge_budgets(
        &self,
        charges: &[(BudgetCounter, i64)],
    ) -> Result<Option<usize>, StoreError> {
        budgets::charge(self, charges).await
    }

    async fn add_budget_usage(&self, amounts: &[(BudgetCounter, i64)]) -> Result<(), StoreError> {
        budgets::add(self, amounts).await
    }

    async fn budget_usage(&self, counters: &[BudgetCounter]) -> Result<Vec<u64>, StoreError> {
        budgets::used(self, counters).await
    }

    async fn prune_budget_counters(&self, before: Millis) -> Result<u64, StoreError> {
        budgets::prune(self, before).await
    }

    // ---- jobs ----------------------------------------------------------------------

    async fn insert_job(&self, job: &Job) -> Result<(), StoreError> {
        let input = json_text("input", &job.input)?;
        // A large input is also stored once, for the job's manual runs to refer to.
        let stored = stored_inputs([Some(input.as_str())]);
        let mut write = Write::new(self, 1 + stored.bodies.len()).await?;
        insert_inputs::<B::Db>(write.conn(), &stored.bodies, job.updated_at).await?;
        let query = sqlx::query::<B::Db>(concat!(
            "INSERT INTO jobs (",
            job_columns!(),
            ", input_hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
             $14, $15, $16, $17, $18, $19, $20)"
        ))
        .arg(job.id.as_str())
        .arg(job.name.as_str())
        .arg(job.module.as_str())
        .arg(job.job.as_str())
        .arg(job.schedule.as_deref())
        .arg(input.as_str())
        .arg(job.enabled)
        .arg(int4(job.max_attempts))
        .arg(job.timeout_ms.map(int))
        .arg(job.fuel.map(int))
        .arg(job.memory_bytes.map(int))
        .arg(job.on_event.as_deref())
        .arg(job.config.to_stored_json())
        .arg(job.next_run_at)
        .arg(job.created_at)
        .arg(job.updated_at)
        .arg(job.schedule_source.as_str())
        .arg(job.retain_days.map(i64::from))
        .arg(job.retain_last.map(i64::from))
        .arg(stored.rows[0].1.as_deref());
        write_job(query, write.conn(), job).await?;
        write.commit().await
    }

    async fn get_job(&self, id: &str) -> Result<Option<Job>, StoreError> {
        sqlx::query::<B::Db>(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE id = $1"
        ))
        .arg(id)
        .optional(&mut *read(self).await?)
        .await?
        .as_ref()
        .map(job_from_row)
        .transpose()
    }

    async fn get_jobs(&self, ids: &[String]) -> Result<Vec<Job>, StoreError> {
        let mut jobs = Vec::with_capacity(ids.len());
        let mut conn = read(self).await?;
        for chunk in ids.chunks(B::Db::MAX_ROWS) {
            let mut query =
                QueryBuilder::<B::Db>::new(concat!("SELECT ", job_columns!(), " FROM jobs WHERE "));
            B::Db::push_ids(&mut query, "id", chunk);
            query.push(" ORDER BY id");
            for row in query.build().all(&mut conn).await? {
                jobs.push(job_from_row(&row)?);
            }
        }
        Ok(jobs)
    }

    async fn list_jobs(&self, cursor: Option<&str>, limit: u32) -> Result<Page<Job>, StoreError> {
        let (limit, fetch) = page_fetch(limit);
        let mut query =
            QueryBuilder::<B::Db>::new(concat!("SELECT ", job_columns!(), " FROM jobs"));
        if let Some(cursor) = cursor {
            query.push(" WHERE id > ");
            push_arg(&mut query, cursor);
        }
        query.push(" ORDER BY id LIMIT ");
        push_arg(&mut query, fetch);
        let rows = query.build().all(&mut *read(self).await?).await?;
        let jobs = rows.iter().map(job_from_row).collect::<Result<_, _>>()?;
        Ok(page(jobs, limit, |job: &Job| &job.id))
    }

    async fn update_job(&self, job: &Job) -> Result<bool, StoreError> {
        let input = json_text("input", &job.input)?;
        let stored = stored_inputs([Some(input.as_str())]);
        let mut write = Write::new(self, 1 + stored.bodies.len()).await?;
        insert_inputs::<B::Db>(write.conn(), &stored.bodies, job.updated_at).await?;
        let query = sqlx::query::<B::Db>(
            "UPDATE jobs SET name = $1, module = $2, job = $3, schedule = $4, input = $5, \
                 input_hash = $6, enabled = $7, max_attempts = $8, timeout_ms = $9, fuel = $10, \
                 memory_bytes = $11, on_event = $12, config = $13, next_run_at = $14, \
                 updated_at = $15, schedule_source = $16, retain_days = $17, \
                 retain_last = $18, revision = revision + 1 \
             WHERE id = $19",
        )
        .arg(job.name.as_str())
        .arg(job.module.as_str())
        .arg(job.job.as_str())
        .arg(job.schedule.as_deref())
        .arg(input.as_str())
        .arg(stored.rows[0].1.as_deref())
        .arg(job.enabled)
        .arg(int4(job.max_attempts))
        .arg(job.timeout_ms.map(int))
        .arg(job.fuel.map(int))
        .arg(job.memory_bytes.map(int))
        .arg(job.on_event.as_deref())
        .arg(job.config.to_stored_json())
        .arg(job.next_run_at)
        .arg(job.updated_at)
        .arg(job.schedule_source.as_str())
        .arg(job.retain_days.map(i64::from))
        .arg(job.retain_last.map(i64::from))
        .arg(job.id.as_str());
        let updated = write_job(query, write.conn(), job).await?;
        write.commit().await?;
        Ok(updated > 0)
    }

    async fn delete_job(&self, id: &str) -> Result<bool, StoreError> {
        let deleted = sqlx::query::<B::Db>("DELETE FROM jobs WHERE id = $1")
            .arg(id)
            .run(&mut *write(self).await?)
            .await?;
        Ok(deleted > 0)
    }

    async fn due_scheduled_jobs(&self, now: Millis) -> Result<Vec<Job>, StoreError> {
        sqlx::query::<B::Db>(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE enabled = TRUE AND schedule IS NOT NULL AND next_run_at <= $1 \
              ORDER BY next_run_at, id"
        ))
        .arg(now)
        .all(&mut *read(self).await?)
        .await?
        .iter()
        .map(job_from_row)
        .collect()
    }

    async fn set_job_next_run(
        &self,
        id: &str,
        next_run_at: Option<Millis>,
    ) -> Result<(), StoreError> {
        sqlx::query::<B::Db>("UPDATE jobs SET next_run_at = $1 WHERE id = $2")
            .arg(next_run_at)
            .arg(id)
            .run(&mut *write(self).await?)
            .await?;
        Ok(())
    }

    async fn event_subscribed_jobs(&self) -> Result<Vec<Job>, StoreError> {
        sqlx::query::<B::Db>(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE enabled = TRUE AND on_event IS NOT NULL ORDER BY id"
        ))
        .all(&mut *read(self).await?)
        .await?
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
        self.enqueue(executions).await
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
                let created: HashSet<String> = rows
                    .iter()
                    .map(|row| row.col("id"))
                    .collect::<Result<_, _>>()?;
                Ok(super::convert::in_given_order(
                    runs.iter().map(|run| &run.id),
                    created,
                ))
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
        self.create_manual(job_id, runs, now, Some((node_id, lease_until)), key)
            .await?
            .try_map(|rows| {
                let started = rows
                    .iter()
                    .map(claimed_from_row)
                    .collect::<Result<_, _>>()?;
                Ok(claimed_in_given_order(runs, started))
            })
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.flush_commits().await
    }

    async fn claim_executions(
        &self,
        ids: &[String],
        node_id: &str,
        now: Millis,
        lease_until: Millis,
    ) -> Result<Vec<ClaimedExecution>, StoreError> {
        self.claim(ids, node_id, now, lease_until).await
    }

    async fn renew_leases(
        &self,
        ids: &[String],
        node_id: &str,
        lease_until: Millis,
    ) -> Result<(), StoreError> {
        let mut conn = write(self).await?;
        for chunk in ids.chunks(B::Db::MAX_ROWS) {
            let mut query = QueryBuilder::<B::Db>::new("UPDATE executions SET lease_expires_at = ");
            push_arg(&mut query, lease_until);
            query.push(format_args!(
                " WHERE {} = 'RUNNING' AND node_id = ",
                B::Db::BY_KEY_STATUS
            ));
            push_arg(&mut query, node_id);
            query.push(" AND ");
            B::Db::push_ids(&mut query, "id", chunk);
            query.build().run(&mut conn).await?;
        }
        Ok(())
    }

    async fn record_results(
        &self,
        results: &[ExecutionResult],
        retries: &[Retry],
    ) -> Result<Vec<String>, StoreError> {
        self.record(results, retries).await
    }

    async fn mark_handlers_began(&self, ids: &[String]) -> Result<(), StoreError> {
        let mut conn = write(self).await?;
        for chunk in ids.chunks(B::Db::MAX_ROWS) {
            let mut query = QueryBuilder::<B::Db>::new(format!(
                "UPDATE executions SET handler_began = TRUE WHERE {} = 'RUNNING' AND ",
                B::Db::BY_KEY_STATUS
            ));
            B::Db::push_ids(&mut query, "id", chunk);
            query.build().run(&mut conn).await?;
        }
        Ok(())
    }

    async fn requeue_executions(&self, ids: &[String]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let now = now_millis();
        // The update, and the usage counts of any it cancelled.
        let mut write = Write::new(self, ids.len().div_ceil(B::Db::MAX_ROWS) * 3).await?;
        for chunk in ids.chunks(B::Db::MAX_ROWS) {
            // Requeued, unless someone asked it to stop: a queued row with the flag set
            // would never be claimed again, so it ends cancelled instead.
            let mut query = QueryBuilder::<B::Db>::new(
                "UPDATE executions SET \
                     status = CASE WHEN cancel_requested THEN 'CANCELLED' ELSE 'QUEUED' END, \
                     finished_at = CASE WHEN cancel_requested THEN ",
            );
            push_arg(&mut query, now);
            query.push(format_args!(
                " END, \
                     error = CASE WHEN cancel_requested THEN 'cancelled' END, \
                     error_kind = CASE WHEN cancel_requested THEN 'CANCELLED' END, \
                     started_at = CASE WHEN cancel_requested THEN started_at END, \
                     node_id = NULL, lease_expires_at = NULL \
                 WHERE {} = 'RUNNING' AND ",
                B::Db::BY_KEY_STATUS
            ));
            B::Db::push_ids(&mut query, "id", chunk);
            query.push(" RETURNING id, status");
            let mut cancelled = Vec::new();
            for row in query.build().all(write.conn()).await? {
                if row.col::<&str>("status")? == "CANCELLED" {
                    cancelled.push(row.col::<String>("id")?);
                }
            }
            let counted: Vec<Counted<'_>> = cancelled
                .iter()
                .map(|id| Counted::without_result(id))
                .collect();
            usage::count_finished::<B::Db>(write.conn(), &counted).await?;
        }
        write.commit().await
    }

    async fn get_execution(&self, id: &str) -> Result<Option<Execution>, StoreError> {
        sqlx::query::<B::Db>(concat!(
            "SELECT ",
            execution_columns!(),
            " FROM executions WHERE id = $1"
        ))
        .arg(id)
        .optional(&mut *read(self).await?)
        .await?
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
        let mut query = list_executions_statement::<B>("", filter, cursor, fetch);
        let rows = query.build().all(&mut *read(self).await?).await?;
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
        sqlx::query::<B::Db>(
            "SELECT seq, ts, level, message, fields FROM execution_logs \
             WHERE execution_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .arg(id)
        .arg(after.map_or(-1, i64::from))
        .arg(i64::from(limit))
        .all(&mut *read(self).await?)
        .await?
        .iter()
        .map(log_from_row)
        .collect()
    }

    async fn cancel_execution(&self, id: &str, now: Millis) -> Result<CancelEffect, StoreError> {
        let mut tx = self.begin().await?;
        // Locked, so a claim running now either took it before (and it is flagged) or
        // skips it and finds it cancelled.
        let status = dynamic::<B::Db>(format!(
            "SELECT status FROM executions WHERE id = $1{}",
            B::Db::FOR_UPDATE
        ))
        .arg(id)
        .optional(&mut tx)
        .await?;
        let Some(status) = status else {
            return Ok(CancelEffect::NotFound);
        };
        let effect = match parse_status(status.col("status")?)? {
            ExecutionStatus::Queued => {
                sqlx::query::<B::Db>(
                    "UPDATE executions SET status = 'CANCELLED', finished_at = $1, \
                         error = 'cancelled before it started', error_kind = 'CANCELLED' \
                     WHERE id = $2",
                )
                .arg(now)
                .arg(id)
                .run(&mut tx)
                .await?;
                usage::count_finished::<B::Db>(&mut tx, &[Counted::without_result(id)]).await?;
                CancelEffect::CancelledQueued
            }
            ExecutionStatus::Running => {
                sqlx::query::<B::Db>("UPDATE executions SET cancel_requested = TRUE WHERE id = $1")
                    .arg(id)
                    .run(&mut tx)
                    .await?;
                CancelEffect::FlaggedRunning
            }
            final_status => CancelEffect::AlreadyFinal(final_status),
        };
        tx.commit().await.map_err(db)?;
        Ok(effect)
    }

    async fn cancel_requested(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        let mut flagged = Vec::new();
        let mut conn = read(self).await?;
        for chunk in ids.chunks(B::Db::MAX_ROWS) {
            let mut query = QueryBuilder::<B::Db>::new(format!(
                "SELECT id FROM executions WHERE {} = 'RUNNING' AND cancel_requested AND ",
                B::Db::BY_KEY_STATUS
            ));
            B::Db::push_ids(&mut query, "id", chunk);
            for row in query.build().all(&mut conn).await? {
                flagged.push(row.col("id")?);
            }
        }
        Ok(flagged)
    }

    async fn due_queued_executions(
        &self,
        now: Millis,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        dynamic::<B::Db>(format!(
            "SELECT id FROM executions{} \
             WHERE status = 'QUEUED' AND run_after <= $1 AND NOT cancel_requested \
             ORDER BY run_after, id LIMIT $2",
            B::Db::QUEUED_DUE_INDEX
        ))
        .arg(now)
        .arg(i64::from(limit))
        .all(&mut *read(self).await?)
        .await?
        .iter()
        .map(|row| row.col("id"))
        .collect()
    }

    async fn count_queued(&self, now: Millis) -> Result<QueuedCount, StoreError> {
        let row = dynamic::<B::Db>(format!(
            "SELECT COUNT(*) AS queued, \
                    COALESCE(SUM(CASE WHEN run_after <= $1 THEN 1 ELSE 0 END), 0) AS due \
             FROM executions{} WHERE status = 'QUEUED'",
            B::Db::QUEUED_DUE_INDEX
        ))
        .arg(now)
        .one(&mut *read(self).await?)
        .await?;
        let queued: i64 = row.col("queued")?;
        let due: i64 = row.col("due")?;
        Ok(QueuedCount {
            due: u64::try_from(due).unwrap_or(0),
            delayed: u64::try_from(queued - due).unwrap_or(0),
        })
    }

    fn pools(&self) -> Vec<PoolState> {
        self.named_pools()
            .into_iter()
            .map(|(name, pool)| PoolState {
                name,
                max: pool.options().get_max_connections(),
                open: pool.size(),
                idle: u32::try_from(pool.num_idle()).unwrap_or(u32::MAX),
                waiting: None,
            })
            .collect()
    }

    async fn expired_executions(
        &self,
        now: Millis,
        limit: u32,
    ) -> Result<Vec<Execution>, StoreError> {
        dynamic::<B::Db>(format!(
            concat!(
                "SELECT ",
                execution_columns!(),
                " FROM executions{} WHERE status = 'RUNNING' AND lease_expires_at < $1 \
                  ORDER BY lease_expires_at, id LIMIT $2"
            ),
            B::Db::RUNNING_LEASE_INDEX
        ))
        .arg(now)
        .arg(i64::from(limit))
        .all(&mut *read(self).await?)
        .await?
        .iter()
        .map(execution_from_row)
        .collect()
    }

    async fn executions_held_by(
        &self,
        node_id: &str,
        limit: u32,
    ) -> Result<Vec<Execution>, StoreError> {
        dynamic::<B::Db>(format!(
            concat!(
                "SELECT ",
                execution_columns!(),
                " FROM executions{} WHERE status = 'RUNNING' AND node_id = $1 \
                  ORDER BY lease_expires_at, id LIMIT $2"
            ),
            B::Db::RUNNING_LEASE_INDEX
        ))
        .arg(node_id)
        .arg(i64::from(limit))
        .all(&mut *read(self).await?)
        .await?
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
        let mut tx = self.begin().await?;
        let held = dynamic::<B::Db>(format!(
            "SELECT handler_began, cancel_requested FROM executions \
             WHERE id = $1 AND status = 'RUNNING' AND lease_expires_at < $2{}",
            B::Db::FOR_UPDATE
        ))
        .arg(id)
        .arg(expired_before)
        .optional(&mut tx)
        .await?;
        let Some(held) = held else {
            return Ok(Settled::NotExpired);
        };
        let began: bool = held.col("handler_began")?;
        let cancel: bool = held.col("cancel_requested")?;
        // What happens to it, as (status, error kind, error, finished at) of the update.
        let (settled, status, error_kind, error) = match (began, cancel) {
            (false, false) => (Settled::Requeued, "QUEUED", None, None),
            (false, true) => (
                Settled::Cancelled,
                "CANCELLED",
                Some("CANCELLED"),
                Some(B::Db::text("cancelled")),
            ),
            (true, _) => (
                Settled::Failed,
                "FAILED",
                Some("LEASE_EXPIRED"),
                Some(B::Db::text(error)),
            ),
        };
        // A run put back in the queue never started: no start, no node, no end.
        sqlx::query::<B::Db>(
            "UPDATE executions SET status = $1, error = $2, error_kind = $3, \
                 finished_at = CASE WHEN $1 = 'QUEUED' THEN NULL ELSE $4 END, \
                 started_at = CASE WHEN $1 = 'QUEUED' THEN NULL ELSE started_at END, \
                 node_id = CASE WHEN $1 = 'QUEUED' THEN NULL ELSE node_id END, \
                 lease_expires_at = NULL \
             WHERE id = $5",
        )
        .arg(status)
        .arg(error.as_deref())
        .arg(error_kind)
        .arg(now)
        .arg(id)
        .run(&mut tx)
        .await?;
        if settled != Settled::Requeued {
            usage::count_finished::<B::Db>(&mut tx, &[Counted::without_result(id)]).await?;
        }
        if settled == Settled::Failed {
            failpoint("settle_expired_execution.before_retry", [id])?;
            if let Some(retry) = retry {
                B::insert_executions(&mut tx, &[retry]).await?;
            }
        }
        tx.commit().await.map_err(db)?;
        Ok(settled)
    }

    // ---- events --------------------------------------------------------------------

    async fn insert_event(&self, event: &Event) -> Result<(), StoreError> {
        let refused = if event.refused.is_empty() {
            None
        } else {
            Some(serde_json::to_string(&event.refused).expect("refusals serialize"))
        };
        let inserted = sqlx::query::<B::Db>(
            "INSERT INTO events (id, topic, payload, source, created_at, depth, caused_by, \
                                 refusals) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .arg(event.id.as_str())
        .arg(&*B::Db::text(&event.topic))
        .arg(json_text("payload", &event.payload)?)
        .arg(&*B::Db::text(&event.source))
        .arg(event.created_at)
        .arg(int4(event.depth))
        .arg(event.caused_by.as_deref())
        .arg(refused.as_deref());
        match B::Db::execute(inserted, &mut *write(self).await?).await {
            Ok(_) => Ok(()),
            Err(err) if is_unique_violation(&err) => Err(StoreError::Conflict(format!(
                "an event with id `{}` already exists",
                event.id
            ))),
            Err(err) => Err(db(err)),
        }
    }

    async fn starting_event_depth(&self, execution_id: &str) -> Result<Option<u32>, StoreError> {
        sqlx::query::<B::Db>(
            "SELECT e.depth AS depth FROM executions x \
             JOIN executions first ON first.id = COALESCE(x.retry_of, x.id) \
             JOIN events e ON e.id = first.event_id \
             WHERE x.id = $1",
        )
        .arg(execution_id)
        .optional(&mut *read(self).await?)
        .await?
        .map(|row| row.col_u32("depth"))
        .transpose()
    }

    async fn list_events(
        &self,
        topic: Option<&str>,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Event>, StoreError> {
        let (limit, fetch) = page_fetch(limit);
        let mut query = QueryBuilder::<B::Db>::new(
            "SELECT id, topic, payload, source, created_at, depth, caused_by, refusals \
             FROM events WHERE 1 = 1",
        );
        if let Some(topic) = topic {
            query.push(" AND topic = ");
            push_arg(&mut query, &*B::Db::text(topic));
        }
        if let Some(cursor) = cursor {
            query.push(" AND id < ");
            push_arg(&mut query, cursor);
        }
        query.push(" ORDER BY id DESC LIMIT ");
        push_arg(&mut query, fetch);
        let rows = query.build().all(&mut *read(self).await?).await?;
        let events = rows.iter().map(event_from_row).collect::<Result<_, _>>()?;
        Ok(page(events, limit, |e: &Event| &e.id))
    }

    // ---- module data ---------------------------------------------------------------

    async fn kv_get(&self, module: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let query =
            sqlx::query::<B::Db>("SELECT value FROM kv WHERE module = $1 AND key = $2").arg(module);
        B::Db::bind_key(query, key)
            .optional(&mut *read(self).await?)
            .await?
            .map(|row| row.col("value"))
            .transpose()
    }

    async fn kv_set(
        &self,
        module: &str,
        key: &str,
        value: &[u8],
        now: Millis,
    ) -> Result<(), StoreError> {
        let query = sqlx::query::<B::Db>(
            "INSERT INTO kv (module, key, value, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (module, key) DO UPDATE SET \
                 value = excluded.value, updated_at = excluded.updated_at",
        )
        .arg(module);
        B::Db::bind_key(query, key)
            .arg(value)
            .arg(now)
            .run(&mut *write(self).await?)
            .await?;
        Ok(())
    }

    async fn kv_delete(&self, module: &str, key: &str) -> Result<(), StoreError> {
        let query =
            sqlx::query::<B::Db>("DELETE FROM kv WHERE module = $1 AND key = $2").arg(module);
        B::Db::bind_key(query, key)
            .run(&mut *write(self).await?)
            .await?;
        Ok(())
    }

    async fn kv_list_keys(
        &self,
        module: &str,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        self.list_keys(module, prefix, limit).await
    }

    // ---- module metrics ----------------------------------------------------------------

    async fn admit_metric_series(
        &self,
        module: &str,
        name: &str,
        labels: &str,
        now: Millis,
        max_series: u32,
    ) -> Result<SeriesAdmission, StoreError> {
        // A series is nearly always known (its first sample is its only admission): a
        // read, and no write lock, answers those.
        if let Some(id) = series_id::<B::Db>(&mut *read(self).await?, module, name, labels).await? {
            return Ok(SeriesAdmission::Admitted(id));
        }
        let mut tx = self.begin().await?;
        let admission =
            admit_series::<B::Db>(&mut tx, module, name, labels, now, i64::from(max_series))
                .await?;
        tx.commit().await.map_err(db)?;
        Ok(admission)
    }

    async fn count_refused_metric_sample(
        &self,
        module: &str,
        now: Millis,
    ) -> Result<(), StoreError> {
        count_refusal::<B::Db>(&mut *write(self).await?, module, now).await
    }

    async fn add_metric_samples(&self, samples: &[(i64, f64, Millis)]) -> Result<bool, StoreError> {
        let rows = rollups_of(samples);
        let mut write = Write::new(self, rows.len().div_ceil(B::Db::MAX_ROWS)).await?;
        for chunk in rows.chunks(B::Db::MAX_ROWS) {
            // Not padded (a repeated row would add its samples twice), so of the many
            // sizes only a sample's (the sink's every call) and a full chunk stay prepared.
            let mut statement = add_rollups_statement(chunk);
            let statement = statement
                .build()
                .persistent(chunk.len() <= ROLLUP_WIDTHS.len() || chunk.len() == B::Db::MAX_ROWS);
            match B::Db::execute(statement, write.conn()).await {
                Ok(_) => {}
                // The series was pruned since its id was read: nothing is written (a
                // transaction is rolled back when dropped) and the caller reads it anew.
                Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => return Ok(false),
                Err(err) => return Err(db(err)),
            }
        }
        write.commit().await?;
        Ok(true)
    }

    async fn metric_series(
        &self,
        module: &str,
        name: Option<&str>,
    ) -> Result<Vec<MetricSeries>, StoreError> {
        // The latest value is that of the newest day's rollup: the last sample of the
        // newest day is the last sample. A seek of the primary key per column and series.
        let latest = |column: &str| {
            format!(
                "(SELECT r.{column} FROM metric_rollups r \
                  WHERE r.series_id = s.id AND r.width = {DAY} ORDER BY r.t DESC LIMIT 1) \
                 AS {column}"
            )
        };
        let mut query = QueryBuilder::<B::Db>::new(format!(
            "SELECT s.id AS id, s.name AS name, s.labels AS labels, s.created_at AS created_at, \
                    {}, {} \
             FROM metric_series s WHERE s.module = ",
            latest("last_value"),
            latest("last_at")
        ));
        push_arg(&mut query, module);
        if let Some(name) = name {
            query.push(" AND s.name = ");
            push_arg(&mut query, name);
        }
        query.push(" ORDER BY s.name, s.labels");
        query
            .build()
            .all(&mut *read(self).await?)
            .await?
            .iter()
            .map(series_from_row)
            .collect()
    }

    async fn metric_summaries(
        &self,
        module: Option<&str>,
    ) -> Result<Vec<ModuleMetricsSummary>, StoreError> {
        // Every module with a series has a row in `metric_modules`: its admission wrote it.
        let mut query = QueryBuilder::<B::Db>::new(
            "SELECT m.module AS module, m.refused_samples AS refused_samples, \
                    m.last_refused_at AS last_refused_at, \
                    (SELECT count(*) FROM metric_series s WHERE s.module = m.module) AS series \
             FROM metric_modules m",
        );
        if let Some(module) = module {
            query.push(" WHERE m.module = ");
            push_arg(&mut query, module);
        }
        query.push(" ORDER BY m.module");
        query
            .build()
            .all(&mut *read(self).await?)
            .await?
            .iter()
            .map(summary_from_row)
            .collect()
    }

    async fn metric_rollups(
        &self,
        series: &[i64],
        width: Millis,
        from: Millis,
        to: Millis,
    ) -> Result<Vec<(i64, Millis, Rollup)>, StoreError> {
        let mut rollups = Vec::new();
        let mut conn = read(self).await?;
        for chunk in series.chunks(B::Db::MAX_ROWS) {
            let mut query = QueryBuilder::<B::Db>::new(
                "SELECT series_id, t, samples, sum_value, min_value, max_value, last_value, \
                        last_at \
                 FROM metric_rollups WHERE series_id IN (",
            );
            // Padded: an `IN` list ignores repeats, and a few sizes stay prepared.
            for (i, id) in padded(chunk, B::Db::MAX_ROWS).enumerate() {
                if i > 0 {
                    query.push(", ");
                }
                push_arg(&mut query, *id);
            }
            query.push(") AND width = ");
            push_arg(&mut query, width);
            query.push(" AND t >= ");
            push_arg(&mut query, from);
            query.push(" AND t < ");
            push_arg(&mut query, to);
            query.push(" ORDER BY series_id, t");
            for row in query.build().all(&mut *conn).await? {
                rollups.push(rollup_from_row(&row)?);
            }
        }
        Ok(rollups)
    }

    // ---- alerts ----------------------------------------------------------------------

    fn alerts(&self) -> &dyn super::alerts::AlertStore {
        self
    }

    // ---- endpoint monitors -----------------------------------------------------------

    async fn insert_endpoint(&self, endpoint: &Endpoint) -> Result<(), StoreError> {
        endpoints::insert(self, endpoint).await
    }

    async fn get_endpoint(&self, id: &str) -> Result<Option<Endpoint>, StoreError> {
        endpoints::get(self, id).await
    }

    async fn list_endpoints(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Endpoint>, StoreError> {
        endpoints::list(self, cursor, limit).await
    }

    async fn update_endpoint(&self, endpoint: &Endpoint) -> Result<bool, StoreError> {
        endpoints::update(self, endpoint).await
    }

    async fn delete_endpoint(&self, id: &str) -> Result<bool, StoreError> {
        endpoints::delete(self, id).await
    }

    async fn due_endpoints(&self, now: Millis, limit: u32) -> Result<Vec<Endpoint>, StoreError> {
        endpoints::due(self, now, limit).await
    }

    async fn claim_endpoint_checks(
        &self,
        claims: &[(String, Millis, Millis)],
        lease: &str,
        holder: &str,
        token: LeaseToken,
        now: Millis,
    ) -> Result<Option<Vec<String>>, StoreError> {
        endpoints::claim(self, claims, lease, holder, token, now).await
    }

    async fn record_endpoint_check(&self, check: &EndpointCheck) -> Result<bool, StoreError> {
        endpoints::record_check(self, check).await
    }

    async fn endpoint_checks(
        &self,
        endpoint_id: &str,
        from: Millis,
        to: Millis,
        cursor: Option<Millis>,
        limit: u32,
    ) -> Result<Page<EndpointCheck>, StoreError> {
        endpoints::checks(self, endpoint_id, from, to, cursor, limit).await
    }

    async fn endpoint_uptime(
        &self,
        endpoint_id: &str,
        since: &[Millis],
    ) -> Result<Vec<UptimeCount>, StoreError> {
        endpoints::uptime(self, endpoint_id, since).await
    }

    // ---- nodes and leases ------------------------------------------------------------

    async fn heartbeat_node(&self, node: &NodeHeartbeat) -> Result<(), StoreError> {
        sqlx::query::<B::Db>(
            "INSERT INTO nodes (node_id, started_at, last_heartbeat_at, workers, running, version) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (node_id) DO UPDATE SET \
                 started_at = excluded.started_at, \
                 last_heartbeat_at = excluded.last_heartbeat_at, \
                 workers = excluded.workers, running = excluded.running, \
                 version = excluded.version",
        )
        .arg(node.node_id.as_str())
        .arg(node.started_at)
        .arg(node.last_heartbeat_at)
        .arg(int4(node.workers))
        .arg(int4(node.running))
        .arg(node.version.as_str())
        .run(&mut *write(self).await?)
        .await?;
        Ok(())
    }

    async fn list_nodes(&self) -> Result<Vec<NodeHeartbeat>, StoreError> {
        sqlx::query::<B::Db>(
            "SELECT node_id, started_at, last_heartbeat_at, workers, running, version \
             FROM nodes ORDER BY node_id",
        )
        .all(&mut *read(self).await?)
        .await?
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
        // One statement: the row is inserted if missing, otherwise updated only if free,
        // expired or ours, so two would-be holders cannot both win (SQLite's single
        // writer runs one after the other; PostgreSQL's second waits on the row lock
        // and re-evaluates the condition against the first's committed row). Every
        // SET expression reads the row as it was.
        let token = sqlx::query::<B::Db>(
            "INSERT INTO leases (name, holder, token, expires_at) VALUES ($1, $2, 1, $3) \
             ON CONFLICT (name) DO UPDATE SET \
                 token = CASE WHEN leases.holder = excluded.holder \
                     THEN leases.token ELSE leases.token + 1 END, \
                 holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE leases.holder IS NULL OR leases.holder = excluded.holder \
                 OR leases.expires_at <= $4 \
             RETURNING token",
        )
        .arg(name)
        .arg(holder)
        .arg(now + ttl_ms)
        .arg(now)
        .optional(&mut *write(self).await?)
        .await?;
        token
            .map(|row| {
                let token: i64 = row.col("token")?;
                u64::try_from(token)
                    .map(LeaseToken)
                    .map_err(|_| super::convert::corrupt("token", format!("negative {token}")))
            })
            .transpose()
    }

    async fn lease_holder(&self, name: &str, now: Millis) -> Result<Option<String>, StoreError> {
        sqlx::query::<B::Db>("SELECT holder FROM leases WHERE name = $1 AND expires_at > $2")
            .arg(name)
            .arg(now)
            .optional(&mut *read(self).await?)
            .await?
            .map(|row| row.col("holder"))
            .transpose()
            .map(Option::flatten)
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<bool, StoreError> {
        let released =
            sqlx::query::<B::Db>("UPDATE leases SET holder = NULL WHERE name = $1 AND holder = $2")
                .arg(name)
                .arg(holder)
                .run(&mut *write(self).await?)
                .await?;
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
        let mut tx = self.begin().await?;
        if !lease_held::<B::Db>(&mut tx, lease, holder, token, now).await? {
            return Ok(false);
        }
        let updates = super::convert::last_update_per_job(updates);
        for chunk in updates.chunks(B::Db::MAX_ROWS) {
            let mut query = QueryBuilder::<B::Db>::new("WITH u (id, next_run_at) AS (VALUES ");
            for (i, (id, next_run_at)) in padded(chunk, B::Db::MAX_ROWS).enumerate() {
                query.push(if i == 0 { "(" } else { ", (" });
                push_arg(&mut query, *id);
                query.push(", ");
                push_arg(&mut query, *next_run_at);
                query.push(")");
            }
            query.push(") UPDATE jobs SET next_run_at = u.next_run_at FROM u WHERE jobs.id = u.id");
            query.build().run(&mut tx).await?;
        }
        tx.commit().await.map_err(db)?;
        Ok(true)
    }
}

/// A count stored in a PostgreSQL `INTEGER` (32 bits), saturated: the values it holds
/// (attempts, workers) are nowhere near the limit.
pub(crate) fn int4(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

// ---- module metrics ------------------------------------------------------------------------

/// Samples recorded before migration 0021 moved into series and rollups per transaction
/// (see [`adopt_metric_samples`]): a few milliseconds of work each, so that nodes
/// starting together share the rows rather than wait on one long transaction.
const ADOPTED_SAMPLES_PER_BATCH: i64 = 5_000;

/// The id of `module`'s series `name` with `labels`, if it exists.
async fn series_id<DB: Sql>(
    conn: &mut DB::Connection,
    module: &str,
    name: &str,
    labels: &str,
) -> Result<Option<i64>, StoreError> {
    sqlx::query::<DB>(
        "SELECT id FROM metric_series WHERE module = $1 AND name = $2 AND labels = $3",
    )
    .arg(module)
    .arg(name)
    .arg(labels)
    .optional(conn)
    .await?
    .map(|row| row.col("id"))
    .transpose()
}

/// [`Store::admit_metric_series`] on `conn`, which must be a transaction: the module's
/// row in `metric_modules` is written first and held until it commits, so admissions
/// of one module's series take turns and the count below is exact. (SQLite's single
/// writer runs them one at a time anyway; on PostgreSQL, two transactions counting at
/// once would both see room for the last series. The count is read by the statement
/// after the lock, whose snapshot sees every admission that committed before it.)
/// Whoever locks several modules locks them in order of name, so two never deadlock.
async fn admit_series<DB: Sql>(
    conn: &mut DB::Connection,
    module: &str,
    name: &str,
    labels: &str,
    now: Millis,
    max_series: i64,
) -> Result<SeriesAdmission, StoreError> {
    sqlx::query::<DB>(
        "INSERT INTO metric_modules (module, refused_samples) VALUES ($1, 0) \
         ON CONFLICT (module) DO UPDATE SET refused_samples = metric_modules.refused_samples",
    )
    .arg(module)
    .run(&mut *conn)
    .await?;
    let created = sqlx::query::<DB>(
        "INSERT INTO metric_series (module, name, labels, created_at) \
         SELECT $1, $2, $3, $4 \
         WHERE (SELECT count(*) FROM metric_series WHERE module = $1) < $5 \
         ON CONFLICT (module, name, labels) DO NOTHING RETURNING id",
    )
    .arg(module)
    .arg(name)
    .arg(labels)
    .arg(now)
    .arg(max_series)
    .optional(&mut *conn)
    .await?;
    if let Some(row) = created {
        return Ok(SeriesAdmission::Admitted(row.col("id")?));
    }
    // Not created: another node admitted it meanwhile, or the module is at its bound.
    if let Some(id) = series_id::<DB>(&mut *conn, module, name, labels).await? {
        return Ok(SeriesAdmission::Admitted(id));
    }
    count_refusal::<DB>(conn, module, now).await?;
    Ok(SeriesAdmission::Refused)
}

/// [`Store::count_refused_metric_sample`] on `conn`.
async fn count_refusal<DB: Sql>(
    conn: &mut DB::Connection,
    module: &str,
    now: Millis,
) -> Result<(), StoreError> {
    sqlx::query::<DB>(
        "INSERT INTO metric_modules (module, refused_samples, last_refused_at) \
         VALUES ($1, 1, $2) \
         ON CONFLICT (module) DO UPDATE SET \
             refused_samples = metric_modules.refused_samples + 1, \
             last_refused_at = excluded.last_refused_at",
    )
    .arg(module)
    .arg(now)
    .run(conn)
    .await?;
    Ok(())
}

/// A rollup row: (series id, width, start) and what it adds.
type RollupRow = ((i64, Millis, Millis), Rollup);

/// `samples` `(series id, value, time)` merged into one rollup per series, width and
/// start, in the order of that key: a statement may not upsert one row twice
/// (PostgreSQL refuses it), and writers that take row locks in one order never deadlock.
fn rollups_of(samples: &[(i64, f64, Millis)]) -> Vec<RollupRow> {
    let mut rollups = std::collections::BTreeMap::<(i64, Millis, Millis), Rollup>::new();
    for &(series, value, at) in samples {
        for width in ROLLUP_WIDTHS {
            let sample = Rollup::of(value, at);
            rollups
                .entry((series, width, rollup_start(at, width)))
                .and_modify(|rollup| rollup.merge(&sample))
                .or_insert(sample);
        }
    }
    rollups.into_iter().collect()
}

/// Adds `rows` (at most [`Sql::MAX_ROWS`]) to their rollups: an upsert that merges as
/// [`Rollup::merge`] does. Written with `CASE` rather than the two-argument `min` and
/// `max` SQLite has and PostgreSQL spells `LEAST` and `GREATEST`: one text for both.
/// Every `SET` expression reads the row as it was.
fn add_rollups_statement<DB: Sql>(rows: &[RollupRow]) -> QueryBuilder<DB> {
    let mut query = QueryBuilder::<DB>::new(
        "INSERT INTO metric_rollups \
             (series_id, width, t, samples, sum_value, min_value, max_value, last_value, \
              last_at) VALUES ",
    );
    for (i, ((series, width, start), rollup)) in rows.iter().enumerate() {
        query.push(if i == 0 { "(" } else { ", (" });
        push_arg(&mut query, *series);
        query.push(", ");
        push_arg(&mut query, *width);
        query.push(", ");
        push_arg(&mut query, *start);
        query.push(", ");
        push_arg(&mut query, rollup.samples);
        query.push(", ");
        push_arg(&mut query, rollup.sum);
        query.push(", ");
        push_arg(&mut query, rollup.min);
        query.push(", ");
        push_arg(&mut query, rollup.max);
        query.push(", ");
        push_arg(&mut query, rollup.last);
        query.push(", ");
        push_arg(&mut query, rollup.last_at);
        query.push(")");
    }
    query.push(
        " ON CONFLICT (series_id, width, t) DO UPDATE SET \
             samples = metric_rollups.samples + excluded.samples, \
             sum_value = metric_rollups.sum_value + excluded.sum_value, \
             min_value = CASE WHEN excluded.min_value < metric_rollups.min_value \
                 THEN excluded.min_value ELSE metric_rollups.min_value END, \
             max_value = CASE WHEN excluded.max_value > metric_rollups.max_value \
                 THEN excluded.max_value ELSE metric_rollups.max_value END, \
             last_value = CASE WHEN excluded.last_at >= metric_rollups.last_at \
                 THEN excluded.last_value ELSE metric_rollups.last_value END, \
             last_at = CASE WHEN excluded.last_at >= metric_rollups.last_at \
                 THEN excluded.last_at ELSE metric_rollups.last_at END",
    );
    query
}

/// Moves the samples recorded one row each before migration 0021 (which stopped
/// writing them) into series and rollups, and deletes them, a batch per transaction:
/// a crash mid-way neither loses nor counts twice any of them, and nodes starting
/// together take different rows (PostgreSQL skips rows another holds). History is
/// kept whole: these series are admitted past the bound a module now has (new ones are
/// then refused). Runs at every start; after the first, it finds nothing to do.
pub(crate) async fn adopt_metric_samples<B: Backend>(backend: &B) -> Result<(), StoreError> {
    let mut moved = 0;
    loop {
        let mut tx = backend.begin().await?;
        let rows = dynamic::<B::Db>(format!(
            "SELECT id, module, name, labels, value, ts FROM metric_samples \
             ORDER BY id LIMIT $1{}",
            B::Db::FOR_UPDATE_SKIP_LOCKED
        ))
        .arg(ADOPTED_SAMPLES_PER_BATCH)
        .all(&mut tx)
        .await?;
        if rows.is_empty() {
            break;
        }
        let mut ids = Vec::with_capacity(rows.len());
        let mut samples = Vec::with_capacity(rows.len());
        for row in &rows {
            let labels: Vec<(String, String)> = row.col_json("labels")?;
            let key = (
                row.col::<String>("module")?,
                row.col::<String>("name")?,
                labels_text(&labels.into_iter().collect()),
            );
            ids.push(row.col::<i64>("id")?);
            samples.push((key, row.col::<f64>("value")?, row.col::<i64>("ts")?));
        }
        // Admitted in order of module (see `admit_series`), each series once.
        let mut series = std::collections::BTreeMap::new();
        for (key, _, ts) in &samples {
            series.entry(key.clone()).or_insert(*ts);
        }
        let mut ids_of = std::collections::HashMap::new();
        for ((module, name, labels), first) in series {
            let admitted =
                admit_series::<B::Db>(&mut tx, &module, &name, &labels, first, i64::MAX).await?;
            if let SeriesAdmission::Admitted(id) = admitted {
                ids_of.insert((module, name, labels), id);
            }
        }
        let samples: Vec<(i64, f64, Millis)> = samples
            .iter()
            .filter_map(|(key, value, ts)| Some((*ids_of.get(key)?, *value, *ts)))
            .collect();
        for chunk in rollups_of(&samples).chunks(B::Db::MAX_ROWS) {
            add_rollups_statement::<B::Db>(chunk)
                .build()
                .run(&mut tx)
                .await?;
        }
        for chunk in ids.chunks(B::Db::MAX_ROWS) {
            let mut query = QueryBuilder::<B::Db>::new("DELETE FROM metric_samples WHERE id IN (");
            for (i, id) in chunk.iter().enumerate() {
                if i > 0 {
                    query.push(", ");
                }
                push_arg(&mut query, *id);
            }
            query.push(")");
            query.build().run(&mut tx).await?;
        }
        tx.commit().await.map_err(db)?;
        moved += ids.len();
    }
    if moved > 0 {
        tracing::info!(
            samples = moved,
            "moved metric samples recorded before migration 0021 into series and rollups"
        );
    }
    Ok(())
}
