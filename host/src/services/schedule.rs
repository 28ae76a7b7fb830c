//! Cron schedules: parsing what users write and finding the next tick. UTC throughout.
//! Users write the usual five fields (`0 * * * *`), or six with seconds first
//! (`*/5 * * * * *` is every five seconds), or seven with a trailing year.

use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};

use crate::domain::Millis;

/// A parsed schedule.
#[derive(Debug, Clone)]
pub(crate) struct Schedule(cron::Schedule);

impl Schedule {
    /// Parses `expression`, explaining what is wrong in terms of the user's text.
    pub(crate) fn parse(expression: &str) -> Result<Self, String> {
        let fields = expression.split_whitespace().count();
        let normalized = match fields {
            5 => format!("0 {expression}"),
            6 | 7 => expression.to_owned(),
            n => {
                return Err(format!(
                    "`{expression}` has {n} fields; write 5 (minute hour day month weekday), or 6 with seconds first"
                ));
            }
        };
        cron::Schedule::from_str(&normalized)
            .map(Schedule)
            .map_err(|err| format!("`{expression}` is not a valid cron expression: {err}"))
    }

    /// The first tick strictly after `after`.
    pub(crate) fn next_after(&self, after: Millis) -> Option<Millis> {
        let after: DateTime<Utc> = Utc.timestamp_millis_opt(after).single()?;
        self.0.after(&after).next().map(|t| t.timestamp_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOV_28_10H: Millis = 1_795_860_000_000; // 2026-11-28T10:00:00Z

    #[test]
    fn five_fields_mean_minutes() {
        let hourly = Schedule::parse("0 * * * *").unwrap();
        assert_eq!(hourly.next_after(NOV_28_10H), Some(NOV_28_10H + 3_600_000));
        assert_eq!(hourly.next_after(NOV_28_10H - 1), Some(NOV_28_10H));
    }

    #[test]
    fn six_fields_start_with_seconds() {
        let every_second = Schedule::parse("* * * * * *").unwrap();
        assert_eq!(every_second.next_after(NOV_28_10H), Some(NOV_28_10H + 1000));
        assert_eq!(
            every_second.next_after(NOV_28_10H + 400),
            Some(NOV_28_10H + 1000)
        );
    }

    #[test]
    fn nonsense_is_explained() {
        let err = Schedule::parse("every hour").unwrap_err();
        assert!(err.contains("has 2 fields"), "{err}");
        let err = Schedule::parse("61 * * * *").unwrap_err();
        assert!(err.contains("not a valid cron expression"), "{err}");
    }
}
