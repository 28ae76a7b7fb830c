//! `runcell new`, `runcell build` and `runcell run --kv/--event` as an author runs them:
//! the built binary, in a temporary directory, with the real cargo toolchain.

#[path = "support/guests.rs"]
mod guests;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the host crate sits in the workspace")
        .join("sdk")
}

/// Generated projects share one target directory across test runs, so only the first
/// run compiles the SDK.
fn project_target_dir() -> PathBuf {
    guests::guest_target_dir()
        .parent()
        .expect("the guests' target directory has a parent")
        .join("new-projects")
}

fn runcell(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_runcell"));
    command
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", project_target_dir())
        .env_remove("RUNCELL_SDK_PATH");
    command
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The error of a failed command: exactly one line on stderr.
fn one_line_error(output: &Output) -> String {
    assert!(!output.status.success(), "{output:?}");
    let stderr = text(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    stderr
}

#[test]
fn a_new_project_builds_runs_and_passes_its_own_tests() {
    let work = tempfile::tempdir().unwrap();
    let sdk = sdk_dir();
    let created = runcell(work.path(), &["new", "demo", "--sdk-path"])
        .arg(&sdk)
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    let project = work.path().join("demo");
    for file in ["Cargo.toml", "src/lib.rs", "README.md", ".gitignore"] {
        assert!(project.join(file).is_file(), "{file} is missing");
    }
    let manifest = std::fs::read_to_string(project.join("Cargo.toml")).unwrap();
    assert!(manifest.contains("crate-type = [\"cdylib\"]"), "{manifest}");
    assert!(manifest.contains(&format!(
        "path = \"{}\"",
        sdk.canonicalize().unwrap().display()
    )));

    let built = runcell(&project, &["build"]).output().unwrap();
    let stdout = text(&built.stdout);
    assert!(
        built.status.success(),
        "{}\n{}",
        stdout,
        text(&built.stderr)
    );
    assert!(stdout.starts_with("demo 0.1.0: "), "{stdout}");
    assert!(stdout.contains("  job greet: "), "{stdout}");
    assert!(stdout.contains("asks for: nothing"), "{stdout}");
    let wasm = PathBuf::from(stdout.lines().last().unwrap());
    assert!(wasm.is_file() && wasm.ends_with("demo.wasm"), "{stdout}");

    let ran = runcell(&project, &["run", "--no-cache"])
        .arg(&wasm)
        .args(["greet", "--input", r#"{"name": "Ada"}"#])
        .output()
        .unwrap();
    assert!(ran.status.success(), "{}", text(&ran.stderr));
    let output: Value = serde_json::from_slice(&ran.stdout).unwrap();
    assert_eq!(output, json!({"greeting": "Hello, Ada!"}));
    assert!(text(&ran.stderr).contains("INFO  greeted greeting=Hello, Ada!"));

    let refused = runcell(&project, &["run", "--no-cache"])
        .arg(&wasm)
        .args(["greet", "--input", r#"{"name": " "}"#])
        .output()
        .unwrap();
    assert_eq!(
        refused.status.code(),
        Some(1),
        "an empty name is the job's error"
    );

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let tested = Command::new(cargo)
        .args(["test", "--quiet"])
        .current_dir(&project)
        .env("CARGO_TARGET_DIR", project_target_dir())
        .output()
        .unwrap();
    assert!(tested.status.success(), "{}", text(&tested.stderr));
    assert!(
        text(&tested.stdout).contains("2 passed"),
        "{}",
        text(&tested.stdout)
    );
}

#[test]
fn the_routes_template_builds_a_module_that_serves_routes() {
    let work = tempfile::tempdir().unwrap();
    let created = runcell(
        work.path(),
        &["new", "greeter", "--template", "routes", "--sdk-path"],
    )
    .arg(sdk_dir())
    .output()
    .unwrap();
    assert!(created.status.success(), "{created:?}");
    let built = runcell(&work.path().join("greeter"), &["build"])
        .output()
        .unwrap();
    let stdout = text(&built.stdout);
    assert!(
        built.status.success(),
        "{}\n{}",
        stdout,
        text(&built.stderr)
    );
    assert!(
        stdout.contains("asks for: routes authenticated"),
        "{stdout}"
    );
}

#[test]
fn a_new_project_without_sdk_path_asks_for_the_published_sdk() {
    let work = tempfile::tempdir().unwrap();
    let created = runcell(work.path(), &["new", "demo"]).output().unwrap();
    assert!(created.status.success(), "{created:?}");
    let manifest = std::fs::read_to_string(work.path().join("demo/Cargo.toml")).unwrap();
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        manifest.contains(&format!("runcell-sdk = \"{version}\"")),
        "{manifest}"
    );
}

#[test]
fn new_refuses_a_non_empty_directory_a_bad_name_and_a_bad_sdk_path() {
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir(work.path().join("taken")).unwrap();
    std::fs::write(work.path().join("taken/notes.txt"), "mine").unwrap();

    let taken = runcell(work.path(), &["new", "taken"]).output().unwrap();
    assert!(one_line_error(&taken).contains("already exists and is not empty"));
    assert_eq!(
        std::fs::read_to_string(work.path().join("taken/notes.txt")).unwrap(),
        "mine"
    );
    assert!(!work.path().join("taken/Cargo.toml").exists());

    let bad_name = runcell(work.path(), &["new", "Not_A_Name"])
        .output()
        .unwrap();
    assert!(one_line_error(&bad_name).contains("is not a module name"));

    let bad_sdk = runcell(work.path(), &["new", "demo", "--sdk-path"])
        .arg(work.path().join("nowhere"))
        .output()
        .unwrap();
    assert!(one_line_error(&bad_sdk).contains("--sdk-path"));
}

#[test]
fn build_names_what_to_install_when_the_toolchain_is_missing() {
    let work = tempfile::tempdir().unwrap();
    let created = runcell(work.path(), &["new", "demo"]).output().unwrap();
    assert!(created.status.success());
    let project = work.path().join("demo");

    let no_cargo = runcell(&project, &["build"])
        .env("CARGO", work.path().join("no-such-cargo"))
        .output()
        .unwrap();
    assert!(one_line_error(&no_cargo).contains("cargo is not installed"));

    // A rustc whose sysroot has no wasm32-wasip2 standard library.
    let bin = work.path().join("bin");
    let sysroot = work.path().join("sysroot");
    std::fs::create_dir_all(sysroot.join("lib/rustlib")).unwrap();
    std::fs::create_dir(&bin).unwrap();
    let rustc = bin.join("rustc");
    std::fs::write(&rustc, format!("#!/bin/sh\necho {}\n", sysroot.display())).unwrap();
    std::fs::set_permissions(&rustc, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let no_target = runcell(&project, &["build"])
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(one_line_error(&no_target).contains("rustup target add wasm32-wasip2"));

    let not_a_project = runcell(work.path(), &["build"]).output().unwrap();
    assert!(one_line_error(&not_a_project).contains("holds no Cargo.toml"));
}

#[test]
fn run_with_kv_reads_the_file_and_writes_the_store_back() {
    let work = tempfile::tempdir().unwrap();
    let data_sync = guests::guest("data-sync");
    let store = work.path().join("state.json");
    std::fs::write(
        &store,
        r#"{"record/old": {"id": "old", "name": "Old", "value": 1.5}, "raw": {"$base64": "/wA="}}"#,
    )
    .unwrap();

    let synced = runcell(work.path(), &["run", "--no-cache"])
        .arg(&data_sync)
        .args(["hourly-sync", "--kv"])
        .arg(&store)
        .args([
            "--input",
            r#"{"records": [{"id": "a", "name": "A", "value": 2.5}]}"#,
        ])
        .output()
        .unwrap();
    assert!(synced.status.success(), "{}", text(&synced.stderr));
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&store).unwrap()).unwrap();
    assert_eq!(written["record/old"]["value"], 1.5, "{written}");
    assert_eq!(written["record/a"]["value"], 2.5, "{written}");
    assert_eq!(written["sync/cursor"]["totalSyncs"], 1, "{written}");
    assert_eq!(written["raw"], json!({"$base64": "/wA="}), "bytes survive");

    // The next run reads what the last one wrote.
    let reported = runcell(work.path(), &["run", "--no-cache"])
        .arg(&data_sync)
        .args(["daily-report", "--kv"])
        .arg(&store)
        .output()
        .unwrap();
    assert!(reported.status.success(), "{}", text(&reported.stderr));
    let report: Value = serde_json::from_slice(&reported.stdout).unwrap();
    assert_eq!(report["records"], 2);
    assert_eq!(report["totalValue"], 4.0);
}

#[test]
fn run_with_kv_creates_a_missing_file_and_refuses_one_that_is_not_an_object() {
    let work = tempfile::tempdir().unwrap();
    let data_sync = guests::guest("data-sync");
    let created = work.path().join("new.json");
    let ran = runcell(work.path(), &["run", "--no-cache"])
        .arg(&data_sync)
        .args(["hourly-sync", "--kv"])
        .arg(&created)
        .output()
        .unwrap();
    assert!(ran.status.success(), "{}", text(&ran.stderr));
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&created).unwrap()).unwrap();
    assert_eq!(written["sync/cursor"]["totalSyncs"], 1, "{written}");

    let broken = work.path().join("broken.json");
    std::fs::write(&broken, "[1, 2]").unwrap();
    let refused = runcell(work.path(), &["run", "--no-cache"])
        .arg(&data_sync)
        .args(["hourly-sync", "--kv"])
        .arg(&broken)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(6), "{refused:?}");
    assert!(one_line_error(&refused).contains("is not a JSON object"));
    assert_eq!(std::fs::read_to_string(&broken).unwrap(), "[1, 2]");
}

#[test]
fn run_with_event_prints_events_on_the_topic_and_refuses_others() {
    let work = tempfile::tempdir().unwrap();
    let data_sync = guests::guest("data-sync");
    let granted = runcell(work.path(), &["run", "--no-cache"])
        .arg(&data_sync)
        .args(["daily-report", "--event", "report.*"])
        .output()
        .unwrap();
    assert!(granted.status.success(), "{}", text(&granted.stderr));
    let stderr = text(&granted.stderr);
    let event = stderr
        .lines()
        .find_map(|line| line.strip_prefix("event  report.generated "))
        .unwrap_or_else(|| panic!("no event printed: {stderr}"));
    let payload: Value = serde_json::from_str(event).unwrap();
    assert_eq!(payload["records"], 0);

    let other = runcell(work.path(), &["run", "--no-cache"])
        .arg(&data_sync)
        .args(["daily-report", "--event", "alerts.raised"])
        .output()
        .unwrap();
    assert_eq!(other.status.code(), Some(1), "{other:?}");
    let stderr = text(&other.stderr);
    assert!(!stderr.contains("event  "), "{stderr}");
    assert!(
        stderr.contains("publishing on `report.generated` is not granted"),
        "{stderr}"
    );
}
