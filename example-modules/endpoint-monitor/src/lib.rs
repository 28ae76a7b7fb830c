//! `endpoint-monitor`: checks that HTTP endpoints answer, and records how fast.
//!
//! The job `check-endpoints` sends `GET` to each endpoint in turn, records two samples
//! per endpoint — `endpoint.up` (1 or 0) and, when it answered, `endpoint.latency_ms` —
//! labelled `endpoint=<name>`, logs one line per endpoint, and returns a summary. Any
//! endpoint down fails the run as `transient`, so it is retried and shows in the
//! execution history; alert rules can watch `endpoint.up`.
//!
//! # Endpoints
//!
//! The list is the job's `endpoints` setting, a JSON array:
//!
//! ```json
//! [
//!   {"name": "api", "url": "https://api.example.com/health", "expectStatus": 204},
//!   {"name": "web", "url": "https://www.example.com/", "timeoutMs": 2000}
//! ]
//! ```
//!
//! `name` labels the metrics (letters, digits, `.`, `_`, `-`; unique), `expectStatus`
//! defaults to any 2xx, `timeoutMs` (default 5000) bounds each wait of the request. A job
//! without the setting takes the same array from its input, `{"endpoints": [...]}`, which
//! is handy for a one-off check; with the setting, endpoints in the input are refused.
//!
//! Endpoints are checked one after another, and the run's time limit (120 s unless the
//! job says otherwise) bounds them all: keep a long list to short timeouts.
//!
//! # Outbound hosts
//!
//! The targets come from configuration, so the manifest cannot list them: it asks for
//! `outbound_hosts: ["*"]`, any host. An administrator approves that request (or narrows
//! it to the hosts actually configured), and the server's address policy still decides
//! which addresses are reachable. A host outside the grant makes the run fail as
//! `permanent`, naming the endpoint.
//!
//! Deterministic apart from the network: no randomness, no sleeps, and the only clock
//! read is the monotonic one that times each request.

use std::time::{Duration, Instant};

use runcell_sdk::http::{self, ErrorKind};
use runcell_sdk::{Context, JobError, config, metrics};

pub mod logic;

use logic::{CheckInput, CheckResult, Endpoint, Probe, Summary};

/// The setting that holds the endpoint list.
pub const ENDPOINTS_SETTING: &str = "endpoints";

/// Checks every endpoint, records and logs each result, and fails if any is down.
pub fn check_endpoints(ctx: &Context, input: Option<CheckInput>) -> Result<Summary, JobError> {
    let configured = config::get(ENDPOINTS_SETTING);
    let endpoints = logic::resolve_endpoints(configured.as_deref(), input)?;
    runcell_sdk::info!(
        "checking endpoints",
        endpoints = endpoints.len(),
        from_setting = configured.is_some(),
        attempt = ctx.attempt()
    );

    let mut results = Vec::with_capacity(endpoints.len());
    for endpoint in &endpoints {
        let result = CheckResult::judge(endpoint, probe(endpoint));
        record(&result)?;
        results.push(result);
    }
    let summary = Summary::new(results);
    runcell_sdk::info!(
        "checks finished",
        checked = summary.checked,
        up = summary.up,
        down = summary.down
    );
    summary.verdict()
}

/// Requests `endpoint` once and times it.
fn probe(endpoint: &Endpoint) -> Probe {
    let started = Instant::now();
    let sent = http::Request::get(&endpoint.url)
        .timeout(Duration::from_millis(endpoint.timeout_ms().into()))
        .send();
    let latency_ms = started.elapsed().as_secs_f64() * 1_000.0;
    match sent {
        Ok(response) => Probe::Answered {
            status: response.status(),
            latency_ms,
        },
        Err(error) => Probe::Failed {
            misconfigured: matches!(error.kind(), ErrorKind::Denied | ErrorKind::InvalidRequest),
            error: error.to_string(),
        },
    }
}

/// Records the samples of `result` and logs it.
fn record(result: &CheckResult) -> Result<(), JobError> {
    let labels = [("endpoint", result.name.as_str())];
    metrics::observe("endpoint.up", if result.up { 1.0 } else { 0.0 }, &labels)?;
    if let Some(latency_ms) = result.latency_ms {
        metrics::observe("endpoint.latency_ms", latency_ms, &labels)?;
    }
    if result.up {
        runcell_sdk::info!(
            "endpoint up",
            endpoint = result.name,
            status = result.status,
            latency_ms = result.latency_ms
        );
    } else {
        runcell_sdk::warn!(
            "endpoint down",
            endpoint = result.name,
            status = result.status,
            latency_ms = result.latency_ms,
            error = result.error
        );
    }
    Ok(())
}

runcell_sdk::module! {
    name: "endpoint-monitor",
    version: env!("CARGO_PKG_VERSION"),
    description: "Checks that HTTP endpoints answer as expected and records their latency.",
    capabilities: {
        // The endpoints come from the job's settings; see the module documentation.
        outbound_hosts: ["*"],
    },
    settings: [
        {
            name: ENDPOINTS_SETTING,
            description: "The endpoints to check: a JSON array of {name, url, expectStatus?, timeoutMs?}. Without it, each run's input gives them.",
        },
    ],
    jobs: [
        check_endpoints => {
            name: "check-endpoints",
            description: "GETs each endpoint of the `endpoints` setting (or the input), records endpoint.up and endpoint.latency_ms, and fails as transient if any is down.",
            schedule: "*/5 * * * *",
            timeout_ms: 120_000,
            input_schema: logic::CHECK_INPUT_SCHEMA,
        },
    ],
}
