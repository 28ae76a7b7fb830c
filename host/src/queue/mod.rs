//! Transport of execution ids from whoever created them to the workers. Carries ids only:
//! the `executions` table is the truth, so a lost or duplicated delivery costs at most a
//! redundant claim, never a lost or doubled execution.

mod memory;
mod redis;
mod redis_logs;
mod redis_pool;
#[cfg(test)]
mod testing;

use std::time::Duration;

use crate::domain::Millis;

pub use memory::MemoryQueue;
pub use redis::{RedisQueue, RedisQueueConfig};
pub use redis_logs::{RedisLogRelay, RedisLogRelayConfig};

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The backend cannot be reached or refused the command; retry later.
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    /// The configuration cannot work (a malformed URL); fix it and restart.
    #[error("invalid queue configuration: {0}")]
    Config(String),
}

/// One id handed to a worker; acknowledged once its result is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: String,
    /// Backend bookkeeping (a stream entry id); empty for the in-process queue.
    pub receipt: String,
}

#[async_trait::async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Makes executions available to workers now.
    async fn push(&self, ids: &[String]) -> Result<(), QueueError>;

    /// Makes an execution available at `due` (retry backoff).
    async fn push_delayed(&self, id: &str, due: Millis) -> Result<(), QueueError>;

    /// Waits up to `wait` for work and returns at most `max` deliveries (maybe none).
    async fn pop(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError>;

    /// Acknowledges deliveries whose execution was recorded or turned out not to need
    /// running.
    async fn ack(&self, deliveries: &[Delivery]) -> Result<(), QueueError>;

    /// Whether the backend answers now; called by `/readyz`.
    async fn ping(&self) -> Result<(), QueueError>;

    /// How many times this queue found its backlog gone (Redis restarted empty or was
    /// flushed) and started afresh. When it grows, the reconciler offers every queued
    /// execution again at once. A queue that cannot lose entries keeps it at 0.
    fn losses(&self) -> u64 {
        0
    }
}
