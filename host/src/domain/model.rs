//! The records the server keeps: modules and their versions, jobs, executions, events.
//! Timestamps are milliseconds since the Unix epoch, UTC.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{FailureKind, JobConfig, LogEntry, Manifest, Outcome, SettingValue, Trigger};

/// Milliseconds since the Unix epoch, UTC.
pub(crate) type Millis = i64;

/// Where an execution is in its life. Only the last four are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExecutionStatus {
    Queued,
    Running,
    Completed,
    Failed,
    TimedOut,
    Cancelled,
}

impl ExecutionStatus {
    pub const ALL: [ExecutionStatus; 6] = [
        Self::Queued,
        Self::Running,
        Self::Completed,
        Self::Failed,
        Self::TimedOut,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "QUEUED",
            Self::Running => "RUNNING",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
            Self::TimedOut => "TIMED_OUT",
            Self::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn is_final(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }
}

/// Whether a module's jobs may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ModuleStatus {
    Enabled,
    Disabled,
}

impl ModuleStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enabled => "ENABLED",
            Self::Disabled => "DISABLED",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "ENABLED" => Some(Self::Enabled),
            "DISABLED" => Some(Self::Disabled),
            _ => None,
        }
    }
}

/// One uploaded version of a module (its bytes are stored apart, by hash).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleVersion {
    pub module: String,
    pub version: String,
    pub content_hash: String,
    pub size_bytes: u64,
    pub manifest: Manifest,
    pub uploaded_at: Millis,
    /// Who uploaded it; `None` for versions uploaded before this was recorded.
    pub uploaded_by: Option<super::Uploader>,
    /// The publisher key id the upload's signature named, if it carried one.
    pub signed_by: Option<String>,
    /// Who vouched for these bytes; `None` while the code waits for an admin.
    pub approval: Option<super::CodeApproval>,
}

/// A module: its status and its current version.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleRecord {
    pub name: String,
    pub status: ModuleStatus,
    pub current: ModuleVersion,
    /// What an administrator approved: the request they last reviewed. The current
    /// version runs only if its code is approved and it asks for nothing beyond what the
    /// admin decided on (see [`ModuleRecord::awaiting_approval`]).
    pub approved: super::Capabilities,
    /// The outbound hosts an administrator granted instead of those requested: fewer
    /// (narrowed) or others (an operator's extension). `None`: the current version may
    /// reach what it asks for.
    pub outbound_grant: Option<Vec<String>>,
    /// Caps on what the module may use per hour or day, across the deployment.
    pub budgets: Vec<super::budget::Budget>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// A job definition: which module job to run, when, with what input and limits.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub id: String,
    pub name: String,
    /// The module whose job this runs.
    pub module: String,
    /// The name of the job inside the module.
    pub job: String,
    /// A cron expression; `null` for a job that runs only when triggered.
    pub schedule: Option<String>,
    /// Where `schedule` comes from: the module's declared default, or the job itself.
    pub schedule_source: ScheduleSource,
    /// The input each run gets unless its trigger gives another.
    pub input: serde_json::Value,
    pub enabled: bool,
    pub max_attempts: u32,
    pub timeout_ms: Option<u64>,
    pub fuel: Option<u64>,
    pub memory_bytes: Option<u64>,
    /// A topic or topic pattern (`prefix.*`, `*`) whose events trigger a run.
    pub on_event: Option<String>,
    /// Days its final executions are kept, from their creation; `null`: the server's
    /// `--retain-executions`.
    pub retain_days: Option<u32>,
    /// At most this many of its newest executions are kept; `null`: no such bound.
    pub retain_last: Option<u32>,
    /// Settings the module reads through its `config` interface: plain values as they
    /// are, secrets as `{"secret": "***"}` (a secret's value is never shown).
    #[schema(value_type = BTreeMap<String, SettingValue>)]
    pub config: JobConfig,
    /// The next cron tick, in milliseconds since the Unix epoch.
    #[schema(value_type = Option<i64>)]
    pub next_run_at: Option<Millis>,
    /// Milliseconds since the Unix epoch.
    #[schema(value_type = i64)]
    pub created_at: Millis,
    /// Milliseconds since the Unix epoch.
    #[schema(value_type = i64)]
    pub updated_at: Millis,
}

/// Where a job's schedule comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleSource {
    /// The default schedule the module declares for the job (none, if it declares none).
    /// The job follows it: when a new version of the module declares another default,
    /// the job takes it.
    Module,
    /// Set on the job by an operator, `null` included (the job is not scheduled). A new
    /// version of the module does not change it.
    Job,
}

impl ScheduleSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ScheduleSource::Module => "module",
            ScheduleSource::Job => "job",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "module" => Some(ScheduleSource::Module),
            "job" => Some(ScheduleSource::Job),
            _ => None,
        }
    }
}

/// A row to create in state `QUEUED`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewExecution {
    pub id: String,
    pub job_id: String,
    pub module: String,
    pub job: String,
    pub trigger: Trigger,
    pub attempt: u32,
    /// The first attempt's id, for retries.
    pub retry_of: Option<String>,
    /// JSON text.
    pub input: String,
    /// When it was due: the cron tick, or the trigger time.
    pub scheduled_at: Millis,
    /// Not before this time (retry backoff); equal to `created_at` otherwise.
    pub run_after: Millis,
    /// The cron tick it fires, unique per job.
    pub cron_tick: Option<Millis>,
    pub event_id: Option<String>,
    pub created_at: Millis,
}

/// One execution: one attempt of one trigger of one job.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Execution {
    pub id: String,
    pub job_id: String,
    pub module: String,
    pub job: String,
    pub status: ExecutionStatus,
    pub trigger: Trigger,
    /// 1 for the first attempt, one more for each retry.
    pub attempt: u32,
    /// The first attempt's id, for retries.
    pub retry_of: Option<String>,
    pub input: serde_json::Value,
    /// What the job returned, once it completed.
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    /// Why it did not complete: what the guest reported (`INVALID_INPUT`, `TRANSIENT`,
    /// `PERMANENT`), a limit it hit (`OUT_OF_FUEL`, `MEMORY_LIMIT_EXCEEDED`,
    /// `OUTPUT_TOO_LARGE`, `TIMED_OUT`), a fault (`TRAP`, `INVALID_OUTPUT`, `UNKNOWN_JOB`,
    /// `HOST_ERROR`), `CANCELLED`, or why it never started: `NOT_RUNNABLE` (its module or
    /// job cannot run) or `BUDGET_EXHAUSTED` (its module used up a run or fuel budget for
    /// the current window; not retried).
    pub error_kind: Option<String>,
    /// When it was due (milliseconds since the Unix epoch).
    #[schema(value_type = i64)]
    pub scheduled_at: Millis,
    /// Not before this time (milliseconds since the Unix epoch): retry backoff.
    #[schema(value_type = i64)]
    pub run_after: Millis,
    /// The cron tick it fires (milliseconds since the Unix epoch).
    #[schema(value_type = Option<i64>)]
    pub cron_tick: Option<Millis>,
    /// The event that triggered it.
    pub event_id: Option<String>,
    /// Milliseconds since the Unix epoch.
    #[schema(value_type = i64)]
    pub created_at: Millis,
    /// Milliseconds since the Unix epoch.
    #[schema(value_type = Option<i64>)]
    pub started_at: Option<Millis>,
    /// Milliseconds since the Unix epoch.
    #[schema(value_type = Option<i64>)]
    pub finished_at: Option<Millis>,
    pub duration_ms: Option<f64>,
    pub fuel_consumed: Option<u64>,
    pub memory_peak_bytes: Option<u64>,
    /// CPU time the host spent on the run, in milliseconds: guest code and the host
    /// calls it made. Fuel counts guest instructions only.
    pub cpu_time_ms: Option<f64>,
    pub node_id: Option<String>,
    pub cancel_requested: bool,
}

/// The final state of a run, as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionResult {
    pub id: String,
    pub status: ExecutionStatus,
    /// JSON text of the output, for completed runs.
    pub result: Option<String>,
    pub error: Option<String>,
    pub error_kind: Option<String>,
    pub finished_at: Millis,
    pub duration_ms: f64,
    pub fuel_consumed: u64,
    pub memory_peak_bytes: u64,
    pub cpu_time_ms: f64,
    pub logs: Vec<LogEntry>,
    /// The run's outbound HTTP requests, counted per host, for the usage figures.
    pub outbound: Vec<super::usage::OutboundTally>,
}

impl ExecutionResult {
    /// Turns a run's outcome into the row update that records it.
    pub fn from_outcome(
        id: String,
        outcome: &Outcome,
        usage: &super::Usage,
        logs: Vec<LogEntry>,
        outbound: Vec<super::usage::OutboundTally>,
        finished_at: Millis,
    ) -> Self {
        let (status, result, error, error_kind) = match outcome {
            Outcome::Completed { output } => (
                ExecutionStatus::Completed,
                Some(output.to_string()),
                None,
                None,
            ),
            Outcome::Failed { kind, .. } => (
                ExecutionStatus::Failed,
                None,
                Some(outcome.summary()),
                Some(failure_kind_name(kind).to_owned()),
            ),
            Outcome::TimedOut { .. } => (
                ExecutionStatus::TimedOut,
                None,
                Some(outcome.summary()),
                Some("TIMED_OUT".to_owned()),
            ),
            Outcome::Cancelled => (
                ExecutionStatus::Cancelled,
                None,
                Some("cancelled".to_owned()),
                Some("CANCELLED".to_owned()),
            ),
        };
        Self {
            id,
            status,
            result,
            error,
            error_kind,
            finished_at,
            duration_ms: usage.wall_time.as_secs_f64() * 1000.0,
            fuel_consumed: usage.fuel_consumed,
            memory_peak_bytes: usage.memory_peak_bytes,
            cpu_time_ms: usage.cpu_time.as_secs_f64() * 1000.0,
            logs,
            outbound,
        }
    }
}

pub(crate) fn failure_kind_name(kind: &FailureKind) -> &'static str {
    match kind {
        FailureKind::InvalidInput => "INVALID_INPUT",
        FailureKind::Transient => "TRANSIENT",
        FailureKind::Permanent => "PERMANENT",
        FailureKind::OutOfFuel => "OUT_OF_FUEL",
        FailureKind::MemoryLimitExceeded => "MEMORY_LIMIT_EXCEEDED",
        FailureKind::Trap => "TRAP",
        FailureKind::OutputTooLarge => "OUTPUT_TOO_LARGE",
        FailureKind::InvalidOutput => "INVALID_OUTPUT",
        FailureKind::UnknownJob => "UNKNOWN_JOB",
        FailureKind::HostError => "HOST_ERROR",
    }
}

/// An event on the bus.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub id: String,
    pub topic: String,
    pub payload: serde_json::Value,
    /// `api` for events posted through the API, else the publishing module's name.
    pub source: String,
    /// Milliseconds since the Unix epoch.
    #[schema(value_type = i64)]
    pub created_at: Millis,
    /// Its place in a chain of events: 1 for an event posted through the API or
    /// published by a run no event started; one more than the starting event's for an
    /// event published by a run an event started (or by a retry of one). An event deeper
    /// than [`MAX_EVENT_DEPTH`] starts no job.
    pub depth: u32,
    /// The execution that published it; `null` for an event posted through the API.
    pub caused_by: Option<String>,
    /// The subscribed jobs it did not start, and why (empty when it started them all).
    pub refused: Vec<EventRefusal>,
}

/// The deepest an event may be in a chain of events and still start jobs: a job that
/// publishes what it (or a job it starts) subscribes to runs at most this many times
/// per event that began the chain.
pub(crate) const MAX_EVENT_DEPTH: u32 = 8;

/// A subscribed job an event did not start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventRefusal {
    pub job_id: String,
    /// The job's name when the event was published.
    pub job: String,
    pub reason: String,
}

/// The input a run started by an event receives: the event without its bookkeeping.
/// The contract (WIT `trigger.event`, the SDK's `Event<T>`, the README) documents these
/// fields; new ones may be added, never removed.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventEnvelope<'a> {
    pub id: &'a str,
    pub topic: &'a str,
    pub source: &'a str,
    /// Milliseconds since the Unix epoch.
    pub created_at: Millis,
    pub payload: &'a serde_json::Value,
}

impl Event {
    pub fn envelope(&self) -> EventEnvelope<'_> {
        EventEnvelope {
            id: &self.id,
            topic: &self.topic,
            source: &self.source,
            created_at: self.created_at,
            payload: &self.payload,
        }
    }
}

/// One metric sample a module recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricSample {
    pub name: String,
    pub value: f64,
    pub labels: Vec<(String, String)>,
    pub ts_ms: Millis,
}

/// How often a node reports itself; a node is called gone after a few missed reports.
pub(crate) const NODE_HEARTBEAT_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// The lease only one node's scheduler holds at a time: its holder fires cron schedules.
pub(crate) const SCHEDULER_LEASE: &str = "scheduler";

/// A node of a deployment as it last reported itself: one `runcell serve` process,
/// upserted on every heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeHeartbeat {
    pub node_id: String,
    /// When the process started: a restart under the same id shows as a newer value.
    pub started_at: Millis,
    pub last_heartbeat_at: Millis,
    /// Executions it may run at once.
    pub workers: u32,
    /// Executions it was running at the heartbeat.
    pub running: u32,
    /// The version of the `runcell` binary.
    pub version: String,
}

impl NodeHeartbeat {
    /// A node is called gone after this many missed heartbeats.
    const MISSED_HEARTBEATS: Millis = 3;

    /// Whether the node still reported itself recently at `now`.
    pub(crate) fn is_alive(&self, now: Millis) -> bool {
        let horizon = NODE_HEARTBEAT_EVERY.as_millis() as Millis * Self::MISSED_HEARTBEATS;
        now - self.last_heartbeat_at <= horizon
    }
}

/// A page of a listing and the cursor for the next one.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; `null`: there is none.
    pub next_cursor: Option<String>,
}

/// Time-ordered unique ids (UUID v7): listing by id is listing by creation time.
pub(crate) fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

pub(crate) fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}
