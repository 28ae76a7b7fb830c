//! `/healthz` (the process answers) and `/readyz` (it can take work: the database answers
//! and the workers run). Neither needs authentication; neither says more than what is down.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::ApiState;
use super::error::{ApiError, ErrorCode};

/// How long `/readyz` waits for the database: probes have short timeouts of their own.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub(super) async fn readyz(State(state): State<ApiState>) -> Response {
    let database = match tokio::time::timeout(PING_TIMEOUT, state.services.store.ping()).await {
        Ok(Ok(())) => "ok",
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "readiness: the database is unreachable");
            "unreachable"
        }
        Err(_) => {
            tracing::warn!(timeout = ?PING_TIMEOUT, "readiness: the database did not answer in time");
            "timeout"
        }
    };
    let workers = if state.readiness.workers_running() {
        "running"
    } else {
        "stopped"
    };
    let checks = json!({"database": database, "workers": workers});
    let mut down = Vec::new();
    if database != "ok" {
        down.push(format!("database {database}"));
    }
    if workers != "running" {
        down.push("workers not running".to_owned());
    }
    if down.is_empty() {
        return Json(json!({"status": "ready", "checks": checks})).into_response();
    }
    ApiError::new(
        ErrorCode::NotReady,
        format!("not ready: {}", down.join(", ")),
    )
    .with_detail("checks", checks)
    .into_response()
}
