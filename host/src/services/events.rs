//! The event bus: events from the API and from modules are recorded, then every enabled
//! job subscribed to a matching topic gets one execution with the event as its input.

use std::sync::Arc;

use serde::Deserialize;
use utoipa::ToSchema;

use super::{ServiceError, Services};
use crate::domain::{Event, NewExecution, Page, Trigger, new_id, now_millis, topic_matches};
use crate::queue::Queue;
use crate::runtime::host::events::{MAX_PAYLOAD_BYTES, is_valid_topic};
use crate::store::Store;

/// An event posted through the API.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishEvent {
    /// Dot-separated words of letters, digits, `-` and `_` (`report.generated`).
    pub topic: String,
    /// Any JSON; each triggered run gets the event as its input. Default `null`.
    #[serde(default)]
    pub payload: serde_json::Value,
}

/// Records events and fans them out to subscribed jobs. Needs only the store and the
/// queue, so the runtime's event capability can use it too.
#[derive(Clone)]
pub struct EventBus {
    store: Arc<dyn Store>,
    queue: Arc<dyn Queue>,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus").finish_non_exhaustive()
    }
}

impl EventBus {
    pub fn new(store: Arc<dyn Store>, queue: Arc<dyn Queue>) -> Self {
        Self { store, queue }
    }

    /// Records the event and queues one execution per matching subscribed job.
    pub async fn publish(
        &self,
        topic: &str,
        payload: serde_json::Value,
        source: &str,
    ) -> Result<(Event, Vec<String>), ServiceError> {
        let now = now_millis();
        let event = Event {
            id: new_id(),
            topic: topic.to_owned(),
            payload,
            source: source.to_owned(),
            created_at: now,
        };
        self.store.insert_event(&event).await?;
        let input = serde_json::to_string(&event).expect("an event serializes");
        let executions: Vec<NewExecution> = self
            .store
            .event_subscribed_jobs()
            .await?
            .into_iter()
            .filter(|job| {
                job.on_event
                    .as_deref()
                    .is_some_and(|p| topic_matches(p, topic))
            })
            .map(|job| NewExecution {
                id: new_id(),
                job_id: job.id,
                module: job.module,
                job: job.job,
                trigger: Trigger::Event,
                attempt: 1,
                retry_of: None,
                input: input.clone(),
                scheduled_at: now,
                run_after: now,
                cron_tick: None,
                event_id: Some(event.id.clone()),
                created_at: now,
            })
            .collect();
        let ids = if executions.is_empty() {
            Vec::new()
        } else {
            let ids = self.store.enqueue_executions(&executions).await?;
            super::executions::offer(self.queue.as_ref(), &ids).await;
            ids
        };
        tracing::debug!(topic, source, triggered = ids.len(), "event published");
        Ok((event, ids))
    }
}

impl Services {
    /// Publishes an event from the API.
    pub async fn publish_event(
        &self,
        request: PublishEvent,
    ) -> Result<(Event, Vec<String>), ServiceError> {
        if !is_valid_topic(&request.topic) {
            return Err(ServiceError::bad(
                "topic",
                format!(
                    "`{}` is not a topic: dot-separated words of letters, digits, `-` and `_`",
                    request.topic
                ),
            ));
        }
        let size = request.payload.to_string().len();
        if size > MAX_PAYLOAD_BYTES {
            return Err(ServiceError::unprocessable(
                "payload",
                format!("{size} bytes, above the limit of {MAX_PAYLOAD_BYTES}"),
            ));
        }
        self.events
            .publish(&request.topic, request.payload, "api")
            .await
    }

    pub async fn list_events(
        &self,
        topic: Option<&str>,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Event>, ServiceError> {
        Ok(self.store.list_events(topic, cursor, limit).await?)
    }
}
