//! Modules in Python and JavaScript end to end: `runcell new --lang python|js`, `runcell
//! build` with the real toolchains (componentize-py, componentize-js; `./dev test`
//! installs them), a push to a real server and a followed run, and the routes templates
//! served over HTTP; the Python and JavaScript examples run on a server, the JavaScript
//! one against an upstream on loopback.

#[path = "support/components.rs"]
mod components;
#[allow(dead_code, reason = "only its directories are used here")]
#[path = "support/guests.rs"]
mod guests;
#[path = "support/peers.rs"]
mod peers;
#[allow(
    dead_code,
    reason = "shared with other test binaries, each of which uses a different part of it"
)]
#[path = "support/server.rs"]
mod server;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;

use server::{ADMIN_PASSWORD, Server, ServerOptions};

/// Runs may start a module's interpreter from scratch; generous, for shared machines.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `runcell args` in `dir`, as an author with their own config directory, the toolchains
/// on PATH.
fn runcell(dir: &Path, config: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_runcell"))
        .args(args)
        .current_dir(dir)
        .env("PATH", components::toolchain_path())
        .env("RUNCELL_CONFIG_DIR", config)
        .env_remove("RUNCELL_SERVER")
        .env_remove("RUNCELL_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runcell starts");
    // Only `login --password-stdin` reads it.
    let _ = child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{ADMIN_PASSWORD}\n").as_bytes());
    child.wait_with_output().unwrap()
}

fn succeeded(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// `runcell new NAME --lang LANG`, `runcell build`, then login, push, job create with a
/// `greeting` setting and `job run --follow`, asserting what an author sees at each step.
fn new_build_push_and_run(lang: &str, name: &str, marker: &str) {
    let work = tempfile::tempdir().unwrap();
    let config = tempfile::tempdir().unwrap();
    let created = runcell(work.path(), config.path(), &["new", name, "--lang", lang]);
    succeeded(&created);
    let project = work.path().join(name);
    for file in [
        marker,
        "README.md",
        ".gitignore",
        "wit/module.wit",
        "wit/deps/http/http.wit",
    ] {
        assert!(project.join(file).is_file(), "{file} is missing");
    }

    let built = succeeded(&runcell(&project, config.path(), &["build"]));
    assert!(built.starts_with(&format!("{name} 0.1.0: ")), "{built}");
    assert!(built.contains("  job greet: "), "{built}");
    assert!(built.contains("asks for: key-value"), "{built}");
    let wasm = PathBuf::from(built.lines().last().unwrap());
    assert!(wasm.ends_with(format!("build/{name}.wasm")), "{built}");
    assert!(project.join(&wasm).is_file(), "{built}");

    let server = Server::start();
    login(&server, &project, config.path());
    // Without a file: the one `runcell build` left in build/.
    let pushed = succeeded(&runcell(
        &project,
        config.path(),
        &["push", "--approve", "--yes"],
    ));
    assert!(
        pushed.contains(&format!("approved {name} 0.1.0")),
        "{pushed}"
    );
    succeeded(&runcell(
        &project,
        config.path(),
        &[
            "job",
            "create",
            "greeter",
            "--module",
            name,
            "--job",
            "greet",
            "--config",
            "greeting=Hi",
        ],
    ));
    for count in [1, 2] {
        let run = succeeded(&runcell(
            &project,
            config.path(),
            &[
                "job",
                "run",
                "greeter",
                "--input",
                r#"{"name":"Ada"}"#,
                "--follow",
            ],
        ));
        let lines: Vec<&str> = run.lines().collect();
        assert_eq!(lines.len(), 2, "{run}");
        // Fields print sorted by key.
        assert_eq!(
            lines[0],
            format!("INFO  greeted count={count} greeting=Hi, Ada!")
        );
        let result: Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(result, json!({"greeting": "Hi, Ada!", "count": count}));
    }

    let refused = runcell(
        &project,
        config.path(),
        &[
            "job",
            "run",
            "greeter",
            "--input",
            r#"{"name":" "}"#,
            "--follow",
        ],
    );
    assert!(
        !refused.status.success(),
        "an empty name is the job's error"
    );
    assert!(
        text(&refused.stderr).contains("name must be a non-empty string"),
        "{}{}",
        text(&refused.stdout),
        text(&refused.stderr)
    );
}

fn login(server: &Server, dir: &Path, config: &Path) {
    let url = server.url("");
    succeeded(&runcell(
        dir,
        config,
        &[
            "login",
            "--server",
            &url,
            "--username",
            "admin",
            "--password-stdin",
        ],
    ));
}

#[test]
fn a_new_python_project_builds_pushes_and_runs() {
    new_build_push_and_run("python", "greeter-py", "pyproject.toml");
}

#[test]
fn a_new_js_project_builds_pushes_and_runs() {
    new_build_push_and_run("js", "greeter-js", "package.json");
}

#[test]
fn build_names_the_toolchain_to_install_when_it_is_missing() {
    let work = tempfile::tempdir().unwrap();
    let config = tempfile::tempdir().unwrap();
    for (lang, missing) in [
        (
            "python",
            "componentize-py is not installed; install it in a venv: `python3 -m venv .venv && .venv/bin/pip install componentize-py==",
        ),
        (
            "js",
            "componentize-js is not installed; run `npm install` in the project (needs Node.js)",
        ),
    ] {
        succeeded(&runcell(
            work.path(),
            config.path(),
            &["new", lang, "--lang", lang],
        ));
        let built = Command::new(env!("CARGO_BIN_EXE_runcell"))
            .arg("build")
            .current_dir(work.path().join(lang))
            .env("PATH", work.path())
            .output()
            .unwrap();
        assert_eq!(built.status.code(), Some(6), "{built:?}");
        let stderr = text(&built.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with(&format!("error: {missing}")), "{stderr}");
    }

    // A pyproject.toml or package.json of something else is not taken for a module.
    let other = work.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(
        other.join("package.json"),
        r#"{"name": "other", "version": "1.0.0"}"#,
    )
    .unwrap();
    let refused = runcell(&other, config.path(), &["build"]);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(
        text(&refused.stderr).contains("no `runcell` field"),
        "{refused:?}"
    );
}

#[test]
fn a_new_python_routes_project_serves_its_greeting_over_http_and_as_a_job() {
    routes_project_serves_its_greeting_over_http_and_as_a_job("python", "greeter-routes");
}

#[test]
fn a_new_js_routes_project_serves_its_greeting_over_http_and_as_a_job() {
    routes_project_serves_its_greeting_over_http_and_as_a_job("js", "greeter-routes-js");
}

/// `runcell new NAME --lang LANG --template routes` and `runcell build`, uploaded to a
/// server: the route answers an admin's token and refuses none, and the job still runs.
fn routes_project_serves_its_greeting_over_http_and_as_a_job(lang: &str, name: &str) {
    let work = tempfile::tempdir().unwrap();
    let config = tempfile::tempdir().unwrap();
    succeeded(&runcell(
        work.path(),
        config.path(),
        &["new", name, "--lang", lang, "--template", "routes"],
    ));
    let project = work.path().join(name);
    let built = succeeded(&runcell(&project, config.path(), &["build"]));
    assert!(
        built.contains("asks for: key-value, routes authenticated"),
        "{built}"
    );
    let server = Server::start();
    server.upload(&project.join(format!("build/{name}.wasm")));

    let greeted = server.get(&format!("/m/{name}/greet?name=Ada"));
    assert_eq!(greeted.status, 200, "{}", greeted.body);
    assert_eq!(greeted.content_type, "application/json");
    assert_eq!(greeted.body, json!({"greeting": "Hello, Ada!"}));
    let by_default = server.get(&format!("/m/{name}/greet"));
    assert_eq!(by_default.body, json!({"greeting": "Hello, world!"}));
    let blank = server.get(&format!("/m/{name}/greet?name=%20"));
    assert_eq!(blank.status, 400, "{}", blank.body);
    assert_eq!(
        blank.body["error"]["code"], "invalid_input",
        "{}",
        blank.body
    );
    assert_eq!(server.get(&format!("/m/{name}/nothing")).status, 404);
    let posted = server.request("POST", &format!("/m/{name}/greet"), None);
    assert_eq!(posted.status, 405, "{}", posted.body);
    assert_eq!(allowed_methods(&server, &format!("/m/{name}/greet")), "GET");
    let anonymous = server.request_as(None, "GET", &format!("/m/{name}/greet?name=Ada"), None);
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);

    let job = server.create_job(&json!({
        "name": "greeter", "module": name, "job": "greet",
    }));
    let (done, _) = run_to_the_end(
        &server,
        job["id"].as_str().unwrap(),
        Some(json!({"name": "Ada"})),
    );
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(
        done["result"],
        json!({"greeting": "Hello, Ada!", "count": 1})
    );
}

/// The `allow` header of an admin's POST to `path` (`Reply` keeps no other headers).
fn allowed_methods(server: &Server, path: &str) -> String {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let response = agent
        .post(&server.url(path))
        .header("authorization", &format!("Bearer {}", server.token()))
        .send_empty()
        .unwrap();
    let allow = response.headers().get("allow");
    allow.map_or_else(String::new, |value| value.to_str().unwrap().to_owned())
}

/// A server whose modules may reach loopback, the example uploaded and approved.
fn server_with(example: &str) -> Server {
    let server = Server::start_with(ServerOptions {
        env: vec![("RUNCELL_OUTBOUND_ALLOW".into(), "127.0.0.1".into())],
        ..ServerOptions::default()
    });
    server.upload(&components::example(example));
    server
}

/// Runs job `id` with `input` to its end; returns the execution and its log messages
/// with their fields.
fn run_to_the_end(server: &Server, id: &str, input: Option<Value>) -> (Value, Vec<Value>) {
    let execution = server.execute(id, input);
    let done = server.wait_final(&execution, RUN_TIMEOUT);
    (done, server.logs(&execution))
}

#[test]
fn the_python_example_counts_visits_in_its_store_and_ranks_them() {
    let server = server_with("visit-counter");
    let record = server.create_job(&json!({
        "name": "record", "module": "visit-counter", "job": "record-visits",
        "config": {"site": "shop"},
    }));
    let record = record["id"].as_str().unwrap();
    let (first, logs) = run_to_the_end(&server, record, Some(json!({"pages": ["/", "/a", "/"]})));
    assert_eq!(first["status"], "COMPLETED", "{first}");
    assert_eq!(
        first["result"],
        json!({"site": "shop", "recorded": 3, "totals": {"/": 2, "/a": 1}})
    );
    assert!(
        logs.iter().any(|line| line["message"] == "recorded visits"),
        "{logs:?}"
    );
    let (second, _) = run_to_the_end(&server, record, Some(json!({"pages": ["/a", "/a", "/b"]})));
    assert_eq!(
        second["result"]["totals"],
        json!({"/a": 3, "/b": 1}),
        "counts carry over in the store: {second}"
    );
    let (invalid, _) = run_to_the_end(&server, record, Some(json!({"pages": ["no-slash"]})));
    assert_eq!(invalid["status"], "FAILED", "{invalid}");
    assert_eq!(invalid["errorKind"], "INVALID_INPUT", "{invalid}");

    let top = server.create_job(&json!({
        "name": "top", "module": "visit-counter", "job": "top-pages",
        "config": {"site": "shop", "top": "2"},
    }));
    let (ranked, _) = run_to_the_end(&server, top["id"].as_str().unwrap(), None);
    assert_eq!(
        ranked["result"],
        json!({"site": "shop", "pages": [{"page": "/a", "visits": 3}, {"page": "/", "visits": 2}]}),
        "{ranked}"
    );
    // Another site's counts are its own.
    let other = server.create_job(&json!({
        "name": "top-other", "module": "visit-counter", "job": "top-pages",
        "config": {"site": "blog"},
    }));
    let (empty, _) = run_to_the_end(&server, other["id"].as_str().unwrap(), None);
    assert_eq!(
        empty["result"],
        json!({"site": "blog", "pages": []}),
        "{empty}"
    );
}

const BATCH: &str = r#"{"records": [
    {"id": "a", "name": "Alpha", "value": 2.5, "updatedAt": "2024-05-01T10:00:00Z"},
    {"id": "b", "name": "Beta", "value": -1}
]}"#;

const INVALID_BATCH: &str =
    r#"[{"id": "a", "name": "Alpha", "value": 1}, {"id": "b", "name": " ", "value": 2}]"#;

#[test]
fn the_js_port_of_hourly_sync_fetches_validates_and_stores_the_upstream_records() {
    let port = peers::json_server(vec![
        ("/v1/records", BATCH.to_owned()),
        ("/v1/invalid", INVALID_BATCH.to_owned()),
    ]);
    let upstream = format!("http://127.0.0.1:{port}");
    let server = server_with("data-sync-js");
    let module = server.get("/api/v1/modules/data-sync-js");
    assert_eq!(module.body["jobs"][0]["defaultSchedule"], "0 * * * *");
    // The module asks for api.example.com; the admin extends the grant to the loopback
    // upstream the job is set up with.
    let approved = server.post_json(
        "/api/v1/modules/data-sync-js/capabilities/approve",
        &json!({"outboundHosts": ["api.example.com", format!("127.0.0.1:{port}")]}),
    );
    assert_eq!(approved.status, 200, "{}", approved.body);

    let job = server.create_job(&json!({
        "name": "sync", "module": "data-sync-js", "job": "hourly-sync",
        "config": {"source-url": format!("{upstream}/v1/records")},
    }));
    let job = job["id"].as_str().unwrap();
    for total_syncs in [1, 2] {
        let (done, logs) = run_to_the_end(&server, job, None);
        assert_eq!(done["status"], "COMPLETED", "{done} {logs:?}");
        assert_eq!(done["result"]["recordsProcessed"], 2, "{done}");
        let completed = logs
            .iter()
            .find(|line| line["message"] == "sync completed")
            .unwrap_or_else(|| panic!("no `sync completed` line: {logs:?}"));
        // The cursor is read back from the store on every run.
        assert_eq!(
            completed["fields"]["totalSyncs"], total_syncs,
            "{completed}"
        );
    }

    let invalid = server.create_job(&json!({
        "name": "sync-invalid", "module": "data-sync-js", "job": "hourly-sync",
        "config": {"source-url": format!("{upstream}/v1/invalid")},
    }));
    let (failed, _) = run_to_the_end(&server, invalid["id"].as_str().unwrap(), None);
    assert_eq!(failed["status"], "FAILED", "{failed}");
    assert_eq!(failed["errorKind"], "PERMANENT", "{failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.ends_with("upstream sent an invalid batch: records[1].name: must not be empty"),
        "{failed}"
    );

    // What the store holds, through `runcell run --kv` against the same upstream.
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("state.json");
    let ran = local_sync(&work, &store, &format!("{upstream}/v1/records"), port);
    assert!(ran.status.success(), "{}", text(&ran.stderr));
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(&store).unwrap()).unwrap();
    let synced_at = stored["sync/cursor"]["lastSyncedAt"].as_str().unwrap();
    assert_eq!(
        stored["record/a"],
        json!({"id": "a", "name": "Alpha", "value": 2.5, "updatedAt": "2024-05-01T10:00:00Z", "syncedAt": synced_at})
    );
    assert_eq!(stored["record/b"]["value"], -1);
    assert_eq!(stored["sync/cursor"]["totalSyncs"], 1);
    assert_eq!(stored["sync/cursor"]["lastBatchSize"], 2);
}

fn local_sync(work: &TempDir, store: &Path, source: &str, port: u16) -> Output {
    Command::new(env!("CARGO_BIN_EXE_runcell"))
        .current_dir(work.path())
        .arg("run")
        .arg(components::example("data-sync-js"))
        .args(["hourly-sync", "--kv"])
        .arg(store)
        .args(["--config", &format!("source-url={source}")])
        .args([
            "--allow-host",
            &format!("127.0.0.1:{port}"),
            "--allow-private",
        ])
        .arg("--no-cache")
        .output()
        .unwrap()
}
