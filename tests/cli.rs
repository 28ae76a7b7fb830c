//! `runcell inspect` and `runcell run` as a module author uses them: output on stdout,
//! logs and one clear line on stderr, an exit code per kind of outcome.

#[path = "support/guests.rs"]
mod guests;
#[path = "support/peers.rs"]
mod peers;

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
        summary.contains("ms wall")
            && summary.contains("ms CPU")
            && summary.contains("fuel")
            && summary.contains("peak memory"),
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
fn run_says_when_log_lines_were_dropped() {
    let cache = tempfile::tempdir().unwrap();
    let hostile = guests::guest("hostile");
    let out = runcell(
        &[
            "run",
            hostile.to_str().unwrap(),
            "log-flood",
            "--timeout",
            "2m",
        ],
        cache.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let notice = err
        .lines()
        .find(|line| line.contains("log cap reached"))
        .unwrap_or_else(|| panic!("no drop notice after {} lines", err.lines().count()));
    assert!(notice.starts_with("WARN"), "{notice}");
    // 100,000 lines against the default cap of 10,000.
    assert!(notice.contains("90000 more lines were dropped"), "{notice}");
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

#[test]
fn run_grants_the_manifest_hosts_and_opens_more_only_when_asked() {
    let cache = tempfile::tempdir().unwrap();
    let module = guests::guest("http-client");
    let module = module.to_str().unwrap();
    let (port, served) = peers::hello_server();
    let input = format!(r#"{{"url":"http://127.0.0.1:{port}/"}}"#);
    let host = format!("127.0.0.1:{port}");
    let run = |extra: &[&str]| {
        let mut args = vec!["run", module, "fetch", "--input", &input];
        args.extend_from_slice(extra);
        runcell(&args, cache.path())
    };

    let ungranted = run(&[]);
    assert_eq!(ungranted.status.code(), Some(1), "{}", stderr(&ungranted));
    assert!(
        stderr(&ungranted).contains(&format!(
            "WARN  http GET 127.0.0.1 -> denied: `{host}` is not among the module's granted outbound hosts"
        )),
        "{}",
        stderr(&ungranted)
    );

    let loopback_closed = run(&["--allow-host", &host]);
    assert_eq!(loopback_closed.status.code(), Some(1));
    assert!(
        stderr(&loopback_closed)
            .contains("is 127.0.0.1, a loopback address, which this server does not allow"),
        "{}",
        stderr(&loopback_closed)
    );
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 0);

    for opened in [
        &["--allow-host", &host, "--allow-address", "127.0.0.1"][..],
        &["--allow-host", &host, "--allow-private"][..],
    ] {
        let out = run(opened);
        assert!(out.status.success(), "{opened:?}: {}", stderr(&out));
        let result: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
        assert_eq!(result["status"], 200);
        assert_eq!(result["body"], "hello");
        let err = stderr(&out);
        let line = err
            .lines()
            .find(|line| line.starts_with("INFO  http GET 127.0.0.1 -> 200 "))
            .unwrap_or_else(|| panic!("no request line in: {err}"));
        for field in [
            "bytes=5",
            "host=127.0.0.1",
            "method=GET",
            &format!("port={port}"),
        ] {
            assert!(line.contains(field), "{field} missing: {line}");
        }
    }
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[test]
fn malformed_host_patterns_and_addresses_are_usage_errors() {
    let cache = tempfile::tempdir().unwrap();
    let module = guests::guest("http-client");
    let module = module.to_str().unwrap();
    for (flag, value, expected) in [
        ("--allow-host", "api.*.com", "`*` may only stand alone"),
        ("--allow-host", "api.example.com:99999", "is not a port"),
        (
            "--allow-address",
            "localhost",
            "is not an IP address or network",
        ),
        (
            "--allow-address",
            "10.0.0.0/33",
            "is not an IP address or network",
        ),
    ] {
        let out = runcell(&["run", module, "fetch", flag, value], cache.path());
        assert_eq!(out.status.code(), Some(2), "{value}: {}", stderr(&out));
        assert!(stderr(&out).contains(expected), "{value}: {}", stderr(&out));
    }
}

#[test]
fn serve_refuses_settings_it_cannot_honour_before_starting() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "this is not a certificate").unwrap();
    let data_dir = dir.path().join("data");
    let data_dir = data_dir.to_str().unwrap();
    let serve = |extra: &[&str]| {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--data-dir", data_dir];
        args.extend_from_slice(extra);
        runcell(&args, dir.path())
    };

    let output = serve(&["--outbound-ca-file", not_pem.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        error_line(&output).contains("no PEM certificate found in the CA file"),
        "{}",
        stderr(&output)
    );
    let missing = dir.path().join("missing.pem");
    let output = serve(&["--outbound-ca-file", missing.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        error_line(&output).contains("missing.pem"),
        "{}",
        stderr(&output)
    );

    let output = serve(&["--route-concurrency", "0"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        error_line(&output).contains("--route-concurrency must be between 1 and 64"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn the_server_bench_measures_a_real_server_and_counts_every_execution() {
    let cache = tempfile::tempdir().unwrap();
    // Built where the bench looks by default; it is run as a newcomer would, from another
    // directory and with no CARGO_TARGET_DIR, so it must find them beside its own binary.
    guests::guest("hello");
    guests::guest("hostile");
    let elsewhere = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_runcell"))
        .current_dir(elsewhere.path())
        .env_remove("CARGO_TARGET_DIR")
        .env("RUNCELL_CACHE_DIR", cache.path())
        .args([
            "bench",
            "server",
            "--noop",
            "300",
            "--cpu",
            "30",
            "--rate",
            "100",
            "--latency-for",
            "300ms",
            "--storm-for",
            "300ms",
        ])
        .output()
        .expect("runcell starts");
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let printed = stdout(&out);
    // The warm-up runs are not counted: exactly the runs asked for, every one recorded.
    for expected in [
        "no-op: 300 executions in",
        "(300 COMPLETED, every one recorded",
        "burn iterations ≈ 1 ms of CPU",
        "1 ms CPU: 30 executions in",
        "(30 COMPLETED, every one recorded",
        "dispatch latency at 100 executions/s (30 runs): p50",
        "cpu storm (",
        "  GET /healthz: ",
        "  GET /api/v1/executions?limit=20: ",
        "  POST /api/v1/jobs/{id}/execute: ",
    ] {
        assert!(printed.contains(expected), "no `{expected}` in:\n{printed}");
    }
}

#[test]
fn the_server_bench_wants_a_shared_database_for_several_nodes() {
    let cache = tempfile::tempdir().unwrap();
    // Said before the bench looks for its modules, wherever it is run from.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_runcell"))
        .current_dir(elsewhere.path())
        .env_remove("CARGO_TARGET_DIR")
        .env("RUNCELL_CACHE_DIR", cache.path())
        .args([
            "bench",
            "server",
            "--nodes",
            "2",
            "--noop-module",
            "/nonexistent.wasm",
        ])
        .output()
        .expect("runcell starts");
    assert!(!out.status.success());
    assert!(
        error_line(&out).contains("--nodes above 1 needs a shared database and queue"),
        "{}",
        stderr(&out)
    );
}
