//! Errors become HTTP here and nowhere else. Every failure a handler or an extractor meets
//! is an [`ApiError`]: an [`ErrorCode`] (which alone decides the status), a message that
//! says what to fix, and optional details. Every error response has one shape:
//!
//! ```json
//! {"error": {"code": "invalid_field", "message": "schedule: ...", "details": {"field": "schedule"}}}
//! ```
//!
//! `details` is present only when there is something in it; `details.field` names the
//! offending field (a JSON path such as `inputs[2]`, or a query parameter) wherever there
//! is one. Server-side faults (`internal`, `unavailable`) send a generic message; their
//! real cause rides in a response extension to [`log_failures`], which logs it once,
//! inside the request's span (so with its request id), and never sends it.
//!
//! Only a dependency that cannot serve now (a lost database connection, a read-only
//! database, the queue down) is `503 unavailable`: retrying later may help. Any other
//! server-side fault (a corrupt row, a statement the database refused, a failure to hash
//! a password) is `500 internal` with `details.errorId`, a fresh id that the error-level
//! log line carries too, so a report quoting it leads to the cause.

use std::any::Any;
use std::fmt::Display;

use axum::Json;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::domain::new_id;
use crate::services::ServiceError;

/// The stable, machine-readable part of an error. Clients match on [`ErrorCode::as_str`];
/// the status code follows from the code. The OpenAPI schema lists the variants in
/// snake case, which is what `as_str` must answer (a test holds them together).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ToSchema)]
#[schema(
    rename_all = "snake_case",
    description = "What went wrong, for programs to match on; the HTTP status follows from it."
)]
pub(crate) enum ErrorCode {
    /// 400: the body is not JSON at all (syntax error, truncated, trailing data, empty).
    MalformedJson,
    /// 400: a field or query parameter is missing, unknown, of the wrong type or
    /// malformed; `details.field` names it.
    InvalidField,
    /// 401: no credential, or one that is invalid, expired or revoked; log in again.
    Unauthenticated,
    /// 403: the credential is valid, but its role may not do this.
    Forbidden,
    /// 404: no such resource (`details.resource`, `details.id`), or no such route.
    NotFound,
    /// 405: the route exists, the method does not (see the `Allow` header).
    MethodNotAllowed,
    /// 409: the request conflicts with the current state (name taken, module in use,
    /// execution already ended, job or module disabled).
    Conflict,
    /// 413: the body is larger than the route accepts (`details.limitBytes`).
    PayloadTooLarge,
    /// 415: the body's `Content-Type` is not one the route accepts (`details.accepted`).
    UnsupportedMediaType,
    /// 422: well-formed but not acceptable here: an unknown module or job, a limit above
    /// the server's ceiling, a secret setting on a server without a secret key;
    /// `details.field` names it.
    Unprocessable,
    /// 422: the uploaded file is not a module Runcell can run; the message says why.
    InvalidModule,
    /// 429: too many attempts (logins); retry after the `Retry-After` header's seconds.
    TooManyRequests,
    /// 502: a module's route failed to answer (it trapped, ran out of fuel or memory,
    /// answered nothing, or sent a body over the limit); the message says which.
    ModuleFailed,
    /// 503: a module is serving its limit of concurrent requests; retry after the
    /// `Retry-After` header's seconds.
    ModuleBusy,
    /// 504: a module's route did not answer within its time limit.
    ModuleTimedOut,
    /// 503: the database or the queue is unavailable; retry later.
    Unavailable,
    /// 503: the server is at its bound for costly work (checking passwords) and refused
    /// this at once; retry after the `Retry-After` header's seconds.
    Overloaded,
    /// 503 from `/readyz`: the server cannot take work (`details.checks` says what is down).
    NotReady,
    /// 500: a fault on the server's side that retrying will not fix (a bug, a corrupt
    /// row); the server logged the cause under `details.errorId`, which a report
    /// should quote.
    Internal,
}

impl ErrorCode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::MalformedJson => "malformed_json",
            Self::InvalidField => "invalid_field",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict => "conflict",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Unprocessable => "unprocessable",
            Self::InvalidModule => "invalid_module",
            Self::TooManyRequests => "too_many_requests",
            Self::ModuleFailed => "module_failed",
            Self::ModuleBusy => "module_busy",
            Self::ModuleTimedOut => "module_timed_out",
            Self::Unavailable => "unavailable",
            Self::Overloaded => "overloaded",
            Self::NotReady => "not_ready",
            Self::Internal => "internal",
        }
    }

    pub(crate) fn status(self) -> StatusCode {
        match self {
            Self::MalformedJson | Self::InvalidField => StatusCode::BAD_REQUEST,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unprocessable | Self::InvalidModule => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Self::ModuleFailed => StatusCode::BAD_GATEWAY,
            Self::ModuleTimedOut => StatusCode::GATEWAY_TIMEOUT,
            Self::Unavailable | Self::NotReady | Self::ModuleBusy | Self::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorDetail {
    #[schema(value_type = ErrorCode)]
    code: &'static str,
    /// What went wrong and what to do about it, for people (programs match on `code`).
    message: String,
    /// Present only when there is something in it: `field` (the offending field, as a JSON
    /// path, or query parameter), `resource` and `id` (what does not exist), `limitBytes`
    /// (the body limit), `accepted` (media types), `allowed` (values), `checks` (what is
    /// down), `errorId` (a `500`'s id, also in the server's log line about it).
    #[serde(skip_serializing_if = "Map::is_empty")]
    details: Map<String, Value>,
}

/// A failed request, as the client will see it (plus, for server faults, the cause to log).
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    code: ErrorCode,
    message: String,
    details: Map<String, Value>,
    cause: Option<String>,
}

/// The cause of a server-side fault, carried from [`ApiError`] to [`log_failures`], with
/// the id the client was given for it (internal faults only).
#[derive(Debug, Clone)]
struct FailureCause {
    cause: String,
    error_id: Option<String>,
}

impl ApiError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: Map::new(),
            cause: None,
        }
    }

    /// An error about one field; the message should start with the field's name.
    pub(crate) fn field(
        code: ErrorCode,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::new(code, message).with_detail("field", field.into())
    }

    pub(crate) fn with_detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    /// A bug or an unexpected failure: the client learns only that it happened, and the
    /// id under which the server logged the cause.
    pub(crate) fn internal(cause: impl Display) -> Self {
        let error_id = new_id();
        Self {
            cause: Some(cause.to_string()),
            ..Self::new(
                ErrorCode::Internal,
                format!(
                    "internal server error {error_id}; the server logged its cause under this id: quote it when reporting the problem"
                ),
            )
            .with_detail("errorId", error_id)
        }
    }

    /// The status and body the client sees, to be kept and answered later (a followed
    /// upload's outcome).
    pub(crate) fn status_and_body(&self) -> (StatusCode, Value) {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.as_str(),
                message: self.message.clone(),
                details: self.details.clone(),
            },
        };
        let body = serde_json::to_value(body).expect("an error body serializes");
        (self.code.status(), body)
    }

    /// Logs the cause of a server-side fault as [`log_failures`] would, for an error no
    /// response will carry (the client stopped waiting for it).
    pub(crate) fn log_unanswered(&self, what: &str) {
        let Some(cause) = &self.cause else { return };
        let status = self.code.status().as_u16();
        match self.details.get("errorId").and_then(Value::as_str) {
            Some(error_id) => tracing::error!(status, error_id, cause = %cause, "{what} failed"),
            None => tracing::warn!(status, cause = %cause, "{what} failed"),
        }
    }

    /// A dependency is down; the client should retry.
    pub(crate) fn unavailable(cause: impl Display) -> Self {
        Self {
            cause: Some(cause.to_string()),
            ..Self::new(
                ErrorCode::Unavailable,
                "the server cannot reach its database or queue right now; retry later",
            )
        }
    }

    #[cfg(test)]
    pub(crate) fn code(&self) -> ErrorCode {
        self.code
    }

    #[cfg(test)]
    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    #[cfg(test)]
    pub(crate) fn detail(&self, key: &str) -> Option<&Value> {
        self.details.get(key)
    }
}

impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> Self {
        let message = err.to_string();
        match err {
            ServiceError::NotFound { what, id } => Self::new(ErrorCode::NotFound, message)
                .with_detail("resource", what)
                .with_detail("id", id),
            ServiceError::NotServed(_) => Self::new(ErrorCode::NotFound, message),
            ServiceError::BadField { field, .. } => {
                Self::field(ErrorCode::InvalidField, field, message)
            }
            ServiceError::Unprocessable { field, .. } => {
                Self::field(ErrorCode::Unprocessable, field, message)
            }
            ServiceError::Conflict(_) => Self::new(ErrorCode::Conflict, message),
            ServiceError::InvalidModule(_) => Self::new(ErrorCode::InvalidModule, message),
            ServiceError::Unavailable(cause) => Self::unavailable(cause),
            ServiceError::Internal(cause) => Self::internal(cause),
            ServiceError::Unauthenticated(_) => Self::new(ErrorCode::Unauthenticated, message),
            ServiceError::Forbidden(_) => Self::new(ErrorCode::Forbidden, message),
            ServiceError::Busy(_) => {
                Self::new(ErrorCode::ModuleBusy, message).with_detail("retryAfterSeconds", 1)
            }
            ServiceError::Throttled {
                retry_after_secs, ..
            } => Self::new(ErrorCode::TooManyRequests, message)
                .with_detail("retryAfterSeconds", retry_after_secs),
            ServiceError::Overloaded {
                retry_after_secs, ..
            } => Self::new(ErrorCode::Overloaded, message)
                .with_detail("retryAfterSeconds", retry_after_secs),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry_after = match self.code {
            ErrorCode::TooManyRequests | ErrorCode::ModuleBusy | ErrorCode::Overloaded => self
                .details
                .get("retryAfterSeconds")
                .and_then(Value::as_i64),
            _ => None,
        };
        let unauthenticated = self.code == ErrorCode::Unauthenticated;
        let error_id = self
            .details
            .get("errorId")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.as_str(),
                message: self.message,
                details: self.details,
            },
        };
        let mut response = (self.code.status(), Json(body)).into_response();
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, seconds.into());
        }
        if unauthenticated {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"runcell\""),
            );
        }
        if let Some(cause) = self.cause {
            response
                .extensions_mut()
                .insert(FailureCause { cause, error_id });
        }
        response
    }
}

/// Middleware: logs the cause of every server-side fault, once, in the request's span.
pub(super) async fn log_failures(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    if let Some(FailureCause { cause, error_id }) = response.extensions().get::<FailureCause>() {
        let status = response.status().as_u16();
        match error_id {
            Some(error_id) => {
                tracing::error!(status, error_id = %error_id, cause = %cause, "request failed");
            }
            None if response.status() == StatusCode::SERVICE_UNAVAILABLE => {
                tracing::warn!(status, cause = %cause, "request failed: dependency unavailable");
            }
            None => tracing::error!(status, cause = %cause, "request failed"),
        }
    }
    response
}

/// What a panicking handler answers (`CatchPanicLayer`); the panic message is logged, not sent.
pub(super) fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    ApiError::internal(format!("handler panicked: {message}")).into_response()
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::body::{Body, to_bytes};
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    /// Log lines written while a test runs, as text.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// `failure` answered by a route behind [`log_failures`]: the response's status and
    /// body, and what was logged.
    async fn answer(failure: fn() -> ServiceError) -> (StatusCode, Value, String) {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let app = Router::new()
            .route(
                "/",
                get(move || async move { ApiError::from(failure()).into_response() }),
            )
            .layer(axum::middleware::from_fn(log_failures));
        let response = app
            .oneshot(Request::get("/").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        (status, serde_json::from_slice(&body).unwrap(), log)
    }

    #[tokio::test]
    async fn an_internal_fault_is_a_500_whose_id_is_in_the_error_log_line_and_not_its_cause() {
        let (status, body, log) =
            answer(|| ServiceError::Internal("corrupt row: status: unknown `DONE`".into())).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["error"]["code"], "internal");
        let id = body["error"]["details"]["errorId"].as_str().expect("an id");
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(id),
            "{body}"
        );
        assert!(
            !body.to_string().contains("DONE"),
            "the cause stays out: {body}"
        );
        let line = log
            .lines()
            .find(|line| line.contains(id))
            .unwrap_or_else(|| panic!("no log line with {id}:\n{log}"));
        assert!(line.contains("ERROR"), "{line}");
        assert!(line.contains("unknown `DONE`"), "{line}");
    }

    #[tokio::test]
    async fn only_a_dependency_that_cannot_serve_is_a_503_to_retry() {
        let (status, body, log) =
            answer(|| ServiceError::Unavailable("pool timed out".into())).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"]["code"], "unavailable");
        assert!(body["error"].get("details").is_none(), "{body}");
        assert!(
            log.contains("WARN") && log.contains("pool timed out"),
            "{log}"
        );
        let (status, _, _) = answer(|| {
            ServiceError::from(crate::store::StoreError::Database(
                "no such column: x".into(),
            ))
        })
        .await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}
