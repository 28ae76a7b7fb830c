//! `runcell serve` end to end: the real binary on a free port with a fresh data directory,
//! driven over HTTP as a client would, with real modules (`example-modules/`) and the
//! sandbox attackers (`tests/fixtures/`).

#[path = "support/guests.rs"]
mod guests;
#[allow(
    dead_code,
    reason = "shared with other test binaries, each of which uses a different part of it"
)]
#[path = "support/server.rs"]
mod server;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use server::{Server, ServerOptions, is_final};

/// How long an ordinary execution may take to finish in these tests.
const RUN: Duration = Duration::from_secs(20);

fn job_named<'a>(module: &'a Value, name: &str) -> &'a Value {
    module["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|job| job["name"] == name)
        .unwrap_or_else(|| panic!("no job {name} in {module}"))
}

fn id(value: &Value) -> String {
    value["id"].as_str().expect("an id").to_owned()
}

fn messages(logs: &[Value]) -> Vec<&str> {
    logs.iter()
        .map(|line| line["message"].as_str().unwrap())
        .collect()
}

fn multipart(field: &str, content: &[u8]) -> Vec<u8> {
    let mut body = format!(
        "--runcell-test\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"module.wasm\"\r\nContent-Type: application/wasm\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(content);
    body.extend_from_slice(b"\r\n--runcell-test--\r\n");
    body
}

// ---- modules ---------------------------------------------------------------------------

#[test]
fn uploading_data_sync_answers_201_with_its_three_jobs_and_capabilities() {
    let server = Server::start();
    let bytes = std::fs::read(guests::guest("data-sync")).unwrap();
    let reply = server.post_bytes("/api/v1/modules", "application/wasm", &bytes);
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert!(
        reply.request_id.is_some(),
        "every response has an x-request-id"
    );
    let module = reply.body;
    assert_eq!(module["name"], "data-sync");
    assert_eq!(module["status"], "ENABLED");
    assert_eq!(module["contentHash"].as_str().unwrap().len(), 64);
    let jobs: Vec<&str> = module["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| job["name"].as_str().unwrap())
        .collect();
    assert_eq!(jobs, ["hourly-sync", "daily-report", "health-check"]);
    assert_eq!(
        job_named(&module, "hourly-sync")["defaultSchedule"],
        "0 * * * *"
    );
    assert_eq!(module["capabilities"]["keyValue"], true);
    assert_eq!(
        module["capabilities"]["publishes"],
        json!(["report.generated"])
    );

    // The same file as a multipart upload is the same version, listed once.
    let reply = server.post_bytes(
        "/api/v1/modules",
        "multipart/form-data; boundary=runcell-test",
        &multipart("module", &bytes),
    );
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(reply.body["contentHash"], module["contentHash"]);
    let versions = server.get("/api/v1/modules/data-sync/versions").body;
    assert_eq!(versions["items"].as_array().unwrap().len(), 1);
    assert_eq!(versions["items"][0]["current"], true);
    let listed = server.get("/api/v1/modules").body;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);

    // A module in use is deleted only when forced, and its jobs with it.
    let job =
        id(&server
            .create_job(&json!({"name": "sync", "module": "data-sync", "job": "hourly-sync"})));
    let reply = server.delete("/api/v1/modules/data-sync");
    assert_eq!(
        (reply.status, reply.code()),
        (409, "conflict"),
        "{}",
        reply.body
    );
    assert!(reply.message().contains("sync"), "{}", reply.message());
    assert_eq!(
        server.delete("/api/v1/modules/data-sync?force=true").status,
        204
    );
    let reply = server.get("/api/v1/modules/data-sync");
    assert_eq!((reply.status, reply.code()), (404, "not_found"));
    assert!(
        reply.content_type.starts_with("application/json"),
        "{}",
        reply.content_type
    );
    assert_eq!(server.get(&format!("/api/v1/jobs/{job}")).status, 404);
}

#[test]
fn bad_uploads_are_refused_saying_why_and_leave_nothing_behind() {
    let server = Server::start();
    let wasm = "/api/v1/modules";

    let reply = server.post_bytes(wasm, "application/wasm", b"hello, I am text");
    assert_eq!(
        (reply.status, reply.code()),
        (422, "invalid_module"),
        "{}",
        reply.body
    );

    let reply = server.post_bytes(wasm, "application/wasm", b"\0asm\x01\0\0\0");
    assert_eq!(reply.status, 422, "{}", reply.body);
    assert!(
        reply.message().contains("wasm32-wasip2"),
        "{}",
        reply.message()
    );

    let backdoor = std::fs::read(guests::guest("unknown-import")).unwrap();
    let reply = server.post_bytes(wasm, "application/wasm", &backdoor);
    assert_eq!(reply.status, 422, "{}", reply.body);
    assert!(
        reply.message().contains("evil:thing/backdoor"),
        "{}",
        reply.message()
    );

    let reply = server.post_bytes(wasm, "text/plain", b"hello");
    assert_eq!(
        (reply.status, reply.code()),
        (415, "unsupported_media_type")
    );
    assert!(
        reply.message().contains("application/wasm"),
        "{}",
        reply.message()
    );

    let reply = server.post_bytes(
        wasm,
        "multipart/form-data; boundary=runcell-test",
        &multipart("file", &backdoor),
    );
    assert_eq!(
        (reply.status, reply.field()),
        (400, "module"),
        "{}",
        reply.body
    );

    assert_eq!(server.get(wasm).body["items"], json!([]));
    assert_eq!(server.get("/healthz").status, 200);
}

#[test]
fn bad_job_definitions_are_refused_naming_the_field() {
    let server = Server::start();
    server.upload(&guests::guest("hello"));
    let base = json!({"name": "greeter", "module": "hello", "job": "greet"});
    let with = |extra: Value| {
        let mut body = base.clone();
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    let cases = [
        (
            with(json!({"schedule": "61 * * * *"})),
            400,
            "schedule",
            "61 * * * *",
        ),
        (
            with(json!({"module": "nonexistent"})),
            422,
            "module",
            "nonexistent",
        ),
        (with(json!({"job": "shout"})), 422, "job", "shout"),
        (
            with(json!({"fuel": 1_000_000_000_000_000_u64})),
            422,
            "fuel",
            "ceiling",
        ),
        (with(json!({"retries": 3})), 400, "retries", "unknown field"),
        (
            with(json!({"maxAttempts": "3"})),
            400,
            "maxAttempts",
            "invalid type",
        ),
    ];
    for (definition, status, field, says) in cases {
        let reply = server.post_json("/api/v1/jobs", &definition);
        assert_eq!(reply.status, status, "{definition}: {}", reply.body);
        assert_eq!(reply.field(), field, "{definition}: {}", reply.body);
        assert!(reply.message().contains(says), "{}", reply.message());
    }
    let reply = server.request(
        "POST",
        "/api/v1/jobs",
        Some(("application/json", b"{\"name\": ")),
    );
    assert_eq!((reply.status, reply.code()), (400, "malformed_json"));
    assert_eq!(server.get("/api/v1/jobs").body["items"], json!([]));
}

// ---- running jobs ------------------------------------------------------------------------

#[test]
fn data_sync_jobs_complete_with_their_results_and_logs() {
    let server = Server::start();
    server.upload(&guests::guest("data-sync"));
    let job = |name: &str, input: Value| {
        id(&server
            .create_job(&json!({"name": name, "module": "data-sync", "job": name, "input": input})))
    };
    let records = json!({"records": [
        {"id": "a1", "name": "Alpha", "value": 1.5},
        {"id": "b2", "name": "Beta", "value": 2.25},
        {"id": "c3", "name": "Gamma", "value": 3.0},
    ]});
    let sync = job("hourly-sync", records);
    let report = job("daily-report", Value::Null);
    let health = job("health-check", Value::Null);

    let run = server.execute(&sync, None);
    let execution = server.wait_final(&run, RUN);
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    assert_eq!(execution["result"]["recordsProcessed"], 3);
    assert_eq!(execution["trigger"], "manual");
    assert_eq!(execution["attempt"], 1);
    assert!(
        execution["fuelConsumed"].as_u64().unwrap() > 0,
        "{execution}"
    );
    assert!(
        execution["durationMs"].as_f64().unwrap() > 0.0,
        "{execution}"
    );
    assert!(
        execution["memoryPeakBytes"].as_u64().unwrap() > 0,
        "{execution}"
    );
    let logs = server.logs(&run);
    assert_eq!(messages(&logs), ["sync started", "sync completed"]);
    assert_eq!(logs[1]["fields"]["records_processed"], 3);
    assert!(
        logs.iter()
            .all(|line| line["ts"].as_u64().unwrap() > 1_700_000_000_000)
    );

    let run = server.execute(&report, None);
    let execution = server.wait_final(&run, RUN);
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    assert_eq!(execution["result"]["records"], 3);
    assert_eq!(execution["result"]["totalValue"], 6.75);
    assert_eq!(messages(&server.logs(&run)), ["report generated"]);

    let run = server.execute(&health, None);
    let execution = server.wait_final(&run, RUN);
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    let verdict = execution["result"]["status"].as_str().unwrap();
    assert!(["healthy", "degraded"].contains(&verdict), "{execution}");
}

#[test]
fn a_per_second_cron_job_fires_about_once_a_second_and_once_per_tick() {
    let server = Server::start();
    server.upload(&guests::guest("hello"));
    let job = server.create_job(&json!({"name": "every-second", "module": "hello", "job": "noop", "schedule": "* * * * * *"}));
    let next = job["nextRunAt"]
        .as_i64()
        .expect("a scheduled job says when it runs next");
    assert_eq!(next % 1000, 0, "ticks fall on whole seconds");
    let job_id = id(&job);
    std::thread::sleep(Duration::from_millis(4_300));
    let reply = server.patch_json(
        &format!("/api/v1/jobs/{job_id}"),
        &json!({"enabled": false}),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["nextRunAt"], Value::Null);
    std::thread::sleep(Duration::from_millis(300));

    let executions = server.executions(&format!("jobId={job_id}"));
    assert!(
        (3..=6).contains(&executions.len()),
        "{} executions in about 4 s",
        executions.len()
    );
    let mut ticks: Vec<i64> = executions
        .iter()
        .map(|e| {
            assert_eq!(e["trigger"], "cron", "{e}");
            e["cronTick"]
                .as_i64()
                .expect("a cron execution has its tick")
        })
        .collect();
    ticks.sort_unstable();
    let distinct: HashSet<i64> = ticks.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        ticks.len(),
        "two executions for one tick: {ticks:?}"
    );
    assert!(ticks.iter().all(|t| t % 1000 == 0), "{ticks:?}");
    assert!(
        ticks.windows(2).all(|w| w[1] - w[0] <= 2_000),
        "a gap in {ticks:?}"
    );
    for execution in &executions {
        let done = server.wait_final(execution["id"].as_str().unwrap(), RUN);
        assert_eq!(done["status"], "COMPLETED", "{done}");
    }
    assert_eq!(
        server.executions(&format!("jobId={job_id}")).len(),
        executions.len()
    );
}

// ---- events ------------------------------------------------------------------------------

#[test]
fn an_event_posted_to_the_api_runs_each_subscribed_job_with_the_event_as_input() {
    let server = Server::start();
    server.upload(&guests::guest("hostile"));
    let subscriber = id(&server.create_job(
        &json!({"name": "on-report", "module": "hostile", "job": "echo", "onEvent": "report.*"}),
    ));
    let reply = server.post_json(
        "/api/v1/events",
        &json!({"topic": "report.custom", "payload": {"answer": 42}}),
    );
    assert_eq!(reply.status, 202, "{}", reply.body);
    let event_id = reply.body["eventId"].as_str().unwrap().to_owned();
    let triggered = reply.body["triggeredExecutions"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(triggered.len(), 1, "{}", reply.body);

    let execution = server.wait_final(triggered[0].as_str().unwrap(), RUN);
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    assert_eq!(execution["jobId"], subscriber.as_str());
    assert_eq!(execution["trigger"], "event");
    assert_eq!(execution["eventId"], event_id.as_str());
    let seen = &execution["result"]["input"];
    assert_eq!(seen["topic"], "report.custom");
    assert_eq!(seen["payload"], json!({"answer": 42}));
    assert_eq!(seen["source"], "api");

    let reply = server.post_json("/api/v1/events", &json!({"topic": "unrelated.topic"}));
    assert_eq!(reply.body["triggeredExecutions"], json!([]));
    let events = server.get("/api/v1/events?topic=report.custom").body;
    assert_eq!(events["items"].as_array().unwrap().len(), 1);
    assert_eq!(
        server.get("/api/v1/events").body["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn a_report_published_by_daily_report_triggers_its_subscriber() {
    let server = Server::start();
    server.upload(&guests::guest("data-sync"));
    server.upload(&guests::guest("hostile"));
    let report = id(&server
        .create_job(&json!({"name": "report", "module": "data-sync", "job": "daily-report"})));
    let subscriber = id(&server.create_job(
        &json!({"name": "on-generated", "module": "hostile", "job": "echo", "onEvent": "report.generated"}),
    ));
    let run = server.execute(&report, None);
    assert_eq!(server.wait_final(&run, RUN)["status"], "COMPLETED");

    let mut triggered = Vec::new();
    let found = server.wait_until(RUN, || {
        triggered = server.executions(&format!("jobId={subscriber}"));
        triggered.len() == 1 && is_final(&triggered[0])
    });
    assert!(
        found,
        "no finished execution of the subscriber: {triggered:?}"
    );
    let execution = &triggered[0];
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    assert_eq!(execution["trigger"], "event");
    let event = &execution["result"]["input"];
    assert_eq!(event["topic"], "report.generated");
    assert_eq!(event["source"], "data-sync");
    assert_eq!(event["payload"]["records"], 0);
    let events = server.get("/api/v1/events?topic=report.generated").body;
    assert_eq!(events["items"][0]["source"], "data-sync");
}

// ---- failures, retries, cancellation --------------------------------------------------------

#[test]
fn a_transient_failure_is_retried_up_to_max_attempts_and_a_permanent_one_is_not() {
    let server = Server::start_with(ServerOptions {
        retry_base_delay: "50ms".to_owned(),
        ..ServerOptions::default()
    });
    server.upload(&guests::guest("hostile"));
    let transient = id(&server.create_job(
        &json!({"name": "flaky", "module": "hostile", "job": "fail-transient", "maxAttempts": 3}),
    ));
    let permanent = id(&server.create_job(
        &json!({"name": "broken", "module": "hostile", "job": "fail-permanent", "maxAttempts": 3}),
    ));
    let first = server.execute(&transient, None);
    let broken = server.execute(&permanent, None);

    let mut attempts = Vec::new();
    let all_done = server.wait_until(RUN, || {
        attempts = server.executions(&format!("jobId={transient}"));
        attempts.len() == 3 && attempts.iter().all(is_final)
    });
    assert!(all_done, "three final attempts expected: {attempts:#?}");
    attempts.sort_by_key(|e| e["attempt"].as_u64());
    let numbers: Vec<u64> = attempts
        .iter()
        .map(|e| e["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 2, 3]);
    assert_eq!(attempts[0]["id"], first.as_str());
    assert_eq!(attempts[0]["retryOf"], Value::Null);
    for retry in &attempts[1..] {
        assert_eq!(retry["retryOf"], first.as_str(), "{retry}");
        assert_eq!(retry["trigger"], "retry", "{retry}");
    }
    for attempt in &attempts {
        assert_eq!(attempt["status"], "FAILED", "{attempt}");
        assert_eq!(attempt["errorKind"], "TRANSIENT", "{attempt}");
        assert!(
            attempt["error"]
                .as_str()
                .unwrap()
                .contains("fixture transient failure")
        );
    }

    let execution = server.wait_final(&broken, RUN);
    assert_eq!(execution["status"], "FAILED");
    assert_eq!(execution["errorKind"], "PERMANENT");
    assert!(
        execution["error"]
            .as_str()
            .unwrap()
            .contains("fixture permanent failure")
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(server.executions(&format!("jobId={permanent}")).len(), 1);
    assert_eq!(server.executions(&format!("jobId={transient}")).len(), 3);
}

#[test]
fn a_changed_job_runs_with_its_new_definition_from_the_next_execution_on() {
    let server = Server::start();
    server.upload(&guests::guest("hostile"));
    let job = id(&server.create_job(
        &json!({"name": "burner", "module": "hostile", "job": "burn", "input": {"iterations": 10_000}}),
    ));
    let execution = server.wait_final(&server.execute(&job, None), RUN);
    assert_eq!(execution["status"], "COMPLETED", "{execution}");

    // Workers keep the definitions they read; a change must reach the very next run.
    let reply = server.patch_json(&format!("/api/v1/jobs/{job}"), &json!({"fuel": 1_000}));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let execution = server.wait_final(&server.execute(&job, None), RUN);
    assert_eq!(execution["status"], "FAILED", "{execution}");
    assert_eq!(execution["errorKind"], "OUT_OF_FUEL", "{execution}");

    let reply = server.patch_json(
        &format!("/api/v1/jobs/{job}"),
        &json!({"fuel": null, "input": {"iterations": 20_000}}),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let execution = server.wait_final(&server.execute(&job, None), RUN);
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    assert_eq!(execution["input"], json!({"iterations": 20_000}));

    // A disabled job, and a job of a disabled module, cannot be run; each says why.
    server.patch_json(&format!("/api/v1/jobs/{job}"), &json!({"enabled": false}));
    let execute = server.post(&format!("/api/v1/jobs/{job}/execute"));
    let bulk = server.post_json(
        &format!("/api/v1/jobs/{job}/execute-bulk"),
        &json!({"count": 2}),
    );
    for reply in [execute, bulk] {
        assert_eq!(reply.status, 409, "{}", reply.body);
        assert!(
            reply.message().contains("job `burner` is disabled"),
            "{}",
            reply.message()
        );
    }
    server.patch_json(&format!("/api/v1/jobs/{job}"), &json!({"enabled": true}));
    server.post("/api/v1/modules/hostile/disable");
    let reply = server.post(&format!("/api/v1/jobs/{job}/execute"));
    assert_eq!(reply.status, 409, "{}", reply.body);
    assert!(
        reply.message().contains("module `hostile` is disabled"),
        "{}",
        reply.message()
    );
    assert_eq!(server.executions(&format!("jobId={job}")).len(), 3);
}

#[test]
fn a_cancelled_queued_execution_never_starts_and_a_cancelled_spin_stops_quickly() {
    let server = Server::start_with(ServerOptions {
        workers: Some(1),
        ..ServerOptions::default()
    });
    server.upload(&guests::guest("hostile"));
    let spin = id(&server.create_job(&json!({
        "name": "spin", "module": "hostile", "job": "spin",
        "fuel": 400_000_000_000_u64, "timeoutMs": 30_000,
    })));
    let echo = id(&server.create_job(&json!({"name": "echo", "module": "hostile", "job": "echo"})));

    let spinning = server.execute(&spin, None);
    let running = server.wait_until(RUN, || server.execution(&spinning)["status"] == "RUNNING");
    assert!(
        running,
        "the spin never started: {}",
        server.execution(&spinning)
    );
    // The only worker is busy: this one stays queued.
    let waiting = server.execute(&echo, None);
    let reply = server.post(&format!("/api/v1/executions/{waiting}/cancel"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["status"], "CANCELLED");
    let reply = server.post(&format!("/api/v1/executions/{waiting}/cancel"));
    assert_eq!((reply.status, reply.code()), (409, "conflict"));

    let asked = Instant::now();
    let reply = server.post(&format!("/api/v1/executions/{spinning}/cancel"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let execution = server.wait_final(&spinning, Duration::from_secs(5));
    assert_eq!(execution["status"], "CANCELLED", "{execution}");
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "took {:?}",
        asked.elapsed()
    );

    // The worker is free now; the cancelled one still never runs.
    let after = server.execute(&echo, None);
    assert_eq!(server.wait_final(&after, RUN)["status"], "COMPLETED");
    let cancelled = server.execution(&waiting);
    assert_eq!(cancelled["status"], "CANCELLED");
    assert_eq!(cancelled["startedAt"], Value::Null, "{cancelled}");
}

#[test]
fn a_run_requested_while_a_worker_is_free_starts_at_once_and_waits_in_the_queue_otherwise() {
    // One worker stands by for the queue; the other two take runs requested here.
    let server = Server::start_with(ServerOptions {
        workers: Some(3),
        ..ServerOptions::default()
    });
    server.upload(&guests::guest("hostile"));
    let spin = id(&server.create_job(&json!({
        "name": "spin", "module": "hostile", "job": "spin",
        "fuel": 400_000_000_000_u64, "timeoutMs": 30_000,
    })));
    let echo = id(&server.create_job(&json!({"name": "echo", "module": "hostile", "job": "echo"})));

    let mut spinning = Vec::new();
    for _ in 0..2 {
        let reply = server.post(&format!("/api/v1/jobs/{spin}/execute"));
        assert_eq!(reply.status, 202, "{}", reply.body);
        assert_eq!(reply.body["status"], "RUNNING", "{}", reply.body);
        let started = reply.body["executionId"].as_str().unwrap().to_owned();
        // Already under way when the answer comes: no queue in between.
        let execution = server.execution(&started);
        assert_eq!(execution["status"], "RUNNING", "{execution}");
        assert!(execution["startedAt"].is_number(), "{execution}");
        assert!(execution["nodeId"].is_string(), "{execution}");
        spinning.push(started);
    }
    // Both free workers are taken: the next run waits for the one left to the queue.
    let reply = server.post(&format!("/api/v1/jobs/{echo}/execute"));
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(reply.body["status"], "QUEUED", "{}", reply.body);
    let queued = reply.body["executionId"].as_str().unwrap().to_owned();
    assert_eq!(server.wait_final(&queued, RUN)["status"], "COMPLETED");

    // A run started at once stops on cancel like any other, and frees its worker.
    for started in &spinning {
        let reply = server.post(&format!("/api/v1/executions/{started}/cancel"));
        assert_eq!(reply.status, 200, "{}", reply.body);
        let execution = server.wait_final(started, Duration::from_secs(5));
        assert_eq!(execution["status"], "CANCELLED", "{execution}");
    }
    let reply = server.post_json(
        &format!("/api/v1/jobs/{echo}/execute-bulk"),
        &json!({"count": 2}),
    );
    assert_eq!(reply.body["status"], "RUNNING", "{}", reply.body);
    for started in reply.body["executionIds"].as_array().unwrap() {
        let execution = server.wait_final(started.as_str().unwrap(), RUN);
        assert_eq!(execution["status"], "COMPLETED", "{execution}");
    }
}

#[test]
fn every_hostile_job_ends_with_a_fitting_status_while_the_server_stays_healthy() {
    let server = Server::start_with(ServerOptions {
        workers: Some(4),
        ..ServerOptions::default()
    });
    server.upload(&guests::guest("hostile"));
    // (job, extra definition, status, errorKind, error text)
    let cases = [
        (
            "spin",
            json!({"fuel": 50_000_000}),
            "FAILED",
            "OUT_OF_FUEL",
            "fuel",
        ),
        (
            "memory-bomb",
            json!({"memoryBytes": 32 << 20}),
            "FAILED",
            "MEMORY_LIMIT_EXCEEDED",
            "memory",
        ),
        (
            "deep-recursion",
            json!({}),
            "FAILED",
            "TRAP",
            "stack overflow",
        ),
        (
            "huge-output",
            json!({}),
            "FAILED",
            "OUTPUT_TOO_LARGE",
            "limit",
        ),
        ("panic", json!({}), "FAILED", "TRAP", "fixture panic"),
        ("trap", json!({}), "FAILED", "TRAP", "unreachable"),
        (
            "log-flood",
            json!({"timeoutMs": 120_000}),
            "COMPLETED",
            "",
            "",
        ),
        (
            "stdout-flood",
            json!({"timeoutMs": 120_000}),
            "COMPLETED",
            "",
            "",
        ),
    ];
    let mut runs = Vec::new();
    for (job, extra, ..) in &cases {
        let mut definition = json!({"name": job, "module": "hostile", "job": job});
        definition
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let job_id = id(&server.create_job(&definition));
        runs.push(server.execute(&job_id, None));
    }
    let mut finished = HashMap::new();
    let all_done = server.wait_until(Duration::from_secs(120), || {
        let health = server.get("/healthz");
        assert_eq!(health.status, 200, "the server stopped answering /healthz");
        for run in &runs {
            if !finished.contains_key(run) {
                let execution = server.execution(run);
                if is_final(&execution) {
                    finished.insert(run.clone(), execution);
                }
            }
        }
        finished.len() == runs.len()
    });
    assert!(all_done, "only {} of {} ended", finished.len(), runs.len());
    for ((job, _, status, kind, text), run) in cases.iter().zip(&runs) {
        let execution = &finished[run];
        assert_eq!(execution["status"], *status, "{job}: {execution}");
        if !kind.is_empty() {
            assert_eq!(execution["errorKind"], *kind, "{job}: {execution}");
            let error = execution["error"].as_str().unwrap_or_default();
            assert!(error.contains(text), "{job}: {error}");
        }
    }
    for (job, run) in [("log-flood", &runs[6]), ("stdout-flood", &runs[7])] {
        let logs = server.logs(run);
        let last = logs.last().unwrap()["message"].as_str().unwrap();
        assert!(
            last.contains("dropped"),
            "{job}: the cap is reported, got `{last}`"
        );
        assert!(logs.len() <= 10_001, "{job}: {} lines kept", logs.len());
    }
    assert_eq!(server.logs(&runs[7])[0]["fields"]["stream"], "stdout");
    assert_eq!(server.get("/readyz").status, 200);
}

// ---- bulk runs: storage and idempotency -----------------------------------------------------

/// Bytes the SQLite database of `server` takes on disk: the file and its log.
fn database_bytes(server: &Server) -> u64 {
    ["runcell.db", "runcell.db-wal"]
        .iter()
        .map(|name| std::fs::metadata(server.data_dir().join(name)).map_or(0, |meta| meta.len()))
        .sum()
}

/// Runs `work` on a connection of its own to the SQLite file of `server` (stopped, when
/// `work` writes), read-only unless `writable`.
fn on_database<T>(
    server: &Server,
    writable: bool,
    work: impl AsyncFnOnce(&mut sqlx::SqliteConnection) -> T,
) -> T {
    use sqlx::Connection;
    let path = server.data_dir().join("runcell.db");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let options = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&path)
                .read_only(!writable);
            let mut connection = sqlx::SqliteConnection::connect_with(&options)
                .await
                .expect("the database file opens");
            let done = work(&mut connection).await;
            let _ = connection.close().await;
            done
        })
}

/// How many executions of job `job_id` (in state `status`, if given) the SQLite file of
/// `server` holds (listing them over the API would carry every run's 1 MB input).
fn executions_in_database(server: &Server, job_id: &str, status: Option<&str>) -> i64 {
    on_database(server, false, async |connection| {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM executions WHERE job_id = ? AND status = COALESCE(?, status)",
        )
        .bind(job_id)
        .bind(status)
        .fetch_one(connection)
        .await
        .expect("a count")
    })
}

/// `POST path` with `body` and the header `Idempotency-Key: key`, as the admin; the
/// status, whether `Idempotent-Replayed: true` came back, and the body.
fn post_keyed(server: &Server, path: &str, key: &str, body: &Value) -> (u16, bool, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let mut response = agent
        .post(server.url(path))
        .header("authorization", format!("Bearer {}", server.token()))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .send(body.to_string().as_bytes())
        .unwrap_or_else(|err| panic!("POST {path}: {err}"));
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|value| value == "true");
    let text = response.body_mut().read_to_string().unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (response.status().as_u16(), replayed, body)
}

#[test]
fn a_bulk_run_of_a_large_stored_input_stores_it_once_and_a_retried_request_runs_nothing_twice() {
    let server = Server::start_with(ServerOptions {
        workers: Some(1),
        ..ServerOptions::default()
    });
    server.upload(&guests::guest("hostile"));
    // The only worker spins, so the bulk's runs wait in the queue while the database is
    // measured; nothing they produce is written before then.
    let spin = id(&server.create_job(&json!({
        "name": "spin", "module": "hostile", "job": "spin",
        "fuel": 400_000_000_000_u64, "timeoutMs": 120_000,
    })));
    let spinning = server.execute(&spin, None);
    assert!(
        server.wait_until(RUN, || server.execution(&spinning)["status"] == "RUNNING"),
        "the spin never started: {}",
        server.execution(&spinning)
    );
    // ~1 MiB, with room for what `echo` adds under the 1 MiB output cap.
    let input = json!({"blob": "x".repeat(1_000_000)});
    let echo = id(&server.create_job(&json!({
        "name": "echo", "module": "hostile", "job": "echo", "input": input,
    })));
    // Once the checkpointer (every 250 ms) has copied the log back, the file sizes
    // change only by what is written next.
    std::thread::sleep(Duration::from_secs(1));
    let before = database_bytes(&server);

    let bulk = format!("/api/v1/jobs/{echo}/execute-bulk");
    let (status, replayed, first) = post_keyed(&server, &bulk, "bulk-0001", &json!({"count": 200}));
    assert_eq!(status, 202, "{first}");
    assert!(!replayed);
    assert_eq!(first["count"], 200);
    let ids: Vec<String> = first["executionIds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let grown = database_bytes(&server).saturating_sub(before);
    println!("200 runs of a 1 MB stored input grew the database by {grown} bytes");
    // Each run copying the input would be ~200 MB.
    assert!(
        grown < 4 << 20,
        "200 runs of a 1 MB input grew the database by {grown} bytes"
    );

    // The client timed out and retries: the same runs, nothing new.
    let (status, replayed, again) = post_keyed(&server, &bulk, "bulk-0001", &json!({"count": 200}));
    assert_eq!(status, 202, "{again}");
    assert!(replayed);
    assert_eq!(again, first);
    assert_eq!(executions_in_database(&server, &echo, None), 200);
    // The key cannot be spent on another request.
    let (status, _, refused) = post_keyed(&server, &bulk, "bulk-0001", &json!({"count": 201}));
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["error"]["details"]["field"], "Idempotency-Key");
    let (status, _, refused) = post_keyed(&server, &bulk, "not a key", &json!({"count": 1}));
    assert_eq!(status, 400, "{refused}");

    // Once the worker is free, every run sees the whole input.
    let reply = server.post(&format!("/api/v1/executions/{spinning}/cancel"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let done = server.wait_until(Duration::from_secs(300), || {
        ["QUEUED", "RUNNING"]
            .iter()
            .all(|status| executions_in_database(&server, &echo, Some(status)) == 0)
    });
    assert!(done, "not all 200 runs ended");
    for id in &ids {
        let execution = server.execution(id);
        assert_eq!(execution["status"], "COMPLETED", "{}", execution["error"]);
        assert!(
            execution["result"]["input"] == input,
            "execution {id} saw another input"
        );
    }
    assert_eq!(executions_in_database(&server, &echo, None), 200);
}

// ---- following logs -----------------------------------------------------------------------

#[test]
fn a_run_awaited_answers_with_its_end_or_with_its_state_when_the_wait_ends_first() {
    let server = Server::start();
    server.upload(&guests::guest("hostile"));
    let job = |name: &str, definition: Value| {
        let mut definition = definition;
        definition["name"] = json!(name);
        definition["module"] = json!("hostile");
        id(&server.create_job(&definition))
    };
    let echo = job("echo", json!({"job": "echo"}));
    let fail = job("fail", json!({"job": "fail-permanent"}));
    let spin = job(
        "spin",
        json!({"job": "spin", "fuel": 400_000_000_000_u64, "timeoutMs": 30_000}),
    );

    // Final within the wait: 200 with the execution as GET shows it, completed or failed.
    let completed = server.post_json(
        &format!("/api/v1/jobs/{echo}/execute?wait=30s"),
        &json!({"input": {"n": 7}}),
    );
    assert_eq!(completed.status, 200, "{}", completed.body);
    assert_eq!(completed.body["status"], "COMPLETED", "{}", completed.body);
    assert_eq!(completed.body["result"]["input"], json!({"n": 7}));
    let completed_id = id(&completed.body);
    assert_eq!(completed.body, server.execution(&completed_id));
    let failed = server.post(&format!("/api/v1/jobs/{fail}/execute?wait=30s"));
    assert_eq!(failed.status, 200, "{}", failed.body);
    assert_eq!(failed.body["status"], "FAILED", "{}", failed.body);
    assert_eq!(failed.body["errorKind"], "PERMANENT", "{}", failed.body);
    assert_eq!(failed.body, server.execution(&id(&failed.body)));

    // Still going when the wait ends: 202 with the execution as it stands.
    let asked = Instant::now();
    let running = server.post(&format!("/api/v1/jobs/{spin}/execute?wait=1500ms"));
    let waited = asked.elapsed();
    assert_eq!(running.status, 202, "{}", running.body);
    assert!(
        running.body["status"] == "RUNNING" || running.body["status"] == "QUEUED",
        "{}",
        running.body
    );
    assert!(
        (Duration::from_millis(1500)..RUN).contains(&waited),
        "answered after {waited:?}"
    );
    let spinning = id(&running.body);
    let reply = server.post(&format!("/api/v1/executions/{spinning}/cancel"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(server.wait_final(&spinning, RUN)["status"], "CANCELLED");

    // A wait that is not a duration, or longer than the longest, creates no run.
    let before = server.executions(&format!("jobId={echo}")).len();
    let garbled = server.post(&format!("/api/v1/jobs/{echo}/execute?wait=forever"));
    assert_eq!(
        (garbled.status, garbled.field()),
        (400, "wait"),
        "{}",
        garbled.body
    );
    let too_long = server.post(&format!("/api/v1/jobs/{echo}/execute?wait=10m"));
    assert_eq!(
        (too_long.status, too_long.field()),
        (422, "wait"),
        "{}",
        too_long.body
    );
    assert!(too_long.message().contains("5m"), "{}", too_long.body);
    assert_eq!(server.executions(&format!("jobId={echo}")).len(), before);
}

#[test]
fn following_a_run_streams_its_lines_in_order_then_end() {
    let server = Server::start();
    server.upload(&guests::guest("hostile"));
    server.upload(&guests::guest("data-sync"));
    let flood = id(&server.create_job(
        &json!({"name": "flood", "module": "hostile", "job": "log-flood", "timeoutMs": 120_000}),
    ));
    let sync = id(&server.create_job(&json!({
        "name": "sync", "module": "data-sync", "job": "hourly-sync",
        "input": {"records": [{"id": "a", "name": "A", "value": 1}]},
    })));

    let run = server.execute(&flood, None);
    let events = server.follow(&run, Duration::from_secs(120));
    let (last_name, last_data) = events.last().expect("some events");
    assert_eq!(last_name, "end", "the stream ends with `end`");
    assert_eq!(last_data["status"], "COMPLETED");
    let lines: Vec<&Value> = events
        .iter()
        .filter(|(name, _)| name == "log")
        .map(|(_, line)| line)
        .collect();
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (0..seqs.len() as u64).collect::<Vec<_>>(),
        "every line once, in order"
    );
    assert_eq!(
        lines.len(),
        server.logs(&run).len(),
        "the stream has every stored line"
    );
    assert!(
        lines[0]["ts"].is_u64() && lines[0]["level"] == "info",
        "{}",
        lines[0]
    );

    let run = server.execute(&sync, None);
    let events = server.follow(&run, RUN);
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["log", "log", "end"]);
    assert_eq!(events[0].1["message"], "sync started");
    assert_eq!(events[2].1, json!({"status": "COMPLETED"}));
}

// ---- crashes -------------------------------------------------------------------------------

#[test]
fn a_crash_fails_the_run_whose_handler_began_and_requeues_the_one_that_never_did() {
    let mut server = Server::start_with(ServerOptions {
        workers: Some(1),
        ..ServerOptions::default()
    });
    server.upload(&guests::guest("hostile"));
    let spin = id(&server.create_job(&json!({
        "name": "spin", "module": "hostile", "job": "spin",
        "fuel": 400_000_000_000_u64, "timeoutMs": 30_000,
    })));
    let echo = id(&server.create_job(&json!({"name": "echo", "module": "hostile", "job": "echo"})));
    let spinning = server.execute(&spin, None);
    assert!(server.wait_until(RUN, || server.execution(&spinning)["status"] == "RUNNING"));
    // Its one worker is busy: this one waits in the queue, unclaimed.
    let waiting = server.execute(&echo, None);
    // Long enough for the node to write down that the spin's handler began.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(server.execution(&waiting)["status"], "QUEUED");
    server.kill();
    server.restart();

    let spun = server.wait_final(&spinning, RUN);
    assert_eq!(spun["status"], "FAILED", "{spun}");
    assert_eq!(spun["errorKind"], "LEASE_EXPIRED", "{spun}");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        spun["finishedAt"].as_i64().unwrap() <= now_ms,
        "finished in the future: {spun}"
    );
    let echoed = server.wait_final(&waiting, RUN);
    assert_eq!(echoed["status"], "COMPLETED", "{echoed}");
    assert_eq!(echoed["attempt"], 1, "{echoed}");
    // maxAttempts is 1: the failed run is not tried again, and nothing else appears.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(server.executions(&format!("jobId={spin}")).len(), 1);
}

#[test]
fn killing_the_server_mid_bulk_loses_no_execution_and_finishes_each_exactly_once() {
    const BULK: usize = 500;
    let mut server = Server::start();
    server.upload(&guests::guest("hostile"));
    // A few milliseconds of CPU each (about a second for the batch on two workers): a
    // batch of no-op runs can finish between two polls, before the kill.
    let job = id(&server.create_job(&json!({
        "name": "burn", "module": "hostile", "job": "burn",
        "input": {"iterations": 2_000_000},
    })));
    let reply = server.post_json(
        &format!("/api/v1/jobs/{job}/execute-bulk"),
        &json!({"count": BULK}),
    );
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(reply.body["count"], BULK);
    let ids: HashSet<String> = reply.body["executionIds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), BULK);

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
        "the bulk was over before the kill; make it bigger"
    );
    server.restart();

    // The data directory is locked by one process at a time, so the restarted server
    // takes over what the dead one held at once instead of waiting out the lease.
    let mut executions = Vec::new();
    let settled = server.wait_until(Duration::from_secs(20), || {
        executions = server.executions(&format!("jobId={job}"));
        executions.iter().all(is_final)
    });
    let stuck: Vec<&Value> = executions.iter().filter(|e| !is_final(e)).collect();
    assert!(
        settled,
        "{} executions never ended, e.g. {:?}",
        stuck.len(),
        stuck.first()
    );
    let found: HashSet<String> = executions.iter().map(id).collect();
    assert_eq!(executions.len(), BULK, "no execution lost or duplicated");
    assert_eq!(found, ids);
    let mut by_status: HashMap<&str, usize> = HashMap::new();
    for execution in &executions {
        assert_eq!(execution["attempt"], 1, "{execution}");
        let status = execution["status"].as_str().unwrap();
        *by_status.entry(status).or_default() += 1;
        assert!(
            status == "COMPLETED"
                || execution["error"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("lease"),
            "{execution}"
        );
    }
    eprintln!("{completed_before_kill} completed before the kill; in the end: {by_status:?}");
    assert!(
        by_status.get("COMPLETED").copied().unwrap_or(0) > 0,
        "{by_status:?}"
    );
    // Only what was running at the kill can have failed: a node claims no more than it
    // has workers for, and what it claimed but never started goes back to the queue.
    let workers = ServerOptions::default().workers.unwrap();
    let failed = by_status.get("FAILED").copied().unwrap_or(0);
    assert!(
        failed <= workers,
        "{failed} failed, but only {workers} could be running: {by_status:?}"
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let restarted_by = now_ms + 1_000;
    for execution in executions.iter().filter(|e| e["status"] == "FAILED") {
        let finished = execution["finishedAt"].as_i64().unwrap_or(i64::MAX);
        assert!(
            finished <= restarted_by,
            "finished in the future: {execution}"
        );
    }
    // Nothing more happens to them.
    std::thread::sleep(Duration::from_millis(500));
    let again = server.executions(&format!("jobId={job}"));
    assert_eq!(again.len(), BULK);
    let before: HashMap<String, Value> = executions
        .iter()
        .map(|e| (id(e), e["status"].clone()))
        .collect();
    assert!(again.iter().all(|e| before[&id(e)] == e["status"]));
}

#[test]
fn sigterm_stops_the_server_cleanly_and_a_restart_keeps_everything() {
    let mut server = Server::start();
    server.upload(&guests::guest("hello"));
    let job = id(&server.create_job(
        &json!({"name": "greet", "module": "hello", "job": "greet", "input": {"name": "Ada"}}),
    ));
    let run = server.execute(&job, None);
    let execution = server.wait_final(&run, RUN);
    assert_eq!(execution["result"], json!({"greeting": "Hello, Ada!"}));
    let status = server.stop();
    assert!(status.success(), "exit status {status}");
    server.restart();
    assert_eq!(server.execution(&run)["status"], "COMPLETED");
    assert_eq!(server.get(&format!("/api/v1/jobs/{job}")).status, 200);
    let run = server.execute(&job, Some(json!({"name": "again"})));
    assert_eq!(
        server.wait_final(&run, RUN)["result"],
        json!({"greeting": "Hello, again!"})
    );
}

// ---- job settings and secrets ------------------------------------------------------------

/// A secret no output of the server may show.
const SECRET: &str = "hunter2-super-secret-token";

/// The `config` column of job `id`, read straight from the SQLite file of `server`.
fn raw_config_row(server: &Server, id: &str) -> String {
    on_database(server, false, async |connection| {
        sqlx::query_scalar("SELECT config FROM jobs WHERE id = ?")
            .bind(id)
            .fetch_one(connection)
            .await
            .expect("the job's row")
    })
}

/// Whether any file of the data directory's database holds `needle`.
fn database_files_contain(server: &Server, needle: &str) -> bool {
    ["runcell.db", "runcell.db-wal"].iter().any(|name| {
        std::fs::read(server.data_dir().join(name)).is_ok_and(|bytes| {
            bytes
                .windows(needle.len())
                .any(|window| window == needle.as_bytes())
        })
    })
}

#[test]
fn a_secret_setting_is_sealed_at_rest_masked_by_the_api_and_redacted_from_what_its_run_leaves() {
    use std::os::unix::fs::PermissionsExt;
    let server = Server::start();
    server.upload(&guests::guest("hostile"));
    let created = server.create_job(&json!({
        "name": "probe", "module": "hostile", "job": "use-everything",
        "config": {"region": "eu-west", "apiKey": {"secret": SECRET}},
    }));
    let job = id(&created);
    let shown = json!({"apiKey": {"secret": "***"}, "region": "eu-west"});
    assert_eq!(created["config"], shown, "{created}");
    let read = server.get(&format!("/api/v1/jobs/{job}")).body;
    assert_eq!(read["config"], shown);
    let listed = server.get("/api/v1/jobs").body;
    for body in [&created, &read, &listed] {
        assert!(!body.to_string().contains(SECRET), "{body}");
    }

    // At rest: sealed in the row, and the plaintext nowhere in the database files.
    let row: Value = serde_json::from_str(&raw_config_row(&server, &job)).unwrap();
    assert_eq!(row["region"], "eu-west");
    let sealed = row["apiKey"]["sealed"].as_str().expect("a sealed value");
    assert!(sealed.starts_with("v1:"), "{row}");
    assert!(!read.to_string().contains(sealed));
    let key_file = server.data_dir().join("secret-key");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the generated key is readable by its owner only"
    );

    // The module reads the secret itself: its result echoes it, and the record masks it.
    let run = server.wait_final(&server.execute(&job, None), RUN);
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(
        run["result"]["config"],
        json!({"apiKey": "***", "region": "eu-west"}),
        "the guest got exactly the secret, and the stored result masks it"
    );

    // Sent back with one plain value edited, the job keeps its secret.
    let mut config = read["config"].clone();
    config["region"] = json!("us-east");
    let patched = server.patch_json(&format!("/api/v1/jobs/{job}"), &json!({"config": config}));
    assert_eq!(patched.status, 200, "{}", patched.body);
    let run = server.wait_final(&server.execute(&job, None), RUN);
    assert_eq!(
        run["result"]["config"],
        json!({"apiKey": "***", "region": "us-east"}),
        "{run}"
    );
    assert!(!database_files_contain(&server, SECRET));

    // A guest that prints the secret: its log lines and its error keep only the mask.
    let loud = id(&server.create_job(&json!({
        "name": "loud", "module": "hostile", "job": "panic",
        "config": {"apiKey": {"secret": SECRET}},
    })));
    let run = server.wait_final(&server.execute(&loud, Some(json!({"leak": SECRET}))), RUN);
    assert_eq!(run["status"], "FAILED", "{run}");
    let error = run["error"].as_str().unwrap();
    assert!(error.contains(r#"{"leak":"***"}"#), "{error}");
    let logs = server.logs(run["id"].as_str().unwrap());
    let text = serde_json::to_string(&logs).unwrap();
    assert!(
        text.contains(r#"fixture panic: {\"leak\":\"***\"}"#),
        "{text}"
    );
    assert!(!text.contains(SECRET), "{text}");
    assert!(!error.contains(SECRET));
    assert!(!server.output().contains(SECRET), "{}", server.output());
}

#[test]
fn a_secret_that_no_longer_opens_fails_its_run_once_naming_the_setting() {
    let mut server = Server::start();
    server.upload(&guests::guest("hostile"));
    let job = id(&server.create_job(&json!({
        "name": "probe", "module": "hostile", "job": "use-everything", "maxAttempts": 3,
        "config": {"apiKey": {"secret": SECRET}},
    })));
    assert!(server.stop().success());
    // The operator replaced the key: what was sealed under the old one cannot be read.
    let other_key = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";
    std::fs::write(server.data_dir().join("secret-key"), other_key).unwrap();
    server.restart();

    let run = server.wait_final(&server.execute(&job, None), RUN);
    assert_eq!(run["status"], "FAILED", "{run}");
    assert_eq!(run["errorKind"], "NOT_RUNNABLE", "{run}");
    let error = run["error"].as_str().unwrap();
    assert!(
        error.contains("`apiKey`") && error.contains("RUNCELL_SECRET_KEY"),
        "{error}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        server.executions(&format!("jobId={job}")).len(),
        1,
        "not retried: another attempt could not open it either"
    );
    let shown = server.get(&format!("/api/v1/jobs/{job}")).body;
    assert_eq!(shown["config"], json!({"apiKey": {"secret": "***"}}));
    assert!(!server.output().contains(SECRET));
}

// ---- outbound HTTP ---------------------------------------------------------------------

/// A one-thread HTTP server on 127.0.0.1 that answers every request `200 ok`.
fn tiny_http_server() -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buffer = [0u8; 4096];
            let _ = stream.read(&mut buffer);
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    port
}

/// A port nothing listens on: bound, then closed.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server whose modules may reach 127.0.0.1, with `endpoint-monitor` uploaded.
fn endpoint_monitor_server() -> Server {
    let server = Server::start_with(ServerOptions {
        env: vec![("RUNCELL_OUTBOUND_ALLOW".to_owned(), "127.0.0.1".to_owned())],
        ..ServerOptions::default()
    });
    server.upload(&guests::guest("endpoint-monitor"));
    server
}

#[test]
fn endpoint_monitor_reaches_an_allowed_server_and_fails_transiently_on_a_down_one() {
    let up = tiny_http_server();
    let down = closed_port();
    let server = endpoint_monitor_server();
    let job = server.create_job(&json!({
        "name": "monitor", "module": "endpoint-monitor", "job": "check-endpoints", "maxAttempts": 1,
    }));
    let job = id(&job);

    let healthy =
        json!({"endpoints": [{"name": "local", "url": format!("http://127.0.0.1:{up}/health")}]});
    let run = server.wait_final(&server.execute(&job, Some(healthy)), RUN);
    assert_eq!(run["status"], "COMPLETED", "{run}");
    let logs = server.logs(run["id"].as_str().unwrap());
    assert!(
        logs.iter()
            .any(|line| line["fields"]["status"] == 200 && line["fields"]["method"] == "GET"),
        "the request is recorded on the execution: {logs:?}"
    );

    let broken = json!({"endpoints": [
        {"name": "local", "url": format!("http://127.0.0.1:{up}/")},
        {"name": "gone", "url": format!("http://127.0.0.1:{down}/")},
    ]});
    let run = server.wait_final(&server.execute(&job, Some(broken)), RUN);
    assert_eq!(run["status"], "FAILED", "{run}");
    assert_eq!(run["errorKind"], "TRANSIENT", "{run}");

    // 127.0.0.2 is loopback too, but not opened: denied before any traffic.
    let denied =
        json!({"endpoints": [{"name": "other", "url": format!("http://127.0.0.2:{up}/")}]});
    let run = server.wait_final(&server.execute(&job, Some(denied)), RUN);
    assert_eq!(run["status"], "FAILED", "{run}");
    assert_eq!(run["errorKind"], "PERMANENT", "{run}");
}

#[test]
fn endpoint_monitor_checks_the_endpoints_of_its_setting_set_through_the_api() {
    let up = tiny_http_server();
    let down = closed_port();
    let server = endpoint_monitor_server();
    let endpoints = json!([
        {"name": "health", "url": format!("http://127.0.0.1:{up}/health")},
        {"name": "home", "url": format!("http://127.0.0.1:{up}/"), "expectStatus": 200},
    ]);
    let job = id(&server.create_job(&json!({
        "name": "monitor", "module": "endpoint-monitor", "job": "check-endpoints",
        "maxAttempts": 1,
        "config": {"endpoints": endpoints.to_string()},
    })));

    let run = server.wait_final(&server.execute(&job, None), RUN);
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(run["result"]["checked"], 2, "{run}");
    assert_eq!(run["result"]["up"], 2, "{run}");
    let logs = server.logs(run["id"].as_str().unwrap());
    let checked: HashSet<&str> = logs
        .iter()
        .filter(|line| line["message"] == "endpoint up")
        .filter_map(|line| line["fields"]["endpoint"].as_str())
        .collect();
    assert_eq!(checked, HashSet::from(["health", "home"]), "{logs:?}");

    // With the setting, endpoints in the input are refused rather than mixed in.
    let input = json!({"endpoints": [{"name": "x", "url": format!("http://127.0.0.1:{up}/")}]});
    let run = server.wait_final(&server.execute(&job, Some(input)), RUN);
    assert_eq!(run["errorKind"], "INVALID_INPUT", "{run}");

    // The list is changed through the API, and kept as a secret (it may carry tokens).
    let endpoints = json!([
        {"name": "health", "url": format!("http://127.0.0.1:{up}/health")},
        {"name": "gone", "url": format!("http://127.0.0.1:{down}/")},
    ]);
    let patched = server.patch_json(
        &format!("/api/v1/jobs/{job}"),
        &json!({"config": {"endpoints": {"secret": endpoints.to_string()}}}),
    );
    assert_eq!(patched.status, 200, "{}", patched.body);
    let run = server.wait_final(&server.execute(&job, None), RUN);
    assert_eq!(run["status"], "FAILED", "{run}");
    assert_eq!(run["errorKind"], "TRANSIENT", "{run}");
    let logs = server.logs(run["id"].as_str().unwrap());
    assert!(
        logs.iter()
            .any(|line| line["message"] == "endpoint down" && line["fields"]["endpoint"] == "gone"),
        "{logs:?}"
    );
}

// ---- runs in flight and guests on a CPU ----------------------------------------------

/// An HTTP server on 127.0.0.1 that answers every request `200 ok` after `delay`, on a
/// thread per connection; returns its port and the most requests it held at once.
fn slow_http_server(delay: Duration) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader, Write};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (waiting, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let most_seen = most.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let (waiting, most) = (waiting.clone(), most.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    line.clear();
                }
                most.fetch_max(waiting.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                std::thread::sleep(delay);
                waiting.fetch_sub(1, Ordering::SeqCst);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                );
            });
        }
    });
    (port, most_seen)
}

/// Waits until every execution of `job` is final; returns them.
fn wait_all_final(server: &Server, job: &str, count: usize, timeout: Duration) -> Vec<Value> {
    let mut executions = Vec::new();
    let done = server.wait_until(timeout, || {
        executions = server.executions(&format!("jobId={job}"));
        executions.len() == count && executions.iter().all(is_final)
    });
    let open = executions.iter().filter(|e| !is_final(e)).count();
    assert!(
        done,
        "{open} of {count} executions not final after {timeout:?}"
    );
    executions
}

#[test]
fn by_default_hundreds_of_runs_wait_on_a_slow_endpoint_at_once() {
    const RUNS: usize = 200;
    let (port, most_waiting) = slow_http_server(Duration::from_secs(2));
    let server = Server::start_with(ServerOptions {
        workers: None,
        env: vec![("RUNCELL_OUTBOUND_ALLOW".to_owned(), "127.0.0.1".to_owned())],
        ..ServerOptions::default()
    });
    server.upload(&guests::guest("endpoint-monitor"));
    let job = id(&server.create_job(&json!({
        "name": "slow-check", "module": "endpoint-monitor", "job": "check-endpoints",
        "maxAttempts": 1,
        "input": {"endpoints": [{"name": "slow", "url": format!("http://127.0.0.1:{port}/")}]},
    })));

    server.execute_bulk(&job, &json!({"count": RUNS}));
    let executions = wait_all_final(&server, &job, RUNS, Duration::from_secs(120));
    let completed = executions
        .iter()
        .filter(|e| e["status"] == "COMPLETED")
        .count();
    assert_eq!(completed, RUNS, "{:?}", executions.first());
    // The former default, four workers per core, would have held eight at a time here;
    // a run waiting on the network now holds a worker but no CPU.
    let most = most_waiting.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        most >= RUNS / 2,
        "at most {most} of {RUNS} runs waited on the endpoint at once"
    );
}

#[test]
fn guests_running_their_code_at_once_never_outnumber_the_cpu_permits() {
    const RUNS: usize = 100;
    const PERMITS: usize = 2;
    let server = Server::start_with(ServerOptions {
        workers: None,
        env: vec![("RUNCELL_CPU_GUESTS".to_owned(), PERMITS.to_string())],
        ..ServerOptions::default()
    });
    server.upload(&guests::guest("hostile"));
    // A few milliseconds of CPU each (330,000 to 800,000 iterations a millisecond on the
    // machines of BENCHMARKS.md): yields to other tasks on the way, well within the
    // quantum (10 ms of CPU) after which a guest gives its CPU to a waiting one.
    let job = id(&server.create_job(&json!({
        "name": "timed-burn", "module": "hostile", "job": "timed-burn", "maxAttempts": 1,
        "input": {"iterations": 1_000_000},
    })));

    server.execute_bulk(&job, &json!({"count": RUNS}));
    let executions = wait_all_final(&server, &job, RUNS, Duration::from_secs(120));
    // Each run's guest code ran from its start to its end without waiting on the host,
    // so it held its permit throughout: no more spans overlap than there are permits.
    let mut edges: Vec<(u128, i32)> = Vec::new();
    for execution in &executions {
        assert_eq!(execution["status"], "COMPLETED", "{execution}");
        let at = |field: &str| -> u128 {
            execution["result"][field]
                .as_str()
                .and_then(|ns| ns.parse().ok())
                .unwrap_or_else(|| panic!("no {field}: {execution}"))
        };
        edges.push((at("startedNs"), 1));
        edges.push((at("endedNs"), -1));
    }
    // An end before a start at the same instant: touching spans do not overlap.
    edges.sort();
    let (mut running, mut most) = (0, 0);
    for (_, step) in edges {
        running += step;
        most = most.max(running);
    }
    assert!(
        (1..=PERMITS as i32).contains(&most),
        "{most} guests ran their code at once on {PERMITS} permits"
    );
}

#[test]
fn a_storm_of_cpu_bound_runs_waits_for_the_cpu_without_timing_out() {
    const RUNS: usize = 150;
    const LIMIT_MS: f64 = 1_000.0;
    let server = Server::start_with(ServerOptions {
        workers: None,
        env: vec![("RUNCELL_CPU_GUESTS".to_owned(), "1".to_owned())],
        ..ServerOptions::default()
    });
    server.upload(&guests::guest("hostile"));
    // 12 to 30 ms of CPU each, past the quantum: the runs take turns on the one CPU, and
    // all of them together need several times the limit of each.
    let job = id(&server.create_job(&json!({
        "name": "burn", "module": "hostile", "job": "burn", "maxAttempts": 1,
        "timeoutMs": LIMIT_MS as u64, "input": {"iterations": 10_000_000},
    })));

    server.execute_bulk(&job, &json!({"count": RUNS}));
    let executions = wait_all_final(&server, &job, RUNS, Duration::from_secs(120));
    let mut longest: f64 = 0.0;
    for execution in &executions {
        assert_eq!(execution["status"], "COMPLETED", "{execution}");
        longest = longest.max(execution["durationMs"].as_f64().unwrap());
    }
    // Recorded durations count the wait; the limit did not.
    assert!(
        longest > LIMIT_MS,
        "the longest run took {longest} ms: no run waited long for the CPU"
    );
}

#[test]
fn a_corrupt_row_is_a_500_whose_error_id_leads_to_the_logged_cause() {
    let mut server = Server::start();
    server.upload(&guests::guest("hello"));
    let job = server.create_job(&json!({"name": "greet", "module": "hello", "job": "greet"}));
    let execution = server.execute(&id(&job), Some(json!({"name": "Ada"})));
    server.wait_final(&execution, RUN);

    // A row no version of Runcell writes, as a bad hand edit or a bug would leave it.
    server.stop();
    on_database(&server, true, async |connection| {
        // The schema's own CHECK would refuse it, as it should.
        sqlx::query("PRAGMA ignore_check_constraints = ON")
            .execute(&mut *connection)
            .await
            .unwrap();
        sqlx::query("UPDATE executions SET status = 'EXPLODED' WHERE id = ?")
            .bind(&execution)
            .execute(&mut *connection)
            .await
            .unwrap();
    });
    server.restart();

    let reply = server.get(&format!("/api/v1/executions/{execution}"));
    assert_eq!(reply.status, 500, "not a `retry later`: {}", reply.body);
    assert_eq!(reply.code(), "internal");
    let error_id = reply.body["error"]["details"]["errorId"]
        .as_str()
        .unwrap_or_else(|| panic!("no error id: {}", reply.body))
        .to_owned();
    assert!(
        !reply.body.to_string().contains("EXPLODED"),
        "{}",
        reply.body
    );
    // The log line may reach the pipe from the server a moment after the answer did.
    server.wait_until(Duration::from_secs(5), || {
        server.output().contains(&error_id)
    });
    let output = server.output();
    let line = output
        .lines()
        .find(|line| line.contains(&error_id))
        .unwrap_or_else(|| panic!("{error_id} is in no log line:\n{output}"));
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains("EXPLODED"), "the cause: {line}");
    // The rest of the server is fine.
    assert_eq!(server.get("/api/v1/jobs").status, 200);
}
