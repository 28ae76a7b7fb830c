//! Points in time as the contract carries them: milliseconds since the Unix epoch, UTC.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};

/// A point in time, to the millisecond, UTC. Displays (and serializes) as RFC 3339:
/// `2026-11-28T10:00:00Z`, with `.mmm` before the `Z` when the milliseconds are not
/// zero.
///
/// ```
/// use runcell_sdk::{Context, Timestamp, Trigger};
///
/// let ctx = Context::new("exec-1", Trigger::Cron, 1_795_860_000_000);
/// assert_eq!(ctx.scheduled_at().to_string(), "2026-11-28T10:00:00Z");
/// assert_eq!(Timestamp::from_millis(1_500).to_string(), "1970-01-01T00:00:01.500Z");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    millis: u64,
}

impl Timestamp {
    /// The time `millis` milliseconds after the Unix epoch.
    pub const fn from_millis(millis: u64) -> Self {
        Self { millis }
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> u64 {
        self.millis
    }

    /// The same time as the standard library's type.
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.millis)
    }

    /// RFC 3339, as [`Display`](fmt::Display) writes it.
    pub fn to_rfc3339(self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let time = self.to_system_time();
        if self.millis.is_multiple_of(1_000) {
            write!(f, "{}", humantime::format_rfc3339_seconds(time))
        } else {
            write!(f, "{}", humantime::format_rfc3339_millis(time))
        }
    }
}

impl From<Timestamp> for SystemTime {
    fn from(timestamp: Timestamp) -> Self {
        timestamp.to_system_time()
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_as_rfc3339_utc_with_milliseconds_only_when_there_are_some() {
        let rfc3339 = |ms| Timestamp::from_millis(ms).to_rfc3339();
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_860_000_000), "2026-11-28T10:00:00Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_709_251_199_000), "2024-02-29T23:59:59Z");
        assert_eq!(rfc3339(4_107_542_400_000), "2100-03-01T00:00:00Z");
        assert_eq!(rfc3339(946_684_799_000), "1999-12-31T23:59:59Z");
        assert_eq!(rfc3339(946_684_799_007), "1999-12-31T23:59:59.007Z");
    }

    #[test]
    fn serializes_as_its_text_and_converts_to_system_time() {
        let at = Timestamp::from_millis(1_795_860_000_250);
        assert_eq!(
            serde_json::to_string(&at).unwrap(),
            "\"2026-11-28T10:00:00.250Z\""
        );
        assert_eq!(
            SystemTime::from(at)
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis(),
            1_795_860_000_250
        );
    }
}
