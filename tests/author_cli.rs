//! The author's server-facing commands end to end: the built `runcell` binary as a user
//! runs it (`login`, `push`, `job create`, `job run --follow`, `logs`, the lists,
//! `logout`), each with its own config directory, against a real `runcell serve`.

#[path = "support/guests.rs"]
mod guests;
#[allow(
    dead_code,
    reason = "shared with other test binaries, each of which uses a different part of it"
)]
#[path = "support/server.rs"]
mod server;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use server::{ADMIN_PASSWORD, Server, ServerOptions};

/// What one command did.
#[derive(Debug)]
struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

/// A user's machine: a config directory of its own, and the server it talks to.
struct Author {
    config: TempDir,
    server: String,
}

impl Author {
    fn of(server: &Server) -> Self {
        Self {
            config: tempfile::tempdir().unwrap(),
            server: server.url(""),
        }
    }

    fn credentials_path(&self) -> PathBuf {
        self.config.path().join("credentials.json")
    }

    fn credentials(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.credentials_path()).unwrap()).unwrap()
    }

    /// Runs `runcell args` with nothing on stdin (not a terminal).
    fn run(&self, args: &[&str]) -> Outcome {
        self.run_with_stdin(args, None)
    }

    fn run_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Outcome {
        let mut child = Command::new(env!("CARGO_BIN_EXE_runcell"))
            .args(args)
            .env("RUNCELL_CONFIG_DIR", self.config.path())
            .env_remove("RUNCELL_SERVER")
            .env_remove("RUNCELL_TOKEN")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("runcell starts");
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        let output = child.wait_with_output().unwrap();
        Outcome {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    fn login(&self) {
        let done = self.run_with_stdin(
            &[
                "login",
                "--server",
                &self.server,
                "--username",
                "admin",
                "--password-stdin",
            ],
            Some(&format!("{ADMIN_PASSWORD}\n")),
        );
        assert_eq!(done.code, 0, "{done:?}");
    }

    /// Runs `args`, which must succeed; returns what it printed on stdout.
    fn ok(&self, args: &[&str]) -> String {
        let done = self.run(args);
        assert_eq!(done.code, 0, "runcell {args:?}: {done:?}");
        done.stdout
    }
}

fn guest(package: &str) -> String {
    guests::guest(package).to_string_lossy().into_owned()
}

/// Asserts `done` failed with `code` and said why in one line starting `prefix`.
fn fails_in_one_line(done: &Outcome, code: i32, prefix: &str) {
    assert_eq!(done.code, code, "{done:?}");
    assert_eq!(done.stderr.lines().count(), 1, "{done:?}");
    assert!(done.stderr.starts_with(prefix), "{done:?}");
    assert!(!done.stderr.contains('{'), "no JSON dump: {done:?}");
}

#[test]
fn an_author_logs_in_pushes_a_module_and_follows_a_run_to_its_end() {
    let server = Server::start();
    let author = Author::of(&server);
    author.login();
    let mode = std::fs::metadata(author.credentials_path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "only its owner may read the tokens");

    let pushed = author.ok(&["push", &guest("hello")]);
    assert!(pushed.starts_with("pushed hello 0.1.0 ("), "{pushed}");
    assert!(pushed.contains("  job greet: "), "{pushed}");
    assert!(pushed.contains("asks for: nothing"), "{pushed}");
    let created = author.ok(&[
        "job", "create", "greeter", "--module", "hello", "--job", "greet",
    ]);
    assert!(created.starts_with("created job greeter ("), "{created}");

    let run = author.run(&[
        "job",
        "run",
        "greeter",
        "--input",
        r#"{"name":"cli"}"#,
        "--follow",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines,
        ["INFO  greeting name=cli", r#"{"greeting":"Hello, cli!"}"#],
        "{run:?}"
    );

    let modules = author.ok(&["modules", "list"]);
    assert!(
        modules.lines().nth(1).unwrap().starts_with("hello  "),
        "{modules}"
    );
    let jobs: Value =
        serde_json::from_str(&author.ok(&["jobs", "list", "--output", "json"])).unwrap();
    assert_eq!(jobs[0]["name"], "greeter", "{jobs}");
    let executions: Value = serde_json::from_str(&author.ok(&[
        "executions",
        "list",
        "--job",
        "greeter",
        "--status",
        "completed",
        "--output",
        "json",
    ]))
    .unwrap();
    assert_eq!(executions.as_array().unwrap().len(), 1, "{executions}");
    let execution = executions[0]["id"].as_str().unwrap();
    assert_eq!(author.ok(&["logs", execution]), "INFO  greeting name=cli\n");
    fails_in_one_line(
        &author.run(&["cancel", execution]),
        7,
        "runcell cancel: execution",
    );

    // Without --follow: the execution's id, for a script to follow later.
    let started = author.ok(&["job", "run", "greeter"]);
    let id = started.trim();
    let followed = author.run(&["logs", id, "--follow"]);
    assert_eq!(followed.code, 0, "{followed:?}");
    assert!(
        followed.stdout.starts_with("INFO  greeting name=world\n"),
        "{followed:?}"
    );

    let logged_out = author.run(&["logout"]);
    assert_eq!(logged_out.code, 0, "{logged_out:?}");
    assert!(!author.credentials_path().exists());
    fails_in_one_line(
        &author.run(&["modules", "list"]),
        2,
        "runcell modules list: not logged in;",
    );
}

#[test]
fn a_followed_run_exits_with_the_code_of_its_final_state() {
    let server = Server::start();
    let author = Author::of(&server);
    author.login();
    let pushed = author.ok(&["push", &guest("hostile"), "--approve", "--yes"]);
    assert!(pushed.contains("approved hostile"), "{pushed}");
    let cases: [(&str, &[&str], i32, &str); 6] = [
        ("fail-permanent", &[], 1, "failed"),
        ("fail-invalid-input", &[], 1, "failed"),
        ("trap", &[], 4, "TRAP"),
        ("bad-output", &[], 4, "INVALID_OUTPUT"),
        ("memory-bomb", &[], 3, "MEMORY_LIMIT_EXCEEDED"),
        // A wall-clock limit far below what the loop's fuel lasts.
        (
            "spin",
            &["--timeout-ms", "100", "--fuel", "100000000000"],
            3,
            "timed out",
        ),
    ];
    for (job, limits, code, said) in cases {
        let mut create = vec!["job", "create", job, "--module", "hostile", "--job", job];
        create.extend_from_slice(limits);
        create.push("--no-schedule");
        author.ok(&create);
        let run = author.run(&["job", "run", job, "--follow"]);
        assert_eq!(run.code, code, "{job}: {run:?}");
        assert!(run.stderr.contains(said), "{job}: {run:?}");
    }
}

#[test]
fn pushing_an_upgrade_that_asks_for_more_shows_the_diff_and_waits_for_yes() {
    let server = Server::start();
    let author = Author::of(&server);
    author.login();
    author.ok(&["push", &guest("route-probe"), "--approve", "--yes"]);

    let refused = author.run(&["push", &guest("route-probe-v2"), "--approve"]);
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused
            .stdout
            .contains("changes since 1.0.0:\n  + routes public\n  - routes authenticated\n"),
        "{refused:?}"
    );
    assert!(
        refused
            .stdout
            .contains("awaiting approval: public HTTP routes"),
        "{refused:?}"
    );
    assert!(
        refused.stderr.ends_with(
            "runcell push: not approved: stdin is not a terminal to ask on; pass --yes to approve\n"
        ),
        "{refused:?}"
    );
    let module = server.get("/api/v1/modules/route-probe").body;
    assert_eq!(module["version"], "2.0.0");
    assert_eq!(
        module["awaitingApproval"],
        serde_json::json!(["public HTTP routes"])
    );

    // Without --approve the upload stands and says who must act.
    let again = author.ok(&["push", &guest("route-probe-v2")]);
    assert!(
        again.contains("awaiting approval: public HTTP routes"),
        "{again}"
    );

    let approved = author.ok(&["push", &guest("route-probe-v2"), "--approve", "--yes"]);
    assert!(
        approved.contains("approved route-probe 2.0.0"),
        "{approved}"
    );
    let module = server.get("/api/v1/modules/route-probe").body;
    assert_eq!(module["awaitingApproval"], serde_json::json!([]));
}

#[test]
fn an_expired_access_token_is_refreshed_without_asking() {
    let server = Server::start_with(ServerOptions {
        env: vec![("RUNCELL_ACCESS_TOKEN_TTL".into(), "1s".into())],
        ..ServerOptions::default()
    });
    let author = Author::of(&server);
    author.login();
    let first = author.credentials();

    // The server sees the token expire while the stored expiry says it is valid: its
    // `401` makes the client refresh and send the request again.
    let mut stale = first.clone();
    stale["accessExpiresAt"] = Value::from(i64::MAX / 2);
    std::fs::write(author.credentials_path(), stale.to_string()).unwrap();
    std::thread::sleep(Duration::from_millis(1_500));
    author.ok(&["modules", "list"]);
    let second = author.credentials();
    assert_ne!(second["accessToken"], first["accessToken"]);
    assert_ne!(second["refreshToken"], first["refreshToken"]);

    // The stored expiry has passed: refreshed before the request is sent.
    let mut expired = second.clone();
    expired["accessExpiresAt"] = Value::from(0);
    std::fs::write(author.credentials_path(), expired.to_string()).unwrap();
    author.ok(&["jobs", "list"]);
    let third = author.credentials();
    assert_ne!(third["refreshToken"], second["refreshToken"]);
    let mode = std::fs::metadata(author.credentials_path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "a refreshed file stays private");
}

#[test]
fn mistakes_give_one_clear_line_and_a_non_zero_exit() {
    let server = Server::start();
    let author = Author::of(&server);

    let nowhere = author.run_with_stdin(
        &[
            "login",
            "--server",
            "http://127.0.0.1:1",
            "--username",
            "admin",
            "--password-stdin",
        ],
        Some("whatever\n"),
    );
    fails_in_one_line(
        &nowhere,
        6,
        "runcell login: cannot reach http://127.0.0.1:1:",
    );

    let refused = author.run_with_stdin(
        &[
            "login",
            "--server",
            &author.server,
            "--username",
            "admin",
            "--password-stdin",
        ],
        Some("not the password\n"),
    );
    fails_in_one_line(&refused, 7, "runcell login: ");
    assert!(refused.stderr.ends_with("(HTTP 401)\n"), "{refused:?}");
    assert!(
        !author.credentials_path().exists(),
        "a refused login stores nothing"
    );

    author.login();
    fails_in_one_line(
        &author.run(&["push", "/nonexistent/module.wasm"]),
        6,
        "runcell push: cannot read /nonexistent/module.wasm:",
    );
    fails_in_one_line(
        &author.run(&["job", "run", "nightly", "--follow"]),
        2,
        "runcell job run: no job named `nightly`",
    );
    let unknown_module = author.run(&["job", "create", "x", "--module", "nope", "--job", "greet"]);
    fails_in_one_line(&unknown_module, 7, "runcell job create: ");
    assert!(
        unknown_module.stderr.ends_with("(HTTP 422)\n"),
        "{unknown_module:?}"
    );
    fails_in_one_line(
        &author.run(&[
            "modules",
            "list",
            "--server",
            "http://127.0.0.1:1",
            "--token",
            "t",
        ]),
        6,
        "runcell modules list: cannot reach http://127.0.0.1:1:",
    );
    fails_in_one_line(
        &author.run(&["jobs", "list", "--token", "not-a-token"]),
        7,
        "runcell jobs list: ",
    );
}
