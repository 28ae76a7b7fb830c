//! `/api/v1/usage`: what runs consumed over time per module or job, the consumption
//! report over a window (JSON or CSV), and outbound requests per module and host. Thin:
//! the questions are answered by [`crate::services::usage`].

use std::cmp::Ordering;
use std::fmt::Write as _;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ApiState;
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::extract::{Params, WindowRequest};
use super::openapi;
use crate::domain::usage::{Histogram, OutboundTally, RunTotals, UsageRow};
use crate::domain::window::{DEFAULT_SPAN, MINUTE, format_step, parse_time, round_up};
use crate::domain::{Millis, now_millis};
use crate::services::usage::{UsageFilter, UsageSeries};

const TAG: &str = "usage";

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    openapi::tagged(
        TAG,
        "What runs consumed over time: runs by status, durations, fuel, memory, log bytes \
         and outbound requests, per module, job and outbound host. Kept as rollups written \
         with each run's final status, so totals outlive the executions that retention \
         deletes.",
    )
    .routes(routes!(series))
    .routes(routes!(summary))
    .routes(routes!(outbound))
}

/// Percentiles of run durations in milliseconds (`null` without runs). Read from a
/// log-scale histogram: within 4.5 % of the exact value; `max` is exact.
#[derive(Debug, Serialize, ToSchema)]
struct Durations {
    p50: Option<f64>,
    p95: Option<f64>,
    p99: Option<f64>,
    max: Option<f64>,
}

impl Durations {
    fn of(histogram: &Histogram, max: f64) -> Self {
        let has_runs = histogram.count() > 0;
        Self {
            p50: histogram.quantile(0.5, max),
            p95: histogram.quantile(0.95, max),
            p99: histogram.quantile(0.99, max),
            max: has_runs.then_some(max),
        }
    }
}

/// What the runs that ended within one step consumed.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct UsagePoint {
    /// Start of the step, milliseconds since the Unix epoch.
    t: Millis,
    runs: i64,
    completed: i64,
    failed: i64,
    timed_out: i64,
    cancelled: i64,
    duration_ms: Durations,
    fuel_consumed: i64,
    /// The largest peak of linear memory of any of the runs.
    memory_peak_bytes: i64,
    log_bytes: i64,
    outbound_requests: i64,
}

impl UsagePoint {
    fn new(t: Millis, totals: &RunTotals) -> Self {
        Self {
            t,
            runs: totals.runs,
            completed: totals.completed,
            failed: totals.failed,
            timed_out: totals.timed_out,
            cancelled: totals.cancelled,
            duration_ms: Durations::of(&totals.durations, totals.duration_ms_max),
            fuel_consumed: totals.fuel_consumed,
            memory_peak_bytes: totals.memory_peak_bytes,
            log_bytes: totals.log_bytes,
            outbound_requests: totals.outbound_requests,
        }
    }
}

/// One module's (or job's) usage at every step of the window.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct Series {
    module: String,
    /// With `groupBy=job`: the job's id and the module job it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    job_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    job: Option<String>,
    points: Vec<UsagePoint>,
}

impl From<UsageSeries> for Series {
    fn from(series: UsageSeries) -> Self {
        Self {
            module: series.module,
            job_id: series.job_id,
            job: series.job,
            points: series
                .points
                .iter()
                .map(|(t, totals)| UsagePoint::new(*t, totals))
                .collect(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct UsageSeriesPage {
    /// The window as answered: `from` rounded down and `to` up to whole steps.
    from: Millis,
    to: Millis,
    /// The step, as `1m`, `1h`, `1d`.
    step: String,
    series: Vec<Series>,
}

fn group_by(params: &Params) -> Result<bool, ApiError> {
    match params.text("groupBy") {
        None | Some("module") => Ok(false),
        Some("job") => Ok(true),
        Some(other) => Err(ApiError::field(
            ErrorCode::InvalidField,
            "groupBy",
            format!("groupBy: `{other}` is not a grouping; use module or job"),
        )),
    }
}

fn filter(params: &Params) -> Result<UsageFilter, ApiError> {
    Ok(UsageFilter {
        module: params.text("module").map(str::to_owned),
        job_id: params.text("jobId").map(str::to_owned),
        host: params.text("host").map(|h| h.to_ascii_lowercase()),
        by_job: group_by(params)?,
    })
}

/// Usage over time
///
/// One series per module (or per job with `groupBy=job`), a point per step of the
/// window, every step present (zeros where nothing ran). A run counts at the step in
/// which it ended.
#[utoipa::path(
    get,
    path = "/usage",
    tag = TAG,
    operation_id = "getUsage",
    params(
        WindowRequest,
        ("module" = Option<String>, Query, description = "Only this module."),
        ("jobId" = Option<String>, Query, description = "Only this job."),
        ("groupBy" = Option<String>, Query, description = "`module` (default) or `job`."),
    ),
    responses(
        (status = 200, description = "The series.", body = UsageSeriesPage),
        (status = 400, description = "A malformed or backward `from`/`to`, a `step` that is not whole minutes or gives more than 10,000 points, an unknown `groupBy`, or a `module`/`jobId` that does not exist; `details.field` names it.", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn series(
    State(state): State<ApiState>,
    params: Params,
) -> Result<Json<UsageSeriesPage>, ApiError> {
    let window = params.window()?;
    let filter = filter(&params)?;
    let series = state.services.usage_series(&window, &filter).await?;
    Ok(Json(UsageSeriesPage {
        from: window.from,
        to: window.to,
        step: format_step(window.step),
        series: series.into_iter().map(Series::from).collect(),
    }))
}

/// One line of the consumption report.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct ReportLine {
    module: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    job_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    job: Option<String>,
    runs: i64,
    completed: i64,
    failed: i64,
    timed_out: i64,
    cancelled: i64,
    /// Runs that ended failed or timed out, over all runs (0 without runs).
    failure_rate: f64,
    fuel_consumed: i64,
    /// CPU time the host spent on the runs (instantiation, guest code, host calls).
    cpu_time_ms: f64,
    duration_ms: Durations,
    memory_peak_bytes: i64,
    log_bytes: i64,
    outbound_requests: i64,
}

impl From<UsageRow> for ReportLine {
    fn from(row: UsageRow) -> Self {
        let t = &row.totals;
        #[expect(clippy::cast_precision_loss, reason = "run counts are far below 2^52")]
        let failure_rate = if t.runs == 0 {
            0.0
        } else {
            (t.failed + t.timed_out) as f64 / t.runs as f64
        };
        Self {
            duration_ms: Durations::of(&t.durations, t.duration_ms_max),
            runs: t.runs,
            completed: t.completed,
            failed: t.failed,
            timed_out: t.timed_out,
            cancelled: t.cancelled,
            failure_rate,
            fuel_consumed: t.fuel_consumed,
            cpu_time_ms: t.cpu_time_ms,
            memory_peak_bytes: t.memory_peak_bytes,
            log_bytes: t.log_bytes,
            outbound_requests: t.outbound_requests,
            module: row.module,
            job_id: row.job_id,
            job: row.job,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct Report {
    /// The window as answered, rounded to whole minutes.
    from: Millis,
    to: Millis,
    /// The column the lines are sorted by, largest first.
    sort: String,
    items: Vec<ReportLine>,
}

/// The columns a report sorts by, largest first (`module`: by name).
const SORT_COLUMNS: [&str; 10] = [
    "fuel",
    "runs",
    "failed",
    "failureRate",
    "cpuTime",
    "p95",
    "memory",
    "outbound",
    "logBytes",
    "module",
];

fn compare(column: &str, a: &ReportLine, b: &ReportLine) -> Ordering {
    let f = |x: f64, y: f64| y.total_cmp(&x);
    let by = match column {
        "runs" => b.runs.cmp(&a.runs),
        "failed" => (b.failed + b.timed_out).cmp(&(a.failed + a.timed_out)),
        "failureRate" => f(a.failure_rate, b.failure_rate),
        "cpuTime" => f(a.cpu_time_ms, b.cpu_time_ms),
        "p95" => f(
            a.duration_ms.p95.unwrap_or(0.0),
            b.duration_ms.p95.unwrap_or(0.0),
        ),
        "memory" => b.memory_peak_bytes.cmp(&a.memory_peak_bytes),
        "outbound" => b.outbound_requests.cmp(&a.outbound_requests),
        "logBytes" => b.log_bytes.cmp(&a.log_bytes),
        "module" => Ordering::Equal,
        _ => b.fuel_consumed.cmp(&a.fuel_consumed),
    };
    by.then_with(|| (&a.module, &a.job_id).cmp(&(&b.module, &b.job_id)))
}

/// The consumption report
///
/// Per module (or per job with `groupBy=job`), what its runs consumed in the window:
/// runs by status, failure rate, fuel, CPU time, duration percentiles, peak memory, log
/// bytes and outbound requests, sorted by `sort` (largest first). `format=csv` gives the
/// same lines as CSV.
#[utoipa::path(
    get,
    path = "/usage/summary",
    tag = TAG,
    operation_id = "getUsageSummary",
    params(
        ("from" = Option<String>, Query, description = "Start: milliseconds since the Unix epoch or RFC 3339 (default: a day before `to`); rounded down to a minute."),
        ("to" = Option<String>, Query, description = "End, exclusive (default: now); rounded up to a minute."),
        ("module" = Option<String>, Query, description = "Only this module."),
        ("jobId" = Option<String>, Query, description = "Only this job."),
        ("groupBy" = Option<String>, Query, description = "`module` (default) or `job`."),
        ("sort" = Option<String>, Query, description = "fuel (default), runs, failed, failureRate, cpuTime, p95, memory, outbound, logBytes or module."),
        ("format" = Option<String>, Query, description = "`json` (default) or `csv`."),
    ),
    responses(
        (status = 200, description = "The report.", content(
            (Report = "application/json"),
            (String = "text/csv"),
        )),
        (status = 400, description = "A malformed or backward `from`/`to`, an unknown `groupBy`, `sort` or `format`, or a `module`/`jobId` that does not exist; `details.field` names it.", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn summary(State(state): State<ApiState>, params: Params) -> Result<Response, ApiError> {
    let bad = |field: &str, message: String| {
        ApiError::field(
            ErrorCode::InvalidField,
            field,
            format!("{field}: {message}"),
        )
    };
    let to = match params.text("to") {
        Some(text) => parse_time("to", text).map_err(|e| bad("to", e.message))?,
        None => now_millis(),
    };
    let from = match params.text("from") {
        Some(text) => parse_time("from", text).map_err(|e| bad("from", e.message))?,
        None => to - DEFAULT_SPAN,
    };
    if from >= to {
        return Err(bad(
            "from",
            format!("must be before `to` ({from} is not before {to})"),
        ));
    }
    let (from, to) = (from - from.rem_euclid(MINUTE), round_up(to, MINUTE));
    let sort = params.text("sort").unwrap_or("fuel");
    if !SORT_COLUMNS.contains(&sort) {
        return Err(bad(
            "sort",
            format!(
                "`{sort}` is not a column; use one of {}",
                SORT_COLUMNS.join(", ")
            ),
        ));
    }
    let csv = match params.text("format") {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(bad(
                "format",
                format!("`{other}` is not a format; use json or csv"),
            ));
        }
    };
    let filter = filter(&params)?;
    let rows = state.services.usage_totals(from, to, &filter).await?;
    let mut items: Vec<ReportLine> = rows.into_iter().map(ReportLine::from).collect();
    items.sort_by(|a, b| compare(sort, a, b));
    if csv {
        return Ok((
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            to_csv(&items),
        )
            .into_response());
    }
    Ok(Json(Report {
        from,
        to,
        sort: sort.to_owned(),
        items,
    })
    .into_response())
}

/// The report as CSV (RFC 4180): a header line, then one line per item.
fn to_csv(items: &[ReportLine]) -> String {
    let mut out = String::from(
        "module,jobId,job,runs,completed,failed,timedOut,cancelled,failureRate,fuelConsumed,\
         cpuTimeMs,durationMsP50,durationMsP95,durationMsP99,durationMsMax,memoryPeakBytes,\
         logBytes,outboundRequests\r\n",
    );
    let number = |v: Option<f64>| v.map_or_else(String::new, |v| format!("{v:.3}"));
    for item in items {
        let _ = write!(
            out,
            "{},{},{},{},{},{},{},{},{:.4},{},{:.3},{},{},{},{},{},{},{}\r\n",
            csv_field(&item.module),
            csv_field(item.job_id.as_deref().unwrap_or("")),
            csv_field(item.job.as_deref().unwrap_or("")),
            item.runs,
            item.completed,
            item.failed,
            item.timed_out,
            item.cancelled,
            item.failure_rate,
            item.fuel_consumed,
            item.cpu_time_ms,
            number(item.duration_ms.p50),
            number(item.duration_ms.p95),
            number(item.duration_ms.p99),
            number(item.duration_ms.max),
            item.memory_peak_bytes,
            item.log_bytes,
            item.outbound_requests,
        );
    }
    out
}

/// A CSV field, quoted when it holds a comma, a quote or a line break. Names cannot
/// start a formula here (module and job names are letters, digits, `-` and `_`), but a
/// leading `=`, `+`, `-` or `@` is quoted with a `'` anyway, as spreadsheets expect.
fn csv_field(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@']) {
        format!("'{text}")
    } else {
        text.to_owned()
    };
    if text.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

/// Outbound requests within one step.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct OutboundPoint {
    t: Millis,
    requests: i64,
    /// Responses by status class.
    #[serde(rename = "responses")]
    responses: ResponseClasses,
    /// Sent, but no response came (connection, timeout, size cap, end of the run).
    errors: i64,
    /// Refused by the module's grant or the address policy; never sent.
    denied: i64,
    bytes_sent: i64,
    bytes_received: i64,
    /// Of the requests sent; within 4.5 %.
    latency_ms: Latency,
}

#[derive(Debug, Serialize, ToSchema)]
struct ResponseClasses {
    #[serde(rename = "2xx")]
    ok: i64,
    #[serde(rename = "3xx")]
    redirect: i64,
    #[serde(rename = "4xx")]
    client_error: i64,
    #[serde(rename = "5xx")]
    server_error: i64,
}

#[derive(Debug, Serialize, ToSchema)]
struct Latency {
    p50: Option<f64>,
    p95: Option<f64>,
}

impl OutboundPoint {
    fn new(t: Millis, tally: &OutboundTally) -> Self {
        Self {
            t,
            requests: tally.requests,
            responses: ResponseClasses {
                ok: tally.responses_2xx,
                redirect: tally.responses_3xx,
                client_error: tally.responses_4xx,
                server_error: tally.responses_5xx,
            },
            errors: tally.errors,
            denied: tally.denied,
            bytes_sent: tally.bytes_sent,
            bytes_received: tally.bytes_received,
            latency_ms: Latency {
                p50: tally.latency.quantile(0.5, f64::INFINITY),
                p95: tally.latency.quantile(0.95, f64::INFINITY),
            },
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
struct OutboundSeriesView {
    module: String,
    host: String,
    points: Vec<OutboundPoint>,
}

#[derive(Debug, Serialize, ToSchema)]
struct OutboundPage {
    from: Millis,
    to: Millis,
    step: String,
    series: Vec<OutboundSeriesView>,
}

/// Outbound requests over time
///
/// One series per module and host it called (the host as the module named it), a point
/// per step: requests, responses by class, errors, denials, bytes each way and latency.
#[utoipa::path(
    get,
    path = "/usage/outbound",
    tag = TAG,
    operation_id = "getOutboundUsage",
    params(
        WindowRequest,
        ("module" = Option<String>, Query, description = "Only this module."),
        ("host" = Option<String>, Query, description = "Only this host."),
    ),
    responses(
        (status = 200, description = "The series.", body = OutboundPage),
        (status = 400, description = "A malformed or backward `from`/`to`, a bad `step`, or a `module` that does not exist; `details.field` names it.", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn outbound(
    State(state): State<ApiState>,
    params: Params,
) -> Result<Json<OutboundPage>, ApiError> {
    let window = params.window()?;
    let filter = UsageFilter {
        by_job: false,
        job_id: None,
        ..filter(&params)?
    };
    let series = state.services.outbound_series(&window, &filter).await?;
    Ok(Json(OutboundPage {
        from: window.from,
        to: window.to,
        step: format_step(window.step),
        series: series
            .into_iter()
            .map(|s| OutboundSeriesView {
                module: s.module,
                host: s.host,
                points: s
                    .points
                    .iter()
                    .map(|(t, tally)| OutboundPoint::new(*t, tally))
                    .collect(),
            })
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_when_they_must_be() {
        assert_eq!(csv_field("data-sync"), "data-sync");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=1+1"), "'=1+1");
    }
}
