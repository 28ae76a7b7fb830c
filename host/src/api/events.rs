//! `/api/v1/events`: publish an event (every enabled job subscribed to its topic gets an
//! execution with the event as its input) and read the event log.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::Serialize;

use super::ApiState;
use super::error::ApiError;
use super::extract::{ApiJson, Params};
use crate::domain::{Event, Page};
use crate::services::PublishEvent;

pub(super) fn routes() -> Router<ApiState> {
    Router::new().route("/events", post(publish).get(list))
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Published {
    event_id: String,
    /// The executions the event queued, one per matching job.
    triggered_executions: Vec<String>,
}

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
        }),
    ))
}

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
