//! How long history is kept: executions and their logs, and the usage rollups at each
//! step. What to delete is decided here from the settings and the clock; the store
//! deletes it a batch at a time.

use std::time::Duration;

use super::Millis;
use super::window::{DAY, HOUR, MINUTE};

/// How long each kind of history is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Retention {
    /// Final executions (and their logs), counted from their creation. A job may keep
    /// its own for a number of days (`retainDays`) or only its newest (`retainLast`).
    pub executions: Duration,
    /// Logs, when they should go before their executions; never kept longer.
    pub logs: Duration,
    /// Usage rollups: minute points, hour points, day points.
    pub usage_minutes: Duration,
    pub usage_hours: Duration,
    pub usage_days: Duration,
    /// Endpoint monitors' checks, counted from when they were due.
    pub endpoint_checks: Duration,
    /// Alert history, sent notifications and ended silences.
    pub alerts: Duration,
}

impl Default for Retention {
    /// A month of executions and logs (a job every 5 s is 518,400 rows; a dashboard's
    /// questions are about days, not months); minute points for two days (what a
    /// minute chart shows), hour points for a quarter, day points for three years; a
    /// month of endpoint checks (the longest uptime an endpoint shows is 30 days).
    fn default() -> Self {
        Self {
            executions: Duration::from_secs(30 * 86_400),
            logs: Duration::from_secs(30 * 86_400),
            usage_minutes: Duration::from_secs(2 * 86_400),
            usage_hours: Duration::from_secs(90 * 86_400),
            usage_days: Duration::from_secs(3 * 365 * 86_400),
            endpoint_checks: Duration::from_secs(30 * 86_400),
            alerts: Duration::from_secs(90 * 86_400),
        }
    }
}

fn millis(duration: Duration) -> Millis {
    Millis::try_from(duration.as_millis()).unwrap_or(Millis::MAX)
}

/// What one pruning pass deletes, as of `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrunePlan {
    pub now: Millis,
    /// Final executions created before this go (unless their job keeps its own).
    pub executions_before: Millis,
    /// Log lines of executions created before this go.
    pub logs_before: Millis,
    /// Usage rows of each step (`step_ms`, rows with `t` before this go).
    pub usage_before: [(Millis, Millis); 3],
    /// Endpoint checks due before this go.
    pub checks_before: Millis,
    /// Alert history, settled notifications and silences from before this go.
    pub alerts_before: Millis,
}

impl Retention {
    pub(crate) fn plan(&self, now: Millis) -> PrunePlan {
        let before = |kept: Duration| now.saturating_sub(millis(kept));
        let executions_before = before(self.executions);
        PrunePlan {
            now,
            executions_before,
            logs_before: before(self.logs).max(executions_before),
            usage_before: [
                (MINUTE, before(self.usage_minutes)),
                (HOUR, before(self.usage_hours)),
                (DAY, before(self.usage_days)),
            ],
            checks_before: before(self.endpoint_checks),
            alerts_before: before(self.alerts),
        }
    }
}

/// The smallest execution id of a run created at `at` or later. Ids are UUID v7 text,
/// whose first 48 bits are the creation time in milliseconds, so ids created before
/// `at` sort below this and a time range is a range of the primary key: pruning walks
/// the key instead of an index on time that every execution would have to write.
pub(crate) fn first_id_at(at: Millis) -> String {
    let at = u64::try_from(at.max(0)).unwrap_or(0) & 0xffff_ffff_ffff;
    format!(
        "{:08x}-{:04x}-7000-8000-000000000000",
        at >> 16,
        at & 0xffff
    )
}

/// What a pruning batch deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub executions: u64,
    pub log_lines: u64,
    pub usage_rows: u64,
    pub inputs: u64,
    pub endpoint_checks: u64,
    pub alerts: u64,
}

impl Pruned {
    pub(crate) fn add(&mut self, other: Pruned) {
        self.executions += other.executions;
        self.log_lines += other.log_lines;
        self.usage_rows += other.usage_rows;
        self.inputs += other.inputs;
        self.endpoint_checks += other.endpoint_checks;
        self.alerts += other.alerts;
    }

    pub(crate) fn is_empty(&self) -> bool {
        *self == Pruned::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_created_before_a_time_sort_below_its_first_id() {
        let at: Millis = 1_796_083_200_123;
        let bound = first_id_at(at);
        for (ms, below) in [(at - 1, true), (at, false), (at + 1, false), (0, true)] {
            let uuid = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
                uuid::NoContext,
                u64::try_from(ms / 1000).unwrap(),
                u32::try_from(ms % 1000).unwrap() * 1_000_000 + 999_999,
            ))
            .to_string();
            assert_eq!(uuid < bound, below, "{uuid} vs {bound}");
        }
        assert_eq!(first_id_at(-5), first_id_at(0));
    }

    #[test]
    fn logs_never_outlive_their_executions() {
        let retention = Retention {
            logs: Duration::from_secs(90 * 86_400),
            ..Retention::default()
        };
        let plan = retention.plan(100 * DAY);
        assert_eq!(plan.logs_before, plan.executions_before);
        assert_eq!(plan.executions_before, 70 * DAY);
        assert_eq!(plan.usage_before[0], (MINUTE, 98 * DAY));
    }
}
