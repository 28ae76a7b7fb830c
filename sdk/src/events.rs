//! The event bus. [`publish`] puts an event on it (the topic must be declared in the
//! module's `publishes`); a job subscribed to a matching topic (its `onEvent`) runs with
//! the event as its input, which it takes as an [`Event<T>`], `T` being the payload's
//! type.
//!
//! ```
//! use runcell_sdk::events::Event;
//! use runcell_sdk::{Context, JobError};
//!
//! #[derive(serde::Deserialize, serde::Serialize)]
//! struct Report {
//!     records: u64,
//! }
//!
//! fn publish_report(_ctx: &Context, _input: runcell_sdk::NoInput) -> Result<(), JobError> {
//!     runcell_sdk::events::publish("report.generated", &Report { records: 3 })?;
//!     Ok(())
//! }
//!
//! fn on_report(_ctx: &Context, event: Event<Report>) -> Result<u64, JobError> {
//!     runcell_sdk::info!("report received", topic = event.topic, from = event.source);
//!     Ok(event.payload.records)
//! }
//! ```
//!
//! A job that takes [`NoInput`](crate::NoInput) may subscribe too: it runs on each event
//! and ignores it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::__bindings::runcell::module::events as wit;
use crate::JobError;

/// The input of a run an event started: the event, its payload of type `T` (any JSON
/// with the default `serde_json::Value`). A payload that does not fit `T` fails the run
/// with `invalid-input`, like any input that does not fit its job.
///
/// The host sends `{"id", "topic", "source", "createdAt", "payload"}`; fields it may add
/// later are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Event<T = serde_json::Value> {
    /// Unique id of the event; every job it started got the same.
    pub id: String,
    /// The topic it was published on (`report.generated`).
    pub topic: String,
    /// `api` for an event posted through the API, else the name of the module that
    /// published it.
    pub source: String,
    /// When it was published, in milliseconds since the Unix epoch (UTC).
    #[serde(rename = "createdAt")]
    pub created_at_ms: u64,
    /// What was published.
    pub payload: T,
}

impl<T> Event<T> {
    /// An event as the API would post it, for calling jobs from unit tests.
    pub fn new(topic: impl Into<String>, payload: T) -> Self {
        Self {
            id: "event-1".to_owned(),
            topic: topic.into(),
            source: "api".to_owned(),
            created_at_ms: 0,
            payload,
        }
    }

    /// The same event from another source (`api` or a module's name).
    #[must_use]
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }
}

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
    fn an_event_reads_as_the_host_sends_it_and_ignores_what_it_adds_later() {
        #[derive(Debug, PartialEq, Deserialize)]
        struct Stars {
            count: u32,
        }
        let event: Event<Stars> = serde_json::from_str(
            r#"{"id": "e1", "topic": "stars.reported", "source": "gh", "createdAt": 1700000000000,
                "payload": {"count": 3}, "depth": 2}"#,
        )
        .unwrap();
        assert_eq!(event.payload, Stars { count: 3 });
        assert_eq!(
            (
                event.id.as_str(),
                event.topic.as_str(),
                event.source.as_str()
            ),
            ("e1", "stars.reported", "gh")
        );
        assert_eq!(event.created_at_ms, 1_700_000_000_000);
        let untyped: Event = serde_json::from_str(
            r#"{"id": "e1", "topic": "t", "source": "api", "createdAt": 0, "payload": null}"#,
        )
        .unwrap();
        assert_eq!(untyped.payload, serde_json::Value::Null);
    }

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
