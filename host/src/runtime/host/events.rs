//! The `events` capability: publishing onto the event bus, only on granted topics.

use std::sync::Mutex;

use crate::runtime::bindings::events;

use super::{BackendError, HostContext};

/// A payload is an event, not a data transfer.
pub(crate) const MAX_PAYLOAD_BYTES: usize = 256 * 1024;
const MAX_TOPIC_BYTES: usize = 200;
/// Publishing is a side effect the bus must absorb; this bounds what one run can cause.
const MAX_EVENTS_PER_RUN: u32 = 1_000;

/// Where published events go. Called once per accepted `publish`, by execution
/// `execution_id` of `source_module`. Answers what the event did not do that the run's
/// author should hear of (a subscribed job it did not start, and why), one line each.
#[async_trait::async_trait]
pub trait EventSink: Send + Sync + 'static {
    async fn publish(
        &self,
        source_module: &str,
        execution_id: &str,
        topic: &str,
        payload: serde_json::Value,
    ) -> Result<Vec<String>, BackendError>;
}

/// An event a guest published, as kept by [`MemoryEventSink`].
#[derive(Debug, Clone, PartialEq)]
pub struct PublishedEvent {
    pub source_module: String,
    pub topic: String,
    pub payload: serde_json::Value,
}

/// Keeps published events in this process, for local runs and tests.
#[derive(Debug, Default)]
pub struct MemoryEventSink {
    events: Mutex<Vec<PublishedEvent>>,
}

impl MemoryEventSink {
    pub fn take(&self) -> Vec<PublishedEvent> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[async_trait::async_trait]
impl EventSink for MemoryEventSink {
    async fn publish(
        &self,
        source_module: &str,
        _execution_id: &str,
        topic: &str,
        payload: serde_json::Value,
    ) -> Result<Vec<String>, BackendError> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(PublishedEvent {
                source_module: source_module.into(),
                topic: topic.into(),
                payload,
            });
        Ok(Vec::new())
    }
}

/// Whether `topic` is dot-separated words of letters, digits, `-` and `_`.
pub(crate) fn is_valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= MAX_TOPIC_BYTES
        && topic.split('.').all(|word| {
            !word.is_empty()
                && word
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

#[derive(Debug)]
pub(crate) enum PublishFailure {
    Refused(events::Error),
    Trap(wasmtime::Error),
}

impl From<wasmtime::Error> for PublishFailure {
    fn from(err: wasmtime::Error) -> Self {
        PublishFailure::Trap(err)
    }
}

impl From<BackendError> for PublishFailure {
    fn from(err: BackendError) -> Self {
        tracing::warn!(error = %err, "event backend failed");
        PublishFailure::Refused(events::Error::Unavailable(
            "the event bus is unavailable".into(),
        ))
    }
}

impl events::Host for HostContext {
    async fn publish(&mut self, topic: String, payload: String) -> Result<(), PublishFailure> {
        if !is_valid_topic(&topic) {
            return Err(PublishFailure::Refused(events::Error::InvalidTopic(
                format!(
                    "`{}` is not a topic: use dot-separated words of letters, digits, `-` and `_`, at most {MAX_TOPIC_BYTES} bytes",
                    crate::runtime::logs::truncate(&topic, MAX_TOPIC_BYTES)
                ),
            )));
        }
        if !self.grants.may_publish(&topic) {
            self.log_denial(&format!(
                "events.publish on `{topic}`: not among the module's granted topics"
            ));
            return Err(PublishFailure::Refused(events::Error::Denied(format!(
                "publishing on `{topic}` is not granted; declare it in `publishes`"
            ))));
        }
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(PublishFailure::Refused(events::Error::InvalidPayload(
                format!(
                    "payload is {} bytes, above the limit of {MAX_PAYLOAD_BYTES}",
                    payload.len()
                ),
            )));
        }
        let payload: serde_json::Value = serde_json::from_str(&payload).map_err(|err| {
            PublishFailure::Refused(events::Error::InvalidPayload(format!(
                "payload is not JSON: {err}"
            )))
        })?;
        if self.events_published >= MAX_EVENTS_PER_RUN {
            return Err(PublishFailure::Refused(events::Error::InvalidPayload(
                format!("a run may publish at most {MAX_EVENTS_PER_RUN} events"),
            )));
        }
        self.events_published += 1;
        let sink = self.services.events.clone();
        let notes = self
            .bounded(
                "events.publish",
                sink.publish(&self.module, &self.execution_id, &topic, payload),
            )
            .await??;
        for note in notes {
            self.logs
                .push(crate::domain::LogLevel::Warn, &note, Default::default());
        }
        Ok(())
    }

    fn convert_error(&mut self, err: PublishFailure) -> wasmtime::Result<events::Error> {
        match err {
            PublishFailure::Refused(error) => Ok(error),
            PublishFailure::Trap(trap) => Err(trap),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_dotted_words() {
        assert!(is_valid_topic("report.generated"));
        assert!(is_valid_topic("sync_done-2"));
        assert!(!is_valid_topic(""));
        assert!(!is_valid_topic("report..x"));
        assert!(!is_valid_topic("report.*"));
        assert!(!is_valid_topic("has space"));
        assert!(!is_valid_topic(&"a".repeat(201)));
    }
}
