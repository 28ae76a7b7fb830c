//! Why a job failed, in the three kinds the host acts on.

use std::fmt;

use crate::__bindings::runcell::module::types as wit;

/// Why a job run failed. The variant tells Runcell what to do next, so pick the one that
/// matches what a retry would achieve.
///
/// The errors of [`kv`](crate::kv), [`events`](crate::events) and
/// [`metrics`](crate::metrics) convert into `JobError`, so `?` works on them inside a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobError {
    /// The input is wrong (missing field, bad value, wrong shape). Not retried: say which
    /// part of the input to fix.
    InvalidInput(String),
    /// A temporary condition (a dependency is down, storage is unavailable). Retried with
    /// backoff while attempts remain.
    Transient(String),
    /// The job cannot succeed and retrying will not help. Not retried.
    Permanent(String),
}

impl JobError {
    /// The input is wrong; `message` should say which part to fix.
    pub fn invalid_input(message: impl fmt::Display) -> Self {
        Self::InvalidInput(message.to_string())
    }

    /// A temporary failure worth retrying.
    pub fn transient(message: impl fmt::Display) -> Self {
        Self::Transient(message.to_string())
    }

    /// A failure that retrying will not fix.
    pub fn permanent(message: impl fmt::Display) -> Self {
        Self::Permanent(message.to_string())
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        match self {
            Self::InvalidInput(message) | Self::Transient(message) | Self::Permanent(message) => {
                message
            }
        }
    }

    /// Whether Runcell retries a run that failed with this error.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Transient(_))
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            Self::InvalidInput(_) => "invalid input",
            Self::Transient(_) => "transient failure",
            Self::Permanent(_) => "permanent failure",
        };
        write!(f, "{kind}: {}", self.message())
    }
}

impl std::error::Error for JobError {}

impl From<JobError> for wit::JobError {
    fn from(error: JobError) -> Self {
        match error {
            JobError::InvalidInput(message) => Self::InvalidInput(message),
            JobError::Transient(message) => Self::Transient(message),
            JobError::Permanent(message) => Self::Permanent(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_pick_the_kind_and_keep_the_message() {
        assert_eq!(
            JobError::invalid_input("bad"),
            JobError::InvalidInput("bad".to_owned())
        );
        assert_eq!(
            JobError::transient(format_args!("down for {}s", 5)),
            JobError::Transient("down for 5s".to_owned())
        );
        assert_eq!(JobError::permanent("no").message(), "no");
    }

    #[test]
    fn only_transient_errors_are_retried() {
        assert!(JobError::transient("x").is_retryable());
        assert!(!JobError::permanent("x").is_retryable());
        assert!(!JobError::invalid_input("x").is_retryable());
    }

    #[test]
    fn display_names_the_kind() {
        assert_eq!(
            JobError::transient("kv down").to_string(),
            "transient failure: kv down"
        );
    }

    #[test]
    fn converts_into_the_wit_variant_of_the_same_kind() {
        let wit = wit::JobError::from(JobError::invalid_input("records[0].id: empty"));
        assert!(matches!(wit, wit::JobError::InvalidInput(m) if m == "records[0].id: empty"));
    }
}
