//! `/api/v1/endpoints`: endpoint monitors — define, list, show (with uptime, the last
//! check and what Runcell's modules ask of the endpoint's host), change and delete them,
//! and read their checks. Changes are recorded in the audit trail, naming headers but
//! never their values.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::header::LOCATION;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ApiState;
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::extract::{ApiJson, PageRequest, Params};
use super::openapi;
use crate::domain::endpoint::{Endpoint, EndpointCheck};
use crate::domain::window::parse_time;
use crate::domain::{Millis, Page, Principal};
use crate::services::endpoints::{
    EndpointDraft, EndpointHealth, EndpointPatch, HostConsumption, UPTIME_WINDOWS,
};

const TAG: &str = "endpoints";

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    openapi::tagged(
        TAG,
        "Endpoint monitors: HTTP endpoints the server itself checks on an interval (one node \
         of a deployment at a time, each interval once), with conditions on the answer, \
         uptime, and what Runcell's own modules ask of the endpoint's host.\n\n\
         A condition is `subject operator value`. Subjects: `status`, `latencyMs`, \
         `certificate.expiresInDays` (https only), `body` (the text; `contains`, `==`, `!=`) \
         and `body.key[0].key` (a value in a JSON body). Operators: `== != < <= > >=` and \
         `contains`. Values: numbers, \"strings\", `true`, `false`. Every condition must \
         hold for a check to be up; none means `status < 400`. Redirects are not followed: \
         a 3xx is the answer. Checks obey the server's outbound address policy, like \
         modules' requests: a refused address is a check recorded down with the reason.",
    )
    .routes(routes!(create, list))
    .routes(routes!(show, update, delete))
    .routes(routes!(checks))
}

/// Uptime over the last 24 hours, 7 days and 30 days: percent of checks up, `null`
/// without checks.
#[derive(Debug, Serialize, ToSchema)]
struct Uptime {
    #[serde(rename = "24h")]
    day: Option<f64>,
    #[serde(rename = "7d")]
    week: Option<f64>,
    #[serde(rename = "30d")]
    month: Option<f64>,
}

/// An endpoint monitor with its health.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = EndpointDetail)]
struct EndpointView {
    #[serde(flatten)]
    endpoint: Endpoint,
    uptime: Uptime,
    /// The newest check; `null` before the first.
    last_check: Option<EndpointCheck>,
    /// Each module that called the endpoint's host over the last 24 hours (from the
    /// outbound usage rollups, by hour).
    consumption: Vec<HostConsumption>,
}

impl EndpointView {
    async fn of(state: &ApiState, endpoint: Endpoint) -> Result<Self, ApiError> {
        let EndpointHealth {
            uptime: [day, week, month],
            last_check,
            consumption,
        } = state.services.endpoint_health(&endpoint).await?;
        debug_assert_eq!(UPTIME_WINDOWS.len(), 3);
        Ok(Self {
            endpoint,
            uptime: Uptime { day, week, month },
            last_check,
            consumption,
        })
    }
}

/// What the audit trail keeps of an endpoint: what it checks, header names only.
fn audited(endpoint: &Endpoint) -> serde_json::Value {
    let headers: Vec<&str> = endpoint.headers.iter().map(|(name, _)| name).collect();
    json!({
        "id": endpoint.id,
        "url": endpoint.url,
        "method": endpoint.method,
        "headers": headers,
        "intervalSeconds": endpoint.interval_seconds,
        "conditions": endpoint.conditions,
        "enabled": endpoint.enabled,
    })
}

/// Define an endpoint monitor
///
/// The first check is due at once (when enabled).
#[utoipa::path(
    post,
    path = "/endpoints",
    tag = TAG,
    operation_id = "createEndpoint",
    request_body = EndpointDraft,
    responses(
        (status = 201, description = "Created; `Location` is the endpoint's URL.", body = EndpointView,
            headers(("location" = String, description = "`/api/v1/endpoints/{id}`"))),
        (status = 400, description = "Malformed JSON, or a field that is unknown, missing, of the wrong type or malformed: a bad name, a URL that is not http(s), an unknown method, a bad header name or value (`details.field`).", body = ErrorBody),
        (status = 409, description = "An endpoint by that name exists.", body = ErrorBody),
        (status = 413, description = "The body is larger than 1 MiB.", body = ErrorBody),
        (status = 415, description = "The body is not declared `application/json`.", body = ErrorBody),
        (status = 422, description = "A condition that does not parse (`details.field` `conditions[i]`, the message names the column), an interval below the server's minimum or above a day, a timeout above 60,000 ms, credentials in the URL, a header the connection owns (`host`, ...), or a secret header this server cannot store (`details.field`).", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn create(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    ApiJson(draft): ApiJson<EndpointDraft>,
) -> Result<impl IntoResponse, ApiError> {
    let endpoint = state.services.create_endpoint(draft).await?;
    state
        .auth
        .audit(
            &principal.actor(),
            "endpoint.create",
            &endpoint.name,
            audited(&endpoint),
        )
        .await;
    let location = format!("/api/v1/endpoints/{}", endpoint.id);
    Ok((
        StatusCode::CREATED,
        [(LOCATION, location)],
        Json(EndpointView::of(&state, endpoint).await?),
    ))
}

/// List endpoint monitors
///
/// Oldest first; definitions only (`GET /endpoints/{id}` adds health).
#[utoipa::path(
    get,
    path = "/endpoints",
    tag = TAG,
    operation_id = "listEndpoints",
    params(PageRequest),
    responses(
        (status = 200, description = "A page of endpoints.", body = Page<Endpoint>),
        (status = 400, description = "A malformed `cursor` or `limit`.", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn list(
    State(state): State<ApiState>,
    params: Params,
) -> Result<Json<Page<Endpoint>>, ApiError> {
    let page = params.page()?;
    Ok(Json(
        state
            .services
            .list_endpoints(page.cursor.as_deref(), page.limit)
            .await?,
    ))
}

/// Show an endpoint monitor
///
/// With its uptime over the last 24 hours, 7 days and 30 days, its last check, and each
/// module's requests to its host over the last 24 hours.
#[utoipa::path(
    get,
    path = "/endpoints/{id}",
    tag = TAG,
    operation_id = "getEndpoint",
    params(("id" = String, Path, description = "The endpoint's id.")),
    responses(
        (status = 200, description = "The endpoint.", body = EndpointView),
        (status = 404, description = "No endpoint with that id.", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn show(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<EndpointView>, ApiError> {
    let endpoint = state.services.get_endpoint(&id).await?;
    Ok(Json(EndpointView::of(&state, endpoint).await?))
}

/// Change an endpoint monitor
///
/// Fields left out stay as they are; `body: null` removes the body. `headers` replaces
/// every header, except that `{"secret": "***"}` keeps the secret stored under its name.
/// A change to what is checked, or enabling it, makes the next check due at once.
#[utoipa::path(
    patch,
    path = "/endpoints/{id}",
    tag = TAG,
    operation_id = "updateEndpoint",
    params(("id" = String, Path, description = "The endpoint's id.")),
    request_body = EndpointPatch,
    responses(
        (status = 200, description = "The endpoint, changed.", body = EndpointView),
        (status = 400, description = "Malformed JSON, or a field that is unknown, of the wrong type or malformed (`details.field`).", body = ErrorBody),
        (status = 404, description = "No endpoint with that id.", body = ErrorBody),
        (status = 409, description = "Another endpoint has that name.", body = ErrorBody),
        (status = 413, description = "The body is larger than 1 MiB.", body = ErrorBody),
        (status = 415, description = "The body is not declared `application/json`.", body = ErrorBody),
        (status = 422, description = "As for creating one, or `{\"secret\": \"***\"}` for a header with no stored secret (`details.field`).", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn update(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<EndpointPatch>,
) -> Result<Json<EndpointView>, ApiError> {
    let endpoint = state.services.update_endpoint(&id, patch).await?;
    state
        .auth
        .audit(
            &principal.actor(),
            "endpoint.update",
            &endpoint.name,
            audited(&endpoint),
        )
        .await;
    Ok(Json(EndpointView::of(&state, endpoint).await?))
}

/// Delete an endpoint monitor
///
/// Its checks go with it.
#[utoipa::path(
    delete,
    path = "/endpoints/{id}",
    tag = TAG,
    operation_id = "deleteEndpoint",
    params(("id" = String, Path, description = "The endpoint's id.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "No endpoint with that id.", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn delete(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let endpoint = state.services.delete_endpoint(&id).await?;
    state
        .auth
        .audit(
            &principal.actor(),
            "endpoint.delete",
            &endpoint.name,
            json!({"id": endpoint.id}),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// An endpoint's checks
///
/// Newest first, by the time each was due; one per interval.
#[utoipa::path(
    get,
    path = "/endpoints/{id}/checks",
    tag = TAG,
    operation_id = "listEndpointChecks",
    params(
        ("id" = String, Path, description = "The endpoint's id."),
        ("from" = Option<String>, Query, description = "Only checks due at or after this: milliseconds since the Unix epoch or RFC 3339 (default: the oldest kept)."),
        ("to" = Option<String>, Query, description = "Only checks due before this (default: now and later)."),
        PageRequest,
    ),
    responses(
        (status = 200, description = "A page of checks.", body = Page<EndpointCheck>),
        (status = 400, description = "A malformed or backward `from`/`to`, or a malformed `cursor` or `limit` (`details.field`).", body = ErrorBody),
        (status = 404, description = "No endpoint with that id.", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn checks(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    params: Params,
) -> Result<Json<Page<EndpointCheck>>, ApiError> {
    let time = |name: &'static str, default: Millis| -> Result<Millis, ApiError> {
        match params.text(name) {
            Some(text) => parse_time(name, text)
                .map_err(|err| ApiError::field(ErrorCode::InvalidField, name, err.to_string())),
            None => Ok(default),
        }
    };
    let from = time("from", 0)?;
    let to = time("to", Millis::MAX)?;
    if from >= to {
        return Err(ApiError::field(
            ErrorCode::InvalidField,
            "from",
            format!("from: must be before `to` ({from} is not before {to})"),
        ));
    }
    let page = params.page()?;
    Ok(Json(
        state
            .services
            .endpoint_checks(&id, from, to, page.cursor.as_deref(), page.limit)
            .await?,
    ))
}
