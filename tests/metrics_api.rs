//! Module metrics end to end: a real guest records samples through the `metrics`
//! import of a real `runcell serve`, and a client lists them and reads them back as
//! series over HTTP, with every aggregate and label filters; bad queries are refused
//! naming the parameter to fix; a module past its bound of series has new series
//! refused, counted and logged, while its known series go on.

#[path = "support/guests.rs"]
mod guests;
#[allow(
    dead_code,
    reason = "shared with other test binaries, each of which uses a different part of it"
)]
#[path = "support/server.rs"]
mod server;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use server::{Reply, Server};

const RUN_TIMEOUT: Duration = Duration::from_secs(60);
const VIEWER_PASSWORD: &str = "viewer password 12";
/// The bound of series per module the server keeps (`MAX_SERIES_PER_MODULE`).
const MAX_SERIES: usize = 1_000;

fn now_ms() -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    i64::try_from(now.as_millis()).unwrap()
}

/// A server with `hostile` installed and a job on its `observe`; returns the job's id.
fn server_with_observer() -> (Server, String) {
    let server = Server::start();
    server.upload(&guests::guest("hostile"));
    let job = server.create_job(&json!({"name": "observe", "module": "hostile", "job": "observe"}));
    let id = job["id"].as_str().unwrap().to_owned();
    (server, id)
}

/// Runs `observe` with `samples`; returns what it reports (`recorded`, `refused`,
/// `firstRefusal`).
fn observe(server: &Server, job: &str, samples: &Value) -> Value {
    let id = server.execute(job, Some(samples.clone()));
    let execution = server.wait_final(&id, RUN_TIMEOUT);
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    execution["result"].clone()
}

fn get_ok(server: &Server, path: &str) -> Value {
    let reply = server.get(path);
    assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    reply.body
}

/// The one point of each series of `path`'s answer, as (labels, value).
fn single_points(server: &Server, path: &str) -> Vec<(Value, f64)> {
    let answer = get_ok(server, path);
    answer["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|series| {
            let points = series["points"].as_array().unwrap();
            assert_eq!(points.len(), 1, "{path}: {answer}");
            (
                series["labels"].clone(),
                points[0]["value"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn assert_refused(reply: &Reply, field: &str, what: &str) {
    assert_eq!(reply.status, 400, "{what}: {}", reply.body);
    assert_eq!(reply.code(), "invalid_field", "{what}: {}", reply.body);
    assert_eq!(reply.field(), field, "{what}: {}", reply.body);
    assert!(
        reply.message().starts_with(&format!("{field}: ")),
        "{what}: {}",
        reply.body
    );
}

#[test]
fn a_module_s_metrics_are_listed_and_read_back_with_every_aggregate() {
    let (server, job) = server_with_observer();
    let eu_prod = json!({"region": "eu", "env": "prod"});
    let before = now_ms();
    let result = observe(
        &server,
        &job,
        &json!([
            {"name": "latency", "value": 1.0, "labels": eu_prod},
            {"name": "latency", "value": 2.0, "labels": eu_prod},
            {"name": "latency", "value": 6.0, "labels": eu_prod},
            {"name": "latency", "value": 10.0, "labels": {"region": "us", "env": "prod"}},
            {"name": "latency", "value": 5.0, "labels": {"region": "eu", "env": "dev", "url": "https://a/b?c"}},
            {"name": "errors", "value": 1.0},
        ]),
    );
    assert_eq!(result["recorded"], 6, "{result}");
    let after = now_ms();

    // The listing: every module in brief, or one with its metrics and series.
    let all = get_ok(&server, "/api/v1/metrics");
    let items = all["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{all}");
    assert_eq!(items[0]["module"], "hostile");
    assert_eq!(items[0]["seriesCount"], 4);
    assert!(items[0].get("metrics").is_none(), "{all}");
    let listing = get_ok(&server, "/api/v1/metrics?module=hostile");
    let module = &listing["items"][0];
    assert_eq!(module["maxSeries"], MAX_SERIES);
    assert_eq!(module["refusedSamples"], 0);
    assert_eq!(module["lastRefusedAt"], Value::Null);
    let metrics = module["metrics"].as_array().unwrap();
    let names: Vec<&str> = metrics
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["errors", "latency"]);
    assert_eq!(metrics[0]["series"][0]["labels"], json!({}));
    assert_eq!(metrics[0]["series"][0]["lastValue"], 1.0);
    let latency = metrics[1]["series"].as_array().unwrap();
    let last: Vec<(Value, f64)> = latency
        .iter()
        .map(|s| (s["labels"].clone(), s["lastValue"].as_f64().unwrap()))
        .collect();
    assert_eq!(
        last,
        [
            (
                json!({"env": "dev", "region": "eu", "url": "https://a/b?c"}),
                5.0
            ),
            (eu_prod.clone(), 6.0),
            (json!({"env": "prod", "region": "us"}), 10.0),
        ]
    );
    let last_at = latency[1]["lastAt"].as_i64().unwrap();
    assert!((before..=after).contains(&last_at), "{last_at}");

    // Every aggregate of one series, one point a day.
    let window = format!("module=hostile&from={before}&to={}&step=1d", after + 1);
    let one = format!("/api/v1/metrics/latency/series?{window}&label=region:eu&label=env:prod");
    for (agg, expected) in [
        ("avg", 3.0),
        ("min", 1.0),
        ("max", 6.0),
        ("sum", 9.0),
        ("count", 3.0),
        ("last", 6.0),
    ] {
        let points = single_points(&server, &format!("{one}&agg={agg}"));
        assert_eq!(points, [(eu_prod.clone(), expected)], "agg={agg}");
    }
    let answer = get_ok(&server, &one);
    assert_eq!(answer["agg"], "avg", "the default");
    assert_eq!(answer["step"], 86_400_000);
    let t = answer["series"][0]["points"][0]["t"].as_i64().unwrap();
    assert_eq!(t % 86_400_000, 0, "points start at whole steps");

    // Label filters: every label asked for, whatever others a series has.
    let path = |filter: &str| format!("/api/v1/metrics/latency/series?{window}&agg=max{filter}");
    let regions = |filter: &str| -> Vec<f64> {
        single_points(&server, &path(filter))
            .into_iter()
            .map(|(_, value)| value)
            .collect()
    };
    assert_eq!(regions(""), [5.0, 6.0, 10.0]);
    assert_eq!(regions("&label=region:eu"), [5.0, 6.0]);
    assert_eq!(regions("&label=env:prod"), [6.0, 10.0]);
    assert_eq!(regions("&label=url:https://a/b%3Fc"), [5.0]);
    assert!(regions("&label=region:ap").is_empty());
    let errors = single_points(
        &server,
        &format!("/api/v1/metrics/errors/series?{window}&agg=count"),
    );
    assert_eq!(errors, [(json!({}), 1.0)]);

    // A viewer may read them.
    let created = server.post_json(
        "/api/v1/users",
        &json!({"username": "watcher", "password": VIEWER_PASSWORD, "role": "viewer"}),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let viewer = server.login("watcher", VIEWER_PASSWORD);
    for path in ["/api/v1/metrics?module=hostile".to_owned(), one] {
        let reply = server.request_as(Some(&viewer), "GET", &path, None);
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    }
}

#[test]
fn bad_queries_are_refused_naming_the_parameter_to_fix() {
    let (server, job) = server_with_observer();
    observe(&server, &job, &json!([{"name": "latency", "value": 1.0}]));
    let series = "/api/v1/metrics/latency/series?module=hostile";
    let year_ago = now_ms() - 365 * 86_400_000;
    for (query, field, what) in [
        ("&from=2000&to=1000", "from", "a window backwards"),
        ("&from=yesterday", "from", "a time that is not one"),
        ("&to=soon", "to", "a time that is not one"),
        (
            &format!("&from={year_ago}&step=1m") as &str,
            "step",
            "millions of points",
        ),
        ("&step=1s", "step", "a step finer than a minute"),
        (
            &format!("&from={year_ago}&step=90m"),
            "step",
            "a year of minute rollups",
        ),
        ("&label=region", "label", "a filter without a colon"),
        ("&label=:eu", "label", "a filter without a key"),
        (
            "&label=bad%20key:x",
            "label",
            "a key that is not a label key",
        ),
        ("&label=a:1&label=a:2", "label", "one key twice"),
        ("&agg=median", "agg", "an aggregate not offered"),
    ] {
        let reply = server.get(&format!("{series}{query}"));
        assert_refused(&reply, field, what);
    }
    let agg = server.get(&format!("{series}&agg=p99"));
    assert_eq!(
        agg.body["error"]["details"]["allowed"],
        json!(["avg", "min", "max", "sum", "count", "last"])
    );
    for path in [
        "/api/v1/metrics/latency/series",
        "/api/v1/metrics/latency/series?module=nope",
        "/api/v1/metrics?module=nope",
    ] {
        assert_refused(&server.get(path), "module", path);
    }
    let unknown = server.get("/api/v1/metrics/nope/series?module=hostile");
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    assert_eq!(unknown.code(), "not_found");
    assert_eq!(unknown.body["error"]["details"]["resource"], "metric");

    // An installed module that has recorded nothing is listed empty.
    server.upload(&guests::guest("data-sync"));
    let listing = get_ok(&server, "/api/v1/metrics?module=data-sync");
    assert_eq!(listing["items"][0]["seriesCount"], 0);
    assert_eq!(listing["items"][0]["metrics"], json!([]));
}

#[test]
fn a_module_past_its_bound_has_new_series_refused_counted_and_logged_once() {
    let (server, job) = server_with_observer();
    let series = |range: std::ops::Range<usize>| -> Vec<Value> {
        range
            .map(|n| json!({"name": "requests", "value": 1.0, "labels": {"n": n.to_string()}}))
            .collect()
    };
    let result = observe(&server, &job, &Value::Array(series(0..MAX_SERIES)));
    assert_eq!(result["recorded"], MAX_SERIES, "{result}");
    assert_eq!(result["refused"], 0, "{result}");

    // Past the bound: two new series refused, a known one recorded.
    let mut samples = series(MAX_SERIES..MAX_SERIES + 2);
    samples.push(json!({"name": "requests", "value": 3.0, "labels": {"n": "5"}}));
    samples.push(json!({"name": "other", "value": 1.0}));
    let result = observe(&server, &job, &Value::Array(samples));
    assert_eq!(result["recorded"], 1, "{result}");
    assert_eq!(result["refused"], 3, "{result}");
    let refusal = result["firstRefusal"].as_str().unwrap();
    assert!(
        refusal.starts_with("too many metric samples:")
            && refusal.contains("reached its bound of 1000 metric series"),
        "the guest is told it is rate-limited, and why: {refusal}"
    );

    let listing = get_ok(&server, "/api/v1/metrics?module=hostile");
    let module = &listing["items"][0];
    assert_eq!(module["seriesCount"], MAX_SERIES);
    assert_eq!(module["refusedSamples"], 3);
    assert!(module["lastRefusedAt"].as_i64().is_some(), "{module}");
    // Summed over every point: the two runs may fall on either side of midnight.
    let day = 86_400_000;
    let known = get_ok(
        &server,
        &format!(
            "/api/v1/metrics/requests/series?module=hostile&label=n:5&agg=sum&step=1d\
             &from={}&to={}",
            now_ms() - day,
            now_ms() + day
        ),
    );
    assert_eq!(known["series"].as_array().unwrap().len(), 1, "{known}");
    let sum: f64 = known["series"][0]["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["value"].as_f64().unwrap())
        .sum();
    assert_eq!(sum, 4.0, "{known}");
    let refused = server.get("/api/v1/metrics/requests/series?module=hostile&label=n:1000");
    assert_eq!(refused.status, 200);
    assert_eq!(refused.body["series"], json!([]));

    // Logged once, not once per refused sample.
    let output = server.output();
    let warnings = output.matches("reached its bound of metric series").count();
    assert_eq!(warnings, 1, "{output}");
}
