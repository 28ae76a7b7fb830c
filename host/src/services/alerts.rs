//! Alerts: rules, channels and silences as clients define them (checked here, channel
//! signing keys sealed before they are stored); [`Services::evaluate`], the one place a
//! query becomes a number; one evaluation round, which writes each transition whole
//! under the lease; and the delivery of one outbox row (signed webhook, Slack message or
//! an event on Runcell's own bus). Which node evaluates and delivers when is the
//! alerter's business (`alerter`). No message written here quotes a signing key.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::jobs::double_option;
use super::usage::UsageFilter;
use super::{ServiceError, Services};
use crate::domain::alert::{
    AlertCondition, AlertQuery, AlertRule, AlertState, Attempt, Change, Channel, ChannelKind,
    EndpointMeasure, FieldError, HistoryEntry, MAX_FOR, Notification, NotificationStatus, Op,
    OutboundMeasure, Severity, Silence, Span, Transition, UsageMeasure, format_duration,
    next_change, parse_duration, retry_delay,
};
use crate::domain::budget::{Budget, BudgetStatus};
use crate::domain::endpoint::{Endpoint, UptimeCount};
use crate::domain::metrics::Rollup;
use crate::domain::usage::RunTotals;
use crate::domain::window::{DAY, MINUTE, parse_time};
use crate::domain::{Job, Millis, SECRET_MASK, new_id, now_millis};
use crate::runtime::Probe;
use crate::store::LeaseToken;
use crate::store::alerts::{AttemptOutcome, Fence};

/// The lease whose holder evaluates rules and delivers notifications.
pub(crate) const ALERTS_LEASE: &str = "alerts";
/// How long a notification is retried before it is given up: a receiver down for a
/// day hears of what happened meanwhile from the history, not from a flood of stale
/// messages.
pub(crate) const NOTIFICATION_TTL: Millis = DAY;
/// How long one delivery may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Rules, and channels, a deployment may define: each rule is evaluated every round.
const MAX_RULES: usize = 1_000;
const MAX_CHANNELS: usize = 100;
/// Labels per rule, and the longest text of a label or a description.
const MAX_LABELS: usize = 32;
const MAX_TEXT_BYTES: usize = 1024;

/// A new rule, as a client describes it.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RuleDraft {
    /// 1 to 128 letters, digits, `-`, `_` or `.`; unique.
    pub name: String,
    /// What number the rule watches; see the tag's description for each source.
    #[schema(value_type = Object)]
    pub query: Value,
    /// `{"op": ">"|">="|"<"|"<="|"=="|"!=", "value": number}`.
    #[schema(value_type = Object)]
    pub condition: Value,
    /// How long the condition must hold before the rule fires (`0s`, `5m`, `2h`, `1d`);
    /// default `0s`.
    #[serde(default, rename = "for")]
    pub for_text: Option<String>,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// Channels notified when the rule fires and resolves, by id or name.
    pub channels: Vec<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Default `true`.
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// Changes to a rule; absent fields stay, `description: null` removes it.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RulePatch {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub query: Option<Value>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub condition: Option<Value>,
    #[serde(default, rename = "for")]
    pub for_text: Option<String>,
    #[serde(default)]
    pub severity: Option<String>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub channels: Option<Vec<String>>,
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// A new channel.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ChannelDraft {
    /// 1 to 128 letters, digits, `-`, `_` or `.`; unique.
    pub name: String,
    /// `webhook`, `slack` or `event`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Webhook and Slack: the `http(s)://` URL messages are POSTed to.
    #[serde(default)]
    pub url: Option<String>,
    /// Webhook: the key messages are signed with (HMAC-SHA256). Stored sealed, shown as
    /// `***`.
    #[serde(default)]
    pub secret: Option<String>,
    /// Event: the topic published; default `alert.firing` / `alert.resolved`.
    #[serde(default)]
    pub topic: Option<String>,
}

/// Changes to a channel (its type stays). `secret: "***"` keeps the stored key,
/// `null` removes it.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ChannelPatch {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub secret: Option<Option<String>>,
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub topic: Option<Option<String>>,
}

/// A new silence: of one rule, or of every rule whose labels include `matchers`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct SilenceDraft {
    #[serde(default)]
    pub rule_id: Option<String>,
    #[serde(default)]
    pub matchers: Option<BTreeMap<String, String>>,
    /// When it ends: milliseconds since the Unix epoch, or RFC 3339.
    #[schema(value_type = String)]
    pub until: Value,
    pub comment: String,
}

/// How the rules that watch a module's budgets are named: `budget:{module}:...`.
const BUDGET_RULE_PREFIX: &str = "budget:";

/// The rule that fires when `budget` of `module` reaches `percent` % of its limit.
fn budget_rule(
    module: &str,
    budget: &Budget,
    percent: u32,
    severity: Severity,
    now: Millis,
) -> AlertRule {
    let host = budget
        .host
        .as_deref()
        .map(|host| format!(":{host}"))
        .unwrap_or_default();
    let what = format!("{}{host}:{}", budget.metric.as_str(), budget.per.as_str());
    let labels = BTreeMap::from([
        ("module".to_owned(), module.to_owned()),
        ("budget".to_owned(), what.clone()),
    ]);
    AlertRule {
        id: new_id(),
        name: format!("{BUDGET_RULE_PREFIX}{module}:{what}:{percent}%"),
        query: AlertQuery::Budget {
            module: module.to_owned(),
            metric: budget.metric,
            host: budget.host.clone(),
            per: budget.per,
        },
        condition: AlertCondition {
            op: Op::Ge,
            value: f64::from(percent) / 100.0,
        },
        for_ms: 0,
        severity,
        labels,
        channels: Vec::new(),
        description: Some(format!(
            "Module `{module}` has used {percent} % of its {} budget for the {} ({} {}).",
            budget.metric.as_str(),
            budget.per.as_str(),
            budget.limit,
            budget.metric.as_str()
        )),
        enabled: true,
        state: AlertState::Ok,
        since: now,
        value: None,
        created_at: now,
        updated_at: now,
    }
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn check_name(name: &str) -> Result<(), ServiceError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(ServiceError::bad(
            "name",
            format!("`{name}` is not a valid name: 1 to 128 letters, digits, `-`, `_` or `.`"),
        ))
    }
}

fn unprocessable(err: FieldError) -> ServiceError {
    ServiceError::unprocessable(err.field, err.message)
}

fn check_labels(field: &str, labels: &BTreeMap<String, String>) -> Result<(), ServiceError> {
    if labels.len() > MAX_LABELS {
        return Err(ServiceError::unprocessable(
            field,
            format!("{} labels, above the limit of {MAX_LABELS}", labels.len()),
        ));
    }
    for (key, value) in labels {
        if !is_valid_name(key) || value.len() > MAX_TEXT_BYTES {
            return Err(ServiceError::bad(
                format!("{field}.{key}"),
                "a label is a name (letters, digits, `-`, `_`, `.`) and a string of at most 1024 bytes",
            ));
        }
    }
    Ok(())
}

/// A webhook or Slack URL: http or https with a host.
fn check_channel_url(url: Option<&str>) -> Result<String, ServiceError> {
    let text =
        url.ok_or_else(|| ServiceError::unprocessable("url", "is required for this type"))?;
    let parsed = url::Url::parse(text)
        .map_err(|err| ServiceError::bad("url", format!("not a URL: {err}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(ServiceError::bad(
            "url",
            "must be an http:// or https:// URL with a host",
        ));
    }
    Ok(text.to_owned())
}

/// The p-th percentile (nearest rank) of `values`, sorted in place.
fn percentile(values: &mut [f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len());
    Some(values[rank - 1])
}

/// `HMAC-SHA256(key, "<timestamp>.<body>")` in hex: the webhook signature.
pub(crate) fn signature(key: &str, timestamp: i64, body: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes());
    let tag = ring::hmac::sign(&key, format!("{timestamp}.{body}").as_bytes());
    hex::encode(tag.as_ref())
}

/// What a Slack message says of a notification.
fn slack_text(payload: &Value) -> String {
    let rule = &payload["rule"];
    let kind = payload["kind"]
        .as_str()
        .unwrap_or("alert")
        .to_ascii_uppercase();
    let mut text = format!(
        "[{kind}] {} ({})",
        rule["name"].as_str().unwrap_or("test"),
        rule["severity"].as_str().unwrap_or("info"),
    );
    if let Some(value) = payload["value"].as_f64() {
        text.push_str(&format!(": value {value}"));
    }
    if let Some(description) = rule["description"].as_str() {
        text.push_str(&format!(" — {description}"));
    }
    text
}

impl Services {
    // ---- definitions ------------------------------------------------------------------

    /// The job a query names, by id or by name.
    async fn find_job(&self, text: &str) -> Result<Option<Job>, ServiceError> {
        if let Some(job) = self.store.get_job(text).await? {
            return Ok(Some(job));
        }
        let mut cursor = None;
        loop {
            let page = self.store.list_jobs(cursor.as_deref(), 500).await?;
            if let Some(job) = page.items.into_iter().find(|job| job.name == text) {
                return Ok(Some(job));
            }
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(None),
            }
        }
    }

    /// The endpoint monitor a query names, by id or by name.
    async fn find_endpoint(&self, text: &str) -> Result<Option<Endpoint>, ServiceError> {
        if let Some(endpoint) = self.store.get_endpoint(text).await? {
            return Ok(Some(endpoint));
        }
        let mut cursor = None;
        loop {
            let page = self.store.list_endpoints(cursor.as_deref(), 500).await?;
            if let Some(endpoint) = page.items.into_iter().find(|e| e.name == text) {
                return Ok(Some(endpoint));
            }
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(None),
            }
        }
    }

    /// Refuses a query naming a module, job, endpoint or metric that does not exist.
    async fn check_query_references(&self, query: &AlertQuery) -> Result<(), ServiceError> {
        let module_known = |module: &str| {
            let module = module.to_owned();
            async move {
                if self.store.get_module(&module).await?.is_some() {
                    Ok(())
                } else {
                    Err(ServiceError::unprocessable(
                        "query.module",
                        format!("no module `{module}` is installed"),
                    ))
                }
            }
        };
        match query {
            AlertQuery::Usage { module, job, .. } => {
                if let Some(module) = module {
                    module_known(module).await?;
                }
                if let Some(job) = job
                    && self.find_job(job).await?.is_none()
                {
                    return Err(ServiceError::unprocessable(
                        "query.job",
                        format!("no job `{job}` exists"),
                    ));
                }
            }
            AlertQuery::Metric { module, name, .. } => {
                module_known(module).await?;
                if self
                    .store
                    .metric_series(module, Some(name))
                    .await?
                    .is_empty()
                {
                    return Err(ServiceError::unprocessable(
                        "query.name",
                        format!("module `{module}` has recorded no metric `{name}`"),
                    ));
                }
            }
            AlertQuery::Endpoint { endpoint, .. } => {
                if self.find_endpoint(endpoint).await?.is_none() {
                    return Err(ServiceError::unprocessable(
                        "query.endpoint",
                        format!("no endpoint monitor `{endpoint}` exists"),
                    ));
                }
            }
            AlertQuery::Outbound { module, .. } => {
                if let Some(module) = module {
                    module_known(module).await?;
                }
            }
            AlertQuery::Budget { module, .. } => module_known(module).await?,
        }
        Ok(())
    }

    /// The ids of the channels given by id or name.
    async fn resolve_channels(&self, given: &[String]) -> Result<Vec<String>, ServiceError> {
        let channels = self.store.alerts().list_channels().await?;
        given
            .iter()
            .enumerate()
            .map(|(i, text)| {
                channels
                    .iter()
                    .find(|c| c.id == *text || c.name == *text)
                    .map(|c| c.id.clone())
                    .ok_or_else(|| {
                        ServiceError::unprocessable(
                            format!("channels[{i}]"),
                            format!("no channel `{text}` exists"),
                        )
                    })
            })
            .collect()
    }

    async fn check_rule(&self, rule: &AlertRule) -> Result<(), ServiceError> {
        check_labels("labels", &rule.labels)?;
        if rule.for_ms > MAX_FOR {
            return Err(ServiceError::unprocessable(
                "for",
                format!("longer than {}", format_duration(MAX_FOR)),
            ));
        }
        if rule
            .description
            .as_ref()
            .is_some_and(|d| d.len() > MAX_TEXT_BYTES)
        {
            return Err(ServiceError::unprocessable(
                "description",
                format!("longer than {MAX_TEXT_BYTES} bytes"),
            ));
        }
        self.check_query_references(&rule.query).await
    }

    pub(crate) async fn create_alert_rule(
        &self,
        draft: RuleDraft,
    ) -> Result<AlertRule, ServiceError> {
        if self.store.alerts().list_rules().await?.len() >= MAX_RULES {
            return Err(ServiceError::Conflict(format!(
                "this deployment has {MAX_RULES} rules, the most it may have; delete one first"
            )));
        }
        let now = now_millis();
        let rule = AlertRule {
            id: new_id(),
            name: draft.name,
            query: AlertQuery::parse(&draft.query).map_err(unprocessable)?,
            condition: AlertCondition::parse(&draft.condition).map_err(unprocessable)?,
            for_ms: parse_duration("for", draft.for_text.as_deref().unwrap_or("0s"))
                .map_err(unprocessable)?,
            severity: Severity::parse(&draft.severity).ok_or_else(|| {
                ServiceError::unprocessable(
                    "severity",
                    format!("`{}` is not one of {}", draft.severity, Severity::choices()),
                )
            })?,
            labels: draft.labels.unwrap_or_default(),
            channels: self.resolve_channels(&draft.channels).await?,
            description: draft.description,
            enabled: draft.enabled.unwrap_or(true),
            state: AlertState::Ok,
            since: now,
            value: None,
            created_at: now,
            updated_at: now,
        };
        check_name(&rule.name)?;
        self.check_rule(&rule).await?;
        self.store.alerts().insert_rule(&rule).await?;
        Ok(rule)
    }

    /// Keeps the rules that watch module `module`'s budgets in step with `budgets`: two
    /// per budget, `warning` at 80 % of its limit and `critical` at 100 %, for `alert`
    /// and `enforce` budgets alike. They are named `budget:{module}:...` (a colon no rule
    /// a client names can have), so they are found again and never collide; a rule whose
    /// budget still exists is kept as it is (its state, and the channels an operator gave
    /// it), one whose budget is gone is deleted.
    pub(crate) async fn keep_budget_rules(
        &self,
        module: &str,
        budgets: &[Budget],
    ) -> Result<(), ServiceError> {
        let prefix = format!("{BUDGET_RULE_PREFIX}{module}:");
        let existing: Vec<AlertRule> = self
            .store
            .alerts()
            .list_rules()
            .await?
            .into_iter()
            .filter(|rule| rule.name.starts_with(&prefix))
            .collect();
        let now = now_millis();
        let wanted: Vec<AlertRule> = budgets
            .iter()
            .flat_map(|budget| {
                [(80, Severity::Warning), (100, Severity::Critical)]
                    .map(|(percent, severity)| budget_rule(module, budget, percent, severity, now))
            })
            .collect();
        for rule in &existing {
            if !wanted.iter().any(|w| w.name == rule.name) {
                self.store.alerts().delete_rule(&rule.id).await?;
            }
        }
        for rule in wanted {
            if !existing.iter().any(|e| e.name == rule.name) {
                self.store.alerts().insert_rule(&rule).await?;
            }
        }
        Ok(())
    }

    pub(crate) async fn get_alert_rule(&self, id: &str) -> Result<AlertRule, ServiceError> {
        self.store
            .alerts()
            .get_rule(id)
            .await?
            .ok_or_else(|| ServiceError::not_found("alert rule", id))
    }

    pub(crate) async fn list_alert_rules(&self) -> Result<Vec<AlertRule>, ServiceError> {
        Ok(self.store.alerts().list_rules().await?)
    }

    /// Applies `patch` to a rule's definition; its state is left as it is (a firing rule
    /// whose threshold is raised resolves at the next evaluation, and says so).
    pub(crate) async fn update_alert_rule(
        &self,
        id: &str,
        patch: RulePatch,
    ) -> Result<AlertRule, ServiceError> {
        let mut rule = self.get_alert_rule(id).await?;
        if let Some(name) = patch.name {
            check_name(&name)?;
            rule.name = name;
        }
        if let Some(query) = patch.query {
            rule.query = AlertQuery::parse(&query).map_err(unprocessable)?;
        }
        if let Some(condition) = patch.condition {
            rule.condition = AlertCondition::parse(&condition).map_err(unprocessable)?;
        }
        if let Some(text) = patch.for_text {
            rule.for_ms = parse_duration("for", &text).map_err(unprocessable)?;
        }
        if let Some(severity) = patch.severity {
            rule.severity = Severity::parse(&severity).ok_or_else(|| {
                ServiceError::unprocessable(
                    "severity",
                    format!("`{severity}` is not one of {}", Severity::choices()),
                )
            })?;
        }
        if let Some(labels) = patch.labels {
            rule.labels = labels;
        }
        if let Some(channels) = patch.channels {
            rule.channels = self.resolve_channels(&channels).await?;
        }
        if let Some(description) = patch.description {
            rule.description = description;
        }
        if let Some(enabled) = patch.enabled {
            rule.enabled = enabled;
        }
        self.check_rule(&rule).await?;
        rule.updated_at = now_millis();
        if !self.store.alerts().update_rule(&rule).await? {
            return Err(ServiceError::not_found("alert rule", id));
        }
        Ok(rule)
    }

    pub(crate) async fn delete_alert_rule(&self, id: &str) -> Result<AlertRule, ServiceError> {
        let rule = self.get_alert_rule(id).await?;
        if !self.store.alerts().delete_rule(id).await? {
            return Err(ServiceError::not_found("alert rule", id));
        }
        Ok(rule)
    }

    /// Seals `secret` for channel `id`, or says why this server cannot.
    fn seal_channel_secret(&self, id: &str, secret: &str) -> Result<String, ServiceError> {
        let sealer = self.secrets.as_ref().ok_or_else(|| {
            ServiceError::unprocessable(
                "secret",
                "this server has no secret key, so it cannot store secrets: set \
                 RUNCELL_SECRET_KEY (base64 of 32 random bytes, the same on every node)",
            )
        })?;
        Ok(sealer.seal_channel_secret(id, secret))
    }

    fn check_channel(&self, channel: &Channel) -> Result<(), ServiceError> {
        check_name(&channel.name)?;
        match channel.kind {
            ChannelKind::Webhook | ChannelKind::Slack => {
                check_channel_url(channel.url.as_deref())?;
                if channel.topic.is_some() {
                    return Err(ServiceError::unprocessable(
                        "topic",
                        "only an event channel has a topic",
                    ));
                }
            }
            ChannelKind::Event => {
                if channel.url.is_some() {
                    return Err(ServiceError::unprocessable(
                        "url",
                        "an event channel publishes on this server's event bus; it has no URL",
                    ));
                }
                if let Some(topic) = &channel.topic
                    && !crate::runtime::host::events::is_valid_topic(topic)
                {
                    return Err(ServiceError::bad(
                        "topic",
                        format!("`{topic}` is not a topic: dot-separated words"),
                    ));
                }
            }
        }
        if channel.secret.is_some() && channel.kind != ChannelKind::Webhook {
            return Err(ServiceError::unprocessable(
                "secret",
                "only a webhook channel signs its messages",
            ));
        }
        Ok(())
    }

    pub(crate) async fn create_alert_channel(
        &self,
        draft: ChannelDraft,
    ) -> Result<Channel, ServiceError> {
        if self.store.alerts().list_channels().await?.len() >= MAX_CHANNELS {
            return Err(ServiceError::Conflict(format!(
                "this deployment has {MAX_CHANNELS} channels, the most it may have"
            )));
        }
        let kind = ChannelKind::parse(&draft.kind).ok_or_else(|| {
            ServiceError::unprocessable(
                "type",
                format!("`{}` is not one of {}", draft.kind, ChannelKind::choices()),
            )
        })?;
        let now = now_millis();
        let id = new_id();
        let mut channel = Channel {
            id: id.clone(),
            name: draft.name,
            kind,
            url: draft.url,
            secret: draft.secret.clone(),
            topic: draft.topic,
            created_at: now,
            updated_at: now,
        };
        self.check_channel(&channel)?;
        channel.secret = draft
            .secret
            .map(|secret| self.seal_channel_secret(&id, &secret))
            .transpose()?;
        self.store.alerts().insert_channel(&channel).await?;
        Ok(channel)
    }

    pub(crate) async fn get_alert_channel(&self, id: &str) -> Result<Channel, ServiceError> {
        self.store
            .alerts()
            .get_channel(id)
            .await?
            .ok_or_else(|| ServiceError::not_found("alert channel", id))
    }

    pub(crate) async fn list_alert_channels(&self) -> Result<Vec<Channel>, ServiceError> {
        Ok(self.store.alerts().list_channels().await?)
    }

    pub(crate) async fn update_alert_channel(
        &self,
        id: &str,
        patch: ChannelPatch,
    ) -> Result<Channel, ServiceError> {
        let mut channel = self.get_alert_channel(id).await?;
        if let Some(name) = patch.name {
            channel.name = name;
        }
        if let Some(url) = patch.url {
            channel.url = Some(url);
        }
        if let Some(topic) = patch.topic {
            channel.topic = topic;
        }
        let new_secret = match patch.secret {
            Some(Some(secret)) if secret == SECRET_MASK => {
                if channel.secret.is_none() {
                    return Err(ServiceError::unprocessable(
                        "secret",
                        "`***` keeps the stored key, but this channel has none; give the key",
                    ));
                }
                None
            }
            Some(Some(secret)) => Some(Some(secret)),
            Some(None) => Some(None),
            None => None,
        };
        if let Some(secret) = &new_secret {
            channel.secret.clone_from(secret);
        }
        self.check_channel(&channel)?;
        if let Some(Some(secret)) = new_secret {
            channel.secret = Some(self.seal_channel_secret(id, &secret)?);
        }
        channel.updated_at = now_millis();
        if !self.store.alerts().update_channel(&channel).await? {
            return Err(ServiceError::not_found("alert channel", id));
        }
        Ok(channel)
    }

    /// Deletes a channel no rule notifies.
    pub(crate) async fn delete_alert_channel(&self, id: &str) -> Result<Channel, ServiceError> {
        let channel = self.get_alert_channel(id).await?;
        let users: Vec<String> = self
            .store
            .alerts()
            .list_rules()
            .await?
            .into_iter()
            .filter(|rule| rule.channels.contains(&channel.id))
            .map(|rule| rule.name)
            .collect();
        if !users.is_empty() {
            return Err(ServiceError::Conflict(format!(
                "rules {} notify this channel; take it out of them first",
                users.join(", ")
            )));
        }
        if !self.store.alerts().delete_channel(id).await? {
            return Err(ServiceError::not_found("alert channel", id));
        }
        Ok(channel)
    }

    /// Queues a test message to channel `id`, delivered like any notification; returns
    /// the outbox row.
    pub(crate) async fn test_alert_channel(&self, id: &str) -> Result<Notification, ServiceError> {
        let channel = self.get_alert_channel(id).await?;
        let now = now_millis();
        let notification_id = new_id();
        let notification = Notification {
            payload: json!({
                "id": notification_id,
                "kind": "test",
                "channel": channel.name,
                "at": now,
            }),
            id: notification_id,
            rule_id: None,
            channel_id: channel.id,
            kind: "test".to_owned(),
            status: NotificationStatus::Pending,
            attempts: Vec::new(),
            next_attempt_at: now,
            expires_at: now + NOTIFICATION_TTL,
            delivered_at: None,
            created_at: now,
        };
        self.store
            .alerts()
            .insert_notification(&notification)
            .await?;
        Ok(notification)
    }

    pub(crate) async fn create_silence(
        &self,
        draft: SilenceDraft,
        created_by: &str,
    ) -> Result<Silence, ServiceError> {
        let until = match &draft.until {
            Value::Number(n) => n.as_i64().ok_or_else(|| {
                ServiceError::bad("until", "milliseconds since the Unix epoch, a whole number")
            })?,
            Value::String(text) => parse_time("until", text)
                .map_err(|err| ServiceError::bad("until", err.to_string()))?,
            _ => {
                return Err(ServiceError::bad(
                    "until",
                    "milliseconds since the Unix epoch or RFC 3339",
                ));
            }
        };
        let now = now_millis();
        if until <= now {
            return Err(ServiceError::unprocessable("until", "is not in the future"));
        }
        match (&draft.rule_id, &draft.matchers) {
            (None, None) => {
                return Err(ServiceError::unprocessable(
                    "ruleId",
                    "a silence needs a `ruleId` or `matchers`",
                ));
            }
            (_, Some(matchers)) if matchers.is_empty() => {
                return Err(ServiceError::unprocessable(
                    "matchers",
                    "empty matchers would silence every rule; name at least one label",
                ));
            }
            (Some(rule_id), _) if self.store.alerts().get_rule(rule_id).await?.is_none() => {
                return Err(ServiceError::unprocessable(
                    "ruleId",
                    format!("no alert rule `{rule_id}` exists"),
                ));
            }
            _ => {}
        }
        if let Some(matchers) = &draft.matchers {
            check_labels("matchers", matchers)?;
        }
        if draft.comment.len() > MAX_TEXT_BYTES {
            return Err(ServiceError::unprocessable(
                "comment",
                format!("longer than {MAX_TEXT_BYTES} bytes"),
            ));
        }
        let silence = Silence {
            id: new_id(),
            rule_id: draft.rule_id,
            matchers: draft.matchers,
            until,
            comment: draft.comment,
            created_by: created_by.to_owned(),
            created_at: now,
        };
        self.store.alerts().insert_silence(&silence).await?;
        Ok(silence)
    }

    pub(crate) async fn list_silences(&self) -> Result<Vec<Silence>, ServiceError> {
        Ok(self.store.alerts().list_silences().await?)
    }

    pub(crate) async fn delete_silence(&self, id: &str) -> Result<(), ServiceError> {
        if self.store.alerts().delete_silence(id).await? {
            Ok(())
        } else {
            Err(ServiceError::not_found("silence", id))
        }
    }

    pub(crate) async fn alert_history(
        &self,
        from: Millis,
        to: Millis,
        rule_id: Option<&str>,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<crate::domain::Page<HistoryEntry>, ServiceError> {
        Ok(self
            .store
            .alerts()
            .history(from, to, rule_id, cursor, limit)
            .await?)
    }

    pub(crate) async fn alert_notifications(
        &self,
        rule_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Notification>, ServiceError> {
        Ok(self.store.alerts().notifications(rule_id, limit).await?)
    }

    // ---- evaluation -------------------------------------------------------------------

    /// The number `query` selects now; `None` when there is no data to say (no runs for
    /// a rate, no checks, no samples). An error means the query cannot be answered (its
    /// endpoint was deleted, the database is down).
    pub(crate) async fn evaluate(&self, query: &AlertQuery) -> Result<Option<f64>, ServiceError> {
        let now = now_millis();
        // Rollups are kept by whole minutes: a window reads from the start of its first
        // minute to the end of the current one.
        let minutes = |span: Span| {
            let from = span.start(now);
            (
                from - from.rem_euclid(MINUTE),
                now - now.rem_euclid(MINUTE) + MINUTE,
            )
        };
        match query {
            AlertQuery::Usage {
                module,
                job,
                measure,
                window,
            } => {
                let job_id = match job {
                    Some(job) => match self.find_job(job).await? {
                        Some(found) => Some(found.id),
                        None => return Ok(None),
                    },
                    None => None,
                };
                let filter = UsageFilter {
                    module: module.clone(),
                    by_job: job_id.is_some(),
                    job_id,
                    host: None,
                };
                let (from, to) = minutes(*window);
                let mut totals = RunTotals::default();
                for row in self.usage_totals(from, to, &filter).await? {
                    totals.merge(&row.totals);
                }
                Ok(usage_value(&totals, *measure))
            }
            AlertQuery::Metric {
                module,
                name,
                labels,
                agg,
                window,
            } => {
                let ids: Vec<i64> = self
                    .store
                    .metric_series(module, Some(name))
                    .await?
                    .into_iter()
                    .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
                    .map(|s| s.id)
                    .collect();
                if ids.is_empty() {
                    return Ok(None);
                }
                let (from, to) = minutes(*window);
                let rollups = self.store.metric_rollups(&ids, MINUTE, from, to).await?;
                let mut merged: Option<Rollup> = None;
                for (_, _, rollup) in rollups {
                    match &mut merged {
                        Some(all) => all.merge(&rollup),
                        None => merged = Some(rollup),
                    }
                }
                Ok(merged.map(|all| all.value(*agg)))
            }
            AlertQuery::Endpoint {
                endpoint,
                measure,
                window,
            } => {
                let Some(endpoint) = self.find_endpoint(endpoint).await? else {
                    return Err(ServiceError::not_found("endpoint", endpoint.clone()));
                };
                self.endpoint_value(&endpoint, *measure, *window, now).await
            }
            AlertQuery::Outbound {
                module,
                host,
                measure,
                window,
            } => {
                let filter = UsageFilter {
                    module: module.clone(),
                    host: host.clone(),
                    ..UsageFilter::default()
                };
                let (from, to) = minutes(*window);
                let tally = self.outbound_totals(from, to, &filter).await?;
                Ok(Some(match measure {
                    OutboundMeasure::Requests => tally.requests,
                    OutboundMeasure::Errors => tally.errors,
                    OutboundMeasure::Responses5xx => tally.responses_5xx,
                    OutboundMeasure::Denied => tally.denied,
                } as f64))
            }
            AlertQuery::Budget {
                module,
                metric,
                host,
                per,
            } => {
                let statuses = self.budget_usage(module).await?;
                Ok(statuses
                    .iter()
                    .find(|status| {
                        let budget = &status.budget;
                        budget.metric == *metric && budget.host == *host && budget.per == *per
                    })
                    .map(BudgetStatus::ratio))
            }
        }
    }

    async fn endpoint_value(
        &self,
        endpoint: &Endpoint,
        measure: EndpointMeasure,
        window: Option<Span>,
        now: Millis,
    ) -> Result<Option<f64>, ServiceError> {
        let from = window.map_or(0, |span| span.start(now));
        match measure {
            EndpointMeasure::Down | EndpointMeasure::Up => {
                // The newest checks, enough to count a long run of failures.
                let checks = self
                    .store
                    .endpoint_checks(&endpoint.id, 0, Millis::MAX, None, 1_000)
                    .await?
                    .items;
                let Some(last) = checks.first() else {
                    return Ok(None);
                };
                Ok(Some(if measure == EndpointMeasure::Up {
                    f64::from(u8::from(last.up))
                } else {
                    checks.iter().take_while(|check| !check.up).count() as f64
                }))
            }
            EndpointMeasure::LatencyP95 => {
                let mut latencies: Vec<f64> = self
                    .store
                    .endpoint_checks(&endpoint.id, from, Millis::MAX, None, 10_000)
                    .await?
                    .items
                    .iter()
                    .filter_map(|check| check.latency_ms.map(f64::from))
                    .collect();
                Ok(percentile(&mut latencies, 0.95))
            }
            EndpointMeasure::Uptime => {
                let counts = self.store.endpoint_uptime(&endpoint.id, &[from]).await?;
                Ok(counts.into_iter().next().and_then(UptimeCount::percent))
            }
        }
    }

    /// Evaluates every enabled rule once and writes each transition under the lease
    /// `token` held by `holder`. Returns `false` when the lease was lost mid-round (the
    /// rest is left to the new holder).
    pub(crate) async fn evaluate_alert_rules(
        &self,
        holder: &str,
        token: LeaseToken,
    ) -> Result<bool, ServiceError> {
        let rules = self.store.alerts().list_rules().await?;
        let silences = self.store.alerts().list_silences().await?;
        for rule in rules.into_iter().filter(|rule| rule.enabled) {
            let value = match self.evaluate(&rule.query).await {
                Ok(value) => value,
                Err(err) => {
                    tracing::warn!(rule = %rule.name, error = %err, "cannot evaluate an alert rule");
                    None
                }
            };
            let now = now_millis();
            let holds = value.map(|value| rule.condition.holds(value));
            let Some(change) = next_change(rule.state, rule.since, holds, rule.for_ms, now) else {
                continue;
            };
            let transition = transition(&rule, change, value, now, &silences);
            let fence = Fence {
                lease: ALERTS_LEASE,
                holder,
                token,
                now,
            };
            match self
                .store
                .alerts()
                .record_transition(&transition, fence)
                .await?
            {
                None => return Ok(false),
                Some(true) => tracing::info!(
                    rule = %rule.name,
                    change = change.as_str(),
                    value,
                    "alert rule changed state"
                ),
                Some(false) => {}
            }
        }
        Ok(true)
    }

    // ---- delivery ---------------------------------------------------------------------

    /// Makes one attempt to send `notification` and records it under the lease. A 2xx
    /// (or a published event) delivers it; anything else is tried again later, until it
    /// expires.
    pub(crate) async fn deliver_notification(
        &self,
        notification: &Notification,
        holder: &str,
        token: LeaseToken,
    ) -> Result<(), ServiceError> {
        let channel = self
            .store
            .alerts()
            .get_channel(&notification.channel_id)
            .await?;
        let result = match &channel {
            Some(channel) => self.send(channel, notification).await,
            None => Err("the channel was deleted".to_owned()),
        };
        let at = now_millis();
        let (status, error) = match result {
            Ok(status) => (status, None),
            Err(error) => (None, Some(error)),
        };
        let delivered = error.is_none() && status.is_none_or(|code| (200..300).contains(&code));
        let next = at + retry_delay(notification.attempts.len() + 1);
        let outcome = if delivered {
            AttemptOutcome::Delivered
        } else if channel.is_none() || next > notification.expires_at {
            AttemptOutcome::Expired
        } else {
            AttemptOutcome::RetryAt(next)
        };
        let attempt = Attempt {
            at,
            status,
            error: error.or_else(|| {
                (!delivered).then(|| format!("answered {}", status.unwrap_or_default()))
            }),
        };
        if !delivered {
            tracing::info!(
                notification = %notification.id,
                error = attempt.error.as_deref().unwrap_or_default(),
                "a notification was not delivered; it is tried again"
            );
        }
        let fence = Fence {
            lease: ALERTS_LEASE,
            holder,
            token,
            now: at,
        };
        self.store
            .alerts()
            .record_attempt(&notification.id, &attempt, outcome, fence)
            .await?;
        Ok(())
    }

    /// Sends a notification to its channel: the answer's status, `None` for an event
    /// published (or one published already), or why nothing was answered.
    async fn send(
        &self,
        channel: &Channel,
        notification: &Notification,
    ) -> Result<Option<u16>, String> {
        let (body, signing_key) = match channel.kind {
            ChannelKind::Event => {
                let topic = channel
                    .topic
                    .clone()
                    .unwrap_or_else(|| format!("alert.{}", notification.kind));
                return self
                    .events
                    .publish_once(
                        notification.id.clone(),
                        &topic,
                        notification.payload.clone(),
                        "alerts",
                    )
                    .await
                    .map(|_| None)
                    .map_err(|err| err.to_string());
            }
            ChannelKind::Slack => (json!({"text": slack_text(&notification.payload)}), None),
            ChannelKind::Webhook => {
                let key =
                    match &channel.secret {
                        Some(sealed) => {
                            let sealer = self.secrets.as_ref().ok_or(
                                "the channel's key is sealed and this node has no secret key: set \
                             RUNCELL_SECRET_KEY, the same on every node",
                            )?;
                            Some(sealer.open_channel_secret(&channel.id, sealed).map_err(|_| {
                            "the channel's key does not open with this node's secret key"
                                .to_owned()
                        })?)
                        }
                        None => None,
                    };
                (notification.payload.clone(), key)
            }
        };
        let body = body.to_string();
        let timestamp = now_millis() / 1_000;
        let mut headers = vec![
            ("content-type".to_owned(), "application/json".to_owned()),
            ("idempotency-key".to_owned(), notification.id.clone()),
            ("x-runcell-timestamp".to_owned(), timestamp.to_string()),
        ];
        if let Some(key) = signing_key {
            headers.push((
                "x-runcell-signature".to_owned(),
                format!("sha256={}", signature(&key, timestamp, &body)),
            ));
        }
        let probe = Probe {
            method: http::Method::POST,
            url: channel.url.clone().unwrap_or_default(),
            headers,
            body: Some(body),
            timeout: SEND_TIMEOUT,
        };
        crate::runtime::probe(&self.outbound, &probe)
            .await
            .map(|answer| Some(answer.status))
            .map_err(|failure| failure.to_string())
    }
}

/// The number a `usage` measure reads of `totals`; rates and durations need runs.
fn usage_value(totals: &RunTotals, measure: UsageMeasure) -> Option<f64> {
    let runs = totals.runs as f64;
    let quantile = |q: f64| totals.durations.quantile(q, totals.duration_ms_max);
    match measure {
        UsageMeasure::Runs => Some(runs),
        UsageMeasure::Completed => Some(totals.completed as f64),
        UsageMeasure::Failed => Some(totals.failed as f64),
        UsageMeasure::TimedOut => Some(totals.timed_out as f64),
        UsageMeasure::FailureRate => {
            (totals.runs > 0).then(|| (totals.failed + totals.timed_out) as f64 / runs)
        }
        UsageMeasure::DurationP50 => quantile(0.5),
        UsageMeasure::DurationP95 => quantile(0.95),
        UsageMeasure::DurationP99 => quantile(0.99),
        UsageMeasure::Fuel => Some(totals.fuel_consumed as f64),
        UsageMeasure::MemoryPeak => (totals.runs > 0).then_some(totals.memory_peak_bytes as f64),
        UsageMeasure::OutboundRequests => Some(totals.outbound_requests as f64),
    }
}

/// The transition `change` of `rule` at `now`: its history entry and, for firing and
/// resolving, one outbox row per channel, written suppressed while a silence covers it.
fn transition(
    rule: &AlertRule,
    change: Change,
    value: Option<f64>,
    now: Millis,
    silences: &[Silence],
) -> Transition {
    let silenced = silences.iter().any(|silence| silence.covers(rule, now));
    let entry = HistoryEntry {
        id: new_id(),
        rule_id: rule.id.clone(),
        rule: rule.name.clone(),
        change,
        severity: rule.severity,
        value,
        labels: rule.labels.clone(),
        silenced: silenced && change.notifies(),
        at: now,
    };
    let notifications = if change.notifies() {
        rule.channels
            .iter()
            .map(|channel_id| {
                let id = new_id();
                Notification {
                    payload: json!({
                        "id": id,
                        "kind": change.as_str(),
                        "rule": {
                            "id": rule.id,
                            "name": rule.name,
                            "severity": rule.severity.as_str(),
                            "labels": rule.labels,
                            "description": rule.description,
                            "query": rule.query.to_json(),
                            "condition": rule.condition.to_json(),
                        },
                        "state": change.state().as_str(),
                        "value": value,
                        "at": now,
                    }),
                    id,
                    rule_id: Some(rule.id.clone()),
                    channel_id: channel_id.clone(),
                    kind: change.as_str().to_owned(),
                    status: if silenced {
                        NotificationStatus::Suppressed
                    } else {
                        NotificationStatus::Pending
                    },
                    attempts: Vec::new(),
                    next_attempt_at: now,
                    expires_at: now + NOTIFICATION_TTL,
                    delivered_at: None,
                    created_at: now,
                }
            })
            .collect()
    } else {
        Vec::new()
    };
    Transition {
        rule_id: rule.id.clone(),
        from: (rule.state, rule.since),
        to: (change.state(), now),
        value,
        entry,
        notifications,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_hmac_sha256_of_the_timestamp_a_dot_and_the_body_in_hex() {
        // Computed independently: Python's hmac.new(key, b"<ts>.<body>", sha256).
        assert_eq!(
            signature("whsec-test", 1_700_000_000, r#"{"kind":"firing"}"#),
            "ef9f52e45358527a742a683311fae1513088174f697a2a5cfcb07d50d90d532c"
        );
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        assert_eq!(percentile(&mut [], 0.95), None);
        let mut values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut values, 0.95), Some(95.0));
        assert_eq!(percentile(&mut [7.0], 0.95), Some(7.0));
    }

    #[test]
    fn usage_rates_and_durations_need_runs_counts_do_not() {
        let none = RunTotals::default();
        assert_eq!(usage_value(&none, UsageMeasure::Runs), Some(0.0));
        assert_eq!(usage_value(&none, UsageMeasure::FailureRate), None);
        assert_eq!(usage_value(&none, UsageMeasure::DurationP95), None);
        let some = RunTotals {
            runs: 4,
            failed: 1,
            timed_out: 1,
            ..RunTotals::default()
        };
        assert_eq!(usage_value(&some, UsageMeasure::FailureRate), Some(0.5));
    }
}
