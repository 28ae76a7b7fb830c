//! Endpoint monitors: what a client may define (checked here, secret headers sealed
//! before they are stored), one check of an endpoint (its request through the operator's
//! outbound rules, its answer judged by the endpoint's conditions), and what the API
//! shows of an endpoint's health: its checks, uptime, and how hard Runcell's own modules
//! call its host. Which node checks when is the checker's business (`monitor`); plaintext
//! header secrets exist only in a request being handled and in a check under way, and no
//! message written here quotes a header's value.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::job_config::settle_value;
use super::jobs::double_option;
use super::{ServiceError, Services};
use crate::domain::conditions::{
    Condition, ConditionError, DEFAULT_CONDITION, Observation, first_failing,
};
use crate::domain::endpoint::{Endpoint, EndpointCheck, EndpointHeaders, UptimeCount};
use crate::domain::window::{DAY, HOUR, Window, round_up};
use crate::domain::{
    HostName, Millis, Page, SecretValue, Setting, SettingValue, new_id, now_millis,
};
use crate::runtime::{Probe, ProbeFailure};

/// A check that names no timeout may take this long.
pub(crate) const DEFAULT_TIMEOUT_MS: u32 = 10_000;
/// The longest a check may take: a monitor waiting longer says nothing a timeout does not.
pub(crate) const MAX_TIMEOUT_MS: u32 = 60_000;
/// The longest interval: a day. A rarer check is not monitoring.
pub(crate) const MAX_INTERVAL_SECONDS: u32 = 86_400;
/// Conditions per endpoint; each is evaluated on every check.
const MAX_CONDITIONS: usize = 32;
/// Longest condition text.
const MAX_CONDITION_BYTES: usize = 1024;
/// Headers per endpoint.
const MAX_HEADERS: usize = 32;
/// Longest header value: room for a long bearer token.
const MAX_HEADER_VALUE_BYTES: usize = 8 * 1024;
/// Longest request body: a small health query, not an upload.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest URL.
const MAX_URL_BYTES: usize = 2048;
/// The methods a check may use.
const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
/// Headers the connection itself owns: set by the checker, never by a monitor.
const RESERVED_HEADERS: [&str; 8] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
];

/// A new endpoint monitor, as a client describes it.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct EndpointDraft {
    /// 1 to 128 letters, digits, `-`, `_` or `.`; unique.
    pub name: String,
    /// An `http://` or `https://` URL, without credentials in it (put those in a secret
    /// header).
    pub url: String,
    /// `GET` (the default), `HEAD`, `POST`, `PUT`, `PATCH`, `DELETE` or `OPTIONS`.
    #[serde(default)]
    pub method: Option<String>,
    /// Headers sent with every check: up to 32 names, each mapped to a string or to
    /// `{"secret": "..."}`. A secret is stored encrypted and shown as `{"secret": "***"}`.
    #[serde(default)]
    #[schema(value_type = Option<BTreeMap<String, SettingValue>>)]
    pub headers: Option<BTreeMap<String, SettingValue>>,
    /// The request's body (up to 64 KiB).
    #[serde(default)]
    pub body: Option<String>,
    /// Seconds between checks: at least the server's minimum (10 s unless the operator
    /// lowered it), at most 86,400.
    pub interval_seconds: u32,
    /// How long a check may take, 1 to 60,000 ms (default 10,000).
    #[serde(default)]
    pub timeout_ms: Option<u32>,
    /// What the answer must meet, all of them (see the condition language); none means
    /// `status < 400`.
    #[serde(default)]
    pub conditions: Option<Vec<String>>,
    /// Default `true`.
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// Changes to an endpoint monitor; absent fields stay, `body: null` removes the body.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct EndpointPatch {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
    /// Replaces every header. `{"secret": "***"}` keeps the secret stored under that
    /// name, so an endpoint read with GET can be sent back with edits.
    #[serde(default)]
    #[schema(value_type = Option<BTreeMap<String, SettingValue>>)]
    pub headers: Option<BTreeMap<String, SettingValue>>,
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub body: Option<Option<String>>,
    #[serde(default)]
    pub interval_seconds: Option<u32>,
    #[serde(default)]
    pub timeout_ms: Option<u32>,
    #[serde(default)]
    pub conditions: Option<Vec<String>>,
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// An endpoint's health as the API shows it beside its definition.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EndpointHealth {
    /// Percent of checks up over the last 24 hours, 7 days and 30 days.
    pub uptime: [Option<f64>; 3],
    pub last_check: Option<EndpointCheck>,
    pub consumption: Vec<HostConsumption>,
}

/// How much one module called an endpoint's host over the last 24 hours.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct HostConsumption {
    pub module: String,
    /// Requests the module made to the host (refused ones included).
    pub requests: i64,
    #[serde(rename = "responses5xx")]
    pub responses_5xx: i64,
    /// Requests that got no answer (no connection, a timeout, a broken answer).
    pub errors: i64,
    /// `(responses5xx + errors) / requests`; `null` without requests.
    pub failure_rate: Option<f64>,
}

/// The windows uptime is given over, in order.
pub(crate) const UPTIME_WINDOWS: [(&str, Millis); 3] =
    [("24h", DAY), ("7d", 7 * DAY), ("30d", 30 * DAY)];

fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The condition texts' parse, each error at its index (`conditions[2]`).
pub(crate) fn parse_conditions(
    texts: &[String],
    https: bool,
) -> Result<Vec<Condition>, ServiceError> {
    if texts.len() > MAX_CONDITIONS {
        return Err(ServiceError::unprocessable(
            "conditions",
            format!(
                "{} conditions, above the limit of {MAX_CONDITIONS}",
                texts.len()
            ),
        ));
    }
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let field = format!("conditions[{i}]");
            if text.len() > MAX_CONDITION_BYTES {
                return Err(ServiceError::unprocessable(
                    field,
                    format!("{} bytes, above the limit of {MAX_CONDITION_BYTES}", text.len()),
                ));
            }
            let condition = Condition::parse(text).map_err(|ConditionError { column, message }| {
                ServiceError::unprocessable(field.clone(), format!("at column {column}: {message}"))
            })?;
            if condition.needs_certificate() && !https {
                return Err(ServiceError::unprocessable(
                    field,
                    "certificate.expiresInDays needs an https:// URL: a plain http answer has no certificate",
                ));
            }
            Ok(condition)
        })
        .collect()
}

/// The URL, checked: http or https, a host, no credentials. Returns whether it is https.
fn check_url(text: &str) -> Result<bool, ServiceError> {
    if text.len() > MAX_URL_BYTES {
        return Err(ServiceError::unprocessable(
            "url",
            format!("{} bytes, above the limit of {MAX_URL_BYTES}", text.len()),
        ));
    }
    let url = url::Url::parse(text)
        .map_err(|err| ServiceError::bad("url", format!("`{text}` is not a URL: {err}")))?;
    let https = match url.scheme() {
        "https" => true,
        "http" => false,
        other => {
            return Err(ServiceError::bad(
                "url",
                format!("only http:// and https:// URLs can be checked, not `{other}://`"),
            ));
        }
    };
    let host = url.host_str().unwrap_or_default();
    HostName::parse(host)
        .map_err(|err| ServiceError::bad("url", format!("`{host}` is not a valid host: {err}")))?;
    if !url.username().is_empty() || url.password().is_some() {
        // Never quoted back: the text holds a credential.
        return Err(ServiceError::unprocessable(
            "url",
            "a URL with credentials in it would show them to every reader of the endpoint; \
             send them in a secret header (`authorization`) instead",
        ));
    }
    Ok(https)
}

fn check_method(method: &str) -> Result<String, ServiceError> {
    let upper = method.to_ascii_uppercase();
    if METHODS.contains(&upper.as_str()) {
        Ok(upper)
    } else {
        Err(ServiceError::bad(
            "method",
            format!("`{method}` is not one of {}", METHODS.join(", ")),
        ))
    }
}

impl Services {
    fn check_endpoint_definition(&self, endpoint: &Endpoint) -> Result<(), ServiceError> {
        if !is_valid_name(&endpoint.name) {
            return Err(ServiceError::bad(
                "name",
                format!(
                    "`{}` is not a valid endpoint name: 1 to 128 letters, digits, `-`, `_` or `.`",
                    endpoint.name
                ),
            ));
        }
        let https = check_url(&endpoint.url)?;
        let minimum = self.settings.endpoint_min_interval.as_secs().max(1);
        let interval = u64::from(endpoint.interval_seconds);
        if interval < minimum || endpoint.interval_seconds > MAX_INTERVAL_SECONDS {
            return Err(ServiceError::unprocessable(
                "intervalSeconds",
                format!(
                    "{interval} is not between the minimum of {minimum} seconds and {MAX_INTERVAL_SECONDS}"
                ),
            ));
        }
        if !(1..=MAX_TIMEOUT_MS).contains(&endpoint.timeout_ms) {
            return Err(ServiceError::unprocessable(
                "timeoutMs",
                format!(
                    "{} is not between 1 and {MAX_TIMEOUT_MS}",
                    endpoint.timeout_ms
                ),
            ));
        }
        if let Some(body) = &endpoint.body
            && body.len() > MAX_BODY_BYTES
        {
            return Err(ServiceError::unprocessable(
                "body",
                format!("{} bytes, above the limit of {MAX_BODY_BYTES}", body.len()),
            ));
        }
        parse_conditions(&endpoint.conditions, https)?;
        Ok(())
    }

    /// What to store for the headers a client gave, replacing `stored`.
    fn settle_headers(
        &self,
        endpoint_id: &str,
        given: BTreeMap<String, SettingValue>,
        stored: &EndpointHeaders,
    ) -> Result<EndpointHeaders, ServiceError> {
        if given.len() > MAX_HEADERS {
            return Err(ServiceError::unprocessable(
                "headers",
                format!("{} headers, above the limit of {MAX_HEADERS}", given.len()),
            ));
        }
        let mut settled = BTreeMap::new();
        for (given_name, value) in given {
            let field = format!("headers.{given_name}");
            let name = given_name.to_ascii_lowercase();
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(ServiceError::bad(
                    field,
                    format!("`{given_name}` is not a valid header name"),
                ));
            }
            if RESERVED_HEADERS.contains(&name.as_str()) || name.starts_with("proxy-") {
                return Err(ServiceError::unprocessable(
                    field,
                    format!("`{name}` belongs to the connection, which the checker sets up itself"),
                ));
            }
            if settled.contains_key(&name) {
                return Err(ServiceError::bad(
                    field,
                    format!("`{name}` is given twice (header names ignore case)"),
                ));
            }
            let text = match &value {
                SettingValue::Plain(text) | SettingValue::Secret(SecretValue { secret: text }) => {
                    text
                }
            };
            if text.len() > MAX_HEADER_VALUE_BYTES {
                return Err(ServiceError::unprocessable(
                    field,
                    format!(
                        "the value has {} bytes, above the limit of {MAX_HEADER_VALUE_BYTES}",
                        text.len()
                    ),
                ));
            }
            if http::HeaderValue::from_str(text).is_err() {
                // Never quoted: it may be a secret.
                return Err(ServiceError::bad(
                    field,
                    "the value is not valid in an HTTP header (visible ASCII, spaces and tabs only)",
                ));
            }
            let seal = (self.secrets.as_ref())
                .map(|sealer| |secret: &str| sealer.seal_header(endpoint_id, &name, secret));
            let setting = settle_value(&field, &name, value, stored.get(&name), seal)?;
            settled.insert(name, setting);
        }
        Ok(EndpointHeaders::new(settled))
    }

    pub(crate) async fn create_endpoint(
        &self,
        draft: EndpointDraft,
    ) -> Result<Endpoint, ServiceError> {
        let now = now_millis();
        let id = new_id();
        let headers = self.settle_headers(
            &id,
            draft.headers.unwrap_or_default(),
            &EndpointHeaders::default(),
        )?;
        let enabled = draft.enabled.unwrap_or(true);
        let endpoint = Endpoint {
            name: draft.name,
            url: draft.url,
            method: check_method(draft.method.as_deref().unwrap_or("GET"))?,
            headers,
            body: draft.body,
            interval_seconds: draft.interval_seconds,
            timeout_ms: draft.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS),
            conditions: draft.conditions.unwrap_or_default(),
            enabled,
            // The first check is due at once.
            next_check_at: enabled.then_some(now),
            created_at: now,
            updated_at: now,
            id,
        };
        self.check_endpoint_definition(&endpoint)?;
        self.store.insert_endpoint(&endpoint).await?;
        Ok(endpoint)
    }

    pub(crate) async fn get_endpoint(&self, id: &str) -> Result<Endpoint, ServiceError> {
        self.store
            .get_endpoint(id)
            .await?
            .ok_or_else(|| ServiceError::not_found("endpoint", id))
    }

    pub(crate) async fn list_endpoints(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Endpoint>, ServiceError> {
        Ok(self.store.list_endpoints(cursor, limit).await?)
    }

    /// Applies `patch`. A change to what is checked, or enabling, makes the next check due
    /// at once, so its effect shows without waiting an interval.
    pub(crate) async fn update_endpoint(
        &self,
        id: &str,
        patch: EndpointPatch,
    ) -> Result<Endpoint, ServiceError> {
        let before = self.get_endpoint(id).await?;
        let mut endpoint = before.clone();
        if let Some(name) = patch.name {
            endpoint.name = name;
        }
        if let Some(url) = patch.url {
            endpoint.url = url;
        }
        if let Some(method) = patch.method {
            endpoint.method = check_method(&method)?;
        }
        if let Some(headers) = patch.headers {
            endpoint.headers = self.settle_headers(id, headers, &before.headers)?;
        }
        if let Some(body) = patch.body {
            endpoint.body = body;
        }
        if let Some(interval) = patch.interval_seconds {
            endpoint.interval_seconds = interval;
        }
        if let Some(timeout) = patch.timeout_ms {
            endpoint.timeout_ms = timeout;
        }
        if let Some(conditions) = patch.conditions {
            endpoint.conditions = conditions;
        }
        if let Some(enabled) = patch.enabled {
            endpoint.enabled = enabled;
        }
        self.check_endpoint_definition(&endpoint)?;
        let now = now_millis();
        let checked_differently = endpoint.url != before.url
            || endpoint.method != before.method
            || endpoint.headers != before.headers
            || endpoint.body != before.body
            || endpoint.interval_seconds != before.interval_seconds
            || endpoint.timeout_ms != before.timeout_ms
            || endpoint.conditions != before.conditions;
        endpoint.next_check_at = match (endpoint.enabled, before.enabled) {
            (false, _) => None,
            (true, false) => Some(now),
            (true, true) if checked_differently => Some(now),
            (true, true) => before.next_check_at.or(Some(now)),
        };
        endpoint.updated_at = now;
        if !self.store.update_endpoint(&endpoint).await? {
            return Err(ServiceError::not_found("endpoint", id));
        }
        Ok(endpoint)
    }

    /// Deletes an endpoint with its checks; returns what it was.
    pub(crate) async fn delete_endpoint(&self, id: &str) -> Result<Endpoint, ServiceError> {
        let endpoint = self.get_endpoint(id).await?;
        if !self.store.delete_endpoint(id).await? {
            return Err(ServiceError::not_found("endpoint", id));
        }
        Ok(endpoint)
    }

    /// A page of an endpoint's checks due in `[from, to)`, newest first.
    pub(crate) async fn endpoint_checks(
        &self,
        id: &str,
        from: Millis,
        to: Millis,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<EndpointCheck>, ServiceError> {
        let cursor = cursor
            .map(|text| {
                text.parse::<Millis>().map_err(|_| {
                    ServiceError::bad(
                        "cursor",
                        format!("`{text}` is not a cursor this listing gave"),
                    )
                })
            })
            .transpose()?;
        self.get_endpoint(id).await?;
        Ok(self
            .store
            .endpoint_checks(id, from, to, cursor, limit)
            .await?)
    }

    /// Uptime over the last day, week and month, the last check, and what modules asked
    /// of the endpoint's host over the last day.
    pub(crate) async fn endpoint_health(
        &self,
        endpoint: &Endpoint,
    ) -> Result<EndpointHealth, ServiceError> {
        let now = now_millis();
        let since: Vec<Millis> = UPTIME_WINDOWS.iter().map(|(_, span)| now - span).collect();
        let counts = self.store.endpoint_uptime(&endpoint.id, &since).await?;
        let mut uptime = [None; 3];
        for (slot, count) in uptime.iter_mut().zip(counts) {
            *slot = UptimeCount::percent(count);
        }
        let last_check = self
            .store
            .endpoint_checks(&endpoint.id, 0, Millis::MAX, None, 1)
            .await?
            .items
            .into_iter()
            .next();
        Ok(EndpointHealth {
            uptime,
            last_check,
            consumption: self.host_consumption(&endpoint.url, now).await?,
        })
    }

    /// Each module's requests to the host of `url` over the day before `now`, from the
    /// outbound usage rollups (hour points: the day is read as 24 to 25 rows per module).
    async fn host_consumption(
        &self,
        url: &str,
        now: Millis,
    ) -> Result<Vec<HostConsumption>, ServiceError> {
        let Some(host) = url::Url::parse(url)
            .ok()
            .and_then(|url| url.host_str().and_then(|host| HostName::parse(host).ok()))
        else {
            return Ok(Vec::new());
        };
        let from = now - DAY;
        let window = Window {
            from: from - from.rem_euclid(HOUR),
            to: round_up(now, HOUR),
            step: HOUR,
        };
        let filter = super::usage::UsageFilter {
            host: Some(host.to_string()),
            ..super::usage::UsageFilter::default()
        };
        let series = self.outbound_series(&window, &filter).await?;
        let mut by_module: BTreeMap<String, HostConsumption> = BTreeMap::new();
        for one in series {
            let total = by_module
                .entry(one.module.clone())
                .or_insert_with(|| HostConsumption {
                    module: one.module.clone(),
                    requests: 0,
                    responses_5xx: 0,
                    errors: 0,
                    failure_rate: None,
                });
            for (_, tally) in &one.points {
                total.requests += tally.requests;
                total.responses_5xx += tally.responses_5xx;
                total.errors += tally.errors;
            }
        }
        Ok(by_module
            .into_values()
            .filter(|total| total.requests > 0)
            .map(|mut total| {
                let failed = (total.responses_5xx + total.errors) as f64;
                total.failure_rate =
                    Some((failed * 10_000.0 / total.requests as f64).round() / 10_000.0);
                total
            })
            .collect())
    }

    /// Checks `endpoint` once, for its interval due at `due_at`, on node `node_id`: the
    /// request through the operator's outbound rules, the answer judged by the
    /// endpoint's conditions. Never fails: what went wrong is the check's `error`.
    pub(crate) async fn check_endpoint(
        &self,
        endpoint: &Endpoint,
        due_at: Millis,
        node_id: &str,
    ) -> EndpointCheck {
        let down = |error: String| EndpointCheck {
            endpoint_id: endpoint.id.clone(),
            due_at,
            checked_at: now_millis(),
            up: false,
            status_code: None,
            latency_ms: None,
            failed_condition: None,
            error: Some(error),
            node_id: node_id.to_owned(),
        };
        let headers = match self.open_headers(endpoint) {
            Ok(headers) => headers,
            Err(error) => return down(error),
        };
        let https = endpoint.url.starts_with("https:");
        let mut conditions = match parse_conditions(&endpoint.conditions, https) {
            Ok(conditions) => conditions,
            Err(err) => return down(format!("the endpoint's conditions do not parse: {err}")),
        };
        if conditions.is_empty() {
            conditions.push(Condition::parse(DEFAULT_CONDITION).expect("the default parses"));
        }
        let Ok(method) = http::Method::from_bytes(endpoint.method.as_bytes()) else {
            return down(format!("`{}` is not an HTTP method", endpoint.method));
        };
        let probe = Probe {
            method,
            url: endpoint.url.clone(),
            headers,
            body: endpoint.body.clone(),
            timeout: Duration::from_millis(u64::from(endpoint.timeout_ms)),
        };
        let answer = match crate::runtime::probe(&self.outbound, &probe).await {
            Ok(answer) => answer,
            Err(failure) => {
                if matches!(failure, ProbeFailure::Refused(_)) {
                    tracing::info!(endpoint = %endpoint.name, reason = %failure, "endpoint check refused");
                }
                return down(failure.to_string());
            }
        };
        let checked_at = now_millis();
        let body = String::from_utf8_lossy(&answer.body);
        let latency_ms = answer.elapsed.as_secs_f64() * 1000.0;
        let expires_in_days = answer
            .certificate_not_after
            .map(|not_after| (not_after - checked_at) as f64 / DAY as f64);
        let seen = Observation::new(answer.status, latency_ms, &body, expires_in_days);
        let failed = first_failing(&conditions, &seen).map(|c| c.text().to_owned());
        EndpointCheck {
            endpoint_id: endpoint.id.clone(),
            due_at,
            checked_at,
            up: failed.is_none(),
            status_code: Some(answer.status),
            latency_ms: Some(latency_ms.round() as u32),
            failed_condition: failed,
            error: None,
            node_id: node_id.to_owned(),
        }
    }

    /// The endpoint's headers with secrets opened, or why one does not open (naming the
    /// header, never its value).
    fn open_headers(&self, endpoint: &Endpoint) -> Result<Vec<(String, String)>, String> {
        endpoint
            .headers
            .iter()
            .map(|(name, setting)| {
                let value = match setting {
                    Setting::Plain(value) => value.clone(),
                    Setting::Sealed(sealed) => {
                        let sealer = self.secrets.as_ref().ok_or_else(|| {
                            format!(
                                "header `{name}` is a secret, and this node has no secret key to \
                                 open it: set RUNCELL_SECRET_KEY, the same on every node"
                            )
                        })?;
                        sealer
                            .open_header(&endpoint.id, name, sealed)
                            .map_err(|_| {
                                format!(
                                    "secret header `{name}` does not open with this node's secret \
                                     key: give every node the same RUNCELL_SECRET_KEY, or set the \
                                     header again"
                                )
                            })?
                    }
                };
                Ok((name.to_owned(), value))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(err: &ServiceError) -> String {
        match err {
            ServiceError::BadField { field, .. } | ServiceError::Unprocessable { field, .. } => {
                field.clone()
            }
            other => panic!("not a field error: {other}"),
        }
    }

    #[test]
    fn a_condition_that_does_not_parse_is_named_by_its_index_and_column() {
        let texts = vec![
            "status == 200".to_owned(),
            "latencyMs < 300".to_owned(),
            "status < abc".to_owned(),
        ];
        let err = parse_conditions(&texts, false).unwrap_err();
        assert!(matches!(err, ServiceError::Unprocessable { .. }));
        assert_eq!(field_of(&err), "conditions[2]");
        assert_eq!(
            err.to_string(),
            "conditions[2]: at column 10: expected a value: a number, a \"string\", true or false"
        );
        let certificate = vec!["certificate.expiresInDays > 14".to_owned()];
        assert_eq!(
            field_of(&parse_conditions(&certificate, false).unwrap_err()),
            "conditions[0]"
        );
        assert_eq!(parse_conditions(&certificate, true).unwrap().len(), 1);
    }

    #[test]
    fn urls_must_be_http_with_a_host_and_no_credentials() {
        assert!(check_url("https://example.com/health").unwrap());
        assert!(!check_url("http://127.0.0.1:8080/").unwrap());
        for bad in ["ftp://example.com/", "not a url", "file:///etc/passwd"] {
            let err = check_url(bad).unwrap_err();
            assert!(matches!(err, ServiceError::BadField { .. }), "{bad}: {err}");
            assert_eq!(field_of(&err), "url");
        }
        let err = check_url("https://user:hunter2@example.com/").unwrap_err();
        assert!(matches!(err, ServiceError::Unprocessable { .. }));
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn methods_are_a_known_few_in_any_case() {
        assert_eq!(check_method("get").unwrap(), "GET");
        assert_eq!(check_method("POST").unwrap(), "POST");
        assert_eq!(field_of(&check_method("TRACE").unwrap_err()), "method");
    }
}
