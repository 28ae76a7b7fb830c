//! `/api/v1/modules`: upload (raw component bytes or a multipart field `module`), list,
//! show, versions, enable/disable, delete.

use axum::extract::multipart::MultipartError;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Request, State};
use axum::http::StatusCode;
use axum::http::header::LOCATION;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use super::ApiState;
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::extract::{Params, media_type, read_body, too_large};
use super::openapi;
use crate::domain::{
    Capabilities, JobSpec, Millis, ModuleRecord, ModuleStatus, ModuleVersion, Page, Principal, Role,
};

const TAG: &str = "modules";

/// Room for multipart framing (boundaries, part headers) around a module of the largest
/// accepted size.
const MULTIPART_OVERHEAD: usize = 64 * 1024;

/// Media types an upload may have, in the order the 415 message lists them.
const ACCEPTED: [&str; 3] = [
    "application/wasm",
    "application/octet-stream",
    "multipart/form-data",
];

pub(super) fn routes(max_module_bytes: usize) -> OpenApiRouter<ApiState> {
    let upload_limit = DefaultBodyLimit::max(max_module_bytes + MULTIPART_OVERHEAD);
    openapi::tagged(
        TAG,
        "WebAssembly components and their versions. Uploading a new version of a module \
         makes it current; jobs run the current version of their module.",
    )
    .routes(routes!(upload).layer(upload_limit))
    .routes(routes!(list))
    .routes(routes!(show, delete))
    .routes(routes!(versions))
    .routes(routes!(enable))
    .routes(routes!(disable))
    .routes(routes!(approve))
}

/// A module as clients see it: its current version flattened into the record.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Module)]
pub(super) struct ModuleView {
    name: String,
    /// The current version: the one jobs run.
    version: String,
    status: ModuleStatus,
    description: String,
    /// SHA-256 of the component bytes, hex.
    content_hash: String,
    size_bytes: u64,
    /// The jobs the current version offers.
    jobs: Vec<JobSpec>,
    /// What the current version asks to be allowed to do.
    capabilities: Capabilities,
    /// What an admin approved. Nothing is granted by default.
    approved_capabilities: Capabilities,
    /// What the current version asks for beyond the approval; while this is not empty
    /// its jobs do not run (an admin approves with `POST .../capabilities/approve`).
    awaiting_approval: Vec<String>,
    /// When the current version was uploaded (milliseconds since the Unix epoch).
    #[schema(value_type = i64)]
    uploaded_at: Millis,
    /// Milliseconds since the Unix epoch.
    #[schema(value_type = i64)]
    created_at: Millis,
    /// Milliseconds since the Unix epoch.
    #[schema(value_type = i64)]
    updated_at: Millis,
}

/// A multipart upload: the component in the field `module`. Only the OpenAPI document
/// uses this type; the handler reads the field itself (see [`module_bytes`]).
#[derive(ToSchema)]
#[schema(description = "A multipart upload: the component in the field `module`.")]
#[expect(dead_code, reason = "describes the multipart upload form; never built")]
struct ModuleForm {
    /// The component (`.wasm` file).
    #[schema(value_type = String, content_media_type = "application/wasm")]
    module: Vec<u8>,
}

impl From<ModuleRecord> for ModuleView {
    fn from(record: ModuleRecord) -> Self {
        let ModuleVersion {
            version,
            content_hash,
            size_bytes,
            manifest,
            uploaded_at,
            ..
        } = record.current;
        Self {
            name: record.name,
            version,
            status: record.status,
            description: manifest.description,
            content_hash,
            size_bytes,
            jobs: manifest.jobs,
            awaiting_approval: manifest.capabilities.beyond(&record.approved),
            capabilities: manifest.capabilities,
            approved_capabilities: record.approved,
            uploaded_at,
            created_at: record.created_at,
            updated_at: record.updated_at,
        }
    }
}

/// One uploaded version; `current` marks the one jobs use.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = ModuleVersion)]
struct VersionView {
    version: String,
    /// SHA-256 of the component bytes, hex.
    content_hash: String,
    size_bytes: u64,
    description: String,
    jobs: Vec<JobSpec>,
    capabilities: Capabilities,
    /// Milliseconds since the Unix epoch.
    #[schema(value_type = i64)]
    uploaded_at: Millis,
    /// Whether this is the version jobs run.
    current: bool,
}

/// Upload a module
///
/// Installs a module, or a new version of an installed one, which becomes its current
/// version. The server compiles the component and reads its manifest first; a file it
/// cannot run is refused with `invalid_module`, saying why.
#[utoipa::path(
    post,
    path = "/modules",
    tag = TAG,
    operation_id = "uploadModule",
    request_body(
        description = "The component (`.wasm` file): the raw bytes, or a multipart form with the file in the field `module`.",
        content(
            ("application/wasm"),
            ("application/octet-stream"),
            (ModuleForm = "multipart/form-data"),
        ),
    ),
    params(("approve" = Option<bool>, Query, description = "Also approve the capabilities the module asks for (admins only; default `false`).")),
    responses(
        (status = 201, description = "Installed; `Location` is the module's URL.", body = ModuleView,
            headers(("location" = String, description = "`/api/v1/modules/{name}`"))),
        (status = 400, description = "A malformed multipart body, or one without a `module` field.", body = ErrorBody),
        (status = 413, description = "The file is larger than the server accepts (`details.limitBytes`).", body = ErrorBody),
        (status = 415, description = "Not one of the accepted media types (`details.accepted`).", body = ErrorBody),
        (status = 422, description = "`invalid_module`: not a component Runcell can run; the message says why.", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn upload(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    params: Params,
    request: Request,
) -> Result<impl IntoResponse, ApiError> {
    let approve = params.flag("approve")?;
    let limit = state.services.settings.max_module_bytes;
    // Read before refusing: answering while the client still sends makes it see a broken
    // connection instead of the answer.
    let wasm = module_bytes(request, limit).await?;
    if approve && principal.role != Role::Admin {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "approve: only an admin may approve capabilities; upload without `approve=true` and ask one",
        ));
    }
    let mut record = state.services.upload_module(wasm).await?;
    state
        .auth
        .audit(
            &principal.actor(),
            "module.install",
            &record.name,
            json!({"version": record.current.version, "contentHash": record.current.content_hash}),
        )
        .await;
    if approve {
        record = approve_and_audit(&state, &principal, &record.name).await?;
    }
    let location = format!("/api/v1/modules/{}", record.name);
    Ok((
        StatusCode::CREATED,
        [(LOCATION, location)],
        Json(ModuleView::from(record)),
    ))
}

/// The component bytes of an upload, from a raw body or the multipart field `module`.
async fn module_bytes(request: Request, limit: usize) -> Result<Vec<u8>, ApiError> {
    match media_type(request.headers()).as_deref() {
        Some("application/wasm" | "application/octet-stream") => {
            let body = read_body(request, &(), limit + MULTIPART_OVERHEAD).await?;
            if body.len() > limit {
                return Err(too_large(limit));
            }
            Ok(body.to_vec())
        }
        Some("multipart/form-data") => {
            let mut multipart =
                Multipart::from_request(request, &())
                    .await
                    .map_err(|rejection| {
                        ApiError::new(
                            ErrorCode::InvalidField,
                            format!("the multipart body is malformed: {}", rejection.body_text()),
                        )
                    })?;
            while let Some(field) = multipart
                .next_field()
                .await
                .map_err(|err| multipart_error(&err, limit))?
            {
                if field.name() == Some("module") {
                    let bytes = field
                        .bytes()
                        .await
                        .map_err(|err| multipart_error(&err, limit))?;
                    if bytes.len() > limit {
                        return Err(too_large(limit));
                    }
                    return Ok(bytes.to_vec());
                }
            }
            Err(ApiError::field(
                ErrorCode::InvalidField,
                "module",
                "module: the multipart body has no field named `module`; put the .wasm file in it",
            ))
        }
        other => {
            let refused = media_type_refusal(other);
            // Read (up to what an upload may hold) before answering: a client still
            // sending would otherwise find the connection closed under it, or reuse one
            // the server is closing, and never see why it was refused.
            let _ = read_body(request, &(), limit + MULTIPART_OVERHEAD).await;
            Err(refused)
        }
    }
}

/// Why an upload of `media` (or of no declared type) is refused.
fn media_type_refusal(media: Option<&str>) -> ApiError {
    ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!(
                "{}; send the component bytes with Content-Type: application/wasm (or application/octet-stream), or a multipart/form-data body with the file in a field named `module`",
                match media {
                    Some(media) => format!("a module upload cannot be `{media}`"),
                    None => "the upload has no Content-Type".to_owned(),
                }
            ),
        )
        .with_detail("accepted", ACCEPTED.to_vec())
}

fn multipart_error(err: &MultipartError, limit: usize) -> ApiError {
    if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
        too_large(limit)
    } else {
        ApiError::new(
            ErrorCode::InvalidField,
            format!("the multipart body is malformed: {}", err.body_text()),
        )
    }
}

/// List modules
///
/// Every installed module with its current version, by name. One page holds them all:
/// `nextCursor` is always `null`.
#[utoipa::path(
    get,
    path = "/modules",
    tag = TAG,
    operation_id = "listModules",
    responses(
        (status = 200, description = "The modules.", body = Page<ModuleView>),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn list(State(state): State<ApiState>) -> Result<Json<Page<ModuleView>>, ApiError> {
    let modules = state.services.list_modules().await?;
    Ok(Json(Page {
        items: modules.into_iter().map(ModuleView::from).collect(),
        next_cursor: None,
    }))
}

/// Show a module
#[utoipa::path(
    get,
    path = "/modules/{name}",
    tag = TAG,
    operation_id = "getModule",
    params(("name" = String, Path, description = "The module's name.")),
    responses(
        (status = 200, description = "The module.", body = ModuleView),
        (status = 404, description = "No module by that name.", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn show(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<ModuleView>, ApiError> {
    Ok(Json(state.services.get_module(&name).await?.into()))
}

/// List a module's versions
///
/// Every version ever uploaded, newest first, the current one marked. One page holds
/// them all.
#[utoipa::path(
    get,
    path = "/modules/{name}/versions",
    tag = TAG,
    operation_id = "listModuleVersions",
    params(("name" = String, Path, description = "The module's name.")),
    responses(
        (status = 200, description = "The versions.", body = Page<VersionView>),
        (status = 404, description = "No module by that name.", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn versions(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Page<VersionView>>, ApiError> {
    let current = state.services.get_module(&name).await?.current.content_hash;
    let versions = state.services.module_versions(&name).await?;
    let items = versions
        .into_iter()
        .map(|version| VersionView {
            current: version.content_hash == current,
            version: version.version,
            content_hash: version.content_hash,
            size_bytes: version.size_bytes,
            description: version.manifest.description,
            jobs: version.manifest.jobs,
            capabilities: version.manifest.capabilities,
            uploaded_at: version.uploaded_at,
        })
        .collect();
    Ok(Json(Page {
        items,
        next_cursor: None,
    }))
}

/// Enable a module
///
/// Its jobs may run again: cron and event triggers resume, manual runs are accepted.
#[utoipa::path(
    post,
    path = "/modules/{name}/enable",
    tag = TAG,
    operation_id = "enableModule",
    params(("name" = String, Path, description = "The module's name.")),
    responses(
        (status = 200, description = "The module, enabled.", body = ModuleView),
        (status = 404, description = "No module by that name.", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn enable(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Json<ModuleView>, ApiError> {
    set_status(&state, &principal, &name, ModuleStatus::Enabled).await
}

/// Disable a module
///
/// None of its jobs runs until it is enabled again; manual runs are refused with 409.
#[utoipa::path(
    post,
    path = "/modules/{name}/disable",
    tag = TAG,
    operation_id = "disableModule",
    params(("name" = String, Path, description = "The module's name.")),
    responses(
        (status = 200, description = "The module, disabled.", body = ModuleView),
        (status = 404, description = "No module by that name.", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn disable(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Json<ModuleView>, ApiError> {
    set_status(&state, &principal, &name, ModuleStatus::Disabled).await
}

async fn set_status(
    state: &ApiState,
    principal: &Principal,
    name: &str,
    status: ModuleStatus,
) -> Result<Json<ModuleView>, ApiError> {
    let record = state.services.set_module_status(name, status).await?;
    let action = match status {
        ModuleStatus::Enabled => "module.enable",
        ModuleStatus::Disabled => "module.disable",
    };
    state
        .auth
        .audit(&principal.actor(), action, name, json!({}))
        .await;
    Ok(Json(record.into()))
}

/// Approve a module's capabilities
///
/// Approves what the module's current version asks for (outbound hosts, event topics,
/// key-value, routes): its jobs run from now on, and so do those of later versions that
/// ask for no more. A version asking for more waits for another approval.
#[utoipa::path(
    post,
    path = "/modules/{name}/capabilities/approve",
    tag = TAG,
    operation_id = "approveModuleCapabilities",
    params(("name" = String, Path, description = "The module's name.")),
    responses(
        (status = 200, description = "The module, its request approved.", body = ModuleView),
        (status = 404, description = "No module by that name.", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn approve(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Json<ModuleView>, ApiError> {
    Ok(Json(
        approve_and_audit(&state, &principal, &name).await?.into(),
    ))
}

async fn approve_and_audit(
    state: &ApiState,
    principal: &Principal,
    name: &str,
) -> Result<ModuleRecord, ApiError> {
    let record = state.services.approve_module_capabilities(name).await?;
    state
        .auth
        .audit(
            &principal.actor(),
            "module.capabilities.approve",
            name,
            json!({"version": record.current.version, "capabilities": record.approved}),
        )
        .await;
    Ok(record)
}

/// Delete a module
///
/// Deletes the module and all its versions. Refused while jobs use it, unless
/// `force=true`, which deletes those jobs too.
#[utoipa::path(
    delete,
    path = "/modules/{name}",
    tag = TAG,
    operation_id = "deleteModule",
    params(
        ("name" = String, Path, description = "The module's name."),
        ("force" = Option<bool>, Query, description = "Also delete the jobs that use the module (default `false`)."),
    ),
    responses(
        (status = 204, description = "Deleted."),
        (status = 400, description = "`force` is not a boolean.", body = ErrorBody),
        (status = 404, description = "No module by that name.", body = ErrorBody),
        (status = 409, description = "Jobs use the module; the message names them.", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn delete(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    params: Params,
) -> Result<StatusCode, ApiError> {
    let force = params.flag("force")?;
    state.services.delete_module(&name, force).await?;
    state
        .auth
        .audit(
            &principal.actor(),
            "module.remove",
            &name,
            json!({"withJobs": force}),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}
