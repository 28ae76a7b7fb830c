//! `/api/v1/events`: publish an event (every enabled job subscribed to its topic gets an
//! execution with the event as its input) and read the event log.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ApiState;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, PageRequest, Params};
use super::openapi;
use crate::domain::{Event, EventRefusal, Page};
use crate::services::PublishEvent;

const TAG: &str = "events";

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    openapi::tagged(
        TAG,
        "The event bus: events posted here or published by modules, and the jobs they trigger.",
    )
    .routes(routes!(publish, list))
}

/// What publishing answers: the event and the runs it queued.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct Published {
    event_id: String,
    /// The executions the event queued, one per matching job it started.
    triggered_executions: Vec<String>,
    /// The matching jobs it did not start, and why (over a job's rate of event
    /// triggers); also listed with the event.
    refused: Vec<EventRefusal>,
}

/// Publish an event
///
/// Records the event and queues one run of every enabled job whose `onEvent` matches its
/// topic, with the event as the run's input: `{"id", "topic", "source", "createdAt",
/// "payload"}`. Events start each job at most `--event-triggers-per-minute` times a minute
/// (per node); past it, `refused` says which jobs the event did not start.
#[utoipa::path(
    post,
    path = "/events",
    tag = TAG,
    operation_id = "publishEvent",
    request_body = PublishEvent,
    responses(
        (status = 202, description = "Recorded; the triggered runs are queued.", body = Published),
        (status = 400, description = "Malformed JSON, an unknown or missing field, or a malformed topic (`details.field`).", body = ErrorBody),
        (status = 413, description = "The body is larger than 1 MiB.", body = ErrorBody),
        (status = 415, description = "The body is not declared `application/json`.", body = ErrorBody),
        (status = 422, description = "The payload is too large (`details.field`).", body = ErrorBody),
        (status = 503, description = "The database or the queue is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn publish(
    State(state): State<ApiState>,
    ApiJson(request): ApiJson<PublishEvent>,
) -> Result<(StatusCode, Json<Published>), ApiError> {
    let (event, triggered_executions) = state.services.publish_event(request).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Published {
            event_id: event.id,
            triggered_executions,
            refused: event.refused,
        }),
    ))
}

/// List events
///
/// Newest first, optionally only those of one topic.
#[utoipa::path(
    get,
    path = "/events",
    tag = TAG,
    operation_id = "listEvents",
    params(
        ("topic" = Option<String>, Query, description = "Only events on this topic."),
        PageRequest,
    ),
    responses(
        (status = 200, description = "A page of events.", body = Page<Event>),
        (status = 400, description = "A malformed `cursor` or `limit`.", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn list(
    State(state): State<ApiState>,
    params: Params,
) -> Result<Json<Page<Event>>, ApiError> {
    let page = params.page()?;
    let events = state
        .services
        .list_events(params.text("topic"), page.cursor.as_deref(), page.limit)
        .await?;
    Ok(Json(events))
}
