//! The distributed deployment's queue: a Redis stream read through one consumer group
//! shared by every node, and a sorted set of delayed ids. Owns the Redis keys under its
//! prefix and nothing else; it must not know what an execution is beyond its id.
//!
//! Keys: `{prefix}:executions` (stream, one entry per offer, field `id`; entries are
//! deleted once acknowledged, so the stream only holds undelivered and in-flight work)
//! and `{prefix}:delayed` (sorted set, score = due time in ms). The group is `workers`;
//! each node reads as the consumer named by its node id.
//!
//! Delivery is at least once: an entry delivered to a node that dies before
//! acknowledging it stays pending in the group, and any node's `pop` takes it over
//! (`XAUTOCLAIM`) once it has been idle for a whole lease. The database's conditional
//! claim makes a second delivery harmless.
//!
//! Delayed ids are moved to the stream by a Lua script (atomic, so two nodes never move
//! the same id twice) run from `pop` at most every [`PROMOTE_EVERY`], not from a
//! background task: every node runs workers that pop, so the promotion happens exactly
//! where it is needed, with no task to own or stop, and a node whose workers are stopped
//! does no Redis work. The script returns the next due time, and `pop` never blocks
//! past it, so a retry whose due time this node knows (the node that failed an
//! execution schedules its retry) is promoted within [`PROMOTE_EVERY`] of it; one
//! scheduled by another node waits at most one `pop` wait longer.
//!
//! Losing the stream or the group (Redis restarted without persistence, `FLUSHALL`) is
//! repaired on the spot: a `NOGROUP` reply recreates both and the command is retried.
//! Ids lost with them are offered again by the reconciler, since the database is the
//! truth.

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use deadpool_redis::redis::{self, AsyncConnectionConfig, RedisError, Value};

use super::redis_pool::{Connection, Connections, Pool, lend};
use super::{Delivery, Queue, QueueError};
use crate::domain::{Millis, now_millis};

/// The consumer group every node reads through.
const GROUP: &str = "workers";
/// The stream entry field that carries the execution id.
const ID_FIELD: &str = "id";
/// Ids sent per pipeline by `push`: large enough that a bulk trigger costs a few round
/// trips, small enough that one pipeline never comes near the response timeout.
const PUSH_CHUNK: usize = 1_000;
/// How often `pop` moves due delayed ids to the stream.
const PROMOTE_EVERY: Duration = Duration::from_millis(100);
/// Most delayed ids one script run moves: the script blocks Redis while it runs.
const PROMOTE_BATCH: usize = 1_000;
/// The longest `pop` goes without looking for entries a dead node left pending. They
/// become reclaimable only after a whole lease of idleness, so looking much more often
/// gains nothing and costs a round trip per pop.
const RECLAIM_EVERY: Duration = Duration::from_secs(1);
/// How long a connection attempt may take: a worker must learn quickly that Redis is
/// down instead of hanging.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a non-blocking command (or pipeline) may take before it counts as failed.
pub(super) const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How much longer than its own block time a blocking read may take before its
/// connection is presumed dead.
const READ_GRACE: Duration = Duration::from_secs(2);
/// Connections for non-blocking commands. Each is multiplexed, so this bounds
/// concurrency, not throughput.
const COMMAND_POOL: usize = 16;
/// Connections for blocking reads: one per concurrent `pop`.
const BLOCKING_POOL: usize = 8;

/// Moves due delayed ids to the stream. KEYS: delayed set, stream. ARGV: now (ms), most
/// ids to move. Returns how many it moved and the next due time ('' if none).
const PROMOTE_SCRIPT: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 'id', id)
  redis.call('ZREM', KEYS[1], id)
end
local next = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {#due, next[2] or ''}
";

/// Where and as whom a node uses the Redis queue.
#[derive(Clone)]
pub(crate) struct RedisQueueConfig {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// Prefix of every key; one deployment, one prefix.
    pub key_prefix: String,
    /// This node's consumer name in the group.
    pub node_id: String,
    /// How long a delivered entry may stay unacknowledged before another node takes it
    /// over.
    pub lease: Duration,
}

impl fmt::Debug for RedisQueueConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password.
        f.debug_struct("RedisQueueConfig")
            .field("key_prefix", &self.key_prefix)
            .field("node_id", &self.node_id)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

pub(crate) struct RedisQueue {
    /// Non-blocking commands.
    commands: Pool,
    /// Blocking reads, so a read waiting for work never holds up a push or an ack.
    blocking: Pool,
    stream: String,
    delayed: String,
    node_id: String,
    lease: Duration,
    promote: redis::Script,
    timers: Mutex<Timers>,
    /// Groups this node recreated after having read through one: each is a backlog
    /// Redis lost.
    losses: AtomicU64,
    /// Whether this node has read through the group (or created it).
    group_seen: AtomicBool,
}

impl fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisQueue")
            .field("stream", &self.stream)
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

/// When `pop` last did its periodic work, and what it learned.
#[derive(Debug)]
struct Timers {
    last_promotion: Option<Instant>,
    /// The last promotion hit its batch limit: more ids are due now.
    more_due: bool,
    /// The earliest due time of a delayed id this node knows of.
    next_due: Option<Millis>,
    last_reclaim: Option<Instant>,
    /// The last reclaim filled a whole batch: more entries are probably abandoned.
    more_abandoned: bool,
    /// Where the next `XAUTOCLAIM` scan of the pending entries continues.
    reclaim_cursor: String,
}

impl Timers {
    fn promotion_due(&self, now: Instant) -> bool {
        self.more_due
            || self
                .last_promotion
                .is_none_or(|last| now.duration_since(last) >= PROMOTE_EVERY)
    }

    fn reclaim_due(&self, now: Instant, every: Duration) -> bool {
        self.more_abandoned
            || self
                .last_reclaim
                .is_none_or(|last| now.duration_since(last) >= every)
    }

    /// When `pop` must stop blocking to do its periodic work.
    fn wake_at(&self, every: Duration) -> Option<Instant> {
        let reclaim = self.last_reclaim.map(|last| last + every);
        let promotion = self.next_due.map(|due| {
            let at = Instant::now() + Duration::from_millis((due - now_millis()).max(0) as u64);
            self.last_promotion
                .map_or(at, |last| at.max(last + PROMOTE_EVERY))
        });
        match (reclaim, promotion) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl RedisQueue {
    /// Prepares the connection pools; connects lazily, so a Redis that is down now makes
    /// calls fail with [`QueueError::Unavailable`] until it is back, not this.
    pub(crate) fn new(config: RedisQueueConfig) -> Result<Self, QueueError> {
        let commands = pool(
            &config.url,
            COMMAND_POOL,
            AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(COMMAND_TIMEOUT)),
        )?;
        // Blocking reads have their own deadline (block time + grace).
        let blocking = pool(
            &config.url,
            BLOCKING_POOL,
            AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(None),
        )?;
        let prefix = &config.key_prefix;
        Ok(Self {
            commands,
            blocking,
            stream: format!("{prefix}:executions"),
            delayed: format!("{prefix}:delayed"),
            node_id: config.node_id,
            lease: config.lease,
            promote: redis::Script::new(PROMOTE_SCRIPT),
            timers: Mutex::new(Timers {
                last_promotion: None,
                more_due: false,
                next_due: None,
                last_reclaim: None,
                more_abandoned: false,
                reclaim_cursor: "0-0".to_owned(),
            }),
            losses: AtomicU64::new(0),
            group_seen: AtomicBool::new(false),
        })
    }

    fn timers(&self) -> std::sync::MutexGuard<'_, Timers> {
        self.timers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reclaim_every(&self) -> Duration {
        (self.lease / 4).min(RECLAIM_EVERY)
    }

    async fn command_connection(&self) -> Result<Connection, QueueError> {
        lend(&self.commands).await.map_err(unavailable)
    }

    /// Creates the group (and the stream) after `NOGROUP`: first use, or Redis lost them.
    async fn create_group(&self, conn: &mut Connection) -> Result<(), QueueError> {
        tracing::info!(stream = %self.stream, group = GROUP, "creating the queue's consumer group");
        // From the start of the stream: entries added since the loss (delayed ids
        // promoted, pushes) must be delivered too.
        let created: Result<(), RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(conn)
            .await;
        match created {
            Err(err) if err.code() != Some("BUSYGROUP") => Err(unavailable(err)),
            Err(_) => Ok(()),
            Ok(()) => {
                // A group this node had already read through is a lost backlog; the
                // first one of a new deployment is not.
                if self.group_seen.swap(true, Ordering::Relaxed) {
                    self.losses.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
        }
    }

    /// Moves due delayed ids to the stream and learns when the next one is due.
    async fn promote_due(&self) -> Result<(), QueueError> {
        let mut conn = self.command_connection().await?;
        let (moved, next): (usize, String) = self
            .promote
            .key(&self.delayed)
            .key(&self.stream)
            .arg(now_millis())
            .arg(PROMOTE_BATCH)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let mut timers = self.timers();
        timers.last_promotion = Some(Instant::now());
        timers.more_due = moved >= PROMOTE_BATCH;
        timers.next_due = next.parse::<f64>().ok().map(|due| due as Millis);
        Ok(())
    }

    /// Takes over entries delivered to any consumer and idle for longer than the lease.
    async fn reclaim(&self, max: usize) -> Result<Vec<Delivery>, QueueError> {
        let cursor = self.timers().reclaim_cursor.clone();
        let mut conn = self.command_connection().await?;
        let mut command = redis::cmd("XAUTOCLAIM");
        command
            .arg(&self.stream)
            .arg(GROUP)
            .arg(&self.node_id)
            .arg(self.lease.as_millis() as u64)
            .arg(&cursor)
            .arg("COUNT")
            .arg(max);
        let reply: Value = match command.query_async(&mut conn).await {
            Ok(reply) => reply,
            Err(err) if is_nogroup(&err) => {
                self.create_group(&mut conn).await?;
                Value::Nil
            }
            Err(err) => return Err(unavailable(err)),
        };
        let (next_cursor, claimed) = match reply {
            Value::Array(parts) => {
                let mut parts = parts.into_iter();
                let next_cursor = parts
                    .next()
                    .as_ref()
                    .and_then(text)
                    .unwrap_or("0-0")
                    .to_owned();
                (next_cursor, parts.next().map(entries).unwrap_or_default())
            }
            _ => ("0-0".to_owned(), Vec::new()),
        };
        {
            let mut timers = self.timers();
            timers.last_reclaim = Some(Instant::now());
            timers.more_abandoned = claimed.len() >= max;
            timers.reclaim_cursor = next_cursor;
        }
        if !claimed.is_empty() {
            tracing::info!(
                count = claimed.len(),
                "took over queue entries a node left unacknowledged"
            );
        }
        self.deliveries(claimed).await
    }

    /// Reads new entries for this consumer, blocking up to `block` if there are none.
    async fn read_new(&self, max: usize, block: Duration) -> Result<Vec<Delivery>, QueueError> {
        let mut command = redis::cmd("XREADGROUP");
        command
            .arg("GROUP")
            .arg(GROUP)
            .arg(&self.node_id)
            .arg("COUNT")
            .arg(max);
        let block_ms = block.as_millis() as u64;
        if block_ms > 0 {
            command.arg("BLOCK").arg(block_ms);
        }
        command.arg("STREAMS").arg(&self.stream).arg(">");
        let mut read = BlockingRead::new(lend(&self.blocking).await.map_err(unavailable)?);
        let reply = match read.query(&command, block + READ_GRACE).await {
            Err(ReadError::Redis(err)) if is_nogroup(&err) => {
                let mut conn = self.command_connection().await?;
                self.create_group(&mut conn).await?;
                read.query(&command, block + READ_GRACE).await
            }
            other => other,
        };
        if reply.is_ok() {
            self.group_seen.store(true, Ordering::Relaxed);
        }
        let reply = reply.map_err(|err| match err {
            ReadError::Redis(err) => unavailable(err),
            ReadError::TimedOut => QueueError::Unavailable(format!(
                "no answer to a {block_ms} ms blocking read within {READ_GRACE:?} of its end"
            )),
        })?;
        self.deliveries(read_reply(reply)).await
    }

    /// Turns stream entries into deliveries. An entry without an id cannot be run by
    /// anyone; it is acknowledged and dropped so it is not reclaimed forever.
    async fn deliveries(&self, entries: Vec<Entry>) -> Result<Vec<Delivery>, QueueError> {
        let mut deliveries = Vec::with_capacity(entries.len());
        let mut malformed = Vec::new();
        for entry in entries {
            match entry.text(ID_FIELD) {
                Some(id) => deliveries.push(Delivery {
                    id: id.to_owned(),
                    receipt: entry.id,
                }),
                None => {
                    tracing::warn!(entry = %entry.id, stream = %self.stream, "dropping a queue entry without an execution id");
                    malformed.push(Delivery {
                        id: String::new(),
                        receipt: entry.id,
                    });
                }
            }
        }
        if !malformed.is_empty() {
            self.ack(&malformed).await?;
        }
        Ok(deliveries)
    }
}

pub(super) fn pool(
    url: &str,
    size: usize,
    config: AsyncConnectionConfig,
) -> Result<Pool, QueueError> {
    let manager = Connections::new(url, config)
        .map_err(|err| QueueError::Config(format!("Redis URL: {err}")))?;
    Pool::builder(manager)
        .max_size(size)
        .runtime(deadpool::Runtime::Tokio1)
        .wait_timeout(Some(COMMAND_TIMEOUT))
        .create_timeout(Some(CONNECT_TIMEOUT + Duration::from_millis(500)))
        .recycle_timeout(Some(COMMAND_TIMEOUT))
        .build()
        .map_err(|err| QueueError::Config(err.to_string()))
}

pub(super) fn unavailable(err: impl fmt::Display) -> QueueError {
    QueueError::Unavailable(format!("Redis: {err}"))
}

fn is_nogroup(err: &RedisError) -> bool {
    err.code() == Some("NOGROUP")
}

#[async_trait::async_trait]
impl Queue for RedisQueue {
    async fn push(&self, ids: &[String]) -> Result<(), QueueError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.command_connection().await?;
        for chunk in ids.chunks(PUSH_CHUNK) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.cmd("XADD")
                    .arg(&self.stream)
                    .arg("*")
                    .arg(ID_FIELD)
                    .arg(id)
                    .ignore();
            }
            pipe.query_async::<()>(&mut conn)
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    async fn push_delayed(&self, id: &str, due: Millis) -> Result<(), QueueError> {
        if due <= now_millis() {
            return self.push(&[id.to_owned()]).await;
        }
        let mut conn = self.command_connection().await?;
        redis::cmd("ZADD")
            .arg(&self.delayed)
            .arg(due)
            .arg(id)
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)?;
        let mut timers = self.timers();
        timers.next_due = Some(timers.next_due.map_or(due, |next| next.min(due)));
        Ok(())
    }

    async fn pop(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        let max = max.max(1);
        let deadline = Instant::now() + wait;
        let reclaim_every = self.reclaim_every();
        loop {
            let now = Instant::now();
            let (promote, reclaim) = {
                let timers = self.timers();
                (
                    timers.promotion_due(now),
                    timers.reclaim_due(now, reclaim_every),
                )
            };
            if promote {
                self.promote_due().await?;
            }
            if reclaim {
                let reclaimed = self.reclaim(max).await?;
                if !reclaimed.is_empty() {
                    return Ok(reclaimed);
                }
            }
            let wake = self
                .timers()
                .wake_at(reclaim_every)
                .map_or(deadline, |at| at.min(deadline));
            let deliveries = self
                .read_new(max, wake.saturating_duration_since(Instant::now()))
                .await?;
            if !deliveries.is_empty() || Instant::now() >= deadline {
                return Ok(deliveries);
            }
        }
    }

    async fn ack(&self, deliveries: &[Delivery]) -> Result<(), QueueError> {
        let receipts: Vec<&str> = deliveries
            .iter()
            .map(|d| d.receipt.as_str())
            .filter(|r| !r.is_empty())
            .collect();
        if receipts.is_empty() {
            return Ok(());
        }
        let mut conn = self.command_connection().await?;
        // Deleted as well as acknowledged: the stream must not grow with done work.
        redis::pipe()
            .cmd("XACK")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(&receipts)
            .ignore()
            .cmd("XDEL")
            .arg(&self.stream)
            .arg(&receipts)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn ping(&self) -> Result<(), QueueError> {
        let mut conn = self.command_connection().await?;
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)
    }

    fn losses(&self) -> u64 {
        self.losses.load(Ordering::Relaxed)
    }

    fn pools(&self) -> Vec<crate::domain::PoolState> {
        vec![
            super::redis_pool::state("queue-commands", &self.commands),
            super::redis_pool::state("queue-blocking", &self.blocking),
        ]
    }
}

enum ReadError {
    Redis(RedisError),
    TimedOut,
}

/// A pooled connection used for a blocking read. If the read does not finish (it timed
/// out, failed, or the caller stopped waiting), the server may still hold the blocked
/// command and would deliver entries to it that nobody reads, and the connection would
/// answer its next user late: so the connection is closed instead of returned to the
/// pool.
struct BlockingRead {
    conn: Option<Connection>,
    clean: bool,
}

impl BlockingRead {
    fn new(conn: Connection) -> Self {
        Self {
            conn: Some(conn),
            clean: true,
        }
    }

    async fn query(&mut self, command: &redis::Cmd, within: Duration) -> Result<Value, ReadError> {
        let conn = self
            .conn
            .as_mut()
            .expect("the connection is kept until drop");
        self.clean = false;
        let result = tokio::time::timeout(within, command.query_async::<Value>(conn)).await;
        match result {
            Ok(Ok(value)) => {
                self.clean = true;
                Ok(value)
            }
            // A reply, even an error one, leaves the connection in step.
            Ok(Err(err)) if err.code().is_some() => {
                self.clean = true;
                Err(ReadError::Redis(err))
            }
            Ok(Err(err)) => Err(ReadError::Redis(err)),
            Err(_) => Err(ReadError::TimedOut),
        }
    }
}

impl Drop for BlockingRead {
    fn drop(&mut self) {
        if !self.clean
            && let Some(conn) = self.conn.take()
        {
            Connection::discard(conn);
        }
    }
}

/// One stream entry: its id and its fields.
#[derive(Debug)]
pub(super) struct Entry {
    pub id: String,
    pub fields: Vec<(String, Value)>,
}

impl Entry {
    pub(super) fn text(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(field, _)| field == name)
            .and_then(|(_, value)| text(value))
    }
}

pub(super) fn text(value: &Value) -> Option<&str> {
    match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
        Value::SimpleString(text) => Some(text),
        _ => None,
    }
}

/// The entries of an `XREAD`/`XREADGROUP` reply (none if it timed out).
pub(super) fn read_reply(reply: Value) -> Vec<Entry> {
    let lists: Vec<Value> = match reply {
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|stream| match stream {
                Value::Array(mut pair) if pair.len() == 2 => pair.pop(),
                _ => None,
            })
            .collect(),
        Value::Map(streams) => streams.into_iter().map(|(_, list)| list).collect(),
        _ => Vec::new(),
    };
    lists.into_iter().flat_map(entries).collect()
}

/// A list of entries as `XRANGE`, `XAUTOCLAIM` and the reads return it.
pub(super) fn entries(list: Value) -> Vec<Entry> {
    let Value::Array(items) = list else {
        return Vec::new();
    };
    items.into_iter().filter_map(entry).collect()
}

fn entry(item: Value) -> Option<Entry> {
    let Value::Array(parts) = item else {
        return None;
    };
    let mut parts = parts.into_iter();
    let id = text(&parts.next()?)?.to_owned();
    let fields = match parts.next()? {
        Value::Array(flat) => {
            let mut fields = Vec::with_capacity(flat.len() / 2);
            let mut flat = flat.into_iter();
            while let (Some(name), Some(value)) = (flat.next(), flat.next()) {
                if let Some(name) = text(&name) {
                    fields.push((name.to_owned(), value));
                }
            }
            fields
        }
        Value::Map(pairs) => pairs
            .into_iter()
            .filter_map(|(name, value)| Some((text(&name)?.to_owned(), value)))
            .collect(),
        _ => Vec::new(),
    };
    Some(Entry { id, fields })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;

    use super::*;
    use crate::queue::testing::{Proxy, TestPrefix};

    fn queue(redis: &TestPrefix, node: &str, lease: Duration) -> RedisQueue {
        queue_at(&redis.url, &redis.prefix, node, lease)
    }

    fn queue_at(url: &str, prefix: &str, node: &str, lease: Duration) -> RedisQueue {
        RedisQueue::new(RedisQueueConfig {
            url: url.to_owned(),
            key_prefix: prefix.to_owned(),
            node_id: node.to_owned(),
            lease,
        })
        .expect("a valid configuration")
    }

    fn ids(deliveries: &[Delivery]) -> Vec<&str> {
        deliveries.iter().map(|d| d.id.as_str()).collect()
    }

    fn strings(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|id| (*id).to_owned()).collect()
    }

    fn count(redis: &TestPrefix, command: &str, key: &str) -> u64 {
        redis::cmd(command)
            .arg(format!("{}:{key}", redis.prefix))
            .query(&mut redis.connection())
            .expect("a count")
    }

    const LEASE: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn pushed_ids_are_delivered_in_order_and_gone_once_acknowledged() {
        let redis = TestPrefix::new();
        let queue = queue(&redis, "node-a", LEASE);
        queue.push(&strings(&["a", "b", "c"])).await.unwrap();
        let got = queue.pop(10, Duration::from_secs(1)).await.unwrap();
        assert_eq!(ids(&got), ["a", "b", "c"]);
        assert!(got.iter().all(|d| !d.receipt.is_empty()));
        queue.ack(&got).await.unwrap();
        assert!(
            queue
                .pop(10, Duration::from_millis(50))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            count(&redis, "XLEN", "executions"),
            0,
            "acknowledged entries are deleted"
        );
        queue.ping().await.unwrap();
    }

    #[tokio::test]
    async fn pop_takes_at_most_max_and_a_waiting_pop_wakes_on_push() {
        let redis = TestPrefix::new();
        let queue = Arc::new(queue(&redis, "node-a", LEASE));
        queue.push(&strings(&["a", "b", "c"])).await.unwrap();
        let first = queue.pop(2, Duration::ZERO).await.unwrap();
        assert_eq!(ids(&first), ["a", "b"]);
        let second = queue.pop(2, Duration::ZERO).await.unwrap();
        assert_eq!(ids(&second), ["c"]);
        queue.ack(&first).await.unwrap();
        queue.ack(&second).await.unwrap();

        let waiter = tokio::spawn({
            let queue = queue.clone();
            async move {
                let started = Instant::now();
                let got = queue.pop(1, Duration::from_secs(5)).await.unwrap();
                (got, started.elapsed())
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        queue.push(&strings(&["x"])).await.unwrap();
        let (got, waited) = waiter.await.unwrap();
        assert_eq!(ids(&got), ["x"]);
        assert!(waited < Duration::from_secs(2), "woke after {waited:?}");
        queue.ack(&got).await.unwrap();
    }

    #[tokio::test]
    async fn a_delivery_not_acknowledged_is_taken_over_by_another_node_after_the_lease() {
        let redis = TestPrefix::new();
        let lease = Duration::from_millis(300);
        let crashed = queue(&redis, "node-a", lease);
        let survivor = queue(&redis, "node-b", lease);
        crashed.push(&strings(&["x"])).await.unwrap();
        let lost = crashed.pop(1, Duration::from_secs(1)).await.unwrap();
        assert_eq!(ids(&lost), ["x"]);

        assert!(
            survivor
                .pop(10, Duration::from_millis(100))
                .await
                .unwrap()
                .is_empty(),
            "within its lease, a delivery belongs to its node"
        );
        tokio::time::sleep(lease).await;
        let taken = survivor.pop(10, Duration::from_secs(2)).await.unwrap();
        assert_eq!(taken, lost, "the same entry, taken over");
        survivor.ack(&taken).await.unwrap();

        tokio::time::sleep(lease + Duration::from_millis(100)).await;
        assert!(
            survivor
                .pop(10, Duration::from_millis(100))
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            crashed
                .pop(10, Duration::from_millis(100))
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn delayed_ids_are_delivered_only_when_due_on_any_node() {
        let redis = TestPrefix::new();
        let scheduler = queue(&redis, "node-a", LEASE);
        let other = queue(&redis, "node-b", LEASE);
        // `other` learns of the delayed set's next due time by looking at it.
        assert!(other.pop(1, Duration::ZERO).await.unwrap().is_empty());
        let due = now_millis() + 500;
        scheduler.push_delayed("later", due).await.unwrap();
        let mine = now_millis() + 400;
        scheduler.push_delayed("mine", mine).await.unwrap();

        assert!(
            scheduler
                .pop(10, Duration::from_millis(150))
                .await
                .unwrap()
                .is_empty()
        );
        let got = scheduler.pop(1, Duration::from_secs(3)).await.unwrap();
        assert_eq!(ids(&got), ["mine"]);
        let late = now_millis() - mine;
        assert!((0..300).contains(&late), "delivered {late} ms after due");
        scheduler.ack(&got).await.unwrap();

        let got = other.pop(1, Duration::from_secs(3)).await.unwrap();
        assert_eq!(ids(&got), ["later"]);
        assert!(now_millis() >= due);
        other.ack(&got).await.unwrap();
        assert_eq!(count(&redis, "ZCARD", "delayed"), 0);
    }

    #[tokio::test]
    async fn the_queue_recreates_its_stream_and_group_when_redis_loses_them() {
        let redis = TestPrefix::new();
        let queue = queue(&redis, "node-a", LEASE);
        queue.push(&strings(&["before"])).await.unwrap();
        let got = queue.pop(10, Duration::from_secs(1)).await.unwrap();
        assert_eq!(ids(&got), ["before"]);
        queue.ack(&got).await.unwrap();
        assert_eq!(
            queue.losses(),
            0,
            "creating the group at first use loses nothing"
        );

        // Lost between a push and a pop: the push recreates the stream, the pop the group.
        redis.delete(&["executions", "delayed"]);
        queue.push(&strings(&["after push"])).await.unwrap();
        let got = queue.pop(10, Duration::from_secs(1)).await.unwrap();
        assert_eq!(ids(&got), ["after push"]);
        queue.ack(&got).await.unwrap();
        assert_eq!(queue.losses(), 1, "the reconciler learns of the loss");

        // Lost while idle: the next pop recreates both.
        redis.delete(&["executions"]);
        assert!(
            queue
                .pop(10, Duration::from_millis(50))
                .await
                .unwrap()
                .is_empty()
        );
        queue.push(&strings(&["after pop"])).await.unwrap();
        queue
            .push_delayed("delayed after", now_millis() + 100)
            .await
            .unwrap();
        let mut got = queue.pop(10, Duration::from_secs(1)).await.unwrap();
        queue.ack(&got).await.unwrap();
        if got.len() < 2 {
            let more = queue.pop(10, Duration::from_secs(2)).await.unwrap();
            queue.ack(&more).await.unwrap();
            got.extend(more);
        }
        assert_eq!(ids(&got), ["after pop", "delayed after"]);
    }

    #[tokio::test]
    async fn two_nodes_never_hold_the_same_id_at_once() {
        let redis = TestPrefix::new();
        let nodes = [
            Arc::new(queue(&redis, "node-a", LEASE)),
            Arc::new(queue(&redis, "node-b", LEASE)),
        ];
        let pushed: Vec<String> = (0..2_000).map(|n| format!("id-{n}")).collect();
        nodes[0].push(&pushed).await.unwrap();
        let mut consumers = Vec::new();
        for node in &nodes {
            let node = node.clone();
            consumers.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                loop {
                    let got = node.pop(50, Duration::from_millis(200)).await.unwrap();
                    if got.is_empty() {
                        return seen;
                    }
                    // Holding them a moment lets the other node read meanwhile.
                    tokio::task::yield_now().await;
                    node.ack(&got).await.unwrap();
                    seen.extend(got.into_iter().map(|d| d.id));
                }
            }));
        }
        let mut all = Vec::new();
        for consumer in consumers {
            all.extend(consumer.await.unwrap());
        }
        let distinct: HashSet<&String> = all.iter().collect();
        assert_eq!(distinct.len(), all.len(), "an id was delivered twice");
        assert_eq!(distinct, pushed.iter().collect());
    }

    #[tokio::test]
    async fn an_unreachable_redis_fails_quickly_as_unavailable() {
        // Port 1: nothing listens there.
        let queue = queue_at(
            "redis://127.0.0.1:1",
            "runcell-test:closed",
            "node-a",
            LEASE,
        );
        let started = Instant::now();
        let results = [
            queue.push(&strings(&["x"])).await,
            queue.push_delayed("x", now_millis() + 1_000).await,
            queue.pop(10, Duration::from_secs(5)).await.map(|_| ()),
            queue.ping().await,
        ];
        for result in results {
            assert!(
                matches!(result, Err(QueueError::Unavailable(_))),
                "{result:?}"
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_malformed_url_is_a_configuration_error() {
        let result = RedisQueue::new(RedisQueueConfig {
            url: "http://not-redis".into(),
            key_prefix: "p".into(),
            node_id: "n".into(),
            lease: LEASE,
        });
        assert!(matches!(result, Err(QueueError::Config(_))));
    }

    #[tokio::test]
    async fn the_queue_works_again_once_redis_is_back() {
        let redis = TestPrefix::new();
        let mut proxy = Proxy::start().await;
        let queue = queue_at(&proxy.url(), &redis.prefix, "node-a", LEASE);
        queue.push(&strings(&["one"])).await.unwrap();
        let got = queue.pop(10, Duration::from_secs(1)).await.unwrap();
        queue.ack(&got).await.unwrap();

        proxy.stop().await;
        let started = Instant::now();
        let down = queue.pop(10, Duration::from_secs(5)).await;
        assert!(matches!(down, Err(QueueError::Unavailable(_))), "{down:?}");
        assert!(queue.ping().await.is_err());
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );

        proxy.restart().await;
        queue.push(&strings(&["two"])).await.unwrap();
        let got = queue.pop(10, Duration::from_secs(1)).await.unwrap();
        assert_eq!(ids(&got), ["two"]);
        queue.ack(&got).await.unwrap();
    }

    /// The queue's share of an execution's cost: ids pushed in bulk, then popped and
    /// acknowledged in worker-sized batches by two nodes at once.
    /// `cargo test --release -p runcell --lib queue::redis -- --ignored --nocapture`
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement, not a check"]
    async fn throughput_of_push_pop_and_ack() {
        const IDS: usize = 100_000;
        const BATCH: usize = 128;
        let redis = TestPrefix::new();
        let nodes = [
            Arc::new(queue(&redis, "node-a", LEASE)),
            Arc::new(queue(&redis, "node-b", LEASE)),
        ];
        let ids: Vec<String> = (0..IDS).map(|_| crate::domain::new_id()).collect();
        let started = Instant::now();
        let producer = tokio::spawn({
            let node = nodes[0].clone();
            async move {
                for chunk in ids.chunks(10_000) {
                    node.push(chunk).await.unwrap();
                }
            }
        });
        let mut consumers = Vec::new();
        for node in &nodes {
            let node = node.clone();
            consumers.push(tokio::spawn(async move {
                let mut done = 0;
                loop {
                    let got = node.pop(BATCH, Duration::from_millis(200)).await.unwrap();
                    if got.is_empty() {
                        return done;
                    }
                    node.ack(&got).await.unwrap();
                    done += got.len();
                }
            }));
        }
        producer.await.unwrap();
        let mut done = 0;
        for consumer in consumers {
            done += consumer.await.unwrap();
        }
        // The consumers stop after one empty 200 ms wait.
        let elapsed = started.elapsed().saturating_sub(Duration::from_millis(200));
        assert_eq!(done, IDS);
        println!(
            "{IDS} ids pushed, popped ({BATCH} at a time, 2 nodes) and acknowledged in {elapsed:?}: {:.0} ids/s",
            IDS as f64 / elapsed.as_secs_f64()
        );
    }
}
