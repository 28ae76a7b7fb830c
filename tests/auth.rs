//! Authentication end to end: the real `runcell serve` and `runcell user`, over HTTP.

#[path = "support/guests.rs"]
mod guests;
#[allow(
    dead_code,
    reason = "shared with other test binaries, each of which uses a different part of it"
)]
#[path = "support/server.rs"]
mod server;

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use server::{Server, ServerOptions};

#[test]
fn the_first_start_prints_a_generated_admin_password_once_and_it_logs_in() {
    let mut server = Server::start_with(ServerOptions {
        generated_admin_password: true,
        ..ServerOptions::default()
    });
    let password = server
        .generated_admin_password()
        .expect("the password is printed");
    assert!(password.len() >= 24, "a strong password: {password}");
    // The harness logged in with it already; the API answers with the token.
    let me = server.get("/api/v1/auth/me");
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(me.body["user"]["username"], "admin");
    assert_eq!(me.body["user"]["role"], "admin");

    server.stop();
    server.restart();
    let output = server.output();
    assert_eq!(
        output.matches(password.as_str()).count(),
        1,
        "shown once, never again, never logged:\n{output}"
    );
    assert_eq!(server.get("/api/v1/auth/me").status, 200);
}

#[test]
fn every_api_route_needs_a_token_but_the_probes_do_not() {
    let server = Server::start();
    for path in ["/api/v1/jobs", "/api/v1/modules", "/api/v1/executions"] {
        let reply = server.request_as(None, "GET", path, None);
        assert_eq!(reply.status, 401, "{path}: {}", reply.body);
        assert_eq!(reply.code(), "unauthenticated");
    }
    let wrong = server.request_as(Some("not-a-token"), "GET", "/api/v1/jobs", None);
    assert_eq!(wrong.status, 401);
    for path in ["/healthz", "/readyz", "/api/v1/openapi.json"] {
        assert_eq!(
            server.request_as(None, "GET", path, None).status,
            200,
            "{path}"
        );
    }
}

#[test]
fn a_user_added_from_the_command_line_logs_in_with_their_role() {
    let server = Server::start();
    let mut add = Command::new(env!("CARGO_BIN_EXE_runcell"))
        .args([
            "user",
            "add",
            "ops",
            "--role",
            "operator",
            "--password-stdin",
        ])
        .arg("--data-dir")
        .arg(server.data_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    add.stdin
        .take()
        .unwrap()
        .write_all(b"operator password 1\n")
        .unwrap();
    let added = add.wait_with_output().unwrap();
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    assert!(String::from_utf8_lossy(&added.stdout).contains("created user `ops` (operator"));

    let token = server.login("ops", "operator password 1");
    let jobs = server.request_as(Some(&token), "GET", "/api/v1/jobs", None);
    assert_eq!(jobs.status, 200);
    let users = server.request_as(Some(&token), "GET", "/api/v1/users", None);
    assert_eq!(users.status, 403, "an operator does not manage users");

    // The same name twice is refused with a clear message and a non-zero exit.
    let again = Command::new(env!("CARGO_BIN_EXE_runcell"))
        .args(["user", "add", "ops", "--role", "viewer"])
        .arg("--data-dir")
        .arg(server.data_dir())
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}

#[test]
fn a_viewer_reads_but_cannot_run_or_change_anything() {
    let server = Server::start();
    let created = server.post_json(
        "/api/v1/users",
        &json!({"username": "watcher", "password": "viewer password 1", "role": "viewer"}),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let token = server.login("watcher", "viewer password 1");
    assert_eq!(
        server
            .request_as(Some(&token), "GET", "/api/v1/modules", None)
            .status,
        200
    );
    let body = json!({"name": "x", "module": "hello", "job": "greet"}).to_string();
    let create = server.request_as(
        Some(&token),
        "POST",
        "/api/v1/jobs",
        Some(("application/json", body.as_bytes())),
    );
    assert_eq!(create.status, 403, "{}", create.body);
    assert_eq!(create.code(), "forbidden");
}

#[test]
fn module_changes_are_in_the_audit_trail_with_who_made_them() {
    let server = Server::start();
    let hello = std::fs::read(guests::guest("hello")).unwrap();
    let uploaded = server.post_bytes("/api/v1/modules", "application/wasm", &hello);
    assert_eq!(uploaded.status, 201, "{}", uploaded.body);
    assert_eq!(server.post("/api/v1/modules/hello/disable").status, 200);
    assert_eq!(server.delete("/api/v1/modules/hello").status, 204);
    let audit = server.get("/api/v1/audit");
    assert_eq!(audit.status, 200, "{}", audit.body);
    let entries: Vec<(String, String, String)> = audit.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["target"].as_str().unwrap().to_owned(),
                e["actor"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for action in ["module.install", "module.disable", "module.remove"] {
        assert!(
            entries
                .iter()
                .any(|(a, t, who)| a == action && t == "hello" && who == "admin"),
            "{action} missing from {entries:?}"
        );
    }
}

#[test]
fn a_module_runs_only_once_an_admin_approved_what_it_asks_for() {
    let server = Server::start();
    let wasm = std::fs::read(guests::guest("data-sync")).unwrap();
    let uploaded = server.post_bytes("/api/v1/modules", "application/wasm", &wasm);
    assert_eq!(uploaded.status, 201, "{}", uploaded.body);
    let awaiting = uploaded.body["awaitingApproval"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        !awaiting.is_empty(),
        "data-sync asks for key-value and topics"
    );

    let job =
        server.create_job(&json!({"name": "health", "module": "data-sync", "job": "health-check"}));
    let id = job["id"].as_str().unwrap();
    let refused = server.wait_final(
        &server.execute(id, None),
        std::time::Duration::from_secs(20),
    );
    assert_eq!(refused["status"], "FAILED", "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("capabilities/approve"),
        "{refused}"
    );

    // An operator may upload, not approve.
    server.post_json(
        "/api/v1/users",
        &json!({"username": "ops", "password": "operator password 1", "role": "operator"}),
    );
    let operator = server.login("ops", "operator password 1");
    let denied = server.request_as(
        Some(&operator),
        "POST",
        "/api/v1/modules/data-sync/capabilities/approve",
        None,
    );
    assert_eq!(denied.status, 403, "{}", denied.body);
    let sneaky = server.request_as(
        Some(&operator),
        "POST",
        "/api/v1/modules?approve=true",
        Some(("application/wasm", &wasm)),
    );
    assert_eq!(sneaky.status, 403, "{}", sneaky.body);

    let approved = server.post("/api/v1/modules/data-sync/capabilities/approve");
    assert_eq!(approved.status, 200, "{}", approved.body);
    assert_eq!(approved.body["awaitingApproval"], json!([]));
    let ran = server.wait_final(
        &server.execute(id, None),
        std::time::Duration::from_secs(20),
    );
    assert_eq!(ran["status"], "COMPLETED", "{ran}");

    let audit = server.get("/api/v1/audit").body.to_string();
    assert!(audit.contains("module.capabilities.approve"), "{audit}");
}

/// A request with no token, for what the harness's replies leave out: the status, the
/// headers, the body as text.
fn raw(server: &Server, method: &str, path: &str, body: Option<&Value>) -> RawReply {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = server.url(path);
    let mut response = match body {
        Some(body) => agent
            .post(&url)
            .header("content-type", "application/json")
            .send(body.to_string().as_bytes()),
        None if method == "GET" => agent.get(&url).call(),
        None => agent.post(&url).send_empty(),
    }
    .unwrap_or_else(|err| panic!("{method} {path}: {err}"));
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    RawReply {
        status: response.status().as_u16(),
        cache_control: header("cache-control"),
        nosniff: header("x-content-type-options"),
        retry_after: header("retry-after"),
        body: response.body_mut().read_to_string().unwrap_or_default(),
    }
}

struct RawReply {
    status: u16,
    cache_control: Option<String>,
    nosniff: Option<String>,
    retry_after: Option<String>,
    body: String,
}

fn login_reply(server: &Server, username: &str, password: &str) -> RawReply {
    raw(
        server,
        "POST",
        "/api/v1/auth/login",
        Some(&json!({"username": username, "password": password})),
    )
}

#[test]
fn a_burst_of_wrong_passwords_gets_no_more_guesses_than_the_limit() {
    let server = Server::start();
    let created = server.post_json(
        "/api/v1/users",
        &json!({"username": "bob", "password": "bobs real password", "role": "viewer"}),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let answers: Vec<RawReply> = std::thread::scope(|scope| {
        let burst: Vec<_> = (0..30)
            .map(|_| scope.spawn(|| login_reply(&server, "bob", "a wrong password!")))
            .collect();
        burst.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let count = |status: u16| answers.iter().filter(|a| a.status == status).count();
    // A 401 is only ever answered after the password was hashed: these were guesses.
    assert_eq!(
        count(401),
        5,
        "{:?}",
        answers.iter().map(|a| &a.body).collect::<Vec<_>>()
    );
    assert_eq!(count(429), 25);
    assert!(
        answers
            .iter()
            .filter(|a| a.status == 429)
            .all(|a| a.retry_after.is_some())
    );
    // The right password is refused too from this address, for the window.
    assert_eq!(
        login_reply(&server, "bob", "bobs real password").status,
        429
    );
}

#[test]
fn usernames_log_in_in_any_case_and_cannot_be_taken_in_another() {
    let server = Server::start();
    let taken = server.post_json(
        "/api/v1/users",
        &json!({"username": "ADMIN", "password": "another password 1", "role": "admin"}),
    );
    assert_eq!(taken.status, 409, "{}", taken.body);
    let token = server.login("Admin", server::ADMIN_PASSWORD);
    let me = server.request_as(Some(&token), "GET", "/api/v1/auth/me", None);
    assert_eq!(me.body["user"]["username"], "admin");
}

#[test]
fn token_responses_are_never_stored_and_no_response_is_sniffed() {
    let server = Server::start();
    let login = login_reply(&server, "admin", server::ADMIN_PASSWORD);
    assert_eq!(login.status, 200, "{}", login.body);
    assert_eq!(login.cache_control.as_deref(), Some("no-store"));
    let session: Value = serde_json::from_str(&login.body).unwrap();
    let refreshed = raw(
        &server,
        "POST",
        "/api/v1/auth/refresh",
        Some(&json!({"refreshToken": session["refreshToken"]})),
    );
    assert_eq!(refreshed.status, 200, "{}", refreshed.body);
    assert_eq!(refreshed.cache_control.as_deref(), Some("no-store"));

    for path in [
        "/api/v1/openapi.json",
        "/api/docs",
        "/healthz",
        "/api/v1/jobs",
        "/nowhere",
    ] {
        let reply = raw(&server, "GET", path, None);
        assert_eq!(reply.nosniff.as_deref(), Some("nosniff"), "{path}");
    }
    assert_eq!(login.nosniff.as_deref(), Some("nosniff"));
}

#[cfg(unix)]
#[test]
fn the_embedded_data_dir_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let server = Server::start();
    let mode = |name: &str| {
        std::fs::metadata(server.data_dir().join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(""), 0o700);
    for name in ["runcell.db", "runcell.db-wal", "jwt-secret", "secret-key"] {
        assert_eq!(mode(name), 0o600, "{name}");
    }
}
