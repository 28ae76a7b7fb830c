//! `/metrics` end to end: a real `runcell serve` runs a known batch (runs that complete,
//! fail, are retried and are cancelled), then its metrics are scraped and read with a
//! strict OpenMetrics parser, and what they count is checked against what the API says
//! of the same executions. Also who may scrape: a token of any role on the API's
//! listener, anyone on `--metrics-listen`.

#[path = "support/guests.rs"]
mod guests;
#[path = "support/metrics.rs"]
mod metrics;
#[allow(
    dead_code,
    reason = "shared with other test binaries, each of which uses a different part of it"
)]
#[path = "support/server.rs"]
mod server;

use std::time::Duration;

use openmetrics_parser::OpenMetricsType;
use serde_json::{Value, json};

use metrics::Metrics;
use server::{Server, ServerOptions, is_final};

/// How long the batch may take to end.
const RUN: Duration = Duration::from_secs(60);

const FINAL_STATUSES: [&str; 4] = ["COMPLETED", "FAILED", "TIMED_OUT", "CANCELLED"];

fn id(value: &Value) -> String {
    value["id"].as_str().expect("an id").to_owned()
}

/// A server whose metrics are also served without a token on an address of their own,
/// with one worker, so a run waits in the queue while another runs.
fn server_with_metrics_listener() -> Server {
    Server::start_with(ServerOptions {
        workers: Some(1),
        env: vec![(
            "RUNCELL_METRICS_LISTEN".to_owned(),
            "127.0.0.1:0".to_owned(),
        )],
        ..ServerOptions::default()
    })
}

/// The `--metrics-listen` URL the server printed at start.
fn metrics_listener_url(server: &Server) -> String {
    const MARK: &str = "metrics: ";
    let output = server.output();
    let line = output
        .lines()
        .find_map(|line| line.split(MARK).nth(1))
        .unwrap_or_else(|| panic!("the server printed no metrics address:\n{output}"));
    line.split(',').next().unwrap().trim().to_owned()
}

/// `GET url` without a token: status, content type, body.
fn get_without_token(url: &str) -> (u16, String, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let response = agent.get(url).call().expect("the metrics listener answers");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.into_body().read_to_string().unwrap();
    (status, content_type, body)
}

/// `/metrics` on the API's listener with `token`, parsed.
fn scrape(server: &Server, token: &str) -> Metrics {
    let reply = server.request_as(Some(token), "GET", "/metrics", None);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        reply
            .content_type
            .starts_with("application/openmetrics-text; version=1.0.0"),
        "{}",
        reply.content_type
    );
    Metrics::parse(reply.body.as_str().expect("a text body"))
}

/// Waits until `job_id` has `count` executions, every one final; returns them.
fn wait_for_final(server: &Server, job_id: &str, count: usize) -> Vec<Value> {
    let mut executions = Vec::new();
    let done = server.wait_until(RUN, || {
        executions = server.executions(&format!("jobId={job_id}"));
        executions.len() == count && executions.iter().all(is_final)
    });
    assert!(
        done,
        "expected {count} final executions of {job_id}: {executions:#?}"
    );
    executions
}

#[test]
fn the_metrics_count_what_the_api_shows_after_a_known_batch() {
    let server = server_with_metrics_listener();
    server.upload(&guests::guest("hostile"));
    let echo = id(&server.create_job(&json!({"name": "echo", "module": "hostile", "job": "echo"})));
    let broken = id(&server.create_job(
        &json!({"name": "broken", "module": "hostile", "job": "fail-permanent", "maxAttempts": 1}),
    ));
    let flaky = id(&server.create_job(
        &json!({"name": "flaky", "module": "hostile", "job": "fail-transient", "maxAttempts": 2}),
    ));
    let spin = id(&server.create_job(&json!({
        "name": "spin", "module": "hostile", "job": "spin",
        "fuel": 400_000_000_000_u64, "timeoutMs": 30_000,
    })));
    let slow = id(&server.create_job(&json!({
        "name": "slow", "module": "hostile", "job": "spin",
        "fuel": 400_000_000_000_u64, "timeoutMs": 200,
    })));

    // Completed, failed, failed and retried, timed out.
    let mut manual_executes = 0;
    let bulk = server.execute_bulk(&echo, &json!({"count": 5}));
    assert_eq!(bulk.len(), 5);
    for _ in 0..2 {
        server.execute(&broken, None);
        manual_executes += 1;
    }
    server.execute(&flaky, None);
    server.execute(&slow, None);
    manual_executes += 2;
    wait_for_final(&server, &echo, 5);
    wait_for_final(&server, &broken, 2);
    let flaky_runs = wait_for_final(&server, &flaky, 2);
    assert!(flaky_runs.iter().any(|run| run["trigger"] == "retry"));
    let slow_runs = wait_for_final(&server, &slow, 1);
    assert_eq!(slow_runs[0]["status"], "TIMED_OUT", "{}", slow_runs[0]);

    // Cancelled: one while it runs, one while it waits in the queue behind it.
    let spinning = server.execute(&spin, None);
    manual_executes += 1;
    assert!(
        server.wait_until(RUN, || server.execution(&spinning)["status"] == "RUNNING"),
        "the spin never started"
    );
    let waiting = server.execute(&echo, None);
    manual_executes += 1;
    let reply = server.post(&format!("/api/v1/executions/{waiting}/cancel"));
    assert_eq!(reply.body["status"], "CANCELLED", "{}", reply.body);
    let reply = server.post(&format!("/api/v1/executions/{spinning}/cancel"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(server.wait_final(&spinning, RUN)["status"], "CANCELLED");
    let missing = server.get("/api/v1/no-such-route");
    assert_eq!(missing.status, 404);

    let metrics = scrape(&server, server.token());
    let executions = server.executions("");
    assert_eq!(executions.len(), 5 + 2 + 2 + 1 + 2);
    assert_eq!(
        metrics.family_type("runcell_executions"),
        Some(OpenMetricsType::Counter)
    );
    for status in FINAL_STATUSES {
        let shown = server.executions(&format!("status={status}")).len();
        assert!(shown > 0, "the batch has {status} runs");
        assert_eq!(
            metrics.sum("runcell_executions", &[("status", status)]),
            shown as f64,
            "{status}"
        );
    }
    for (handler, status, count) in [
        ("echo", "COMPLETED", 5.0),
        ("echo", "CANCELLED", 1.0),
        ("fail-permanent", "FAILED", 2.0),
        ("fail-transient", "FAILED", 2.0),
        ("spin", "TIMED_OUT", 1.0),
        ("spin", "CANCELLED", 1.0),
    ] {
        assert_eq!(
            metrics.sum(
                "runcell_executions",
                &[
                    ("module", "hostile"),
                    ("handler", handler),
                    ("status", status)
                ]
            ),
            count,
            "{handler} {status}"
        );
    }

    // Fuel is the API's to the unit; a duration for every run that ran (the cancelled
    // queued one never did), and a dispatch latency for every start, by trigger.
    let fuel: u64 = executions
        .iter()
        .filter_map(|execution| execution["fuelConsumed"].as_u64())
        .sum();
    assert!(fuel > 0);
    assert_eq!(
        metrics.sum("runcell_fuel_consumed", &[("module", "hostile")]),
        fuel as f64
    );
    let ran = executions
        .iter()
        .filter(|execution| !execution["startedAt"].is_null())
        .count();
    assert_eq!(ran, executions.len() - 1);
    assert_eq!(
        metrics.family_type("runcell_execution_duration_seconds"),
        Some(OpenMetricsType::Histogram)
    );
    assert_eq!(
        metrics.sum(
            "runcell_execution_duration_seconds",
            &[("module", "hostile")]
        ),
        ran as f64
    );
    let (timed_out_sum, buckets) = metrics.histogram(
        "runcell_execution_duration_seconds",
        &[("module", "hostile")],
    );
    assert!(timed_out_sum >= 0.2, "the timed-out run alone took 200 ms");
    assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, ran as f64));
    for (trigger, starts) in [("manual", ran - 1), ("retry", 1), ("cron", 0)] {
        assert_eq!(
            metrics.sum("runcell_dispatch_latency_seconds", &[("trigger", trigger)]),
            starts as f64,
            "{trigger}"
        );
    }

    // HTTP requests by route template and status, never by raw path.
    let execute_route = "/api/v1/jobs/{id}/execute";
    assert_eq!(
        metrics.sum(
            "runcell_http_requests",
            &[
                ("method", "POST"),
                ("route", execute_route),
                ("status", "202")
            ]
        ),
        manual_executes as f64
    );
    assert_eq!(
        metrics.sum(
            "runcell_http_requests",
            &[("route", "unmatched"), ("status", "404")]
        ),
        1.0
    );
    assert!(
        metrics
            .samples("runcell_http_requests")
            .iter()
            .all(|(labels, _)| !labels["route"].contains(&echo)),
        "an id in a route label"
    );

    // As things stand now: nothing queued, nothing running, pools reported.
    assert_eq!(
        metrics.family_type("runcell_executions_queued"),
        Some(OpenMetricsType::Gauge)
    );
    assert_eq!(metrics.sum("runcell_executions_queued", &[]), 0.0);
    assert_eq!(metrics.sum("runcell_executions_running", &[]), 0.0);
    assert!(metrics.sum("runcell_instance_pool_capacity", &[]) > 0.0);
    assert!(metrics.sum("runcell_cpu_guests_capacity", &[]) >= 1.0);
    assert!(metrics.sum("runcell_db_pool_max_connections", &[("pool", "writer")]) == 1.0);
    assert!(metrics.samples("runcell_redis_pool_connections").is_empty());
    let build = metrics.samples("runcell_build");
    assert_eq!(build.len(), 1, "{build:?}");
    assert_eq!(build[0].0["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(metrics.sum("runcell_cron_ticks_fired", &[]), 0.0);
}

#[test]
fn metrics_need_a_token_of_any_role_on_the_api_listener_and_none_on_the_metrics_listener() {
    let mut server = server_with_metrics_listener();
    let anonymous = server.request_as(None, "GET", "/metrics", None);
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    assert_eq!(anonymous.code(), "unauthenticated");

    let created = server.post_json(
        "/api/v1/tokens",
        &json!({"name": "prometheus", "role": "viewer"}),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let viewer = created.body["secret"].as_str().unwrap().to_owned();
    let metrics = scrape(&server, &viewer);
    assert_eq!(metrics.samples("runcell_build").len(), 1);

    let url = metrics_listener_url(&server);
    assert!(url.ends_with("/metrics"), "{url}");
    let (status, content_type, body) = get_without_token(&url);
    assert_eq!(status, 200, "{body}");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let metrics = Metrics::parse(&body);
    assert_eq!(metrics.samples("runcell_build").len(), 1);
    // The viewer's scrape above was counted on the API's listener.
    assert_eq!(
        metrics.sum(
            "runcell_http_requests",
            &[("route", "/metrics"), ("status", "200")]
        ),
        1.0
    );
    // The metrics listener serves the metrics and nothing else.
    let base = url.trim_end_matches("/metrics");
    let (status, _, _) = get_without_token(&format!("{base}/api/v1/jobs"));
    assert_eq!(status, 404);

    // Its listener ends with the server's graceful shutdown.
    assert!(server.stop().success());
}
