//! One run of one job: what it was given, what it is allowed, what came of it.

use std::time::Duration;

use serde::Serialize;
use utoipa::ToSchema;

use super::{ExecutionStatus, HostName, HostPattern};

/// What caused a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Manual,
    Cron,
    Event,
    Retry,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Cron => "cron",
            Trigger::Event => "event",
            Trigger::Retry => "retry",
        }
    }
}

/// The facts a guest receives about its run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunContext {
    pub execution_id: String,
    pub attempt: u32,
    pub trigger: Trigger,
    pub scheduled_at_ms: u64,
}

/// What an administrator granted a module. Nothing is granted by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    pub key_value: bool,
    /// Topic patterns the module may publish on (`report.generated`, `sync.*`).
    pub publishes: Vec<String>,
    /// Host patterns the module may reach over outbound HTTP (see [`HostPattern`]).
    pub outbound_hosts: Vec<String>,
}

impl Grants {
    /// Everything `capabilities` asks for: for a local run of the author's own module. On
    /// the server, the outbound hosts are the admin's grant instead (see
    /// [`super::ModuleRecord::grants`]).
    pub fn as_requested(capabilities: &super::Capabilities) -> Self {
        Self {
            key_value: capabilities.key_value,
            publishes: capabilities.publishes.clone(),
            outbound_hosts: capabilities.outbound_hosts.clone(),
        }
    }

    /// Whether publishing on `topic` is allowed: an exact match, or a pattern ending in
    /// `.*` that matches the topic's prefix and at least one more segment.
    pub fn may_publish(&self, topic: &str) -> bool {
        self.publishes
            .iter()
            .any(|pattern| topic_matches(pattern, topic))
    }

    /// Whether an outbound request to `host` on `port` is within one of the granted
    /// host patterns. A pattern that does not parse grants nothing.
    pub fn may_reach(&self, host: &HostName, port: u16) -> bool {
        self.outbound_hosts.iter().any(|pattern| {
            HostPattern::parse(pattern).is_ok_and(|pattern| pattern.matches(host, port))
        })
    }
}

/// Matches an event topic against a pattern: `*` alone matches everything, a trailing
/// `.*` matches one or more further segments, anything else must match exactly.
pub(crate) fn topic_matches(pattern: &str, topic: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix(".*") {
        Some(prefix) => topic
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.len() > 1 && rest.starts_with('.')),
        None => pattern == topic,
    }
}

/// Whether some topic matches both patterns (each a topic, a `prefix.*` or `*`).
pub(crate) fn topics_overlap(a: &str, b: &str) -> bool {
    match (a.strip_suffix(".*"), b.strip_suffix(".*")) {
        _ if a == "*" || b == "*" => true,
        (None, None) => a == b,
        (Some(_), None) => topic_matches(a, b),
        (None, Some(_)) => topic_matches(b, a),
        (Some(p), Some(q)) => {
            p == q || p.starts_with(&format!("{q}.")) || q.starts_with(&format!("{p}."))
        }
    }
}

/// Severity of a log line.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// One line of an execution's log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogEntry {
    /// Position in the execution's log, from 0, without gaps.
    pub seq: u32,
    /// Milliseconds since the Unix epoch.
    pub ts_ms: u64,
    pub level: LogLevel,
    pub message: String,
    /// Structured fields; empty for captured stdout/stderr, which carry `stream`.
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// What a follower of a live log receives: each line as it is logged, then the end.
#[derive(Debug, Clone, PartialEq)]
pub enum LogMessage {
    Line(LogEntry),
    End(ExecutionStatus),
}

/// Resources a run used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    #[serde(serialize_with = "serialize_ms")]
    pub wall_time: Duration,
    /// Guest instructions executed (wasmtime fuel: about one unit per instruction). Work
    /// the host does for the guest's calls (copying, hashing, I/O) is not in it; see
    /// `cpu_time`.
    pub fuel_consumed: u64,
    pub memory_peak_bytes: u64,
    /// CPU time the host's threads spent on the run: instantiation, guest code and the
    /// host calls made on the run's thread. Not a limit: recorded beside fuel so that a
    /// guest whose host calls cost more than its own code shows up.
    #[serde(rename = "cpuTimeMs", serialize_with = "serialize_ms")]
    pub cpu_time: Duration,
}

fn serialize_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// Why a run failed, in the terms an author can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FailureKind {
    /// The job said its input is wrong; retrying will not help.
    InvalidInput,
    /// The job hit a temporary problem; worth a retry.
    Transient,
    /// The job said it cannot succeed.
    Permanent,
    /// The guest executed more instructions than its fuel allowed.
    OutOfFuel,
    /// The guest tried to hold more memory than its limit.
    MemoryLimitExceeded,
    /// The guest trapped (panic, unreachable, stack overflow, bad memory access).
    Trap,
    /// The job returned output larger than its limit.
    OutputTooLarge,
    /// The job returned text that is not JSON.
    InvalidOutput,
    /// The job name is not one the module offers.
    UnknownJob,
    /// The host could not run the job (for example, no instance slot free).
    HostError,
}

impl FailureKind {
    /// Whether another attempt could succeed where this one failed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            FailureKind::Transient | FailureKind::Trap | FailureKind::HostError
        )
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Completed { output: serde_json::Value },
    Failed { kind: FailureKind, message: String },
    TimedOut { timeout: Duration },
    Cancelled,
}

impl Outcome {
    /// One line that says what happened, for terminals and the `error` column.
    pub fn summary(&self) -> String {
        match self {
            Outcome::Completed { .. } => "completed".into(),
            Outcome::Failed { kind, message } => match kind {
                FailureKind::InvalidInput => format!("job rejected its input: {message}"),
                FailureKind::Transient => format!("job failed (transient, retryable): {message}"),
                FailureKind::Permanent => format!("job failed: {message}"),
                FailureKind::OutOfFuel => format!("ran out of fuel: {message}"),
                FailureKind::MemoryLimitExceeded => {
                    format!("exceeded its memory limit: {message}")
                }
                FailureKind::Trap => format!("trapped: {message}"),
                FailureKind::OutputTooLarge => format!("output too large: {message}"),
                FailureKind::InvalidOutput => format!("returned invalid output: {message}"),
                FailureKind::UnknownJob => format!("unknown job: {message}"),
                FailureKind::HostError => format!("host error: {message}"),
            },
            Outcome::TimedOut { timeout } => format!(
                "hit the wall-clock timeout of {}",
                humantime::format_duration(*timeout)
            ),
            Outcome::Cancelled => "cancelled".into(),
        }
    }
}

/// Everything a run produced.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub outcome: Outcome,
    pub usage: Usage,
    pub logs: Vec<LogEntry>,
    /// Log lines dropped because the run reached its log cap.
    pub dropped_log_lines: u64,
    /// The run's outbound HTTP requests, counted per host.
    pub outbound: Vec<super::usage::OutboundTally>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_patterns_match_exactly_or_by_prefix() {
        assert!(topic_matches("report.generated", "report.generated"));
        assert!(!topic_matches("report.generated", "report.generated.x"));
        assert!(topic_matches("report.*", "report.generated"));
        assert!(topic_matches("report.*", "report.a.b"));
        assert!(!topic_matches("report.*", "report"));
        assert!(!topic_matches("report.*", "reports.x"));
        assert!(!topic_matches("report.*", "report."));
        assert!(topic_matches("*", "anything.at.all"));
    }

    #[test]
    fn patterns_overlap_when_some_topic_matches_both() {
        for (a, b) in [
            ("stars.*", "stars.reported"),
            ("stars.reported", "stars.*"),
            ("stars.*", "stars.*"),
            ("stars.*", "stars.github.*"),
            ("*", "anything"),
            ("a.b", "a.b"),
        ] {
            assert!(topics_overlap(a, b), "{a} and {b}");
        }
        for (a, b) in [
            ("stars.*", "stars"),
            ("stars.*", "starship.x"),
            ("stars.*", "starship.*"),
            ("a.b", "a.c"),
            ("report.*", "sync.*"),
        ] {
            assert!(!topics_overlap(a, b), "{a} and {b}");
        }
    }

    #[test]
    fn nothing_is_published_without_a_grant() {
        assert!(!Grants::default().may_publish("report.generated"));
    }

    #[test]
    fn nothing_is_reachable_without_a_grant_and_only_granted_hosts_with_one() {
        let host = |text: &str| HostName::parse(text).unwrap();
        assert!(!Grants::default().may_reach(&host("api.example.com"), 443));
        let grants = Grants {
            outbound_hosts: vec![
                "api.example.com".into(),
                "*.cdn.example.net:8443".into(),
                "not a pattern".into(),
            ],
            ..Grants::default()
        };
        assert!(grants.may_reach(&host("api.example.com"), 443));
        assert!(grants.may_reach(&host("img.cdn.example.net"), 8443));
        assert!(!grants.may_reach(&host("img.cdn.example.net"), 443));
        assert!(!grants.may_reach(&host("example.com"), 443));
    }

    #[test]
    fn only_temporary_failures_are_retryable() {
        assert!(FailureKind::Transient.is_retryable());
        assert!(FailureKind::Trap.is_retryable());
        assert!(!FailureKind::Permanent.is_retryable());
        assert!(!FailureKind::InvalidInput.is_retryable());
        assert!(!FailureKind::OutOfFuel.is_retryable());
    }
}
