//! `/api/v1/executions`: list (by job and status), show, read logs (a page, or followed
//! live as server-sent events) and cancel.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ApiState;
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::extract::{PageRequest, Params};
use super::{follow, openapi};
use crate::domain::{Execution, ExecutionStatus, LogEntry, LogLevel, Page};
use crate::store::ExecutionFilter;

const TAG: &str = "executions";

/// Log lines per page when the client gives no `limit`: a whole run of a chatty job.
const DEFAULT_LOG_PAGE: u32 = 1_000;
/// Most log lines per page: the runtime keeps at most 10,000 per run by default.
const MAX_LOG_PAGE: u32 = 10_000;

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    openapi::tagged(
        TAG,
        "Runs of jobs, whatever triggered them: their status, result, resource use and logs.",
    )
    .routes(routes!(list))
    .routes(routes!(show))
    .routes(routes!(logs))
    .routes(routes!(cancel))
}

/// List executions
///
/// Newest first, optionally only those of one job and in one status.
#[utoipa::path(
    get,
    path = "/executions",
    tag = TAG,
    operation_id = "listExecutions",
    params(
        ("jobId" = Option<String>, Query, description = "Only this job's executions."),
        ("status" = Option<ExecutionStatus>, Query, description = "Only executions in this status (any letter case)."),
        PageRequest,
    ),
    responses(
        (status = 200, description = "A page of executions.", body = Page<Execution>),
        (status = 400, description = "An unknown `status` (`details.allowed` lists the statuses), or a malformed `cursor` or `limit`.", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn list(
    State(state): State<ApiState>,
    params: Params,
) -> Result<Json<Page<Execution>>, ApiError> {
    let page = params.page()?;
    let status = params.text("status").map(parse_status).transpose()?;
    let filter = ExecutionFilter {
        job_id: params.text("jobId").map(str::to_owned),
        status,
    };
    let executions = state
        .services
        .list_executions(&filter, page.cursor.as_deref(), page.limit)
        .await?;
    Ok(Json(executions))
}

fn parse_status(text: &str) -> Result<ExecutionStatus, ApiError> {
    ExecutionStatus::parse(&text.to_ascii_uppercase()).ok_or_else(|| {
        let allowed: Vec<&str> = ExecutionStatus::ALL.iter().map(|s| s.as_str()).collect();
        ApiError::field(
            ErrorCode::InvalidField,
            "status",
            format!(
                "status: `{text}` is not an execution status; use one of {}",
                allowed.join(", ")
            ),
        )
        .with_detail("allowed", allowed)
    })
}

/// Show an execution
#[utoipa::path(
    get,
    path = "/executions/{id}",
    tag = TAG,
    operation_id = "getExecution",
    params(("id" = String, Path, description = "The execution's id.")),
    responses(
        (status = 200, description = "The execution.", body = Execution),
        (status = 404, description = "No execution with that id.", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn show(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Execution>, ApiError> {
    Ok(Json(state.services.get_execution(&id).await?))
}

/// One log line as clients see it; `ts` is milliseconds since the Unix epoch.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(super) struct LogLine {
    /// Position in the execution's log, from 0, without gaps.
    pub seq: u32,
    /// Milliseconds since the Unix epoch.
    pub ts: u64,
    pub level: LogLevel,
    pub message: String,
    /// Structured fields; captured stdout/stderr lines carry `stream`.
    pub fields: serde_json::Map<String, serde_json::Value>,
}

impl From<LogEntry> for LogLine {
    fn from(entry: LogEntry) -> Self {
        Self {
            seq: entry.seq,
            ts: entry.ts_ms,
            level: entry.level,
            message: entry.message,
            fields: entry.fields,
        }
    }
}

/// A page of log lines; pass `nextAfter` as `after` for the next page (`null`: no more
/// lines now).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct LogPage {
    items: Vec<LogLine>,
    /// Pass as `after` for the next page; `null`: no more lines now.
    next_after: Option<u32>,
}

/// Read an execution's log
///
/// A page of lines in order, or with `follow=true` the whole log as server-sent events,
/// live while the execution runs: each line is an event `log` (its `id` is the line's
/// `seq`, its data the line as JSON); when the execution has ended, one event `end` (data
/// `{"status": ...}`) and the stream closes. A reconnecting client resumes after its
/// `Last-Event-ID`. If the server cannot read the execution, an event `error` ends the
/// stream.
#[utoipa::path(
    get,
    path = "/executions/{id}/logs",
    tag = TAG,
    operation_id = "getExecutionLogs",
    params(
        ("id" = String, Path, description = "The execution's id."),
        ("after" = Option<u32>, Query, description = "Only lines after this `seq`."),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 10000, description = "Lines per page, 1 to 10000 (default 1000); ignored when following."),
        ("follow" = Option<bool>, Query, description = "Stream the log as server-sent events (default `false`)."),
        ("last-event-id" = Option<String>, Header, nullable = false, description = "When following: resume after this `seq` (sent by reconnecting `EventSource`s)."),
    ),
    responses(
        (status = 200, description = "A page of lines, or (`follow=true`) an event stream.", content(
            (LogPage = "application/json"),
            (String = "text/event-stream"),
        )),
        (status = 400, description = "A malformed `after`, `limit` or `follow`.", body = ErrorBody),
        (status = 404, description = "No execution with that id.", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn logs(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, ApiError> {
    let mut after = params.number::<u32>("after")?;
    if params.flag("follow")? {
        // A reconnecting EventSource resumes after the last line it saw.
        if let Some(last) = headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u32>().ok())
        {
            after = Some(after.map_or(last, |a| a.max(last)));
        }
        return follow::follow(state.services, &state.readiness, id, after).await;
    }
    let limit = params.limit(DEFAULT_LOG_PAGE, MAX_LOG_PAGE)?;
    let entries = state.services.execution_logs(&id, after, limit).await?;
    let next_after = (entries.len() == limit as usize)
        .then(|| entries.last().map(|e| e.seq))
        .flatten();
    Ok(Json(LogPage {
        items: entries.into_iter().map(LogLine::from).collect(),
        next_after,
    })
    .into_response())
}

/// Cancel an execution
///
/// A queued execution ends `CANCELLED` at once and never starts; a running one is
/// interrupted and ends `CANCELLED` shortly after (the answer may still say `RUNNING`,
/// with `cancelRequested`).
#[utoipa::path(
    post,
    path = "/executions/{id}/cancel",
    tag = TAG,
    operation_id = "cancelExecution",
    params(("id" = String, Path, description = "The execution's id.")),
    responses(
        (status = 200, description = "The execution as it stands after the request.", body = Execution),
        (status = 404, description = "No execution with that id.", body = ErrorBody),
        (status = 409, description = "The execution has already ended.", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn cancel(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Execution>, ApiError> {
    Ok(Json(state.services.cancel_execution(&id).await?))
}
