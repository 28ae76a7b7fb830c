//! `/api/v1/alerts`: alert rules, what is pending or firing now, the history of
//! transitions, silences, channels (with a test message), and the notifications sent or
//! being sent. Changes are recorded in the audit trail; a channel's signing key is never
//! shown, logged or audited (it reads `***`).

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::header::LOCATION;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ApiState;
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::extract::{ApiJson, PageRequest, Params};
use super::openapi;
use crate::domain::alert::{
    AlertRule, AlertState, Channel, ChannelKind, HistoryEntry, Notification, Silence,
    format_duration,
};
use crate::domain::window::parse_time;
use crate::domain::{Millis, Page, Principal, SECRET_MASK};
use crate::services::alerts::{ChannelDraft, ChannelPatch, RuleDraft, RulePatch, SilenceDraft};

const TAG: &str = "alerts";

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    openapi::tagged(
        TAG,
        "Alert rules over Runcell's own figures, evaluated by one node of a deployment at a \
         time every `--alert-every`, with notifications sent exactly once per transition.\n\n\
         A rule's `query` selects one number from a `source`:\n\
         - `usage`: `{source, module?, job?, measure, window}`, measure `runs`, `completed`, \
         `failed`, `timedOut`, `failureRate`, `durationP50`, `durationP95`, `durationP99`, \
         `fuel`, `memoryPeak` or `outboundRequests`, from the usage rollups;\n\
         - `metric`: `{source, module, name, labels?, agg, window}`, agg `avg`, `min`, `max`, \
         `sum`, `count` or `last`, over a module metric's matching series;\n\
         - `endpoint`: `{source, endpoint, measure, window?}`, measure `down` (consecutive \
         failed checks), `up` (1 or 0, the last check), `latencyP95` or `uptime` (percent; \
         these two need a window);\n\
         - `outbound`: `{source, module?, host?, measure, window}`, measure `requests`, \
         `errors`, `responses5xx` or `denied`; window may be `today` (since 00:00 UTC).\n\n\
         Windows are `1m` to `31d`, read by whole minutes. `condition` is `{op, value}` with \
         op one of `> >= < <= == !=`. States: `ok → pending → firing → resolved (→ ok)`; \
         `for` (default `0s`) is how long the condition must hold in `pending` before the \
         rule fires. A query with no data (no runs for a rate, no checks, no samples) keeps \
         the state as it is.\n\n\
         Each firing and resolved transition writes one notification per channel, in the \
         same transaction as the state. A webhook gets a JSON POST with `Idempotency-Key` \
         (the notification id: deduplicate by it), `X-Runcell-Timestamp` (Unix seconds) \
         and, with a secret, `X-Runcell-Signature: sha256=<hex HMAC-SHA256(secret, \
         \"<timestamp>.<body>\")>`; Slack gets `{\"text\": ...}`; an event channel \
         publishes `alert.firing` / `alert.resolved` (or its topic) with the notification \
         id as the event id. Failed sends are retried with backoff (1 s doubling to 10 min) \
         for 24 hours. While a silence covers a rule its transitions are recorded, and its \
         notifications are written `suppressed` and never sent.",
    )
    .routes(routes!(create_rule, list_rules))
    .routes(routes!(show_rule, update_rule, delete_rule))
    .routes(routes!(active))
    .routes(routes!(history))
    .routes(routes!(notifications))
    .routes(routes!(create_silence, list_silences))
    .routes(routes!(delete_silence))
    .routes(routes!(create_channel, list_channels))
    .routes(routes!(show_channel, update_channel, delete_channel))
    .routes(routes!(test_channel))
}

/// A rule as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct RuleView {
    id: String,
    name: String,
    #[schema(value_type = Object)]
    query: Value,
    #[schema(value_type = Object)]
    condition: Value,
    /// How long the condition must hold before the rule fires.
    #[serde(rename = "for")]
    for_text: String,
    /// `info`, `warning` or `critical`.
    severity: String,
    labels: BTreeMap<String, String>,
    /// Channel ids.
    channels: Vec<String>,
    description: Option<String>,
    enabled: bool,
    /// `ok`, `pending` or `firing`.
    state: String,
    /// When it entered its state (milliseconds since the Unix epoch).
    since: Millis,
    /// The number seen at its last transition.
    value: Option<f64>,
    created_at: Millis,
    updated_at: Millis,
}

impl From<AlertRule> for RuleView {
    fn from(rule: AlertRule) -> Self {
        Self {
            query: rule.query.to_json(),
            condition: rule.condition.to_json(),
            for_text: format_duration(rule.for_ms),
            severity: rule.severity.as_str().to_owned(),
            state: rule.state.as_str().to_owned(),
            id: rule.id,
            name: rule.name,
            labels: rule.labels,
            channels: rule.channels,
            description: rule.description,
            enabled: rule.enabled,
            since: rule.since,
            value: rule.value,
            created_at: rule.created_at,
            updated_at: rule.updated_at,
        }
    }
}

/// A channel as the API shows it: its key, if any, as `***`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct ChannelView {
    id: String,
    name: String,
    /// `webhook`, `slack` or `event`.
    #[serde(rename = "type")]
    kind: String,
    /// A Slack URL is itself a credential: only its scheme and host are shown.
    url: Option<String>,
    /// `***` when the channel signs its messages.
    secret: Option<String>,
    topic: Option<String>,
    created_at: Millis,
    updated_at: Millis,
}

/// A URL with only its scheme and host (and port) kept.
fn origin_only(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(parsed) => format!("{}/{SECRET_MASK}", parsed.origin().ascii_serialization()),
        Err(_) => SECRET_MASK.to_owned(),
    }
}

impl From<Channel> for ChannelView {
    fn from(channel: Channel) -> Self {
        let url = match channel.kind {
            ChannelKind::Slack => channel.url.as_deref().map(origin_only),
            _ => channel.url,
        };
        Self {
            id: channel.id,
            name: channel.name,
            kind: channel.kind.as_str().to_owned(),
            url,
            secret: channel.secret.map(|_| SECRET_MASK.to_owned()),
            topic: channel.topic,
            created_at: channel.created_at,
            updated_at: channel.updated_at,
        }
    }
}

/// What the audit trail keeps of a rule.
fn audited_rule(rule: &AlertRule) -> Value {
    json!({
        "id": rule.id,
        "query": rule.query.to_json(),
        "condition": rule.condition.to_json(),
        "for": format_duration(rule.for_ms),
        "severity": rule.severity.as_str(),
        "channels": rule.channels,
        "enabled": rule.enabled,
    })
}

/// What the audit trail keeps of a channel: never its URL (a Slack URL is a credential)
/// nor its key, only whether it has one.
fn audited_channel(channel: &Channel) -> Value {
    json!({
        "id": channel.id,
        "type": channel.kind.as_str(),
        "signed": channel.secret.is_some(),
        "topic": channel.topic,
    })
}

/// Rules and channels, listed whole.
#[derive(Debug, Serialize, ToSchema)]
struct Items<T> {
    items: Vec<T>,
}

/// Define an alert rule
#[utoipa::path(
    post,
    path = "/alerts/rules",
    tag = TAG,
    operation_id = "createAlertRule",
    request_body = RuleDraft,
    responses(
        (status = 201, description = "Created, in state `ok`.", body = RuleView,
            headers(("location" = String, description = "`/api/v1/alerts/rules/{id}`"))),
        (status = 400, description = "Malformed JSON, an unknown or missing field, a bad name or label (`details.field`).", body = ErrorBody),
        (status = 409, description = "A rule by that name exists, or there are 1,000 rules.", body = ErrorBody),
        (status = 422, description = "A query, condition, `for` or severity that does not parse, or that names a module, job, endpoint, metric or channel that does not exist (`details.field`, e.g. `query.measure`, `channels[0]`).", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn create_rule(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    ApiJson(draft): ApiJson<RuleDraft>,
) -> Result<impl IntoResponse, ApiError> {
    let rule = state.services.create_alert_rule(draft).await?;
    state
        .auth
        .audit(
            &principal.actor(),
            "alert_rule.create",
            &rule.name,
            audited_rule(&rule),
        )
        .await;
    let location = format!("/api/v1/alerts/rules/{}", rule.id);
    Ok((
        StatusCode::CREATED,
        [(LOCATION, location)],
        Json(RuleView::from(rule)),
    ))
}

/// List alert rules
#[utoipa::path(
    get,
    path = "/alerts/rules",
    tag = TAG,
    operation_id = "listAlertRules",
    responses(
        (status = 200, description = "Every rule, oldest first.", body = Items<RuleView>),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn list_rules(State(state): State<ApiState>) -> Result<Json<Items<RuleView>>, ApiError> {
    let rules = state.services.list_alert_rules().await?;
    Ok(Json(Items {
        items: rules.into_iter().map(RuleView::from).collect(),
    }))
}

/// Show an alert rule
#[utoipa::path(
    get,
    path = "/alerts/rules/{id}",
    tag = TAG,
    operation_id = "getAlertRule",
    params(("id" = String, Path, description = "The rule's id.")),
    responses(
        (status = 200, description = "The rule with its state.", body = RuleView),
        (status = 404, description = "No rule with that id.", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn show_rule(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<RuleView>, ApiError> {
    Ok(Json(state.services.get_alert_rule(&id).await?.into()))
}

/// Change an alert rule
///
/// Fields left out stay as they are; `description: null` removes it. The rule's state
/// stays: the next evaluation moves it as the changed rule says.
#[utoipa::path(
    patch,
    path = "/alerts/rules/{id}",
    tag = TAG,
    operation_id = "updateAlertRule",
    params(("id" = String, Path, description = "The rule's id.")),
    request_body = RulePatch,
    responses(
        (status = 200, description = "The rule, changed.", body = RuleView),
        (status = 400, description = "Malformed JSON or field (`details.field`).", body = ErrorBody),
        (status = 404, description = "No rule with that id.", body = ErrorBody),
        (status = 409, description = "Another rule has that name.", body = ErrorBody),
        (status = 422, description = "As for creating one (`details.field`).", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn update_rule(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<RulePatch>,
) -> Result<Json<RuleView>, ApiError> {
    let rule = state.services.update_alert_rule(&id, patch).await?;
    state
        .auth
        .audit(
            &principal.actor(),
            "alert_rule.update",
            &rule.name,
            audited_rule(&rule),
        )
        .await;
    Ok(Json(rule.into()))
}

/// Delete an alert rule
///
/// Its notifications not yet sent go with it; its history stays until retention.
#[utoipa::path(
    delete,
    path = "/alerts/rules/{id}",
    tag = TAG,
    operation_id = "deleteAlertRule",
    params(("id" = String, Path, description = "The rule's id.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "No rule with that id.", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn delete_rule(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let rule = state.services.delete_alert_rule(&id).await?;
    state
        .auth
        .audit(
            &principal.actor(),
            "alert_rule.delete",
            &rule.name,
            json!({"id": rule.id}),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// An alert that is pending or firing now.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct ActiveAlert {
    rule_id: String,
    rule: String,
    /// `pending` or `firing`.
    state: String,
    since: Millis,
    value: Option<f64>,
    severity: String,
    labels: BTreeMap<String, String>,
}

/// Alerts pending or firing now
#[utoipa::path(
    get,
    path = "/alerts",
    tag = TAG,
    operation_id = "listActiveAlerts",
    responses(
        (status = 200, description = "The enabled rules that are pending or firing.", body = Items<ActiveAlert>),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn active(State(state): State<ApiState>) -> Result<Json<Items<ActiveAlert>>, ApiError> {
    let rules = state.services.list_alert_rules().await?;
    let items = rules
        .into_iter()
        .filter(|rule| rule.enabled && rule.state != AlertState::Ok)
        .map(|rule| ActiveAlert {
            rule_id: rule.id,
            rule: rule.name,
            state: rule.state.as_str().to_owned(),
            since: rule.since,
            value: rule.value,
            severity: rule.severity.as_str().to_owned(),
            labels: rule.labels,
        })
        .collect();
    Ok(Json(Items { items }))
}

/// `from` and `to` of a listing over time.
fn time_range(params: &Params) -> Result<(Millis, Millis), ApiError> {
    let time = |name: &'static str, default: Millis| -> Result<Millis, ApiError> {
        match params.text(name) {
            Some(text) => parse_time(name, text)
                .map_err(|err| ApiError::field(ErrorCode::InvalidField, name, err.to_string())),
            None => Ok(default),
        }
    };
    let from = time("from", 0)?;
    let to = time("to", Millis::MAX)?;
    if from >= to {
        return Err(ApiError::field(
            ErrorCode::InvalidField,
            "from",
            format!("from: must be before `to` ({from} is not before {to})"),
        ));
    }
    Ok((from, to))
}

/// The history of transitions
///
/// Newest first: `pending`, `firing`, `resolved` and `cleared` (pending → ok).
#[utoipa::path(
    get,
    path = "/alerts/history",
    tag = TAG,
    operation_id = "listAlertHistory",
    params(
        ("from" = Option<String>, Query, description = "Only transitions at or after this: milliseconds since the Unix epoch or RFC 3339."),
        ("to" = Option<String>, Query, description = "Only transitions before this."),
        ("ruleId" = Option<String>, Query, description = "Only this rule's."),
        PageRequest,
    ),
    responses(
        (status = 200, description = "A page of transitions.", body = Page<HistoryEntry>),
        (status = 400, description = "A malformed or backward `from`/`to`, `cursor` or `limit` (`details.field`).", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn history(
    State(state): State<ApiState>,
    params: Params,
) -> Result<Json<Page<HistoryEntry>>, ApiError> {
    let (from, to) = time_range(&params)?;
    let page = params.page()?;
    Ok(Json(
        state
            .services
            .alert_history(
                from,
                to,
                params.text("ruleId"),
                page.cursor.as_deref(),
                page.limit,
            )
            .await?,
    ))
}

/// Notifications and their delivery attempts
#[utoipa::path(
    get,
    path = "/alerts/notifications",
    tag = TAG,
    operation_id = "listAlertNotifications",
    params(
        ("ruleId" = Option<String>, Query, description = "Only this rule's."),
        ("limit" = Option<u32>, Query, description = "At most this many, 1 to 500 (default 100)."),
    ),
    responses(
        (status = 200, description = "Newest first, each with every attempt (time, status or error).", body = Items<Notification>),
        (status = 400, description = "A malformed `limit`.", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn notifications(
    State(state): State<ApiState>,
    params: Params,
) -> Result<Json<Items<Notification>>, ApiError> {
    let limit = params.limit(100, 500)?;
    let items = state
        .services
        .alert_notifications(params.text("ruleId"), limit)
        .await?;
    Ok(Json(Items { items }))
}

/// Silence alerts
///
/// A silenced rule still changes state and is in the history; its notifications are
/// written `suppressed` and never sent.
#[utoipa::path(
    post,
    path = "/alerts/silences",
    tag = TAG,
    operation_id = "createAlertSilence",
    request_body = SilenceDraft,
    responses(
        (status = 201, description = "Created.", body = Silence),
        (status = 400, description = "Malformed JSON, or an `until` that is not a time (`details.field`).", body = ErrorBody),
        (status = 422, description = "Neither `ruleId` nor `matchers`, empty matchers, an unknown rule, or an `until` in the past (`details.field`).", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn create_silence(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    ApiJson(draft): ApiJson<SilenceDraft>,
) -> Result<(StatusCode, Json<Silence>), ApiError> {
    let silence = state
        .services
        .create_silence(draft, &principal.username)
        .await?;
    state
        .auth
        .audit(
            &principal.actor(),
            "alert_silence.create",
            &silence.id,
            json!({"ruleId": silence.rule_id, "matchers": silence.matchers, "until": silence.until, "comment": silence.comment}),
        )
        .await;
    Ok((StatusCode::CREATED, Json(silence)))
}

/// List silences
#[utoipa::path(
    get,
    path = "/alerts/silences",
    tag = TAG,
    operation_id = "listAlertSilences",
    responses(
        (status = 200, description = "Every silence, newest first; ended ones until retention prunes them.", body = Items<Silence>),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn list_silences(State(state): State<ApiState>) -> Result<Json<Items<Silence>>, ApiError> {
    Ok(Json(Items {
        items: state.services.list_silences().await?,
    }))
}

/// End a silence
#[utoipa::path(
    delete,
    path = "/alerts/silences/{id}",
    tag = TAG,
    operation_id = "deleteAlertSilence",
    params(("id" = String, Path, description = "The silence's id.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "No silence with that id.", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn delete_silence(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.services.delete_silence(&id).await?;
    state
        .auth
        .audit(&principal.actor(), "alert_silence.delete", &id, json!({}))
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Define a channel
#[utoipa::path(
    post,
    path = "/alerts/channels",
    tag = TAG,
    operation_id = "createAlertChannel",
    request_body = ChannelDraft,
    responses(
        (status = 201, description = "Created.", body = ChannelView),
        (status = 400, description = "Malformed JSON, a bad name, URL or topic (`details.field`).", body = ErrorBody),
        (status = 409, description = "A channel by that name exists.", body = ErrorBody),
        (status = 422, description = "An unknown `type`, a missing `url`, a field the type does not have, or a secret this server cannot store (`details.field`).", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn create_channel(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    ApiJson(draft): ApiJson<ChannelDraft>,
) -> Result<(StatusCode, Json<ChannelView>), ApiError> {
    let channel = state.services.create_alert_channel(draft).await?;
    state
        .auth
        .audit(
            &principal.actor(),
            "alert_channel.create",
            &channel.name,
            audited_channel(&channel),
        )
        .await;
    Ok((StatusCode::CREATED, Json(channel.into())))
}

/// List channels
#[utoipa::path(
    get,
    path = "/alerts/channels",
    tag = TAG,
    operation_id = "listAlertChannels",
    responses(
        (status = 200, description = "Every channel.", body = Items<ChannelView>),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn list_channels(
    State(state): State<ApiState>,
) -> Result<Json<Items<ChannelView>>, ApiError> {
    let channels = state.services.list_alert_channels().await?;
    Ok(Json(Items {
        items: channels.into_iter().map(ChannelView::from).collect(),
    }))
}

/// Show a channel
#[utoipa::path(
    get,
    path = "/alerts/channels/{id}",
    tag = TAG,
    operation_id = "getAlertChannel",
    params(("id" = String, Path, description = "The channel's id.")),
    responses(
        (status = 200, description = "The channel.", body = ChannelView),
        (status = 404, description = "No channel with that id.", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn show_channel(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<ChannelView>, ApiError> {
    Ok(Json(state.services.get_alert_channel(&id).await?.into()))
}

/// Change a channel
///
/// `secret: "***"` keeps the stored key; `null` removes it.
#[utoipa::path(
    patch,
    path = "/alerts/channels/{id}",
    tag = TAG,
    operation_id = "updateAlertChannel",
    params(("id" = String, Path, description = "The channel's id.")),
    request_body = ChannelPatch,
    responses(
        (status = 200, description = "The channel, changed.", body = ChannelView),
        (status = 400, description = "Malformed JSON or field (`details.field`).", body = ErrorBody),
        (status = 404, description = "No channel with that id.", body = ErrorBody),
        (status = 409, description = "Another channel has that name.", body = ErrorBody),
        (status = 422, description = "As for creating one (`details.field`).", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn update_channel(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<ChannelPatch>,
) -> Result<Json<ChannelView>, ApiError> {
    let channel = state.services.update_alert_channel(&id, patch).await?;
    state
        .auth
        .audit(
            &principal.actor(),
            "alert_channel.update",
            &channel.name,
            audited_channel(&channel),
        )
        .await;
    Ok(Json(channel.into()))
}

/// Delete a channel
#[utoipa::path(
    delete,
    path = "/alerts/channels/{id}",
    tag = TAG,
    operation_id = "deleteAlertChannel",
    params(("id" = String, Path, description = "The channel's id.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "No channel with that id.", body = ErrorBody),
        (status = 409, description = "A rule notifies it.", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn delete_channel(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let channel = state.services.delete_alert_channel(&id).await?;
    state
        .auth
        .audit(
            &principal.actor(),
            "alert_channel.delete",
            &channel.name,
            json!({"id": channel.id}),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Send a test message to a channel
///
/// Queued in the outbox and delivered like any notification (signed, retried), with
/// `kind: "test"`; an event channel publishes `alert.test` (or its topic).
#[utoipa::path(
    post,
    path = "/alerts/channels/{id}/test",
    tag = TAG,
    operation_id = "testAlertChannel",
    params(("id" = String, Path, description = "The channel's id.")),
    responses(
        (status = 202, description = "Queued; the notification as written.", body = Notification),
        (status = 404, description = "No channel with that id.", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn test_channel(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Notification>), ApiError> {
    let notification = state.services.test_alert_channel(&id).await?;
    Ok((StatusCode::ACCEPTED, Json(notification)))
}
