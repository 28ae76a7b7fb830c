//! The module contract, kept end to end by the real `runcell serve`: a job follows its
//! module's declared schedule, events are typed input that cannot feed themselves without
//! end, settings are declared and checked, and a module built against an older contract
//! still runs.

#[path = "support/guests.rs"]
mod guests;
#[allow(
    dead_code,
    reason = "shared with other test binaries, each of which uses a different part of it"
)]
#[path = "support/server.rs"]
mod server;

use std::time::Duration;

use serde_json::{Value, json};

use server::{Server, ServerOptions, is_final};

/// How long an ordinary execution may take to finish in these tests.
const RUN: Duration = Duration::from_secs(20);

fn id(value: &Value) -> String {
    value["id"].as_str().expect("an id").to_owned()
}

/// Creates a job exactly as `definition` says (the support's `create_job` adds
/// `"schedule": null`, which these tests must not have).
fn define(server: &Server, definition: &Value) -> Value {
    let reply = server.post_json("/api/v1/jobs", definition);
    assert_eq!(reply.status, 201, "create job {definition}: {}", reply.body);
    reply.body
}

fn warnings(job: &Value) -> Vec<String> {
    job["warnings"].as_array().map_or_else(Vec::new, |items| {
        items
            .iter()
            .map(|w| w.as_str().unwrap().to_owned())
            .collect()
    })
}

// ---- default schedules ---------------------------------------------------------------

#[test]
fn a_job_defined_without_a_schedule_runs_on_its_modules_default_and_null_means_none() {
    let server = Server::start();
    server.upload(&guests::guest("hostile"));
    // `tick` declares "* * * * * *" (every second).
    let following = define(
        &server,
        &json!({"name": "ticks", "module": "hostile", "job": "tick"}),
    );
    assert_eq!(following["schedule"], "* * * * * *", "{following}");
    assert_eq!(following["scheduleSource"], "module");
    assert!(following["nextRunAt"].is_i64(), "{following}");
    let unscheduled = define(
        &server,
        &json!({"name": "quiet", "module": "hostile", "job": "tick", "schedule": null}),
    );
    assert_eq!(unscheduled["schedule"], Value::Null);
    assert_eq!(unscheduled["scheduleSource"], "job");
    assert_eq!(unscheduled["nextRunAt"], Value::Null);

    let following = id(&following);
    let mut runs = Vec::new();
    let fired = server.wait_until(RUN, || {
        runs = server.executions(&format!("jobId={following}"));
        runs.iter().filter(|run| is_final(run)).count() >= 2
    });
    assert!(fired, "the default schedule did not fire twice: {runs:?}");
    for run in runs.iter().filter(|run| is_final(run)) {
        assert_eq!(run["status"], "COMPLETED", "{run}");
        assert_eq!(run["trigger"], "cron");
        assert_eq!(run["result"], "cron");
    }
    assert!(
        server
            .executions(&format!("jobId={}", id(&unscheduled)))
            .is_empty()
    );

    // An operator's choice, `null` included, replaces the module's.
    let changed = server.patch_json(
        &format!("/api/v1/jobs/{following}"),
        &json!({"schedule": null}),
    );
    assert_eq!(changed.status, 200, "{}", changed.body);
    assert_eq!(changed.body["schedule"], Value::Null);
    assert_eq!(changed.body["scheduleSource"], "job");
    assert_eq!(changed.body["nextRunAt"], Value::Null);
}

#[test]
fn create_jobs_installs_a_job_for_each_module_job_once_and_says_what_it_left_out() {
    let server = Server::start();
    let upload = |guest: &str| {
        let reply = server.post_bytes(
            "/api/v1/modules?approve=true&createJobs=true",
            "application/wasm",
            &guests::guest_bytes(guest),
        );
        assert_eq!(reply.status, 201, "{}", reply.body);
        reply.body
    };
    let installed = upload("data-sync");
    let created: Vec<(&str, &str)> = installed["definedJobs"]["created"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| {
            assert_eq!(job["scheduleSource"], "module", "{job}");
            (
                job["name"].as_str().unwrap(),
                job["schedule"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        created,
        [
            ("data-sync.hourly-sync", "0 * * * *"),
            ("data-sync.daily-report", "0 6 * * *"),
            ("data-sync.health-check", "*/5 * * * *"),
        ]
    );
    assert_eq!(installed["definedJobs"]["skipped"], json!([]));
    assert_eq!(installed["name"], "data-sync", "the module is still there");
    let listed = server.get("/api/v1/jobs").body;
    assert_eq!(listed["items"].as_array().unwrap().len(), 3);

    // Again: every module job already has its job.
    let again = upload("data-sync");
    assert_eq!(again["definedJobs"]["created"], json!([]));
    let skipped = again["definedJobs"]["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 3);
    assert!(
        skipped[0]["reason"]
            .as_str()
            .unwrap()
            .contains("`data-sync.hourly-sync` already runs it"),
        "{skipped:?}"
    );

    // A job its module requires a setting for cannot be made without one.
    let hostile = upload("hostile");
    let skipped = hostile["definedJobs"]["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0]["job"], "needs-token");
    assert!(
        skipped[0]["reason"].as_str().unwrap().contains("`token`"),
        "{skipped:?}"
    );
    // Without the flag, nothing is created.
    let plain = server.post_bytes(
        "/api/v1/modules?approve=true",
        "application/wasm",
        &guests::guest_bytes("hello"),
    );
    assert_eq!(plain.status, 201);
    assert!(plain.body.get("definedJobs").is_none(), "{}", plain.body);
    let bad = server.post_bytes(
        "/api/v1/modules?createJobs=maybe",
        "application/wasm",
        &guests::guest_bytes("hello"),
    );
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(bad.body["error"]["details"]["field"], "createJobs");
}

// ---- events --------------------------------------------------------------------------

#[test]
fn a_job_taking_no_input_runs_on_an_event_and_mismatched_subscriptions_are_warned_of() {
    let server = Server::start();
    server.upload(&guests::guest("data-sync"));
    server.upload(&guests::guest("hostile"));
    // `health-check` takes `NoInput`: it runs on the event and ignores it.
    let health = server.create_job(
        &json!({"name": "on-ping", "module": "data-sync", "job": "health-check", "onEvent": "ping.*"}),
    );
    assert!(warnings(&health).is_empty(), "{health}");
    let reply = server.post_json(
        "/api/v1/events",
        &json!({"topic": "ping.now", "payload": {"from": "test"}}),
    );
    assert_eq!(reply.status, 202, "{}", reply.body);
    let run = reply.body["triggeredExecutions"][0].as_str().unwrap();
    let run = server.wait_final(run, RUN);
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(run["trigger"], "event");

    // An input schema that cannot take the event is warned of, at creation and after.
    let sync = server.create_job(
        &json!({"name": "on-sync", "module": "data-sync", "job": "hourly-sync", "onEvent": "sync.*"}),
    );
    let warned = warnings(&sync);
    assert!(
        warned
            .iter()
            .any(|w| w.contains("input schema") && w.contains("`id`")),
        "{warned:?}"
    );
    let shown = server.get(&format!("/api/v1/jobs/{}", id(&sync))).body;
    assert_eq!(warnings(&shown), warned);
    // So is a subscription its own module feeds.
    let echo = server.create_job(
        &json!({"name": "echoes", "module": "hostile", "job": "echo", "onEvent": "hostile.*"}),
    );
    assert!(
        warnings(&echo)
            .iter()
            .any(|w| w.contains("`hostile.*`") && w.contains("publishes")),
        "{echo}"
    );
}

/// The executions of `job_id`, once `expected` of them are final and no more appear for
/// a moment.
fn settled_runs(server: &Server, job_id: &str, expected: usize) -> Vec<Value> {
    let mut runs = Vec::new();
    let done = server.wait_until(Duration::from_secs(30), || {
        runs = server.executions(&format!("jobId={job_id}"));
        runs.len() >= expected && runs.iter().all(is_final)
    });
    assert!(done, "{} runs, expected {expected}: {runs:?}", runs.len());
    std::thread::sleep(Duration::from_millis(1_500));
    server.executions(&format!("jobId={job_id}"))
}

#[test]
fn a_job_that_feeds_its_own_subscription_stops_at_the_depth_limit_saying_why() {
    let server = Server::start();
    server.upload(&guests::guest("hostile"));
    // `publish-on` publishes on `hostile.echoed` every time it runs.
    let looping = server.create_job(
        &json!({"name": "loop", "module": "hostile", "job": "publish-on", "onEvent": "hostile.*"}),
    );
    assert!(!warnings(&looping).is_empty(), "{looping}");
    let looping = id(&looping);
    let reply = server.post_json(
        "/api/v1/events",
        &json!({"topic": "hostile.start", "payload": {"hops": 0}}),
    );
    assert_eq!(reply.status, 202, "{}", reply.body);

    let runs = settled_runs(&server, &looping, 8);
    assert_eq!(runs.len(), 8, "one run per event of depth 1 to 8: {runs:?}");
    assert!(runs.iter().all(|run| run["status"] == "COMPLETED"));

    let events = server.get("/api/v1/events?limit=50").body["items"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(events.len(), 9, "{events:?}");
    let mut depths: Vec<u64> = events
        .iter()
        .map(|e| e["depth"].as_u64().unwrap())
        .collect();
    depths.sort_unstable();
    assert_eq!(depths, (1..=9).collect::<Vec<_>>());
    let last = events.iter().find(|e| e["depth"] == 9).unwrap();
    let published_by = last["causedBy"].as_str().unwrap();
    assert_eq!(last["source"], "hostile");
    let refusal = &last["refused"][0];
    assert_eq!(refusal["jobId"], looping.as_str());
    assert!(
        refusal["reason"].as_str().unwrap().contains("9 deep"),
        "{refusal}"
    );
    // The run whose event went too deep says so in its own log.
    let lines = server.logs(published_by);
    assert!(
        lines.iter().any(|line| line["level"] == "warn"
            && line["message"]
                .as_str()
                .unwrap()
                .contains("did not start job `loop`")),
        "{lines:?}"
    );
    let first = events.iter().find(|e| e["depth"] == 1).unwrap();
    assert_eq!(first["source"], "api");
    assert_eq!(first["causedBy"], Value::Null);
}

#[test]
fn events_start_a_job_at_most_its_rate_and_say_which_they_did_not_start() {
    let server = Server::start_with(ServerOptions {
        env: vec![(
            "RUNCELL_EVENT_TRIGGERS_PER_MINUTE".to_owned(),
            "3".to_owned(),
        )],
        ..ServerOptions::default()
    });
    server.upload(&guests::guest("hello"));
    let first = id(&server.create_job(
        &json!({"name": "limited", "module": "hello", "job": "noop", "onEvent": "burst.*"}),
    ));
    let mut started = 0;
    let mut refused = Vec::new();
    for n in 0..5 {
        let reply = server.post_json("/api/v1/events", &json!({"topic": format!("burst.{n}")}));
        assert_eq!(reply.status, 202, "{}", reply.body);
        started += reply.body["triggeredExecutions"].as_array().unwrap().len();
        refused.extend(reply.body["refused"].as_array().unwrap().clone());
    }
    assert_eq!(started, 3);
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert_eq!(refused[0]["jobId"], first.as_str());
    assert_eq!(refused[0]["job"], "limited");
    assert!(
        refused[0]["reason"]
            .as_str()
            .unwrap()
            .contains("more than 3 times"),
        "{refused:?}"
    );
    // Another job has its own allowance.
    let other = id(&server.create_job(
        &json!({"name": "other", "module": "hello", "job": "noop", "onEvent": "burst.*"}),
    ));
    let reply = server.post_json("/api/v1/events", &json!({"topic": "burst.late"}));
    assert_eq!(
        reply.body["triggeredExecutions"].as_array().unwrap().len(),
        1
    );
    assert_eq!(reply.body["refused"][0]["jobId"], first.as_str());
    let listed = server.get("/api/v1/events?topic=burst.late").body;
    assert_eq!(listed["items"][0]["refused"][0]["jobId"], first.as_str());
    assert_eq!(server.executions(&format!("jobId={other}")).len(), 1);
    assert_eq!(settled_runs(&server, &first, 3).len(), 3);
}

// ---- settings ------------------------------------------------------------------------

#[test]
fn a_job_is_refused_without_a_required_setting_or_with_a_secret_as_plain_text() {
    let server = Server::start();
    server.upload(&guests::guest("hostile"));
    let module = server.get("/api/v1/modules/hostile").body;
    let declared = module["settings"].as_array().unwrap();
    assert_eq!(declared.len(), 2, "{module}");
    assert_eq!(
        declared[0],
        json!({"name": "token", "description": "A secret `needs-token` reads.",
               "required": true, "secret": true, "jobs": ["needs-token"]})
    );

    let base = json!({"name": "tokened", "module": "hostile", "job": "needs-token"});
    let with_config = |config: Value| {
        let mut body = base.clone();
        body["config"] = config;
        body
    };
    for (body, says) in [
        (base.clone(), "requires setting `token`"),
        (
            with_config(json!({"token": "in-the-clear"})),
            "not as plain text",
        ),
    ] {
        let reply = server.post_json("/api/v1/jobs", &body);
        assert_eq!(reply.status, 422, "{body}: {}", reply.body);
        assert_eq!(reply.body["error"]["details"]["field"], "config.token");
        let message = reply.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{message}");
        assert!(!message.contains("in-the-clear"), "{message}");
    }
    assert!(
        server.get("/api/v1/jobs").body["items"]
            .as_array()
            .unwrap()
            .is_empty(),
        "a refused job is not stored"
    );

    let job = server.create_job(&with_config(json!({"token": {"secret": "s3cret-value"}})));
    assert!(warnings(&job).is_empty(), "{job}");
    let job_id = id(&job);
    let run = server.wait_final(&server.execute(&job_id, None), RUN);
    assert_eq!(run["result"], true, "{run}");

    // Changing the settings is checked as creating them is.
    let path = format!("/api/v1/jobs/{job_id}");
    let emptied = server.patch_json(&path, &json!({"config": {}}));
    assert_eq!(emptied.status, 422, "{}", emptied.body);
    assert_eq!(emptied.body["error"]["details"]["field"], "config.token");
    let kept = server.patch_json(&path, &json!({"config": {"token": {"secret": "***"}}}));
    assert_eq!(kept.status, 200, "{}", kept.body);
    // Another job does not need `token`; a setting nobody declared is warned of.
    let echo = server.create_job(&json!({
        "name": "greeted", "module": "hostile", "job": "echo",
        "config": {"greeting": "hi", "greetnig": "typo"}
    }));
    let warned = warnings(&echo);
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(warned[0].contains("`greetnig`"), "{warned:?}");
}

#[test]
fn a_module_built_against_contract_0_1_0_installs_and_runs_with_any_settings() {
    let server = Server::start();
    let module = server.upload(&guests::guest("contract-0-1-0"));
    assert_eq!(module["settings"], json!([]), "{module}");
    let job = server.create_job(&json!({
        "name": "old", "module": "contract-0-1-0", "job": "greet", "config": {"name": "Ada"}
    }));
    assert!(warnings(&job).is_empty(), "{job}");
    let run = server.wait_final(&server.execute(&id(&job), None), RUN);
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(
        run["result"],
        json!({"greeting": "Hello, Ada!", "trigger": "manual"})
    );
}
