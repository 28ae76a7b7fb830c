//! `/api/v1/jobs`: define, list, show, change and delete jobs; trigger them by hand, one
//! run or many.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::header::LOCATION;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ApiState;
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::extract::{ApiJson, IdempotencyKeyHeader, OptionalJson, PageRequest, Params};
use super::openapi;
use crate::domain::{Execution, ExecutionStatus, Job, Page};
use crate::services::{ExecuteRequest, JobDraft, JobPatch, ManualRuns};

/// Set to `true` on the answer to a manual trigger that an earlier request under the
/// same `Idempotency-Key` created (nothing was created now).
const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// What every manual trigger's documentation says about `Idempotency-Key`.
macro_rules! idempotency_key_doc {
    () => {
        "Optional. Makes a retry of this request harmless: the first request under a key \
         records what it created; a request under the same key within 24 hours that asks \
         the same (job and inputs) creates nothing and gets the same answer (the same \
         execution ids, and `Idempotent-Replayed: true`), even while the first is still \
         being carried out. Under a key already used for something else it is refused \
         (`422`). 1 to 255 visible ASCII characters other than `\"` and `\\`, bare or as \
         a quoted string; use a fresh random value (a UUID) per request. Keys are shared \
         by every client of the server."
    };
}

const TAG: &str = "jobs";

/// The longest a client may await a run (`execute?wait=`): an answer within what proxies
/// and HTTP clients commonly tolerate for one request, and a bound on how long one
/// request holds a connection and a watch on the run. A longer run is awaited again with
/// `GET /api/v1/executions/{id}` or by following its log.
const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(5 * 60);

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    openapi::tagged(
        TAG,
        "Job definitions: which job of which module to run, on what schedule or event, \
         with what input and limits; and manual runs.",
    )
    .routes(routes!(create, list))
    .routes(routes!(show, update, delete))
    .routes(routes!(execute))
    .routes(routes!(execute_bulk))
}

/// A job, and what is likely wrong with it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = JobDetail)]
struct JobView {
    #[serde(flatten)]
    job: Job,
    /// What is likely wrong with the job without making it invalid, one sentence each
    /// (an event subscription its input cannot take, or that its own module feeds;
    /// settings its module does not declare). Absent when there is nothing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

impl JobView {
    async fn of(state: &ApiState, job: Job) -> Result<Self, ApiError> {
        let warnings = state.services.job_warnings(&job).await?;
        Ok(Self { job, warnings })
    }
}

/// Define a job
///
/// Without `schedule`, the job runs on the default schedule its module declares for it,
/// and follows it when a new version of the module declares another (`scheduleSource`
/// is `module`); with `"schedule": null` it runs only when triggered. A setting the
/// module declares as required must be given, and one it declares secret must be given
/// as a secret.
#[utoipa::path(
    post,
    path = "/jobs",
    tag = TAG,
    operation_id = "createJob",
    request_body = JobDraft,
    responses(
        (status = 201, description = "Created; `Location` is the job's URL.", body = JobView,
            headers(("location" = String, description = "`/api/v1/jobs/{id}`"))),
        (status = 400, description = "Malformed JSON, or a field that is unknown, missing, of the wrong type or malformed (`details.field`).", body = ErrorBody),
        (status = 409, description = "A job by that name exists.", body = ErrorBody),
        (status = 413, description = "The body is larger than 1 MiB.", body = ErrorBody),
        (status = 415, description = "The body is not declared `application/json`.", body = ErrorBody),
        (status = 422, description = "An unknown module or job, a limit above the server's ceiling, too many or too large settings, a setting the module requires left out or one it declares secret given as plain text, or a secret setting this server cannot store (it has no secret key) (`details.field`, e.g. `config.apiKey`).", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn create(
    State(state): State<ApiState>,
    ApiJson(draft): ApiJson<JobDraft>,
) -> Result<impl IntoResponse, ApiError> {
    let job = state.services.create_job(draft).await?;
    let location = format!("/api/v1/jobs/{}", job.id);
    Ok((
        StatusCode::CREATED,
        [(LOCATION, location)],
        Json(JobView::of(&state, job).await?),
    ))
}

/// List jobs
///
/// Oldest first.
#[utoipa::path(
    get,
    path = "/jobs",
    tag = TAG,
    operation_id = "listJobs",
    params(PageRequest),
    responses(
        (status = 200, description = "A page of jobs.", body = Page<Job>),
        (status = 400, description = "A malformed `cursor` or `limit`.", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn list(State(state): State<ApiState>, params: Params) -> Result<Json<Page<Job>>, ApiError> {
    let page = params.page()?;
    let jobs = state
        .services
        .list_jobs(page.cursor.as_deref(), page.limit)
        .await?;
    Ok(Json(jobs))
}

/// Show a job
#[utoipa::path(
    get,
    path = "/jobs/{id}",
    tag = TAG,
    operation_id = "getJob",
    params(("id" = String, Path, description = "The job's id.")),
    responses(
        (status = 200, description = "The job.", body = JobView),
        (status = 404, description = "No job with that id.", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn show(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let job = state.services.get_job(&id).await?;
    Ok(Json(JobView::of(&state, job).await?))
}

/// Change a job
///
/// Fields left out stay as they are; `null` clears an optional one. The module cannot
/// change; the job within it can. `config` replaces every setting, except that
/// `{"secret": "***"}` keeps the secret stored under its name: a job read with `GET` can be
/// edited and sent back.
#[utoipa::path(
    patch,
    path = "/jobs/{id}",
    tag = TAG,
    operation_id = "updateJob",
    params(("id" = String, Path, description = "The job's id.")),
    request_body = JobPatch,
    responses(
        (status = 200, description = "The job, changed.", body = JobView),
        (status = 400, description = "Malformed JSON, or a field that is unknown, of the wrong type or malformed (`details.field`).", body = ErrorBody),
        (status = 404, description = "No job with that id.", body = ErrorBody),
        (status = 409, description = "Another job has that name.", body = ErrorBody),
        (status = 413, description = "The body is larger than 1 MiB.", body = ErrorBody),
        (status = 415, description = "The body is not declared `application/json`.", body = ErrorBody),
        (status = 422, description = "An unknown job, a limit above the server's ceiling, too many or too large settings, a setting the module requires left out or one it declares secret given as plain text (checked when the settings or the job change, or the job is enabled), a secret setting this server cannot store (it has no secret key), or `{\"secret\": \"***\"}` for a setting with no stored secret (`details.field`, e.g. `config.apiKey`).", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn update(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<JobPatch>,
) -> Result<Json<JobView>, ApiError> {
    let job = state.services.update_job(&id, patch).await?;
    Ok(Json(JobView::of(&state, job).await?))
}

/// Delete a job
///
/// Its executions stay listed.
#[utoipa::path(
    delete,
    path = "/jobs/{id}",
    tag = TAG,
    operation_id = "deleteJob",
    params(("id" = String, Path, description = "The job's id.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "No job with that id.", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn delete(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.services.delete_job(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// What a manual trigger answers: the execution to watch.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct Queued {
    execution_id: String,
    /// `RUNNING` when the node that took the request had a free worker and started the
    /// run at once; `QUEUED` when it waits for a worker of any node.
    status: ExecutionStatus,
}

/// What `202` carries: without `wait`, the execution to watch; with `wait`, the execution
/// as it stood when the wait ended.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
#[expect(
    dead_code,
    reason = "describes the 202 answers in the OpenAPI document; never built"
)]
enum ExecuteAccepted {
    Queued(Queued),
    Waited(Box<Execution>),
}

/// Run a job now
///
/// Creates one manual run: started at once when the node that takes the request has a
/// free worker, queued for any node's worker otherwise. The body is optional: without
/// one (or without `input`), the run gets the job's stored input.
///
/// With `wait`, the answer waits for the run to end, on whichever node it runs: `200`
/// with the final execution (as `GET /api/v1/executions/{id}` shows it, whether it
/// completed or failed), or, if the wait ends first, `202` with the execution as it
/// stands then (`QUEUED` or `RUNNING`; await it further with `GET` or by following its
/// log). A run that fails and is retried ends as `FAILED`; its retry is another
/// execution.
#[utoipa::path(
    post,
    path = "/jobs/{id}/execute",
    tag = TAG,
    operation_id = "executeJob",
    params(
        ("id" = String, Path, description = "The job's id."),
        ("wait" = Option<String>, Query, description = "Optional. How long to wait for the run to end before answering: a duration with its unit (`500ms`, `30s`, `2m`), at most `5m`."),
        ("Idempotency-Key" = Option<String>, Header, description = idempotency_key_doc!()),
    ),
    request_body(content = Option<ExecuteRequest>, description = "Optional."),
    responses(
        (status = 200, description = "With `wait`: the run ended within it; the final execution.", body = Execution,
            headers(
                ("location" = String, description = "`/api/v1/executions/{id}`"),
                ("idempotent-replayed" = String, description = "`true` when an earlier request under the same `Idempotency-Key` created the run; absent otherwise."),
            )),
        (status = 202, description = "Without `wait`: started or queued (`{executionId, status}`). With `wait`: the wait ended before the run did; the execution as it stands (`QUEUED` or `RUNNING`). `Location` is the execution's URL. For a retry under an `Idempotency-Key`, what the first request created.", body = ExecuteAccepted,
            headers(
                ("location" = String, description = "`/api/v1/executions/{executionId}`"),
                ("idempotent-replayed" = String, description = "`true` when an earlier request under the same `Idempotency-Key` created the run; absent otherwise."),
            )),
        (status = 400, description = "Malformed JSON, an unknown field, a `wait` that is not a duration, or a malformed `Idempotency-Key` (`details.field`).", body = ErrorBody),
        (status = 404, description = "No job with that id.", body = ErrorBody),
        (status = 409, description = "The job or its module is disabled, or the module is gone.", body = ErrorBody),
        (status = 413, description = "The body is larger than 1 MiB.", body = ErrorBody),
        (status = 415, description = "A body not declared `application/json`.", body = ErrorBody),
        (status = 422, description = "A `wait` longer than `5m`, or an `Idempotency-Key` used for a request with another job or input in the last 24 hours (`details.field`).", body = ErrorBody),
        (status = 503, description = "The database or the queue is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn execute(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    params: Params,
    IdempotencyKeyHeader(key): IdempotencyKeyHeader,
    OptionalJson(request): OptionalJson<ExecuteRequest>,
) -> Result<Response, ApiError> {
    // Read before the run is created: a bad `wait` must not leave a run behind.
    let wait = wait_param(&params)?;
    let runs = state
        .services
        .execute_job(&id, request.unwrap_or_default(), key.as_deref())
        .await?;
    let mut headers = replay_headers(&runs);
    let execution_id = runs.ids.into_iter().next().unwrap_or_default();
    let location = format!("/api/v1/executions/{execution_id}");
    if let Ok(location) = HeaderValue::from_str(&location) {
        headers.insert(LOCATION, location);
    }
    let Some(wait) = wait else {
        let queued = Queued {
            execution_id,
            status: runs.status,
        };
        return Ok((StatusCode::ACCEPTED, headers, Json(queued)).into_response());
    };
    let execution = state
        .services
        .await_execution(&execution_id, wait, state.readiness.shutdown_started())
        .await?;
    let status = if execution.status.is_final() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, headers, Json(execution)).into_response())
}

/// `wait`, if given: a duration with its unit, at most [`MAX_WAIT`].
fn wait_param(params: &Params) -> Result<Option<std::time::Duration>, ApiError> {
    let Some(text) = params.text("wait") else {
        return Ok(None);
    };
    let wait = humantime::parse_duration(text).map_err(|err| {
        ApiError::field(
            ErrorCode::InvalidField,
            "wait",
            format!(
                "wait: `{text}` is not a duration ({err}); write one with its unit, as in `500ms`, `30s` or `2m`"
            ),
        )
    })?;
    if wait > MAX_WAIT {
        let max = humantime::format_duration(MAX_WAIT);
        return Err(ApiError::field(
            ErrorCode::Unprocessable,
            "wait",
            format!(
                "wait: `{text}` is longer than the longest wait, {max}; wait at most {max}, then await the execution further with GET /api/v1/executions/{{id}}"
            ),
        )
        .with_detail("maxMs", MAX_WAIT.as_millis() as u64));
    }
    Ok(Some(wait))
}

/// `Idempotent-Replayed: true` for runs an earlier request created.
fn replay_headers(runs: &ManualRuns) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if runs.replayed {
        headers.insert(
            HeaderName::from_static(IDEMPOTENT_REPLAYED),
            HeaderValue::from_static("true"),
        );
    }
    headers
}

/// Many manual runs at once: one per element of `inputs` (`null` uses the job's stored
/// input), or `count` runs with the stored input. Exactly one of the two.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct BulkRequest {
    /// One run per element; `null` elements get the job's stored input.
    #[serde(default)]
    inputs: Option<Vec<Option<serde_json::Value>>>,
    /// This many runs with the job's stored input.
    #[serde(default)]
    #[schema(minimum = 1)]
    count: Option<usize>,
}

/// What a bulk trigger answers: the executions, in the order of `inputs`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct BulkQueued {
    execution_ids: Vec<String>,
    count: usize,
    /// `RUNNING` when the node that took the request had a free worker for every run and
    /// started them at once; `QUEUED` when they wait for workers of any node.
    status: ExecutionStatus,
}

/// Run a job many times
///
/// Creates many manual runs in one transaction: all or none. They start at once when
/// the node that takes the request has a free worker for each; otherwise they are
/// queued for any node's workers.
#[utoipa::path(
    post,
    path = "/jobs/{id}/execute-bulk",
    tag = TAG,
    operation_id = "executeJobBulk",
    params(
        ("id" = String, Path, description = "The job's id."),
        ("Idempotency-Key" = Option<String>, Header, description = idempotency_key_doc!()),
    ),
    request_body = BulkRequest,
    responses(
        (status = 202, description = "Started or queued (`status`). For a retry under an `Idempotency-Key`, what the first request created.", body = BulkQueued,
            headers(("idempotent-replayed" = String, description = "`true` when an earlier request under the same `Idempotency-Key` created the runs; absent otherwise."))),
        (status = 400, description = "Malformed JSON, an unknown field, both or neither of `inputs` and `count`, or a malformed `Idempotency-Key` (`details.field`).", body = ErrorBody),
        (status = 404, description = "No job with that id.", body = ErrorBody),
        (status = 409, description = "The job or its module is disabled, or the module is gone.", body = ErrorBody),
        (status = 413, description = "The body is larger than 1 MiB.", body = ErrorBody),
        (status = 415, description = "The body is not declared `application/json`.", body = ErrorBody),
        (status = 422, description = "More runs than the server accepts at once, or none; or the `Idempotency-Key` was used for a request with another job or inputs in the last 24 hours (`details.field`).", body = ErrorBody),
        (status = 503, description = "The database or the queue is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn execute_bulk(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    IdempotencyKeyHeader(key): IdempotencyKeyHeader,
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
    let runs = state
        .services
        .execute_job_bulk(&id, inputs, key.as_deref())
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        replay_headers(&runs),
        Json(BulkQueued {
            count: runs.ids.len(),
            execution_ids: runs.ids,
            status: runs.status,
        }),
    ))
}
