//! The decisions of `endpoint-monitor`, free of host calls: where the endpoint list comes
//! from, what a valid list is, whether an answer means up, and the run's verdict.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use runcell_sdk::JobError;
use serde::{Deserialize, Serialize};

/// Most endpoints one run checks: they are checked one after another, within one run's
/// time limit.
pub const MAX_ENDPOINTS: usize = 20;
/// How long each wait of a check (connecting, first byte, each pause in the body) may
/// take unless the endpoint says otherwise.
pub const DEFAULT_TIMEOUT_MS: u32 = 5_000;
/// The longest per-endpoint timeout accepted.
pub const MAX_TIMEOUT_MS: u32 = 30_000;
/// Longest endpoint name, in bytes; names become metric labels.
pub const MAX_NAME_BYTES: usize = 64;

/// JSON Schema of the `check-endpoints` input, published in the manifest.
pub const CHECK_INPUT_SCHEMA: &str = r#"{
  "type": ["object", "null"],
  "additionalProperties": false,
  "properties": {
    "endpoints": {
      "type": "array",
      "minItems": 1,
      "maxItems": 20,
      "items": {
        "type": "object",
        "additionalProperties": false,
        "required": ["name", "url"],
        "properties": {
          "name": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
          "url": {"type": "string", "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://"},
          "expectStatus": {"type": "integer", "minimum": 100, "maximum": 599},
          "timeoutMs": {"type": "integer", "minimum": 1, "maximum": 30000}
        }
      }
    }
  }
}"#;

/// One endpoint to check.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoint {
    /// Label of its metrics and log lines: letters, digits, `.`, `_` and `-`, unique.
    pub name: String,
    /// Absolute `http` or `https` URL, requested with `GET`.
    pub url: String,
    /// The status that means up; without it, any 2xx does.
    #[serde(default)]
    pub expect_status: Option<u16>,
    /// Bound of each wait of the request, in milliseconds (default 5000, at most 30000).
    #[serde(default)]
    pub timeout_ms: Option<u32>,
}

impl Endpoint {
    /// The timeout to use for this endpoint.
    pub fn timeout_ms(&self) -> u32 {
        self.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS)
    }

    /// Whether an answer with `status` means up.
    pub fn accepts(&self, status: u16) -> bool {
        match self.expect_status {
            Some(expected) => status == expected,
            None => (200..300).contains(&status),
        }
    }

    fn expectation(&self) -> String {
        match self.expect_status {
            Some(expected) => expected.to_string(),
            None => "2xx".to_owned(),
        }
    }
}

/// Input of `check-endpoints`: endpoints to check, for runs of a job without an
/// `endpoints` setting. No input at all (a cron tick) is fine when the setting exists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckInput {
    /// The endpoints; allowed only when the `endpoints` setting is absent.
    #[serde(default)]
    pub endpoints: Option<Vec<Endpoint>>,
}

/// The endpoints of this run: the `endpoints` setting (`configured`, JSON text) when the
/// job has one, else the input's. Both at once is refused, so that a run never checks
/// something other than what its caller asked for without saying so.
pub fn resolve_endpoints(
    configured: Option<&str>,
    input: Option<CheckInput>,
) -> Result<Vec<Endpoint>, JobError> {
    let from_input = input.and_then(|input| input.endpoints);
    let endpoints = match (configured, from_input) {
        (Some(_), Some(_)) => {
            return Err(JobError::invalid_input(
                "endpoints: this job's endpoints come from its `endpoints` setting; \
                 remove `endpoints` from the input, or the setting from the job",
            ));
        }
        (Some(text), None) => {
            let endpoints: Vec<Endpoint> = serde_json::from_str(text).map_err(|error| {
                JobError::permanent(format_args!(
                    "setting `endpoints` is not a JSON array of {{name, url, expectStatus?, \
                     timeoutMs?}}: {error}"
                ))
            })?;
            validate(&endpoints).map_err(|problem| {
                JobError::permanent(format_args!("setting `endpoints`{problem}"))
            })?;
            endpoints
        }
        (None, Some(endpoints)) => {
            validate(&endpoints)
                .map_err(|problem| JobError::invalid_input(format_args!("endpoints{problem}")))?;
            endpoints
        }
        (None, None) => {
            return Err(JobError::permanent(
                "no endpoints to check: set the job's `endpoints` setting to a JSON array of \
                 {name, url, expectStatus?, timeoutMs?}, or pass {\"endpoints\": [...]} as input",
            ));
        }
    };
    Ok(endpoints)
}

/// The first problem of a list, as a suffix of the list's name: `[2].url: ...`.
fn validate(endpoints: &[Endpoint]) -> Result<(), String> {
    if endpoints.is_empty() {
        return Err(": the list is empty".to_owned());
    }
    if endpoints.len() > MAX_ENDPOINTS {
        return Err(format!(
            ": {} endpoints, at most {MAX_ENDPOINTS} per run",
            endpoints.len()
        ));
    }
    let mut names = BTreeSet::new();
    for (index, endpoint) in endpoints.iter().enumerate() {
        let name = &endpoint.name;
        let name_ok = !name.is_empty()
            && name.len() <= MAX_NAME_BYTES
            && name
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'));
        if !name_ok {
            return Err(format!(
                "[{index}].name: {name:?} must be 1 to {MAX_NAME_BYTES} letters, digits, `.`, `_` or `-`"
            ));
        }
        if !names.insert(name.as_str()) {
            return Err(format!("[{index}].name: {name:?} is used twice"));
        }
        let scheme = endpoint.url.split_once("://").map(|(scheme, _)| scheme);
        if !scheme.is_some_and(|scheme| {
            scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")
        }) {
            return Err(format!(
                "[{index}].url: must start with http:// or https://"
            ));
        }
        if let Some(status) = endpoint.expect_status
            && !(100..=599).contains(&status)
        {
            return Err(format!(
                "[{index}].expectStatus: {status} is not an HTTP status (100 to 599)"
            ));
        }
        if let Some(timeout) = endpoint.timeout_ms
            && (timeout == 0 || timeout > MAX_TIMEOUT_MS)
        {
            return Err(format!(
                "[{index}].timeoutMs: must be 1 to {MAX_TIMEOUT_MS}"
            ));
        }
    }
    Ok(())
}

/// What one request to an endpoint produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// The endpoint answered with `status` after `latency_ms`.
    Answered {
        /// The response status.
        status: u16,
        /// Time from sending the request to having the whole response, in milliseconds.
        latency_ms: f64,
    },
    /// No answer. `misconfigured` when the request could not be made as configured (host
    /// not approved, malformed URL): the endpoint's state is unknown, and retrying will
    /// not help.
    Failed {
        /// What went wrong, for operators.
        error: String,
        /// Whether the failure is the configuration's rather than the endpoint's.
        misconfigured: bool,
    },
}

/// The result of checking one endpoint, as reported in the summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckResult {
    /// The endpoint's name.
    pub name: String,
    /// Whether it answered as expected.
    pub up: bool,
    /// The status it answered with, if it answered.
    pub status: Option<u16>,
    /// How long the answer took, if it answered.
    pub latency_ms: Option<f64>,
    /// Why it counts as down, if it does.
    pub error: Option<String>,
    /// Whether the failure is the configuration's (never retried).
    #[serde(skip)]
    pub misconfigured: bool,
}

impl CheckResult {
    /// Judges `probe` of `endpoint`.
    pub fn judge(endpoint: &Endpoint, probe: Probe) -> Self {
        let name = endpoint.name.clone();
        match probe {
            Probe::Answered { status, latency_ms } => {
                let up = endpoint.accepts(status);
                Self {
                    name,
                    up,
                    status: Some(status),
                    latency_ms: Some(latency_ms),
                    error: (!up)
                        .then(|| format!("status {status}, expected {}", endpoint.expectation())),
                    misconfigured: false,
                }
            }
            Probe::Failed {
                error,
                misconfigured,
            } => Self {
                name,
                up: false,
                status: None,
                latency_ms: None,
                error: Some(error),
                misconfigured,
            },
        }
    }
}

/// What a run returns when every endpoint is up.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Number of endpoints checked.
    pub checked: usize,
    /// How many were up.
    pub up: usize,
    /// How many were down.
    pub down: usize,
    /// Every result, in the configured order.
    pub endpoints: Vec<CheckResult>,
}

impl Summary {
    /// The summary over `results`.
    pub fn new(results: Vec<CheckResult>) -> Self {
        let up = results.iter().filter(|result| result.up).count();
        Self {
            checked: results.len(),
            up,
            down: results.len() - up,
            endpoints: results,
        }
    }

    /// The run's outcome: the summary when everything is up; `permanent` when an endpoint
    /// could not be checked as configured (a retry would fail the same way); otherwise
    /// `transient` naming every endpoint that is down, so the run is retried and alerts
    /// can fire on repeated failures.
    pub fn verdict(self) -> Result<Self, JobError> {
        let misconfigured: Vec<&CheckResult> =
            self.endpoints.iter().filter(|r| r.misconfigured).collect();
        if !misconfigured.is_empty() {
            return Err(JobError::permanent(format_args!(
                "cannot check {}: {}",
                plural(misconfigured.len(), "endpoint"),
                describe(&misconfigured)
            )));
        }
        if self.down > 0 {
            let down: Vec<&CheckResult> = self.endpoints.iter().filter(|r| !r.up).collect();
            return Err(JobError::transient(format_args!(
                "{} of {} down: {}",
                self.down,
                plural(self.checked, "endpoint"),
                describe(&down)
            )));
        }
        Ok(self)
    }
}

fn describe(results: &[&CheckResult]) -> String {
    let mut text = String::new();
    for (i, result) in results.iter().enumerate() {
        if i > 0 {
            text.push_str("; ");
        }
        let error = result.error.as_deref().unwrap_or("down");
        let _ = write!(text, "{} ({error})", result.name);
    }
    text
}

fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(name: &str, url: &str) -> Endpoint {
        Endpoint {
            name: name.to_owned(),
            url: url.to_owned(),
            expect_status: None,
            timeout_ms: None,
        }
    }

    fn answered(status: u16) -> Probe {
        Probe::Answered {
            status,
            latency_ms: 12.5,
        }
    }

    fn failed(error: &str, misconfigured: bool) -> Probe {
        Probe::Failed {
            error: error.to_owned(),
            misconfigured,
        }
    }

    const CONFIG: &str = r#"[
        {"name": "api", "url": "https://api.example.com/health", "expectStatus": 204},
        {"name": "web", "url": "http://127.0.0.1:8080/", "timeoutMs": 1000}
    ]"#;

    #[test]
    fn endpoints_come_from_the_setting() {
        let endpoints = resolve_endpoints(Some(CONFIG), None).unwrap();
        assert_eq!(endpoints.len(), 2);
        assert_eq!(endpoints[0].expect_status, Some(204));
        assert_eq!(endpoints[0].timeout_ms(), DEFAULT_TIMEOUT_MS);
        assert_eq!(endpoints[1].timeout_ms(), 1_000);

        let empty_input = Some(CheckInput::default());
        assert_eq!(
            resolve_endpoints(Some(CONFIG), empty_input).unwrap(),
            endpoints
        );
    }

    #[test]
    fn without_the_setting_endpoints_come_from_the_input() {
        let input: CheckInput = serde_json::from_str(
            r#"{"endpoints": [{"name": "local", "url": "http://127.0.0.1:9/"}]}"#,
        )
        .unwrap();
        let endpoints = resolve_endpoints(None, Some(input)).unwrap();
        assert_eq!(endpoints, [endpoint("local", "http://127.0.0.1:9/")]);
    }

    #[test]
    fn the_setting_and_the_input_together_are_refused() {
        let input = CheckInput {
            endpoints: Some(vec![endpoint("a", "http://a/")]),
        };
        let error = resolve_endpoints(Some(CONFIG), Some(input)).unwrap_err();
        assert!(matches!(error, JobError::InvalidInput(m) if m.contains("`endpoints` setting")));
    }

    #[test]
    fn no_endpoints_at_all_is_permanent_and_says_where_to_put_them() {
        for input in [None, Some(CheckInput::default())] {
            let error = resolve_endpoints(None, input).unwrap_err();
            assert!(matches!(error, JobError::Permanent(m) if m.contains("`endpoints` setting")));
        }
    }

    #[test]
    fn a_broken_setting_is_permanent_and_a_broken_input_invalid() {
        let error = resolve_endpoints(Some("{"), None).unwrap_err();
        assert!(
            matches!(error, JobError::Permanent(m) if m.starts_with("setting `endpoints` is not"))
        );

        let error =
            resolve_endpoints(Some(r#"[{"name": "a", "url": "ftp://a/"}]"#), None).unwrap_err();
        assert_eq!(
            error,
            JobError::permanent("setting `endpoints`[0].url: must start with http:// or https://")
        );

        let input = CheckInput {
            endpoints: Some(vec![endpoint("a", "http://a/"), endpoint("a", "http://b/")]),
        };
        assert_eq!(
            resolve_endpoints(None, Some(input)).unwrap_err(),
            JobError::invalid_input("endpoints[1].name: \"a\" is used twice")
        );
    }

    #[test]
    fn lists_are_checked_field_by_field() {
        let problem = |endpoints: Vec<Endpoint>| validate(&endpoints).unwrap_err();
        assert_eq!(problem(vec![]), ": the list is empty");
        assert!(
            problem(vec![endpoint("a", "http://a/"); MAX_ENDPOINTS + 1]).contains("at most 20")
        );
        assert!(problem(vec![endpoint("a b", "http://a/")]).starts_with("[0].name"));
        assert!(problem(vec![endpoint("", "http://a/")]).starts_with("[0].name"));
        assert!(problem(vec![endpoint(&"n".repeat(65), "http://a/")]).starts_with("[0].name"));
        assert!(problem(vec![endpoint("a", "a.example.com")]).starts_with("[0].url"));

        let mut bad_status = endpoint("a", "HTTPS://a/");
        bad_status.expect_status = Some(99);
        assert!(problem(vec![bad_status]).starts_with("[0].expectStatus"));
        let mut bad_timeout = endpoint("a", "http://a/");
        bad_timeout.timeout_ms = Some(0);
        assert!(problem(vec![bad_timeout.clone()]).starts_with("[0].timeoutMs"));
        bad_timeout.timeout_ms = Some(MAX_TIMEOUT_MS + 1);
        assert!(problem(vec![bad_timeout]).starts_with("[0].timeoutMs"));

        validate(&[endpoint("api.v2_x-1", "http://a/")]).unwrap();
    }

    #[test]
    fn unknown_fields_are_refused() {
        serde_json::from_str::<Vec<Endpoint>>(
            r#"[{"name":"a","url":"http://a/","method":"POST"}]"#,
        )
        .unwrap_err();
        serde_json::from_str::<CheckInput>(r#"{"targets":[]}"#).unwrap_err();
    }

    #[test]
    fn any_2xx_is_up_unless_a_status_is_expected() {
        let plain = endpoint("a", "http://a/");
        assert!(plain.accepts(200) && plain.accepts(204) && plain.accepts(299));
        assert!(!plain.accepts(301) && !plain.accepts(404) && !plain.accepts(503));

        let mut strict = plain;
        strict.expect_status = Some(401);
        assert!(strict.accepts(401));
        assert!(!strict.accepts(200));
    }

    #[test]
    fn answers_and_failures_are_judged() {
        let api = endpoint("api", "http://a/");
        let up = CheckResult::judge(&api, answered(200));
        assert!(up.up);
        assert_eq!(
            (up.status, up.latency_ms, up.error),
            (Some(200), Some(12.5), None)
        );

        let wrong = CheckResult::judge(&api, answered(500));
        assert!(!wrong.up);
        assert_eq!(wrong.error.as_deref(), Some("status 500, expected 2xx"));
        assert_eq!(wrong.latency_ms, Some(12.5));

        let refused = CheckResult::judge(&api, failed("GET http://a/: connection refused", false));
        assert!(!refused.up && !refused.misconfigured);
        assert_eq!((refused.status, refused.latency_ms), (None, None));
    }

    #[test]
    fn all_up_is_a_summary() {
        let results = vec![
            CheckResult::judge(&endpoint("a", "http://a/"), answered(200)),
            CheckResult::judge(&endpoint("b", "http://b/"), answered(204)),
        ];
        let summary = Summary::new(results).verdict().unwrap();
        assert_eq!((summary.checked, summary.up, summary.down), (2, 2, 0));
        assert_eq!(
            serde_json::to_value(&summary).unwrap()["endpoints"][0],
            serde_json::json!({"name": "a", "up": true, "status": 200, "latencyMs": 12.5, "error": null})
        );
    }

    #[test]
    fn any_endpoint_down_is_transient_and_names_each() {
        let mut strict = endpoint("web", "http://w/");
        strict.expect_status = Some(200);
        let results = vec![
            CheckResult::judge(
                &endpoint("api", "http://a/"),
                failed("connection refused", false),
            ),
            CheckResult::judge(&endpoint("ok", "http://o/"), answered(200)),
            CheckResult::judge(&strict, answered(503)),
        ];
        assert_eq!(
            Summary::new(results).verdict().unwrap_err(),
            JobError::transient(
                "2 of 3 endpoints down: api (connection refused); web (status 503, expected 200)"
            )
        );
    }

    #[test]
    fn a_misconfigured_endpoint_is_permanent_even_when_others_are_down() {
        let results = vec![
            CheckResult::judge(&endpoint("api", "http://a/"), failed("timed out", false)),
            CheckResult::judge(
                &endpoint("x", "http://x/"),
                failed("GET http://x/: denied: ...", true),
            ),
        ];
        assert_eq!(
            Summary::new(results).verdict().unwrap_err(),
            JobError::permanent("cannot check 1 endpoint: x (GET http://x/: denied: ...)")
        );
    }

    #[test]
    fn the_input_schema_is_json_and_agrees_with_the_limits() {
        let schema: serde_json::Value = serde_json::from_str(CHECK_INPUT_SCHEMA).unwrap();
        let endpoints = &schema["properties"]["endpoints"];
        assert_eq!(endpoints["maxItems"], MAX_ENDPOINTS);
        assert_eq!(
            endpoints["items"]["properties"]["timeoutMs"]["maximum"],
            MAX_TIMEOUT_MS
        );
    }
}
