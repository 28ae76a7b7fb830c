//! Publishing onto Runcell's event bus. Jobs subscribed to a matching topic run with the
//! event as their input. A topic must be declared in the module's `publishes`.
//!
//! ```
//! # fn job() -> Result<(), runcell_sdk::JobError> {
//! runcell_sdk::events::publish("report.generated", &serde_json::json!({"records": 3}))?;
//! # Ok(())
//! # }
//! ```

use std::fmt;

use serde::Serialize;

use crate::__bindings::runcell::module::events as wit;
use crate::JobError;

/// Why a publish failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum PublishError {
    /// The topic is not among the module's declared `publishes`, or was not approved.
    Denied(String),
    /// The topic is malformed: dot-separated words of letters, digits, `-` and `_`, at most
    /// 200 bytes.
    InvalidTopic(String),
    /// The host refused the payload (not JSON, or over the size limit).
    InvalidPayload(String),
    /// The event bus is temporarily unreachable; worth retrying.
    Unavailable(String),
    /// The payload could not be serialized to JSON.
    Encode(serde_json::Error),
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Denied(message) => write!(f, "publishing denied: {message}"),
            Self::InvalidTopic(message) => write!(f, "invalid topic: {message}"),
            Self::InvalidPayload(message) => write!(f, "invalid event payload: {message}"),
            Self::Unavailable(message) => write!(f, "event bus unavailable: {message}"),
            Self::Encode(source) => write!(f, "could not encode the event payload: {source}"),
        }
    }
}

impl std::error::Error for PublishError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Encode(source) => Some(source),
            _ => None,
        }
    }
}

/// An unreachable bus is transient (the run is retried); everything else is permanent.
impl From<PublishError> for JobError {
    fn from(error: PublishError) -> Self {
        match error {
            PublishError::Unavailable(_) => Self::transient(error),
            _ => Self::permanent(error),
        }
    }
}

impl From<wit::Error> for PublishError {
    fn from(error: wit::Error) -> Self {
        match error {
            wit::Error::Denied(message) => Self::Denied(message),
            wit::Error::InvalidTopic(message) => Self::InvalidTopic(message),
            wit::Error::InvalidPayload(message) => Self::InvalidPayload(message),
            wit::Error::Unavailable(message) => Self::Unavailable(message),
        }
    }
}

/// Publishes `payload`, serialized to JSON, on `topic`.
pub fn publish<T: Serialize + ?Sized>(topic: &str, payload: &T) -> Result<(), PublishError> {
    let payload = serde_json::to_string(payload).map_err(PublishError::Encode)?;
    publish_json(topic, &payload)
}

/// Publishes `payload`, which must already be JSON text, on `topic`.
pub fn publish_json(topic: &str, payload: &str) -> Result<(), PublishError> {
    wit::publish(topic, payload).map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_bus_is_transient_and_the_rest_permanent() {
        let unavailable = PublishError::from(wit::Error::Unavailable("redis down".to_owned()));
        assert_eq!(
            JobError::from(unavailable),
            JobError::transient("event bus unavailable: redis down")
        );
        for error in [
            wit::Error::Denied("topic x".to_owned()),
            wit::Error::InvalidTopic("t".to_owned()),
            wit::Error::InvalidPayload("p".to_owned()),
        ] {
            assert!(matches!(
                JobError::from(PublishError::from(error)),
                JobError::Permanent(_)
            ));
        }
    }
}
