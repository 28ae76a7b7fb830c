//! The consumption monitor end to end: usage series, the consumption report and
//! outbound requests per host, read over HTTP from a real `runcell serve` after known
//! batches of runs, through a `kill -9`, and asked wrong.

#[path = "support/guests.rs"]
mod guests;
#[allow(
    dead_code,
    reason = "shared with other test binaries, each of which uses a different part of it"
)]
#[path = "support/outbound.rs"]
mod outbound;
#[path = "support/peers.rs"]
mod peers;
#[allow(
    dead_code,
    reason = "shared with other test binaries, each of which uses a different part of it"
)]
#[path = "support/server.rs"]
mod server;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

use outbound::HttpClientSetup;
use server::{Server, ServerOptions, is_final};

const RUN: Duration = Duration::from_secs(30);

fn id(value: &Value) -> String {
    value["id"].as_str().expect("an id").to_owned()
}

/// Executions of `job` by status, read from the executions API (a page is enough).
fn statuses(server: &Server, job: &str) -> HashMap<String, i64> {
    let mut by_status = HashMap::new();
    for execution in server.executions(&format!("jobId={job}")) {
        *by_status
            .entry(execution["status"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    by_status
}

/// The report line of `job` since the epoch.
fn report_line(server: &Server, job: &str) -> Value {
    let reply = server.get(&format!(
        "/api/v1/usage/summary?groupBy=job&jobId={job}&from=0"
    ));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let items = reply.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{}", reply.body);
    items[0].clone()
}

fn count(line: &Value, field: &str) -> i64 {
    line[field]
        .as_i64()
        .unwrap_or_else(|| panic!("no {field} in {line}"))
}

#[test]
fn the_report_counts_each_run_once_by_status_and_agrees_with_the_executions() {
    let server = Server::start();
    server.upload(&guests::guest("hostile"));
    let burn = id(&server.create_job(&json!({
        "name": "burn", "module": "hostile", "job": "burn",
        "input": {"iterations": 1_000}, "maxAttempts": 1,
    })));
    let trap = id(&server.create_job(&json!({
        "name": "trap", "module": "hostile", "job": "trap", "maxAttempts": 1,
    })));
    let mut runs = server.execute_bulk(&burn, &json!({"count": 20}));
    runs.extend(server.execute_bulk(&trap, &json!({"count": 3})));
    for run in &runs {
        server.wait_final(run, RUN);
    }

    let burned = report_line(&server, &burn);
    assert_eq!(count(&burned, "runs"), 20, "{burned}");
    assert_eq!(count(&burned, "completed"), 20, "{burned}");
    assert_eq!(burned["module"], "hostile");
    assert_eq!(burned["job"], "burn");
    assert!(count(&burned, "fuelConsumed") > 0, "{burned}");
    let p95 = burned["durationMs"]["p95"].as_f64().unwrap();
    let max = burned["durationMs"]["max"].as_f64().unwrap();
    assert!(p95 > 0.0 && p95 <= max, "{burned}");
    let trapped = report_line(&server, &trap);
    assert_eq!(count(&trapped, "runs"), 3, "{trapped}");
    assert_eq!(count(&trapped, "failed"), 3, "{trapped}");
    assert_eq!(trapped["failureRate"], 1.0);

    // The module's line is the sum of its jobs', and the series adds up to it.
    let module = server.get("/api/v1/usage/summary?from=0&module=hostile");
    assert_eq!(module.status, 200, "{}", module.body);
    let line = &module.body["items"][0];
    assert_eq!(count(line, "runs"), 23, "{}", module.body);
    assert!(line.get("jobId").is_none(), "{line}");
    let series = server.get("/api/v1/usage?module=hostile&step=1m&from=0");
    assert_eq!(
        series.status, 400,
        "a 1-minute step since 1970 is too many points"
    );
    assert_eq!(series.field(), "step");
    let series = server.get("/api/v1/usage?module=hostile&groupBy=job");
    assert_eq!(series.status, 200, "{}", series.body);
    assert_eq!(series.body["step"], "5m", "{}", series.body);
    let all = series.body["series"].as_array().unwrap();
    assert_eq!(all.len(), 2, "{}", series.body);
    let total: i64 = all
        .iter()
        .flat_map(|s| s["points"].as_array().unwrap())
        .map(|p| p["runs"].as_i64().unwrap())
        .sum();
    assert_eq!(total, 23);
    let points = all[0]["points"].as_array().unwrap();
    assert!(
        points.len() >= 288,
        "every step of the day is present: {}",
        points.len()
    );

    // Sorted by a column, and as CSV.
    let by_failures = server.get("/api/v1/usage/summary?from=0&groupBy=job&sort=failed");
    assert_eq!(
        by_failures.body["items"][0]["job"], "trap",
        "{}",
        by_failures.body
    );
    let csv = server.get("/api/v1/usage/summary?from=0&groupBy=job&sort=runs&format=csv");
    assert_eq!(csv.status, 200);
    assert!(
        csv.content_type.starts_with("text/csv"),
        "{}",
        csv.content_type
    );
    let text = csv.body.as_str().unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("module,jobId,job,runs,"), "{text}");
    assert!(
        lines[1].starts_with(&format!("hostile,{burn},burn,20,20,0,")),
        "{text}"
    );
    assert!(
        lines[2].starts_with(&format!("hostile,{trap},trap,3,0,3,")),
        "{text}"
    );
}

#[test]
fn killing_the_server_mid_batch_leaves_usage_equal_to_the_executions() {
    const BULK: usize = 300;
    let mut server = Server::start();
    server.upload(&guests::guest("hostile"));
    let job = id(&server.create_job(&json!({
        "name": "burn", "module": "hostile", "job": "burn",
        "input": {"iterations": 2_000_000}, "maxAttempts": 1,
    })));
    let runs = server.execute_bulk(&job, &json!({"count": BULK}));
    assert_eq!(runs.len(), BULK);
    let mut completed_before_kill = 0;
    server.wait_until(RUN, || {
        completed_before_kill = server
            .executions(&format!("jobId={job}&status=COMPLETED"))
            .len();
        completed_before_kill > 0
    });
    server.kill();
    assert!(
        completed_before_kill < BULK,
        "the batch ended before the kill"
    );
    server.restart();
    let settled = server.wait_until(Duration::from_secs(60), || {
        server
            .executions(&format!("jobId={job}"))
            .iter()
            .all(is_final)
    });
    assert!(settled, "executions never ended");

    let by_status = statuses(&server, &job);
    let line = report_line(&server, &job);
    eprintln!("{completed_before_kill} completed before the kill; {by_status:?}; {line}");
    assert_eq!(count(&line, "runs"), BULK as i64, "{line}");
    for (status, field) in [
        ("COMPLETED", "completed"),
        ("FAILED", "failed"),
        ("TIMED_OUT", "timedOut"),
        ("CANCELLED", "cancelled"),
    ] {
        assert_eq!(
            count(&line, field),
            by_status.get(status).copied().unwrap_or(0),
            "{field}: {line} vs {by_status:?}"
        );
    }
}

/// The outbound totals of `module` to each host, over the last hour.
fn outbound_totals(server: &Server, module: &str) -> HashMap<String, i64> {
    let reply = server.get(&format!("/api/v1/usage/outbound?module={module}&step=1h"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let series = reply.body["series"].as_array().unwrap();
    let mut totals: HashMap<String, i64> = HashMap::new();
    for line in series {
        assert_eq!(line["host"], "127.0.0.1", "{}", reply.body);
        for point in line["points"].as_array().unwrap() {
            for field in ["requests", "denied", "errors", "bytesReceived"] {
                *totals.entry(field.to_owned()).or_default() += point[field].as_i64().unwrap();
            }
            *totals.entry("2xx".to_owned()).or_default() +=
                point["responses"]["2xx"].as_i64().unwrap();
        }
    }
    totals
}

#[test]
fn outbound_requests_of_runs_and_routes_are_counted_per_host_by_class() {
    let HttpClientSetup {
        server,
        port,
        local,
        served,
        ..
    } = outbound::http_client_beside_a_hello_server();
    let approved = server.post_json(
        "/api/v1/modules/http-client/capabilities/approve",
        &json!({"outboundHosts": [local]}),
    );
    assert_eq!(approved.status, 200, "{}", approved.body);
    let job = id(&server.create_job(&json!({
        "name": "fetcher", "module": "http-client", "job": "fetch", "maxAttempts": 1,
    })));
    let denied_url = format!("http://127.0.0.1:{}/", port + 1);
    for url in [
        format!("http://{local}/"),
        format!("http://{local}/again"),
        denied_url.clone(),
        format!("http://{local}/third"),
    ] {
        let run = server.execute(&job, Some(json!({"url": url})));
        server.wait_final(&run, RUN);
    }
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 3);

    let totals = outbound_totals(&server, "http-client");
    // Three answered `200 hello` (5 bytes each); the port not granted was denied.
    assert_eq!(totals["requests"], 4, "{totals:?}");
    assert_eq!(totals["2xx"], 3, "{totals:?}");
    assert_eq!(totals["denied"], 1, "{totals:?}");
    assert_eq!(totals["bytesReceived"], 15, "{totals:?}");
    let line = report_line(&server, &job);
    assert_eq!(count(&line, "outboundRequests"), 4, "{line}");

    // The module's route makes requests too: counted with the module's, within a few
    // seconds (they are written in batches, there being no run to write them with).
    for (url, status) in [
        (format!("http://{local}/route"), 200),
        (format!("http://{local}/route-again"), 200),
        (denied_url, 502),
    ] {
        let reply = server.get(&format!("/m/http-client/fetch?url={url}"));
        assert_eq!(reply.status, status, "{url}: {}", reply.body);
    }
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 5);
    server.wait_until(Duration::from_secs(10), || {
        outbound_totals(&server, "http-client")["requests"] >= 7
    });
    let totals = outbound_totals(&server, "http-client");
    assert_eq!(totals["requests"], 7, "{totals:?}");
    assert_eq!(totals["2xx"], 5, "{totals:?}");
    assert_eq!(totals["denied"], 2, "{totals:?}");
    assert_eq!(totals["bytesReceived"], 25, "{totals:?}");
    // The report counts runs: the job's figure is unchanged.
    let line = report_line(&server, &job);
    assert_eq!(count(&line, "outboundRequests"), 4, "{line}");

    // Prometheus counts the same, by class.
    let metrics = server.get("/metrics");
    let text = metrics.body.as_str().unwrap_or_default();
    for (class, requests) in [("2xx", 5), ("denied", 2)] {
        let line = format!(
            "runcell_outbound_requests_total{{module=\"http-client\",host=\"127.0.0.1\",class=\"{class}\"}} {requests}"
        );
        assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    }

    let other_host = server.get("/api/v1/usage/outbound?host=api.example.com");
    assert_eq!(other_host.status, 200);
    assert_eq!(other_host.body["series"], json!([]));
}

#[test]
fn wrong_usage_questions_are_refused_naming_the_parameter() {
    let server = Server::start();
    for (query, field) in [
        ("/api/v1/usage?from=2000&to=1000", "from"),
        ("/api/v1/usage?from=yesterday", "from"),
        ("/api/v1/usage?to=2026-13-01T00:00:00Z", "to"),
        ("/api/v1/usage?from=0&step=1m", "step"),
        ("/api/v1/usage?step=5s", "step"),
        ("/api/v1/usage?groupBy=host", "groupBy"),
        ("/api/v1/usage?module=no-such-module", "module"),
        ("/api/v1/usage?jobId=no-such-job", "jobId"),
        ("/api/v1/usage/summary?sort=colour", "sort"),
        ("/api/v1/usage/summary?format=xml", "format"),
        ("/api/v1/usage/summary?from=5000&to=1000", "from"),
        ("/api/v1/usage/outbound?step=0m", "step"),
        ("/api/v1/usage/outbound?module=no-such-module", "module"),
    ] {
        let reply = server.get(query);
        assert_eq!(reply.status, 400, "{query}: {}", reply.body);
        assert_eq!(reply.code(), "invalid_field", "{query}");
        assert_eq!(reply.field(), field, "{query}: {}", reply.body);
        assert!(
            reply.message().starts_with(field),
            "{query}: {}",
            reply.body
        );
    }
    // Anyone logged in may read usage; nobody else.
    let anonymous = server.request_as(None, "GET", "/api/v1/usage", None);
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    let empty = server.get("/api/v1/usage/summary");
    assert_eq!(empty.status, 200, "{}", empty.body);
    assert_eq!(empty.body["items"], json!([]));
    assert_eq!(empty.body["sort"], "fuel");
}

#[test]
fn runcell_usage_prints_the_report_of_a_server() {
    let server = Server::start();
    server.upload(&guests::guest("hostile"));
    let job = id(&server.create_job(&json!({
        "name": "burn", "module": "hostile", "job": "burn", "input": {"iterations": 1_000},
    })));
    for run in server.execute_bulk(&job, &json!({"count": 4})) {
        server.wait_final(&run, RUN);
    }
    let usage = |extra: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_runcell"))
            .args(["usage", "--server", &server.url(""), "--from", "0"])
            .args(extra)
            .env("RUNCELL_TOKEN", server.token())
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, table, _) = usage(&["--by-job"]);
    assert_eq!(code, Some(0), "{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("MODULE/JOB"), "{table}");
    assert!(lines[1].starts_with("hostile/burn "), "{table}");
    assert!(lines[1].split_whitespace().nth(1) == Some("4"), "{table}");
    let (code, json, _) = usage(&["--output", "json"]);
    assert_eq!(code, Some(0));
    let report: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["items"][0]["runs"], 4, "{report}");
    let (code, csv, _) = usage(&["--output", "csv"]);
    assert_eq!(code, Some(0));
    assert!(csv.starts_with("module,"), "{csv}");
    let (code, _, error) = usage(&["--sort", "colour"]);
    assert_eq!(code, Some(6), "{error}");
    assert!(error.contains("sort: `colour` is not a column"), "{error}");
}

/// Bytes of the SQLite file of `server` (without its write-ahead log, which keeps its
/// size up to a limit and is copied back into the file in the background).
fn database_file_bytes(server: &Server) -> u64 {
    std::fs::metadata(server.data_dir().join("runcell.db")).map_or(0, |m| m.len())
}

#[test]
fn expired_executions_and_logs_go_while_usage_and_unfinished_runs_stay() {
    let server = Server::start_with(ServerOptions {
        env: vec![
            ("RUNCELL_RETAIN_EXECUTIONS".into(), "5s".into()),
            ("RUNCELL_PRUNE_EVERY".into(), "1s".into()),
        ],
        ..ServerOptions::default()
    });
    server.upload(&guests::guest("hostile"));
    // A run that stays unfinished for as long as the test needs it.
    let spin = id(&server.create_job(&json!({
        "name": "spin", "module": "hostile", "job": "spin",
        "timeoutMs": 120_000, "fuel": 480_000_000_000_u64, "maxAttempts": 1,
    })));
    let spinning = server.execute(&spin, None);
    let flood = id(&server.create_job(&json!({
        "name": "flood", "module": "hostile", "job": "log-flood", "timeoutMs": 120_000,
    })));
    server.execute_bulk(&flood, &json!({"count": 6}));
    // Read from the usage report: a run may well be pruned before a poll of it.
    let flooded = server.wait_until(Duration::from_secs(120), || {
        let reply = server.get(&format!("/api/v1/usage/summary?jobId={flood}&from=0"));
        reply.body["items"][0]["runs"] == 6
    });
    assert!(flooded, "the flood never ended");
    // The file grows as the log is copied into it, until the runs are pruned.
    let mut full = database_file_bytes(&server);
    let before = report_line(&server, &flood);
    assert_eq!(count(&before, "runs"), 6, "{before}");
    assert!(count(&before, "logBytes") > 1_000_000, "{before}");

    let pruned = server.wait_until(Duration::from_secs(30), || {
        full = full.max(database_file_bytes(&server));
        server.executions(&format!("jobId={flood}")).is_empty()
    });
    assert!(pruned, "the flood's executions outlived their 5 s");
    assert_eq!(
        report_line(&server, &flood),
        before,
        "usage outlives the executions"
    );
    let still = server.execution(&spinning);
    assert_eq!(
        still["status"], "RUNNING",
        "an unfinished run is never pruned: {still}"
    );
    let shrunk = server.wait_until(Duration::from_secs(30), || {
        database_file_bytes(&server) < full / 2
    });
    assert!(
        shrunk,
        "the database kept its size: {} bytes, {full} before pruning",
        database_file_bytes(&server)
    );
    assert_eq!(
        server
            .post(&format!("/api/v1/executions/{spinning}/cancel"))
            .status,
        200
    );
    server.wait_final(&spinning, RUN);
}

#[test]
fn a_job_takes_its_own_retention_within_bounds() {
    let server = Server::start();
    server.upload(&guests::guest("hostile"));
    let refused = server.post_json(
        "/api/v1/jobs",
        &json!({"name": "j", "module": "hostile", "job": "echo", "retainDays": 0}),
    );
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert_eq!(refused.field(), "retainDays");
    let job = server.create_job(&json!({
        "name": "j", "module": "hostile", "job": "echo", "retainDays": 7,
    }));
    assert_eq!(job["retainDays"], 7, "{job}");
    assert_eq!(job["retainLast"], Value::Null, "{job}");
    let path = format!("/api/v1/jobs/{}", id(&job));
    let changed = server.patch_json(&path, &json!({"retainLast": 100, "retainDays": null}));
    assert_eq!(changed.status, 200, "{}", changed.body);
    assert_eq!(changed.body["retainLast"], 100);
    assert_eq!(changed.body["retainDays"], Value::Null);
    let too_many = server.patch_json(&path, &json!({"retainLast": 20_000_000}));
    assert_eq!(too_many.status, 422, "{}", too_many.body);
    assert_eq!(too_many.field(), "retainLast");
}
