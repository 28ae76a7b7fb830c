//! The runtime's capability ports, backed by the store and the event bus: what a module
//! keeps and publishes outlives the run and is shared across nodes (what it measures
//! goes to [`super::metrics`]).

use std::sync::Arc;

use super::events::EventBus;
use crate::domain::now_millis;
use crate::runtime::host::{BackendError, EventSink, KeyValueStore};
use crate::store::Store;

fn backend(err: impl std::fmt::Display) -> BackendError {
    BackendError(err.to_string())
}

/// Module key-value data in the database.
#[derive(Clone)]
pub(crate) struct StoreKeyValue(pub Arc<dyn Store>);

#[async_trait::async_trait]
impl KeyValueStore for StoreKeyValue {
    async fn get(&self, module: &str, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        self.0.kv_get(module, key).await.map_err(backend)
    }

    async fn set(&self, module: &str, key: &str, value: &[u8]) -> Result<(), BackendError> {
        self.0
            .kv_set(module, key, value, now_millis())
            .await
            .map_err(backend)
    }

    async fn delete(&self, module: &str, key: &str) -> Result<(), BackendError> {
        self.0.kv_delete(module, key).await.map_err(backend)
    }

    async fn list_keys(
        &self,
        module: &str,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<String>, BackendError> {
        self.0
            .kv_list_keys(module, prefix, limit)
            .await
            .map_err(backend)
    }
}

/// Module-published events onto the bus.
#[derive(Clone)]
pub(crate) struct StoreEventSink(pub EventBus);

#[async_trait::async_trait]
impl EventSink for StoreEventSink {
    async fn publish(
        &self,
        source_module: &str,
        execution_id: &str,
        topic: &str,
        payload: serde_json::Value,
    ) -> Result<Vec<String>, BackendError> {
        let (event, _) = self
            .0
            .publish(topic, payload, source_module, Some(execution_id))
            .await
            .map_err(backend)?;
        Ok(event
            .refused
            .into_iter()
            .map(|refusal| {
                format!(
                    "event {} on `{topic}` did not start job `{}`: {}",
                    event.id, refusal.job, refusal.reason
                )
            })
            .collect())
    }
}
