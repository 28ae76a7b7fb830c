//! `/api/v1/jobs`: define, list, show, change and delete jobs; trigger them by hand, one
//! run or many.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::header::LOCATION;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::ApiState;
use super::error::{ApiError, ErrorCode};
use super::extract::{ApiJson, OptionalJson, Params};
use crate::domain::{ExecutionStatus, Job, Page};
use crate::services::{ExecuteRequest, JobDraft, JobPatch};

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/jobs", post(create).get(list))
        .route("/jobs/{id}", get(show).patch(update).delete(delete))
        .route("/jobs/{id}/execute", post(execute))
        .route("/jobs/{id}/execute-bulk", post(execute_bulk))
}

async fn create(
    State(state): State<ApiState>,
    ApiJson(draft): ApiJson<JobDraft>,
) -> Result<impl IntoResponse, ApiError> {
    let job = state.services.create_job(draft).await?;
    let location = format!("/api/v1/jobs/{}", job.id);
    Ok((StatusCode::CREATED, [(LOCATION, location)], Json(job)))
}

async fn list(State(state): State<ApiState>, params: Params) -> Result<Json<Page<Job>>, ApiError> {
    let page = params.page()?;
    let jobs = state
        .services
        .list_jobs(page.cursor.as_deref(), page.limit)
        .await?;
    Ok(Json(jobs))
}

async fn show(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    Ok(Json(state.services.get_job(&id).await?))
}

async fn update(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<JobPatch>,
) -> Result<Json<Job>, ApiError> {
    Ok(Json(state.services.update_job(&id, patch).await?))
}

async fn delete(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.services.delete_job(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// What a manual trigger answers: the execution to watch.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Queued {
    execution_id: String,
    status: ExecutionStatus,
}

async fn execute(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    OptionalJson(request): OptionalJson<ExecuteRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let execution_id = state
        .services
        .execute_job(&id, request.unwrap_or_default())
        .await?;
    let location = format!("/api/v1/executions/{execution_id}");
    Ok((
        StatusCode::ACCEPTED,
        [(LOCATION, location)],
        Json(Queued {
            execution_id,
            status: ExecutionStatus::Queued,
        }),
    ))
}

/// Many manual runs at once: one per element of `inputs` (`null` uses the job's stored
/// input), or `count` runs with the stored input.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkRequest {
    #[serde(default)]
    inputs: Option<Vec<Option<serde_json::Value>>>,
    #[serde(default)]
    count: Option<usize>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct BulkQueued {
    execution_ids: Vec<String>,
    count: usize,
}

async fn execute_bulk(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<BulkRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let max = state.services.settings.max_bulk;
    let inputs = match (request.inputs, request.count) {
        (Some(inputs), None) => inputs,
        (None, Some(count)) if (1..=max).contains(&count) => vec![None; count],
        (None, Some(_)) => {
            return Err(ApiError::field(
                ErrorCode::Unprocessable,
                "count",
                format!("count: must be between 1 and {max}"),
            ));
        }
        (Some(_), Some(_)) | (None, None) => {
            return Err(ApiError::field(
                ErrorCode::InvalidField,
                "inputs",
                "inputs: give either `inputs` (one run per element) or `count` (that many runs with the job's stored input): exactly one of them",
            ));
        }
    };
    let execution_ids = state.services.execute_job_bulk(&id, inputs).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(BulkQueued {
            count: execution_ids.len(),
            execution_ids,
        }),
    ))
}
