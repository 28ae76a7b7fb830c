//! `/api/v1/auth`, `/api/v1/users`, `/api/v1/tokens` and `/api/v1/audit`: logins and
//! sessions, user management, API tokens and the audit trail. Carries credentials in
//! and out; every rule about them is in [`crate::services::auth`].

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::http::header::{CACHE_CONTROL, HeaderName, HeaderValue, LOCATION};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ApiState;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, PageRequest, Params};
use super::openapi;
use crate::domain::{ApiToken, AuditEntry, Credential, Millis, Page, Principal, Role, User};
use crate::services::auth::{NewApiToken, NewUser, Session, UserPatch};

const TAG: &str = "auth";

/// On every response that hands out a secret: no cache, shared or private, may keep it.
const NO_STORE: (HeaderName, HeaderValue) = (CACHE_CONTROL, HeaderValue::from_static("no-store"));

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    openapi::tagged(
        TAG,
        "Logging in, sessions, users, API tokens and the audit trail.",
    )
    .routes(routes!(login))
    .routes(routes!(refresh))
    .routes(routes!(logout))
    .routes(routes!(me))
    .routes(routes!(change_password))
    .routes(routes!(list_users, create_user))
    .routes(routes!(show_user, update_user, delete_user))
    .routes(routes!(list_tokens, create_token))
    .routes(routes!(revoke_token))
    .routes(routes!(list_audit))
}

// ---- sessions ------------------------------------------------------------------------

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct LoginRequest {
    username: String,
    #[schema(format = Password)]
    password: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RefreshRequest {
    refresh_token: String,
}

/// A new pair of tokens. `refreshToken` is shown only here: keep it secret.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct SessionResponse {
    access_token: String,
    /// Always `Bearer`.
    token_type: &'static str,
    /// Seconds until the access token expires.
    expires_in: i64,
    refresh_token: String,
    /// When the refresh token expires (ms since the epoch).
    refresh_expires_at: Millis,
    user: User,
}

impl SessionResponse {
    fn new(session: Session) -> Self {
        Self {
            token_type: "Bearer",
            expires_in: session.access_ttl_secs,
            access_token: session.access_token,
            refresh_token: session.refresh_token,
            refresh_expires_at: session.refresh_expires_at,
            user: session.user,
        }
    }
}

/// Log in
///
/// Trades a username and password for a short-lived access token and a refresh token.
/// Failed attempts are throttled: hard per account and client address and per client
/// address (`429`), softly per account (each attempt on an account under attack waits a
/// few seconds at most; never a lockout). Username comparison ignores letter case.
#[utoipa::path(
    post,
    path = "/auth/login",
    tag = TAG,
    operation_id = "login",
    security(),
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in.", body = SessionResponse),
        (status = 400, description = "Malformed body (`details.field`).", body = ErrorBody),
        (status = 401, description = "Invalid username or password (the same answer for both).", body = ErrorBody),
        (status = 429, description = "Too many failed logins from this address; retry after `Retry-After` seconds.", body = ErrorBody),
        (status = 503, description = "The database is unavailable (`unavailable`), or the server is checking too many passwords at once (`overloaded`, retry after `Retry-After` seconds).", body = ErrorBody),
    ),
)]
pub(super) async fn login(
    State(state): State<ApiState>,
    client: Option<Extension<ConnectInfo<SocketAddr>>>,
    ApiJson(request): ApiJson<LoginRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let address = client.map(|Extension(ConnectInfo(addr))| addr.ip());
    let session = state
        .auth
        .login(&request.username, &request.password, address)
        .await?;
    Ok(([NO_STORE], Json(SessionResponse::new(session))))
}

/// Refresh a session
///
/// Trades a refresh token for a new pair; the presented one stops working. Presenting an
/// already used refresh token revokes its whole session.
#[utoipa::path(
    post,
    path = "/auth/refresh",
    tag = TAG,
    operation_id = "refresh",
    security(),
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new pair of tokens.", body = SessionResponse),
        (status = 400, description = "Malformed body (`details.field`).", body = ErrorBody),
        (status = 401, description = "Invalid, expired, revoked or reused refresh token: log in again.", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
pub(super) async fn refresh(
    State(state): State<ApiState>,
    ApiJson(request): ApiJson<RefreshRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let session = state.auth.refresh(&request.refresh_token).await?;
    Ok(([NO_STORE], Json(SessionResponse::new(session))))
}

/// Log out
///
/// Ends the session of the access token sent: it and its refresh token stop working.
#[utoipa::path(
    post,
    path = "/auth/logout",
    tag = TAG,
    operation_id = "logout",
    responses(
        (status = 204, description = "The session is over."),
        (status = 400, description = "Sent with an API token, which has no session.", body = ErrorBody),
    ),
)]
pub(super) async fn logout(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
) -> Result<StatusCode, ApiError> {
    state.auth.logout(&principal).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Who the token belongs to.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct Me {
    user: User,
    /// The role requests carry: the user's, or the token's when lower.
    effective_role: Role,
    /// `session` or `apiToken`.
    credential: &'static str,
    /// The API token's id, when the credential is one.
    token_id: Option<String>,
}

/// Who am I
///
/// The user behind the token, and the role requests made with it carry.
#[utoipa::path(
    get,
    path = "/auth/me",
    tag = TAG,
    operation_id = "me",
    responses((status = 200, description = "The token's user.", body = Me)),
)]
pub(super) async fn me(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Me>, ApiError> {
    let user = state.auth.get_user(&principal.user_id).await?;
    let (credential, token_id) = match principal.via {
        Credential::Session { .. } => ("session", None),
        Credential::ApiToken { token_id } => ("apiToken", Some(token_id)),
    };
    Ok(Json(Me {
        user,
        effective_role: principal.role,
        credential,
        token_id,
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct PasswordChange {
    #[schema(format = Password)]
    current_password: String,
    #[schema(format = Password)]
    new_password: String,
}

/// Change your password
///
/// Needs the current password; ends every session of yours, this one included.
#[utoipa::path(
    post,
    path = "/auth/password",
    tag = TAG,
    operation_id = "changePassword",
    request_body = PasswordChange,
    responses(
        (status = 204, description = "Changed; log in again."),
        (status = 400, description = "Malformed body (`details.field`).", body = ErrorBody),
        (status = 403, description = "`currentPassword` is wrong.", body = ErrorBody),
        (status = 422, description = "The new password is too short or too long (`details.field`).", body = ErrorBody),
        (status = 429, description = "Too many wrong `currentPassword` guesses; retry after `Retry-After` seconds.", body = ErrorBody),
    ),
)]
pub(super) async fn change_password(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    ApiJson(change): ApiJson<PasswordChange>,
) -> Result<StatusCode, ApiError> {
    state
        .auth
        .change_own_password(&principal, &change.current_password, change.new_password)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- users ---------------------------------------------------------------------------

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateUser {
    username: String,
    #[schema(format = Password)]
    password: String,
    role: Role,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct UpdateUser {
    #[serde(default)]
    role: Option<Role>,
    #[serde(default)]
    #[schema(format = Password)]
    password: Option<String>,
    #[serde(default)]
    disabled: Option<bool>,
}

/// A list without pages (users and tokens are few).
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Items<T> {
    items: Vec<T>,
}

/// List users
#[utoipa::path(
    get,
    path = "/users",
    tag = TAG,
    operation_id = "listUsers",
    responses((status = 200, description = "Every user, by name.", body = Items<User>)),
)]
pub(super) async fn list_users(
    State(state): State<ApiState>,
) -> Result<Json<Items<User>>, ApiError> {
    Ok(Json(Items {
        items: state.auth.list_users().await?,
    }))
}

/// Create a user
#[utoipa::path(
    post,
    path = "/users",
    tag = TAG,
    operation_id = "createUser",
    request_body = CreateUser,
    responses(
        (status = 201, description = "Created.", body = User),
        (status = 400, description = "Malformed body or username (`details.field`).", body = ErrorBody),
        (status = 409, description = "The username is taken.", body = ErrorBody),
        (status = 422, description = "The password is too short or too long (`details.field`).", body = ErrorBody),
    ),
)]
pub(super) async fn create_user(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    ApiJson(request): ApiJson<CreateUser>,
) -> Result<impl IntoResponse, ApiError> {
    let user = state
        .auth
        .create_user(
            &principal.actor(),
            NewUser {
                username: request.username,
                password: request.password,
                role: request.role,
            },
        )
        .await?;
    let location = format!("/api/v1/users/{}", user.id);
    Ok((StatusCode::CREATED, [(LOCATION, location)], Json(user)))
}

/// Show a user
#[utoipa::path(
    get,
    path = "/users/{id}",
    tag = TAG,
    operation_id = "getUser",
    params(("id" = String, Path, description = "The user's id.")),
    responses(
        (status = 200, description = "The user.", body = User),
        (status = 404, description = "No such user.", body = ErrorBody),
    ),
)]
pub(super) async fn show_user(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<User>, ApiError> {
    Ok(Json(state.auth.get_user(&id).await?))
}

/// Change a user
///
/// Role, password or disabled state. A new password or disabling ends the user's
/// sessions. The last enabled admin cannot be demoted or disabled.
#[utoipa::path(
    patch,
    path = "/users/{id}",
    tag = TAG,
    operation_id = "updateUser",
    params(("id" = String, Path, description = "The user's id.")),
    request_body = UpdateUser,
    responses(
        (status = 200, description = "The changed user.", body = User),
        (status = 400, description = "Malformed body (`details.field`).", body = ErrorBody),
        (status = 404, description = "No such user.", body = ErrorBody),
        (status = 409, description = "The change would leave no enabled admin.", body = ErrorBody),
        (status = 422, description = "The password is too short or too long (`details.field`).", body = ErrorBody),
    ),
)]
pub(super) async fn update_user(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<UpdateUser>,
) -> Result<Json<User>, ApiError> {
    let patch = UserPatch {
        role: request.role,
        password: request.password,
        disabled: request.disabled,
    };
    Ok(Json(
        state
            .auth
            .update_user(&principal.actor(), &id, patch)
            .await?,
    ))
}

/// Delete a user
///
/// With their sessions and API tokens. The last enabled admin cannot be deleted.
#[utoipa::path(
    delete,
    path = "/users/{id}",
    tag = TAG,
    operation_id = "deleteUser",
    params(("id" = String, Path, description = "The user's id.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "No such user.", body = ErrorBody),
        (status = 409, description = "The last enabled admin.", body = ErrorBody),
    ),
)]
pub(super) async fn delete_user(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.auth.delete_user(&principal.actor(), &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- API tokens ----------------------------------------------------------------------

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct CreateToken {
    name: String,
    /// At most the creator's own role.
    role: Role,
    /// When the token stops working (ms since the epoch); never, if absent.
    #[serde(default)]
    expires_at: Option<Millis>,
}

/// A new token and its secret, shown this once: store it now.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct CreatedToken {
    token: ApiToken,
    secret: String,
}

/// Create an API token
///
/// For CI and scripts. The secret is in this response only; only its hash is kept. The
/// role is at most your own; API tokens cannot create API tokens.
#[utoipa::path(
    post,
    path = "/tokens",
    tag = TAG,
    operation_id = "createToken",
    request_body = CreateToken,
    responses(
        (status = 201, description = "Created; store `secret` now.", body = CreatedToken),
        (status = 400, description = "Malformed body or name (`details.field`).", body = ErrorBody),
        (status = 403, description = "The role is above yours, or the request used an API token.", body = ErrorBody),
        (status = 422, description = "`expiresAt` is in the past.", body = ErrorBody),
    ),
)]
pub(super) async fn create_token(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    ApiJson(request): ApiJson<CreateToken>,
) -> Result<impl IntoResponse, ApiError> {
    let (token, secret) = state
        .auth
        .create_api_token(
            &principal,
            NewApiToken {
                name: request.name,
                role: request.role,
                expires_at: request.expires_at,
            },
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        [NO_STORE],
        Json(CreatedToken { token, secret }),
    ))
}

/// List API tokens
///
/// Yours; an admin sees everyone's. Never their secrets.
#[utoipa::path(
    get,
    path = "/tokens",
    tag = TAG,
    operation_id = "listTokens",
    responses((status = 200, description = "Tokens, newest first.", body = Items<ApiToken>)),
)]
pub(super) async fn list_tokens(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Items<ApiToken>>, ApiError> {
    Ok(Json(Items {
        items: state.auth.list_api_tokens(&principal).await?,
    }))
}

/// Revoke an API token
#[utoipa::path(
    delete,
    path = "/tokens/{id}",
    tag = TAG,
    operation_id = "revokeToken",
    params(("id" = String, Path, description = "The token's id.")),
    responses(
        (status = 204, description = "Revoked (or already was)."),
        (status = 404, description = "No such token of yours.", body = ErrorBody),
    ),
)]
pub(super) async fn revoke_token(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.auth.revoke_api_token(&principal, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- audit ---------------------------------------------------------------------------

/// The audit trail
///
/// Who changed what and when: module installs, removals, enable/disable, capability
/// approvals, user and token changes, security events. Newest first.
#[utoipa::path(
    get,
    path = "/audit",
    tag = TAG,
    operation_id = "listAudit",
    params(PageRequest),
    responses(
        (status = 200, description = "A page of entries.", body = Page<AuditEntry>),
        (status = 400, description = "A malformed `limit` (`details.field`).", body = ErrorBody),
    ),
)]
pub(super) async fn list_audit(
    State(state): State<ApiState>,
    params: Params,
) -> Result<Json<Page<AuditEntry>>, ApiError> {
    let page = params.page()?;
    Ok(Json(
        state
            .auth
            .list_audit(page.cursor.as_deref(), page.limit)
            .await?,
    ))
}
