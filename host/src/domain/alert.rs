//! Alerting's pure parts: what a rule asks (a query selecting one number, a condition on
//! it, how long it must hold), the states a rule moves through and the one function that
//! decides each move, channels and silences as stored, and the notification outbox rows
//! and history entries a transition writes. Parsing here names the field at fault, so
//! the API can say `query.measure` rather than "bad request".

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::Millis;
use super::budget::{BudgetMetric, BudgetPeriod};
use super::metrics::Aggregate;
use super::window::{DAY, HOUR, MINUTE};

/// The longest window a query may read: what the usage rollups keep at day steps is
/// longer, but an alert about last quarter is a report, not an alert.
pub(crate) const MAX_WINDOW: Millis = 31 * DAY;
/// The longest `for`: a condition that must hold a week before anyone hears of it.
pub(crate) const MAX_FOR: Millis = 7 * DAY;

/// A field that does not parse: its path (`query.measure`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldError {
    pub field: String,
    pub message: String,
}

fn refuse(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// A duration as rules write it: a whole number of seconds, minutes, hours or days
/// (`0s`, `90s`, `5m`, `2h`, `1d`).
pub(crate) fn parse_duration(field: &str, text: &str) -> Result<Millis, FieldError> {
    let wrong = || {
        refuse(
            field,
            format!(
                "`{text}` is not a duration; write a whole number of s, m, h or d such as 0s, 5m, 2h or 1d"
            ),
        )
    };
    let split = text.len().checked_sub(1).ok_or_else(wrong)?;
    let (count, unit) = text.split_at(split);
    let unit = match unit {
        "s" => 1_000,
        "m" => MINUTE,
        "h" => HOUR,
        "d" => DAY,
        _ => return Err(wrong()),
    };
    let count: Millis = count.parse().map_err(|_| wrong())?;
    if count < 0 || count > 366 * DAY / unit {
        return Err(wrong());
    }
    Ok(count * unit)
}

/// The shortest way to write `ms` as [`parse_duration`] reads it.
pub(crate) fn format_duration(ms: Millis) -> String {
    if ms == 0 {
        "0s".to_owned()
    } else if ms % DAY == 0 {
        format!("{}d", ms / DAY)
    } else if ms % HOUR == 0 {
        format!("{}h", ms / HOUR)
    } else if ms % MINUTE == 0 {
        format!("{}m", ms / MINUTE)
    } else {
        format!("{}s", ms / 1_000)
    }
}

/// Defines a closed set of names, parsed from and written as text.
macro_rules! names {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $text:literal),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($variant),* }

        impl $name {
            pub(crate) const ALL: &'static [$name] = &[$($name::$variant),*];

            pub(crate) fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),* }
            }

            pub(crate) fn parse(text: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|one| one.as_str() == text)
            }

            /// Every name, for messages: `a, b or c`.
            #[allow(dead_code, reason = "not every set of names is listed in a message")]
            pub(crate) fn choices() -> String {
                let names: Vec<&str> = Self::ALL.iter().map(|one| one.as_str()).collect();
                match names.split_last() {
                    Some((last, [])) => (*last).to_owned(),
                    Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
                    None => String::new(),
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

names!(
    /// What a `usage` query reads of runs (from the usage rollups).
    UsageMeasure {
        Runs = "runs",
        Completed = "completed",
        Failed = "failed",
        TimedOut = "timedOut",
        FailureRate = "failureRate",
        DurationP50 = "durationP50",
        DurationP95 = "durationP95",
        DurationP99 = "durationP99",
        Fuel = "fuel",
        MemoryPeak = "memoryPeak",
        OutboundRequests = "outboundRequests",
    }
);

names!(
    /// What an `endpoint` query reads of an endpoint monitor's checks.
    EndpointMeasure {
        Down = "down",
        Up = "up",
        LatencyP95 = "latencyP95",
        Uptime = "uptime",
    }
);

names!(
    /// What an `outbound` query reads of modules' outbound requests.
    OutboundMeasure {
        Requests = "requests",
        Errors = "errors",
        Responses5xx = "responses5xx",
        Denied = "denied",
    }
);

names!(
    /// How loud an alert is.
    Severity {
        Info = "info",
        Warning = "warning",
        Critical = "critical",
    }
);

names!(
    /// A condition's comparison.
    Op {
        Gt = ">",
        Ge = ">=",
        Lt = "<",
        Le = "<=",
        Eq = "==",
        Ne = "!=",
    }
);

names!(
    /// Where a channel sends.
    ChannelKind {
        Webhook = "webhook",
        Slack = "slack",
        Event = "event",
    }
);

names!(
    /// Where a rule stands. `resolved` is a transition (firing → ok), not a state.
    AlertState {
        Ok = "ok",
        Pending = "pending",
        Firing = "firing",
    }
);

names!(
    /// A change of a rule's state, as the history records it.
    Change {
        Pending = "pending",
        Firing = "firing",
        Resolved = "resolved",
        Cleared = "cleared",
    }
);

names!(
    /// Where a notification outbox row stands.
    NotificationStatus {
        Pending = "pending",
        Delivered = "delivered",
        Suppressed = "suppressed",
        Expired = "expired",
    }
);

/// How far back a query reads: a span ending now, or since midnight UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    Last(Millis),
    Today,
}

impl Span {
    /// The start of the span ending at `now`.
    pub(crate) fn start(self, now: Millis) -> Millis {
        match self {
            Span::Last(span) => now - span,
            Span::Today => now - now.rem_euclid(DAY),
        }
    }

    fn text(self) -> String {
        match self {
            Span::Last(span) => format_duration(span),
            Span::Today => "today".to_owned(),
        }
    }
}

/// What a rule reads: one number from one source. See the README's "Alerts" section.
#[derive(Debug, Clone, PartialEq)]
pub enum AlertQuery {
    Usage {
        module: Option<String>,
        job: Option<String>,
        measure: UsageMeasure,
        window: Span,
    },
    Metric {
        module: String,
        name: String,
        labels: BTreeMap<String, String>,
        agg: Aggregate,
        window: Span,
    },
    Endpoint {
        endpoint: String,
        measure: EndpointMeasure,
        window: Option<Span>,
    },
    Outbound {
        module: Option<String>,
        host: Option<String>,
        measure: OutboundMeasure,
        window: Span,
    },
    /// How much of one of a module's consumption budgets its current window has used:
    /// 1.0 is all of it.
    Budget {
        module: String,
        metric: BudgetMetric,
        host: Option<String>,
        per: BudgetPeriod,
    },
}

/// The members of a query object, each taken once; what is left at the end is unknown.
struct Members {
    map: Map<String, Value>,
}

impl Members {
    fn text(&mut self, key: &str) -> Result<Option<String>, FieldError> {
        match self.map.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) if !text.is_empty() => Ok(Some(text)),
            Some(_) => Err(refuse(format!("query.{key}"), "must be a non-empty string")),
        }
    }

    fn required(&mut self, key: &str) -> Result<String, FieldError> {
        self.text(key)?
            .ok_or_else(|| refuse(format!("query.{key}"), "is required"))
    }

    fn name<T>(
        &mut self,
        key: &str,
        parse: fn(&str) -> Option<T>,
        choices: &str,
    ) -> Result<T, FieldError> {
        let text = self.required(key)?;
        parse(&text).ok_or_else(|| {
            refuse(
                format!("query.{key}"),
                format!("`{text}` is not one of {choices}"),
            )
        })
    }

    fn span(&mut self, key: &str, today: bool) -> Result<Option<Span>, FieldError> {
        let Some(text) = self.text(key)? else {
            return Ok(None);
        };
        let field = format!("query.{key}");
        if text == "today" {
            return if today {
                Ok(Some(Span::Today))
            } else {
                Err(refuse(
                    field,
                    "`today` is a window of outbound queries only",
                ))
            };
        }
        let span = parse_duration(&field, &text)?;
        if !(MINUTE..=MAX_WINDOW).contains(&span) {
            return Err(refuse(
                field,
                format!(
                    "`{text}` is not between 1m and {}",
                    format_duration(MAX_WINDOW)
                ),
            ));
        }
        Ok(Some(Span::Last(span)))
    }

    fn labels(&mut self) -> Result<BTreeMap<String, String>, FieldError> {
        match self.map.remove("labels") {
            None | Some(Value::Null) => Ok(BTreeMap::new()),
            Some(Value::Object(map)) => map
                .into_iter()
                .map(|(key, value)| match value {
                    Value::String(text) => Ok((key, text)),
                    _ => Err(refuse(format!("query.labels.{key}"), "must be a string")),
                })
                .collect(),
            Some(_) => Err(refuse("query.labels", "must be an object of strings")),
        }
    }

    fn finish(self) -> Result<(), FieldError> {
        match self.map.keys().next() {
            Some(key) => Err(refuse(
                format!("query.{key}"),
                "is not a field of this query source",
            )),
            None => Ok(()),
        }
    }
}

impl AlertQuery {
    /// Parses a query as a client wrote it.
    pub(crate) fn parse(value: &Value) -> Result<Self, FieldError> {
        let Value::Object(map) = value else {
            return Err(refuse("query", "must be an object with a `source`"));
        };
        let mut members = Members { map: map.clone() };
        let source = members.required("source")?;
        let need_window = |span: Option<Span>| {
            span.ok_or_else(|| refuse("query.window", "is required for this source"))
        };
        let query = match source.as_str() {
            "usage" => AlertQuery::Usage {
                module: members.text("module")?,
                job: members.text("job")?,
                measure: members.name("measure", UsageMeasure::parse, &UsageMeasure::choices())?,
                window: need_window(members.span("window", false)?)?,
            },
            "metric" => AlertQuery::Metric {
                module: members.required("module")?,
                name: members.required("name")?,
                labels: members.labels()?,
                agg: members.name("agg", Aggregate::parse, "avg, min, max, sum, count or last")?,
                window: need_window(members.span("window", false)?)?,
            },
            "endpoint" => AlertQuery::Endpoint {
                endpoint: members.required("endpoint")?,
                measure: members.name(
                    "measure",
                    EndpointMeasure::parse,
                    &EndpointMeasure::choices(),
                )?,
                window: members.span("window", false)?,
            },
            "outbound" => AlertQuery::Outbound {
                module: members.text("module")?,
                host: members.text("host")?,
                measure: members.name(
                    "measure",
                    OutboundMeasure::parse,
                    &OutboundMeasure::choices(),
                )?,
                window: need_window(members.span("window", true)?)?,
            },
            "budget" => AlertQuery::Budget {
                module: members.required("module")?,
                metric: members.name(
                    "metric",
                    BudgetMetric::parse,
                    "runs, fuel or outboundRequests",
                )?,
                host: members.text("host")?,
                per: members.name("per", BudgetPeriod::parse, "hour or day")?,
            },
            other => {
                return Err(refuse(
                    "query.source",
                    format!("`{other}` is not one of usage, metric, endpoint, outbound or budget"),
                ));
            }
        };
        members.finish()?;
        if let AlertQuery::Endpoint {
            measure: EndpointMeasure::LatencyP95 | EndpointMeasure::Uptime,
            window: None,
            ..
        } = query
        {
            return Err(refuse(
                "query.window",
                "is required for latencyP95 and uptime",
            ));
        }
        Ok(query)
    }

    /// The query as stored and shown: what [`AlertQuery::parse`] reads back.
    pub(crate) fn to_json(&self) -> Value {
        let mut map = Map::new();
        let mut put = |key: &str, value: Option<Value>| {
            if let Some(value) = value {
                map.insert(key.to_owned(), value);
            }
        };
        match self {
            AlertQuery::Usage {
                module,
                job,
                measure,
                window,
            } => {
                put("source", Some(json!("usage")));
                put("module", module.as_ref().map(|m| json!(m)));
                put("job", job.as_ref().map(|j| json!(j)));
                put("measure", Some(json!(measure.as_str())));
                put("window", Some(json!(window.text())));
            }
            AlertQuery::Metric {
                module,
                name,
                labels,
                agg,
                window,
            } => {
                put("source", Some(json!("metric")));
                put("module", Some(json!(module)));
                put("name", Some(json!(name)));
                put("labels", (!labels.is_empty()).then(|| json!(labels)));
                put("agg", Some(json!(agg.as_str())));
                put("window", Some(json!(window.text())));
            }
            AlertQuery::Endpoint {
                endpoint,
                measure,
                window,
            } => {
                put("source", Some(json!("endpoint")));
                put("endpoint", Some(json!(endpoint)));
                put("measure", Some(json!(measure.as_str())));
                put("window", window.map(|w| json!(w.text())));
            }
            AlertQuery::Outbound {
                module,
                host,
                measure,
                window,
            } => {
                put("source", Some(json!("outbound")));
                put("module", module.as_ref().map(|m| json!(m)));
                put("host", host.as_ref().map(|h| json!(h)));
                put("measure", Some(json!(measure.as_str())));
                put("window", Some(json!(window.text())));
            }
            AlertQuery::Budget {
                module,
                metric,
                host,
                per,
            } => {
                put("source", Some(json!("budget")));
                put("module", Some(json!(module)));
                put("metric", Some(json!(metric.as_str())));
                put("host", host.as_ref().map(|h| json!(h)));
                put("per", Some(json!(per.as_str())));
            }
        }
        Value::Object(map)
    }
}

/// `value op threshold`: when a rule's number is alarming.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlertCondition {
    pub op: Op,
    pub value: f64,
}

impl AlertCondition {
    /// Parses `{"op": ">", "value": 0.05}`.
    pub(crate) fn parse(value: &Value) -> Result<Self, FieldError> {
        let Value::Object(map) = value else {
            return Err(refuse(
                "condition",
                "must be an object such as {\"op\": \">\", \"value\": 0}",
            ));
        };
        if let Some(key) = map
            .keys()
            .find(|key| !matches!(key.as_str(), "op" | "value"))
        {
            return Err(refuse(
                format!("condition.{key}"),
                "is not a field of a condition",
            ));
        }
        let op = match map.get("op") {
            Some(Value::String(text)) => Op::parse(text).ok_or_else(|| {
                refuse(
                    "condition.op",
                    format!("`{text}` is not one of {}", Op::choices()),
                )
            })?,
            _ => {
                return Err(refuse(
                    "condition.op",
                    format!("is required: one of {}", Op::choices()),
                ));
            }
        };
        let value = match map.get("value").and_then(Value::as_f64) {
            Some(value) if value.is_finite() => value,
            _ => return Err(refuse("condition.value", "is required: a number")),
        };
        Ok(Self { op, value })
    }

    pub(crate) fn holds(&self, seen: f64) -> bool {
        match self.op {
            Op::Gt => seen > self.value,
            Op::Ge => seen >= self.value,
            Op::Lt => seen < self.value,
            Op::Le => seen <= self.value,
            Op::Eq => seen == self.value,
            Op::Ne => seen != self.value,
        }
    }

    pub(crate) fn to_json(self) -> Value {
        json!({"op": self.op.as_str(), "value": self.value})
    }
}

/// An alert rule with where it stands.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRule {
    pub id: String,
    pub name: String,
    pub query: AlertQuery,
    pub condition: AlertCondition,
    /// How long the condition must hold before the rule fires.
    pub for_ms: Millis,
    pub severity: Severity,
    pub labels: BTreeMap<String, String>,
    /// Ids of the channels it notifies.
    pub channels: Vec<String>,
    pub description: Option<String>,
    pub enabled: bool,
    pub state: AlertState,
    /// When the rule entered its state.
    pub since: Millis,
    /// The number seen at the last transition; `None` before the first.
    pub value: Option<f64>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// The move the evaluator makes after seeing `holds` (`None`: the query had no data) at
/// `now`, for a rule in `state` since `since` that must hold `for_ms` before firing.
/// No data keeps the state: an alert does not resolve because its source fell silent,
/// and does not fire on a number nobody measured.
pub(crate) fn next_change(
    state: AlertState,
    since: Millis,
    holds: Option<bool>,
    for_ms: Millis,
    now: Millis,
) -> Option<Change> {
    let holds = holds?;
    match (state, holds) {
        (AlertState::Ok, true) if for_ms == 0 => Some(Change::Firing),
        (AlertState::Ok, true) => Some(Change::Pending),
        (AlertState::Pending, true) if now - since >= for_ms => Some(Change::Firing),
        (AlertState::Pending, false) => Some(Change::Cleared),
        (AlertState::Firing, false) => Some(Change::Resolved),
        _ => None,
    }
}

impl Change {
    /// The state a rule is in after this change.
    pub(crate) fn state(self) -> AlertState {
        match self {
            Change::Pending => AlertState::Pending,
            Change::Firing => AlertState::Firing,
            Change::Resolved | Change::Cleared => AlertState::Ok,
        }
    }

    /// Whether channels hear of it: firing and resolving, never pending.
    pub(crate) fn notifies(self) -> bool {
        matches!(self, Change::Firing | Change::Resolved)
    }
}

/// Where an alert is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    pub id: String,
    pub name: String,
    pub kind: ChannelKind,
    /// Webhook and Slack: where to POST.
    pub url: Option<String>,
    /// Webhook: the HMAC key, sealed.
    pub secret: Option<String>,
    /// Event: the topic published; `None` for `alert.firing` / `alert.resolved`.
    pub topic: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// Notifications not sent while it lasts: for one rule, or for every rule carrying all
/// of `matchers` among its labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Silence {
    pub id: String,
    pub rule_id: Option<String>,
    pub matchers: Option<BTreeMap<String, String>>,
    /// Milliseconds since the Unix epoch.
    pub until: Millis,
    pub comment: String,
    pub created_by: String,
    pub created_at: Millis,
}

impl Silence {
    /// Whether it silences `rule` at `now`.
    pub(crate) fn covers(&self, rule: &AlertRule, now: Millis) -> bool {
        if now >= self.until {
            return false;
        }
        if let Some(rule_id) = &self.rule_id
            && *rule_id != rule.id
        {
            return false;
        }
        self.matchers.as_ref().is_none_or(|matchers| {
            matchers
                .iter()
                .all(|(key, value)| rule.labels.get(key) == Some(value))
        })
    }
}

/// One transition of one rule, as the history keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    pub id: String,
    pub rule_id: String,
    pub rule: String,
    #[schema(value_type = String)]
    pub change: Change,
    #[schema(value_type = String)]
    pub severity: Severity,
    pub value: Option<f64>,
    pub labels: BTreeMap<String, String>,
    /// Whether a silence kept its notifications from being sent.
    pub silenced: bool,
    pub at: Millis,
}

/// One attempt to send a notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub at: Millis,
    /// The answer's status; `None` when there was none.
    pub status: Option<u16>,
    pub error: Option<String>,
}

/// A notification outbox row: one message to one channel.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// Also the `Idempotency-Key` of a webhook and the id of a published event.
    pub id: String,
    /// `None` for a channel's test message.
    pub rule_id: Option<String>,
    pub channel_id: String,
    /// `firing`, `resolved` or `test`.
    pub kind: String,
    /// What is sent (a webhook's body).
    pub payload: Value,
    #[schema(value_type = String)]
    pub status: NotificationStatus,
    pub attempts: Vec<Attempt>,
    pub next_attempt_at: Millis,
    pub expires_at: Millis,
    pub delivered_at: Option<Millis>,
    pub created_at: Millis,
}

/// A transition to write, all or nothing: the rule's new state, its history entry and
/// one outbox row per channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub rule_id: String,
    /// The state and `since` the evaluator read: the write applies only if they are
    /// still the rule's, so a transition is never made twice.
    pub from: (AlertState, Millis),
    pub to: (AlertState, Millis),
    pub value: Option<f64>,
    pub entry: HistoryEntry,
    pub notifications: Vec<Notification>,
}

/// How long after the previous attempt the next one is made: 1 s doubling to at most
/// 10 minutes, so a receiver that is down for an hour is asked a few dozen times, and a
/// receiver back up hears within ten minutes.
pub(crate) fn retry_delay(attempts: usize) -> Millis {
    let doublings = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(20);
    (1_000_i64 << doublings).min(10 * MINUTE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(result: Result<AlertQuery, FieldError>) -> String {
        result.unwrap_err().field
    }

    #[test]
    fn queries_read_back_as_written_and_refuse_by_field() {
        let usage = json!({"source": "usage", "job": "sync", "measure": "runs", "window": "2h"});
        assert_eq!(AlertQuery::parse(&usage).unwrap().to_json(), usage);
        let outbound = json!({"source": "outbound", "host": "api.example.com", "measure": "errors", "window": "today"});
        assert_eq!(AlertQuery::parse(&outbound).unwrap().to_json(), outbound);
        let metric = json!({"source": "metric", "module": "m", "name": "queue.depth", "labels": {"q": "a"}, "agg": "max", "window": "1h"});
        assert_eq!(AlertQuery::parse(&metric).unwrap().to_json(), metric);
        let budget = json!({"source": "budget", "module": "m", "metric": "outboundRequests", "host": "api.example.com", "per": "hour"});
        assert_eq!(AlertQuery::parse(&budget).unwrap().to_json(), budget);
        assert_eq!(
            field(AlertQuery::parse(
                &json!({"source": "budget", "module": "m", "metric": "speed", "per": "hour"})
            )),
            "query.metric"
        );
        assert_eq!(
            field(AlertQuery::parse(
                &json!({"source": "budget", "module": "m", "metric": "runs", "per": "week"})
            )),
            "query.per"
        );

        assert_eq!(
            field(AlertQuery::parse(&json!({"source": "logs"}))),
            "query.source"
        );
        assert_eq!(
            field(AlertQuery::parse(
                &json!({"source": "usage", "measure": "speed", "window": "1h"})
            )),
            "query.measure"
        );
        assert_eq!(
            field(AlertQuery::parse(
                &json!({"source": "usage", "measure": "runs"})
            )),
            "query.window"
        );
        assert_eq!(
            field(AlertQuery::parse(
                &json!({"source": "usage", "measure": "runs", "window": "today"})
            )),
            "query.window"
        );
        assert_eq!(
            field(AlertQuery::parse(
                &json!({"source": "usage", "measure": "runs", "window": "1h", "colour": 1})
            )),
            "query.colour"
        );
        assert_eq!(
            field(AlertQuery::parse(
                &json!({"source": "endpoint", "endpoint": "e", "measure": "uptime"})
            )),
            "query.window"
        );
        assert!(
            AlertQuery::parse(&json!({"source": "endpoint", "endpoint": "e", "measure": "down"}))
                .is_ok()
        );
    }

    #[test]
    fn conditions_compare_and_refuse_by_field() {
        let above = AlertCondition::parse(&json!({"op": ">", "value": 0.05})).unwrap();
        assert!(above.holds(0.06) && !above.holds(0.05));
        let zero = AlertCondition::parse(&json!({"op": "==", "value": 0})).unwrap();
        assert!(zero.holds(0.0) && !zero.holds(1.0));
        let bad = |value: Value| AlertCondition::parse(&value).unwrap_err().field;
        assert_eq!(bad(json!({"op": "=>", "value": 1})), "condition.op");
        assert_eq!(bad(json!({"op": ">", "value": "1"})), "condition.value");
        assert_eq!(bad(json!({"op": ">"})), "condition.value");
        assert_eq!(bad(json!("> 1")), "condition");
        assert_eq!(bad(json!({"op": ">", "value": 1, "x": 1})), "condition.x");
    }

    #[test]
    fn durations_are_whole_units() {
        assert_eq!(parse_duration("for", "0s"), Ok(0));
        assert_eq!(parse_duration("for", "5m"), Ok(5 * MINUTE));
        assert_eq!(parse_duration("for", "2h"), Ok(2 * HOUR));
        for bad in ["", "5", "m", "-1m", "1.5m", "5 m", "1w"] {
            assert_eq!(
                parse_duration("for", bad).unwrap_err().field,
                "for",
                "{bad}"
            );
        }
        for ms in [0, 90_000, 5 * MINUTE, 2 * HOUR, DAY] {
            assert_eq!(parse_duration("for", &format_duration(ms)), Ok(ms));
        }
    }

    #[test]
    fn a_rule_pends_for_its_duration_then_fires_and_resolves_and_no_data_keeps_its_state() {
        use AlertState::{Firing, Ok, Pending};
        assert_eq!(next_change(Ok, 0, Some(true), 0, 10), Some(Change::Firing));
        assert_eq!(
            next_change(Ok, 0, Some(true), 60, 10),
            Some(Change::Pending)
        );
        assert_eq!(next_change(Pending, 10, Some(true), 60, 69), None);
        assert_eq!(
            next_change(Pending, 10, Some(true), 60, 70),
            Some(Change::Firing)
        );
        assert_eq!(
            next_change(Pending, 10, Some(false), 60, 20),
            Some(Change::Cleared)
        );
        assert_eq!(next_change(Firing, 10, Some(true), 60, 99), None);
        assert_eq!(
            next_change(Firing, 10, Some(false), 60, 99),
            Some(Change::Resolved)
        );
        assert_eq!(next_change(Ok, 0, Some(false), 0, 10), None);
        for state in [Ok, Pending, Firing] {
            assert_eq!(next_change(state, 0, None, 0, 1_000_000), None);
        }
        assert!(!Change::Pending.notifies() && !Change::Cleared.notifies());
        assert!(Change::Firing.notifies() && Change::Resolved.notifies());
    }

    #[test]
    fn retries_back_off_to_ten_minutes() {
        assert_eq!(retry_delay(1), 1_000);
        assert_eq!(retry_delay(2), 2_000);
        assert_eq!(retry_delay(5), 16_000);
        assert_eq!(retry_delay(100), 10 * MINUTE);
    }

    #[test]
    fn a_silence_covers_its_rule_or_matching_labels_until_it_ends() {
        let rule = AlertRule {
            id: "r1".to_owned(),
            name: "n".to_owned(),
            query: AlertQuery::parse(
                &json!({"source": "endpoint", "endpoint": "e", "measure": "up"}),
            )
            .unwrap(),
            condition: AlertCondition {
                op: Op::Eq,
                value: 0.0,
            },
            for_ms: 0,
            severity: Severity::Critical,
            labels: BTreeMap::from([("team".to_owned(), "ops".to_owned())]),
            channels: Vec::new(),
            description: None,
            enabled: true,
            state: AlertState::Ok,
            since: 0,
            value: None,
            created_at: 0,
            updated_at: 0,
        };
        let silence = |rule_id: Option<&str>, matchers: Option<(&str, &str)>| Silence {
            id: "s".to_owned(),
            rule_id: rule_id.map(str::to_owned),
            matchers: matchers.map(|(k, v)| BTreeMap::from([(k.to_owned(), v.to_owned())])),
            until: 100,
            comment: String::new(),
            created_by: "admin".to_owned(),
            created_at: 0,
        };
        assert!(silence(Some("r1"), None).covers(&rule, 99));
        assert!(!silence(Some("r1"), None).covers(&rule, 100));
        assert!(!silence(Some("r2"), None).covers(&rule, 50));
        assert!(silence(None, Some(("team", "ops"))).covers(&rule, 50));
        assert!(!silence(None, Some(("team", "dev"))).covers(&rule, 50));
    }
}
