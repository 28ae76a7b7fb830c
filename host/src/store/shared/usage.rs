//! The usage rollups (migration 0020): written by the statement or transaction that
//! records an execution's final status, and read back as series and reports.
//!
//! Counting exactly once rests on one rule: a run is counted by whatever changes its row
//! to a final status, in the same commit, and only for rows that change now. A result
//! recorded twice (a retried batch, a late duplicate) finds the row final and counts
//! nothing; a crash before the commit leaves the row RUNNING and counts nothing, and the
//! reconciler later settles and counts it. The counting is SQL over a relation `done` of
//! the runs just made final, so PostgreSQL can do it inside the one statement that
//! records a batch (no round trip more on the hot path), and SQLite, whose statements
//! cannot modify in a `WITH`, runs the same text right after its update.

use std::collections::BTreeMap;

use sqlx::QueryBuilder;

use super::super::StoreError;
use super::super::convert::int;
use super::super::sql::{Columns, Run, Sql, push_arg};
use super::{padded, padded_len};
use crate::domain::usage::{
    Histogram, OutboundRow, OutboundTally, RouteOutbound, RunTotals, UsageQuery, UsageRow,
    bucket_of,
};
use crate::domain::{ExecutionResult, LogEntry};

/// The steps each run is counted at: a minute, an hour, a day.
pub(crate) const STEPS_CTE: &str =
    "usage_steps (step_ms) AS (VALUES (60000), (3600000), (86400000))";

/// `done` from the executions rows of the runs listed in `extra` (id, duration bucket,
/// log bytes, outbound requests), for a statement that runs after the update.
pub(crate) const DONE_FROM_ROWS_CTE: &str = "done AS (SELECT e.id, e.job_id, e.module, e.job, e.status, e.finished_at, \
            e.duration_ms, e.cpu_time_ms, e.fuel_consumed, e.memory_peak_bytes, \
            x.bucket, x.log_bytes, x.outbound_requests \
     FROM (SELECT DISTINCT id, bucket, log_bytes, outbound_requests FROM extra) x \
     JOIN executions e ON e.id = x.id)";

/// Adds the runs of `done` to `usage_runs`. `greatest` is the database's two-argument
/// maximum. Rows are written in key order, the same in every transaction, so two nodes
/// adding to the same points wait for each other instead of deadlocking.
pub(crate) fn count_runs_sql(greatest: &str) -> String {
    let add = |column: &str| format!("{column} = usage_runs.{column} + excluded.{column}");
    let max =
        |column: &str| format!("{column} = {greatest}(usage_runs.{column}, excluded.{column})");
    let updates = [
        add("runs"),
        add("completed"),
        add("failed"),
        add("timed_out"),
        add("cancelled"),
        add("duration_ms_sum"),
        max("duration_ms_max"),
        add("cpu_time_ms"),
        add("fuel_consumed"),
        max("memory_peak_bytes"),
        add("log_bytes"),
        add("outbound_requests"),
    ]
    .join(", ");
    format!(
        "INSERT INTO usage_runs (step_ms, t, job_id, module, job, runs, completed, failed, \
             timed_out, cancelled, duration_ms_sum, duration_ms_max, cpu_time_ms, \
             fuel_consumed, memory_peak_bytes, log_bytes, outbound_requests) \
         SELECT s.step_ms, d.finished_at - d.finished_at % s.step_ms, d.job_id, \
             MIN(d.module), MIN(d.job), COUNT(*), \
             SUM(CASE WHEN d.status = 'COMPLETED' THEN 1 ELSE 0 END), \
             SUM(CASE WHEN d.status = 'FAILED' THEN 1 ELSE 0 END), \
             SUM(CASE WHEN d.status = 'TIMED_OUT' THEN 1 ELSE 0 END), \
             SUM(CASE WHEN d.status = 'CANCELLED' THEN 1 ELSE 0 END), \
             COALESCE(SUM(d.duration_ms), 0), COALESCE(MAX(d.duration_ms), 0), \
             COALESCE(SUM(d.cpu_time_ms), 0), COALESCE(SUM(d.fuel_consumed), 0), \
             COALESCE(MAX(d.memory_peak_bytes), 0), SUM(d.log_bytes), \
             SUM(d.outbound_requests) \
         FROM done d CROSS JOIN usage_steps s WHERE d.finished_at IS NOT NULL \
         GROUP BY 1, 2, 3 ORDER BY 1, 2, 3 \
         ON CONFLICT (step_ms, t, job_id) DO UPDATE SET {updates}"
    )
}

/// Adds the durations of `done` to their histograms.
pub(crate) const COUNT_DURATIONS: &str = "INSERT INTO usage_run_durations (step_ms, t, job_id, module, bucket, count) \
     SELECT s.step_ms, d.finished_at - d.finished_at % s.step_ms, d.job_id, MIN(d.module), \
         d.bucket, COUNT(*) \
     FROM done d CROSS JOIN usage_steps s \
     WHERE d.bucket IS NOT NULL AND d.finished_at IS NOT NULL \
     GROUP BY 1, 2, 3, 5 ORDER BY 1, 2, 3, 5 \
     ON CONFLICT (step_ms, t, job_id, bucket) \
     DO UPDATE SET count = usage_run_durations.count + excluded.count";

/// Adds `calls` (id, host, requests, the responses by class, errors, denied, bytes
/// sent and received) of the runs in `done` to `usage_outbound`.
pub(crate) const COUNT_OUTBOUND: &str = "INSERT INTO usage_outbound (step_ms, t, module, host, requests, responses_2xx, \
         responses_3xx, responses_4xx, responses_5xx, errors, denied, bytes_sent, bytes_received) \
     SELECT s.step_ms, d.finished_at - d.finished_at % s.step_ms, d.module, c.host, \
         SUM(c.requests), SUM(c.responses_2xx), SUM(c.responses_3xx), SUM(c.responses_4xx), \
         SUM(c.responses_5xx), SUM(c.errors), SUM(c.denied), SUM(c.bytes_sent), \
         SUM(c.bytes_received) \
     FROM calls c JOIN done d ON d.id = c.id CROSS JOIN usage_steps s \
     WHERE d.finished_at IS NOT NULL \
     GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4 \
     ON CONFLICT (step_ms, t, module, host) DO UPDATE SET \
         requests = usage_outbound.requests + excluded.requests, \
         responses_2xx = usage_outbound.responses_2xx + excluded.responses_2xx, \
         responses_3xx = usage_outbound.responses_3xx + excluded.responses_3xx, \
         responses_4xx = usage_outbound.responses_4xx + excluded.responses_4xx, \
         responses_5xx = usage_outbound.responses_5xx + excluded.responses_5xx, \
         errors = usage_outbound.errors + excluded.errors, \
         denied = usage_outbound.denied + excluded.denied, \
         bytes_sent = usage_outbound.bytes_sent + excluded.bytes_sent, \
         bytes_received = usage_outbound.bytes_received + excluded.bytes_received";

/// Adds `call_latency` (id, host, bucket, count) of the runs in `done` to
/// `usage_outbound_latency`.
pub(crate) const COUNT_LATENCY: &str = "INSERT INTO usage_outbound_latency (step_ms, t, module, host, bucket, count) \
     SELECT s.step_ms, d.finished_at - d.finished_at % s.step_ms, d.module, l.host, l.bucket, \
         SUM(l.count) \
     FROM call_latency l JOIN done d ON d.id = l.id CROSS JOIN usage_steps s \
     WHERE d.finished_at IS NOT NULL \
     GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5 \
     ON CONFLICT (step_ms, t, module, host, bucket) \
     DO UPDATE SET count = usage_outbound_latency.count + excluded.count";

/// A run made final by the statement or transaction now writing, with what the rollups
/// need that its executions row does not hold.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Counted<'a> {
    pub id: &'a str,
    /// The duration's histogram bucket; `None` for a run that never ran (cancelled while
    /// queued, or settled after its node died).
    pub bucket: Option<i64>,
    pub log_bytes: i64,
    pub outbound: &'a [OutboundTally],
}

impl<'a> Counted<'a> {
    /// A run a worker recorded.
    pub(crate) fn recorded(result: &'a ExecutionResult) -> Self {
        Self {
            id: &result.id,
            bucket: Some(i64::from(bucket_of(result.duration_ms))),
            log_bytes: log_bytes(&result.logs),
            outbound: &result.outbound,
        }
    }

    /// A run made final without a result: nothing of it ran, or nothing of it is known.
    pub(crate) fn without_result(id: &'a str) -> Self {
        Self {
            id,
            bucket: None,
            log_bytes: 0,
            outbound: &[],
        }
    }

    pub(crate) fn outbound_requests(&self) -> i64 {
        self.outbound.iter().map(|t| t.requests).sum()
    }
}

/// The bytes a log takes: messages and their fields' JSON.
pub(crate) fn log_bytes(logs: &[LogEntry]) -> i64 {
    logs.iter()
        .map(|log| {
            let fields = if log.fields.is_empty() {
                0
            } else {
                serde_json::to_string(&log.fields).map_or(0, |text| text.len())
            };
            int((log.message.len() + fields) as u64)
        })
        .sum()
}

/// Most bind parameters in one counting statement: under SQLite's 32,766 and
/// PostgreSQL's 65,535, with room for the statement's own.
const MAX_BINDS: usize = 30_000;

/// Pushes one parenthesised row of parameters.
macro_rules! push_row {
    ($query:expr, $first:expr $(, $rest:expr)* $(,)?) => {{
        $query.push("(");
        push_arg($query, $first);
        $( $query.push(", "); push_arg($query, $rest); )*
        $query.push(")");
    }};
}

/// Counts `runs` in the rollups: for each chunk, the statements above over `done` read
/// from the executions rows (which must already hold the final status) on `conn`, which
/// must be the transaction that made them final.
pub(crate) async fn count_finished<DB: Sql>(
    conn: &mut DB::Connection,
    runs: &[Counted<'_>],
) -> Result<(), StoreError> {
    if runs.is_empty() {
        return Ok(());
    }
    let count_runs = count_runs_sql(DB::GREATEST);
    for chunk in runs.chunks(DB::MAX_ROWS) {
        let mut statements: Vec<&str> = vec![&count_runs];
        if chunk.iter().any(|run| run.bucket.is_some()) {
            statements.push(COUNT_DURATIONS);
        }
        for statement in statements {
            let mut query = with_done::<DB>(chunk, true);
            query.push(statement);
            query.build().run(&mut *conn).await?;
        }
        count_outbound::<DB>(conn, chunk).await?;
    }
    Ok(())
}

/// `WITH usage_steps, extra, done ` for the runs of `chunk`. Padded to a few sizes
/// (see [`padded`]) when `pad`, so the statement stays prepared: `done` reads the
/// distinct rows of `extra`, so a repeated run is counted once.
fn with_done<DB: Sql>(chunk: &[Counted<'_>], pad: bool) -> QueryBuilder<DB> {
    let mut query = QueryBuilder::<DB>::new(format!(
        "WITH {STEPS_CTE}, extra (id, bucket, log_bytes, outbound_requests) AS (VALUES "
    ));
    let rows = if pad {
        padded_len(chunk.len(), DB::MAX_ROWS)
    } else {
        chunk.len()
    };
    for (i, run) in padded(chunk, rows).enumerate() {
        if i > 0 {
            query.push(", ");
        }
        push_row!(
            &mut query,
            run.id,
            run.bucket,
            run.log_bytes,
            run.outbound_requests()
        );
    }
    query.push(format!("), {DONE_FROM_ROWS_CTE} "));
    query
}

/// Counts the outbound requests of the runs of `chunk`, in as many statements as their
/// tallies need. Not padded: few runs make requests, and a repeated tally would count
/// twice.
async fn count_outbound<DB: Sql>(
    conn: &mut DB::Connection,
    chunk: &[Counted<'_>],
) -> Result<(), StoreError> {
    let calls: Vec<(&str, &OutboundTally)> = chunk
        .iter()
        .flat_map(|run| run.outbound.iter().map(move |tally| (run.id, tally)))
        .collect();
    if calls.is_empty() {
        return Ok(());
    }
    let callers: Vec<Counted<'_>> = chunk
        .iter()
        .filter(|run| !run.outbound.is_empty())
        .copied()
        .collect();
    let room = MAX_BINDS.saturating_sub(callers.len() * 4).max(11);
    add_outbound::<DB>(conn, &calls, room, || with_done::<DB>(&callers, false)).await
}

/// Counts the requests of module routes in the outbound rollups. Each (module, minute)
/// stands in for a run of its own in `done`, so the counting statements are the runs'.
pub(crate) async fn count_route_outbound<DB: Sql>(
    conn: &mut DB::Connection,
    requests: &[RouteOutbound],
) -> Result<(), StoreError> {
    // Three binds a stand-in run, and its tallies after them.
    for group in requests.chunks(MAX_BINDS / 2 / 3) {
        let ids: Vec<String> = (0..group.len()).map(|i| i.to_string()).collect();
        let calls: Vec<(&str, &OutboundTally)> = group
            .iter()
            .zip(&ids)
            .flat_map(|(minute, id)| minute.tallies.iter().map(move |t| (id.as_str(), t)))
            .collect();
        let with_done = || {
            let mut query = QueryBuilder::<DB>::new(format!(
                "WITH {STEPS_CTE}, done (id, module, finished_at) AS (VALUES "
            ));
            for (i, (requests, id)) in group.iter().zip(&ids).enumerate() {
                if i > 0 {
                    query.push(", ");
                }
                push_row!(
                    &mut query,
                    id.as_str(),
                    requests.module.as_str(),
                    requests.minute
                );
            }
            query.push(") ");
            query
        };
        add_outbound::<DB>(conn, &calls, MAX_BINDS / 2, with_done).await?;
    }
    Ok(())
}

/// Adds `calls` (the id of a run in `done`, one tally of it) to `usage_outbound` and
/// `usage_outbound_latency`, with `room` binds for the tallies of each statement and
/// `with_done` starting each statement with `WITH usage_steps, ..., done`.
async fn add_outbound<DB: Sql>(
    conn: &mut DB::Connection,
    calls: &[(&str, &OutboundTally)],
    room: usize,
    with_done: impl Fn() -> QueryBuilder<DB>,
) -> Result<(), StoreError> {
    for part in calls.chunks(room / 11) {
        let mut query = with_done();
        query.push(
            ", calls (id, host, requests, responses_2xx, responses_3xx, responses_4xx, \
                 responses_5xx, errors, denied, bytes_sent, bytes_received) AS (VALUES ",
        );
        for (i, (id, t)) in part.iter().enumerate() {
            if i > 0 {
                query.push(", ");
            }
            push_row!(
                &mut query,
                *id,
                t.host.as_str(),
                t.requests,
                t.responses_2xx,
                t.responses_3xx,
                t.responses_4xx,
                t.responses_5xx,
                t.errors,
                t.denied,
                t.bytes_sent,
                t.bytes_received,
            );
        }
        query.push(") ").push(COUNT_OUTBOUND);
        query.build().persistent(false).run(&mut *conn).await?;
    }
    let latency: Vec<(&str, &str, i64, i64)> = calls
        .iter()
        .flat_map(|(id, t)| {
            t.latency
                .buckets()
                .map(move |(bucket, count)| (*id, t.host.as_str(), i64::from(bucket), count))
        })
        .collect();
    for part in latency.chunks(room / 4) {
        let mut query = with_done();
        query.push(", call_latency (id, host, bucket, count) AS (VALUES ");
        for (i, (id, host, bucket, count)) in part.iter().enumerate() {
            if i > 0 {
                query.push(", ");
            }
            push_row!(&mut query, *id, *host, *bucket, *count);
        }
        query.push(") ").push(COUNT_LATENCY);
        query.build().persistent(false).run(&mut *conn).await?;
    }
    Ok(())
}

/// Pushes `SELECT` and the point a rollup row belongs to: its `t` when points are the
/// rollups' own (the common case, and the one that reads in primary-key order with no
/// sort), `t` cut to the query's step, or `0` for one total.
fn push_point<DB: Sql>(query: &mut QueryBuilder<DB>, usage: &UsageQuery) {
    match usage.step {
        Some(step) if step == usage.tier => {
            query.push("SELECT t");
        }
        Some(step) => {
            query.push("SELECT t - t % ");
            push_arg(query, step);
        }
        None => {
            query.push("SELECT CAST(0 AS BIGINT)");
        }
    }
    query.push(" AS point, ");
}

/// Pushes `FROM table` and the conditions of `usage` on its rows; `host_column`: the
/// table is one of outbound requests.
fn push_filters<DB: Sql>(
    query: &mut QueryBuilder<DB>,
    usage: &UsageQuery,
    table: &str,
    host_column: bool,
) {
    query.push(format!(" FROM {table} WHERE step_ms = "));
    push_arg(query, usage.tier);
    query.push(" AND t >= ");
    push_arg(query, usage.from);
    query.push(" AND t < ");
    push_arg(query, usage.to);
    if let Some(module) = &usage.module {
        query.push(" AND module = ");
        push_arg(query, module.as_str());
    }
    if host_column {
        if let Some(host) = &usage.host {
            query.push(" AND host = ");
            push_arg(query, host.as_str());
        }
    } else if let Some(job_id) = &usage.job_id {
        query.push(" AND job_id = ");
        push_arg(query, job_id.as_str());
    }
}

type RunKey = (i64, String, Option<String>);

/// The runs of `usage`, one row per group and point, ordered by group then point.
///
/// The database sums per job and point, in the order of the rollups' primary key
/// (step, t, job), which needs no sort when points are the rollups' own; the rows of a
/// module's jobs are added together here. A point's histogram comes back as one text,
/// `bucket:count,...`, of its rows unsummed (a bucket repeats when a point spans several
/// rollups, and is added up when read): a month of hours of a few jobs is thousands of
/// points but tens of thousands of bucket rows, and rows, not bytes, are what reading
/// costs.
pub(crate) async fn read_runs<DB: Sql>(
    conn: &mut DB::Connection,
    usage: &UsageQuery,
) -> Result<Vec<UsageRow>, StoreError> {
    let mut query = QueryBuilder::<DB>::new("");
    push_point(&mut query, usage);
    query.push(
        "job_id, MIN(module) AS module, MIN(job) AS job, \
         CAST(SUM(runs) AS BIGINT) AS runs, CAST(SUM(completed) AS BIGINT) AS completed, \
         CAST(SUM(failed) AS BIGINT) AS failed, \
         CAST(SUM(timed_out) AS BIGINT) AS timed_out, \
         CAST(SUM(cancelled) AS BIGINT) AS cancelled, \
         SUM(duration_ms_sum) AS duration_ms_sum, MAX(duration_ms_max) AS duration_ms_max, \
         SUM(cpu_time_ms) AS cpu_time_ms, CAST(SUM(fuel_consumed) AS BIGINT) AS fuel_consumed, \
         MAX(memory_peak_bytes) AS memory_peak_bytes, \
         CAST(SUM(log_bytes) AS BIGINT) AS log_bytes, \
         CAST(SUM(outbound_requests) AS BIGINT) AS outbound_requests",
    );
    push_filters(&mut query, usage, "usage_runs", false);
    query.push(" GROUP BY 1, job_id");
    let key = |point: i64, module: String, job_id: String| {
        (point, module, usage.by_job.then_some(job_id))
    };
    let mut rows: BTreeMap<RunKey, UsageRow> = BTreeMap::new();
    for row in query.build().persistent(false).all(&mut *conn).await? {
        let point: i64 = row.col("point")?;
        let module: String = row.col("module")?;
        let job_id: String = row.col("job_id")?;
        let job: String = row.col("job")?;
        let totals = RunTotals {
            runs: row.col("runs")?,
            completed: row.col("completed")?,
            failed: row.col("failed")?,
            timed_out: row.col("timed_out")?,
            cancelled: row.col("cancelled")?,
            duration_ms_sum: row.col("duration_ms_sum")?,
            duration_ms_max: row.col("duration_ms_max")?,
            cpu_time_ms: row.col("cpu_time_ms")?,
            fuel_consumed: row.col("fuel_consumed")?,
            memory_peak_bytes: row.col("memory_peak_bytes")?,
            log_bytes: row.col("log_bytes")?,
            outbound_requests: row.col("outbound_requests")?,
            durations: Histogram::default(),
        };
        let key = key(point, module, job_id);
        match rows.get_mut(&key) {
            Some(usage_row) => usage_row.totals.merge(&totals),
            None => {
                let usage_row = UsageRow {
                    t: usage.step.map(|_| point),
                    module: key.1.clone(),
                    job_id: key.2.clone(),
                    job: usage.by_job.then_some(job),
                    totals,
                };
                rows.insert(key, usage_row);
            }
        }
    }
    let mut query = QueryBuilder::<DB>::new("");
    push_point(&mut query, usage);
    query.push("job_id, MIN(module) AS module, ");
    query.push(DB::BUCKET_LIST).push(" AS buckets");
    push_filters(&mut query, usage, "usage_run_durations", false);
    query.push(" GROUP BY 1, job_id");
    for row in query.build().persistent(false).all(&mut *conn).await? {
        let key = key(row.col("point")?, row.col("module")?, row.col("job_id")?);
        if let Some(usage_row) = rows.get_mut(&key) {
            add_buckets(&mut usage_row.totals.durations, row.col("buckets")?)?;
        }
    }
    let mut rows: Vec<UsageRow> = rows.into_values().collect();
    rows.sort_by(|a, b| (&a.module, &a.job_id, a.t).cmp(&(&b.module, &b.job_id, b.t)));
    Ok(rows)
}

/// Adds `list` (`bucket:count,...`, as [`Sql::BUCKET_LIST`] writes it) to `histogram`.
fn add_buckets(histogram: &mut Histogram, list: &str) -> Result<(), StoreError> {
    for pair in list.split(',').filter(|p| !p.is_empty()) {
        let parsed = pair
            .split_once(':')
            .and_then(|(bucket, count)| Some((bucket.parse().ok()?, count.parse().ok()?)));
        let (bucket, count): (i32, i64) = parsed.ok_or_else(|| {
            StoreError::Corrupt(format!("histogram bucket `{pair}` is not bucket:count"))
        })?;
        histogram.add(bucket, count);
    }
    Ok(())
}

/// The outbound requests of `usage`, one row per module, host and point, ordered by
/// module, host, point.
pub(crate) async fn read_outbound<DB: Sql>(
    conn: &mut DB::Connection,
    usage: &UsageQuery,
) -> Result<Vec<OutboundRow>, StoreError> {
    let mut query = QueryBuilder::<DB>::new("");
    push_point(&mut query, usage);
    query.push(
        "module, host, CAST(SUM(requests) AS BIGINT) AS requests, \
         CAST(SUM(responses_2xx) AS BIGINT) AS responses_2xx, \
         CAST(SUM(responses_3xx) AS BIGINT) AS responses_3xx, \
         CAST(SUM(responses_4xx) AS BIGINT) AS responses_4xx, \
         CAST(SUM(responses_5xx) AS BIGINT) AS responses_5xx, \
         CAST(SUM(errors) AS BIGINT) AS errors, CAST(SUM(denied) AS BIGINT) AS denied, \
         CAST(SUM(bytes_sent) AS BIGINT) AS bytes_sent, \
         CAST(SUM(bytes_received) AS BIGINT) AS bytes_received",
    );
    push_filters(&mut query, usage, "usage_outbound", true);
    query.push(" GROUP BY 1, module, host");
    let mut rows: BTreeMap<(String, String, i64), OutboundRow> = BTreeMap::new();
    for row in query.build().persistent(false).all(&mut *conn).await? {
        let point: i64 = row.col("point")?;
        let module: String = row.col("module")?;
        let host: String = row.col("host")?;
        let totals = OutboundTally {
            requests: row.col("requests")?,
            responses_2xx: row.col("responses_2xx")?,
            responses_3xx: row.col("responses_3xx")?,
            responses_4xx: row.col("responses_4xx")?,
            responses_5xx: row.col("responses_5xx")?,
            errors: row.col("errors")?,
            denied: row.col("denied")?,
            bytes_sent: row.col("bytes_sent")?,
            bytes_received: row.col("bytes_received")?,
            ..OutboundTally::new(&host)
        };
        rows.insert(
            (module.clone(), host, point),
            OutboundRow {
                t: usage.step.map(|_| point),
                module,
                totals,
            },
        );
    }
    // As for runs' durations: each point's rows unsummed, in one text.
    let mut query = QueryBuilder::<DB>::new("");
    push_point(&mut query, usage);
    query.push("module, host, ");
    query.push(DB::BUCKET_LIST).push(" AS buckets");
    push_filters(&mut query, usage, "usage_outbound_latency", true);
    query.push(" GROUP BY 1, module, host");
    for row in query.build().persistent(false).all(&mut *conn).await? {
        let key = (row.col("module")?, row.col("host")?, row.col("point")?);
        if let Some(outbound_row) = rows.get_mut(&key) {
            add_buckets(&mut outbound_row.totals.latency, row.col("buckets")?)?;
        }
    }
    Ok(rows.into_values().collect())
}
