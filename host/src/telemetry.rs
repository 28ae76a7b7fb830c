//! This node's own metrics, as `/metrics` serves them in the OpenMetrics text format that
//! Prometheus scrapes: the one registry, every metric family in it, and the few calls that
//! record into them. Imports nothing of the crate but [`crate::domain`], so any layer may
//! hold a [`Telemetry`] and record; what is read at scrape time (the backlog, pools,
//! instances) is gathered by the caller into a [`Snapshot`], never fetched from here.
//!
//! Every figure is this node's: each node of a distributed deployment exports its own
//! counters (sum them over instances in Prometheus), except the queued executions, which
//! every node reads from the shared database (take one node's, or `max`).
//!
//! The crate is `prometheus-client`, the Prometheus organisation's own Rust client: typed
//! label sets (a label set is a struct, so a misspelt label is a compile error), the
//! OpenMetrics text encoder, and three small dependencies. Recording stays off the lock
//! the families take on a new label set: executions are counted once per recorded batch
//! and group, and the dispatch histograms are taken once, at start.

use std::collections::HashMap;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::domain::usage::OutboundTally;
use crate::domain::{ExecutionStatus, PoolState, Trigger};

/// The prefix of every metric name.
const PREFIX: &str = "runcell";

/// The `Content-Type` of what [`Telemetry::encode`] writes.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds, in seconds, of the buckets of run durations: a no-op run takes tens of
/// microseconds, a job waiting on a slow endpoint minutes (the default time limit is 30 s,
/// the ceiling longer).
const DURATION_BUCKETS: [f64; 19] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Upper bounds, in seconds, of the buckets of dispatch latency: a run started at once
/// waits about a millisecond, one behind a backlog seconds to minutes.
const LATENCY_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

const TRIGGERS: [Trigger; 4] = [
    Trigger::Manual,
    Trigger::Cron,
    Trigger::Event,
    Trigger::Retry,
];

/// Executions by module, the module's job and final status. The module's job is labelled
/// `handler`: a `job` label would clash with the one Prometheus gives every series it
/// scrapes (the name of its scrape job).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    module: String,
    handler: String,
    status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandlerLabels {
    module: String,
    handler: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModuleLabels {
    module: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerLabels {
    trigger: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutboundLabels {
    module: String,
    host: String,
    class: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: &'static str,
    route: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolUseLabels {
    pool: &'static str,
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueuedLabels {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

/// What the reconciler did to an execution it found stranded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReconcilerAction {
    /// A queued execution no queue held, offered to the queue again.
    Offered,
    /// A running execution whose node stopped before its handler began, back in the queue.
    Requeued,
    /// A running execution whose node stopped after its handler began, failed.
    Failed,
    /// A running execution whose node stopped, cancelled as was asked meanwhile.
    Cancelled,
}

impl ReconcilerAction {
    fn as_str(self) -> &'static str {
        match self {
            Self::Offered => "offered",
            Self::Requeued => "requeued",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// A run this node recorded a final status for, as the worker knows it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FinishedRun<'a> {
    pub module: &'a str,
    /// The module's job.
    pub handler: &'a str,
    pub status: ExecutionStatus,
    /// `None` for a run refused before it started.
    pub duration_ms: Option<f64>,
    pub fuel_consumed: u64,
}

/// What `/metrics` reports as it stands at the scrape, gathered by the caller.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    /// Queued executions of the whole deployment (due now, waiting for a later time);
    /// `None` when the database did not answer, and then left out.
    pub queued: Option<(u64, u64)>,
    /// Executions running on this node.
    pub running: usize,
    /// Instances alive on this node and how many its instance pools hold.
    pub instances: (u32, u32),
    /// Guests running their code now and how many may at once.
    pub cpu_guests: (usize, usize),
    pub database_pools: Vec<PoolState>,
    pub redis_pools: Vec<PoolState>,
}

/// The metrics of one node; cheap to clone, every clone records into the same registry.
#[derive(Clone)]
pub(crate) struct Telemetry {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    executions: Family<RunLabels, Counter>,
    fuel: Family<HandlerLabels, Counter>,
    duration: HistogramFamily<ModuleLabels>,
    /// One histogram per trigger, in the order of [`TRIGGERS`], taken from their family
    /// once: observing one takes no lock but the histogram's own.
    dispatch: [Histogram; 4],
    outbound: Family<OutboundLabels, Counter>,
    http: Family<HttpLabels, Counter>,
    cron_ticks: Counter,
    reconciler: Family<ActionLabels, Counter>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

impl Telemetry {
    /// A registry with every family of a node, empty but for the build information.
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        registry.register(
            "build",
            "The version of runcell this node runs",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        let executions = Family::<RunLabels, Counter>::default();
        registry.register(
            "executions",
            "Executions this node recorded a final status for, by module, module's job (handler) and status",
            executions.clone(),
        );
        let fuel = Family::<HandlerLabels, Counter>::default();
        registry.register(
            "fuel_consumed",
            "Fuel (wasm instructions, roughly) the runs this node recorded consumed",
            fuel.clone(),
        );
        let duration: HistogramFamily<ModuleLabels> =
            Family::new_with_constructor(duration_histogram);
        // The unit is in the name, as Prometheus's conventions ask, with no `# UNIT`
        // line: OpenMetrics allows one on a histogram, but not every reader takes it
        // (openmetrics-parser 0.5 refuses it), and Prometheus needs none.
        registry.register(
            "execution_duration_seconds",
            "How long the runs this node recorded took, from start to end, by module",
            duration.clone(),
        );
        let dispatch_family: HistogramFamily<TriggerLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "dispatch_latency_seconds",
            "From when a run was due (its schedule, or the end of a retry's backoff) to when this node started it, by trigger",
            dispatch_family.clone(),
        );
        let dispatch = TRIGGERS.map(|trigger| {
            dispatch_family.get_or_create_owned(&TriggerLabels {
                trigger: trigger.as_str(),
            })
        });
        let outbound = Family::<OutboundLabels, Counter>::default();
        registry.register(
            "outbound_requests",
            "Outbound HTTP requests of runs on this node, by module, host and class of answer (2xx, 3xx, 4xx, 5xx, error, denied)",
            outbound.clone(),
        );
        let http = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests this node answered on the API's listener, by method, route template and status",
            http.clone(),
        );
        let cron_ticks = Counter::default();
        registry.register(
            "cron_ticks_fired",
            "Executions this node created for cron ticks while it led the scheduler",
            cron_ticks.clone(),
        );
        let reconciler = Family::<ActionLabels, Counter>::default();
        registry.register(
            "reconciler_actions",
            "Executions this node's reconciler offered to the queue again or settled after their node stopped, by action",
            reconciler.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                registry,
                executions,
                fuel,
                duration,
                dispatch,
                outbound,
                http,
                cron_ticks,
                reconciler,
            }),
        }
    }

    /// Counts the runs of one batch whose final status the store just recorded: grouped
    /// first, so each group's counters are looked up once, not once per run.
    pub(crate) fn record_finished<'a>(&self, runs: impl IntoIterator<Item = FinishedRun<'a>>) {
        #[derive(Default)]
        struct Group {
            statuses: Vec<(ExecutionStatus, u64)>,
            fuel: u64,
            durations: Vec<f64>,
        }
        let mut groups: HashMap<(&str, &str), Group> = HashMap::new();
        for run in runs {
            let group = groups.entry((run.module, run.handler)).or_default();
            match group.statuses.iter_mut().find(|(s, _)| *s == run.status) {
                Some((_, count)) => *count += 1,
                None => group.statuses.push((run.status, 1)),
            }
            group.fuel += run.fuel_consumed;
            group
                .durations
                .extend(run.duration_ms.map(|ms| ms / 1000.0));
        }
        for ((module, handler), group) in groups {
            for (status, count) in group.statuses {
                self.inner
                    .executions
                    .get_or_create(&RunLabels {
                        module: module.to_owned(),
                        handler: handler.to_owned(),
                        status: status.as_str(),
                    })
                    .inc_by(count);
            }
            self.inner
                .fuel
                .get_or_create(&HandlerLabels {
                    module: module.to_owned(),
                    handler: handler.to_owned(),
                })
                .inc_by(group.fuel);
            if !group.durations.is_empty() {
                let histogram = self.inner.duration.get_or_create_owned(&ModuleLabels {
                    module: module.to_owned(),
                });
                for seconds in group.durations {
                    histogram.observe(seconds);
                }
            }
        }
    }

    /// Counts an execution that ended without a run of this node's: a queued one
    /// cancelled, or one the reconciler settled.
    pub(crate) fn record_ended(&self, module: &str, handler: &str, status: ExecutionStatus) {
        self.inner
            .executions
            .get_or_create(&RunLabels {
                module: module.to_owned(),
                handler: handler.to_owned(),
                status: status.as_str(),
            })
            .inc();
    }

    /// Notes that a run started `waited_ms` after it was due.
    pub(crate) fn observe_dispatch(&self, trigger: Trigger, waited_ms: i64) {
        let index = TRIGGERS
            .iter()
            .position(|t| *t == trigger)
            .expect("every trigger has a histogram");
        self.inner.dispatch[index].observe(waited_ms.max(0) as f64 / 1000.0);
    }

    /// Counts `module`'s outbound HTTP requests of `tally` by the class of their answers
    /// (`2xx`, `3xx`, `4xx`, `5xx`, `error`, `denied`).
    pub(crate) fn record_outbound(&self, module: &str, tally: &OutboundTally) {
        for (class, requests) in [
            ("2xx", tally.responses_2xx),
            ("3xx", tally.responses_3xx),
            ("4xx", tally.responses_4xx),
            ("5xx", tally.responses_5xx),
            ("error", tally.errors),
            ("denied", tally.denied),
        ] {
            if requests > 0 {
                self.inner
                    .outbound
                    .get_or_create(&OutboundLabels {
                        module: module.to_owned(),
                        host: tally.host.clone(),
                        class: class.to_owned(),
                    })
                    .inc_by(requests.unsigned_abs());
            }
        }
    }

    /// Counts an HTTP request answered with `status` on the route template `route`
    /// (never the raw path, which would make a series per id).
    pub(crate) fn record_http(&self, method: &str, route: &str, status: u16) {
        let method = match method {
            "GET" => "GET",
            "HEAD" => "HEAD",
            "POST" => "POST",
            "PUT" => "PUT",
            "PATCH" => "PATCH",
            "DELETE" => "DELETE",
            "OPTIONS" => "OPTIONS",
            // A client may invent methods; each must not become a series.
            _ => "OTHER",
        };
        self.inner
            .http
            .get_or_create(&HttpLabels {
                method,
                route: route.to_owned(),
                status,
            })
            .inc();
    }

    /// Counts executions created for cron ticks.
    pub(crate) fn record_cron_ticks(&self, fired: usize) {
        self.inner.cron_ticks.inc_by(fired as u64);
    }

    /// Counts what the reconciler did to `executions` executions.
    pub(crate) fn record_reconciler(&self, action: ReconcilerAction, executions: usize) {
        self.inner
            .reconciler
            .get_or_create(&ActionLabels {
                action: action.as_str(),
            })
            .inc_by(executions as u64);
    }

    /// Every metric of this node in the OpenMetrics text format: the registry's families,
    /// then those of `snapshot`.
    pub(crate) fn encode(&self, snapshot: &Snapshot) -> String {
        let mut text = String::new();
        // Writing into a `String` cannot fail.
        let _ = encode_registry(&mut text, &self.inner.registry);
        let _ = encode_registry(&mut text, &snapshot_registry(snapshot));
        let _ = encode_eof(&mut text);
        text
    }
}

fn gauge(value: impl TryInto<i64>) -> Gauge {
    let gauge = Gauge::default();
    gauge.set(value.try_into().unwrap_or(i64::MAX));
    gauge
}

/// The families read at the scrape, in a registry of their own made for it.
fn snapshot_registry(snapshot: &Snapshot) -> Registry {
    let mut registry = Registry::with_prefix(PREFIX);
    if let Some((due, delayed)) = snapshot.queued {
        let queued = Family::<QueuedLabels, Gauge>::default();
        queued
            .get_or_create(&QueuedLabels { state: "due" })
            .set(due.try_into().unwrap_or(i64::MAX));
        queued
            .get_or_create(&QueuedLabels { state: "delayed" })
            .set(delayed.try_into().unwrap_or(i64::MAX));
        registry.register(
            "executions_queued",
            "Queued executions of the whole deployment (read from the database at the scrape): due now, or waiting for a later time (a retry's backoff)",
            queued,
        );
    }
    registry.register(
        "executions_running",
        "Executions running on this node",
        gauge(snapshot.running),
    );
    let (in_use, capacity) = snapshot.instances;
    registry.register(
        "instance_pool_in_use",
        "Wasm instances alive on this node (runs, module route requests, describe calls)",
        gauge(in_use),
    );
    registry.register(
        "instance_pool_capacity",
        "Wasm instances this node's instance pools hold",
        gauge(capacity),
    );
    let (busy, cpus) = snapshot.cpu_guests;
    registry.register(
        "cpu_guests_busy",
        "Guests running their code on a CPU on this node now",
        gauge(busy),
    );
    registry.register(
        "cpu_guests_capacity",
        "Guests that may run their code at once on this node (--cpu-guests)",
        gauge(cpus),
    );
    register_pools(&mut registry, "db", "database", &snapshot.database_pools);
    register_pools(&mut registry, "redis", "Redis", &snapshot.redis_pools);
    registry
}

/// The families of `pools` (none when there are none), named `{kind}_pool_...`.
fn register_pools(registry: &mut Registry, kind: &str, what: &str, pools: &[PoolState]) {
    if pools.is_empty() {
        return;
    }
    let connections = Family::<PoolUseLabels, Gauge>::default();
    let max = Family::<PoolLabels, Gauge>::default();
    let waiting = Family::<PoolLabels, Gauge>::default();
    for pool in pools {
        let lent = pool.open.saturating_sub(pool.idle);
        for (state, count) in [("idle", pool.idle), ("in_use", lent)] {
            connections
                .get_or_create(&PoolUseLabels {
                    pool: pool.name,
                    state,
                })
                .set(count.into());
        }
        max.get_or_create(&PoolLabels { pool: pool.name })
            .set(pool.max.into());
        if let Some(count) = pool.waiting {
            waiting
                .get_or_create(&PoolLabels { pool: pool.name })
                .set(count.into());
        }
    }
    registry.register(
        format!("{kind}_pool_connections"),
        format!("Open connections of this node's {what} pools, idle or in use"),
        connections,
    );
    registry.register(
        format!("{kind}_pool_max_connections"),
        format!("The most connections each of this node's {what} pools may open"),
        max,
    );
    if pools.iter().any(|pool| pool.waiting.is_some()) {
        registry.register(
            format!("{kind}_pool_waiting"),
            format!("Callers waiting for a connection of this node's {what} pools"),
            waiting,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample `name{labels}` in `text`, where `labels` is the exact
    /// label text as encoded.
    fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
        text.lines().find_map(|line| {
            let value = line.strip_prefix(name_and_labels)?.strip_prefix(' ')?;
            value.parse().ok()
        })
    }

    fn run<'a>(
        module: &'a str,
        handler: &'a str,
        status: ExecutionStatus,
        duration_ms: Option<f64>,
    ) -> FinishedRun<'a> {
        FinishedRun {
            module,
            handler,
            status,
            duration_ms,
            fuel_consumed: 100,
        }
    }

    #[test]
    fn a_batch_is_counted_by_module_handler_and_status_with_its_fuel_and_durations() {
        let telemetry = Telemetry::new();
        telemetry.record_finished([
            run("hello", "greet", ExecutionStatus::Completed, Some(0.05)),
            run("hello", "greet", ExecutionStatus::Completed, Some(2.0)),
            run("hello", "greet", ExecutionStatus::Failed, None),
            run("hostile", "spin", ExecutionStatus::TimedOut, Some(30_000.0)),
        ]);
        telemetry.record_finished([run("hello", "greet", ExecutionStatus::Completed, Some(1.0))]);
        telemetry.record_ended("hello", "greet", ExecutionStatus::Cancelled);
        let text = telemetry.encode(&Snapshot::default());
        let executions =
            |labels: &str| sample(&text, &format!("runcell_executions_total{{{labels}}}"));
        assert_eq!(
            executions(r#"module="hello",handler="greet",status="COMPLETED""#),
            Some(3.0),
            "{text}"
        );
        assert_eq!(
            executions(r#"module="hello",handler="greet",status="FAILED""#),
            Some(1.0)
        );
        assert_eq!(
            executions(r#"module="hello",handler="greet",status="CANCELLED""#),
            Some(1.0)
        );
        assert_eq!(
            executions(r#"module="hostile",handler="spin",status="TIMED_OUT""#),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"runcell_fuel_consumed_total{module="hello",handler="greet"}"#
            ),
            Some(400.0)
        );
        // The refused run has no duration: three observations, not four.
        assert_eq!(
            sample(
                &text,
                r#"runcell_execution_duration_seconds_count{module="hello"}"#
            ),
            Some(3.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"runcell_execution_duration_seconds_bucket{le="0.001",module="hello"}"#
            ),
            Some(2.0),
            "{text}"
        );
        assert!(text.contains(&format!(
            "runcell_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn dispatch_latency_is_observed_per_trigger_in_seconds_and_never_negative() {
        let telemetry = Telemetry::new();
        telemetry.observe_dispatch(Trigger::Cron, 1_500);
        telemetry.observe_dispatch(Trigger::Manual, 2);
        telemetry.observe_dispatch(Trigger::Manual, -5);
        let text = telemetry.encode(&Snapshot::default());
        assert_eq!(
            sample(
                &text,
                r#"runcell_dispatch_latency_seconds_sum{trigger="cron"}"#
            ),
            Some(1.5)
        );
        assert_eq!(
            sample(
                &text,
                r#"runcell_dispatch_latency_seconds_count{trigger="manual"}"#
            ),
            Some(2.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"runcell_dispatch_latency_seconds_bucket{le="0.001",trigger="manual"}"#
            ),
            Some(1.0),
            "{text}"
        );
        // Every trigger's series exists from the start, so rates have a zero to begin at.
        assert_eq!(
            sample(
                &text,
                r#"runcell_dispatch_latency_seconds_count{trigger="retry"}"#
            ),
            Some(0.0)
        );
    }

    #[test]
    fn http_requests_are_counted_by_route_template_and_invented_methods_share_one_series() {
        let telemetry = Telemetry::new();
        telemetry.record_http("GET", "/api/v1/jobs/{id}", 200);
        telemetry.record_http("GET", "/api/v1/jobs/{id}", 200);
        telemetry.record_http("BREW", "/api/v1/jobs/{id}", 405);
        telemetry.record_http("FROB", "/api/v1/jobs/{id}", 405);
        let text = telemetry.encode(&Snapshot::default());
        assert_eq!(
            sample(
                &text,
                r#"runcell_http_requests_total{method="GET",route="/api/v1/jobs/{id}",status="200"}"#
            ),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                r#"runcell_http_requests_total{method="OTHER",route="/api/v1/jobs/{id}",status="405"}"#
            ),
            Some(2.0)
        );
    }

    #[test]
    fn cron_reconciler_and_outbound_counters_add_up() {
        let telemetry = Telemetry::new();
        telemetry.record_cron_ticks(3);
        telemetry.record_cron_ticks(0);
        telemetry.record_reconciler(ReconcilerAction::Offered, 10);
        telemetry.record_reconciler(ReconcilerAction::Failed, 1);
        let tally = |responses_2xx, denied| OutboundTally {
            responses_2xx,
            denied,
            ..OutboundTally::new("example.com")
        };
        telemetry.record_outbound("endpoint-monitor", &tally(4, 1));
        telemetry.record_outbound("endpoint-monitor", &tally(1, 0));
        let text = telemetry.encode(&Snapshot::default());
        assert_eq!(sample(&text, "runcell_cron_ticks_fired_total"), Some(3.0));
        assert_eq!(
            sample(
                &text,
                r#"runcell_reconciler_actions_total{action="offered"}"#
            ),
            Some(10.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"runcell_outbound_requests_total{module="endpoint-monitor",host="example.com",class="2xx"}"#
            ),
            Some(5.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"runcell_outbound_requests_total{module="endpoint-monitor",host="example.com",class="denied"}"#
            ),
            Some(1.0)
        );
    }

    #[test]
    fn the_snapshot_is_encoded_as_gauges_and_pools_appear_only_where_there_are_some() {
        let telemetry = Telemetry::new();
        let snapshot = Snapshot {
            queued: Some((7, 2)),
            running: 3,
            instances: (4, 296),
            cpu_guests: (1, 2),
            database_pools: vec![PoolState {
                name: "main",
                max: 8,
                open: 5,
                idle: 2,
                waiting: None,
            }],
            redis_pools: Vec::new(),
        };
        let text = telemetry.encode(&snapshot);
        for (series, value) in [
            (r#"runcell_executions_queued{state="due"}"#, 7.0),
            (r#"runcell_executions_queued{state="delayed"}"#, 2.0),
            ("runcell_executions_running", 3.0),
            ("runcell_instance_pool_in_use", 4.0),
            ("runcell_instance_pool_capacity", 296.0),
            ("runcell_cpu_guests_busy", 1.0),
            ("runcell_cpu_guests_capacity", 2.0),
            (
                r#"runcell_db_pool_connections{pool="main",state="idle"}"#,
                2.0,
            ),
            (
                r#"runcell_db_pool_connections{pool="main",state="in_use"}"#,
                3.0,
            ),
            (r#"runcell_db_pool_max_connections{pool="main"}"#, 8.0),
        ] {
            assert_eq!(sample(&text, series), Some(value), "{series} in {text}");
        }
        assert!(!text.contains("runcell_redis_pool"), "{text}");
        assert!(!text.contains("runcell_db_pool_waiting"), "{text}");
        // One end of the exposition, after both registries.
        assert_eq!(text.matches("# EOF").count(), 1);
        assert!(text.ends_with("# EOF\n"));

        let unanswered = telemetry.encode(&Snapshot {
            queued: None,
            ..snapshot
        });
        assert!(!unanswered.contains("runcell_executions_queued"));
    }
}
