//! The event bus: events from the API and from modules are recorded, then every enabled
//! job subscribed to a matching topic gets one execution with the event as its input.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Deserialize;
use utoipa::ToSchema;

use super::{ServiceError, Services};
use crate::domain::{
    Event, EventRefusal, Job, MAX_EVENT_DEPTH, NewExecution, Page, Trigger, new_id, now_millis,
    topic_matches,
};
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
///
/// Two guards keep a pattern of events from feeding itself (a job on `stars.*` whose
/// module publishes `stars.reported`): an event deeper than [`MAX_EVENT_DEPTH`] in a
/// chain starts no job, and each job is started by events at most
/// `triggers_per_minute` times a minute on this node (a token bucket, so a burst up to
/// that many passes at once). What an event did not start is recorded with it, with the
/// reason, and logged.
#[derive(Clone)]
pub struct EventBus {
    store: Arc<dyn Store>,
    queue: Arc<dyn Queue>,
    triggers: Arc<TriggerBuckets>,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus").finish_non_exhaustive()
    }
}

/// Per job, how many more runs events may start now.
#[derive(Debug)]
struct TriggerBuckets {
    per_minute: u32,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// Past this many jobs' buckets, the full ones are dropped (jobs come and go).
const MAX_TRACKED_JOBS: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    refilled_at: Instant,
}

impl TriggerBuckets {
    /// Whether job `job_id` may be started once more now; takes the token if so.
    fn take(&self, job_id: &str, now: Instant) -> bool {
        let capacity = f64::from(self.per_minute);
        let refill = |bucket: &Bucket| {
            let elapsed = now.saturating_duration_since(bucket.refilled_at);
            (bucket.tokens + elapsed.as_secs_f64() * capacity / 60.0).min(capacity)
        };
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_TRACKED_JOBS {
            // A full bucket is what a job not tracked gets: forgetting it loses nothing.
            buckets.retain(|_, bucket| refill(bucket) < capacity);
        }
        let bucket = buckets.entry(job_id.to_owned()).or_insert(Bucket {
            tokens: capacity,
            refilled_at: now,
        });
        bucket.tokens = refill(bucket);
        bucket.refilled_at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl EventBus {
    /// `triggers_per_minute`: how often events may start each job, per node.
    pub fn new(store: Arc<dyn Store>, queue: Arc<dyn Queue>, triggers_per_minute: u32) -> Self {
        Self {
            store,
            queue,
            triggers: Arc::new(TriggerBuckets {
                per_minute: triggers_per_minute.max(1),
                buckets: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Records the event and queues one execution per matching subscribed job, except
    /// those the guards refuse (listed in the returned event's `refused`).
    /// `caused_by`: the execution that published it, `None` for the API.
    pub async fn publish(
        &self,
        topic: &str,
        payload: serde_json::Value,
        source: &str,
        caused_by: Option<&str>,
    ) -> Result<(Event, Vec<String>), ServiceError> {
        self.publish_as(new_id(), topic, payload, source, caused_by)
            .await?
            .ok_or_else(|| ServiceError::Internal("a fresh event id was taken".to_owned()))
    }

    /// Publishes the event with id `id` once: `None`, starting nothing, when an event
    /// with that id was published already. A sender that retries with the same id (the
    /// alert outbox) so never starts jobs twice.
    pub(crate) async fn publish_once(
        &self,
        id: String,
        topic: &str,
        payload: serde_json::Value,
        source: &str,
    ) -> Result<Option<(Event, Vec<String>)>, ServiceError> {
        self.publish_as(id, topic, payload, source, None).await
    }

    async fn publish_as(
        &self,
        id: String,
        topic: &str,
        payload: serde_json::Value,
        source: &str,
        caused_by: Option<&str>,
    ) -> Result<Option<(Event, Vec<String>)>, ServiceError> {
        let now = now_millis();
        let depth = match caused_by {
            Some(execution) => self
                .store
                .starting_event_depth(execution)
                .await?
                .map_or(1, |depth| depth.saturating_add(1)),
            None => 1,
        };
        let mut event = Event {
            id,
            topic: topic.to_owned(),
            payload,
            source: source.to_owned(),
            created_at: now,
            depth,
            caused_by: caused_by.map(str::to_owned),
            refused: Vec::new(),
        };
        let subscribed: Vec<Job> = self
            .store
            .event_subscribed_jobs()
            .await?
            .into_iter()
            .filter(|job| {
                job.on_event
                    .as_deref()
                    .is_some_and(|p| topic_matches(p, topic))
            })
            .collect();
        let started_at = Instant::now();
        let mut starting = Vec::with_capacity(subscribed.len());
        for job in subscribed {
            let refusal = if depth > MAX_EVENT_DEPTH {
                Some(format!(
                    "the event is {depth} deep in a chain of events, past the limit of \
                     {MAX_EVENT_DEPTH}: runs started by events kept publishing events that \
                     start runs (does the job subscribe to what its own module publishes?)"
                ))
            } else if !self.triggers.take(&job.id, started_at) {
                Some(format!(
                    "events started this job more than {} times in the last minute on this \
                     node",
                    self.triggers.per_minute
                ))
            } else {
                None
            };
            match refusal {
                Some(reason) => {
                    tracing::warn!(
                        event = %event.id, topic, source, job = %job.name, %reason,
                        "an event did not start a subscribed job"
                    );
                    event.refused.push(EventRefusal {
                        job_id: job.id,
                        job: job.name,
                        reason,
                    });
                }
                None => starting.push(job),
            }
        }
        match self.store.insert_event(&event).await {
            Ok(()) => {}
            Err(crate::store::StoreError::Conflict(_)) => return Ok(None),
            Err(err) => return Err(err.into()),
        }
        let input = serde_json::to_string(&event.envelope()).expect("an event serializes");
        let executions: Vec<NewExecution> = starting
            .into_iter()
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
        tracing::debug!(
            topic,
            source,
            depth,
            triggered = ids.len(),
            "event published"
        );
        Ok(Some((event, ids)))
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
            .publish(&request.topic, request.payload, "api", None)
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_jobs_event_triggers_pass_in_a_burst_then_at_the_rate() {
        let buckets = TriggerBuckets {
            per_minute: 6,
            buckets: Mutex::new(HashMap::new()),
        };
        let t0 = Instant::now();
        assert!((0..6).all(|_| buckets.take("a", t0)));
        assert!(!buckets.take("a", t0), "the burst is spent");
        assert!(buckets.take("b", t0), "each job has its own bucket");
        assert!(!buckets.take("a", t0 + Duration::from_secs(9)));
        assert!(
            buckets.take("a", t0 + Duration::from_secs(11)),
            "one per 10 s"
        );
        assert!(!buckets.take("a", t0 + Duration::from_secs(12)));
        let later = t0 + Duration::from_secs(3600);
        assert!(
            (0..6).all(|_| buckets.take("a", later)),
            "refills to the burst"
        );
        assert!(!buckets.take("a", later));
    }
}
