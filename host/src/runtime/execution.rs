//! One execution: a fresh store with its limits and deadline, one instance, one call, and
//! the translation of whatever happened into an [`Outcome`]. The store is dropped at the
//! end; nothing of a run survives into the next.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{Store, Trap, UpdateDeadline, WasmBacktrace};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::bindings::{JobModulePre, types};
use super::clock::RunClock;
use super::cpu::CpuMeter;
use super::cpu_permits::CpuPermits;
use super::host::http::{OutboundBudget, OutboundHttp};
use super::host::{HostCallTimedOut, HostContext};
use super::lanes::Lane;
use super::limiter::MemoryLimiter;
use super::logs::{LogCollector, LogObserver, Stream};
use super::redact::Redactor;
use super::stdio::CapturedStream;
use crate::domain::usage::OutboundTally;
use crate::domain::{
    FUEL_PER_CPU_MS, FailureKind, Grants, Limits, LogEntry, LogLevel, Outcome,
    RUST_FUEL_PER_CPU_MS, RunContext, RunReport, Trigger, Usage,
};

/// How long past its deadline a run stuck in a host call (a WASI sleep, a slow backend)
/// may take before its future is dropped. Epoch ticks stop guest code on time; this
/// bounds the time spent where epochs cannot fire.
pub(crate) const HOST_CALL_GRACE: Duration = Duration::from_millis(20);

/// Room beside the largest string or list in one call for the call's other arguments.
const HOST_COPY_SLACK_BYTES: usize = 64 * 1024;

/// The most bytes one call may copy out of guest memory into the host: the run's output
/// cap or the largest value a host call accepts (a key-value value), whichever is larger,
/// plus [`HOST_COPY_SLACK_BYTES`].
///
/// Wasmtime counts the bytes of the strings and lists it lifts out of guest memory against
/// this "hostcall fuel" and refuses a lift that would pass it *before* allocating, both for
/// the arguments of a host call and for the result of `run`. So a guest that fills its
/// memory and returns (or logs) all of it costs the host at most this much, never the size
/// of its memory: output above the cap is refused where it lies.
pub(crate) fn host_copy_bound(limits: &Limits) -> usize {
    let output = usize::try_from(limits.max_output_bytes).unwrap_or(usize::MAX);
    output
        .max(super::host::kv::MAX_VALUE_BYTES)
        .saturating_add(HOST_COPY_SLACK_BYTES)
}

/// Fuel the guest gets at a time out of its run's budget. Wasmtime's compiled code keeps
/// its fuel count in a register and writes it back only at calls, returns and the end of
/// a slice; an epoch interruption (the deadline, a cancellation) reads the count without
/// that write-back, so a tight loop stopped by the clock used to report the fuel of its
/// last call (about a thousand units) whatever it ran. With slices, what is reported
/// after such a stop is at most one slice short. About a millisecond of guest CPU: the
/// refill costs a yield, negligible at that interval.
const FUEL_SLICE: u64 = FUEL_PER_CPU_MS;

/// Everything a run needs besides the module.
#[derive(Clone)]
pub struct RunRequest {
    pub job: String,
    /// JSON text.
    pub input: String,
    pub context: RunContext,
    pub limits: Limits,
    pub grants: Arc<Grants>,
    /// The job's settings, secrets already decrypted.
    pub config: Arc<BTreeMap<String, String>>,
    /// The values of the secret settings: masked in the run's log lines, error and output.
    pub redact: Redactor,
    pub cancel: CancelToken,
    pub log_observer: Option<LogObserver>,
    /// Told when the guest's code is about to start: once the run has a CPU, which may
    /// be a while after it was handed to the runtime.
    pub start_listener: Option<Arc<dyn StartListener>>,
    /// Counts the run's outbound requests against its module's enforced budgets; `None`
    /// when the module has none.
    pub(crate) outbound_budget: Option<Arc<dyn OutboundBudget>>,
}

/// Hears that a run's guest code is about to start.
pub trait StartListener: Send + Sync {
    /// Called once per run, on the run's thread, before instantiation.
    fn started(&self, execution_id: &str);
}

impl std::fmt::Debug for RunRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Config may hold secrets: never print it.
        f.debug_struct("RunRequest")
            .field("job", &self.job)
            .field("context", &self.context)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl RunRequest {
    /// A manual run of `job` with `input` under `limits`, granting nothing.
    pub fn new(job: impl Into<String>, input: impl Into<String>, limits: Limits) -> Self {
        Self {
            job: job.into(),
            input: input.into(),
            context: RunContext {
                execution_id: String::new(),
                attempt: 1,
                trigger: Trigger::Manual,
                scheduled_at_ms: super::logs::now_ms(),
            },
            limits,
            grants: Arc::new(Grants::default()),
            config: Arc::new(BTreeMap::new()),
            redact: Redactor::default(),
            cancel: CancelToken::default(),
            log_observer: None,
            start_listener: None,
            outbound_budget: None,
        }
    }
}

/// Asks a run to stop: a queued run never starts, a running one stops at its next epoch
/// tick or, if it waits on the host, at once.
#[derive(Debug, Clone, Default)]
pub struct CancelToken {
    inner: Arc<CancelInner>,
}

#[derive(Debug, Default)]
struct CancelInner {
    cancelled: AtomicBool,
    notify: tokio::sync::Notify,
}

impl CancelToken {
    pub fn cancel(&self) {
        self.inner.cancelled.store(true, Ordering::SeqCst);
        self.inner.notify.notify_waiters();
    }

    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::SeqCst)
    }

    pub async fn cancelled(&self) {
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

/// Why the epoch callback stopped the guest.
#[derive(Debug, thiserror::Error)]
enum Interrupted {
    #[error("the wall-clock deadline passed")]
    TimedOut,
    #[error("the execution was cancelled")]
    Cancelled,
}

/// The data of one store: WASI closed down, the capability context, the limiter.
pub(crate) struct ExecutionState {
    wasi: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    http_hooks: OutboundHttp,
    limiter: MemoryLimiter,
    pub(crate) host: HostContext,
}

impl WasiView for ExecutionState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for ExecutionState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_hooks,
        }
    }
}

/// What a store's run used, whether it hit its memory limit, and its outbound requests
/// per host, once the guest's call is over; outbound requests still open are ended with
/// the reason.
pub(crate) fn conclude<T>(
    store: &Store<ExecutionState>,
    limits: &Limits,
    started: Instant,
    result: &wasmtime::Result<T>,
) -> (Usage, bool, Vec<OutboundTally>) {
    let state = store.data();
    let usage = Usage {
        wall_time: started.elapsed(),
        fuel_consumed: limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0)),
        memory_peak_bytes: state.limiter.peak_bytes(),
        cpu_time: Duration::ZERO,
    };
    let outbound = state.http_hooks.finish(match result {
        Err(error) if is_deadline(error) => "the run hit its deadline",
        Err(error) if matches!(error.downcast_ref(), Some(Interrupted::Cancelled)) => {
            "the run was cancelled"
        }
        _ => "the run ended first",
    });
    (usage, state.limiter.limit_hit(), outbound)
}

/// The error a call ends with when its wall-clock deadline passes while it waits.
pub(crate) fn deadline_passed() -> wasmtime::Error {
    wasmtime::Error::new(Interrupted::TimedOut)
}

/// Builds the store for one run in `lane`: WASI with no directories, environment,
/// arguments or network; stdout/stderr into the log; fuel, memory limiter and epoch
/// deadline set. The run's clock starts now.
pub(crate) fn new_store(
    lane: &Lane,
    module_name: Arc<str>,
    request: &RunRequest,
) -> (Store<ExecutionState>, LogCollector, Arc<RunClock>) {
    let limits = request.limits;
    let logs = LogCollector::new(
        limits.max_log_lines,
        limits.max_log_bytes,
        request.log_observer.clone(),
    )
    .redacting(request.redact.clone());
    let wasi = WasiCtxBuilder::new()
        .stdout(CapturedStream::new(logs.clone(), Stream::Stdout))
        .stderr(CapturedStream::new(logs.clone(), Stream::Stderr))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build();
    let clock = Arc::new(RunClock::start(limits.timeout));
    let state = ExecutionState {
        wasi,
        table: ResourceTable::new(),
        http: WasiHttpCtx::new(),
        http_hooks: OutboundHttp::new(
            request.grants.clone(),
            lane.outbound.clone(),
            logs.clone(),
            clock.clone(),
            request.outbound_budget.clone(),
        ),
        limiter: MemoryLimiter::new(limits.memory_bytes),
        host: HostContext {
            module: module_name,
            execution_id: Arc::from(request.context.execution_id.as_str()),
            grants: request.grants.clone(),
            config: request.config.clone(),
            services: lane.services.clone(),
            logs: logs.clone(),
            clock: clock.clone(),
            samples_recorded: 0,
            events_published: 0,
        },
    };
    let mut store = Store::new(&lane.engine, state);
    store.limiter(|state| &mut state.limiter);
    store.set_hostcall_fuel(host_copy_bound(&limits));
    store
        .fuel_async_yield_interval(Some(FUEL_SLICE))
        .expect("the engine is built with fuel and async support");
    store
        .set_fuel(limits.fuel)
        .expect("the engine is built with fuel enabled");
    store.set_epoch_deadline(1);
    let cancel = request.cancel.clone();
    let run_clock = clock.clone();
    store.epoch_deadline_callback(move |_| {
        if cancel.is_cancelled() {
            return Err(wasmtime::Error::new(Interrupted::Cancelled));
        }
        if run_clock.passed() {
            return Err(wasmtime::Error::new(Interrupted::TimedOut));
        }
        // Not yet due: give the thread to other tasks for a moment, then go on.
        Ok(UpdateDeadline::Yield(1))
    });
    (store, logs, clock)
}

/// Runs `request` on a fresh instance of `pre`, which belongs to `lane`, its guest code
/// only while it holds one of `permits`.
pub(crate) async fn execute(
    lane: &Lane,
    permits: &CpuPermits,
    module_name: Arc<str>,
    pre: &JobModulePre<ExecutionState>,
    request: RunRequest,
) -> RunReport {
    let started = Instant::now();
    if request.cancel.is_cancelled() {
        return RunReport {
            outcome: Outcome::Cancelled,
            usage: Usage::default(),
            logs: Vec::new(),
            dropped_log_lines: 0,
            outbound: Vec::new(),
        };
    }
    let limits = request.limits;
    let (mut store, logs, clock) = new_store(lane, module_name, &request);
    let context = types::RunContext {
        execution_id: request.context.execution_id.clone(),
        attempt: request.context.attempt,
        trigger: match request.context.trigger {
            Trigger::Manual => types::Trigger::Manual,
            Trigger::Cron => types::Trigger::Cron,
            Trigger::Event => types::Trigger::Event,
            Trigger::Retry => types::Trigger::Retry,
        },
        scheduled_at_ms: request.context.scheduled_at_ms,
    };
    let cpu = CpuMeter::default();
    let result = {
        let call = async {
            if let Some(listener) = &request.start_listener {
                listener.started(&request.context.execution_id);
            }
            let instance = pre.instantiate_async(&mut store).await?;
            instance
                .call_run(&mut store, &request.job, &context, &request.input)
                .await
        };
        let call = std::pin::pin!(call);
        let mut call = permits.run(&clock, &cpu, call);
        // The guest runs on a fiber until it returns or waits, so a short run that finds
        // a CPU free ends within this first poll. Only a run that waits gets a timer and
        // a cancellation waiter: creating a timer writes the runtime's handle, which all
        // worker threads share.
        let first = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut call).poll(cx))).await;
        match first {
            Poll::Ready(result) => result,
            Poll::Pending => tokio::select! {
                biased;
                result = &mut call => result,
                () = clock.expired(HOST_CALL_GRACE) => Err(deadline_passed()),
                () = request.cancel.cancelled() => Err(wasmtime::Error::new(Interrupted::Cancelled)),
            },
        }
    };
    let (mut usage, memory_limit_hit, outbound) = conclude(&store, &limits, started, &result);
    usage.cpu_time = cpu.spent();
    let (entries, dropped_log_lines) = logs.finish();
    let outcome = match result {
        Ok(Ok(output)) => completed(output, &limits),
        Ok(Err(error)) => job_failed(error),
        Err(error) => classify_error(&error, memory_limit_hit, &limits, &entries),
    };
    let outcome = request.redact.outcome(outcome);
    RunReport {
        outcome,
        usage,
        logs: entries,
        dropped_log_lines,
        outbound,
    }
}

/// Most error text comes from the guest and is bounded before it is stored.
const MAX_ERROR_MESSAGE_BYTES: usize = 4096;

fn completed(output: String, limits: &Limits) -> Outcome {
    if output.len() as u64 > limits.max_output_bytes {
        return Outcome::Failed {
            kind: FailureKind::OutputTooLarge,
            message: format!(
                "the job returned {} bytes of output, above its limit of {} bytes",
                output.len(),
                limits.max_output_bytes
            ),
        };
    }
    match serde_json::from_str(&output) {
        Ok(output) => Outcome::Completed { output },
        Err(err) => Outcome::Failed {
            kind: FailureKind::InvalidOutput,
            message: format!("the job's output is not JSON: {err}"),
        },
    }
}

fn job_failed(error: types::JobError) -> Outcome {
    let (kind, message) = match error {
        types::JobError::InvalidInput(m) => (FailureKind::InvalidInput, m),
        types::JobError::Transient(m) => (FailureKind::Transient, m),
        types::JobError::Permanent(m) => (FailureKind::Permanent, m),
    };
    Outcome::Failed {
        kind,
        message: super::logs::truncate(&message, MAX_ERROR_MESSAGE_BYTES),
    }
}

/// Whether `error` is one of the ways a run is stopped at its wall-clock deadline.
fn is_deadline(error: &wasmtime::Error) -> bool {
    matches!(error.downcast_ref(), Some(Interrupted::TimedOut))
        || error.downcast_ref::<HostCallTimedOut>().is_some()
        || matches!(error.downcast_ref(), Some(Trap::Interrupt))
}

pub(crate) fn classify_error(
    error: &wasmtime::Error,
    memory_limit_hit: bool,
    limits: &Limits,
    logs: &[LogEntry],
) -> Outcome {
    if let Some(interrupted) = error.downcast_ref::<Interrupted>() {
        return match interrupted {
            Interrupted::TimedOut => Outcome::TimedOut {
                timeout: limits.timeout,
            },
            Interrupted::Cancelled => Outcome::Cancelled,
        };
    }
    if error.downcast_ref::<HostCallTimedOut>().is_some() {
        return Outcome::TimedOut {
            timeout: limits.timeout,
        };
    }
    if let Some(outcome) = copy_refused(error, limits) {
        return outcome;
    }
    let memory_exceeded = || Outcome::Failed {
        kind: FailureKind::MemoryLimitExceeded,
        message: format!(
            "the guest tried to grow its memory past its limit of {}",
            bytesize::ByteSize(limits.memory_bytes).display().iec()
        ),
    };
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => Outcome::Failed {
            kind: FailureKind::OutOfFuel,
            message: format!(
                "used all of its {} fuel units (roughly {} to {} ms of CPU for compiled Rust); raise the fuel limit or do less work per run",
                limits.fuel,
                limits.fuel / RUST_FUEL_PER_CPU_MS.1,
                limits.fuel / RUST_FUEL_PER_CPU_MS.0
            ),
        },
        Some(Trap::Interrupt) => Outcome::TimedOut {
            timeout: limits.timeout,
        },
        Some(Trap::StackOverflow) => Outcome::Failed {
            kind: FailureKind::Trap,
            message: "stack overflow: the guest recursed too deeply".into(),
        },
        Some(Trap::MemoryOutOfBounds) if is_runaway_recursion(error) => Outcome::Failed {
            kind: FailureKind::Trap,
            message: "stack overflow: the guest recursed until its stack in linear memory ran \
                      out (an out-of-bounds access under the same few functions, frame after \
                      frame)"
                .into(),
        },
        // A guest whose allocation was refused usually aborts right after; report the
        // cause, not the abort.
        Some(_) | None if memory_limit_hit => memory_exceeded(),
        Some(trap) => {
            let mut message = trap.to_string();
            if let Some(panic) = panic_message(logs) {
                message = format!("{message} after the guest panicked: {panic}");
            }
            Outcome::Failed {
                kind: FailureKind::Trap,
                message,
            }
        }
        None => Outcome::Failed {
            kind: FailureKind::Trap,
            message: super::logs::truncate(&format!("{error:#}"), MAX_ERROR_MESSAGE_BYTES),
        },
    }
}

/// Innermost frames of a trap's backtrace (wasmtime captures 20) that must be there, and
/// the most distinct functions among them, for an out-of-bounds access to be read as the
/// end of a runaway recursion.
const RECURSION_MIN_FRAMES: usize = 16;
const RECURSION_MAX_FUNCTIONS: usize = 4;

/// Whether an out-of-bounds access is, most likely, a stack overflow in linear memory.
///
/// Compilers for wasm (Rust, C, Zig through LLVM) keep locals whose address is taken on a
/// "shadow" stack in linear memory, usually placed first and growing down towards address
/// 0. A recursion that runs it out takes the stack pointer below 0 and the next store
/// faults: wasmtime reports an out-of-bounds access, with no address (memories here are
/// bounds-checked explicitly, not by guard pages). What tells it apart is the
/// stack it happened on: the innermost frames are a few functions calling each other over
/// and over. An out-of-bounds bug in ordinary code has a varied stack; a bug deep inside
/// a legitimate recursion would be misnamed "stack overflow", which still points at the
/// right place.
fn is_runaway_recursion(error: &wasmtime::Error) -> bool {
    let Some(trace) = error.downcast_ref::<WasmBacktrace>() else {
        return false;
    };
    let frames = trace.frames();
    if frames.len() < RECURSION_MIN_FRAMES {
        return false;
    }
    let mut functions: Vec<(Option<&str>, u32)> = Vec::new();
    for frame in frames {
        let function = (frame.module().name(), frame.func_index());
        if !functions.contains(&function) {
            functions.push(function);
        }
    }
    functions.len() <= RECURSION_MAX_FUNCTIONS
}

/// What wasmtime says when a lift out of guest memory would pass [`host_copy_bound`]. Its
/// error type is private, so its text is all there is to match; the end-to-end test of
/// `big-output` fails if the text ever changes.
const HOST_COPY_REFUSED: &str = "fuel allocated for hostcalls has been exhausted";

/// The outcome of a run whose guest tried to pass more than [`host_copy_bound`] to the
/// host in one call. Nothing was copied. A refusal while guest code was on the stack (the
/// error carries a wasm backtrace) was the arguments of a host call; otherwise it was the
/// result of `run`, which is lifted after the guest has returned.
fn copy_refused(error: &wasmtime::Error, limits: &Limits) -> Option<Outcome> {
    if !error
        .chain()
        .any(|cause| cause.to_string().contains(HOST_COPY_REFUSED))
    {
        return None;
    }
    let bound = host_copy_bound(limits);
    Some(if error.downcast_ref::<WasmBacktrace>().is_some() {
        Outcome::Failed {
            kind: FailureKind::Trap,
            message: format!(
                "the guest passed more than {bound} bytes to one host call; it was refused before any copy"
            ),
        }
    } else {
        Outcome::Failed {
            kind: FailureKind::OutputTooLarge,
            message: format!(
                "the job returned more than {bound} bytes, above its output limit of {} bytes; \
                 it was refused in the guest's memory, before any copy",
                limits.max_output_bytes
            ),
        }
    })
}

/// Rust guests print `thread '…' panicked at file:line:col:` and then the message on
/// stderr before trapping; surface that message in the one-line outcome.
fn panic_message(logs: &[LogEntry]) -> Option<String> {
    let stderr =
        |entry: &&LogEntry| entry.level == LogLevel::Error && entry.fields.contains_key("stream");
    let lines: Vec<&LogEntry> = logs.iter().filter(stderr).collect();
    let at = lines
        .iter()
        .rposition(|e| e.message.contains("panicked at"))?;
    let location = lines[at]
        .message
        .split("panicked at ")
        .nth(1)?
        .trim_end_matches(':');
    let text = lines.get(at + 1).map(|e| e.message.as_str()).unwrap_or("");
    Some(super::logs::truncate(
        &format!("{text} (at {location})"),
        MAX_ERROR_MESSAGE_BYTES,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stderr_line(message: &str) -> LogEntry {
        let mut fields = serde_json::Map::new();
        fields.insert("stream".into(), "stderr".into());
        LogEntry {
            seq: 0,
            ts_ms: 0,
            level: LogLevel::Error,
            message: message.into(),
            fields,
        }
    }

    #[test]
    fn a_rust_panic_message_is_found_in_stderr() {
        let logs = [
            stderr_line("thread '<unnamed>' panicked at src/lib.rs:10:5:"),
            stderr_line("fixture panic: boom"),
            stderr_line("note: run with `RUST_BACKTRACE=1`"),
        ];
        assert_eq!(
            panic_message(&logs).as_deref(),
            Some("fixture panic: boom (at src/lib.rs:10:5)")
        );
        assert_eq!(panic_message(&[]), None);
    }

    #[test]
    fn an_out_of_bounds_access_without_a_recursive_stack_stays_out_of_bounds() {
        let error = wasmtime::Error::new(Trap::MemoryOutOfBounds);
        assert!(!is_runaway_recursion(&error));
        let outcome = classify_error(&error, false, &Limits::default(), &[]);
        assert!(
            matches!(&outcome, Outcome::Failed { message, .. } if message.contains("out of bounds")),
            "{outcome:?}"
        );
    }

    #[test]
    fn output_over_the_cap_is_refused_before_parsing() {
        let limits = Limits {
            max_output_bytes: 4,
            ..Limits::default()
        };
        let outcome = completed("\"hello\"".into(), &limits);
        assert!(matches!(
            outcome,
            Outcome::Failed {
                kind: FailureKind::OutputTooLarge,
                ..
            }
        ));
        assert!(matches!(
            completed("[1]".into(), &limits),
            Outcome::Completed { .. }
        ));
        assert!(matches!(
            completed("nope".into(), &limits),
            Outcome::Failed {
                kind: FailureKind::InvalidOutput,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn a_cancel_token_wakes_waiters_and_stays_cancelled() {
        let token = CancelToken::default();
        let waiter = tokio::spawn({
            let token = token.clone();
            async move { token.cancelled().await }
        });
        tokio::task::yield_now().await;
        token.cancel();
        waiter.await.unwrap();
        assert!(token.is_cancelled());
        token.cancelled().await;
    }
}
