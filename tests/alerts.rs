//! Alerts, end to end: a real `runcell serve` evaluates rules every second over an
//! endpoint monitor the test turns failing and healthy, a cron job it disables, and
//! notifies a webhook receiver on loopback (which verifies signatures and counts
//! messages by `Idempotency-Key`), an event channel whose event starts a subscribed job,
//! and nothing while a silence holds; bad definitions are refused naming the field; and
//! on two nodes, killing the one holding the `alerts` lease while a notification is
//! due still delivers it exactly once by key.

#[allow(
    dead_code,
    reason = "shared with other test binaries, each of which uses a different part of it"
)]
#[path = "support/server.rs"]
mod server;

#[path = "support/distributed.rs"]
mod distributed;

#[path = "support/guests.rs"]
mod guests;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use serde_json::{Value, json};

use distributed::{TestDatabase, TestPrefix, redis_url};
use server::{Server, ServerOptions};

/// The webhook channel's signing key: it must reach no response, log or audit entry.
const SIGNING_KEY: &str = "whsec-7f3a91c2-do-not-leak";
/// How long a test waits for what several evaluation rounds should bring about.
const WAIT: Duration = Duration::from_secs(30);

/// One request a loopback server received.
#[derive(Debug, Clone)]
struct Seen {
    headers: BTreeMap<String, String>,
    body: String,
    /// Whether it was answered 2xx.
    accepted: bool,
}

/// A loopback HTTP server that records every request and answers 200, or 500 while
/// `failing` is set.
struct Receiver {
    port: u16,
    failing: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Receiver {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let failing = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (shared_failing, shared_seen) = (failing.clone(), seen.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (failing, seen) = (shared_failing.clone(), shared_seen.clone());
                thread::spawn(move || answer(stream, &failing, &seen));
            }
        });
        Self {
            port,
            failing,
            seen,
        }
    }

    fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The accepted messages of `kind`, one per `Idempotency-Key` (what a receiver that
    /// deduplicates acts on), with how many accepted requests carried each key.
    fn accepted(&self, kind: &str) -> BTreeMap<String, (Value, usize)> {
        let mut by_key: BTreeMap<String, (Value, usize)> = BTreeMap::new();
        for seen in self.seen().into_iter().filter(|s| s.accepted) {
            let body: Value = serde_json::from_str(&seen.body).unwrap();
            if body["kind"] != kind {
                continue;
            }
            let key = seen.headers["idempotency-key"].clone();
            by_key.entry(key).or_insert((body, 0)).1 += 1;
        }
        by_key
    }
}

fn answer(mut stream: std::net::TcpStream, failing: &AtomicBool, seen: &Mutex<Vec<Seen>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut headers = BTreeMap::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.trim_end().split_once(':') {
            headers.insert(name.to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let accepted = !failing.load(Ordering::SeqCst);
    seen.lock().unwrap().push(Seen {
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        accepted,
    });
    let status = if accepted {
        "200 OK"
    } else {
        "500 Internal Server Error"
    };
    let _ = stream.write_all(
        format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
    );
}

/// Whether `seen` carries a valid signature: `sha256=` and the hex HMAC-SHA256 under
/// the channel's key of `<X-Runcell-Timestamp>.<body>`.
fn signed_validly(seen: &Seen) -> bool {
    let Some(timestamp) = seen.headers.get("x-runcell-timestamp") else {
        return false;
    };
    let Some(signature) = seen.headers.get("x-runcell-signature") else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SIGNING_KEY.as_bytes());
    let Some(hex_tag) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(tag) = hex::decode(hex_tag) else {
        return false;
    };
    ring::hmac::verify(&key, format!("{timestamp}.{}", seen.body).as_bytes(), &tag).is_ok()
}

/// The settings every server here runs with: rules evaluated every second, endpoints
/// checked as often, loopback reachable.
fn settings() -> Vec<(String, String)> {
    [
        ("RUNCELL_OUTBOUND_ALLOW", "127.0.0.1"),
        ("RUNCELL_ENDPOINT_MIN_INTERVAL", "1s"),
        ("RUNCELL_ALERT_EVERY", "1s"),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value.to_owned()))
    .collect()
}

fn local_server() -> Server {
    Server::start_with(ServerOptions {
        env: settings(),
        ..ServerOptions::default()
    })
}

fn created(server: &Server, path: &str, body: &Value) -> Value {
    let reply = server.post_json(path, body);
    assert_eq!(reply.status, 201, "POST {path} {body}: {}", reply.body);
    reply.body
}

fn id(value: &Value) -> String {
    value["id"].as_str().expect("an id").to_owned()
}

fn history(server: &Server, rule_id: &str) -> Vec<Value> {
    let reply = server.get(&format!(
        "/api/v1/alerts/history?ruleId={rule_id}&limit=500"
    ));
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["items"].as_array().unwrap().clone()
}

fn changes(server: &Server, rule_id: &str) -> Vec<String> {
    let mut changes: Vec<String> = history(server, rule_id)
        .iter()
        .map(|entry| entry["change"].as_str().unwrap().to_owned())
        .collect();
    changes.reverse();
    changes
}

/// An endpoint monitor of `peer`'s URL checked every second, and a rule that fires
/// when its last check failed.
fn endpoint_and_rule(server: &Server, url: &str, channels: &[&str]) -> (String, String) {
    let endpoint = created(
        server,
        "/api/v1/endpoints",
        &json!({"name": "orders-api", "url": url, "intervalSeconds": 1, "timeoutMs": 1000}),
    );
    let rule = created(
        server,
        "/api/v1/alerts/rules",
        &json!({
            "name": "orders-api-down",
            "query": {"source": "endpoint", "endpoint": "orders-api", "measure": "down"},
            "condition": {"op": ">=", "value": 1},
            "severity": "critical",
            "labels": {"team": "orders"},
            "channels": channels,
            "description": "The orders API fails its checks",
        }),
    );
    assert_eq!(rule["state"], "ok");
    assert_eq!(rule["for"], "0s");
    (id(&endpoint), id(&rule))
}

#[test]
fn an_endpoint_going_down_fires_once_resolves_once_signed_and_a_silence_suppresses() {
    let server = local_server();
    let peer = Receiver::start();
    let hook = Receiver::start();
    server.upload(&guests::guest("data-sync"));
    let subscriber = server.create_job(
        &json!({"name": "on-alert", "module": "data-sync", "job": "health-check", "onEvent": "alert.*"}),
    );
    let webhook = created(
        &server,
        "/api/v1/alerts/channels",
        &json!({"name": "ops-hook", "type": "webhook", "url": hook.url(), "secret": SIGNING_KEY}),
    );
    assert_eq!(webhook["secret"], "***");
    created(
        &server,
        "/api/v1/alerts/channels",
        &json!({"name": "bus", "type": "event"}),
    );
    let (_, rule_id) = endpoint_and_rule(&server, &peer.url(), &["ops-hook", "bus"]);

    // Healthy: nothing fires.
    thread::sleep(Duration::from_secs(3));
    assert!(
        changes(&server, &rule_id).is_empty(),
        "{:?}",
        changes(&server, &rule_id)
    );

    peer.fail(true);
    assert!(
        server.wait_until(WAIT, || hook.accepted("firing").len() == 1),
        "no firing message: {:?}",
        hook.seen()
    );
    let alerts = server.get("/api/v1/alerts").body;
    assert_eq!(alerts["items"][0]["ruleId"], rule_id.as_str(), "{alerts}");
    assert_eq!(alerts["items"][0]["state"], "firing");
    assert_eq!(alerts["items"][0]["severity"], "critical");
    // The event channel's `alert.firing` started the subscribed job.
    assert!(
        server.wait_until(WAIT, || {
            !server
                .executions(&format!("jobId={}", id(&subscriber)))
                .is_empty()
        }),
        "the subscribed job did not run"
    );

    peer.fail(false);
    assert!(
        server.wait_until(WAIT, || hook.accepted("resolved").len() == 1),
        "no resolved message: {:?}",
        hook.seen()
    );
    thread::sleep(Duration::from_secs(3));
    assert_eq!(hook.accepted("firing").len(), 1);
    assert_eq!(hook.accepted("resolved").len(), 1);
    assert!(hook.seen().iter().all(signed_validly), "{:?}", hook.seen());
    let (firing, _) = hook.accepted("firing").into_values().next().unwrap();
    assert_eq!(firing["rule"]["name"], "orders-api-down");
    assert_eq!(firing["rule"]["labels"]["team"], "orders");
    assert_eq!(firing["value"], 1.0);
    assert_eq!(changes(&server, &rule_id), ["firing", "resolved"]);
    assert!(
        server.get("/api/v1/alerts").body["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let runs = server.executions(&format!("jobId={}", id(&subscriber)));
    assert_eq!(runs.len(), 2, "one run per event: {runs:?}");

    // Silenced by label: the rule still fires and resolves, nothing is sent.
    let silence = created(
        &server,
        "/api/v1/alerts/silences",
        &json!({"matchers": {"team": "orders"}, "until": "2999-01-01T00:00:00Z", "comment": "maintenance"}),
    );
    assert_eq!(silence["createdBy"], "admin");
    let sent_before = hook.seen().len();
    peer.fail(true);
    assert!(server.wait_until(WAIT, || changes(&server, &rule_id).len() == 3));
    peer.fail(false);
    assert!(server.wait_until(WAIT, || changes(&server, &rule_id).len() == 4));
    thread::sleep(Duration::from_secs(2));
    assert_eq!(hook.seen().len(), sent_before, "a silenced alert was sent");
    let latest = history(&server, &rule_id);
    assert_eq!(latest[0]["silenced"], true);
    assert_eq!(latest[1]["silenced"], true);
    let notified = server
        .get(&format!("/api/v1/alerts/notifications?ruleId={rule_id}"))
        .body;
    let statuses: Vec<&str> = notified["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "suppressed",
            "suppressed",
            "suppressed",
            "suppressed",
            "delivered",
            "delivered",
            "delivered",
            "delivered"
        ],
        "{notified}"
    );
    let delivered = &notified["items"][7];
    assert_eq!(delivered["attempts"][0]["status"], 200, "{delivered}");

    // Deleting the silence lets notifications through again.
    let removed = server.delete(&format!("/api/v1/alerts/silences/{}", id(&silence)));
    assert_eq!(removed.status, 204);
    peer.fail(true);
    assert!(server.wait_until(WAIT, || hook.accepted("firing").len() == 2));

    // The key is in no answer, log line or audit entry.
    let everything = [
        server.get("/api/v1/alerts/channels").body.to_string(),
        server.get("/api/v1/audit?limit=500").body.to_string(),
        server.output(),
    ];
    for text in everything {
        assert!(
            !text.contains(SIGNING_KEY),
            "the signing key leaked: {text}"
        );
    }
}

#[test]
fn a_test_message_goes_through_delivery_and_is_retried_until_the_receiver_accepts() {
    let server = local_server();
    let hook = Receiver::start();
    let channel = created(
        &server,
        "/api/v1/alerts/channels",
        &json!({"name": "flaky", "type": "webhook", "url": hook.url(), "secret": SIGNING_KEY}),
    );
    hook.fail(true);
    let queued = server.post(&format!("/api/v1/alerts/channels/{}/test", id(&channel)));
    assert_eq!(queued.status, 202, "{}", queued.body);
    assert!(
        server.wait_until(WAIT, || hook.seen().len() >= 2),
        "no retry"
    );
    hook.fail(false);
    assert!(server.wait_until(WAIT, || hook.accepted("test").len() == 1));
    let seen = hook.seen();
    let key = &seen[0].headers["idempotency-key"];
    assert_eq!(key, queued.body["id"].as_str().unwrap());
    assert!(seen.iter().all(|s| &s.headers["idempotency-key"] == key));
    assert!(seen.iter().all(signed_validly));
}

#[test]
fn a_did_not_run_rule_fires_when_a_cron_job_is_disabled() {
    let server = local_server();
    let hook = Receiver::start();
    server.upload(&guests::guest("hello"));
    let job = server.create_job(
        &json!({"name": "sync", "module": "hello", "job": "noop", "schedule": "* * * * * *"}),
    );
    // A job that has not run yet did not run: the rule is defined once it has.
    assert!(server.wait_until(WAIT, || {
        !server
            .executions(&format!("jobId={}&status=COMPLETED", id(&job)))
            .is_empty()
    }));
    created(
        &server,
        "/api/v1/alerts/channels",
        &json!({"name": "ops-hook", "type": "webhook", "url": hook.url()}),
    );
    let rule = created(
        &server,
        "/api/v1/alerts/rules",
        &json!({
            "name": "sync-did-not-run",
            "query": {"source": "usage", "job": "sync", "measure": "runs", "window": "1m"},
            "condition": {"op": "==", "value": 0},
            "severity": "warning",
            "channels": ["ops-hook"],
        }),
    );
    let rule_id = id(&rule);
    thread::sleep(Duration::from_secs(3));
    assert!(
        changes(&server, &rule_id).is_empty(),
        "fired while the job runs"
    );

    let disabled = server.patch_json(
        &format!("/api/v1/jobs/{}", id(&job)),
        &json!({"enabled": false}),
    );
    assert_eq!(disabled.status, 200, "{}", disabled.body);
    // The window is read by whole minutes: runs leave it within two minutes.
    assert!(
        server.wait_until(Duration::from_secs(150), || hook.accepted("firing").len()
            == 1),
        "did not fire: {:?}",
        changes(&server, &rule_id)
    );
    let (firing, _) = hook.accepted("firing").into_values().next().unwrap();
    assert_eq!(firing["value"], 0.0);
    assert!(!hook.seen()[0].headers.contains_key("x-runcell-signature"));
}

#[test]
fn bad_definitions_are_refused_naming_the_field_and_viewers_cannot_define() {
    let server = local_server();
    let peer = Receiver::start();
    created(
        &server,
        "/api/v1/endpoints",
        &json!({"name": "known", "url": peer.url(), "intervalSeconds": 60}),
    );
    created(
        &server,
        "/api/v1/alerts/channels",
        &json!({"name": "bus", "type": "event"}),
    );
    let good = json!({
        "name": "r",
        "query": {"source": "endpoint", "endpoint": "known", "measure": "down"},
        "condition": {"op": ">", "value": 0},
        "severity": "info",
        "channels": ["bus"],
    });
    let with = |change: Value| {
        let mut body = good.clone();
        for (key, value) in change.as_object().unwrap() {
            body[key] = value.clone();
        }
        server.post_json("/api/v1/alerts/rules", &body)
    };
    let cases = [
        (json!({"query": {"source": "logs"}}), 422, "query.source"),
        (
            json!({"query": {"source": "usage", "measure": "speed", "window": "1h"}}),
            422,
            "query.measure",
        ),
        (
            json!({"query": {"source": "usage", "module": "nope", "measure": "runs", "window": "1h"}}),
            422,
            "query.module",
        ),
        (
            json!({"query": {"source": "usage", "job": "nope", "measure": "runs", "window": "1h"}}),
            422,
            "query.job",
        ),
        (
            json!({"query": {"source": "endpoint", "endpoint": "nope", "measure": "down"}}),
            422,
            "query.endpoint",
        ),
        (
            json!({"query": {"source": "metric", "module": "nope", "name": "x", "agg": "max", "window": "1h"}}),
            422,
            "query.module",
        ),
        (
            json!({"condition": {"op": "=>", "value": 1}}),
            422,
            "condition.op",
        ),
        (json!({"condition": "> 1"}), 422, "condition"),
        (json!({"for": "5 minutes"}), 422, "for"),
        (json!({"severity": "loud"}), 422, "severity"),
        (json!({"channels": ["bus", "nope"]}), 422, "channels[1]"),
        (json!({"name": "has space"}), 400, "name"),
        (json!({"colour": "red"}), 400, "colour"),
    ];
    for (change, status, field) in cases {
        let reply = with(change.clone());
        assert_eq!(reply.status, status, "{change}: {}", reply.body);
        assert_eq!(reply.field(), field, "{change}: {}", reply.body);
    }
    assert_eq!(with(json!({})).status, 201);
    assert_eq!(with(json!({})).status, 409);

    let channel = |body: Value| server.post_json("/api/v1/alerts/channels", &body);
    let refused = channel(json!({"name": "x", "type": "pager"}));
    assert_eq!((refused.status, refused.field()), (422, "type"));
    let refused = channel(json!({"name": "x", "type": "webhook"}));
    assert_eq!((refused.status, refused.field()), (422, "url"));
    let refused = channel(json!({"name": "x", "type": "slack", "url": "ftp://x/"}));
    assert_eq!((refused.status, refused.field()), (400, "url"));
    let refused = server.post_json(
        "/api/v1/alerts/silences",
        &json!({"until": 1, "comment": "past"}),
    );
    assert_eq!((refused.status, refused.field()), (422, "until"));
    let refused = server.post_json(
        "/api/v1/alerts/silences",
        &json!({"until": "2999-01-01T00:00:00Z", "comment": "everything"}),
    );
    assert_eq!((refused.status, refused.field()), (422, "ruleId"));

    let user = server.post_json(
        "/api/v1/users",
        &json!({"username": "watcher", "password": "viewer password 1", "role": "viewer"}),
    );
    assert_eq!(user.status, 201, "{}", user.body);
    let viewer = server.login("watcher", "viewer password 1");
    let mut body = good.clone();
    body["name"] = json!("viewers-rule");
    let body = body.to_string();
    let refused = server.request_as(
        Some(&viewer),
        "POST",
        "/api/v1/alerts/rules",
        Some(("application/json", body.as_bytes())),
    );
    assert_eq!(refused.status, 403, "{}", refused.body);
    let listed = server.request_as(Some(&viewer), "GET", "/api/v1/alerts/rules", None);
    assert_eq!(listed.status, 200);
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 1);
}

// ---- two nodes ----------------------------------------------------------------------------

/// One cluster test at a time: each runs several servers.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn killing_the_alerting_node_while_a_notification_is_due_still_delivers_it_once_by_key() {
    let _turn = one_at_a_time();
    let peer = Receiver::start();
    let hook = Receiver::start();
    let prefix = TestPrefix::new();
    let database = TestDatabase::create();
    let node = |name: &str| {
        let mut env = settings();
        env.extend(
            [
                ("DATABASE_URL", database.url.as_str()),
                ("REDIS_URL", redis_url().as_str()),
                ("RUNCELL_REDIS_PREFIX", prefix.0.as_str()),
                ("RUNCELL_NODE_ID", name),
                (
                    "RUNCELL_SECRET_KEY",
                    "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
                ),
            ]
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value.to_owned())),
        );
        Server::start_with(ServerOptions {
            env,
            ..ServerOptions::default()
        })
    };
    let mut nodes = vec![node("node-a"), node("node-b")];
    created(
        &nodes[0],
        "/api/v1/alerts/channels",
        &json!({"name": "ops-hook", "type": "webhook", "url": hook.url(), "secret": SIGNING_KEY}),
    );
    let (_, rule_id) = endpoint_and_rule(&nodes[0], &peer.url(), &["ops-hook"]);

    // The receiver refuses, so the firing notification stays due on the holder.
    hook.fail(true);
    peer.fail(true);
    assert!(
        nodes[1].wait_until(WAIT, || !hook.seen().is_empty()),
        "nothing was sent"
    );
    let holder = database
        .lease_holder("alerts")
        .expect("a node evaluates alerts");
    let killed = if holder == "node-a" { 0 } else { 1 };
    let survivor = 1 - killed;
    nodes[killed].kill();
    hook.fail(false);

    // The survivor takes the lease over (5 s) and sends the same row, under the same key.
    assert!(
        nodes[survivor].wait_until(WAIT, || hook.accepted("firing").len() == 1),
        "the due notification was not delivered: {:?}",
        hook.seen()
    );
    thread::sleep(Duration::from_secs(4));
    let accepted = hook.accepted("firing");
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    let keys: std::collections::HashSet<String> = hook
        .seen()
        .into_iter()
        .map(|seen| seen.headers["idempotency-key"].clone())
        .collect();
    assert_eq!(keys.len(), 1, "a second notification for one transition");
    assert!(hook.seen().iter().all(signed_validly));
    // The survivor carried on from the stored state: one firing, never a second.
    assert_eq!(changes(&nodes[survivor], &rule_id), ["firing"]);
    let notified = nodes[survivor]
        .get(&format!("/api/v1/alerts/notifications?ruleId={rule_id}"))
        .body;
    assert_eq!(notified["items"].as_array().unwrap().len(), 1, "{notified}");
    assert_eq!(notified["items"][0]["status"], "delivered");
    drop(nodes);
}
