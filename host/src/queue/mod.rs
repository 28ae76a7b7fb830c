//! Transport between nodes: execution ids from whoever created them to the workers, and
//! live log lines from the node running an execution to its followers on other nodes.
//! Carries ids only: the `executions` table is the truth, so a lost or duplicated delivery
//! costs at most a redundant claim, never a lost or doubled execution. Log lines are best
//! effort (the store has them once a run ends).

mod memory;
mod redis;
mod redis_logs;
mod redis_pool;
#[cfg(test)]
pub(crate) mod testing;

use std::time::Duration;

use futures_util::stream::BoxStream;
use tokio::sync::broadcast;

use crate::domain::{LogMessage, Millis, PoolState};

pub use memory::MemoryQueue;
pub(crate) use redis::{RedisQueue, RedisQueueConfig};
pub(crate) use redis_logs::{RedisLogRelay, RedisLogRelayConfig};

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

    /// The state of its connection pools, from memory (no I/O); none for a queue that
    /// needs no connections.
    fn pools(&self) -> Vec<PoolState> {
        Vec::new()
    }
}

/// Carries live log lines between nodes. One side appends the lines of runs on this node
/// that followers elsewhere asked for; the other follows runs on other nodes. The log hub
/// of the services decides who follows what; a relay only carries.
pub trait LogRelay: Send + Sync + 'static {
    /// Whether a follower on another node asked for `id` recently. Called when `id`
    /// starts here, with the hub's lock held: answers from memory, without I/O.
    fn followed_elsewhere(&self, id: &str) -> bool;

    /// Ids followers on other nodes ask for, as the requests arrive (repeated while they
    /// follow). Subscribed once, when the hub is given the relay.
    fn interest(&self) -> broadcast::Receiver<String>;

    /// Appends messages of a run of this node for its followers elsewhere, after those
    /// appended before for the same id. Called with the hub's lock held, for every line
    /// of a followed run: queues them and returns, without waiting for I/O.
    fn append(&self, id: &str, messages: Vec<LogMessage>);

    /// Follows a run on another node: asks for it (again while the stream is polled) and
    /// yields its lines from the first, then its end. Called when a follower here
    /// subscribes to an execution not running here; dropped when nobody here follows it
    /// any more.
    fn follow(&self, id: &str) -> BoxStream<'static, LogMessage>;

    /// The state of its connection pools, from memory (no I/O).
    fn pools(&self) -> Vec<PoolState> {
        Vec::new()
    }
}
