//! Endpoint monitors, end to end: a real `runcell serve` checks a local HTTP server that
//! the test turns healthy, degraded, slow, failing, down or redirecting, and what a client
//! sees (checks, uptime, the last check) follows; secret headers reach the checked server
//! and nothing else; internal addresses in any spelling are never reached without
//! `--outbound-allow`; and a two-node deployment checks each interval once, carrying on
//! when the checking node is killed.
//!
//! Servers run with `--endpoint-min-interval 1s` (the default minimum is 10 s, which would
//! make every test wait minutes), except where the default minimum itself is tested.

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

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use distributed::{TestDatabase, TestPrefix, block_on, redis_url};
use server::{Server, ServerOptions};

/// A header value that must reach the checked server and appear nowhere else.
const SECRET: &str = "Bearer s3cret-token-9f2c71";
/// How long a test waits for a check to show what it expects: several intervals.
const WAIT: Duration = Duration::from_secs(20);

/// What the checked server does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `200 {"status": "UP"}`.
    Healthy,
    /// `200 {"status": "DEGRADED"}`.
    Degraded,
    /// Healthy, after 1.5 s.
    Slow,
    /// `500`.
    Failing,
    /// Closes the connection without answering.
    Down,
    /// `302` to the cloud metadata address.
    Redirect,
}

/// One request the checked server received.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: Vec<(String, String)>,
}

/// A local HTTP server the test switches between modes.
struct Peer {
    port: u16,
    mode: Arc<Mutex<Mode>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Peer {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(Mutex::new(Mode::Healthy));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (shared_mode, shared_seen) = (mode.clone(), seen.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (mode, seen) = (shared_mode.clone(), shared_seen.clone());
                thread::spawn(move || answer(stream, &mode, &seen));
            }
        });
        Self { port, mode, seen }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

fn answer(mut stream: std::net::TcpStream, mode: &Mutex<Mode>, seen: &Mutex<Vec<Seen>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.trim_end().split_once(':') {
            headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    seen.lock().unwrap().push(Seen { path, headers });
    let mode = *mode.lock().unwrap();
    let reply = |status: &str, body: &str| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let text = match mode {
        Mode::Healthy => reply("200 OK", r#"{"status": "UP"}"#),
        Mode::Degraded => reply("200 OK", r#"{"status": "DEGRADED"}"#),
        Mode::Slow => {
            thread::sleep(Duration::from_millis(1_500));
            reply("200 OK", r#"{"status": "UP"}"#)
        }
        Mode::Failing => reply("500 Internal Server Error", "{}"),
        Mode::Down => return,
        Mode::Redirect => {
            "HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/latest/meta-data/\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
                .to_owned()
        }
    };
    let _ = stream.write_all(text.as_bytes());
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A server that checks as often as every second and may reach 127.0.0.1.
fn local_server() -> Server {
    Server::start_with(ServerOptions {
        env: vec![
            ("RUNCELL_OUTBOUND_ALLOW".to_owned(), "127.0.0.1".to_owned()),
            ("RUNCELL_ENDPOINT_MIN_INTERVAL".to_owned(), "1s".to_owned()),
        ],
        ..ServerOptions::default()
    })
}

fn create(server: &Server, definition: &Value) -> Value {
    let reply = server.post_json("/api/v1/endpoints", definition);
    assert_eq!(reply.status, 201, "create {definition}: {}", reply.body);
    reply.body
}

fn id(value: &Value) -> String {
    value["id"].as_str().expect("an id").to_owned()
}

/// Every check of endpoint `id`, newest first, following cursors.
fn checks(server: &Server, id: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/api/v1/endpoints/{id}/checks?limit=500");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let reply = server.get(&path);
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        items.extend(reply.body["items"].as_array().unwrap().iter().cloned());
        match reply.body["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return items,
        }
    }
}

/// Waits for a check of `id` made after `since` that `wanted` accepts; returns it.
fn await_check(server: &Server, id: &str, since: i64, wanted: impl Fn(&Value) -> bool) -> Value {
    let mut found = None;
    let ok = server.wait_until(WAIT, || {
        found = checks(server, id)
            .into_iter()
            .find(|check| check["checkedAt"].as_i64().unwrap() > since && wanted(check));
        found.is_some()
    });
    assert!(
        ok,
        "no such check of {id} after {since}: {:?}",
        checks(server, id)
    );
    found.unwrap()
}

/// What a check must show.
type Expectation = dyn Fn(&Value) -> bool;

#[test]
fn an_endpoint_goes_down_when_its_server_fails_and_up_again() {
    let server = local_server();
    let peer = Peer::start();
    let endpoint = create(
        &server,
        &json!({
            "name": "orders-api",
            "url": peer.url("/health"),
            "headers": {"Authorization": {"secret": SECRET}, "x-env": "test"},
            "intervalSeconds": 1,
            "timeoutMs": 1000,
            "conditions": ["status == 200", "body.status == \"UP\"", "latencyMs < 1000"],
        }),
    );
    let id = id(&endpoint);
    assert_eq!(
        endpoint["headers"]["authorization"],
        json!({"secret": "***"})
    );
    assert_eq!(endpoint["headers"]["x-env"], "test");
    assert_eq!(endpoint["method"], "GET");
    assert_eq!(
        endpoint["uptime"],
        json!({"24h": null, "7d": null, "30d": null})
    );

    let start = now_ms() - 1;
    let up = await_check(&server, &id, start, |c| c["up"] == true);
    assert_eq!(up["statusCode"], 200);
    assert!(up["latencyMs"].as_u64().unwrap() < 1000, "{up}");
    assert_eq!(up["error"], Value::Null);
    // The secret header reached the checked server, as given.
    let sent = peer.seen();
    let headers = &sent.last().unwrap().headers;
    assert!(
        headers.contains(&("authorization".to_owned(), SECRET.to_owned())),
        "{headers:?}"
    );
    assert!(
        headers.contains(&("x-env".to_owned(), "test".to_owned())),
        "{headers:?}"
    );
    assert!(headers.iter().any(
        |(name, value)| name == "user-agent" && value.starts_with("runcell-endpoint-monitor/")
    ));

    let expectations: [(Mode, &Expectation); 5] = [
        (Mode::Failing, &|c| {
            c["statusCode"] == 500 && c["failedCondition"] == "status == 200"
        }),
        (Mode::Degraded, &|c| {
            c["statusCode"] == 200 && c["failedCondition"] == "body.status == \"UP\""
        }),
        (Mode::Slow, &|c| {
            c["statusCode"] == Value::Null
                && c["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("no answer within 1000 ms"))
        }),
        (Mode::Down, &|c| {
            c["statusCode"] == Value::Null && c["error"].is_string()
        }),
        (Mode::Healthy, &|c| {
            c["up"] == true && c["failedCondition"] == Value::Null
        }),
    ];
    for (mode, expected) in expectations {
        peer.set(mode);
        let since = now_ms();
        let check = await_check(&server, &id, since + 1_000, |c| expected(c));
        assert_eq!(check["up"], mode == Mode::Healthy, "{mode:?}: {check}");
    }

    // Each interval once, newest first.
    let all = checks(&server, &id);
    let due: Vec<i64> = all.iter().map(|c| c["dueAt"].as_i64().unwrap()).collect();
    assert!(due.windows(2).all(|pair| pair[0] > pair[1]), "{due:?}");
    let ups = all.iter().filter(|c| c["up"] == true).count();
    let shown = server.get(&format!("/api/v1/endpoints/{id}"));
    assert_eq!(shown.status, 200);
    let uptime = shown.body["uptime"]["24h"].as_f64().unwrap();
    let expected = (ups as f64 * 10_000.0 / all.len() as f64).round() / 100.0;
    // A check may land between the two reads.
    assert!(
        (uptime - expected).abs() < 100.0 / all.len() as f64 + 0.01,
        "{uptime} vs {expected}"
    );
    assert!(uptime > 0.0 && uptime < 100.0, "{uptime}");
    assert_eq!(shown.body["uptime"]["24h"], shown.body["uptime"]["30d"]);
    assert!(shown.body["lastCheck"]["dueAt"].as_i64().unwrap() >= due[0]);
    assert_eq!(shown.body["consumption"], json!([]));

    // A window of the listing.
    let (to, from) = (due[1], due[3]);
    let window = server.get(&format!(
        "/api/v1/endpoints/{id}/checks?from={from}&to={to}"
    ));
    let listed: Vec<i64> = window.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["dueAt"].as_i64().unwrap())
        .collect();
    assert_eq!(listed, [due[2], due[3]]);
    let backward = server.get(&format!(
        "/api/v1/endpoints/{id}/checks?from={to}&to={from}"
    ));
    assert_eq!((backward.status, backward.field()), (400, "from"));

    // Disabled, it is checked no more.
    let disabled = server.patch_json(
        &format!("/api/v1/endpoints/{id}"),
        &json!({"enabled": false}),
    );
    assert_eq!(disabled.status, 200, "{}", disabled.body);
    assert_eq!(disabled.body["nextCheckAt"], Value::Null);
    assert_eq!(
        disabled.body["headers"]["authorization"],
        json!({"secret": "***"})
    );

    // The secret appears in no answer, no audit entry and no line the server wrote.
    let everything = [
        server.get("/api/v1/endpoints").body.to_string(),
        server
            .get(&format!("/api/v1/endpoints/{id}"))
            .body
            .to_string(),
        server
            .get(&format!("/api/v1/endpoints/{id}/checks"))
            .body
            .to_string(),
        server.get("/api/v1/audit").body.to_string(),
        disabled.body.to_string(),
        server.output(),
    ];
    for text in &everything {
        assert!(!text.contains("s3cret-token"), "{text}");
    }
    let audit = server.get("/api/v1/audit").body;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["action"].as_str().unwrap())
        .filter(|action| action.starts_with("endpoint."))
        .collect();
    assert!(
        actions.contains(&"endpoint.create") && actions.contains(&"endpoint.update"),
        "{actions:?}"
    );

    let deleted = server.delete(&format!("/api/v1/endpoints/{id}"));
    assert_eq!(deleted.status, 204);
    assert_eq!(
        server.get(&format!("/api/v1/endpoints/{id}/checks")).status,
        404
    );
}

#[test]
fn an_endpoint_shows_how_hard_modules_call_its_host() {
    let server = local_server();
    let peer = Peer::start();
    let client = std::fs::read(guests::guest("http-client")).unwrap();
    let installed = server.post_bytes("/api/v1/modules", "application/wasm", &client);
    assert_eq!(installed.status, 201, "{}", installed.body);
    let approved = server.post_json(
        "/api/v1/modules/http-client/capabilities/approve",
        &json!({"outboundHosts": [format!("127.0.0.1:{}", peer.port)]}),
    );
    assert_eq!(approved.status, 200, "{}", approved.body);
    let job = id(&server.create_job(&json!({
        "name": "fetcher", "module": "http-client", "job": "fetch", "maxAttempts": 1,
    })));
    for (mode, path) in [
        (Mode::Healthy, "/a"),
        (Mode::Healthy, "/b"),
        (Mode::Failing, "/c"),
        (Mode::Healthy, "/d"),
    ] {
        peer.set(mode);
        let run = server.execute(&job, Some(json!({"url": peer.url(path)})));
        server.wait_final(&run, WAIT);
    }
    peer.set(Mode::Healthy);
    let endpoint = create(
        &server,
        &json!({"name": "peer", "url": peer.url("/health"), "intervalSeconds": 60,
                "enabled": false}),
    );
    assert_eq!(
        endpoint["consumption"],
        json!([{"module": "http-client", "requests": 4, "responses5xx": 1, "errors": 0,
                "failureRate": 0.25}])
    );
    let elsewhere = create(
        &server,
        &json!({"name": "elsewhere", "url": "https://api.example.com/", "intervalSeconds": 60,
                "enabled": false}),
    );
    assert_eq!(elsewhere["consumption"], json!([]));
}

#[test]
fn a_redirect_is_the_answer_and_is_never_followed() {
    let server = local_server();
    let peer = Peer::start();
    peer.set(Mode::Redirect);
    let strict = create(
        &server,
        &json!({"name": "strict", "url": peer.url("/login"), "intervalSeconds": 1,
                "conditions": ["status == 200"]}),
    );
    let lenient = create(
        &server,
        &json!({"name": "lenient", "url": peer.url("/login"), "intervalSeconds": 1}),
    );
    let check = await_check(&server, &id(&strict), 0, |_| true);
    assert_eq!(check["up"], false);
    assert_eq!(check["statusCode"], 302);
    assert_eq!(check["failedCondition"], "status == 200");
    // No condition means `status < 400`: a redirect is up.
    let check = await_check(&server, &id(&lenient), 0, |_| true);
    assert_eq!(
        (check["up"].clone(), check["statusCode"].clone()),
        (json!(true), json!(302))
    );
    assert!(
        peer.seen().iter().all(|seen| seen.path == "/login"),
        "{:?}",
        peer.seen()
    );
}

#[test]
fn internal_addresses_in_any_spelling_are_never_checked_without_outbound_allow() {
    let server = Server::start_with(ServerOptions {
        env: vec![("RUNCELL_ENDPOINT_MIN_INTERVAL".to_owned(), "1s".to_owned())],
        ..ServerOptions::default()
    });
    let peer = Peer::start();
    let port = peer.port;
    let urls = [
        format!("http://127.0.0.1:{port}/"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        format!("http://[::1]:{port}/"),
        format!("http://0.0.0.0:{port}/"),
        format!("http://2130706433:{port}/"),
        format!("http://0177.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
    ];
    let ids: Vec<(String, String)> = urls
        .iter()
        .enumerate()
        .map(|(i, url)| {
            let created = create(
                &server,
                &json!({"name": format!("internal-{i}"), "url": url, "intervalSeconds": 1}),
            );
            (id(&created), url.clone())
        })
        .collect();
    for (id, url) in &ids {
        let check = await_check(&server, id, 0, |_| true);
        assert_eq!(check["up"], false, "{url}: {check}");
        assert_eq!(check["statusCode"], Value::Null, "{url}: {check}");
        let error = check["error"].as_str().unwrap();
        assert!(error.starts_with("refused: "), "{url}: {error}");
        assert!(error.contains("--outbound-allow"), "{url}: {error}");
    }
    assert!(peer.seen().is_empty(), "{:?}", peer.seen());
}

#[test]
fn bad_definitions_name_their_field_and_a_viewer_cannot_create() {
    let server = Server::start();
    let base =
        json!({"name": "api", "url": "https://api.example.com/health", "intervalSeconds": 30});
    let with = |changes: Value| {
        let mut definition = base.clone();
        for (key, value) in changes.as_object().unwrap() {
            definition[key] = value.clone();
        }
        server.post_json("/api/v1/endpoints", &definition)
    };

    let bad = with(json!({"conditions": ["status == 200", "status < soon"]}));
    assert_eq!(
        (bad.status, bad.field()),
        (422, "conditions[1]"),
        "{}",
        bad.body
    );
    assert!(bad.message().contains("at column 10"), "{}", bad.message());

    let bad = with(json!({"conditions": ["latencyMs < \"fast\""]}));
    assert_eq!((bad.status, bad.field()), (422, "conditions[0]"));
    assert!(
        bad.message().contains("expected a number"),
        "{}",
        bad.message()
    );

    let bad = with(
        json!({"url": "http://api.example.com/", "conditions": ["certificate.expiresInDays > 14"]}),
    );
    assert_eq!((bad.status, bad.field()), (422, "conditions[0]"));

    let bad = with(json!({"intervalSeconds": 5}));
    assert_eq!((bad.status, bad.field()), (422, "intervalSeconds"));
    assert!(
        bad.message().contains("minimum of 10 seconds"),
        "{}",
        bad.message()
    );

    let bad = with(json!({"timeoutMs": 60_001}));
    assert_eq!((bad.status, bad.field()), (422, "timeoutMs"));

    for url in ["ftp://api.example.com/", "gopher://x", "not a url"] {
        let bad = with(json!({ "url": url }));
        assert_eq!(
            (bad.status, bad.field()),
            (400, "url"),
            "{url}: {}",
            bad.body
        );
    }
    let bad = with(json!({"url": "https://me:pa55word@api.example.com/"}));
    assert_eq!((bad.status, bad.field()), (422, "url"));
    assert!(!bad.body.to_string().contains("pa55word"));

    let bad = with(json!({"method": "TRACE"}));
    assert_eq!((bad.status, bad.field()), (400, "method"));
    let bad = with(json!({"headers": {"Host": "evil.example"}}));
    assert_eq!((bad.status, bad.field()), (422, "headers.Host"));
    let bad = with(json!({"headers": {"x-token": {"secret": "line\nbreak"}}}));
    assert_eq!((bad.status, bad.field()), (400, "headers.x-token"));
    assert!(!bad.body.to_string().contains("break"));
    let bad = with(json!({"retries": 3}));
    assert_eq!(bad.status, 400, "{}", bad.body);

    assert_eq!(with(json!({})).status, 201);
    let taken = with(json!({}));
    assert_eq!(taken.status, 409);

    let created = server.post_json(
        "/api/v1/users",
        &json!({"username": "watcher", "password": "viewer password 1", "role": "viewer"}),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let viewer = server.login("watcher", "viewer password 1");
    let body =
        json!({"name": "mine", "url": "https://x.example/", "intervalSeconds": 30}).to_string();
    let refused = server.request_as(
        Some(&viewer),
        "POST",
        "/api/v1/endpoints",
        Some(("application/json", body.as_bytes())),
    );
    assert_eq!(refused.status, 403, "{}", refused.body);
    let listed = server.request_as(Some(&viewer), "GET", "/api/v1/endpoints", None);
    assert_eq!(listed.status, 200);
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 1);
}

// ---- two nodes ----------------------------------------------------------------------------

/// The endpoints lease's time to live (`monitor::LEASE_TTL`).
const LEASE_TTL: Duration = Duration::from_secs(5);

/// `(due time, rows, node)` of every check of `endpoint_id`, read straight from the
/// database, oldest first.
fn check_rows(database: &TestDatabase, endpoint_id: &str) -> Vec<(i64, i64, String)> {
    use sqlx::{Connection, Row};
    block_on(async {
        let mut connection = sqlx::PgConnection::connect(&database.url).await.unwrap();
        let rows = sqlx::query(
            "SELECT due_at, count(*) AS n, min(node_id) AS node FROM endpoint_checks \
             WHERE endpoint_id = $1 GROUP BY due_at ORDER BY due_at",
        )
        .bind(endpoint_id)
        .fetch_all(&mut connection)
        .await
        .unwrap();
        let _ = connection.close().await;
        rows.iter()
            .map(|row| (row.get("due_at"), row.get("n"), row.get("node")))
            .collect()
    })
}

/// One cluster test at a time: each runs several servers.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn two_nodes_check_each_interval_once_and_the_survivor_takes_over_a_killed_checker() {
    let _turn = one_at_a_time();
    let peer = Peer::start();
    let prefix = TestPrefix::new();
    let database = TestDatabase::create();
    let node = |name: &str| {
        Server::start_with(ServerOptions {
            env: [
                ("DATABASE_URL", database.url.as_str()),
                ("REDIS_URL", redis_url().as_str()),
                ("RUNCELL_REDIS_PREFIX", prefix.0.as_str()),
                ("RUNCELL_NODE_ID", name),
                (
                    "RUNCELL_SECRET_KEY",
                    "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
                ),
                ("RUNCELL_OUTBOUND_ALLOW", "127.0.0.1"),
                ("RUNCELL_ENDPOINT_MIN_INTERVAL", "1s"),
            ]
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect(),
            ..ServerOptions::default()
        })
    };
    let mut nodes = vec![node("node-a"), node("node-b")];
    let endpoint = create(
        &nodes[0],
        &json!({"name": "shared", "url": peer.url("/health"), "intervalSeconds": 1,
                "headers": {"authorization": {"secret": SECRET}}}),
    );
    let id = id(&endpoint);
    thread::sleep(Duration::from_secs(5));
    let holder = database
        .lease_holder("endpoints")
        .expect("a node checks endpoints");
    let before = check_rows(&database, &id);
    assert!(before.len() >= 3, "checks before the kill: {before:?}");
    assert!(
        before.iter().all(|(_, _, node)| *node == holder),
        "{before:?}"
    );

    let killed = if holder == "node-a" { 0 } else { 1 };
    let survivor = 1 - killed;
    nodes[killed].kill();
    let killed_at = now_ms();
    thread::sleep(LEASE_TTL + Duration::from_secs(4));
    let disabled = nodes[survivor].patch_json(
        &format!("/api/v1/endpoints/{id}"),
        &json!({"enabled": false}),
    );
    assert_eq!(disabled.status, 200, "{}", disabled.body);
    thread::sleep(Duration::from_millis(1_500));

    let rows = check_rows(&database, &id);
    assert!(
        rows.iter().all(|(_, n, _)| *n == 1),
        "an interval checked twice: {rows:?}"
    );
    let after: Vec<&(i64, i64, String)> =
        rows.iter().filter(|(due, _, _)| *due > killed_at).collect();
    assert!(
        after.len() >= 2,
        "checks stopped after the kill at {killed_at}: {rows:?}"
    );
    let survivor_name = if survivor == 0 { "node-a" } else { "node-b" };
    assert!(
        after.iter().all(|(_, _, node)| node == survivor_name),
        "{rows:?}"
    );
    for pair in rows.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(gap % 1_000 == 0, "off the one-second grid: {rows:?}");
        assert!(
            gap <= LEASE_TTL.as_millis() as i64 + 3_000,
            "a gap longer than the lease: {rows:?}"
        );
    }
    // Each recorded interval was one request; a request the killed node made but never
    // recorded is the only one allowed in excess.
    let requests = peer.seen().len();
    assert!(
        requests >= rows.len() && requests <= rows.len() + 1,
        "{requests} requests for {} checks",
        rows.len()
    );
    let shown = nodes[survivor].get(&format!("/api/v1/endpoints/{id}"));
    assert_eq!(
        shown.body["headers"]["authorization"],
        json!({"secret": "***"})
    );
    assert!(peer.seen().iter().all(|seen| {
        seen.headers
            .contains(&("authorization".to_owned(), SECRET.to_owned()))
    }));
    drop(nodes);
}
