//! The runtime against real components: the examples do their work, every hostile fixture
//! ends with the right outcome and message, and the host is unharmed afterwards.

#[path = "support/guests.rs"]
mod guests;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use runcell::embed::{
    BackendError, KeyValueStore, MemoryEventSink, MemoryKeyValue, MemoryMetricsSink,
};
use runcell::embed::{
    CancelToken, EngineSettings, HostServices, LoadError, LoadSource, LoadedModule, Redactor,
    RunRequest, Runtime, RuntimeConfig, ValidationError,
};
use runcell::embed::{Capabilities, FailureKind, Grants, Limits, Outcome, RouteAccess, RunReport};

struct Harness {
    runtime: Runtime,
    kv: Arc<MemoryKeyValue>,
    events: Arc<MemoryEventSink>,
    metrics: Arc<MemoryMetricsSink>,
}

fn harness() -> Harness {
    harness_with_kv(Arc::new(MemoryKeyValue::default()), None)
}

fn harness_with_kv(
    kv: Arc<MemoryKeyValue>,
    kv_override: Option<Arc<dyn KeyValueStore>>,
) -> Harness {
    let events = Arc::new(MemoryEventSink::default());
    let metrics = Arc::new(MemoryMetricsSink::default());
    let services = HostServices {
        kv: kv_override.unwrap_or_else(|| kv.clone()),
        events: events.clone(),
        metrics: metrics.clone(),
    };
    let config = RuntimeConfig {
        engine: EngineSettings {
            max_concurrent_instances: 8,
            ..Default::default()
        },
        cache_dir: None,
        outbound: Default::default(),
    };
    Harness {
        runtime: Runtime::new(config, services).expect("runtime starts"),
        kv,
        events,
        metrics,
    }
}

async fn load(runtime: &Runtime, package: &str) -> Arc<LoadedModule> {
    runtime
        .load(Arc::from(guests::guest_bytes(package)))
        .await
        .unwrap_or_else(|err| panic!("{package} loads: {err}"))
}

fn granted(module: &LoadedModule) -> Arc<Grants> {
    Arc::new(Grants::as_requested(&module.manifest.capabilities))
}

fn request(job: &str, input: &str, limits: Limits) -> RunRequest {
    RunRequest::new(job, input, limits)
}

fn short_limits() -> Limits {
    Limits {
        timeout: Duration::from_secs(10),
        ..Limits::default()
    }
}

fn failure(report: &RunReport) -> (&FailureKind, &str) {
    match &report.outcome {
        Outcome::Failed { kind, message } => (kind, message.as_str()),
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn output(report: &RunReport) -> &serde_json::Value {
    match &report.outcome {
        Outcome::Completed { output } => output,
        other => panic!("expected completion, got {other:?}"),
    }
}

// Every guest module has a test here named after it (`guest_<name>`) that checks what the
// other tests rely on it being; a guest without one does not compile.
include!(concat!(env!("OUT_DIR"), "/foreach_guest.rs"));

macro_rules! assert_test_exists {
    ($test:ident) => {
        #[expect(unused_imports, reason = "only names the test, so that it must exist")]
        use self::$test as _;
    };
}

foreach_guest!(assert_test_exists);

fn job_names(module: &LoadedModule) -> Vec<&str> {
    module
        .manifest
        .jobs
        .iter()
        .map(|job| job.name.as_str())
        .collect()
}

/// `hello` greets, asks for nothing, and offers the no-op job overhead is measured with.
#[tokio::test]
async fn guest_hello() {
    let h = harness();
    let module = load(&h.runtime, "hello").await;
    assert_eq!(module.manifest.name, "hello");
    assert_eq!(job_names(&module), ["greet", "noop"]);
    assert_eq!(module.manifest.capabilities, Capabilities::default());
    let report = h
        .runtime
        .run(
            &module,
            request("greet", r#"{"name":"Ada"}"#, short_limits()),
        )
        .await;
    assert_eq!(output(&report)["greeting"], "Hello, Ada!");
    let report = h
        .runtime
        .run(&module, request("noop", "null", short_limits()))
        .await;
    assert_eq!(*output(&report), serde_json::Value::Null);
}

/// `data-sync` uses key-value, publishes its report, serves routes to callers with
/// credentials, and runs its three jobs on schedules.
#[tokio::test]
async fn guest_data_sync() {
    let h = harness();
    let module = load(&h.runtime, "data-sync").await;
    assert_eq!(module.manifest.name, "data-sync");
    assert_eq!(
        job_names(&module),
        ["hourly-sync", "daily-report", "health-check"]
    );
    assert!(
        module
            .manifest
            .jobs
            .iter()
            .all(|job| job.default_schedule.is_some())
    );
    assert_eq!(
        module.manifest.capabilities,
        Capabilities {
            key_value: true,
            publishes: vec!["report.generated".to_owned()],
            routes: RouteAccess::Authenticated,
            ..Capabilities::default()
        }
    );
}

/// `endpoint-monitor` asks to reach any host, which an administrator narrows.
#[tokio::test]
async fn guest_endpoint_monitor() {
    let h = harness();
    let module = load(&h.runtime, "endpoint-monitor").await;
    assert_eq!(module.manifest.name, "endpoint-monitor");
    assert_eq!(job_names(&module), ["check-endpoints"]);
    assert_eq!(module.manifest.capabilities.outbound_hosts, ["*"]);
}

/// `hostile` offers one job per attack on the sandbox, and `echo`, which returns its
/// input and context.
#[tokio::test]
async fn guest_hostile() {
    let h = harness();
    let module = load(&h.runtime, "hostile").await;
    assert_eq!(module.manifest.name, "hostile");
    let jobs = job_names(&module);
    for job in [
        "spin",
        "memory-bomb",
        "log-flood",
        "slow-host-call",
        "burn",
        "clock",
        "observe",
    ] {
        assert!(jobs.contains(&job), "{job} in {jobs:?}");
    }
    let report = h
        .runtime
        .run(&module, request("echo", r#"{"a":[1]}"#, short_limits()))
        .await;
    assert_eq!(output(&report)["input"], serde_json::json!({"a": [1]}));
    // The settings its jobs read, declared through the SDK (contract 0.1.1).
    let settings = &module.manifest.settings;
    assert_eq!(settings.len(), 2, "{settings:?}");
    let token = settings.iter().find(|s| s.name == "token").unwrap();
    assert!(token.required && token.secret);
    assert_eq!(token.jobs, ["needs-token"]);
    let greeting = settings.iter().find(|s| s.name == "greeting").unwrap();
    assert!(!greeting.required && !greeting.secret && greeting.jobs.is_empty());
}

/// `http-client` is written against `wasi:http` without the SDK and asks for one host.
#[tokio::test]
async fn guest_http_client() {
    let h = harness();
    let module = load(&h.runtime, "http-client").await;
    assert_eq!(module.manifest.name, "http-client");
    assert_eq!(job_names(&module), ["fetch"]);
    assert_eq!(
        module.manifest.capabilities.outbound_hosts,
        ["api.example.com"]
    );
}

/// `route-probe` 1.0.0 serves its probing routes to callers with credentials.
#[tokio::test]
async fn guest_route_probe() {
    let h = harness();
    let module = load(&h.runtime, "route-probe").await;
    assert_eq!(
        (
            module.manifest.name.as_str(),
            module.manifest.version.as_str()
        ),
        ("route-probe", "1.0.0")
    );
    assert_eq!(
        module.manifest.capabilities.routes,
        RouteAccess::Authenticated
    );
}

/// `route-probe-v2` is the next version of `route-probe`, its routes open to anyone.
#[tokio::test]
async fn guest_route_probe_v2() {
    let h = harness();
    let module = load(&h.runtime, "route-probe-v2").await;
    assert_eq!(
        (
            module.manifest.name.as_str(),
            module.manifest.version.as_str()
        ),
        ("route-probe", "2.0.0")
    );
    assert_eq!(module.manifest.capabilities.routes, RouteAccess::Public);
}

#[tokio::test]
async fn hourly_sync_stores_records_and_daily_report_summarises_them() {
    let h = harness();
    let module = load(&h.runtime, "data-sync").await;
    assert_eq!(module.manifest.name, "data-sync");
    let sync = module
        .manifest
        .job("hourly-sync")
        .expect("hourly-sync offered");
    assert_eq!(sync.default_schedule.as_deref(), Some("0 * * * *"));

    let input = r#"{"records":[
        {"id":"a1","name":"Alpha","value":12.5,"updatedAt":"2026-11-28T10:00:00Z"},
        {"id":"b2","name":"Beta","value":7.5,"updatedAt":"2026-11-28T10:05:00Z"}]}"#;
    let mut run = request("hourly-sync", input, short_limits());
    run.grants = granted(&module);
    run.context.scheduled_at_ms = 1_795_860_000_000;
    let report = h.runtime.run(&module, run).await;
    let out = output(&report);
    assert_eq!(out["recordsProcessed"], 2);
    assert_eq!(out["syncedAt"], "2026-11-28T10:00:00Z");
    assert!(
        report
            .logs
            .iter()
            .any(|l| l.fields.get("records") == Some(&2.into()))
    );
    assert!(report.usage.fuel_consumed > 0);
    assert!(report.usage.memory_peak_bytes > 0);
    assert!(h.kv.get("data-sync", "record/a1").await.unwrap().is_some());

    let mut run = request("daily-report", "null", short_limits());
    run.grants = granted(&module);
    let report = h.runtime.run(&module, run).await;
    let summary = output(&report);
    assert_eq!(summary["records"], 2);
    assert_eq!(summary["totalValue"], 20.0);
    let events = h.events.take();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].topic, "report.generated");
    assert_eq!(events[0].payload["records"], 2);
    assert!(
        h.metrics
            .take()
            .iter()
            .any(|(m, s)| m == "data-sync" && s.name == "data_sync.records")
    );
}

#[tokio::test]
async fn invalid_records_are_rejected_with_the_field_named() {
    let h = harness();
    let module = load(&h.runtime, "data-sync").await;
    let input = r#"{"records":[{"id":"a","name":"A","value":1,"updatedAt":"x"},{"id":"","name":"B","value":2,"updatedAt":"x"}]}"#;
    let mut run = request("hourly-sync", input, short_limits());
    run.grants = granted(&module);
    let report = h.runtime.run(&module, run).await;
    let (kind, message) = failure(&report);
    assert_eq!(*kind, FailureKind::InvalidInput);
    assert!(message.contains("records[1].id"), "{message}");
    assert_eq!(
        h.kv.get("data-sync", "sync/cursor").await.unwrap(),
        None,
        "nothing stored"
    );
}

#[tokio::test]
async fn an_infinite_loop_runs_out_of_fuel() {
    let h = harness();
    let module = load(&h.runtime, "hostile").await;
    let limits = Limits {
        fuel: 50_000_000,
        ..short_limits()
    };
    let report = h
        .runtime
        .run(&module, request("spin", "null", limits))
        .await;
    let (kind, message) = failure(&report);
    assert_eq!(*kind, FailureKind::OutOfFuel);
    assert!(message.contains("50000000 fuel units"), "{message}");
    assert_eq!(report.usage.fuel_consumed, 50_000_000);
}

#[tokio::test]
async fn an_infinite_loop_is_stopped_at_its_wall_clock_deadline() {
    let h = harness();
    let module = load(&h.runtime, "hostile").await;
    let timeout = Duration::from_millis(300);
    let limits = Limits {
        fuel: Limits::default_ceiling().fuel,
        timeout,
        ..Limits::default()
    };
    let report = h
        .runtime
        .run(&module, request("spin", "null", limits))
        .await;
    assert_eq!(report.outcome, Outcome::TimedOut { timeout });
    // A safety bound, loose enough for a loaded machine; `runcell bench` reports the
    // real overshoot.
    assert!(report.usage.wall_time >= timeout);
    assert!(
        report.usage.wall_time < timeout + Duration::from_millis(500),
        "{:?}",
        report.usage.wall_time
    );
}

/// A backend whose reads wait.
enum WaitingReads {
    /// Never answers for the key `slow`, like a storage call stuck on the network.
    StuckOnSlow,
    /// Answers once this many reads wait at once, so the runs that read are all alive
    /// together.
    Together(tokio::sync::Barrier),
}

#[async_trait::async_trait]
impl KeyValueStore for WaitingReads {
    async fn get(&self, _: &str, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        match self {
            WaitingReads::StuckOnSlow if key == "slow" => std::future::pending().await,
            WaitingReads::StuckOnSlow => {}
            WaitingReads::Together(gate) => {
                gate.wait().await;
            }
        }
        Ok(None)
    }
    async fn set(&self, _: &str, _: &str, _: &[u8]) -> Result<(), BackendError> {
        Ok(())
    }
    async fn delete(&self, _: &str, _: &str) -> Result<(), BackendError> {
        Ok(())
    }
    async fn list_keys(&self, _: &str, _: &str, _: u32) -> Result<Vec<String>, BackendError> {
        Ok(Vec::new())
    }
}

#[tokio::test]
async fn a_guest_blocked_in_a_host_call_is_stopped_at_its_deadline() {
    let h = harness_with_kv(Arc::default(), Some(Arc::new(WaitingReads::StuckOnSlow)));
    let module = load(&h.runtime, "hostile").await;
    let timeout = Duration::from_millis(300);
    let mut run = request(
        "slow-host-call",
        "null",
        Limits {
            timeout,
            ..Limits::default()
        },
    );
    run.grants = granted(&module);
    let report = h.runtime.run(&module, run).await;
    assert_eq!(report.outcome, Outcome::TimedOut { timeout });
    assert!(
        report.usage.wall_time < timeout + Duration::from_millis(500),
        "{:?}",
        report.usage.wall_time
    );
}

#[tokio::test]
async fn a_running_job_can_be_cancelled() {
    let h = harness();
    let module = load(&h.runtime, "hostile").await;
    let limits = Limits {
        fuel: Limits::default_ceiling().fuel,
        ..short_limits()
    };
    let run = request("spin", "null", limits);
    let cancel: CancelToken = run.cancel.clone();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        cancel.cancel();
    });
    let report = h.runtime.run(&module, run).await;
    canceller.await.unwrap();
    assert_eq!(report.outcome, Outcome::Cancelled);
    assert!(report.usage.wall_time < Duration::from_secs(5));
}

#[tokio::test]
async fn a_memory_bomb_stops_at_the_memory_limit() {
    let h = harness();
    let module = load(&h.runtime, "hostile").await;
    let limits = Limits {
        memory_bytes: 32 << 20,
        ..short_limits()
    };
    let report = h
        .runtime
        .run(&module, request("memory-bomb", "null", limits))
        .await;
    let (kind, message) = failure(&report);
    assert_eq!(*kind, FailureKind::MemoryLimitExceeded);
    assert!(message.contains("32.0 MiB"), "{message}");
    assert!(report.usage.memory_peak_bytes <= 32 << 20);
    assert!(
        report.usage.memory_peak_bytes > 16 << 20,
        "it did grow up to the limit"
    );
}

#[tokio::test]
async fn a_normal_job_runs_within_a_tight_memory_limit() {
    // The obeyed half of the memory pair: a normal job under a tight limit is fine.
    let h = harness();
    let module = load(&h.runtime, "hello").await;
    let limits = Limits {
        memory_bytes: 4 << 20,
        ..short_limits()
    };
    let report = h.runtime.run(&module, request("greet", "{}", limits)).await;
    assert_eq!(output(&report)["greeting"], "Hello, world!");
    assert!(report.usage.memory_peak_bytes <= 4 << 20);
}

#[tokio::test]
async fn deep_recursion_traps_with_a_stack_overflow() {
    let h = harness();
    let module = load(&h.runtime, "hostile").await;
    let report = h
        .runtime
        .run(&module, request("deep-recursion", "null", short_limits()))
        .await;
    let (kind, message) = failure(&report);
    assert_eq!(*kind, FailureKind::Trap);
    assert!(message.contains("stack overflow"), "{message}");
}

#[tokio::test]
async fn a_shadow_stack_overflow_is_reported_as_a_stack_overflow() {
    let h = harness();
    let module = load(&h.runtime, "hostile").await;
    let report = h
        .runtime
        .run(
            &module,
            request("shadow-stack-overflow", "null", short_limits()),
        )
        .await;
    let (kind, message) = failure(&report);
    assert_eq!(*kind, FailureKind::Trap);
    assert!(message.starts_with("stack overflow"), "{message}");
    assert!(message.contains("linear memory"), "{message}");
}

#[tokio::test]
async fn a_loop_stopped_by_the_clock_reports_the_fuel_it_burned_and_its_cpu_time() {
    let h = harness();
    let module = load(&h.runtime, "hostile").await;
    let spin = |ms: u64| {
        let limits = Limits {
            fuel: Limits::default_ceiling().fuel,
            timeout: Duration::from_millis(ms),
            ..Limits::default()
        };
        h.runtime.run(&module, request("spin", "null", limits))
    };
    let short = spin(200).await;
    let long = spin(1_000).await;
    let mut rates = Vec::new();
    for report in [&short, &long] {
        assert!(
            matches!(report.outcome, Outcome::TimedOut { .. }),
            "{:?}",
            report.outcome
        );
        let usage = report.usage;
        // Far more than the thousand-odd units of the calls before the loop.
        assert!(usage.fuel_consumed > 100_000_000, "{usage:?}");
        assert!(usage.cpu_time > Duration::ZERO, "{usage:?}");
        assert!(usage.cpu_time <= usage.wall_time * 2, "{usage:?}");
        rates.push(usage.fuel_consumed as f64 / usage.cpu_time.as_secs_f64());
    }
    assert!(long.usage.fuel_consumed > short.usage.fuel_consumed);
    // Fuel follows the CPU the loop had, whatever the machine's load.
    let ratio = rates[1] / rates[0];
    assert!(
        (0.5..2.0).contains(&ratio),
        "fuel per CPU second: {rates:?}"
    );
}

#[tokio::test]
async fn a_route_stopped_by_the_clock_reports_its_fuel_and_cpu_time() {
    let h = harness();
    let module = load(&h.runtime, "route-probe").await;
    let limits = Limits {
        timeout: Duration::from_millis(200),
        fuel: Limits::default_ceiling().fuel,
        ..Limits::default()
    };
    let request = http::Request::get("http://runcell.test/spin")
        .body(bytes::Bytes::new())
        .unwrap();
    let served = h
        .runtime
        .serve_http(&module, request, limits, granted(&module), None, 1 << 20)
        .await;
    assert!(
        matches!(served.response, Err(Outcome::TimedOut { .. })),
        "{:?}",
        served.response.as_ref().err()
    );
    assert!(
        served.usage.fuel_consumed > 100_000_000,
        "{:?}",
        served.usage
    );
    assert!(served.usage.cpu_time > Duration::ZERO, "{:?}", served.usage);
}

#[tokio::test]
async fn a_log_flood_is_capped_and_the_drop_is_reported() {
    let h = harness();
    let module = load(&h.runtime, "hostile").await;
    let limits = Limits {
        max_log_lines: 500,
        timeout: Duration::from_secs(60),
        ..Limits::default()
    };
    let report = h
        .runtime
        .run(&module, request("log-flood", "null", limits))
        .await;
    output(&report);
    assert_eq!(report.logs.len(), 501, "500 lines and the notice");
    assert!(report.dropped_log_lines > 0);
    assert!(report.logs[500].message.contains("lines were dropped"));
}

#[tokio::test]
async fn a_stdout_flood_is_captured_into_the_log_under_the_cap() {
    let h = harness();
    let module = load(&h.runtime, "hostile").await;
    let limits = Limits {
        max_log_lines: 200,
        timeout: Duration::from_secs(60),
        ..Limits::default()
    };
    let report = h
        .runtime
        .run(&module, request("stdout-flood", "null", limits))
        .await;
    output(&report);
    assert_eq!(report.logs.len(), 201);
    assert_eq!(report.logs[0].fields["stream"], "stdout");
    assert!(report.dropped_log_lines > 0);
}

#[tokio::test]
async fn huge_output_is_refused() {
    let h = harness();
    let module = load(&h.runtime, "hostile").await;
    let report = h
        .runtime
        .run(&module, request("huge-output", "null", short_limits()))
        .await;
    let (kind, message) = failure(&report);
    assert_eq!(*kind, FailureKind::OutputTooLarge);
    assert!(message.contains("limit of 1048576 bytes"), "{message}");
}

/// Limits under which the guest can hold 100 MB of output.
fn big_output_limits() -> Limits {
    Limits {
        memory_bytes: 512 << 20,
        timeout: Duration::from_secs(60),
        ..Limits::default()
    }
}

#[tokio::test]
async fn a_100_mb_output_is_refused_in_guest_memory_before_any_copy() {
    let h = harness();
    let module = load(&h.runtime, "hostile").await;
    let report = h
        .runtime
        .run(&module, request("big-output", "null", big_output_limits()))
        .await;
    let (kind, message) = failure(&report);
    assert_eq!(*kind, FailureKind::OutputTooLarge);
    // The host never learns the size: it refused the output where it lay.
    assert!(message.contains("before any copy"), "{message}");
    assert!(message.contains("limit of 1048576 bytes"), "{message}");
    assert!(report.usage.memory_peak_bytes >= 100_000_000);
}

#[tokio::test]
async fn output_at_the_cap_is_kept_and_one_byte_more_is_refused() {
    let h = harness();
    let module = load(&h.runtime, "hostile").await;
    let cap = Limits::default().max_output_bytes;
    let at_cap = h
        .runtime
        .run(
            &module,
            request("big-output", &cap.to_string(), big_output_limits()),
        )
        .await;
    assert_eq!(
        output(&at_cap).as_str().map(str::len),
        Some(cap as usize - 2)
    );
    let over = h
        .runtime
        .run(
            &module,
            request("big-output", &(cap + 1).to_string(), big_output_limits()),
        )
        .await;
    let (kind, message) = failure(&over);
    assert_eq!(*kind, FailureKind::OutputTooLarge);
    assert!(message.contains("above its limit"), "{message}");
}

#[tokio::test]
async fn a_panic_is_reported_with_its_message() {
    let h = harness();
    let module = load(&h.runtime, "hostile").await;
    let report = h
        .runtime
        .run(&module, request("panic", "\"boom\"", short_limits()))
        .await;
    let (kind, message) = failure(&report);
    assert_eq!(*kind, FailureKind::Trap);
    assert!(message.contains("fixture panic"), "{message}");
    assert!(message.contains("boom"), "{message}");
}

#[tokio::test]
async fn an_unreachable_instruction_is_a_trap() {
    let h = harness();
    let module = load(&h.runtime, "hostile").await;
    let report = h
        .runtime
        .run(&module, request("trap", "null", short_limits()))
        .await;
    let (kind, message) = failure(&report);
    assert_eq!(*kind, FailureKind::Trap);
    assert!(message.contains("unreachable"), "{message}");
}

#[tokio::test]
async fn job_errors_keep_their_kind() {
    let h = harness();
    let module = load(&h.runtime, "hostile").await;
    for (job, expected) in [
        ("fail-transient", FailureKind::Transient),
        ("fail-permanent", FailureKind::Permanent),
        ("fail-invalid-input", FailureKind::InvalidInput),
    ] {
        let report = h
            .runtime
            .run(&module, request(job, "null", short_limits()))
            .await;
        let (kind, message) = failure(&report);
        assert_eq!(*kind, expected, "{job}");
        assert!(message.starts_with("fixture"), "{message}");
    }
}

#[tokio::test]
async fn output_that_is_not_json_is_refused() {
    let h = harness();
    let module = load(&h.runtime, "hostile").await;
    let report = h
        .runtime
        .run(&module, request("bad-output", "null", short_limits()))
        .await;
    assert_eq!(*failure(&report).0, FailureKind::InvalidOutput);
}

#[tokio::test]
async fn an_unknown_job_is_refused_without_running() {
    let h = harness();
    let module = load(&h.runtime, "hello").await;
    let report = h
        .runtime
        .run(&module, request("nope", "null", short_limits()))
        .await;
    let (kind, message) = failure(&report);
    assert_eq!(*kind, FailureKind::UnknownJob);
    assert!(message.contains("it offers: greet, noop"), "{message}");
    assert_eq!(report.usage.fuel_consumed, 0);
}

#[tokio::test]
async fn capabilities_are_denied_unless_granted() {
    let h = harness();
    let module = load(&h.runtime, "hostile").await;
    let report = h
        .runtime
        .run(&module, request("use-everything", "null", short_limits()))
        .await;
    let seen = output(&report);
    assert!(
        seen["kv"]["set"]["error"]
            .as_str()
            .unwrap()
            .contains("denied"),
        "{seen}"
    );
    assert!(
        seen["publish"]["error"]
            .as_str()
            .unwrap()
            .contains("not granted"),
        "{seen}"
    );
    assert!(
        report
            .logs
            .iter()
            .any(|l| l.message.starts_with("denied: kv.set"))
    );
    assert!(h.events.take().is_empty());
    assert_eq!(h.kv.list_keys("hostile", "", 10).await.unwrap().len(), 0);
}

#[tokio::test]
async fn granted_capabilities_reach_their_backends() {
    let h = harness();
    let module = load(&h.runtime, "hostile").await;
    let mut run = request("use-everything", "null", short_limits());
    run.grants = granted(&module);
    run.config = Arc::new(BTreeMap::from([("token".to_owned(), "s3cret".to_owned())]));
    run.context.execution_id = "exec-1".into();
    let report = h.runtime.run(&module, run).await;
    let seen = output(&report);
    assert_eq!(seen["config"]["token"], "s3cret");
    assert_eq!(seen["kv"]["get"]["ok"]["executionId"], "exec-1");
    assert_eq!(seen["publish"], serde_json::json!({"ok": null}));
    assert_eq!(h.events.take()[0].topic, "hostile.test");
    assert_eq!(h.metrics.take().len(), 1);
}

#[tokio::test]
async fn a_secret_reaches_the_guest_but_not_the_report_of_its_run() {
    const SECRET: &str = "s3cret-token";
    let h = harness();
    let module = load(&h.runtime, "hostile").await;
    let secret_run = |job: &str, input: &str| {
        let mut run = request(job, input, short_limits());
        run.grants = granted(&module);
        run.config = Arc::new(BTreeMap::from([("token".to_owned(), SECRET.to_owned())]));
        run.redact = Redactor::new([SECRET.to_owned()]);
        run
    };
    let report = h
        .runtime
        .run(&module, secret_run("use-everything", "null"))
        .await;
    assert_eq!(
        output(&report)["config"]["token"],
        "***",
        "the guest read the secret and returned it; the report masks it"
    );

    let report = h
        .runtime
        .run(&module, secret_run("panic", &format!("\"{SECRET}\"")))
        .await;
    let (kind, message) = failure(&report);
    assert_eq!(*kind, FailureKind::Trap);
    assert!(message.contains("fixture panic: \"***\""), "{message}");
    let printed: Vec<&str> = report.logs.iter().map(|l| l.message.as_str()).collect();
    assert!(printed.iter().any(|m| m.contains("\"***\"")), "{printed:?}");
    assert!(!printed.iter().any(|m| m.contains(SECRET)), "{printed:?}");
}

#[tokio::test]
async fn masking_catches_a_secret_and_its_common_encodings_but_not_a_deliberate_transform() {
    const SECRET: &str = "correct horse/battery+staple";
    let h = harness();
    let module = load(&h.runtime, "hostile").await;
    let mut run = request("leak-secret", "null", short_limits());
    run.config = Arc::new(BTreeMap::from([("token".to_owned(), SECRET.to_owned())]));
    run.redact = Redactor::new([SECRET.to_owned()]);
    let report = h.runtime.run(&module, run).await;
    let leaked = output(&report);
    for form in ["plain", "hex", "base64", "urlEncoded"] {
        assert_eq!(leaked[form], "***", "{form}: {leaked}");
    }
    let basic = leaked["basicAuth"].as_str().unwrap();
    assert!(
        basic.starts_with("Basic ") && basic.contains("***"),
        "{basic}"
    );
    assert!(
        basic.len() < 24,
        "only the edges shared with `user:` stay: {basic}"
    );
    // Reversed and hex-encoded, the secret goes through: masking is for accidents, and a
    // module that can read a secret can always send it out.
    let reversed: String = SECRET.chars().rev().collect();
    let reversed_hex: String = reversed.bytes().map(|b| format!("{b:02x}")).collect();
    assert_eq!(leaked["reversedHex"], reversed_hex.as_str());
    let printed: Vec<&str> = report.logs.iter().map(|l| l.message.as_str()).collect();
    assert!(printed.contains(&"plain ***"), "{printed:?}");
    assert!(printed.contains(&"hex ***"), "{printed:?}");
    assert!(printed.contains(&"base64 ***"), "{printed:?}");
    let reversed_line = format!("reversed-hex {reversed_hex}");
    assert!(printed.contains(&reversed_line.as_str()), "{printed:?}");
}

#[tokio::test]
async fn the_host_is_unharmed_after_every_attack() {
    let h = harness();
    let hostile = load(&h.runtime, "hostile").await;
    let limits = Limits {
        fuel: 20_000_000,
        timeout: Duration::from_millis(500),
        memory_bytes: 16 << 20,
        ..Limits::default()
    };
    for job in [
        "spin",
        "memory-bomb",
        "deep-recursion",
        "shadow-stack-overflow",
        "huge-output",
        "big-output",
        "panic",
        "trap",
    ] {
        let report = h.runtime.run(&hostile, request(job, "null", limits)).await;
        assert!(
            !matches!(report.outcome, Outcome::Completed { .. }),
            "{job} must not complete"
        );
    }
    let hello = load(&h.runtime, "hello").await;
    let report = h
        .runtime
        .run(
            &hello,
            request("greet", r#"{"name":"again"}"#, short_limits()),
        )
        .await;
    assert_eq!(output(&report)["greeting"], "Hello, again!");
}

#[tokio::test]
async fn text_is_refused_as_not_wasm() {
    let h = harness();
    let err = h.runtime.load(Arc::from(&b"hello"[..])).await.unwrap_err();
    assert!(
        matches!(err, LoadError::Invalid(ValidationError::NotWasm)),
        "{err}"
    );
}

#[tokio::test]
async fn a_core_module_is_refused_as_not_a_component() {
    let h = harness();
    let err = h
        .runtime
        .load(Arc::from(&b"\0asm\x01\0\0\0"[..]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, LoadError::Invalid(ValidationError::CoreModule)),
        "{err}"
    );
    assert!(err.to_string().contains("wasm32-wasip2"));
}

#[tokio::test]
async fn a_component_without_the_exports_is_refused_naming_the_export() {
    let h = harness();
    // The smallest valid component: no imports, no exports.
    let err = h
        .runtime
        .load(Arc::from(&b"\0asm\x0d\0\x01\0"[..]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LoadError::Invalid(ValidationError::MissingExport("describe"))
        ),
        "{err}"
    );
}

/// `unknown-import` imports an interface nobody offers (`evil:thing/backdoor`): it is
/// refused at load, naming the import.
#[tokio::test]
async fn guest_unknown_import() {
    let h = harness();
    let err = h
        .runtime
        .load(Arc::from(guests::guest_bytes("unknown-import")))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("evil:thing/backdoor"), "{err}");
}

/// `contract-0-1-0`, built against the contract as published at 0.1.0, loads and runs
/// on a host that speaks 0.1.1, and declares no settings.
#[tokio::test]
async fn guest_contract_0_1_0() {
    let h = harness();
    let module = load(&h.runtime, "contract-0-1-0").await;
    assert_eq!(job_names(&module), ["greet"]);
    assert!(module.manifest.settings.is_empty());
    let imports = guests::guest_bytes("contract-0-1-0");
    let text = String::from_utf8_lossy(&imports);
    assert!(
        text.contains("runcell:module/log@0.1.0"),
        "built against 0.1.0"
    );
    let report = h
        .runtime
        .run(&module, RunRequest::new("greet", "null", Limits::default()))
        .await;
    match report.outcome {
        Outcome::Completed { output } => {
            assert_eq!(output["greeting"], "Hello, world!");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(report.logs[0].message, "greeting");
}

#[tokio::test]
async fn truncated_bytes_are_refused_as_malformed() {
    let h = harness();
    let mut bytes = guests::guest_bytes("hello");
    bytes.truncate(bytes.len() / 2);
    let err = h.runtime.load(Arc::from(bytes)).await.unwrap_err();
    assert!(
        matches!(err, LoadError::Invalid(ValidationError::Malformed(_))),
        "{err}"
    );
}

#[tokio::test]
async fn a_cached_module_is_never_recompiled() {
    let dir = tempfile::tempdir().unwrap();
    let config = || RuntimeConfig {
        engine: EngineSettings {
            max_concurrent_instances: 4,
            ..Default::default()
        },
        cache_dir: Some(dir.path().to_path_buf()),
        outbound: Default::default(),
    };
    let bytes: Arc<[u8]> = Arc::from(guests::guest_bytes("data-sync"));
    let first = Runtime::new(config(), HostServices::in_memory()).unwrap();
    let module = first.load(bytes.clone()).await.unwrap();
    assert_eq!(module.source, LoadSource::Compiled);
    assert_eq!(first.compilations(), 1);

    let second = Runtime::new(config(), HostServices::in_memory()).unwrap();
    let module = second.load(bytes.clone()).await.unwrap();
    assert_eq!(module.source, LoadSource::Cached);
    assert_eq!(second.compilations(), 0);
    // The cached module runs like the compiled one.
    let report = second
        .run(&module, request("health-check", "null", short_limits()))
        .await;
    assert!(
        matches!(report.outcome, Outcome::Completed { .. }),
        "{:?}",
        report.outcome
    );
}

/// A node that starts a batch of runs of a module it has not loaded yet must compile it
/// once, not once per run: the others wait for that compilation and share its result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_of_one_module_at_once_compile_it_once() {
    let runtime = Runtime::new(RuntimeConfig::default(), HostServices::in_memory()).unwrap();
    let bytes: Arc<[u8]> = Arc::from(guests::guest_bytes("hello"));
    let loads = (0..6).map(|_| {
        let runtime = runtime.clone();
        let bytes = bytes.clone();
        tokio::spawn(async move { runtime.load(bytes).await.unwrap() })
    });
    let modules = futures_util::future::join_all(loads).await;
    assert_eq!(runtime.compilations(), 1);
    let first = modules[0].as_ref().unwrap();
    for module in &modules {
        assert!(Arc::ptr_eq(first, module.as_ref().unwrap()));
    }
    // A different module still compiles: the gate is per module.
    load(&runtime, "data-sync").await;
    assert_eq!(runtime.compilations(), 2);
}

#[tokio::test]
async fn a_damaged_cache_entry_is_replaced_by_a_fresh_compile() {
    let dir = tempfile::tempdir().unwrap();
    let config = RuntimeConfig {
        engine: EngineSettings::default(),
        cache_dir: Some(dir.path().to_path_buf()),
        outbound: Default::default(),
    };
    let bytes: Arc<[u8]> = Arc::from(guests::guest_bytes("hello"));
    Runtime::new(config.clone(), HostServices::in_memory())
        .unwrap()
        .load(bytes.clone())
        .await
        .unwrap();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        std::fs::write(entry.unwrap().path(), b"garbage").unwrap();
    }
    let runtime = Runtime::new(config, HostServices::in_memory()).unwrap();
    let module = runtime.load(bytes).await.unwrap();
    assert_eq!(module.source, LoadSource::Compiled);
}

/// Three lanes of one instance each: three runs alive at once on one thread must spread
/// over all three, each lane running its own copy of the module, compiled only once.
#[tokio::test]
async fn runs_past_a_lanes_share_of_instances_take_the_other_lanes() {
    let dir = tempfile::tempdir().unwrap();
    for cache_dir in [None, Some(dir.path().to_path_buf())] {
        let parties = 3;
        let services = HostServices {
            kv: Arc::new(WaitingReads::Together(tokio::sync::Barrier::new(parties))),
            ..HostServices::in_memory()
        };
        let config = RuntimeConfig {
            engine: EngineSettings {
                max_concurrent_instances: parties as u32,
                lanes: parties,
                ..Default::default()
            },
            cache_dir: cache_dir.clone(),
            outbound: Default::default(),
        };
        let runtime = Runtime::new(config, services).unwrap();
        let module = load(&runtime, "data-sync").await;
        assert_eq!(runtime.compilations(), 1, "cache directory {cache_dir:?}");
        let runs = (0..parties).map(|_| {
            let mut run = request("health-check", "null", short_limits());
            run.grants = granted(&module);
            runtime.run(&module, run)
        });
        let reports = tokio::time::timeout(
            Duration::from_secs(30),
            futures_util::future::join_all(runs),
        )
        .await
        .expect("all three runs reached the backend together");
        for report in reports {
            output(&report);
        }
    }
}

/// Runs from many threads at once, each thread in its lane, all succeed.
#[test]
fn runs_on_many_threads_each_get_a_working_lane() {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let config = RuntimeConfig {
        engine: EngineSettings {
            max_concurrent_instances: 16,
            lanes: 2,
            ..Default::default()
        },
        cache_dir: None,
        outbound: Default::default(),
    };
    let runtime = Runtime::new(config, HostServices::in_memory()).unwrap();
    tokio.block_on(async {
        let module = load(&runtime, "hostile").await;
        let tasks: Vec<_> = (0..16)
            .map(|task| {
                let runtime = runtime.clone();
                let module = module.clone();
                tokio::spawn(async move {
                    for run in 0..20 {
                        let input = format!(r#"{{"task":{task},"run":{run}}}"#);
                        let report = runtime
                            .run(&module, request("echo", &input, short_limits()))
                            .await;
                        assert_eq!(
                            output(&report)["input"],
                            serde_json::from_str::<serde_json::Value>(&input).unwrap()
                        );
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
}

/// Two nodes on one database: a module installed through the first is loaded by the
/// second before any of its runs arrive there, once; a disabled one is not.
/// The services of one node on `store`, with a queue of its own.
async fn node_on(store: &Arc<dyn runcell::embed::Store>) -> runcell::embed::Services {
    let queue: Arc<dyn runcell::embed::Queue> = Arc::new(runcell::embed::MemoryQueue::default());
    runcell::embed::Services::new(
        store.clone(),
        queue,
        None,
        runcell::embed::Capacity::with_workers(1),
        Default::default(),
        Default::default(),
    )
    .unwrap()
}

#[tokio::test]
async fn a_node_preloads_the_enabled_modules_installed_through_another() {
    use runcell::embed::ModuleStatus;
    use runcell::embed::{SqliteStore, Store};

    let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().await.unwrap());
    let (first, second) = (node_on(&store).await, node_on(&store).await);
    let hello = first
        .upload_module(guests::guest_bytes("hello"))
        .await
        .unwrap();
    let data_sync = first
        .upload_module(guests::guest_bytes("data-sync"))
        .await
        .unwrap();
    first
        .set_module_status(&data_sync.name, ModuleStatus::Disabled)
        .await
        .unwrap();
    let hello_hash = &hello.current.content_hash;
    assert!(second.runtime.loaded_module(hello_hash).is_none());

    let mut unloadable = Default::default();
    let loaded = second.load_enabled_modules(&mut unloadable).await.unwrap();
    assert_eq!(loaded, 1);
    assert!(second.runtime.loaded_module(hello_hash).is_some());
    assert!(
        second
            .runtime
            .loaded_module(&data_sync.current.content_hash)
            .is_none()
    );
    assert_eq!(second.runtime.compilations(), 1);

    // Later passes find it loaded and compile nothing.
    assert_eq!(
        second.load_enabled_modules(&mut unloadable).await.unwrap(),
        0
    );
    assert_eq!(second.runtime.compilations(), 1);
}

#[tokio::test]
async fn a_node_that_cannot_load_a_module_stops_trying_that_version() {
    use std::collections::HashSet;

    use runcell::embed::{SqliteStore, Store};
    use sqlx::Connection;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runcell.db");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await.unwrap());
    let (first, second) = (node_on(&store).await, node_on(&store).await);
    let hello = first
        .upload_module(guests::guest_bytes("hello"))
        .await
        .unwrap();
    let hash = hello.current.content_hash.clone();
    // The stored code goes bad behind the store's back (a damaged row), then is mended.
    let mut raw = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let set_code = |bytes: Vec<u8>| {
        sqlx::query("UPDATE module_blobs SET bytes = ? WHERE content_hash = ?")
            .bind(bytes)
            .bind(hash.clone())
    };
    set_code(b"not a module".to_vec())
        .execute(&mut raw)
        .await
        .unwrap();

    let mut unloadable = HashSet::new();
    assert_eq!(
        second.load_enabled_modules(&mut unloadable).await.unwrap(),
        0
    );
    assert_eq!(unloadable, HashSet::from([hash.clone()]));
    assert!(second.runtime.loaded_module(&hash).is_none());

    // A version that failed is not tried again, even once its code would load: the
    // node does not spend a core compiling a broken module every pass.
    set_code(guests::guest_bytes("hello"))
        .execute(&mut raw)
        .await
        .unwrap();
    // The catalog remembers the failure for a while too; forgotten here, so what skips
    // the module below can only be the preloader's own list.
    second.modules.invalidate("hello");
    assert_eq!(
        second.load_enabled_modules(&mut unloadable).await.unwrap(),
        0
    );
    assert!(second.runtime.loaded_module(&hash).is_none());
    // The mended code itself loads: the skip above was the preloader's doing.
    assert_eq!(
        second
            .load_enabled_modules(&mut HashSet::new())
            .await
            .unwrap(),
        1
    );
    assert!(second.runtime.loaded_module(&hash).is_some());
    let _ = raw.close().await;
}
