//! The HTTP layer: routes under `/api/v1` and the probes, translating requests into
//! service calls and results into JSON. Owns status codes, the error shape
//! ([`error`]), body limits, request ids and per-request spans; owns no business rule
//! (those live in [`crate::services`]) and nothing imports it but the composition root.
//!
//! | Route | Success |
//! |---|---|
//! | `POST /api/v1/modules` (`application/wasm`, `application/octet-stream` or multipart field `module`), `Prefer: respond-async?` | 201 module, or 202 upload while it compiles |
//! | `GET /api/v1/module-uploads/{id}` | 200 upload (`COMPILING`, `INSTALLED` with the module, `FAILED` with the error) |
//! | `GET /api/v1/modules` | 200 `{items, nextCursor}` |
//! | `GET /api/v1/modules/{name}` | 200 module |
//! | `GET /api/v1/modules/{name}/versions` | 200 `{items, nextCursor}` |
//! | `POST /api/v1/modules/{name}/enable`, `.../disable` | 200 module |
//! | `DELETE /api/v1/modules/{name}[?force=true]` | 204 |
//! | `POST /api/v1/jobs` | 201 job |
//! | `GET /api/v1/jobs?cursor=&limit=` | 200 `{items, nextCursor}` |
//! | `GET`, `PATCH`, `DELETE /api/v1/jobs/{id}` | 200 job, 200 job, 204 |
//! | `POST /api/v1/jobs/{id}/execute` `{input?}`, `Idempotency-Key?` | 202 `{executionId, status}` |
//! | `POST /api/v1/jobs/{id}/execute?wait=30s` | 200 execution once final, or 202 execution as it stands |
//! | `POST /api/v1/jobs/{id}/execute-bulk` `{inputs}` or `{count}`, `Idempotency-Key?` | 202 `{executionIds, count, status}` |
//! | `GET /api/v1/executions?jobId=&status=&cursor=&limit=` | 200 `{items, nextCursor}` |
//! | `GET /api/v1/executions/{id}` | 200 execution |
//! | `GET /api/v1/executions/{id}/logs?after=&limit=` | 200 `{items, nextAfter}` |
//! | `GET /api/v1/executions/{id}/logs?follow=true` | 200 `text/event-stream` |
//! | `POST /api/v1/executions/{id}/cancel` | 200 execution |
//! | `POST /api/v1/events` `{topic, payload}` | 202 `{eventId, triggeredExecutions}` |
//! | `GET /api/v1/events?topic=&cursor=&limit=` | 200 `{items, nextCursor}` |
//! | `GET /api/v1/usage?from=&to=&step=&module=&jobId=&groupBy=` | 200 `{from, to, step, series}` |
//! | `GET /api/v1/usage/summary?from=&to=&groupBy=&sort=&format=` | 200 `{from, to, sort, items}` or CSV |
//! | `GET /api/v1/usage/outbound?from=&to=&step=&module=&host=` | 200 `{from, to, step, series}` |
//! | `GET /api/v1/metrics[?module=]` | 200 `{items}` |
//! | `GET /api/v1/metrics/{name}/series?module=&label=&from=&to=&step=&agg=` | 200 `{series}` |
//! | `POST /api/v1/endpoints` | 201 endpoint with `uptime`, `lastCheck`, `consumption` |
//! | `GET /api/v1/endpoints?cursor=&limit=` | 200 `{items, nextCursor}` |
//! | `GET`, `PATCH`, `DELETE /api/v1/endpoints/{id}` | 200 endpoint (with health), 200 endpoint, 204 |
//! | `GET /api/v1/endpoints/{id}/checks?from=&to=&cursor=&limit=` | 200 `{items, nextCursor}` |
//! | `POST /api/v1/alerts/rules`, `GET /api/v1/alerts/rules` | 201 rule, 200 `{items}` |
//! | `GET`, `PATCH`, `DELETE /api/v1/alerts/rules/{id}` | 200 rule, 200 rule, 204 |
//! | `GET /api/v1/alerts` | 200 `{items}`: pending and firing rules |
//! | `GET /api/v1/alerts/history?from=&to=&ruleId=&cursor=&limit=` | 200 `{items, nextCursor}` |
//! | `GET /api/v1/alerts/notifications?ruleId=&limit=` | 200 `{items}` with attempts |
//! | `POST`, `GET /api/v1/alerts/silences`; `DELETE /api/v1/alerts/silences/{id}` | 201, 200 `{items}`, 204 |
//! | `POST`, `GET /api/v1/alerts/channels`; `GET`, `PATCH`, `DELETE .../{id}` | 201, 200, 200, 200, 204 |
//! | `POST /api/v1/alerts/channels/{id}/test` | 202 the queued notification |
//! | `GET /healthz` | 200 `{status: "ok"}` |
//! | `GET /readyz` | 200 `{status: "ready", checks}`, or 503 `not_ready` |
//! | `GET /metrics` | 200 this node's metrics, OpenMetrics text (see [`metrics`]) |
//! | `GET /api/v1/openapi.json` | 200 the OpenAPI 3.1 document of all of the above |
//! | `GET /api/docs` | 200 an HTML page that renders it and can send requests |
//! | any method on `/m/{module}/...` | whatever the module answers (see [`module_routes`]) |
//!
//! Listings take `limit` (default 50, at most 500) and `cursor` (the previous page's
//! `nextCursor`; `null` means there is no next page).
//!
//! Every route is declared once, with `routes!` over a handler annotated with
//! `#[utoipa::path]`, in the `routes()` of its file; [`api_routes`] merges those, and the
//! [`openapi`] module turns what they declare into the document.

mod access;
#[cfg(test)]
mod access_tests;
mod alerts;
mod auth;
mod budgets;
mod endpoints;
pub(crate) mod error;
mod events;
mod executions;
pub(crate) mod extract;
mod follow;
mod jobs;
pub(crate) mod metrics;
mod module_metrics;
mod module_routes;
mod modules;
mod nodes;
pub(crate) mod openapi;
mod probes;
#[cfg(test)]
mod tests;
mod usage;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

use axum::Router;
use axum::extract::{DefaultBodyLimit, OriginalUri};
use axum::http::header::{AUTHORIZATION, COOKIE, X_CONTENT_TYPE_OPTIONS};
use axum::http::{HeaderName, HeaderValue, Method, Request};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use utoipa_axum::router::OpenApiRouter;

use crate::services::{AuthService, Services};
use error::{ApiError, ErrorCode};

/// The header carrying the request id: the client's if it sent one, else a fresh UUID.
pub(crate) const REQUEST_ID_HEADER: &str = "x-request-id";

/// What the handlers share.
#[derive(Debug, Clone)]
pub(crate) struct ApiState {
    pub services: Services,
    pub auth: AuthService,
    pub readiness: Readiness,
}

/// What `/readyz` reports beyond the database: whether this process takes work. The
/// composition root sets it when the workers start and calls
/// [`Readiness::begin_shutdown`] when shutdown begins, so a load balancer stops sending
/// requests and open log streams close (a graceful shutdown waits for every connection).
#[derive(Debug, Clone)]
pub(crate) struct Readiness {
    workers_running: Arc<AtomicBool>,
    shutdown: Arc<watch::Sender<bool>>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            workers_running: Arc::default(),
            shutdown: Arc::new(watch::channel(false).0),
        }
    }
}

impl Readiness {
    /// Not ready until [`Readiness::set_workers_running`] says so.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Called by the composition root: `true` once the worker pool runs, `false` when it
    /// stops.
    pub(crate) fn set_workers_running(&self, running: bool) {
        self.workers_running.store(running, Ordering::Release);
    }

    pub(crate) fn workers_running(&self) -> bool {
        self.workers_running.load(Ordering::Acquire)
    }

    /// Called by the composition root when shutdown begins: `/readyz` answers 503 from now
    /// on and every `logs?follow=true` stream ends (clients resume elsewhere with
    /// `Last-Event-ID`), so the HTTP server's graceful shutdown is not held up by them.
    pub(crate) fn begin_shutdown(&self) {
        self.set_workers_running(false);
        self.shutdown.send_replace(true);
    }

    /// Resolves once [`Readiness::begin_shutdown`] was called.
    pub(crate) fn shutdown_started(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut receiver = self.shutdown.subscribe();
        async move {
            let _ = receiver.wait_for(|started| *started).await;
        }
    }
}

/// The whole HTTP surface, ready to serve (or to drive in tests with `tower::ServiceExt`).
pub(crate) fn router(state: ApiState) -> Router {
    let max_module_bytes = state.services.settings.max_module_bytes;
    let request_id = HeaderName::from_static(REQUEST_ID_HEADER);
    let middleware = ServiceBuilder::new()
        .layer(SetSensitiveRequestHeadersLayer::new([
            AUTHORIZATION,
            COOKIE,
        ]))
        .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_request(())
                .on_response(DefaultOnResponse::new())
                // Failures are logged once, with their cause, by `log_failures`.
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::new(request_id))
        .layer(axum::middleware::from_fn(error::log_failures))
        .layer(axum::middleware::from_fn(no_sniffing))
        .layer(CatchPanicLayer::custom(error::panic_response));
    openapi::serve_reference(api_routes(max_module_bytes))
        .method_not_allowed_fallback(method_not_allowed)
        // After every route is in: the access decision wraps each of them.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access::authorize,
        ))
        // Outside the access table: a module's manifest decides who may call its routes.
        .merge(module_routes::routes())
        .fallback(not_found)
        // On every route and the fallback, after routing: it reads the route matched.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::count_requests,
        ))
        .layer(DefaultBodyLimit::max(extract::JSON_BODY_LIMIT))
        .layer(middleware)
        .with_state(state)
}

/// Middleware on every response (API, docs, probes, errors, module routes): a browser
/// must take the declared `Content-Type` at its word, so a JSON body holding markup a
/// client sent is never run as a page.
async fn no_sniffing(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let mut response = next.run(request).await;
    response
        .headers_mut()
        .entry(X_CONTENT_TYPE_OPTIONS)
        .or_insert(HeaderValue::from_static("nosniff"));
    response
}

/// Every route of the API, each with its OpenAPI description. A new area adds its
/// `routes()` here.
fn api_routes(max_module_bytes: usize) -> OpenApiRouter<ApiState> {
    let v1 = OpenApiRouter::default()
        .merge(modules::routes(max_module_bytes))
        .merge(budgets::routes())
        .merge(jobs::routes())
        .merge(executions::routes())
        .merge(events::routes())
        .merge(auth::routes())
        .merge(nodes::routes())
        .merge(usage::routes())
        .merge(module_metrics::routes())
        .merge(endpoints::routes())
        .merge(alerts::routes());
    OpenApiRouter::with_openapi(openapi::frame())
        .merge(probes::routes())
        .merge(metrics::routes())
        .nest("/api/v1", v1)
}

fn request_span<B>(request: &Request<B>) -> tracing::Span {
    let request_id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id,
    )
}

async fn not_found(method: Method, OriginalUri(uri): OriginalUri) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!(
            "no route for {method} {}; the API lives under /api/v1",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: Method, OriginalUri(uri): OriginalUri) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!(
            "{} does not accept {method}; the Allow header lists what it accepts",
            uri.path()
        ),
    )
}
