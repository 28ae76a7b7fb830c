//! Consumption budgets end to end: an enforced outbound budget denies the request past
//! it inside the guest, on one node and across two nodes sharing PostgreSQL and Redis; a
//! run budget fails the run past it without a retry; and who may set budgets, and what
//! is refused as bad input.
//!
//! Budgets here count per UTC day: a test that straddles midnight would see its counts
//! start afresh (the windows themselves are tested with explicit times in the store
//! suite).

#[allow(
    dead_code,
    reason = "shared with other test binaries, each of which uses a different part of it"
)]
#[path = "support/distributed.rs"]
mod distributed;
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
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use serde_json::{Value, json};

use distributed::{TestDatabase, TestPrefix, redis_url};
use outbound::HttpClientSetup;
use server::{Server, ServerOptions};

const RUN: Duration = Duration::from_secs(30);

/// Longer than the module catalog's time to live: by then every node runs a module with
/// the budgets it was last given.
const CATALOG_REFRESH: Duration = Duration::from_millis(1_500);

fn id(value: &Value) -> String {
    value["id"].as_str().expect("an id").to_owned()
}

fn budgets_path(module: &str) -> String {
    format!("/api/v1/modules/{module}/budgets")
}

fn put_budgets_as(
    server: &Server,
    token: Option<&str>,
    module: &str,
    body: &Value,
) -> server::Reply {
    let bytes = body.to_string().into_bytes();
    server.request_as(
        token,
        "PUT",
        &budgets_path(module),
        Some(("application/json", &bytes)),
    )
}

fn set_budgets(server: &Server, module: &str, body: &Value) -> Value {
    let reply = put_budgets_as(server, Some(server.token()), module, body);
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}

fn approve(server: &Server, local: &str) {
    let approved = server.post_json(
        "/api/v1/modules/http-client/capabilities/approve",
        &json!({"outboundHosts": [local]}),
    );
    assert_eq!(approved.status, 200, "{}", approved.body);
}

fn fetcher(server: &Server, max_attempts: u32) -> String {
    id(&server.create_job(&json!({
        "name": "fetcher", "module": "http-client", "job": "fetch", "maxAttempts": max_attempts,
    })))
}

/// The outbound totals of `module` over the last day: requests, denied, 2xx.
fn outbound_totals(server: &Server, module: &str) -> HashMap<&'static str, i64> {
    let reply = server.get(&format!("/api/v1/usage/outbound?module={module}&step=1h"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let mut totals = HashMap::new();
    for line in reply.body["series"].as_array().unwrap() {
        for point in line["points"].as_array().unwrap() {
            *totals.entry("requests").or_default() += point["requests"].as_i64().unwrap();
            *totals.entry("denied").or_default() += point["denied"].as_i64().unwrap();
            *totals.entry("2xx").or_default() += point["responses"]["2xx"].as_i64().unwrap();
        }
    }
    totals
}

/// The message of every log line of execution `id` that says a budget denied a request.
fn budget_denials(server: &Server, id: &str) -> Vec<String> {
    server
        .logs(id)
        .iter()
        .filter_map(|line| line["message"].as_str())
        .filter(|message| message.contains("budget exhausted until"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn an_enforced_outbound_budget_denies_the_request_past_it_inside_the_guest() {
    let HttpClientSetup {
        server,
        local,
        served,
        ..
    } = outbound::http_client_beside_a_hello_server();
    approve(&server, &local);
    let set = set_budgets(
        &server,
        "http-client",
        &json!([{"metric": "outboundRequests", "host": local, "per": "day", "limit": 3,
                 "action": "enforce"}]),
    );
    assert_eq!(set["items"][0]["window"]["used"], 0, "{set}");
    let job = fetcher(&server, 1);
    let url = format!("http://{local}/");
    let mut runs = Vec::new();
    for _ in 0..4 {
        let run = server.execute(&job, Some(json!({"url": url})));
        runs.push(server.wait_final(&run, RUN));
    }
    for run in &runs[..3] {
        assert_eq!(run["status"], "COMPLETED", "{run}");
    }
    let refused = &runs[3];
    assert_eq!(refused["status"], "FAILED", "{refused}");
    let error = refused["error"].as_str().unwrap();
    assert!(error.contains("HttpRequestDenied"), "{error}");
    assert_eq!(served.load(Ordering::SeqCst), 3, "the hello server saw 3");
    let denials = budget_denials(&server, &id(refused));
    assert_eq!(
        denials,
        ["http GET 127.0.0.1 -> denied: budget exhausted until 00:00 UTC"]
    );

    let totals = outbound_totals(&server, "http-client");
    assert_eq!(totals["requests"], 4, "{totals:?}");
    assert_eq!(totals["2xx"], 3, "{totals:?}");
    assert_eq!(totals["denied"], 1, "{totals:?}");

    let listed = server.get(&budgets_path("http-client"));
    assert_eq!(listed.status, 200, "{}", listed.body);
    let window = &listed.body["items"][0]["window"];
    assert_eq!(window["used"], 3, "{}", listed.body);
    assert_eq!(window["limit"], 3);
    assert_eq!(window["exhaustedUntil"], window["end"]);
    assert_eq!(
        window["end"].as_i64().unwrap() - window["start"].as_i64().unwrap(),
        86_400_000
    );

    // Lifting the budget lets requests through again at once on this node.
    assert_eq!(
        set_budgets(&server, "http-client", &json!([]))["items"],
        json!([])
    );
    let run = server.execute(&job, Some(json!({"url": url})));
    assert_eq!(server.wait_final(&run, RUN)["status"], "COMPLETED");
    assert_eq!(served.load(Ordering::SeqCst), 4);
}

#[test]
fn two_nodes_together_never_pass_an_enforced_outbound_budget() {
    let (port, served) = peers::hello_server();
    let local = format!("127.0.0.1:{port}");
    let prefix = TestPrefix::new();
    let database = TestDatabase::create();
    let node = |name: &str| {
        Server::start_with(ServerOptions {
            env: [
                ("DATABASE_URL", database.url.as_str()),
                ("REDIS_URL", redis_url().as_str()),
                ("RUNCELL_REDIS_PREFIX", prefix.0.as_str()),
                ("RUNCELL_NODE_ID", name),
                ("RUNCELL_OUTBOUND_ALLOW", "127.0.0.1"),
            ]
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect(),
            ..ServerOptions::default()
        })
    };
    let nodes = [node("node-a"), node("node-b")];
    let client = std::fs::read(guests::guest("http-client")).unwrap();
    let installed = nodes[0].post_bytes("/api/v1/modules", "application/wasm", &client);
    assert_eq!(installed.status, 201, "{}", installed.body);
    approve(&nodes[0], &local);
    set_budgets(
        &nodes[0],
        "http-client",
        &json!([{"metric": "outboundRequests", "per": "day", "limit": 5, "action": "enforce"}]),
    );
    let job = fetcher(&nodes[0], 1);
    thread::sleep(CATALOG_REFRESH);

    // Each node starts its runs at once (manual runs start where they are asked for),
    // both nodes at the same time: 2 nodes x 3 runs x 2 requests at once = 12 asked.
    let input = json!({"url": format!("http://{local}/"), "parallel": 2});
    let runs: Vec<(usize, String)> = thread::scope(|scope| {
        let started: Vec<_> = (0..2)
            .map(|n| {
                let (node, job, input) = (&nodes[n], &job, &input);
                scope.spawn(move || {
                    (0..3)
                        .map(|_| (n, node.execute(job, Some(input.clone()))))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        started
            .into_iter()
            .flat_map(|handle| handle.join().unwrap())
            .collect()
    });
    let mut denied_runs = 0;
    for (n, run) in &runs {
        let finished = nodes[*n].wait_final(run, RUN);
        if finished["status"] != "COMPLETED" {
            denied_runs += 1;
            assert!(
                !budget_denials(&nodes[*n], run).is_empty(),
                "{finished} failed for another reason"
            );
        }
    }
    assert_eq!(
        served.load(Ordering::SeqCst),
        5,
        "the budget of 5 held across nodes"
    );
    assert!(
        denied_runs >= 4,
        "7 requests denied over 6 runs: {denied_runs} failed"
    );
    let totals = outbound_totals(&nodes[1], "http-client");
    assert_eq!(totals["requests"], 12, "{totals:?}");
    assert_eq!(totals["denied"], 7, "{totals:?}");
    let listed = nodes[1].get(&budgets_path("http-client"));
    assert_eq!(
        listed.body["items"][0]["window"]["used"], 5,
        "{}",
        listed.body
    );
}

#[test]
fn a_run_past_its_modules_run_budget_fails_and_is_not_retried() {
    let HttpClientSetup { server, local, .. } = outbound::http_client_beside_a_hello_server();
    approve(&server, &local);
    set_budgets(
        &server,
        "http-client",
        &json!([{"metric": "runs", "per": "day", "limit": 2, "action": "enforce"},
                {"metric": "fuel", "per": "day", "limit": 1_000_000_000_000u64, "action": "alert"}]),
    );
    // Retries allowed: a refusal must still not create one.
    let job = fetcher(&server, 3);
    let input = json!({"url": format!("http://{local}/")});
    let mut runs = Vec::new();
    for _ in 0..3 {
        let run = server.execute(&job, Some(input.clone()));
        runs.push(server.wait_final(&run, RUN));
    }
    assert_eq!(runs[0]["status"], "COMPLETED", "{}", runs[0]);
    assert_eq!(runs[1]["status"], "COMPLETED", "{}", runs[1]);
    let refused = &runs[2];
    assert_eq!(refused["status"], "FAILED", "{refused}");
    assert_eq!(refused["errorKind"], "BUDGET_EXHAUSTED", "{refused}");
    assert_eq!(
        refused["error"],
        "run budget of module `http-client` exhausted until 00:00 UTC"
    );
    thread::sleep(Duration::from_secs(1));
    let executions = server.executions(&format!("jobId={job}"));
    assert_eq!(executions.len(), 3, "no retry was created: {executions:?}");

    let listed = server.get(&budgets_path("http-client"));
    let items = listed.body["items"].as_array().unwrap();
    assert_eq!(items[0]["window"]["used"], 2, "{}", listed.body);
    assert!(items[0]["window"]["exhaustedUntil"].is_i64());
    // The two runs that ran counted their fuel in the watched budget.
    let fuel = items[1]["window"]["used"].as_u64().unwrap();
    let consumed: u64 = runs[..2]
        .iter()
        .map(|run| run["fuelConsumed"].as_u64().unwrap())
        .sum();
    assert_eq!(fuel, consumed, "{}", listed.body);
    assert!(items[1]["window"]["exhaustedUntil"].is_null());

    let module = server.get("/api/v1/modules/http-client");
    assert_eq!(
        module.body["budgets"][0]["metric"], "runs",
        "{}",
        module.body
    );
    assert_eq!(module.body["budgets"][0]["limit"], 2);
}

#[test]
fn only_an_admin_sets_budgets_and_bad_ones_are_refused_naming_the_field() {
    let HttpClientSetup { server, .. } = outbound::http_client_beside_a_hello_server();
    let user = |name: &str, role: &str| {
        let password = format!("{name} password 123");
        let created = server.post_json(
            "/api/v1/users",
            &json!({"username": name, "password": password, "role": role}),
        );
        assert_eq!(created.status, 201, "{}", created.body);
        server.login(name, &password)
    };
    let viewer = user("watcher", "viewer");
    let operator = user("ops", "operator");
    let budget = json!([{"metric": "runs", "per": "hour", "limit": 5, "action": "alert"}]);
    for token in [&viewer, &operator] {
        let refused = put_budgets_as(&server, Some(token), "http-client", &budget);
        assert_eq!(refused.status, 403, "{}", refused.body);
    }
    let set = put_budgets_as(&server, Some(server.token()), "http-client", &budget);
    assert_eq!(set.status, 200, "{}", set.body);
    let read = server.request_as(Some(&viewer), "GET", &budgets_path("http-client"), None);
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(read.body["items"][0]["metric"], "runs");
    assert_eq!(read.body["items"][0]["action"], "alert");
    assert_eq!(read.body["items"][0]["window"]["used"], 0);
    let audit = server.get("/api/v1/audit").body.to_string();
    assert!(audit.contains("module.budgets.set"), "{audit}");

    for (body, status, field) in [
        (
            json!([{"metric": "bananas", "per": "hour", "limit": 1, "action": "enforce"}]),
            422,
            "[0].metric",
        ),
        (
            json!([{"metric": "runs", "host": "api.example.com", "per": "hour", "limit": 1,
                    "action": "enforce"}]),
            422,
            "[0].host",
        ),
        (
            json!([{"metric": "runs", "per": "hour", "limit": 1, "action": "enforce"},
                   {"metric": "fuel", "per": "day", "limit": 0, "action": "enforce"}]),
            422,
            "[1].limit",
        ),
        (
            json!([{"metric": "runs", "per": "week", "limit": 1, "action": "enforce"}]),
            422,
            "[0].per",
        ),
        (
            json!([{"metric": "outboundRequests", "host": "not a host", "per": "hour",
                    "limit": 1, "action": "enforce"}]),
            422,
            "[0].host",
        ),
        // Shape and type errors are the JSON extractor's, as on every route: 400.
        (
            json!([{"metric": "runs", "per": "hour", "limit": 1, "action": "enforce",
                    "colour": "red"}]),
            400,
            "[0].colour",
        ),
        (
            json!([{"metric": "runs", "per": "hour", "limit": -1, "action": "enforce"}]),
            400,
            "[0].limit",
        ),
    ] {
        let reply = put_budgets_as(&server, Some(server.token()), "http-client", &body);
        assert_eq!(reply.status, status, "{body}: {}", reply.body);
        assert_eq!(reply.field(), field, "{body}: {}", reply.body);
    }
    // Nothing refused changed the budgets.
    let after = server.get(&budgets_path("http-client"));
    assert_eq!(
        after.body["items"].as_array().unwrap().len(),
        1,
        "{}",
        after.body
    );
    let missing = server.get(&budgets_path("no-such-module"));
    assert_eq!(missing.status, 404, "{}", missing.body);
}

/// The names of the rules firing now.
fn firing(server: &Server) -> Vec<String> {
    let reply = server.get("/api/v1/alerts");
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|alert| alert["state"] == "firing")
        .map(|alert| alert["rule"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_budget_fires_its_rules_at_80_and_100_percent_and_an_alert_budget_stops_nothing() {
    let setup = outbound::http_client_beside_a_hello_server_with(&[("RUNCELL_ALERT_EVERY", "1s")]);
    let HttpClientSetup { server, local, .. } = setup;
    approve(&server, &local);
    set_budgets(
        &server,
        "http-client",
        &json!([{"metric": "runs", "per": "day", "limit": 5, "action": "alert"}]),
    );
    let warning = "budget:http-client:runs:day:80%";
    let critical = "budget:http-client:runs:day:100%";
    let rules = server.get("/api/v1/alerts/rules");
    let names: Vec<&str> = rules.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rule| rule["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{}", rules.body);
    assert!(
        names.contains(&warning) && names.contains(&critical),
        "{names:?}"
    );

    let job = fetcher(&server, 1);
    let input = json!({"url": format!("http://{local}/")});
    let run = |count: usize| {
        for _ in 0..count {
            let execution = server.execute(&job, Some(input.clone()));
            assert_eq!(server.wait_final(&execution, RUN)["status"], "COMPLETED");
        }
    };
    run(3);
    thread::sleep(Duration::from_secs(2));
    assert_eq!(firing(&server), Vec::<String>::new(), "3 of 5 runs is 60 %");
    run(1);
    assert!(
        server.wait_until(Duration::from_secs(10), || firing(&server) == [warning]),
        "4 of 5 runs fires the warning: {:?}",
        firing(&server)
    );
    // Past the limit: an `alert` budget stops nothing, and the critical rule fires.
    run(2);
    assert!(
        server.wait_until(Duration::from_secs(10), || firing(&server).len() == 2),
        "6 of 5 runs fires both: {:?}",
        firing(&server)
    );

    // Budgets replaced: the rules of the budget that went go with it.
    set_budgets(
        &server,
        "http-client",
        &json!([{"metric": "fuel", "per": "hour", "limit": 1_000_000_000_000u64, "action": "alert"}]),
    );
    let rules = server.get("/api/v1/alerts/rules");
    let names: Vec<&str> = rules.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rule| rule["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names
            .iter()
            .filter(|n| n.starts_with("budget:http-client:fuel:hour:"))
            .count(),
        2,
        "{names:?}"
    );
    assert!(!names.contains(&warning), "{names:?}");

    // The module deleted (with its job): its budgets' rules go too.
    let deleted = server.delete("/api/v1/modules/http-client?force=true");
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    let rules = server.get("/api/v1/alerts/rules");
    assert_eq!(rules.body["items"], json!([]), "{}", rules.body);
}
