//! Facts about the current run, handed to every job.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::__bindings::runcell::module::types as wit;
use crate::Timestamp;

/// What caused a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// Someone asked for it through the API or the command line.
    Manual,
    /// A cron tick of the job's schedule.
    Cron,
    /// An event matching the job's subscription; the input is the event.
    Event,
    /// An earlier attempt failed in a way worth retrying.
    Retry,
}

impl Trigger {
    /// The lowercase name used in the API and in logs: `manual`, `cron`, `event`, `retry`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Manual => "manual",
            Self::Cron => "cron",
            Self::Event => "event",
            Self::Retry => "retry",
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<wit::Trigger> for Trigger {
    fn from(trigger: wit::Trigger) -> Self {
        match trigger {
            wit::Trigger::Manual => Self::Manual,
            wit::Trigger::Cron => Self::Cron,
            wit::Trigger::Event => Self::Event,
            wit::Trigger::Retry => Self::Retry,
        }
    }
}

/// Facts about the current run, for logging, idempotency keys and time-based logic.
///
/// Use [`scheduled_at_ms`](Self::scheduled_at_ms) rather than reading a clock: it is the
/// same on every attempt of a cron tick, which keeps retries deterministic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    execution_id: String,
    attempt: u32,
    trigger: Trigger,
    scheduled_at_ms: u64,
}

impl Context {
    /// A context for the first attempt of a run; use it to call jobs from unit tests.
    pub fn new(execution_id: impl Into<String>, trigger: Trigger, scheduled_at_ms: u64) -> Self {
        Self {
            execution_id: execution_id.into(),
            attempt: 1,
            trigger,
            scheduled_at_ms,
        }
    }

    /// The same context for attempt `attempt` (1 is the first attempt).
    #[must_use]
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// Unique id of this execution (one attempt of one trigger).
    pub fn execution_id(&self) -> &str {
        &self.execution_id
    }

    /// 1 for the first attempt, 2 for the first retry, and so on.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// What caused this run.
    pub fn trigger(&self) -> Trigger {
        self.trigger
    }

    /// When this run was due, in milliseconds since the Unix epoch (UTC): the cron tick for
    /// scheduled runs, the enqueue time otherwise.
    pub fn scheduled_at_ms(&self) -> u64 {
        self.scheduled_at_ms
    }

    /// When this run was due (see [`scheduled_at_ms`](Self::scheduled_at_ms)), as a time
    /// that displays as RFC 3339: `ctx.scheduled_at().to_string()` is
    /// `2026-11-28T10:00:00Z`.
    pub fn scheduled_at(&self) -> Timestamp {
        Timestamp::from_millis(self.scheduled_at_ms)
    }
}

impl From<wit::RunContext> for Context {
    fn from(context: wit::RunContext) -> Self {
        Self {
            execution_id: context.execution_id,
            attempt: context.attempt,
            trigger: context.trigger.into(),
            scheduled_at_ms: context.scheduled_at_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wit_context_keeps_every_fact() {
        let context = Context::from(wit::RunContext {
            execution_id: "exec-1".to_owned(),
            attempt: 3,
            trigger: wit::Trigger::Retry,
            scheduled_at_ms: 1_700_000_000_000,
        });
        assert_eq!(
            context,
            Context::new("exec-1", Trigger::Retry, 1_700_000_000_000).with_attempt(3)
        );
    }

    #[test]
    fn triggers_serialize_as_their_lowercase_names() {
        for trigger in [
            Trigger::Manual,
            Trigger::Cron,
            Trigger::Event,
            Trigger::Retry,
        ] {
            let json = serde_json::to_string(&trigger).unwrap();
            assert_eq!(json, format!("\"{trigger}\""));
        }
    }
}
