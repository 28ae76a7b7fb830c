//! `/m/{module}/...`: routes a module serves itself through its
//! `wasi:http/incoming-handler` export. The API's access table does not apply here: the
//! module's manifest says who may call (`authenticated`: any valid token; `public`:
//! anyone, once an admin approved it), and everything else — which version answers,
//! limits, concurrency — is the services' business.
//!
//! The module sees the path below its prefix (`/m/data-sync/status?x=1` arrives as
//! `/status?x=1`) and the client's headers, except hop-by-hop ones, any `x-runcell-*`
//! header the client sent (Runcell sets `x-runcell-user` and `x-runcell-role` for a
//! signed-in caller) and anything that could carry a Runcell credential, on every kind
//! of route, public ones included: `Authorization` always (it is where the API reads
//! credentials, and a module cannot be trusted to tell a Runcell token from its own), and
//! any other header or cookie whose value holds a Runcell token (an API or refresh
//! token, or an access token this deployment signed). A module that wants a credential of
//! its own reads it from a header of its own choosing. Its responses are served on the API's origin, so they carry
//! `Content-Security-Policy: sandbox`: a page a module serves runs in an opaque origin and
//! cannot reach the dashboard's storage or the API with its user's credentials.

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::any;

use super::ApiState;
use super::access::bearer;
use super::error::{ApiError, ErrorCode};
use crate::domain::{Outcome, Principal, RouteAccess};

/// Headers that describe one connection, not the message: never passed through.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Headers Runcell sets for the module; a client cannot supply its own.
const RUNCELL_HEADER_PREFIX: &str = "x-runcell-";

/// Confines a module's pages to an opaque origin (scripts and forms still work).
const MODULE_RESPONSE_CSP: &str = "sandbox allow-scripts allow-forms allow-popups";

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/m/{module}", any(serve))
        .route("/m/{module}/", any(serve))
        .route("/m/{module}/{*rest}", any(serve))
}

/// The module name and the path the module sees, from the raw (still percent-encoded)
/// request path.
fn split_path(path: &str) -> Option<(&str, &str)> {
    let below = path.strip_prefix("/m/")?;
    let (module, rest) = match below.find('/') {
        Some(at) => below.split_at(at),
        None => (below, ""),
    };
    let valid = !module.is_empty()
        && module
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    valid.then_some((module, if rest.is_empty() { "/" } else { rest }))
}

async fn serve(State(state): State<ApiState>, request: Request) -> Response {
    match forward(&state, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn forward(state: &ApiState, request: Request) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let Some((module, path)) = split_path(parts.uri.path()) else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!(
                "no module route {}: module names are lowercase letters, digits and `-`",
                parts.uri.path()
            ),
        ));
    };
    let services = &state.services;
    let target = services.route_target(module).await?;
    let caller = match target.access {
        RouteAccess::Public => None,
        RouteAccess::Authenticated | RouteAccess::None => {
            Some(authenticate(state, &parts.headers, module).await?)
        }
    };
    let limit = services.settings.routes.max_request_bytes;
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the request body is larger than module routes accept ({limit} bytes)"),
        )
        .with_detail("limitBytes", limit)
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(too_large());
    }
    let body = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large())?;

    let mut forwarded = http::Request::builder()
        .method(parts.method.clone())
        .uri(module_uri(&parts.headers, path, parts.uri.query()))
        .body(body)
        .map_err(|err| {
            ApiError::new(
                ErrorCode::InvalidField,
                format!("the request cannot be passed to the module: {err}"),
            )
        })?;
    *forwarded.headers_mut() = request_headers(&parts.headers, caller.as_ref(), |value| {
        state.auth.carries_credential(value)
    });

    let served = services.serve_route(&target, forwarded).await?;
    match served.response {
        Ok(response) => Ok(module_response(response)),
        Err(outcome) => Err(failure(module, &outcome)),
    }
}

/// Any valid token (or API token) of any role.
async fn authenticate(
    state: &ApiState,
    headers: &HeaderMap,
    module: &str,
) -> Result<Principal, ApiError> {
    let Some(token) = bearer(headers) else {
        return Err(ApiError::new(
            ErrorCode::Unauthenticated,
            format!(
                "module `{module}` serves its routes to signed-in users: send `Authorization: Bearer <token>`"
            ),
        ));
    };
    Ok(state.auth.authenticate(token).await?)
}

/// An absolute URI for the module: wasi-http wants an authority, the client's `Host`.
fn module_uri(headers: &HeaderMap, path: &str, query: Option<&str>) -> String {
    let authority = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|host| host.parse::<http::uri::Authority>().is_ok())
        .unwrap_or("localhost");
    match query {
        Some(query) => format!("http://{authority}{path}?{query}"),
        None => format!("http://{authority}{path}"),
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

/// What the module is given of the client's headers: see the module's documentation.
/// `is_credential` tells whether a header value carries a Runcell credential.
fn request_headers(
    client: &HeaderMap,
    caller: Option<&Principal>,
    is_credential: impl Fn(&str) -> bool,
) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(client.len() + 2);
    for (name, value) in client {
        let runcells_own = name.as_str().starts_with(RUNCELL_HEADER_PREFIX);
        if runcells_own || is_hop_by_hop(name) || name == header::AUTHORIZATION {
            continue;
        }
        // Header values are not always text; a credential is, so other bytes pass.
        let Ok(text) = value.to_str() else {
            headers.append(name, value.clone());
            continue;
        };
        if name == header::COOKIE {
            if let Some(kept) = cookies_without_credentials(text, &is_credential) {
                headers.append(name, kept);
            }
        } else if !is_credential(text) {
            headers.append(name, value.clone());
        }
    }
    if let Some(caller) = caller
        && let Ok(user) = HeaderValue::from_str(&caller.username)
    {
        headers.insert(HeaderName::from_static("x-runcell-user"), user);
        headers.insert(
            HeaderName::from_static("x-runcell-role"),
            HeaderValue::from_static(caller.role.as_str()),
        );
    }
    headers
}

/// A `Cookie` header without the cookies that carry a credential (a module's own cookies
/// pass); `None` when none is left.
fn cookies_without_credentials(
    header: &str,
    is_credential: impl Fn(&str) -> bool,
) -> Option<HeaderValue> {
    let kept: Vec<&str> = header
        .split(';')
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && !is_credential(pair))
        .collect();
    if kept.is_empty() {
        return None;
    }
    HeaderValue::from_str(&kept.join("; ")).ok()
}

fn module_response(response: http::Response<bytes::Bytes>) -> Response {
    let (parts, body) = response.into_parts();
    let mut out = Response::new(Body::from(body));
    *out.status_mut() = parts.status;
    let headers = out.headers_mut();
    for (name, value) in &parts.headers {
        // The length is the body's own; the framing is this server's.
        if !is_hop_by_hop(name) && name != header::CONTENT_LENGTH {
            headers.append(name, value.clone());
        }
    }
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(MODULE_RESPONSE_CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    out
}

fn failure(module: &str, outcome: &Outcome) -> ApiError {
    let code = match outcome {
        Outcome::TimedOut { .. } => ErrorCode::ModuleTimedOut,
        _ => ErrorCode::ModuleFailed,
    };
    let error = ApiError::new(
        code,
        format!("module `{module}` did not answer: {}", outcome.summary()),
    );
    match outcome {
        Outcome::Failed { kind, .. } => error.with_detail(
            "reason",
            serde_json::to_value(kind).unwrap_or(serde_json::Value::Null),
        ),
        _ => error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_module_sees_the_path_below_its_prefix() {
        assert_eq!(split_path("/m/data-sync"), Some(("data-sync", "/")));
        assert_eq!(split_path("/m/data-sync/"), Some(("data-sync", "/")));
        assert_eq!(
            split_path("/m/data-sync/status/a%20b"),
            Some(("data-sync", "/status/a%20b"))
        );
        assert_eq!(split_path("/m/Data/x"), None);
        assert_eq!(split_path("/m//x"), None);
        assert_eq!(split_path("/api/v1/jobs"), None);
    }

    /// Stands in for the auth service's check: anything with `rct_` in it.
    fn api_token_like(value: &str) -> bool {
        value.contains("rct_")
    }

    #[test]
    fn a_client_cannot_pass_its_token_or_runcell_headers_to_the_module() {
        let mut client = HeaderMap::new();
        client.insert(header::AUTHORIZATION, "Bearer secret".parse().unwrap());
        client.insert("x-runcell-user", "admin".parse().unwrap());
        client.insert("x-runcell-role", "admin".parse().unwrap());
        client.insert(header::CONNECTION, "keep-alive".parse().unwrap());
        client.insert(header::ACCEPT, "application/json".parse().unwrap());
        let caller = Principal {
            user_id: "u1".into(),
            username: "viewer-user".into(),
            role: crate::domain::Role::Viewer,
            via: crate::domain::Credential::ApiToken {
                token_id: "t1".into(),
            },
        };
        let headers = request_headers(&client, Some(&caller), api_token_like);
        assert!(headers.get(header::AUTHORIZATION).is_none());
        assert!(headers.get(header::CONNECTION).is_none());
        assert_eq!(headers["x-runcell-user"], "viewer-user");
        assert_eq!(headers["x-runcell-role"], "viewer");
        assert_eq!(headers[header::ACCEPT], "application/json");

        // A public route has no caller: still no Authorization, and no claim to be
        // someone.
        let headers = request_headers(&client, None, api_token_like);
        assert!(headers.get(header::AUTHORIZATION).is_none());
        assert!(headers.get("x-runcell-user").is_none());
        assert!(headers.get("x-runcell-role").is_none());
        assert_eq!(headers[header::ACCEPT], "application/json");
    }

    #[test]
    fn a_credential_in_another_header_or_a_cookie_is_kept_from_the_module() {
        let mut client = HeaderMap::new();
        client.insert("x-api-key", "rct_abc".parse().unwrap());
        client.insert("x-trace", "kept".parse().unwrap());
        client.insert(
            header::COOKIE,
            "theme=dark; session=rct_abc;lang=en".parse().unwrap(),
        );
        let headers = request_headers(&client, None, api_token_like);
        assert!(headers.get("x-api-key").is_none());
        assert_eq!(headers["x-trace"], "kept");
        assert_eq!(headers[header::COOKIE], "theme=dark; lang=en");

        client.insert(header::COOKIE, "session=rct_abc".parse().unwrap());
        let headers = request_headers(&client, None, api_token_like);
        assert!(headers.get(header::COOKIE).is_none());
    }

    #[test]
    fn a_module_response_is_sandboxed_and_reframed() {
        let response = http::Response::builder()
            .status(201)
            .header(header::CONTENT_TYPE, "text/html")
            .header(header::CONTENT_LENGTH, "999")
            .header(header::TRANSFER_ENCODING, "chunked")
            .header(header::CONTENT_SECURITY_POLICY, "default-src *")
            .body(bytes::Bytes::from_static(b"<p>hi</p>"))
            .unwrap();
        let out = module_response(response);
        assert_eq!(out.status(), 201);
        assert_eq!(out.headers()[header::CONTENT_TYPE], "text/html");
        assert!(out.headers().get(header::TRANSFER_ENCODING).is_none());
        assert!(out.headers().get(header::CONTENT_LENGTH).is_none());
        assert_eq!(
            out.headers()[header::CONTENT_SECURITY_POLICY],
            MODULE_RESPONSE_CSP
        );
        assert_eq!(out.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    }
}
