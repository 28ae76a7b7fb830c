//! `/api/v1/executions`: list (by job and status), show, read logs (a page, or followed
//! live as server-sent events) and cancel.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;

use super::ApiState;
use super::error::{ApiError, ErrorCode};
use super::extract::Params;
use super::follow;
use crate::domain::{Execution, ExecutionStatus, LogEntry, LogLevel, Page};
use crate::store::ExecutionFilter;

/// Log lines per page when the client gives no `limit`: a whole run of a chatty job.
const DEFAULT_LOG_PAGE: u32 = 1_000;
/// Most log lines per page: the runtime keeps at most 10,000 per run by default.
const MAX_LOG_PAGE: u32 = 10_000;

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/executions", get(list))
        .route("/executions/{id}", get(show))
        .route("/executions/{id}/logs", get(logs))
        .route("/executions/{id}/cancel", post(cancel))
}

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

async fn show(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Execution>, ApiError> {
    Ok(Json(state.services.get_execution(&id).await?))
}

/// One log line as clients see it; `ts` is milliseconds since the Unix epoch.
#[derive(Debug, Clone, Serialize)]
pub(super) struct LogLine {
    pub seq: u32,
    pub ts: u64,
    pub level: LogLevel,
    pub message: String,
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
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct LogPage {
    items: Vec<LogLine>,
    next_after: Option<u32>,
}

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

async fn cancel(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Execution>, ApiError> {
    Ok(Json(state.services.cancel_execution(&id).await?))
}
