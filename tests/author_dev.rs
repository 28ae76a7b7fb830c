//! `runcell dev` as an author runs it: the built binary in a new project, with the server
//! it starts for itself, the real cargo toolchain, edits to the source, and Ctrl-C.

#[path = "support/guests.rs"]
mod guests;
#[allow(
    dead_code,
    reason = "shared with other test binaries, each of which uses a different part of it"
)]
#[path = "support/server.rs"]
mod server;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use server::Server;

/// Generous: the first build of the SDK in a cold target directory takes most of a minute.
const FIRST_RUN: Duration = Duration::from_secs(300);
const NEXT_RUN: Duration = Duration::from_secs(120);
const EXIT: Duration = Duration::from_secs(30);

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the host crate sits in the workspace")
        .join("sdk")
}

/// The same target directory as the `runcell new` tests: only the first run compiles
/// the SDK.
fn project_target_dir() -> PathBuf {
    guests::guest_target_dir()
        .parent()
        .expect("the guests' target directory has a parent")
        .join("new-projects")
}

/// A `runcell dev` process and every line it printed so far, stdout and stderr together.
struct Dev {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Dev {
    /// Starts `runcell dev` in `project` with no stored login, so it starts its own server.
    fn start(project: &Path, config: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_runcell"))
            .arg("dev")
            .args(args)
            .current_dir(project)
            .env("CARGO_TARGET_DIR", project_target_dir())
            .env("RUNCELL_CONFIG_DIR", config)
            .env_remove("RUNCELL_SERVER")
            .env_remove("RUNCELL_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (sender, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for stream in [
            Box::new(stdout) as Box<dyn std::io::Read + Send>,
            Box::new(stderr),
        ] {
            let sender = sender.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if sender.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first line from now on that satisfies `wanted`; fails with everything seen.
    fn wait_for(&mut self, what: &str, timeout: Duration, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if wanted(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "runcell dev never printed {what}; it printed:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Where the dev server listens and its directory, from dev's first line.
    fn server(&mut self) -> (String, PathBuf) {
        let line = self.wait_for("its server", FIRST_RUN, |line| {
            line.starts_with("dev server ")
        });
        let rest = line.strip_prefix("dev server http://").unwrap();
        let (address, rest) = rest.split_once(' ').unwrap();
        let dir = rest
            .strip_prefix("(data in ")
            .and_then(|rest| rest.split_once(';'))
            .map(|(dir, _)| PathBuf::from(dir))
            .unwrap();
        (address.to_owned(), dir)
    }

    fn assert_running(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "runcell dev ended; it printed:\n{}",
            self.seen.join("\n")
        );
    }

    /// Sends SIGINT, as Ctrl-C does, and waits for the process to end.
    fn interrupt(&mut self) {
        let sent = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + EXIT;
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "runcell dev did not end on SIGINT"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        // A failed assertion must not leave the process (and its server) behind.
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill")
                .args(["-INT", &self.child.id().to_string()])
                .status();
            let _ = self.child.wait();
        }
    }
}

/// A new project named `name`; each test its own name, since the projects share a target
/// directory and cargo names the `.wasm` after the package.
fn new_project(work: &Path, name: &str) -> PathBuf {
    let created = Command::new(env!("CARGO_BIN_EXE_runcell"))
        .args(["new", name, "--sdk-path"])
        .arg(sdk_dir())
        .current_dir(work)
        .env_remove("RUNCELL_SDK_PATH")
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    work.join(name)
}

/// Rewrites the greeting the template's job builds.
fn change_greeting(project: &Path, from: &str, to: &str) {
    let path = project.join("src/lib.rs");
    let source = std::fs::read_to_string(&path).unwrap();
    assert!(source.contains(from), "{source}");
    std::fs::write(&path, source.replace(from, to)).unwrap();
}

fn server_is_gone(address: &str, dir: &Path) {
    assert!(!dir.exists(), "{} is still there", dir.display());
    assert!(
        TcpStream::connect(address).is_err(),
        "something still listens on {address}"
    );
}

#[test]
fn dev_runs_the_job_again_after_each_edit_and_stops_its_server_on_ctrl_c() {
    let work = tempfile::tempdir().unwrap();
    let project = new_project(work.path(), "demo");
    let mut dev = Dev::start(
        &project,
        &work.path().join("config"),
        &["--input", r#"{"name": "Ada"}"#],
    );
    let (address, dir) = dev.server();
    assert!(address.starts_with("127.0.0.1:"), "{address}");
    assert!(dir.is_dir(), "{}", dir.display());

    dev.wait_for("the first build", FIRST_RUN, |line| {
        line.starts_with("built demo 0.1.0 in ")
    });
    dev.wait_for("the push", NEXT_RUN, |line| {
        line.starts_with("pushed demo 0.1.0 (upload 1,")
    });
    dev.wait_for("the job's creation", NEXT_RUN, |line| {
        line == "created job dev-demo-greet"
    });
    dev.wait_for("the run", NEXT_RUN, |line| line.starts_with("run "));
    dev.wait_for("the job's log line", NEXT_RUN, |line| {
        line == "INFO  greeted greeting=Hello, Ada!"
    });
    dev.wait_for("the first result", NEXT_RUN, |line| {
        line.starts_with("completed in ") && line.ends_with(r#": {"greeting":"Hello, Ada!"}"#)
    });
    dev.wait_for("that it watches", NEXT_RUN, |line| {
        line.starts_with("watching ")
    });

    change_greeting(&project, "Hello, {name}!", "Howdy, {name}!");
    dev.wait_for("the second push", NEXT_RUN, |line| {
        line.starts_with("pushed demo 0.1.0 (upload 2,")
    });
    dev.wait_for("the new result", NEXT_RUN, |line| {
        line.starts_with("completed in ") && line.ends_with(r#": {"greeting":"Howdy, Ada!"}"#)
    });
    let created = dev
        .seen
        .iter()
        .filter(|line| line.starts_with("created job"))
        .count();
    assert_eq!(created, 1, "the job is created once, then reused");

    dev.interrupt();
    server_is_gone(&address, &dir);
}

#[test]
fn a_build_error_is_reported_and_the_loop_runs_again_once_fixed() {
    let work = tempfile::tempdir().unwrap();
    let project = new_project(work.path(), "mended");
    let mut dev = Dev::start(&project, &work.path().join("config"), &["--job", "greet"]);
    let (address, dir) = dev.server();
    dev.wait_for("the first result", FIRST_RUN, |line| {
        line.starts_with("completed in ") && line.ends_with(r#": {"greeting":"Hello, world!"}"#)
    });
    dev.wait_for("that it watches", NEXT_RUN, |line| {
        line.starts_with("watching ")
    });

    let path = project.join("src/lib.rs");
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{good}\nthis is not rust\n")).unwrap();
    dev.wait_for("the build failure", NEXT_RUN, |line| {
        line.starts_with("runcell dev: build failed")
    });
    // The failure (stderr) and the next "watching" (stdout) may arrive in either order;
    // the process stays up either way.
    std::thread::sleep(Duration::from_secs(1));
    dev.assert_running();

    std::fs::write(&path, good.replace("\"Hello, world!\"", "\"Hi, world!\"")).unwrap();
    dev.wait_for("the result of the fixed build", NEXT_RUN, |line| {
        line.starts_with("completed in ") && line.ends_with(r#": {"greeting":"Hi, world!"}"#)
    });

    dev.interrupt();
    server_is_gone(&address, &dir);
}

#[test]
fn dev_on_a_given_server_pushes_and_runs_there_and_leaves_that_server_running() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let project = new_project(work.path(), "remote");
    let base = server.url("");
    let mut dev = Dev::start(
        &project,
        &work.path().join("config"),
        &[
            "--server",
            &base,
            "--token",
            server.token(),
            "--input",
            r#"{"name": "Bo"}"#,
        ],
    );
    dev.wait_for("the push", FIRST_RUN, |line| {
        line.starts_with("pushed remote 0.1.0 (upload 1,")
    });
    dev.wait_for("the result", NEXT_RUN, |line| {
        line.starts_with("completed in ") && line.ends_with(r#": {"greeting":"Hello, Bo!"}"#)
    });
    assert!(
        !dev.seen.iter().any(|line| line.starts_with("dev server ")),
        "a server was given, so none of its own: {:?}",
        dev.seen
    );
    dev.interrupt();

    // The job and its run live on the given server, which dev leaves running.
    let jobs = server.get("/api/v1/jobs");
    assert_eq!(jobs.status, 200, "{}", jobs.body);
    let job = jobs.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|job| job["name"] == "dev-remote-greet")
        .unwrap_or_else(|| panic!("no dev job on the server: {}", jobs.body))
        .clone();
    let runs = server.executions(&format!("jobId={}", job["id"].as_str().unwrap()));
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["status"], "COMPLETED", "{runs:?}");
}

#[test]
fn dev_on_a_given_server_approves_what_the_module_asks_for_only_when_told_to() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let project = new_project(work.path(), "asking");
    // Ask for the key-value store: something only an admin's approval grants.
    change_greeting(
        &project,
        "    jobs: [",
        "    capabilities: { key_value: true },\n    jobs: [",
    );
    let base = server.url("");
    let given = |approve: bool| {
        let mut args = vec!["--server", base.as_str(), "--token", server.token()];
        if approve {
            args.push("--approve");
        }
        args
    };

    let mut dev = Dev::start(&project, &work.path().join("config"), &given(false));
    let waiting = dev.wait_for("the refusal to run", FIRST_RUN, |line| {
        line.starts_with("awaiting approval: ")
    });
    assert!(waiting.contains("not run"), "{waiting}");
    assert!(waiting.contains("--approve"), "{waiting}");
    dev.interrupt();
    assert!(
        !dev.seen
            .iter()
            .any(|line| line.starts_with("completed in ")),
        "it ran without an approval: {:?}",
        dev.seen
    );
    let module = server.get("/api/v1/modules/asking");
    assert!(
        !module.body["awaitingApproval"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{}",
        module.body
    );

    let mut dev = Dev::start(&project, &work.path().join("config"), &given(true));
    dev.wait_for("the approval", NEXT_RUN, |line| {
        line.starts_with("approved: ")
    });
    dev.wait_for("the result", NEXT_RUN, |line| {
        line.starts_with("completed in ") && line.ends_with(r#": {"greeting":"Hello, world!"}"#)
    });
    dev.interrupt();
    let module = server.get("/api/v1/modules/asking");
    assert_eq!(
        module.body["awaitingApproval"],
        serde_json::json!([]),
        "{}",
        module.body
    );
    assert_eq!(
        module.body["approvedCapabilities"]["keyValue"], true,
        "{}",
        module.body
    );
}
