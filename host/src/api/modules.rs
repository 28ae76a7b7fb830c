//! `/api/v1/modules`: upload (raw component bytes or a multipart field `module`), list,
//! show, versions, enable/disable, delete.

use axum::extract::multipart::MultipartError;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Request, State};
use axum::handler::Handler;
use axum::http::StatusCode;
use axum::http::header::LOCATION;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;

use super::ApiState;
use super::error::{ApiError, ErrorCode};
use super::extract::{Params, media_type, read_body, too_large};
use crate::domain::{
    Capabilities, JobSpec, Millis, ModuleRecord, ModuleStatus, ModuleVersion, Page,
};

/// Room for multipart framing (boundaries, part headers) around a module of the largest
/// accepted size.
const MULTIPART_OVERHEAD: usize = 64 * 1024;

/// Media types an upload may have, in the order the 415 message lists them.
const ACCEPTED: [&str; 3] = [
    "application/wasm",
    "application/octet-stream",
    "multipart/form-data",
];

pub(super) fn routes(max_module_bytes: usize) -> Router<ApiState> {
    let upload_limit = DefaultBodyLimit::max(max_module_bytes + MULTIPART_OVERHEAD);
    Router::new()
        .route("/modules", post(upload.layer(upload_limit)).get(list))
        .route("/modules/{name}", get(show).delete(delete))
        .route("/modules/{name}/versions", get(versions))
        .route("/modules/{name}/enable", post(enable))
        .route("/modules/{name}/disable", post(disable))
}

/// A module as clients see it: its current version flattened into the record.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ModuleView {
    name: String,
    version: String,
    status: ModuleStatus,
    description: String,
    content_hash: String,
    size_bytes: u64,
    jobs: Vec<JobSpec>,
    capabilities: Capabilities,
    uploaded_at: Millis,
    created_at: Millis,
    updated_at: Millis,
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
            capabilities: manifest.capabilities,
            uploaded_at,
            created_at: record.created_at,
            updated_at: record.updated_at,
        }
    }
}

/// One uploaded version; `current` marks the one jobs use.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct VersionView {
    version: String,
    content_hash: String,
    size_bytes: u64,
    description: String,
    jobs: Vec<JobSpec>,
    capabilities: Capabilities,
    uploaded_at: Millis,
    current: bool,
}

async fn upload(
    State(state): State<ApiState>,
    request: Request,
) -> Result<impl IntoResponse, ApiError> {
    let limit = state.services.settings.max_module_bytes;
    let wasm = module_bytes(request, limit).await?;
    let record = state.services.upload_module(wasm).await?;
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
            let mut multipart = Multipart::from_request(request, &())
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
                    let bytes = field.bytes().await.map_err(|err| multipart_error(&err, limit))?;
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
        other => Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!(
                "{}; send the component bytes with Content-Type: application/wasm (or application/octet-stream), or a multipart/form-data body with the file in a field named `module`",
                match other {
                    Some(media) => format!("a module upload cannot be `{media}`"),
                    None => "the upload has no Content-Type".to_owned(),
                }
            ),
        )
        .with_detail("accepted", ACCEPTED.to_vec())),
    }
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

async fn list(State(state): State<ApiState>) -> Result<Json<Page<ModuleView>>, ApiError> {
    let modules = state.services.list_modules().await?;
    Ok(Json(Page {
        items: modules.into_iter().map(ModuleView::from).collect(),
        next_cursor: None,
    }))
}

async fn show(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<ModuleView>, ApiError> {
    Ok(Json(state.services.get_module(&name).await?.into()))
}

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

async fn enable(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<ModuleView>, ApiError> {
    set_status(&state, &name, ModuleStatus::Enabled).await
}

async fn disable(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<ModuleView>, ApiError> {
    set_status(&state, &name, ModuleStatus::Disabled).await
}

async fn set_status(
    state: &ApiState,
    name: &str,
    status: ModuleStatus,
) -> Result<Json<ModuleView>, ApiError> {
    let record = state.services.set_module_status(name, status).await?;
    Ok(Json(record.into()))
}

async fn delete(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    params: Params,
) -> Result<StatusCode, ApiError> {
    let force = params.flag("force")?;
    state.services.delete_module(&name, force).await?;
    Ok(StatusCode::NO_CONTENT)
}
