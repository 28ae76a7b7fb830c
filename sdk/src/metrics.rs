//! Numeric samples for monitoring: stored as a time series per module, shown on the
//! dashboard and usable in alert rules.
//!
//! ```
//! # fn job() -> Result<(), runcell_sdk::JobError> {
//! runcell_sdk::metrics::observe("sync.records", 42.0, &[("source", "api")])?;
//! # Ok(())
//! # }
//! ```

use std::fmt;

use crate::__bindings::runcell::module::metrics as wit;
use crate::JobError;

/// Why a sample was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetricsError {
    /// The name or a label is malformed (names are letters, digits, `_`, `.` and `:`, at
    /// most 128 bytes; at most 8 labels, each key once; the value is finite).
    Invalid(String),
    /// Too many samples in this run, or a new series (name or set of labels) past the
    /// module's bound of series (the message says which and gives the cap). Aggregate
    /// first, and use labels with few values.
    RateLimited(String),
}

impl fmt::Display for MetricsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid(message) => write!(f, "invalid metric sample: {message}"),
            Self::RateLimited(message) => write!(f, "too many metric samples: {message}"),
        }
    }
}

impl std::error::Error for MetricsError {}

/// Both kinds are permanent: the same code would make the same mistake on a retry.
impl From<MetricsError> for JobError {
    fn from(error: MetricsError) -> Self {
        Self::permanent(error)
    }
}

impl From<wit::Error> for MetricsError {
    fn from(error: wit::Error) -> Self {
        match error {
            wit::Error::Invalid(message) => Self::Invalid(message),
            wit::Error::RateLimited(message) => Self::RateLimited(message),
        }
    }
}

/// Records one sample of metric `name` with `labels` (`("endpoint", "api")`), stamped by the
/// host with the current time.
pub fn observe(name: &str, value: f64, labels: &[(&str, &str)]) -> Result<(), MetricsError> {
    let labels: Vec<wit::Label> = labels
        .iter()
        .map(|&(key, value)| wit::Label {
            key: key.to_owned(),
            value: value.to_owned(),
        })
        .collect();
    wit::observe(name, value, &labels).map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_samples_are_permanent_failures() {
        let error = MetricsError::from(wit::Error::RateLimited("max 1000".to_owned()));
        assert_eq!(
            JobError::from(error),
            JobError::permanent("too many metric samples: max 1000")
        );
    }
}
