//! `runcell inspect` and `runcell run` as a module author uses them: output on stdout,
//! logs and one clear line on stderr, an exit code per kind of outcome.

#[path = "support/guests.rs"]
mod guests;

use std::path::Path;
use std::process::{Command, Output};

fn runcell(args: &[&str], cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_runcell"))
        .args(args)
        .env("RUNCELL_CACHE_DIR", cache)
        .output()
        .expect("runcell starts")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn error_line(output: &Output) -> String {
    stderr(output)
        .lines()
        .find(|line| line.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in: {}", stderr(output)))
        .to_owned()
}

#[test]
fn inspect_prints_the_manifest_as_json() {
    let cache = tempfile::tempdir().unwrap();
    let module = guests::guest("data-sync");
    let out = runcell(&["inspect", module.to_str().unwrap()], cache.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let manifest: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(manifest["name"], "data-sync");
    let jobs: Vec<&str> = manifest["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["name"].as_str().unwrap())
        .collect();
    assert_eq!(jobs, ["hourly-sync", "daily-report", "health-check"]);
    assert_eq!(manifest["capabilities"]["keyValue"], true);
}

#[test]
fn run_prints_output_on_stdout_and_logs_and_usage_on_stderr() {
    let cache = tempfile::tempdir().unwrap();
    let module = guests::guest("data-sync");
    let input = r#"{"records":[{"id":"a1","name":"Alpha","value":1.5,"updatedAt":"2026-11-28T10:00:00Z"}]}"#;
    let out = runcell(
        &[
            "run",
            module.to_str().unwrap(),
            "hourly-sync",
            "--input",
            input,
        ],
        cache.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let result: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(result["recordsProcessed"], 1);
    let err = stderr(&out);
    assert!(err.contains("INFO"), "{err}");
    let summary = err.lines().last().unwrap();
    assert!(summary.starts_with("completed: "), "{summary}");
    assert!(
        summary.contains("ms wall") && summary.contains("fuel") && summary.contains("peak memory"),
        "{summary}"
    );
}

#[test]
fn each_kind_of_failure_has_its_exit_code_and_one_clear_line() {
    let cache = tempfile::tempdir().unwrap();
    let hostile = guests::guest("hostile");
    let hostile = hostile.to_str().unwrap();
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["run", hostile, "fail-permanent"],
            1,
            "error: job failed: fixture permanent failure",
        ),
        (
            &["run", hostile, "fail-invalid-input"],
            1,
            "error: job rejected its input: fixture invalid input",
        ),
        (
            &["run", hostile, "spin", "--fuel", "1000000"],
            3,
            "error: ran out of fuel",
        ),
        (
            &[
                "run",
                hostile,
                "spin",
                "--fuel",
                "400000000000",
                "--timeout",
                "300ms",
            ],
            3,
            "error: hit the wall-clock timeout of 300ms",
        ),
        (
            &["run", hostile, "memory-bomb", "--memory", "16MiB"],
            3,
            "error: exceeded its memory limit",
        ),
        (
            &["run", hostile, "trap"],
            4,
            "error: trapped: wasm trap: wasm `unreachable` instruction executed",
        ),
        (
            &["run", hostile, "panic", "--input", "\"boom\""],
            4,
            "after the guest panicked: fixture panic",
        ),
        (
            &["run", hostile, "no-such-job"],
            2,
            "error: unknown job: module `hostile` offers no job `no-such-job`",
        ),
        (
            &["run", hostile, "echo", "--input", "{not json"],
            2,
            "error: --input is not JSON",
        ),
        (&["run", hostile, "spin", "--memory", "lots"], 2, ""),
    ];
    for (args, code, expected) in cases {
        let out = runcell(args, cache.path());
        assert_eq!(out.status.code(), Some(*code), "{args:?}: {}", stderr(&out));
        if !expected.is_empty() {
            assert!(
                error_line(&out).contains(expected),
                "{args:?}: {}",
                stderr(&out)
            );
        }
        assert!(out.stdout.is_empty(), "{args:?} printed output");
    }
}

#[test]
fn files_that_are_not_modules_are_refused_with_the_reason() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let text = dir.path().join("notes.wasm");
    std::fs::write(&text, b"just text").unwrap();
    let unknown = guests::guest("unknown-import");
    let cases = [
        (
            core.to_str().unwrap().to_owned(),
            "core WebAssembly module, not a component",
        ),
        (text.to_str().unwrap().to_owned(), "not a WebAssembly file"),
        (
            unknown.to_str().unwrap().to_owned(),
            "imports `evil:thing/backdoor",
        ),
    ];
    for (path, expected) in cases {
        let out = runcell(&["run", &path, "anything"], cache.path());
        assert_eq!(out.status.code(), Some(5), "{path}: {}", stderr(&out));
        assert!(error_line(&out).contains(expected), "{}", stderr(&out));
    }
    let out = runcell(&["inspect", "/no/such/file.wasm"], cache.path());
    assert_eq!(out.status.code(), Some(6));
    assert!(error_line(&out).contains("cannot read /no/such/file.wasm"));
}

#[test]
fn config_settings_reach_the_job() {
    let cache = tempfile::tempdir().unwrap();
    let module = guests::guest("data-sync");
    let healthy = runcell(
        &[
            "run",
            module.to_str().unwrap(),
            "health-check",
            "--config",
            "source=crm",
        ],
        cache.path(),
    );
    assert!(healthy.status.success(), "{}", stderr(&healthy));
    let report: serde_json::Value = serde_json::from_slice(&healthy.stdout).unwrap();
    assert_eq!(report["status"], "healthy");
    let degraded = runcell(
        &["run", module.to_str().unwrap(), "health-check"],
        cache.path(),
    );
    let report: serde_json::Value = serde_json::from_slice(&degraded.stdout).unwrap();
    assert_eq!(report["status"], "degraded");
}
