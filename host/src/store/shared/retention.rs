//! Pruning history, a batch at a time: final executions past their retention with their
//! logs, log lines past theirs, usage rows past their step's, stored inputs nothing
//! refers to any more, and endpoint checks past theirs.
//!
//! Executions are found by their id, not by a time index: ids are UUID v7, ordered by
//! creation, so "created before" is a range of the primary key (of `executions_by_job`
//! for one job), and the hot path writes no index for pruning's sake. Each batch is its
//! own short transaction, so the writer (SQLite's only one) is never held for long.

use super::super::StoreError;
use super::super::sql::{Bind, Columns, Run, Sql, push_arg};
use super::{Backend, Write, read};
use crate::domain::retention::{PrunePlan, Pruned, first_id_at};
use crate::domain::window::DAY;
use sqlx::QueryBuilder;

/// The final statuses, as the statements below test them.
const FINAL: &str = "status IN ('COMPLETED', 'FAILED', 'TIMED_OUT', 'CANCELLED')";

/// How old an unreferenced stored input must be before it goes: a request storing a
/// large input writes the body first and its executions next, in one transaction, but
/// on PostgreSQL another transaction may find the body already there and refer to it a
/// moment later. A day is far past any such moment.
const INPUT_GRACE: i64 = DAY;

/// The tables of points at a step: their primary key and the column of the step. Module
/// metrics' rollups keep the steps of usage.
const POINT_TABLES: [(&str, &str, &str); 5] = [
    ("usage_runs", "step_ms, t, job_id", "step_ms"),
    (
        "usage_run_durations",
        "step_ms, t, job_id, bucket",
        "step_ms",
    ),
    ("usage_outbound", "step_ms, t, module, host", "step_ms"),
    (
        "usage_outbound_latency",
        "step_ms, t, module, host, bucket",
        "step_ms",
    ),
    ("metric_rollups", "series_id, width, t", "width"),
];

/// One batch of pruning per kind; see [`crate::store::Store::prune_history`].
pub(crate) async fn prune<B: Backend>(
    backend: &B,
    plan: &PrunePlan,
    limit: u32,
) -> Result<Pruned, StoreError> {
    let mut pruned = Pruned::default();
    let limit = i64::from(limit);
    // Jobs that keep their own.
    let keepers = sqlx::query::<B::Db>(
        "SELECT id, retain_days, retain_last FROM jobs \
         WHERE retain_days IS NOT NULL OR retain_last IS NOT NULL ORDER BY id",
    )
    .all(&mut *read(backend).await?)
    .await?;
    for job in &keepers {
        let job_id: String = job.col("id")?;
        let days: Option<i32> = job.col("retain_days")?;
        let last: Option<i32> = job.col("retain_last")?;
        let before = days.map_or(plan.executions_before, |days| {
            plan.now - i64::from(days) * DAY
        });
        let mut ids = expired_ids::<B>(backend, Some(&job_id), &first_id_at(before), limit).await?;
        if let Some(last) = last {
            ids.extend(beyond_newest::<B>(backend, &job_id, i64::from(last), limit).await?);
        }
        pruned.add(delete_executions(backend, &ids).await?);
    }
    // Every other job's, and those of jobs that no longer exist.
    let ids = expired_ids::<B>(backend, None, &first_id_at(plan.executions_before), limit).await?;
    pruned.add(delete_executions(backend, &ids).await?);
    pruned.log_lines += delete_old_logs(backend, &first_id_at(plan.logs_before), limit).await?;
    for (step, before) in plan.usage_before {
        for table in POINT_TABLES {
            pruned.usage_rows += delete_points(backend, table, step, before, limit).await?;
        }
    }
    // A metric series whose every point is gone frees its place under its module's bound.
    pruned.usage_rows += delete_empty_series(backend, plan.now - DAY, limit).await?;
    pruned.inputs += delete_unused_inputs(backend, plan.now - INPUT_GRACE, limit).await?;
    pruned.endpoint_checks += super::endpoints::prune(backend, plan.checks_before, limit).await?;
    pruned.alerts +=
        super::super::alerts::AlertStore::prune_alerts(backend, plan.alerts_before, limit).await?;
    Ok(pruned)
}

/// Final executions created before the id `below` (of `job_id` only, or of every job
/// that does not keep its own for a number of days), oldest first.
async fn expired_ids<B: Backend>(
    backend: &B,
    job_id: Option<&str>,
    below: &str,
    limit: i64,
) -> Result<Vec<String>, StoreError> {
    let mut query = QueryBuilder::<B::Db>::new("SELECT id FROM executions WHERE ");
    match job_id {
        Some(job_id) => {
            query.push("job_id = ");
            push_arg(&mut query, job_id);
        }
        None => {
            query.push("job_id NOT IN (SELECT id FROM jobs WHERE retain_days IS NOT NULL)");
        }
    }
    query.push(" AND id < ");
    push_arg(&mut query, below);
    query.push(format!(" AND {FINAL} ORDER BY id LIMIT "));
    push_arg(&mut query, limit);
    query
        .build()
        .all(&mut *read(backend).await?)
        .await?
        .iter()
        .map(|row| row.col("id"))
        .collect()
}

/// Final executions of `job_id` older than its `keep` newest, oldest first.
async fn beyond_newest<B: Backend>(
    backend: &B,
    job_id: &str,
    keep: i64,
    limit: i64,
) -> Result<Vec<String>, StoreError> {
    // Fewer than `keep` executions: the subquery is NULL and nothing compares below it.
    sqlx::query::<B::Db>(
        "SELECT id FROM executions WHERE job_id = $1 AND id < \
             (SELECT id FROM executions WHERE job_id = $1 ORDER BY id DESC LIMIT 1 OFFSET $2) \
         AND status IN ('COMPLETED', 'FAILED', 'TIMED_OUT', 'CANCELLED') \
         ORDER BY id LIMIT $3",
    )
    .arg(job_id)
    .arg(keep - 1)
    .arg(limit)
    .all(&mut *read(backend).await?)
    .await?
    .iter()
    .map(|row| row.col("id"))
    .collect()
}

/// Deletes the executions `ids` that are final, with their log lines, in one
/// transaction.
async fn delete_executions<B: Backend>(backend: &B, ids: &[String]) -> Result<Pruned, StoreError> {
    let mut pruned = Pruned::default();
    if ids.is_empty() {
        return Ok(pruned);
    }
    let chunks = ids.len().div_ceil(B::Db::MAX_ROWS);
    let mut write = Write::new(backend, 2 * chunks).await?;
    for chunk in ids.chunks(B::Db::MAX_ROWS) {
        let mut logs = QueryBuilder::<B::Db>::new(
            "DELETE FROM execution_logs WHERE execution_id IN \
             (SELECT id FROM executions WHERE ",
        );
        B::Db::push_ids(&mut logs, "id", chunk);
        logs.push(format!(" AND {FINAL})"));
        pruned.log_lines += logs.build().run(write.conn()).await?;
        let mut executions = QueryBuilder::<B::Db>::new("DELETE FROM executions WHERE ");
        B::Db::push_ids(&mut executions, "id", chunk);
        executions.push(format!(" AND {FINAL}"));
        pruned.executions += executions.build().run(write.conn()).await?;
    }
    write.commit().await?;
    Ok(pruned)
}

/// Deletes up to `limit` log lines of executions created before the id `below`. Only
/// final executions have stored lines (a run's log is written with its result).
async fn delete_old_logs<B: Backend>(
    backend: &B,
    below: &str,
    limit: i64,
) -> Result<u64, StoreError> {
    sqlx::query::<B::Db>(
        "DELETE FROM execution_logs WHERE (execution_id, seq) IN \
             (SELECT execution_id, seq FROM execution_logs WHERE execution_id < $1 \
              ORDER BY execution_id, seq LIMIT $2)",
    )
    .arg(below)
    .arg(limit)
    .run(&mut *super::write(backend).await?)
    .await
}

/// Deletes up to `limit` rows of the point table `(table, key, step column)` at step
/// `step` whose point starts before `before`.
async fn delete_points<B: Backend>(
    backend: &B,
    (table, key, step_column): (&str, &str, &str),
    step: i64,
    before: i64,
    limit: i64,
) -> Result<u64, StoreError> {
    super::dynamic::<B::Db>(format!(
        "DELETE FROM {table} WHERE ({key}) IN \
             (SELECT {key} FROM {table} WHERE {step_column} = $1 AND t < $2 LIMIT $3)"
    ))
    .arg(step)
    .arg(before)
    .arg(limit)
    .run(&mut *super::write(backend).await?)
    .await
}

/// Deletes up to `limit` metric series created before `before` that have no point left
/// (a series is admitted a moment before its first point is written).
async fn delete_empty_series<B: Backend>(
    backend: &B,
    before: i64,
    limit: i64,
) -> Result<u64, StoreError> {
    sqlx::query::<B::Db>(
        "DELETE FROM metric_series WHERE id IN \
             (SELECT s.id FROM metric_series s WHERE s.created_at < $1 \
              AND NOT EXISTS (SELECT 1 FROM metric_rollups r WHERE r.series_id = s.id) \
              LIMIT $2)",
    )
    .arg(before)
    .arg(limit)
    .run(&mut *super::write(backend).await?)
    .await
}

/// Deletes up to `limit` stored inputs written before `before` that no execution and no
/// job refers to.
async fn delete_unused_inputs<B: Backend>(
    backend: &B,
    before: i64,
    limit: i64,
) -> Result<u64, StoreError> {
    sqlx::query::<B::Db>(
        "DELETE FROM execution_inputs WHERE hash IN \
             (SELECT i.hash FROM execution_inputs i WHERE i.created_at < $1 \
              AND NOT EXISTS (SELECT 1 FROM executions e WHERE e.input_hash = i.hash) \
              AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.input_hash = i.hash) \
              LIMIT $2)",
    )
    .arg(before)
    .arg(limit)
    .run(&mut *super::write(backend).await?)
    .await
}
