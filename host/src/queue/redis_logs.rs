//! Live log lines between nodes through Redis: the [`LogRelay`] of the distributed
//! deployment. Owns the `{prefix}:logs:{id}` streams and the `{prefix}:logs:follow`
//! channel; it must not decide who follows what (the log hub of the services does) and
//! must never hold up a run.
//!
//! A follower of execution X on node B publishes `B\nX` on the follow channel, which every
//! node subscribes to once, and repeats it every `announce_every` while it follows. A node
//! remembers each request for three periods, so one that starts X later still sees it.
//! The node running X then appends X's backlog, its new lines and its end to the stream
//! `{prefix}:logs:X`, and B reads that stream from its first entry: backlog and live
//! lines in one order, whenever B started reading. Each stream is capped and expires
//! [`STREAM_TTL`] after its last write. A run nobody follows writes nothing.
//!
//! Lines are best effort: if Redis fails, followers miss live lines, and get them from
//! the store when the run ends.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_redis::redis::{self, AsyncConnectionConfig, Value, aio::MultiplexedConnection};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::redis::{Entry, read_reply, unavailable};
use super::redis_pool::{Pool, lend};
use super::{LogRelay, QueueError};
use crate::domain::{ExecutionStatus, LogEntry, LogLevel, LogMessage};

/// How often a follower repeats its request by default.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(2);
/// How long a log stream outlives its last write: long enough for a follower that
/// arrives just after the end to read it, short enough not to keep logs in Redis (the
/// store has them).
const STREAM_TTL: Duration = Duration::from_secs(600);
/// Entries kept per stream: the most lines a run may keep (the ceiling of
/// `max_log_lines`) plus its end. Guards Redis memory if a bug relays a run twice.
const MAX_STREAM_ENTRIES: usize = 100_001;
/// Messages written per pipeline.
const WRITE_BATCH: usize = 512;
/// Entries read per `XREAD`.
const READ_BATCH: usize = 1_000;
/// How long connecting or subscribing may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How much longer than its block time a read may take before its connection is
/// presumed dead.
const READ_GRACE: Duration = Duration::from_secs(2);
/// How long a reader or the subscriber waits after a Redis failure before trying again.
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// Requests remembered before stale ones are dropped.
const PRUNE_AT: usize = 1_024;

/// Where and as whom a node relays logs.
#[derive(Clone)]
pub(crate) struct RedisLogRelayConfig {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// Prefix of every key and channel; one deployment, one prefix.
    pub key_prefix: String,
    /// This node's name: its own requests are not answered by itself.
    pub node_id: String,
    /// How often a follower repeats its request; [`ANNOUNCE_EVERY`] unless testing.
    pub announce_every: Duration,
}

impl RedisLogRelayConfig {
    /// A configuration with the default request period.
    pub(crate) fn new(url: String, key_prefix: String, node_id: String) -> Self {
        Self {
            url,
            key_prefix,
            node_id,
            announce_every: ANNOUNCE_EVERY,
        }
    }
}

impl fmt::Debug for RedisLogRelayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password.
        f.debug_struct("RedisLogRelayConfig")
            .field("key_prefix", &self.key_prefix)
            .field("node_id", &self.node_id)
            .field("announce_every", &self.announce_every)
            .finish_non_exhaustive()
    }
}

pub(crate) struct RedisLogRelay {
    client: redis::Client,
    commands: Pool,
    key_prefix: String,
    follow_channel: String,
    node_id: String,
    announce_every: Duration,
    interest: Arc<Interest>,
    writer: mpsc::UnboundedSender<(String, Vec<LogMessage>)>,
    listener: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for RedisLogRelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLogRelay")
            .field("key_prefix", &self.key_prefix)
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl Drop for RedisLogRelay {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// Follow requests from other nodes.
struct Interest {
    node_id: String,
    /// Execution id → when it was last asked for.
    asked: Mutex<HashMap<String, Instant>>,
    /// How long a request counts.
    fresh_for: Duration,
    heard: broadcast::Sender<String>,
}

impl Interest {
    fn asked(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.asked.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn hear(&self, payload: &str) {
        let Some((node, id)) = payload.split_once('\n') else {
            return;
        };
        if node == self.node_id {
            return;
        }
        let now = Instant::now();
        {
            let mut asked = self.asked();
            if asked.len() >= PRUNE_AT {
                asked.retain(|_, at| now.duration_since(*at) < self.fresh_for);
            }
            asked.insert(id.to_owned(), now);
        }
        let _ = self.heard.send(id.to_owned());
    }

    fn is_fresh(&self, id: &str) -> bool {
        self.asked()
            .get(id)
            .is_some_and(|at| at.elapsed() < self.fresh_for)
    }
}

impl RedisLogRelay {
    /// Subscribes to the follow channel (and keeps subscribing after Redis failures) and
    /// starts the writer. Fails if Redis cannot be reached now. Must be called within a
    /// Tokio runtime.
    pub(crate) async fn connect(config: RedisLogRelayConfig) -> Result<Self, QueueError> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|err| QueueError::Config(format!("Redis URL: {err}")))?;
        let commands = super::redis::pool(
            &config.url,
            4,
            AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(super::redis::COMMAND_TIMEOUT)),
        )?;
        let follow_channel = format!("{}:logs:follow", config.key_prefix);
        let interest = Arc::new(Interest {
            node_id: config.node_id.clone(),
            asked: Mutex::default(),
            fresh_for: config.announce_every * 3,
            heard: broadcast::channel(1024).0,
        });
        let (ready, subscribed) = oneshot::channel();
        let listener = tokio::spawn(listen(
            client.clone(),
            follow_channel.clone(),
            interest.clone(),
            ready,
        ));
        match subscribed.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => return Err(err),
            Err(_) => return Err(QueueError::Unavailable("Redis: subscriber stopped".into())),
        }
        let (writer, queue) = mpsc::unbounded_channel();
        tokio::spawn(write(commands.clone(), config.key_prefix.clone(), queue));
        Ok(Self {
            client,
            commands,
            key_prefix: config.key_prefix,
            follow_channel,
            node_id: config.node_id,
            announce_every: config.announce_every,
            interest,
            writer,
            listener,
        })
    }
}

fn stream_key(prefix: &str, id: &str) -> String {
    format!("{prefix}:logs:{id}")
}

impl LogRelay for RedisLogRelay {
    fn followed_elsewhere(&self, id: &str) -> bool {
        self.interest.is_fresh(id)
    }

    fn interest(&self) -> broadcast::Receiver<String> {
        self.interest.heard.subscribe()
    }

    fn append(&self, id: &str, messages: Vec<LogMessage>) {
        if !messages.is_empty() {
            // Fails only once the writer is gone, with the relay.
            let _ = self.writer.send((id.to_owned(), messages));
        }
    }

    fn pools(&self) -> Vec<crate::domain::PoolState> {
        vec![super::redis_pool::state("logs", &self.commands)]
    }

    fn follow(&self, id: &str) -> BoxStream<'static, LogMessage> {
        let reader = Reader {
            client: self.client.clone(),
            commands: self.commands.clone(),
            key: stream_key(&self.key_prefix, id),
            follow_channel: self.follow_channel.clone(),
            request: format!("{}\n{id}", self.node_id),
            announce_every: self.announce_every,
            next_announce: Instant::now(),
            conn: None,
            last_id: "0-0".to_owned(),
            pending: VecDeque::new(),
            ended: false,
        };
        futures_util::stream::unfold(reader, |mut reader| async move {
            let message = reader.next().await?;
            Some((message, reader))
        })
        .boxed()
    }
}

/// Keeps this node subscribed to the follow channel. Reports the first attempt through
/// `ready`; after that, retries until aborted.
async fn listen(
    client: redis::Client,
    channel: String,
    interest: Arc<Interest>,
    ready: oneshot::Sender<Result<(), QueueError>>,
) {
    let mut ready = Some(ready);
    loop {
        let subscribed = async {
            let mut pubsub = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
                .await
                .map_err(|_| unavailable("no connection within the timeout"))?
                .map_err(unavailable)?;
            tokio::time::timeout(CONNECT_TIMEOUT, pubsub.subscribe(&channel))
                .await
                .map_err(|_| unavailable("no answer to SUBSCRIBE"))?
                .map_err(unavailable)?;
            Ok::<_, QueueError>(pubsub)
        }
        .await;
        match subscribed {
            Ok(pubsub) => {
                match ready.take() {
                    Some(ready) => {
                        let _ = ready.send(Ok(()));
                    }
                    None => tracing::info!("log relay subscribed again"),
                }
                let mut messages = pubsub.into_on_message();
                while let Some(message) = messages.next().await {
                    if let Ok(payload) = message.get_payload::<String>() {
                        interest.hear(&payload);
                    }
                }
                tracing::warn!(
                    "log relay lost its subscription; live logs of other nodes pause until it is back"
                );
            }
            Err(err) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Err(err));
                    return;
                }
                tracing::debug!(error = %err, "log relay could not subscribe; retrying");
            }
        }
        tokio::time::sleep(RETRY_DELAY).await;
    }
}

/// Appends queued messages to their streams, in order, a pipeline per batch. Ends when
/// the relay is dropped.
async fn write(
    pool: Pool,
    prefix: String,
    mut queue: mpsc::UnboundedReceiver<(String, Vec<LogMessage>)>,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    while queue.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        let mut pipe = redis::pipe();
        let mut keys: Vec<String> = Vec::new();
        for (id, messages) in batch.drain(..) {
            let key = stream_key(&prefix, &id);
            for message in &messages {
                let command = pipe
                    .cmd("XADD")
                    .arg(&key)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(MAX_STREAM_ENTRIES)
                    .arg("*");
                match message {
                    LogMessage::Line(entry) => {
                        command
                            .arg("seq")
                            .arg(entry.seq)
                            .arg("ts")
                            .arg(entry.ts_ms)
                            .arg("level")
                            .arg(entry.level.as_str())
                            .arg("msg")
                            .arg(&entry.message);
                        if !entry.fields.is_empty() {
                            command
                                .arg("fields")
                                .arg(serde_json::Value::Object(entry.fields.clone()).to_string());
                        }
                    }
                    LogMessage::End(status) => {
                        command.arg("end").arg(status.as_str());
                    }
                }
                command.ignore();
            }
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        for key in &keys {
            pipe.cmd("PEXPIRE")
                .arg(key)
                .arg(STREAM_TTL.as_millis() as u64)
                .ignore();
        }
        let written = async {
            let mut conn = lend(&pool).await.map_err(unavailable)?;
            pipe.query_async::<()>(&mut conn).await.map_err(unavailable)
        }
        .await;
        if let Err(err) = written {
            tracing::warn!(error = %err, streams = keys.len(), "could not relay live log lines; followers elsewhere get them from the store at the end");
        }
    }
}

/// Reads one execution's log stream for a follower here, asking for it periodically.
struct Reader {
    client: redis::Client,
    commands: Pool,
    key: String,
    follow_channel: String,
    /// The follow request: this node and the execution.
    request: String,
    announce_every: Duration,
    next_announce: Instant,
    /// Its own connection: a blocking read holds a connection for its whole wait.
    conn: Option<MultiplexedConnection>,
    /// The last entry read; the next read starts after it.
    last_id: String,
    pending: VecDeque<LogMessage>,
    ended: bool,
}

impl Reader {
    async fn next(&mut self) -> Option<LogMessage> {
        loop {
            if let Some(message) = self.pending.pop_front() {
                if matches!(message, LogMessage::End(_)) {
                    self.ended = true;
                    self.pending.clear();
                }
                return Some(message);
            }
            if self.ended {
                return None;
            }
            if Instant::now() >= self.next_announce {
                self.announce().await;
                self.next_announce = Instant::now() + self.announce_every;
            }
            let block = self
                .next_announce
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            match self.read(block).await {
                Ok(entries) => {
                    for entry in entries {
                        match decode(&entry) {
                            Some(message) => self.pending.push_back(message),
                            None => {
                                tracing::warn!(stream = %self.key, entry = %entry.id, "skipping a malformed relayed log entry");
                            }
                        }
                        self.last_id = entry.id;
                    }
                }
                Err(err) => {
                    tracing::debug!(error = %err, stream = %self.key, "could not read relayed log lines; retrying");
                    self.conn = None;
                    tokio::time::sleep(RETRY_DELAY).await;
                }
            }
        }
    }

    async fn announce(&self) {
        let published = async {
            let mut conn = lend(&self.commands).await.map_err(unavailable)?;
            redis::cmd("PUBLISH")
                .arg(&self.follow_channel)
                .arg(&self.request)
                .query_async::<()>(&mut conn)
                .await
                .map_err(unavailable)
        }
        .await;
        if let Err(err) = published {
            tracing::debug!(error = %err, "could not ask for relayed log lines; retrying");
        }
    }

    async fn read(&mut self, block: Duration) -> Result<Vec<Entry>, QueueError> {
        if self.conn.is_none() {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(None);
            self.conn = Some(
                self.client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map_err(unavailable)?,
            );
        }
        let conn = self.conn.as_mut().expect("connected above");
        let mut command = redis::cmd("XREAD");
        command
            .arg("COUNT")
            .arg(READ_BATCH)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.key)
            .arg(&self.last_id);
        let reply: Value = tokio::time::timeout(block + READ_GRACE, command.query_async(conn))
            .await
            .map_err(|_| unavailable("no answer to a blocking read"))?
            .map_err(unavailable)?;
        Ok(read_reply(reply))
    }
}

const LEVELS: [LogLevel; 5] = [
    LogLevel::Trace,
    LogLevel::Debug,
    LogLevel::Info,
    LogLevel::Warn,
    LogLevel::Error,
];

fn decode(entry: &Entry) -> Option<LogMessage> {
    if let Some(status) = entry.text("end") {
        return ExecutionStatus::parse(status).map(LogMessage::End);
    }
    let level = entry.text("level")?;
    let fields = match entry.text("fields") {
        Some(json) => serde_json::from_str(json).ok()?,
        None => serde_json::Map::new(),
    };
    Some(LogMessage::Line(LogEntry {
        seq: entry.text("seq")?.parse().ok()?,
        ts_ms: entry.text("ts")?.parse().ok()?,
        level: LEVELS.into_iter().find(|l| l.as_str() == level)?,
        message: entry.text("msg")?.to_owned(),
        fields,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::testing::TestPrefix;

    const WITHIN: Duration = Duration::from_secs(5);

    async fn relay(redis: &TestPrefix, node: &str) -> RedisLogRelay {
        RedisLogRelay::connect(RedisLogRelayConfig {
            url: redis.url.clone(),
            key_prefix: redis.prefix.clone(),
            node_id: node.to_owned(),
            announce_every: Duration::from_millis(200),
        })
        .await
        .expect("the test Redis server is reachable")
    }

    fn line(seq: u32, message: &str) -> LogEntry {
        let mut fields = serde_json::Map::new();
        if seq.is_multiple_of(2) {
            fields.insert("n".into(), seq.into());
        }
        LogEntry {
            seq,
            ts_ms: 1_700_000_000_000 + u64::from(seq),
            level: LogLevel::Warn,
            message: message.into(),
            fields,
        }
    }

    #[tokio::test]
    async fn a_relayed_stream_expires_after_its_last_write() {
        let redis = TestPrefix::new();
        let runner = relay(&redis, "node-a").await;
        let follower = relay(&redis, "node-b").await;
        runner.append("x", vec![LogMessage::Line(line(0, "one"))]);
        let mut followed = follower.follow("x");
        let first = tokio::time::timeout(WITHIN, followed.next())
            .await
            .expect("a message in time");
        assert_eq!(first, Some(LogMessage::Line(line(0, "one"))));
        let key = format!("{}:logs:x", redis.prefix);
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query(&mut redis.connection())
            .unwrap();
        assert!(ttl > 0 && ttl <= STREAM_TTL.as_millis() as i64, "ttl {ttl}");
    }

    #[tokio::test]
    async fn connecting_to_an_unreachable_redis_fails_quickly() {
        let started = Instant::now();
        let result = RedisLogRelay::connect(RedisLogRelayConfig::new(
            "redis://127.0.0.1:1".into(),
            "runcell-test:closed".into(),
            "node-a".into(),
        ))
        .await;
        assert!(
            matches!(result, Err(QueueError::Unavailable(_))),
            "{result:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn a_line_survives_the_wire_format() {
        for entry in [line(0, "with fields"), line(1, "without")] {
            let mut fields = vec![
                (
                    "seq".to_owned(),
                    Value::BulkString(entry.seq.to_string().into_bytes()),
                ),
                (
                    "ts".to_owned(),
                    Value::BulkString(entry.ts_ms.to_string().into_bytes()),
                ),
                ("level".to_owned(), Value::BulkString(b"warn".to_vec())),
                (
                    "msg".to_owned(),
                    Value::BulkString(entry.message.clone().into_bytes()),
                ),
            ];
            if !entry.fields.is_empty() {
                fields.push((
                    "fields".to_owned(),
                    Value::BulkString(
                        serde_json::Value::Object(entry.fields.clone())
                            .to_string()
                            .into_bytes(),
                    ),
                ));
            }
            let decoded = decode(&Entry {
                id: "1-0".into(),
                fields,
            });
            assert_eq!(decoded, Some(LogMessage::Line(entry)));
        }
    }
}
