//! Endpoint monitors: an HTTP endpoint the server checks on an interval, and what each
//! check saw. The conditions an answer must meet are [`super::conditions`]; when a check
//! is due, [`next_due`] says.

use serde::Serialize;
use utoipa::ToSchema;

use super::Millis;
use super::config::{JobConfig, SettingValue};

/// Headers of an endpoint's checks, by lowercase name: plain values as they are, secret
/// ones sealed (shown as `{"secret": "***"}`, like a job's secret settings).
pub(crate) type EndpointHeaders = JobConfig;

/// An endpoint monitor.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub id: String,
    pub name: String,
    /// The `http://` or `https://` URL checked.
    pub url: String,
    /// The request's method.
    pub method: String,
    /// Sent with every check; a secret's value is never shown.
    #[schema(value_type = std::collections::BTreeMap<String, SettingValue>)]
    pub headers: EndpointHeaders,
    /// The request's body, if any.
    pub body: Option<String>,
    /// A check every this many seconds.
    pub interval_seconds: u32,
    /// How long a check may take, from the name lookup to the end of the answer's body.
    pub timeout_ms: u32,
    /// What the answer must meet to count as up (all of them); empty means
    /// `status < 400`.
    pub conditions: Vec<String>,
    pub enabled: bool,
    /// When the next check is due, in milliseconds since the Unix epoch; `null` while
    /// disabled.
    #[schema(value_type = Option<i64>)]
    pub next_check_at: Option<Millis>,
    #[schema(value_type = i64)]
    pub created_at: Millis,
    #[schema(value_type = i64)]
    pub updated_at: Millis,
}

/// What one check saw.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointCheck {
    #[serde(skip)]
    pub endpoint_id: String,
    /// The interval this check is for: when it was due, in milliseconds since the Unix
    /// epoch. One check per endpoint and due time.
    #[schema(value_type = i64)]
    pub due_at: Millis,
    /// When the check was made.
    #[schema(value_type = i64)]
    pub checked_at: Millis,
    /// Whether the endpoint answered and met every condition.
    pub up: bool,
    /// The answer's status code; `null` when there was no answer.
    pub status_code: Option<u16>,
    /// From the name lookup to the end of the body; `null` when there was no answer.
    pub latency_ms: Option<u32>,
    /// The first condition the answer did not meet, as written.
    pub failed_condition: Option<String>,
    /// Why there was no answer: refused by the address policy, no connection, a timeout.
    pub error: Option<String>,
    /// The node that made the check.
    pub node_id: String,
}

/// The share of checks that were up over a period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UptimeCount {
    pub checks: i64,
    pub up: i64,
}

impl UptimeCount {
    /// Percent of checks up, two decimals; `None` without checks.
    pub fn percent(self) -> Option<f64> {
        (self.checks > 0).then(|| (self.up as f64 * 10_000.0 / self.checks as f64).round() / 100.0)
    }
}

/// The check due after the one due at `due`, with `interval` between checks, at `now`:
/// the next due time on the same grid that is after `now`, so a server that was down
/// checks once for the oldest missed interval and then keeps to its grid, never
/// catching up with a burst.
pub(crate) fn next_due(due: Millis, interval: Millis, now: Millis) -> Millis {
    let interval = interval.max(1);
    if now < due + interval {
        return due + interval;
    }
    due + ((now - due) / interval + 1) * interval
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_check_keeps_to_the_grid_and_skips_missed_intervals() {
        assert_eq!(next_due(1_000, 10_000, 1_050), 11_000);
        assert_eq!(next_due(1_000, 10_000, 10_999), 11_000);
        assert_eq!(next_due(1_000, 10_000, 11_000), 21_000);
        assert_eq!(next_due(1_000, 10_000, 95_000), 101_000);
    }

    #[test]
    fn uptime_is_a_percentage_or_nothing() {
        assert_eq!(UptimeCount::default().percent(), None);
        assert_eq!(UptimeCount { checks: 3, up: 2 }.percent(), Some(66.67));
        assert_eq!(UptimeCount { checks: 4, up: 4 }.percent(), Some(100.0));
    }
}
