//! `/healthz` (the process answers) and `/readyz` (it can take work: the database answers
//! and the workers run). Neither needs authentication; neither says more than what is down.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ApiState;
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::openapi;

const TAG: &str = "probes";

/// How long `/readyz` waits for the database: probes have short timeouts of their own.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    openapi::tagged(
        TAG,
        "Liveness and readiness, for load balancers and orchestrators. No token needed.",
    )
    .routes(routes!(healthz))
    .routes(routes!(readyz))
}

/// What `/healthz` answers.
#[derive(Debug, Serialize, ToSchema)]
struct Health {
    /// Always `ok`.
    #[schema(value_type = String, example = "ok")]
    status: &'static str,
}

/// What `/readyz` answers when the server takes work.
#[derive(Debug, Serialize, ToSchema)]
struct Ready {
    /// Always `ready`.
    #[schema(value_type = String, example = "ready")]
    status: &'static str,
    checks: Checks,
}

/// The state of what readiness depends on; also in `details.checks` of a `not_ready` error.
#[derive(Debug, Serialize, ToSchema)]
struct Checks {
    /// `ok`, `unreachable` or `timeout`.
    #[schema(value_type = String)]
    database: &'static str,
    /// The queue (in-process, or Redis): `ok`, `unreachable` or `timeout`.
    #[schema(value_type = String)]
    queue: &'static str,
    /// `running` or `stopped`.
    #[schema(value_type = String)]
    workers: &'static str,
}

/// Liveness
///
/// The process answers HTTP. Says nothing about its dependencies.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = TAG,
    operation_id = "healthz",
    security(),
    responses((status = 200, description = "Alive.", body = Health)),
)]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// `ok`, `unreachable` or `timeout`, from a ping bounded by [`PING_TIMEOUT`]; a failure is
/// logged with its cause, which the probe's answer leaves out.
fn check_state<E: std::fmt::Display>(
    what: &'static str,
    ping: Result<Result<(), E>, tokio::time::error::Elapsed>,
) -> &'static str {
    match ping {
        Ok(Ok(())) => "ok",
        Ok(Err(err)) => {
            tracing::warn!(error = %err, dependency = what, "readiness: unreachable");
            "unreachable"
        }
        Err(_) => {
            tracing::warn!(timeout = ?PING_TIMEOUT, dependency = what, "readiness: no answer in time");
            "timeout"
        }
    }
}

/// Readiness
///
/// The server can take work: its database and queue answer within two seconds and its
/// workers run.
/// Not ready while starting and from the moment shutdown begins.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = TAG,
    operation_id = "readyz",
    security(),
    responses(
        (status = 200, description = "Ready.", body = Ready),
        (status = 503, description = "`not_ready`: `details.checks` says what is down.", body = ErrorBody),
    ),
)]
async fn readyz(State(state): State<ApiState>) -> Response {
    let (database, queue) = tokio::join!(
        tokio::time::timeout(PING_TIMEOUT, state.services.store.ping()),
        tokio::time::timeout(PING_TIMEOUT, state.services.queue.ping()),
    );
    let database = check_state("database", database);
    let queue = check_state("queue", queue);
    let workers = if state.readiness.workers_running() {
        "running"
    } else {
        "stopped"
    };
    let checks = Checks {
        database,
        queue,
        workers,
    };
    let mut down = Vec::new();
    if database != "ok" {
        down.push(format!("database {database}"));
    }
    if queue != "ok" {
        down.push(format!("queue {queue}"));
    }
    if workers != "running" {
        down.push("workers not running".to_owned());
    }
    if down.is_empty() {
        return Json(Ready {
            status: "ready",
            checks,
        })
        .into_response();
    }
    ApiError::new(
        ErrorCode::NotReady,
        format!("not ready: {}", down.join(", ")),
    )
    .with_detail("checks", serde_json::json!(checks))
    .into_response()
}
