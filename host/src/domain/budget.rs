//! Consumption budgets: a cap on how much a module may use (runs, fuel, outbound
//! requests) per fixed calendar window in UTC, the hour or the day, across the whole
//! deployment. What a budget is, the window it counts in and how a refusal reads; the
//! counting itself is the store's, the enforcing the worker's and the runtime's.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Millis;
use super::manifest::{HostName, HostPattern};
use super::window::{DAY, HOUR};

/// The most budgets one module may have: each enforced one is a database write per run
/// or per request.
pub(crate) const MAX_BUDGETS: usize = 20;

/// What a budget counts.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum BudgetMetric {
    /// Runs started (counted when a run starts).
    Runs,
    /// Fuel the module's runs consumed (counted when a run's result is recorded).
    Fuel,
    /// Outbound HTTP requests, to one host pattern or to every host.
    OutboundRequests,
}

impl BudgetMetric {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Runs => "runs",
            Self::Fuel => "fuel",
            Self::OutboundRequests => "outboundRequests",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Self> {
        [Self::Runs, Self::Fuel, Self::OutboundRequests]
            .into_iter()
            .find(|metric| metric.as_str() == text)
    }

    /// What the metric's amount is called in a refusal: "run budget", "fuel budget".
    fn noun(self) -> &'static str {
        match self {
            Self::Runs => "run",
            Self::Fuel => "fuel",
            Self::OutboundRequests => "outbound request",
        }
    }
}

/// The calendar window a budget counts in.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum BudgetPeriod {
    Hour,
    Day,
}

impl BudgetPeriod {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Hour => "hour",
            Self::Day => "day",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Self> {
        [Self::Hour, Self::Day]
            .into_iter()
            .find(|period| period.as_str() == text)
    }

    fn length(self) -> Millis {
        match self {
            Self::Hour => HOUR,
            Self::Day => DAY,
        }
    }

    /// The window `at` falls in: the UTC hour or day, `[start, end)`.
    pub(crate) fn window(self, at: Millis) -> (Millis, Millis) {
        let length = self.length();
        let start = at.div_euclid(length) * length;
        (start, start + length)
    }
}

/// What happens when a budget is used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum BudgetAction {
    /// Nothing is stopped; the budget is only watched (alert rules read it).
    Alert,
    /// What would pass the limit is refused, on every node.
    Enforce,
}

impl BudgetAction {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Alert => "alert",
            Self::Enforce => "enforce",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Self> {
        [Self::Alert, Self::Enforce]
            .into_iter()
            .find(|action| action.as_str() == text)
    }
}

/// One budget of a module: at most `limit` of `metric` per `per`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Budget {
    pub metric: BudgetMetric,
    /// For outbound requests only: the host pattern counted (as in outbound grants);
    /// `None` counts requests to every host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The window counted in: the UTC hour or day.
    pub per: BudgetPeriod,
    /// The most a window may use (fuel units, runs or requests).
    pub limit: u64,
    pub action: BudgetAction,
}

impl Budget {
    /// Whether a request to `host` on `port` counts against this budget: an outbound
    /// budget over every host, or one whose pattern matches. A pattern that does not
    /// parse (it was checked when set) counts nothing.
    pub(crate) fn counts_request(&self, host: &HostName, port: u16) -> bool {
        self.metric == BudgetMetric::OutboundRequests
            && self.host.as_deref().is_none_or(|pattern| {
                HostPattern::parse(pattern).is_ok_and(|pattern| pattern.matches(host, port))
            })
    }

    /// The counter this budget uses for the window `at` falls in, for `module`.
    pub(crate) fn counter(&self, module: &str, at: Millis) -> BudgetCounter {
        let (window_start, _) = self.per.window(at);
        BudgetCounter {
            module: module.to_owned(),
            metric: self.metric,
            host: self.host.clone().unwrap_or_default(),
            per: self.per,
            window_start,
            limit: i64::try_from(self.limit).unwrap_or(i64::MAX),
        }
    }

    /// Checks a budget as a client sent it; the error names the field (below `field`,
    /// e.g. `[0]`) and what to fix.
    pub(crate) fn check(&self) -> Result<(), (&'static str, String)> {
        if self.limit == 0 {
            return Err((
                "limit",
                "must be a positive integer (remove the budget to lift the cap)".to_owned(),
            ));
        }
        if i64::try_from(self.limit).is_err() {
            return Err(("limit", format!("must be at most {}", i64::MAX)));
        }
        match (&self.host, self.metric) {
            (Some(_), BudgetMetric::Runs | BudgetMetric::Fuel) => Err((
                "host",
                format!(
                    "only an `outboundRequests` budget names a host; a `{}` budget counts the whole module",
                    self.metric.as_str()
                ),
            )),
            (Some(host), BudgetMetric::OutboundRequests) => HostPattern::parse(host.trim())
                .map(|_| ())
                .map_err(|err| ("host", format!("`{host}`: {err}"))),
            (None, _) => Ok(()),
        }
    }
}

/// Checks a module's whole list of budgets: each budget, their number, and that no two
/// count the same thing in the same window (their counters would be one).
pub(crate) fn check_budgets(budgets: &[Budget]) -> Result<(), (String, String)> {
    if budgets.len() > MAX_BUDGETS {
        return Err((
            "budgets".to_owned(),
            format!("a module may have at most {MAX_BUDGETS} budgets"),
        ));
    }
    for (index, budget) in budgets.iter().enumerate() {
        budget
            .check()
            .map_err(|(field, message)| (format!("[{index}].{field}"), message))?;
        let same = |other: &Budget| {
            other.metric == budget.metric && other.host == budget.host && other.per == budget.per
        };
        if budgets[..index].iter().any(same) {
            return Err((
                format!("[{index}]"),
                format!(
                    "another budget already counts {} per {}{}; keep one",
                    budget.metric.as_str(),
                    budget.per.as_str(),
                    budget
                        .host
                        .as_deref()
                        .map(|host| format!(" to `{host}`"))
                        .unwrap_or_default()
                ),
            ));
        }
    }
    Ok(())
}

/// The row that counts one budget of one module in one window. Counters are shared by
/// every node through the database; a changed limit applies to the current window's
/// counter at once.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BudgetCounter {
    pub module: String,
    pub metric: BudgetMetric,
    /// The host pattern of an outbound budget; empty for every host and other metrics.
    pub host: String,
    pub per: BudgetPeriod,
    pub window_start: Millis,
    pub limit: i64,
}

/// A budget's current window and how much of it is used, for clients and alert rules.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetStatus {
    pub budget: Budget,
    pub window_start: Millis,
    pub window_end: Millis,
    pub used: u64,
}

impl BudgetStatus {
    /// How much of the limit is used: 1.0 and above is exhausted.
    pub(crate) fn ratio(&self) -> f64 {
        self.used as f64 / self.budget.limit.max(1) as f64
    }

    /// When the budget is available again, if it is used up now.
    pub(crate) fn exhausted_until(&self) -> Option<Millis> {
        (self.used >= self.budget.limit).then_some(self.window_end)
    }
}

/// Why a run or a request was refused: a budget is used up until `until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Exhausted {
    pub metric: BudgetMetric,
    pub until: Millis,
}

impl Exhausted {
    /// "run budget of module `m` exhausted until 14:00 UTC".
    pub(crate) fn message(&self, module: &str) -> String {
        format!(
            "{} budget of module `{module}` exhausted until {}",
            self.metric.noun(),
            utc_time_of_day(self.until)
        )
    }
}

/// `14:00 UTC`: the time of day of `at`, as a window's end reads in a refusal.
pub(crate) fn utc_time_of_day(at: Millis) -> String {
    let minutes = at.div_euclid(60_000).rem_euclid(24 * 60);
    format!("{:02}:{:02} UTC", minutes / 60, minutes % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2023-11-14 22:13:20 UTC.
    const T0: Millis = 1_700_000_000_000;

    fn budget(metric: BudgetMetric, host: Option<&str>, limit: u64) -> Budget {
        Budget {
            metric,
            host: host.map(str::to_owned),
            per: BudgetPeriod::Hour,
            limit,
            action: BudgetAction::Enforce,
        }
    }

    #[test]
    fn windows_are_the_utc_hour_and_day() {
        assert_eq!(
            BudgetPeriod::Hour.window(T0),
            (1_699_999_200_000, 1_700_002_800_000)
        );
        assert_eq!(utc_time_of_day(1_700_002_800_000), "23:00 UTC");
        let (start, end) = BudgetPeriod::Day.window(T0);
        assert_eq!(start % DAY, 0);
        assert_eq!(end - start, DAY);
        assert!(start <= T0 && T0 < end);
        assert_eq!(utc_time_of_day(end), "00:00 UTC");
        assert_eq!(
            BudgetPeriod::Hour.window(start).0,
            start,
            "a window's start is in it"
        );
    }

    #[test]
    fn a_refusal_names_the_budget_the_module_and_the_end_of_the_window() {
        let refusal = Exhausted {
            metric: BudgetMetric::Runs,
            until: 14 * HOUR,
        };
        assert_eq!(
            refusal.message("billing"),
            "run budget of module `billing` exhausted until 14:00 UTC"
        );
    }

    #[test]
    fn an_outbound_budget_counts_the_hosts_its_pattern_matches() {
        let api = HostName::parse("api.example.com").unwrap();
        let other = HostName::parse("other.example").unwrap();
        let every = budget(BudgetMetric::OutboundRequests, None, 1);
        assert!(every.counts_request(&api, 443) && every.counts_request(&other, 8080));
        let one = budget(BudgetMetric::OutboundRequests, Some("*.example.com"), 1);
        assert!(one.counts_request(&api, 443));
        assert!(!one.counts_request(&other, 443));
        assert!(!budget(BudgetMetric::Runs, None, 1).counts_request(&api, 443));
    }

    #[test]
    fn bad_budgets_name_the_field_to_fix() {
        let field = |budgets: &[Budget]| check_budgets(budgets).unwrap_err().0;
        assert_eq!(field(&[budget(BudgetMetric::Runs, None, 0)]), "[0].limit");
        assert_eq!(
            field(&[
                budget(BudgetMetric::Runs, None, 1),
                budget(BudgetMetric::Fuel, Some("a.example"), 1)
            ]),
            "[1].host"
        );
        assert_eq!(
            field(&[budget(BudgetMetric::OutboundRequests, Some("a b"), 1)]),
            "[0].host"
        );
        assert_eq!(
            field(&[
                budget(BudgetMetric::Runs, None, 1),
                budget(BudgetMetric::Runs, None, 2)
            ]),
            "[1]"
        );
        let many = vec![budget(BudgetMetric::Runs, None, 1); MAX_BUDGETS + 1];
        assert_eq!(field(&many), "budgets");
        assert!(
            check_budgets(&[
                budget(BudgetMetric::Runs, None, 2),
                budget(BudgetMetric::OutboundRequests, Some("a.example"), 3),
                budget(BudgetMetric::OutboundRequests, None, 3),
            ])
            .is_ok()
        );
    }
}
