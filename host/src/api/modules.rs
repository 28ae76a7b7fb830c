//! `/api/v1/modules`: upload (raw component bytes or a multipart field `module`, with an
//! optional publisher signature), list, show, versions, enable/disable, approval,
//! publisher keys, delete.

use std::time::Duration;

use axum::extract::multipart::MultipartError;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Request, State};
use axum::http::HeaderMap;
use axum::http::HeaderName;
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::http::header::{LOCATION, RETRY_AFTER};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use super::ApiState;
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::extract::{ApiJson, OptionalJson, Params, media_type, read_body, too_large};
use super::openapi;
use crate::domain::budget::Budget;
use crate::domain::upload::UploadRecord;
use crate::domain::{
    Capabilities, CodeApproval, Credential, JobSpec, Millis, ModuleRecord, ModuleStatus,
    ModuleVersion, Page, Principal, PublisherKey, Role, SettingSpec, Uploader,
};
use crate::services::ModuleJobs;
use crate::services::modules::ModuleUpload;
use crate::services::publishers::public_key_pem;
use crate::services::uploads::UploadState;

const TAG: &str = "modules";

/// How long an upload compiles before it is answered `202`, unless the client prefers
/// otherwise: a module of usual size is compiled, installed and answered `201` well
/// within it; an 18 MB Python component is not.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// RFC 7240's request header, and the answer saying a preference was honoured.
const PREFER: HeaderName = HeaderName::from_static("prefer");
const PREFERENCE_APPLIED: HeaderName = HeaderName::from_static("preference-applied");

/// The header a raw upload carries its publisher signature in.
const SIGNATURE_HEADER: &str = "x-runcell-signature";

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
    .routes(routes!(list_publisher_keys, pin_publisher_key))
    .routes(routes!(unpin_publisher_key))
    .routes(routes!(show_upload))
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
    /// The settings the current version's jobs read (empty when it declares none; its
    /// jobs may then have any settings).
    settings: Vec<SettingSpec>,
    /// What the current version asks to be allowed to do.
    capabilities: Capabilities,
    /// What an admin last approved (the request they reviewed). Nothing is granted by
    /// default.
    approved_capabilities: Capabilities,
    /// The outbound hosts the current version asks for and those it may reach, which an
    /// admin may have narrowed or extended.
    outbound_hosts: OutboundHostsView,
    /// Caps on what the module may use per UTC hour or day (their current windows are at
    /// `GET /api/v1/modules/{name}/budgets`).
    budgets: Vec<Budget>,
    /// Why the current version does not run yet, one item each: `new code by operator
    /// `ci`` when nobody approved its bytes (an operator's upload without a valid
    /// signature by a pinned publisher key), then what it asks for beyond the approval.
    /// While this is not empty its jobs do not run and its routes are not served (an
    /// admin approves with `POST .../capabilities/approve`).
    awaiting_approval: Vec<String>,
    /// Who uploaded the current version; `null` for versions uploaded before this was
    /// recorded.
    uploaded_by: Option<Uploader>,
    /// Who approved the current version's code; `null` while it waits for an admin.
    code_approval: Option<CodeApproval>,
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

/// An installed module, and the jobs `createJobs=true` made for it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = InstalledModule)]
struct InstalledView {
    #[serde(flatten)]
    module: ModuleView,
    /// With `createJobs=true` only: the jobs created, and the module's jobs left out.
    #[serde(skip_serializing_if = "Option::is_none")]
    defined_jobs: Option<ModuleJobs>,
}

/// Requested against granted outbound hosts.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = OutboundHosts)]
struct OutboundHostsView {
    /// What the current version's manifest asks for (`capabilities.outboundHosts`).
    requested: Vec<String>,
    /// What its runs and routes may reach: the request, or what an admin granted instead.
    /// A request to any other host is denied.
    granted: Vec<String>,
    /// Granted hosts the module does not ask for: an operator's extension.
    extensions: Vec<String>,
    /// Requested hosts the grant does not cover in full: withheld by an admin's
    /// narrowing (a request for `*` narrowed to a few hosts is withheld, those granted).
    withheld: Vec<String>,
}

impl From<&ModuleRecord> for OutboundHostsView {
    fn from(record: &ModuleRecord) -> Self {
        Self {
            requested: record.current.manifest.capabilities.outbound_hosts.clone(),
            granted: record.granted_hosts().to_vec(),
            extensions: record.outbound_extensions(),
            withheld: record.withheld_hosts(),
        }
    }
}

/// A multipart upload: the component in the field `module`. Only the OpenAPI document
/// uses this type; the handler reads the fields itself (see [`module_upload`]).
#[derive(ToSchema)]
#[schema(
    description = "A multipart upload: the component in the field `module`, and optionally its publisher signature in the field `signature`."
)]
#[expect(dead_code, reason = "describes the multipart upload form; never built")]
struct ModuleForm {
    /// The component (`.wasm` file).
    #[schema(value_type = String, content_media_type = "application/wasm")]
    module: Vec<u8>,
    /// A publisher signature, `ed25519:<key id>:<base64>` (as `runcell sign` prints it),
    /// as the `X-Runcell-Signature` header carries it for a raw upload.
    signature: Option<String>,
}

impl From<ModuleRecord> for ModuleView {
    fn from(record: ModuleRecord) -> Self {
        let awaiting_approval = record.awaiting_approval();
        let outbound_hosts = OutboundHostsView::from(&record);
        let ModuleVersion {
            version,
            content_hash,
            size_bytes,
            manifest,
            uploaded_at,
            uploaded_by,
            approval,
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
            settings: manifest.settings,
            awaiting_approval,
            uploaded_by,
            code_approval: approval,
            capabilities: manifest.capabilities,
            approved_capabilities: record.approved,
            outbound_hosts,
            budgets: record.budgets,
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
    /// The settings its jobs read.
    settings: Vec<SettingSpec>,
    capabilities: Capabilities,
    /// Milliseconds since the Unix epoch.
    #[schema(value_type = i64)]
    uploaded_at: Millis,
    /// Who uploaded it; `null` for versions uploaded before this was recorded.
    uploaded_by: Option<Uploader>,
    /// The publisher key id the upload's signature named, if it carried one.
    signed_by: Option<String>,
    /// Who approved its code; `null` if it would wait for an admin.
    code_approval: Option<CodeApproval>,
    /// Whether this is the version jobs run.
    current: bool,
}

/// Upload a module
///
/// Installs a module, or a new version of an installed one, which becomes its current
/// version. The server compiles the component and reads its manifest first; a file it
/// cannot run is refused with `invalid_module`, saying why. Compiling a large component
/// (an 18 MB Python module) takes seconds: the upload then answers `202` and goes on in
/// the background, followed at `/module-uploads/{id}`; the server compiles one module at
/// a time (`--max-compilations`), so a burst of uploads queues rather than exhausting
/// memory.
///
/// An approval binds to code: a version uploaded by an operator (or an operator's API
/// token) waits for an admin, whatever it asks for (`awaitingApproval` says why), unless
/// its bytes were approved before or the upload carries a valid signature by a publisher
/// key pinned to the module (`X-Runcell-Signature` header, or the multipart field
/// `signature`) and it asks for nothing an admin has not decided on. An admin's upload
/// approves its code; `approve=true` also approves what it asks for, as an approval
/// without a body does (an outbound grant an admin narrowed or extended stays so).
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
    params(
        ("approve" = Option<bool>, Query, description = "Also approve the capabilities the module asks for (admins only; default `false`)."),
        ("createJobs" = Option<bool>, Query, description = "Also create a job for each job the module offers, named `{module}.{job}`, on the module's default schedule (default `false`). A module job some job already runs is left out, as is one with a required setting that has no value; `definedJobs.skipped` says why. The jobs run once the module is approved."),
        ("x-runcell-signature" = Option<String>, Header, description = "A publisher signature over the uploaded file, `ed25519:<key id>:<base64>` (as `runcell sign --key <file> module.wasm` prints it)."),
        ("prefer" = Option<String>, Header, description = "`respond-async`: answer `202` at once and compile in the background (what a client showing progress wants); `wait=N`: answer `202` after N seconds if not installed by then. Without it the upload answers `202` after 10 s."),
    ),
    responses(
        (status = 201, description = "Installed; `Location` is the module's URL. `awaitingApproval` says whether it waits for an admin.", body = InstalledView,
            headers(("location" = String, description = "`/api/v1/modules/{name}`"))),
        (status = 202, description = "Still compiling (a large module, or `Prefer: respond-async`): `Location` is where to follow it (`GET`), until it is `INSTALLED` (with what `201` answers) or `FAILED` (with the error). Meanwhile the module's current version, if it has one, stays current.", body = UploadView,
            headers(("location" = String, description = "`/api/v1/module-uploads/{id}`"))),
        (status = 400, description = "A malformed multipart body, one without a `module` field, or a malformed signature (`details.field` is `signature`).", body = ErrorBody),
        (status = 403, description = "`approve=true` from someone who is not an admin.", body = ErrorBody),
        (status = 413, description = "The file is larger than the server accepts (`details.limitBytes`).", body = ErrorBody),
        (status = 415, description = "Not one of the accepted media types (`details.accepted`).", body = ErrorBody),
        (status = 422, description = "`invalid_module`: not a component Runcell can run; the message says why. `unprocessable` with `details.field` `signature`: the signature names a key pinned to the module but does not verify for this file.", body = ErrorBody),
        (status = 429, description = "This node is installing as many uploads as it may (8); retry after `Retry-After` seconds.", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn upload(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    params: Params,
    request: Request,
) -> Result<Response, ApiError> {
    let approve = params.flag("approve")?;
    let create_jobs = params.flag("createJobs")?;
    let limit = state.services.settings.max_module_bytes;
    let wait = answer_within(request.headers());
    // Read before refusing: answering while the client still sends makes it see a broken
    // connection instead of the answer.
    let header_signature = signature_header(request.headers())?;
    let (wasm, form_signature) = module_upload(request, limit).await?;
    if approve && principal.role != Role::Admin {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "approve: only an admin may approve capabilities; upload without `approve=true` and ask one",
        ));
    }
    state.services.check_module_file(&wasm)?;
    let (tracked, slot) = state
        .services
        .begin_upload(&wasm, &principal.actor())
        .await?;
    let install = Install {
        approve,
        create_jobs,
        signature: form_signature.or(header_signature),
    };
    // The installation goes on when the client stops waiting (or hangs up): it is
    // followed at `/module-uploads/{id}` from any node.
    let (answer, answered) = tokio::sync::oneshot::channel();
    let task_state = state.clone();
    let upload_id = tracked.id.clone();
    tokio::spawn(async move {
        let outcome = install.run(&task_state, &principal, wasm).await;
        let (status, body) = match &outcome {
            Ok(installed) => (
                StatusCode::CREATED,
                serde_json::to_value(installed).expect("an installed module serializes"),
            ),
            Err(err) => err.status_and_body(),
        };
        task_state
            .services
            .finish_upload(&upload_id, status.as_u16(), body)
            .await;
        drop(slot);
        if let Err(Err(err)) = answer.send(outcome) {
            err.log_unanswered("module upload");
        }
    });
    // A preference for `respond-async` is honoured whatever the timing, so a client
    // written for `202` always meets it.
    let answered = if wait.is_zero() {
        None
    } else {
        tokio::time::timeout(wait, answered).await.ok()
    };
    match answered {
        Some(Ok(outcome)) => {
            let installed = outcome?;
            let location = format!("/api/v1/modules/{}", installed.module.name);
            Ok((StatusCode::CREATED, [(LOCATION, location)], Json(installed)).into_response())
        }
        Some(Err(_)) => Err(ApiError::internal(
            "the upload's installation task ended without an outcome",
        )),
        None => {
            let location = format!("/api/v1/module-uploads/{}", tracked.id);
            let view = UploadView::of(tracked, UploadState::Compiling);
            let mut response = (
                StatusCode::ACCEPTED,
                [(LOCATION, location), (RETRY_AFTER, "1".to_owned())],
                Json(view),
            )
                .into_response();
            if wait.is_zero() {
                response.headers_mut().insert(
                    PREFERENCE_APPLIED,
                    HeaderValue::from_static("respond-async"),
                );
            }
            Ok(response)
        }
    }
}

/// How long an upload may compile before it is answered `202` (and followed at
/// `/module-uploads/{id}`): at once if the client prefers `respond-async` (RFC 7240),
/// its `wait=N` if shorter than [`ANSWER_WITHIN`], else that.
fn answer_within(headers: &HeaderMap) -> Duration {
    let mut wait = ANSWER_WITHIN;
    let preferences = headers
        .get_all(PREFER)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|preference| preference.split(';').next().unwrap_or_default().trim());
    for preference in preferences {
        if preference.eq_ignore_ascii_case("respond-async") {
            return Duration::ZERO;
        }
        if let Some(seconds) = preference
            .strip_prefix("wait=")
            .and_then(|seconds| seconds.trim().parse::<u64>().ok())
        {
            wait = wait.min(Duration::from_secs(seconds));
        }
    }
    wait
}

/// What an upload does once its file is known to be worth compiling.
struct Install {
    approve: bool,
    create_jobs: bool,
    signature: Option<String>,
}

impl Install {
    async fn run(
        self,
        state: &ApiState,
        principal: &Principal,
        wasm: Vec<u8>,
    ) -> Result<InstalledView, ApiError> {
        let upload = ModuleUpload {
            uploader: uploader(state, principal).await,
            actor: principal.actor(),
            signature: self.signature,
        };
        let mut record = state.services.upload_module_as(wasm, upload).await?;
        state
            .auth
            .audit(
                &principal.actor(),
                "module.install",
                &record.name,
                json!({
                    "version": record.current.version,
                    "contentHash": record.current.content_hash,
                    "signedBy": record.current.signed_by,
                    "codeApprovedBy": record.current.approval.as_ref().map(|a| &a.by),
                }),
            )
            .await;
        if self.approve {
            let hash = record.current.content_hash.clone();
            record = approve_and_audit(state, principal, &record.name, Some(&hash), None).await?;
        }
        let defined_jobs = if self.create_jobs {
            Some(state.services.create_module_jobs(&record.name).await?)
        } else {
            None
        };
        Ok(InstalledView {
            module: ModuleView::from(record),
            defined_jobs,
        })
    }
}

/// Follow an upload
///
/// Where an upload answered `202` stands: `COMPILING`, then `INSTALLED` with the module
/// as the upload answers it when done in time, or `FAILED` with the error it would have
/// answered (and that error's HTTP status). Uploads are remembered for a day.
#[utoipa::path(
    get,
    path = "/module-uploads/{id}",
    tag = TAG,
    operation_id = "getModuleUpload",
    params(("id" = String, Path, description = "The upload's id, from the `202` answer's `Location`.")),
    responses(
        (status = 200, description = "The upload.", body = UploadView),
        (status = 404, description = "No such upload (or made more than a day ago).", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn show_upload(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<UploadView>, ApiError> {
    let (upload, upload_state) = state.services.upload(&id).await?;
    Ok(Json(UploadView::of(upload, upload_state)))
}

/// Where an upload stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum UploadStatus {
    Compiling,
    Installed,
    Failed,
}

/// An upload followed from its `202` answer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = ModuleUpload)]
struct UploadView {
    id: String,
    status: UploadStatus,
    /// SHA-256 of the uploaded file, hex.
    content_hash: String,
    size_bytes: u64,
    /// Who uploaded it (a username, or `user (token name)`).
    uploaded_by: String,
    created_at: Millis,
    /// When it was installed or failed.
    finished_at: Option<Millis>,
    /// `INSTALLED`: the module, as the upload answers `201`.
    #[schema(value_type = Option<InstalledView>)]
    module: Option<serde_json::Value>,
    /// `FAILED`: the error the upload would have answered.
    #[schema(value_type = Option<ErrorBody>)]
    error: Option<serde_json::Value>,
    /// `FAILED`: the HTTP status the upload would have answered with.
    http_status: Option<u16>,
}

impl UploadView {
    fn of(upload: UploadRecord, state: UploadState) -> Self {
        let (status, finished_at, module, error, http_status) = match state {
            UploadState::Compiling => (UploadStatus::Compiling, None, None, None, None),
            UploadState::Finished(outcome) if outcome.installed() => (
                UploadStatus::Installed,
                Some(outcome.at),
                Some(outcome.body),
                None,
                None,
            ),
            UploadState::Finished(outcome) => (
                UploadStatus::Failed,
                Some(outcome.at),
                None,
                Some(outcome.body),
                Some(outcome.http_status),
            ),
            UploadState::Abandoned { node_id } => {
                let (status, body) = ApiError::new(
                    ErrorCode::Unavailable,
                    format!(
                        "node `{node_id}` stopped while compiling this upload, so it was not installed; upload the file again"
                    ),
                )
                .status_and_body();
                (
                    UploadStatus::Failed,
                    None,
                    None,
                    Some(body),
                    Some(status.as_u16()),
                )
            }
        };
        Self {
            id: upload.id,
            status,
            content_hash: upload.content_hash,
            size_bytes: upload.size_bytes,
            uploaded_by: upload.uploaded_by,
            created_at: upload.created_at,
            finished_at,
            module,
            error,
            http_status,
        }
    }
}

/// Who uploads, as a module version records them: the token's name when a token was used
/// (its id if the name cannot be read now).
async fn uploader(state: &ApiState, principal: &Principal) -> Uploader {
    let token = match &principal.via {
        Credential::Session { .. } => None,
        Credential::ApiToken { token_id } => Some(
            state
                .auth
                .list_api_tokens(principal)
                .await
                .ok()
                .and_then(|tokens| tokens.into_iter().find(|t| &t.id == token_id))
                .map_or_else(|| token_id.clone(), |t| t.name),
        ),
    };
    Uploader {
        username: principal.username.clone(),
        role: principal.role,
        token,
    }
}

/// The signature a raw upload carries in its header, if any.
fn signature_header(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    headers
        .get(SIGNATURE_HEADER)
        .map(|value| {
            value.to_str().map(str::to_owned).map_err(|_| {
                ApiError::field(
                    ErrorCode::InvalidField,
                    "signature",
                    "signature: the X-Runcell-Signature header is not ASCII text",
                )
            })
        })
        .transpose()
}

/// The component bytes of an upload, from a raw body or the multipart field `module`,
/// and the signature in the multipart field `signature`, if there is one.
async fn module_upload(
    request: Request,
    limit: usize,
) -> Result<(Vec<u8>, Option<String>), ApiError> {
    match media_type(request.headers()).as_deref() {
        Some("application/wasm" | "application/octet-stream") => {
            let body = read_body(request, &(), limit + MULTIPART_OVERHEAD).await?;
            if body.len() > limit {
                return Err(too_large(limit));
            }
            Ok((body.to_vec(), None))
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
            let (mut module, mut signature) = (None, None);
            while let Some(field) = multipart
                .next_field()
                .await
                .map_err(|err| multipart_error(&err, limit))?
            {
                match field.name() {
                    Some("module") if module.is_none() => {
                        let bytes = field
                            .bytes()
                            .await
                            .map_err(|err| multipart_error(&err, limit))?;
                        if bytes.len() > limit {
                            return Err(too_large(limit));
                        }
                        module = Some(bytes.to_vec());
                    }
                    Some("signature") if signature.is_none() => {
                        let text = field
                            .text()
                            .await
                            .map_err(|err| multipart_error(&err, limit))?;
                        signature = Some(text);
                    }
                    _ => {}
                }
            }
            let module = module.ok_or_else(|| {
                ApiError::field(
                    ErrorCode::InvalidField,
                    "module",
                    "module: the multipart body has no field named `module`; put the .wasm file in it",
                )
            })?;
            Ok((module, signature))
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
            settings: version.manifest.settings,
            capabilities: version.manifest.capabilities,
            uploaded_at: version.uploaded_at,
            uploaded_by: version.uploaded_by,
            signed_by: version.signed_by,
            code_approval: version.approval,
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

/// What an admin grants with an approval.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ApproveRequest {
    /// The outbound hosts the module may reach from now on, in the manifest's syntax
    /// (`api.example.com`, `*.example.com`, `*`, an optional `:port`): fewer than it asks
    /// for (narrowing: a request to a host left out is denied), or hosts it does not ask
    /// for (an operator's extension). Absent: what it asks for, keeping the hosts of a
    /// grant an admin narrowed or extended before.
    outbound_hosts: Option<Vec<String>>,
}

/// Approve a module's current version
///
/// Approves the module's current version: its code (its content hash) and what it asks
/// for (outbound hosts, event topics, key-value, routes). Its jobs run from now on, and
/// so do those of later versions whose code is approved (an admin's upload, the same
/// bytes again, or a valid signature by a pinned publisher key) and that ask for nothing
/// the admin has not decided on. Pass `contentHash` to approve only the version you
/// looked at.
///
/// The body may grant other outbound hosts than the module asks for: narrowed (a
/// monitor asking for `*` narrowed to the hosts it is configured to watch) or extended
/// (hosts it does not ask for). A later version asking only for hosts the admin has
/// decided on (requested, granted or withheld) runs under the same grant; one asking
/// for a host never decided on waits for an approval. `outboundHosts` in the answer
/// shows requested against granted. Admins only; recorded in the audit trail.
#[utoipa::path(
    post,
    path = "/modules/{name}/capabilities/approve",
    tag = TAG,
    operation_id = "approveModuleCapabilities",
    params(
        ("name" = String, Path, description = "The module's name."),
        ("contentHash" = Option<String>, Query, description = "Approve only if this is still the current version's content hash."),
    ),
    request_body(content = Option<ApproveRequest>, description = "Optional: without it (or without `outboundHosts`), the module may reach what it asks for, and a grant an admin narrowed or extended before keeps its hosts."),
    responses(
        (status = 200, description = "The module, its current version approved.", body = ModuleView),
        (status = 400, description = "Malformed JSON or an unknown field.", body = ErrorBody),
        (status = 403, description = "Not an admin.", body = ErrorBody),
        (status = 404, description = "No module by that name.", body = ErrorBody),
        (status = 409, description = "Another version became current (than `contentHash`, or while approving); look again.", body = ErrorBody),
        (status = 415, description = "A body not declared `application/json`.", body = ErrorBody),
        (status = 422, description = "An entry of `outboundHosts` is not a host pattern (`details.field` is `outboundHosts`; the message names the entry).", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn approve(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    params: Params,
    OptionalJson(request): OptionalJson<ApproveRequest>,
) -> Result<Json<ModuleView>, ApiError> {
    let content_hash = params.text("contentHash");
    let outbound_hosts = request.unwrap_or_default().outbound_hosts;
    Ok(Json(
        approve_and_audit(&state, &principal, &name, content_hash, outbound_hosts)
            .await?
            .into(),
    ))
}

async fn approve_and_audit(
    state: &ApiState,
    principal: &Principal,
    name: &str,
    content_hash: Option<&str>,
    outbound_hosts: Option<Vec<String>>,
) -> Result<ModuleRecord, ApiError> {
    let record = state
        .services
        .approve_module(name, content_hash, outbound_hosts, &principal.actor())
        .await?;
    state
        .auth
        .audit(
            &principal.actor(),
            "module.capabilities.approve",
            name,
            json!({
                "version": record.current.version,
                "contentHash": record.current.content_hash,
                "capabilities": record.approved,
                "grantedOutboundHosts": record.granted_hosts(),
                "outboundExtensions": record.outbound_extensions(),
                "withheldOutboundHosts": record.withheld_hosts(),
            }),
        )
        .await;
    Ok(record)
}

/// A publisher key pinned to a module.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = PublisherKey)]
struct PublisherKeyView {
    /// The first 16 hex digits of the SHA-256 of the 32-byte key: what a signature names.
    key_id: String,
    /// The Ed25519 public key, PEM (SubjectPublicKeyInfo).
    public_key: String,
    comment: String,
    /// The admin who pinned it.
    pinned_by: String,
    /// Milliseconds since the Unix epoch.
    #[schema(value_type = i64)]
    pinned_at: Millis,
}

impl From<PublisherKey> for PublisherKeyView {
    fn from(key: PublisherKey) -> Self {
        Self {
            public_key: public_key_pem(&key.public_key),
            key_id: key.id,
            comment: key.comment,
            pinned_by: key.pinned_by,
            pinned_at: key.pinned_at,
        }
    }
}

/// A key to pin.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PinKey {
    /// An Ed25519 public key: PEM (`-----BEGIN PUBLIC KEY-----`, as `runcell keygen` and
    /// `openssl pkey -pubout` write it) or the base64 of its 32 bytes.
    public_key: String,
    /// What the key is for (e.g. `release pipeline`); shown in listings.
    #[serde(default)]
    comment: String,
}

/// List a module's publisher keys
///
/// The Ed25519 keys whose signatures let a new version keep the module's approval.
#[utoipa::path(
    get,
    path = "/modules/{name}/publisher-keys",
    tag = TAG,
    operation_id = "listPublisherKeys",
    params(("name" = String, Path, description = "The module's name.")),
    responses(
        (status = 200, description = "The pinned keys, oldest first.", body = Page<PublisherKeyView>),
        (status = 404, description = "No module by that name.", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn list_publisher_keys(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Page<PublisherKeyView>>, ApiError> {
    let keys = state.services.publisher_keys(&name).await?;
    Ok(Json(Page {
        items: keys.into_iter().map(PublisherKeyView::from).collect(),
        next_cursor: None,
    }))
}

/// Pin a publisher key to a module
///
/// A new version uploaded with a valid signature by this key (`runcell sign`) keeps the
/// module's approval as long as it asks for no more than was approved: a CI pipeline
/// holding the private key deploys without waiting for an admin. Pinning a key already
/// pinned updates its comment. Admins only; recorded in the audit trail.
#[utoipa::path(
    post,
    path = "/modules/{name}/publisher-keys",
    tag = TAG,
    operation_id = "pinPublisherKey",
    params(("name" = String, Path, description = "The module's name.")),
    request_body = PinKey,
    responses(
        (status = 200, description = "The key, pinned.", body = PublisherKeyView),
        (status = 400, description = "`publicKey` is not an Ed25519 public key.", body = ErrorBody),
        (status = 403, description = "Not an admin.", body = ErrorBody),
        (status = 404, description = "No module by that name.", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn pin_publisher_key(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    ApiJson(pin): ApiJson<PinKey>,
) -> Result<Json<PublisherKeyView>, ApiError> {
    let key = state
        .services
        .pin_publisher_key(&name, &pin.public_key, &pin.comment, &principal.actor())
        .await?;
    state
        .auth
        .audit(
            &principal.actor(),
            "module.publisher_key.pin",
            &name,
            json!({"keyId": key.id, "comment": key.comment}),
        )
        .await;
    Ok(Json(key.into()))
}

/// Unpin a publisher key
///
/// Uploads signed by the key no longer keep the approval, and the versions its
/// signatures approved wait for an admin again (a key removed because it leaked must not
/// leave what it signed running). Admins only; recorded in the audit trail.
#[utoipa::path(
    delete,
    path = "/modules/{name}/publisher-keys/{id}",
    tag = TAG,
    operation_id = "unpinPublisherKey",
    params(
        ("name" = String, Path, description = "The module's name."),
        ("id" = String, Path, description = "The key id (16 hex digits)."),
    ),
    responses(
        (status = 204, description = "Unpinned."),
        (status = 403, description = "Not an admin.", body = ErrorBody),
        (status = 404, description = "No module by that name, or no such key pinned to it.", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn unpin_publisher_key(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path((name, key_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.services.unpin_publisher_key(&name, &key_id).await?;
    state
        .auth
        .audit(
            &principal.actor(),
            "module.publisher_key.unpin",
            &name,
            json!({"keyId": key_id}),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn preferring(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(PREFER, value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn an_upload_waits_as_long_as_its_client_prefers_up_to_the_bound() {
        assert_eq!(answer_within(&preferring(&[])), ANSWER_WITHIN);
        assert_eq!(
            answer_within(&preferring(&["respond-async"])),
            Duration::ZERO
        );
        assert_eq!(
            answer_within(&preferring(&["return=minimal, Respond-Async; x=1"])),
            Duration::ZERO
        );
        assert_eq!(
            answer_within(&preferring(&["wait=3"])),
            Duration::from_secs(3)
        );
        assert_eq!(answer_within(&preferring(&["wait=3600"])), ANSWER_WITHIN);
        assert_eq!(
            answer_within(&preferring(&["handling=lenient", "wait=0"])),
            Duration::ZERO
        );
        assert_eq!(answer_within(&preferring(&["wait=soon"])), ANSWER_WITHIN);
    }
}
