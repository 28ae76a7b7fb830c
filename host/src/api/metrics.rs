//! `GET /metrics`: this node's metrics for Prometheus, in the OpenMetrics text format.
//! On the API's listener it needs a token like the API (any role: a `viewer` API token is
//! enough); `--metrics-listen` serves the same answer without one on an address of its
//! own (for a Prometheus on a private network), through [`scrape_router`]. Also owns the
//! middleware that counts every HTTP request by route template and status.

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ApiState;
use super::openapi;
use crate::services::Services;
use crate::telemetry;

const TAG: &str = "monitoring";

/// Where the metrics are served, on either listener.
pub(crate) const METRICS_PATH: &str = "/metrics";

/// The route label of a request that matched no route (answered `404` by the fallback).
const UNMATCHED: &str = "unmatched";

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    openapi::tagged(
        TAG,
        "This node's metrics for Prometheus. Any role may read them; `--metrics-listen` serves them without a token on an address of its own.",
    )
    .routes(routes!(metrics))
}

/// Metrics for Prometheus
///
/// This node's metrics in the OpenMetrics text format: executions by module, module's job
/// (`handler`) and status, fuel, run duration and dispatch latency, HTTP requests by route
/// and status, cron ticks fired, reconciler actions, build information, and as they stand
/// now: queued executions (of the whole deployment), runs in flight, instance pools, CPU
/// permits and the database and Redis connection pools. Counters are this node's own.
#[utoipa::path(
    get,
    path = METRICS_PATH,
    tag = TAG,
    operation_id = "getMetrics",
    responses((
        status = 200,
        description = "The metrics.",
        body = String,
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8",
    )),
)]
async fn metrics(State(state): State<ApiState>) -> Response {
    scrape(&state.services).await
}

async fn scrape(services: &Services) -> Response {
    let text = services.metrics_text().await;
    ([(CONTENT_TYPE, telemetry::CONTENT_TYPE)], text).into_response()
}

/// `GET /metrics` alone and without a token, for `--metrics-listen`: whoever reaches that
/// address may read the metrics, so it belongs on a private network.
pub(crate) fn scrape_router(services: Services) -> Router {
    Router::new()
        .route(
            METRICS_PATH,
            get(|State(services): State<Services>| async move { scrape(&services).await }),
        )
        .with_state(services)
}

/// Middleware on every route: counts the request by method, the route template axum
/// matched (never the raw path, which would make a series per id) and the status sent.
pub(super) async fn count_requests(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let response = next.run(request).await;
    state.services.telemetry.record_http(
        method.as_str(),
        route.as_ref().map_or(UNMATCHED, MatchedPath::as_str),
        response.status().as_u16(),
    );
    response
}
