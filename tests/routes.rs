//! Module-served HTTP routes (`/m/{module}/...`) end to end: the real binary, real
//! modules, plain HTTP. Covers who may call (the manifest's `authenticated` or an
//! approved `public`), what the module sees of a request, every limit a request runs
//! under, and that disabling or upgrading a module changes what answers at once.

#[path = "support/guests.rs"]
mod guests;
#[allow(
    dead_code,
    reason = "shared with other test binaries, each of which uses a different part of it"
)]
#[path = "support/server.rs"]
mod server;

use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use server::{Server, ServerOptions};

/// The route time limit of these servers: short, so probes that hit it are quick, and
/// well under the CPU time the route fuel buys (about a second on the slowest machine
/// measured, 470 ms on the fastest), so the clock, not fuel, stops a spinning handler.
const ROUTE_TIMEOUT_MS: u64 = 250;

/// One answer, as a client sees it.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {}", self.text()))
    }

    fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// `method` on `path` with `token` (or none), extra `headers` and `body`.
fn call(
    server: &Server,
    token: Option<&str>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Answer {
    let url = server.url(path);
    let agent = agent();
    let mut request = match method {
        "GET" => http_request(agent.get(&url), token, headers).call(),
        "POST" => http_request(agent.post(&url), token, headers).send(body.unwrap_or_default()),
        "PUT" => http_request(agent.put(&url), token, headers).send(body.unwrap_or_default()),
        "DELETE" => http_request(agent.delete(&url), token, headers).call(),
        other => panic!("unsupported method {other}"),
    }
    .unwrap_or_else(|err| panic!("{method} {path} failed: {err}\n{}", server.output()));
    let status = request.status().as_u16();
    let headers = request
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    let body = request
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()
        .unwrap();
    Answer {
        status,
        headers,
        body,
    }
}

fn http_request<B>(
    mut request: ureq::RequestBuilder<B>,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> ureq::RequestBuilder<B> {
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request
}

/// A POST to route-probe's echo written by hand, for bodies a client library would not
/// send as such; returns the response's head and body as text. The server may close the
/// connection before reading everything, so write errors are expected and ignored.
fn raw_post(server: &Server, token: &str, framing: &str, body: &[u8]) -> String {
    use std::io::{Read, Write};
    let address = server.url("").trim_start_matches("http://").to_owned();
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let head = format!(
        "POST /m/route-probe/echo HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {token}\r\nconnection: close\r\n{framing}\r\n"
    );
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body));
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

fn start() -> Server {
    Server::start_with(ServerOptions {
        env: vec![
            (
                "RUNCELL_ROUTE_TIMEOUT".into(),
                format!("{ROUTE_TIMEOUT_MS}ms"),
            ),
            ("RUNCELL_ROUTE_CONCURRENCY".into(), "2".into()),
        ],
        ..ServerOptions::default()
    })
}

fn viewer_token(server: &Server) -> String {
    let reply = server.post_json(
        "/api/v1/users",
        &json!({"username": "watcher", "password": "viewer password 1", "role": "viewer"}),
    );
    assert_eq!(reply.status, 201, "{}", reply.body);
    server.login("watcher", "viewer password 1")
}

#[test]
fn signed_in_callers_reach_a_module_that_sees_only_what_it_should() {
    let server = start();
    server.upload(&guests::guest("data-sync"));
    server.upload(&guests::guest("route-probe"));
    let admin = server.token().to_owned();
    let viewer = viewer_token(&server);

    // data-sync's own status route, before and after a sync.
    let sync_status = || {
        call(
            &server,
            Some(&viewer),
            "GET",
            "/m/data-sync/status",
            &[],
            None,
        )
    };
    let status = sync_status();
    assert_eq!(status.status, 200, "{}", status.text());
    assert_eq!(status.json()["cursor"], Value::Null, "{}", status.text());
    let sync =
        server.create_job(&json!({"name": "sync", "module": "data-sync", "job": "hourly-sync"}));
    let execution = server.execute(
        sync["id"].as_str().unwrap(),
        Some(json!({"records": [{"id": "a1", "name": "Alpha", "value": 1.5}]})),
    );
    let done = server.wait_final(&execution, Duration::from_secs(20));
    assert_eq!(done["status"], "COMPLETED", "{done}");
    let status = sync_status();
    assert_eq!(status.status, 200, "{}", status.text());
    assert_ne!(status.json()["cursor"], Value::Null, "{}", status.text());

    // No token, or a bad one: refused before the module runs.
    let anonymous = call(&server, None, "GET", "/m/data-sync/status", &[], None);
    assert_eq!(anonymous.status, 401, "{}", anonymous.text());
    assert_eq!(anonymous.error_code(), "unauthenticated");
    assert!(anonymous.header("www-authenticate").is_some());
    let forged = call(
        &server,
        Some("not-a-token"),
        "GET",
        "/m/data-sync/status",
        &[],
        None,
    );
    assert_eq!(forged.status, 401, "{}", forged.text());

    // What the module sees: the path below its prefix, the query, the body, the
    // caller's name and role from Runcell, and neither the token nor forged headers.
    let echo = call(
        &server,
        Some(&admin),
        "POST",
        "/m/route-probe/echo?a=1&b=two",
        &[
            ("x-runcell-user", "someone-else"),
            ("x-custom", "kept"),
            ("content-type", "application/octet-stream"),
        ],
        Some(&[7_u8; 1000]),
    );
    assert_eq!(echo.status, 200, "{}", echo.text());
    let seen = echo.json();
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["path"], "/echo");
    assert_eq!(seen["query"], "a=1&b=two");
    assert_eq!(seen["bodyBytes"], 1000);
    assert_eq!(seen["headers"]["x-runcell-user"], "admin", "{seen}");
    assert_eq!(seen["headers"]["x-runcell-role"], "admin", "{seen}");
    assert_eq!(seen["headers"]["x-custom"], "kept", "{seen}");
    assert!(seen["headers"].get("authorization").is_none(), "{seen}");
    // The page is confined to an opaque origin, whatever the module says.
    assert_eq!(
        echo.header("content-security-policy"),
        Some("sandbox allow-scripts allow-forms allow-popups")
    );
    assert_eq!(echo.header("x-content-type-options"), Some("nosniff"));

    // Grants apply to requests as to jobs: the module's key-value store works.
    for expected in 1..=2 {
        let counted = call(
            &server,
            Some(&viewer),
            "POST",
            "/m/route-probe/count",
            &[],
            None,
        );
        assert_eq!(counted.status, 200, "{}", counted.text());
        assert_eq!(counted.json()["count"], expected);
    }
    // The module's own answers pass through, errors included.
    let missing = call(
        &server,
        Some(&viewer),
        "GET",
        "/m/route-probe/nothing-here",
        &[],
        None,
    );
    assert_eq!(missing.status, 404);
    assert_eq!(missing.error_code(), "not_found");

    // Modules without routes, and modules that do not exist, serve nothing.
    server.upload(&guests::guest("hello"));
    for path in ["/m/hello/", "/m/no-such-module/x", "/m/Bad_Name/x"] {
        let answer = call(&server, Some(&admin), "GET", path, &[], None);
        assert_eq!(answer.status, 404, "{path}: {}", answer.text());
        assert_eq!(answer.error_code(), "not_found", "{path}");
    }
}

#[test]
fn every_limit_of_a_request_ends_it_with_its_own_answer_and_the_server_keeps_serving() {
    let server = start();
    server.upload(&guests::guest("route-probe"));
    let token = server.token().to_owned();
    let get = |path: &str| call(&server, Some(&token), "GET", path, &[], None);

    let started = Instant::now();
    let spin = get("/m/route-probe/spin");
    let waited = started.elapsed();
    assert_eq!(spin.status, 504, "{}", spin.text());
    assert_eq!(spin.error_code(), "module_timed_out");
    assert!(
        waited >= Duration::from_millis(ROUTE_TIMEOUT_MS) && waited < Duration::from_secs(5),
        "{waited:?}"
    );

    // The other limits are asked of a server with the default time limit: growing to
    // 64 MiB or writing megabytes of body can outlast the short clock above on a slow
    // machine (the servers under test are debug builds), and these must end on their
    // own limit, never on time.
    let roomy = Server::start();
    roomy.upload(&guests::guest("route-probe"));
    let roomy_get = |path: &str| call(&roomy, Some(roomy.token()), "GET", path, &[], None);
    let cases = [
        ("/m/route-probe/grow", "MEMORY_LIMIT_EXCEEDED"),
        ("/m/route-probe/panic", "TRAP"),
        // Over the 8 MiB response cap.
        ("/m/route-probe/big?bytes=9000000", "OUTPUT_TOO_LARGE"),
    ];
    for (path, reason) in cases {
        let answer = roomy_get(path);
        assert_eq!(answer.status, 502, "{path}: {}", answer.text());
        assert_eq!(answer.error_code(), "module_failed", "{path}");
        assert_eq!(
            answer.json()["error"]["details"]["reason"],
            reason,
            "{path}"
        );
    }
    let panic = roomy_get("/m/route-probe/panic");
    assert!(
        panic.text().contains("route-probe was asked to panic"),
        "{}",
        panic.text()
    );
    // Under the cap, a large body passes whole.
    let big = roomy_get("/m/route-probe/big?bytes=3000000");
    assert_eq!(big.status, 200);
    assert_eq!(big.body.len(), 3_000_000);
    drop(roomy);

    // The request body is capped before the module runs (2 MiB): refused on its declared
    // length before a byte of it is read, or once a chunked body passes the cap.
    let declared = raw_post(&server, &token, "content-length: 3145728\r\n", b"");
    assert!(declared.starts_with("HTTP/1.1 413"), "{declared}");
    assert!(declared.contains("payload_too_large"), "{declared}");
    let mut chunked = format!("{:x}\r\n", 2 * 1024 * 1024 + 1).into_bytes();
    chunked.extend(vec![b'x'; 2 * 1024 * 1024 + 1]);
    chunked.extend(b"\r\n0\r\n\r\n");
    let streamed = raw_post(&server, &token, "transfer-encoding: chunked\r\n", &chunked);
    assert!(streamed.starts_with("HTTP/1.1 413"), "{streamed}");

    // Two requests at once per module on this server: a third is turned away at once.
    let answers: Vec<Answer> = thread::scope(|scope| {
        let handles: Vec<_> = (0..3)
            .map(|_| scope.spawn(|| get("/m/route-probe/sleep?ms=150")))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [200, 200, 503],
        "{:?}",
        answers.iter().map(Answer::text).collect::<Vec<_>>()
    );
    let busy = answers.iter().find(|a| a.status == 503).unwrap();
    assert_eq!(busy.error_code(), "module_busy");
    assert_eq!(busy.header("retry-after"), Some("1"));

    // None of it hurt the server or the module.
    assert_eq!(server.get("/healthz").status, 200);
    let version = get("/m/route-probe/version");
    assert_eq!(version.status, 200);
    assert_eq!(version.text(), "1.0.0");
}

#[test]
fn disabling_removes_routes_at_once_and_a_new_version_takes_over_after_its_approval() {
    let server = start();
    server.upload(&guests::guest("route-probe"));
    let token = server.token().to_owned();
    let version =
        |token: Option<&str>| call(&server, token, "GET", "/m/route-probe/version", &[], None);
    assert_eq!(version(Some(&token)).text(), "1.0.0");
    assert_eq!(version(None).status, 401);

    assert_eq!(
        server.post("/api/v1/modules/route-probe/disable").status,
        200
    );
    let disabled = version(Some(&token));
    assert_eq!(disabled.status, 404, "{}", disabled.text());
    assert_eq!(
        disabled.json()["error"]["message"],
        "module `route-probe` is disabled; enable it to serve its routes"
    );
    assert_eq!(
        server.post("/api/v1/modules/route-probe/enable").status,
        200
    );
    assert_eq!(version(Some(&token)).text(), "1.0.0");

    // 2.0.0 opens the routes to anyone: more than was approved, so nothing is served
    // until an admin approves, and then the new version answers without a restart.
    let bytes = std::fs::read(guests::guest("route-probe-v2")).unwrap();
    let upgraded = server.post_bytes("/api/v1/modules", "application/wasm", &bytes);
    assert_eq!(upgraded.status, 201, "{}", upgraded.body);
    assert_eq!(
        upgraded.body["awaitingApproval"],
        json!(["public HTTP routes"]),
        "{}",
        upgraded.body
    );
    let waiting = version(Some(&token));
    assert_eq!(waiting.status, 403, "{}", waiting.text());
    assert!(
        waiting.text().contains("public HTTP routes"),
        "{}",
        waiting.text()
    );
    let approved = server.post("/api/v1/modules/route-probe/capabilities/approve");
    assert_eq!(approved.status, 200, "{}", approved.body);
    let anonymous = version(None);
    assert_eq!(anonymous.status, 200, "{}", anonymous.text());
    assert_eq!(anonymous.text(), "2.0.0");
    // A public route claims no caller, and passes no Authorization, whatever its
    // scheme: Runcell cannot tell the module's scheme from its own credentials.
    let echo = call(
        &server,
        None,
        "GET",
        "/m/route-probe/echo",
        &[("authorization", "Signature abc")],
        None,
    );
    assert!(echo.json()["headers"].get("authorization").is_none());
    assert!(echo.json()["headers"].get("x-runcell-user").is_none());

    // Deleting the module removes its routes too.
    assert_eq!(
        server
            .delete("/api/v1/modules/route-probe?force=true")
            .status,
        204
    );
    assert_eq!(version(None).status, 404);
}

/// What route-probe's `/headers` received, as `name: value` lines.
fn headers_seen(answer: &Answer) -> Vec<String> {
    assert_eq!(answer.status, 200, "{}", answer.text());
    answer.json()["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| {
            format!(
                "{}: {}",
                pair[0].as_str().unwrap(),
                pair[1].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn no_kind_of_route_hands_a_module_the_callers_runcell_credentials() {
    let server = start();
    server.upload(&guests::guest("route-probe"));
    let admin = server.token().to_owned();
    let created = server.post_json("/api/v1/tokens", &json!({"name": "ci", "role": "viewer"}));
    assert_eq!(created.status, 201, "{}", created.body);
    let api_token = created.body["secret"].as_str().unwrap().to_owned();
    let cookie = format!("theme=dark; rc_session={admin}; rc_ci={api_token}");
    let smuggled = [
        ("cookie", cookie.as_str()),
        ("x-api-key", api_token.as_str()),
        ("x-forwarded-authorization", admin.as_str()),
        ("x-custom", "kept"),
    ];
    let leaks = |seen: &[String]| {
        seen.iter()
            .filter(|line| line.contains(admin.as_str()) || line.contains(api_token.as_str()))
            .cloned()
            .collect::<Vec<_>>()
    };

    // An authenticated route: the caller is named, its credentials are not passed.
    let seen = headers_seen(&call(
        &server,
        Some(&admin),
        "GET",
        "/m/route-probe/headers",
        &smuggled,
        None,
    ));
    assert_eq!(leaks(&seen), Vec::<String>::new(), "{seen:?}");
    assert!(
        seen.contains(&"x-runcell-user: admin".to_owned()),
        "{seen:?}"
    );
    assert!(seen.contains(&"x-custom: kept".to_owned()), "{seen:?}");
    assert!(seen.contains(&"cookie: theme=dark".to_owned()), "{seen:?}");

    // A public route (2.0.0, approved): a real admin token sent to it, however it is
    // sent, never reaches the module, which could replay it against the API.
    let bytes = std::fs::read(guests::guest("route-probe-v2")).unwrap();
    let upgraded = server.post_bytes("/api/v1/modules?approve=true", "application/wasm", &bytes);
    assert_eq!(upgraded.status, 201, "{}", upgraded.body);
    let seen = headers_seen(&call(
        &server,
        Some(&admin),
        "GET",
        "/m/route-probe/headers",
        &smuggled,
        None,
    ));
    assert_eq!(leaks(&seen), Vec::<String>::new(), "{seen:?}");
    assert!(
        !seen.iter().any(|line| line.starts_with("authorization:")),
        "{seen:?}"
    );
    assert!(
        !seen.iter().any(|line| line.starts_with("x-runcell-")),
        "{seen:?}"
    );
    assert!(seen.contains(&"x-custom: kept".to_owned()), "{seen:?}");
    assert!(seen.contains(&"cookie: theme=dark".to_owned()), "{seen:?}");
    // The token was real: the API still takes it.
    assert_eq!(server.get("/api/v1/auth/me").status, 200);
}
