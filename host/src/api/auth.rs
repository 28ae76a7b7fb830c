//! `/api/v1/auth`, `/api/v1/users`, `/api/v1/tokens` and `/api/v1/audit`: logins and
//! sessions, user management, API tokens and the audit trail. Carries credentials in
//! and out; every rule about them is in [`crate::services::auth`].

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::http::header::LOCATION;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::ApiState;
use super::error::ApiError;
use super::extract::{ApiJson, Params};
use crate::domain::{ApiToken, AuditEntry, Credential, Millis, Page, Principal, Role, User};
use crate::services::auth::{NewApiToken, NewUser, Session, UserPatch};

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

pub(super) async fn login(
    State(state): State<ApiState>,
    client: Option<Extension<ConnectInfo<SocketAddr>>>,
    ApiJson(request): ApiJson<LoginRequest>,
) -> Result<Json<SessionResponse>, ApiError> {
    let address = client.map(|Extension(ConnectInfo(addr))| addr.ip());
    let session = state
        .auth
        .login(&request.username, &request.password, address)
        .await?;
    Ok(Json(SessionResponse::new(session)))
}

pub(super) async fn refresh(
    State(state): State<ApiState>,
    ApiJson(request): ApiJson<RefreshRequest>,
) -> Result<Json<SessionResponse>, ApiError> {
    let session = state.auth.refresh(&request.refresh_token).await?;
    Ok(Json(SessionResponse::new(session)))
}

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

pub(super) async fn list_users(
    State(state): State<ApiState>,
) -> Result<Json<Items<User>>, ApiError> {
    Ok(Json(Items {
        items: state.auth.list_users().await?,
    }))
}

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

pub(super) async fn show_user(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<User>, ApiError> {
    Ok(Json(state.auth.get_user(&id).await?))
}

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
    Ok((StatusCode::CREATED, Json(CreatedToken { token, secret })))
}

pub(super) async fn list_tokens(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Items<ApiToken>>, ApiError> {
    Ok(Json(Items {
        items: state.auth.list_api_tokens(&principal).await?,
    }))
}

pub(super) async fn revoke_token(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.auth.revoke_api_token(&principal, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- audit ---------------------------------------------------------------------------

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
