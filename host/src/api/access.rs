//! Who may call which route: the one table of access decisions and the middleware that
//! enforces it on every route. A route missing from the table answers `500` for every
//! request (and fails the route-matrix test), so a new route cannot be open by accident.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiState;
use super::error::{ApiError, ErrorCode};
use crate::domain::Role;

/// What a route requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    /// Anyone, with or without a token.
    Public,
    /// A token of at least this role (`Viewer`: any valid token).
    Role(Role),
}

/// The decision for `method` on the route template `route` (as axum matched it, e.g.
/// `/api/v1/jobs/{id}`); `None` when the table has none.
pub(super) fn required(method: &Method, route: &str) -> Option<Access> {
    use Access::{Public, Role as R};
    use Role::{Admin, Operator, Viewer};
    let access = match (method.as_str(), route) {
        ("GET", "/healthz" | "/readyz" | "/api/v1/openapi.json" | "/api/docs") => Public,
        ("POST", "/api/v1/auth/login" | "/api/v1/auth/refresh") => Public,

        // Every user manages their own session, password and API tokens.
        ("POST", "/api/v1/auth/logout" | "/api/v1/auth/password") => R(Viewer),
        ("GET", "/api/v1/auth/me") => R(Viewer),
        ("GET" | "POST", "/api/v1/tokens") => R(Viewer),
        ("DELETE", "/api/v1/tokens/{id}") => R(Viewer),

        ("GET" | "POST", "/api/v1/users") => R(Admin),
        ("GET" | "PATCH" | "DELETE", "/api/v1/users/{id}") => R(Admin),
        ("GET", "/api/v1/audit") => R(Admin),

        (
            "GET",
            "/api/v1/modules" | "/api/v1/modules/{name}" | "/api/v1/modules/{name}/versions",
        ) => R(Viewer),
        ("POST", "/api/v1/modules") => R(Operator),
        ("GET", "/api/v1/module-uploads/{id}") => R(Operator),
        ("POST", "/api/v1/modules/{name}/enable" | "/api/v1/modules/{name}/disable") => R(Operator),
        ("DELETE", "/api/v1/modules/{name}") => R(Admin),
        ("POST", "/api/v1/modules/{name}/capabilities/approve") => R(Admin),
        ("GET", "/api/v1/modules/{name}/publisher-keys") => R(Viewer),
        ("POST", "/api/v1/modules/{name}/publisher-keys") => R(Admin),
        ("DELETE", "/api/v1/modules/{name}/publisher-keys/{id}") => R(Admin),
        ("GET", "/api/v1/modules/{name}/budgets") => R(Viewer),
        ("PUT", "/api/v1/modules/{name}/budgets") => R(Admin),

        ("GET", "/api/v1/jobs" | "/api/v1/jobs/{id}") => R(Viewer),
        ("POST", "/api/v1/jobs") => R(Operator),
        ("PATCH" | "DELETE", "/api/v1/jobs/{id}") => R(Operator),
        ("POST", "/api/v1/jobs/{id}/execute" | "/api/v1/jobs/{id}/execute-bulk") => R(Operator),

        (
            "GET",
            "/api/v1/executions" | "/api/v1/executions/{id}" | "/api/v1/executions/{id}/logs",
        ) => R(Viewer),
        ("POST", "/api/v1/executions/{id}/cancel") => R(Operator),

        ("GET", "/api/v1/events") => R(Viewer),
        ("POST", "/api/v1/events") => R(Operator),

        ("GET", "/api/v1/nodes") => R(Viewer),

        ("GET", "/api/v1/usage" | "/api/v1/usage/summary" | "/api/v1/usage/outbound") => R(Viewer),

        // Without a token only on `--metrics-listen`, an address the operator chose.
        ("GET", "/metrics") => R(Viewer),

        ("GET", "/api/v1/metrics" | "/api/v1/metrics/{name}/series") => R(Viewer),

        (
            "GET",
            "/api/v1/endpoints" | "/api/v1/endpoints/{id}" | "/api/v1/endpoints/{id}/checks",
        ) => R(Viewer),
        ("POST", "/api/v1/endpoints") => R(Operator),
        ("PATCH" | "DELETE", "/api/v1/endpoints/{id}") => R(Operator),

        (
            "GET",
            "/api/v1/alerts"
            | "/api/v1/alerts/history"
            | "/api/v1/alerts/notifications"
            | "/api/v1/alerts/rules"
            | "/api/v1/alerts/rules/{id}"
            | "/api/v1/alerts/silences"
            | "/api/v1/alerts/channels"
            | "/api/v1/alerts/channels/{id}",
        ) => R(Viewer),
        (
            "POST",
            "/api/v1/alerts/rules"
            | "/api/v1/alerts/silences"
            | "/api/v1/alerts/channels"
            | "/api/v1/alerts/channels/{id}/test",
        ) => R(Operator),
        ("PATCH" | "DELETE", "/api/v1/alerts/rules/{id}" | "/api/v1/alerts/channels/{id}") => {
            R(Operator)
        }
        ("DELETE", "/api/v1/alerts/silences/{id}") => R(Operator),
        _ => return None,
    };
    Some(access)
}

/// Whether the table decides anything for `route` (with any method).
fn route_is_known(route: &str) -> bool {
    [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
    ]
    .iter()
    .any(|method| required(method, route).is_some())
}

/// The bearer token of a request, if it carries one.
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Middleware on every route: decides from the table, authenticates when needed and
/// puts the [`Principal`](crate::domain::Principal) in the request's extensions for
/// the handler.
pub(super) async fn authorize(
    State(state): State<ApiState>,
    matched: Option<MatchedPath>,
    mut request: Request,
    next: Next,
) -> Response {
    let route = matched.as_ref().map_or("", MatchedPath::as_str);
    let access = match required(request.method(), route) {
        Some(access) => access,
        None if route_is_known(route) => {
            return ApiError::new(
                ErrorCode::MethodNotAllowed,
                format!("{route} does not accept {}", request.method()),
            )
            .into_response();
        }
        None => {
            return ApiError::internal(format!(
                "route {} {route} has no access decision in api::access",
                request.method()
            ))
            .into_response();
        }
    };
    let Access::Role(needed) = access else {
        return next.run(request).await;
    };
    let Some(token) = bearer(request.headers()) else {
        return ApiError::new(
            ErrorCode::Unauthenticated,
            "this route needs a token: send `Authorization: Bearer <token>` (POST /api/v1/auth/login gives one)",
        )
        .into_response();
    };
    let principal = match state.auth.authenticate(token).await {
        Ok(principal) => principal,
        Err(err) => return ApiError::from(err).into_response(),
    };
    if !principal.role.allows(needed) {
        return ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "{} {route} needs the {needed} role; {} has {}",
                request.method(),
                principal.username,
                principal.role
            ),
        )
        .into_response();
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_bearer_scheme_with_a_token_counts() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert("authorization", "bearer  abc ".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert("authorization", "Basic YWRtaW46YWRtaW4=".parse().unwrap());
        assert_eq!(bearer(&headers), None);
        headers.insert("authorization", "Bearer ".parse().unwrap());
        assert_eq!(bearer(&headers), None);
    }

    #[test]
    fn removing_a_module_needs_an_admin_but_uploading_one_an_operator() {
        assert_eq!(
            required(&Method::DELETE, "/api/v1/modules/{name}"),
            Some(Access::Role(Role::Admin))
        );
        assert_eq!(
            required(&Method::POST, "/api/v1/modules"),
            Some(Access::Role(Role::Operator))
        );
        assert_eq!(required(&Method::GET, "/api/v1/unknown"), None);
    }
}
