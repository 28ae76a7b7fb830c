//! Module metrics as series: a series is one metric name with one set of labels, and
//! its samples are kept as rollups (count, sum, min, max and the last value) of whole
//! minutes, hours and days. Every aggregate a query offers is exact over rollups, so
//! no sample needs to be kept one by one, and a query reads a number of rollups that
//! depends on its window and step, never on how much history there is.

use std::collections::BTreeMap;

use super::Millis;
use super::window::ROLLUP_STEPS;

/// The longest metric name or label key, in bytes.
pub(crate) const MAX_NAME_BYTES: usize = 128;
/// The longest label value, in bytes.
pub(crate) const MAX_LABEL_VALUE_BYTES: usize = 128;
/// Labels one sample may carry at most.
pub(crate) const MAX_LABELS: usize = 8;

/// The widths of the rollups kept of every series, finest first. Each sample is added
/// to one rollup of each width: three rows, written by one statement. A query reads the
/// widest width that divides its step, so a 30-day query at one-hour steps reads 720
/// rows of a series rather than 43,200 minutes. Minutes alone would not meet the 50 ms
/// such a query may take: it took 64 to 78 ms at the median on SQLite (p99 94 to 207 ms)
/// and 51 to 53 ms on PostgreSQL, against about 1 ms from hours (p99 3 to 7 ms),
/// measured on the reference machine (`a_30_day_query_at_1h_steps_on_*` in
/// `services::metrics`).
pub(crate) const ROLLUP_WIDTHS: [Millis; 3] = ROLLUP_STEPS;

/// Whether `name` may name a metric or a label: letters, digits, `_`, `.` and `:`, 1 to
/// [`MAX_NAME_BYTES`] bytes.
pub(crate) fn is_valid_metric_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':'))
}

/// The labels of a series, sorted by key: the same set however a module ordered it.
pub(crate) type Labels = BTreeMap<String, String>;

/// How a label set is stored and compared: a JSON object with its keys sorted
/// (`{"endpoint":"api","region":"eu"}`, `{}` for none), so that one set always has one
/// text and the database's uniqueness of (module, name, labels) is uniqueness of series.
pub(crate) fn labels_text(labels: &Labels) -> String {
    serde_json::to_string(labels).expect("a map of strings serializes")
}

/// The samples of one series in one minute, hour or day, merged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rollup {
    pub samples: i64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    /// The value of the sample with the latest time (of equal times, the one added last).
    pub last: f64,
    pub last_at: Millis,
}

impl Rollup {
    /// One sample of `value` at `at`.
    pub(crate) fn of(value: f64, at: Millis) -> Self {
        Self {
            samples: 1,
            sum: value,
            min: value,
            max: value,
            last: value,
            last_at: at,
        }
    }

    /// Adds the samples of `later`, which were added after these. The store's upsert
    /// does the same in SQL; a test holds the two together.
    pub(crate) fn merge(&mut self, later: &Rollup) {
        self.samples += later.samples;
        self.sum += later.sum;
        self.min = self.min.min(later.min);
        self.max = self.max.max(later.max);
        if later.last_at >= self.last_at {
            self.last = later.last;
            self.last_at = later.last_at;
        }
    }

    /// The aggregate `agg` of these samples.
    pub(crate) fn value(&self, agg: Aggregate) -> f64 {
        match agg {
            Aggregate::Avg => self.sum / self.samples as f64,
            Aggregate::Min => self.min,
            Aggregate::Max => self.max,
            Aggregate::Sum => self.sum,
            Aggregate::Count => self.samples as f64,
            Aggregate::Last => self.last,
        }
    }
}

/// What a point of a series query says of the samples in its step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Aggregate {
    /// The mean of the samples.
    Avg,
    Min,
    Max,
    Sum,
    /// How many samples there were.
    Count,
    /// The value of the latest sample.
    Last,
}

impl Aggregate {
    pub(crate) const ALL: [Aggregate; 6] = [
        Self::Avg,
        Self::Min,
        Self::Max,
        Self::Sum,
        Self::Count,
        Self::Last,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Avg => "avg",
            Self::Min => "min",
            Self::Max => "max",
            Self::Sum => "sum",
            Self::Count => "count",
            Self::Last => "last",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|agg| agg.as_str() == text)
    }
}

/// The start of the rollup of width `width` that holds time `at`.
pub(crate) fn rollup_start(at: Millis, width: Millis) -> Millis {
    at.div_euclid(width) * width
}

/// One series of a module's metric, as listed.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSeries {
    pub id: i64,
    pub name: String,
    pub labels: Labels,
    pub created_at: Millis,
    /// The latest sample's value and time; `None` once its rollups were pruned.
    pub last: Option<(f64, Millis)>,
}

/// What became of a module's attempt to start a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeriesAdmission {
    /// The series exists (now or already): its id.
    Admitted(i64),
    /// The module has as many series as it may have; the refusal was counted.
    Refused,
}

/// Samples a module could not record because they would have started a series past
/// its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MetricRefusals {
    pub samples: i64,
    pub last_at: Option<Millis>,
}

/// What a module's metric history holds, in brief.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleMetricsSummary {
    pub module: String,
    pub series: i64,
    pub refusals: MetricRefusals,
}

/// A label filter as a client writes it, `key:value` (the value may hold `:`).
pub(crate) fn parse_label_filter(text: &str) -> Result<(String, String), String> {
    let Some((key, value)) = text.split_once(':') else {
        return Err(format!(
            "`{text}` is not a label filter; write key:value, such as region:eu"
        ));
    };
    // Split at the first `:`: a key holding `:` (which a module may record) cannot be
    // filtered on, a value holding one (a URL) can.
    if !is_valid_metric_name(key) {
        return Err(format!(
            "`{key}` is not a label key: letters, digits, `_` and `.`, 1 to {MAX_NAME_BYTES} bytes"
        ));
    }
    if value.len() > MAX_LABEL_VALUE_BYTES {
        return Err(format!(
            "the value of label `{key}` is longer than {MAX_LABEL_VALUE_BYTES} bytes, so no \
             series has it"
        ));
    }
    Ok((key.to_owned(), value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::window::{HOUR, MINUTE};

    #[test]
    fn labels_are_stored_in_one_order_whatever_the_order_recorded() {
        let a: Labels = [("region", "eu"), ("endpoint", "api")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(labels_text(&a), r#"{"endpoint":"api","region":"eu"}"#);
        assert_eq!(labels_text(&Labels::new()), "{}");
    }

    #[test]
    fn merged_rollups_give_exact_aggregates_and_the_latest_value() {
        let mut rollup = Rollup::of(3.0, 200);
        rollup.merge(&Rollup::of(1.0, 100));
        rollup.merge(&Rollup::of(8.0, 150));
        assert_eq!(rollup.value(Aggregate::Count), 3.0);
        assert_eq!(rollup.value(Aggregate::Sum), 12.0);
        assert_eq!(rollup.value(Aggregate::Avg), 4.0);
        assert_eq!(rollup.value(Aggregate::Min), 1.0);
        assert_eq!(rollup.value(Aggregate::Max), 8.0);
        assert_eq!(rollup.value(Aggregate::Last), 3.0, "the latest by time");
        rollup.merge(&Rollup::of(5.0, 200));
        assert_eq!(
            rollup.value(Aggregate::Last),
            5.0,
            "of equal times, the later"
        );
    }

    #[test]
    fn a_rollup_starts_at_a_multiple_of_its_width() {
        assert_eq!(rollup_start(-1, MINUTE), -MINUTE);
        assert_eq!(rollup_start(HOUR + 5, HOUR), HOUR);
    }

    #[test]
    fn label_filters_are_key_colon_value() {
        assert_eq!(
            parse_label_filter("region:eu"),
            Ok(("region".to_owned(), "eu".to_owned()))
        );
        assert_eq!(
            parse_label_filter("url:https://x"),
            Ok(("url".to_owned(), "https://x".to_owned()))
        );
        assert_eq!(
            parse_label_filter("empty:"),
            Ok(("empty".to_owned(), String::new()))
        );
        for bad in ["region", ":eu", "bad key:x", "é:x"] {
            assert!(parse_label_filter(bad).is_err(), "{bad}");
        }
        let long = format!("k:{}", "v".repeat(MAX_LABEL_VALUE_BYTES + 1));
        assert!(parse_label_filter(&long).is_err());
    }
}
