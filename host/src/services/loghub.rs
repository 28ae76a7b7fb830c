//! Live logs of executions, for `logs?follow=true`, and their ends, for a run awaited with
//! `execute?wait=`. A follower that arrives mid-run gets the lines so far, then each new
//! one, then the end; a watcher gets the end. Owns only in-memory channels; it
//! must not touch the store (the follower reads the truth from there) nor know which
//! backend carries lines between nodes.
//!
//! Runs in this process publish straight to their channel. With a [`LogRelay`] (the
//! distributed deployment), a follower here of a run on another node gets its lines too:
//! subscribing to an execution not running here asks the relay to follow it, and the
//! relay's lines feed the same channel. In the other direction, a run here is appended to
//! the relay only while followers elsewhere keep asking for it: from its start, or from
//! the moment a request arrives (backlog first), until its end or until they stop asking.
//! A run nobody follows costs one lookup in memory when it starts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::sync::broadcast;

use crate::domain::{ExecutionStatus, LogEntry, LogMessage};
use crate::queue::LogRelay;
use crate::runtime::LogObserver;

/// Lines a slow follower may lag behind before it is told it missed some.
const FOLLOW_BUFFER: usize = 1024;

#[derive(Clone, Default)]
pub struct LogHub {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    channels: Mutex<HashMap<String, Channel>>,
    relay: Option<Arc<dyn LogRelay>>,
}

impl std::fmt::Debug for LogHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogHub")
            .field("relay", &self.inner.relay.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Channel {
    backlog: Vec<LogEntry>,
    /// Made when the first follower subscribes: most runs are never followed, and a
    /// channel of [`FOLLOW_BUFFER`] slots costs more to make and drop than a no-op run.
    sender: Option<broadcast::Sender<LogMessage>>,
    /// The run is in this process ([`LogHub::start`] was called).
    running: bool,
    /// The run's lines are appended to the relay for followers elsewhere.
    relayed: bool,
    /// The lowest `seq` a relayed line must have to be new: lines from the relay may
    /// repeat (a run restarted elsewhere, a follow resumed) and must not reach followers
    /// twice.
    next_seq: u32,
    /// Relays the run from another node while set; aborted when the channel goes.
    remote: Option<AbortOnDrop>,
}

impl Channel {
    fn new() -> Self {
        Self {
            backlog: Vec::new(),
            sender: None,
            running: false,
            relayed: false,
            next_seq: 0,
            remote: None,
        }
    }

    fn push(&mut self, entry: LogEntry) {
        self.next_seq = self.next_seq.max(entry.seq.saturating_add(1));
        match &self.sender {
            Some(sender) => {
                self.backlog.push(entry.clone());
                let _ = sender.send(LogMessage::Line(entry));
            }
            None => self.backlog.push(entry),
        }
    }

    /// Tells the followers, if any, that the run ended.
    fn end(&self, status: ExecutionStatus) {
        if let Some(sender) = &self.sender {
            let _ = sender.send(LogMessage::End(status));
        }
    }

    fn subscribe(&mut self) -> broadcast::Receiver<LogMessage> {
        self.sender
            .get_or_insert_with(|| broadcast::channel(FOLLOW_BUFFER).0)
            .subscribe()
    }

    fn followers(&self) -> usize {
        self.sender
            .as_ref()
            .map_or(0, broadcast::Sender::receiver_count)
    }
}

#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl LogHub {
    /// A hub that also relays lines between nodes through `relay`. Must be called within
    /// a Tokio runtime: it starts the task that answers other nodes' follow requests.
    pub fn with_relay(relay: Arc<dyn LogRelay>) -> Self {
        let mut interest = relay.interest();
        let hub = Self {
            inner: Arc::new(Inner {
                channels: Mutex::default(),
                relay: Some(relay),
            }),
        };
        let weak = Arc::downgrade(&hub.inner);
        tokio::spawn(async move {
            loop {
                let wanted = match interest.recv().await {
                    Ok(id) => Some(id),
                    // Some requests were missed: check every run here instead.
                    Err(broadcast::error::RecvError::Lagged(_)) => None,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let Some(hub) = Self::upgrade(&weak) else {
                    return;
                };
                hub.relay_if_running(wanted.as_deref());
            }
        });
        hub
    }

    fn upgrade(weak: &Weak<Inner>) -> Option<Self> {
        weak.upgrade().map(|inner| Self { inner })
    }

    fn channels(&self) -> std::sync::MutexGuard<'_, HashMap<String, Channel>> {
        self.inner
            .channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Called when an execution starts here; returns the observer its run reports to.
    pub fn start(&self, id: &str) -> LogObserver {
        {
            let relay = self.inner.relay.as_deref();
            let mut channels = self.channels();
            let channel = channels.entry(id.to_owned()).or_insert_with(Channel::new);
            channel.running = true;
            // Its lines come from here now.
            channel.remote = None;
            // Checked under the lock: a request arriving meanwhile either is seen here or
            // finds the channel running and relays it.
            if let Some(relay) = relay
                && !channel.relayed
                && relay.followed_elsewhere(id)
            {
                channel.relayed = true;
                relay.append(id, backlog_messages(&channel.backlog));
            }
        }
        let hub = self.clone();
        let id = id.to_owned();
        Arc::new(move |entry: &LogEntry| {
            if let Some(channel) = hub.channels().get_mut(&id) {
                if channel.relayed
                    && let Some(relay) = &hub.inner.relay
                {
                    if relay.followed_elsewhere(&id) {
                        relay.append(&id, vec![LogMessage::Line(entry.clone())]);
                    } else {
                        // Its followers left: stop paying for them. One that comes
                        // back gets the backlog again, and drops what it already had.
                        channel.relayed = false;
                    }
                }
                channel.push(entry.clone());
            }
        })
    }

    /// Called when an execution reached a final state.
    pub fn finish(&self, id: &str, status: ExecutionStatus) {
        if let Some(channel) = self.channels().remove(id) {
            if channel.relayed
                && let Some(relay) = &self.inner.relay
            {
                relay.append(id, vec![LogMessage::End(status)]);
            }
            channel.end(status);
        }
    }

    /// The lines so far and a receiver for the rest. A follower that subscribes before
    /// the run starts simply gets an empty backlog. With a relay, a run not in this
    /// process is followed through it, in case it runs (or will run) on another node.
    pub fn subscribe(&self, id: &str) -> (Vec<LogEntry>, broadcast::Receiver<LogMessage>) {
        let mut channels = self.channels();
        let channel = channels.entry(id.to_owned()).or_insert_with(Channel::new);
        if let Some(relay) = &self.inner.relay
            && !channel.running
            && channel.remote.is_none()
        {
            channel.remote = Some(self.follow_remote(id, relay.follow(id)));
        }
        (channel.backlog.clone(), channel.subscribe())
    }

    /// Watches execution `id` for its end, through the same channel as a follower (and,
    /// for a run elsewhere, the same relay). Read the execution after this, not before,
    /// so an end in between is not missed. Dropping the watch lets the channel go.
    pub fn watch(&self, id: &str) -> EndWatch {
        let (_, live) = self.subscribe(id);
        EndWatch {
            hub: self.clone(),
            id: id.to_owned(),
            live: Some(live),
        }
    }

    /// The state of the relay's connection pools; none without a relay.
    pub(crate) fn relay_pools(&self) -> Vec<crate::domain::PoolState> {
        self.inner
            .relay
            .as_ref()
            .map(|relay| relay.pools())
            .unwrap_or_default()
    }

    /// How many executions have a channel here (run, followed or watched); for tests.
    #[cfg(test)]
    pub(crate) fn channel_count(&self) -> usize {
        self.channels().len()
    }

    /// Drops a channel nobody runs or follows here (a follower gave up on a run that is
    /// queued or on another node).
    pub fn forget_if_idle(&self, id: &str) {
        let mut channels = self.channels();
        if channels
            .get(id)
            .is_some_and(|c| !c.running && c.followers() == 0)
        {
            channels.remove(id);
        }
    }

    /// Feeds a run on another node into its channel here until its end.
    fn follow_remote(&self, id: &str, mut remote: BoxStream<'static, LogMessage>) -> AbortOnDrop {
        let weak = Arc::downgrade(&self.inner);
        let id = id.to_owned();
        AbortOnDrop(tokio::spawn(async move {
            while let Some(message) = remote.next().await {
                let Some(hub) = Self::upgrade(&weak) else {
                    return;
                };
                let mut channels = hub.channels();
                let Some(channel) = channels.get_mut(&id) else {
                    return;
                };
                if channel.running {
                    // It moved here; its lines come from here now.
                    return;
                }
                match message {
                    LogMessage::Line(entry) => {
                        if entry.seq >= channel.next_seq {
                            channel.push(entry);
                        }
                    }
                    LogMessage::End(status) => {
                        // Dropping the channel aborts this very task, which returns
                        // before its next await anyway.
                        if let Some(channel) = channels.remove(&id) {
                            channel.end(status);
                        }
                        return;
                    }
                }
            }
        }))
    }

    /// Starts relaying a run of this process that a follower elsewhere asked for: `id`,
    /// or every run here the relay says is followed when requests were missed.
    fn relay_if_running(&self, id: Option<&str>) {
        let Some(relay) = &self.inner.relay else {
            return;
        };
        let mut channels = self.channels();
        let relay_one = |id: &str, channel: &mut Channel| {
            if channel.running && !channel.relayed {
                channel.relayed = true;
                relay.append(id, backlog_messages(&channel.backlog));
            }
        };
        match id {
            Some(id) => {
                if let Some(channel) = channels.get_mut(id) {
                    relay_one(id, channel);
                }
            }
            None => {
                for (id, channel) in channels.iter_mut() {
                    if relay.followed_elsewhere(id) {
                        relay_one(id, channel);
                    }
                }
            }
        }
    }
}

/// One execution watched for its end (see [`LogHub::watch`]). Dropped, it lets the
/// channel go unless others still use it: a waiter whose client went away leaves nothing
/// behind.
pub struct EndWatch {
    hub: LogHub,
    id: String,
    live: Option<broadcast::Receiver<LogMessage>>,
}

impl std::fmt::Debug for EndWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndWatch").field("id", &self.id).finish()
    }
}

impl EndWatch {
    /// Resolves with the status the run ended in, as soon as this process hears of it.
    /// Never resolves once the channel closed without an end: then only the store knows.
    /// Cancel-safe, so it can sit in a `select!` loop.
    pub async fn ended(&mut self) -> ExecutionStatus {
        while let Some(live) = &mut self.live {
            match live.recv().await {
                Ok(LogMessage::End(status)) => return status,
                // Skipped lines do not matter here; the end comes after them.
                Ok(LogMessage::Line(_)) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => self.live = None,
            }
        }
        std::future::pending().await
    }
}

impl Drop for EndWatch {
    fn drop(&mut self) {
        // The receiver first: the channel is idle only once nobody holds one.
        self.live = None;
        self.hub.forget_if_idle(&self.id);
    }
}

fn backlog_messages(backlog: &[LogEntry]) -> Vec<LogMessage> {
    backlog.iter().cloned().map(LogMessage::Line).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(message: &str) -> LogEntry {
        LogEntry {
            seq: 0,
            ts_ms: 0,
            level: crate::domain::LogLevel::Info,
            message: message.into(),
            fields: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_late_follower_gets_the_backlog_then_the_rest() {
        let hub = LogHub::default();
        let observer = hub.start("e1");
        observer(&line("one"));
        let (backlog, mut rx) = hub.subscribe("e1");
        assert_eq!(backlog, [line("one")]);
        observer(&line("two"));
        hub.finish("e1", ExecutionStatus::Completed);
        assert_eq!(rx.recv().await.unwrap(), LogMessage::Line(line("two")));
        assert_eq!(
            rx.recv().await.unwrap(),
            LogMessage::End(ExecutionStatus::Completed)
        );
    }

    #[tokio::test]
    async fn a_watch_hears_the_end_and_leaves_no_channel_behind() {
        let hub = LogHub::default();
        let observer = hub.start("e3");
        let mut watch = hub.watch("e3");
        observer(&line("ignored"));
        hub.finish("e3", ExecutionStatus::Failed);
        assert_eq!(watch.ended().await, ExecutionStatus::Failed);
        drop(watch);
        assert!(hub.channels().is_empty());

        // Given up before the run started: nothing is left for it.
        let queued = hub.watch("e4");
        assert_eq!(hub.channels().len(), 1);
        drop(queued);
        assert!(hub.channels().is_empty());

        // Given up while it runs here: the run keeps its channel until it ends.
        let _observer = hub.start("e5");
        drop(hub.watch("e5"));
        assert!(hub.channels().contains_key("e5"));
        hub.finish("e5", ExecutionStatus::Completed);
        assert!(hub.channels().is_empty());
    }

    #[tokio::test]
    async fn an_early_follower_sees_the_run_from_its_start() {
        let hub = LogHub::default();
        let (backlog, mut rx) = hub.subscribe("e2");
        assert!(backlog.is_empty());
        let observer = hub.start("e2");
        observer(&line("hello"));
        hub.finish("e2", ExecutionStatus::Failed);
        assert_eq!(rx.recv().await.unwrap(), LogMessage::Line(line("hello")));
        assert_eq!(
            rx.recv().await.unwrap(),
            LogMessage::End(ExecutionStatus::Failed)
        );
    }

    /// The hub of two nodes over one real Redis relay each.
    mod over_redis {
        use std::sync::Arc;
        use std::time::Duration;

        use deadpool_redis::redis;
        use tokio::sync::broadcast;

        use super::super::LogHub;
        use crate::domain::{ExecutionStatus, LogEntry, LogLevel, LogMessage};
        use crate::queue::testing::TestPrefix;
        use crate::queue::{RedisLogRelay, RedisLogRelayConfig};

        const WITHIN: Duration = Duration::from_secs(5);

        async fn hub(redis: &TestPrefix, node: &str) -> LogHub {
            let relay = RedisLogRelay::connect(RedisLogRelayConfig {
                url: redis.url.clone(),
                key_prefix: redis.prefix.clone(),
                node_id: node.to_owned(),
                announce_every: Duration::from_millis(200),
            })
            .await
            .expect("the test Redis server is reachable");
            LogHub::with_relay(Arc::new(relay))
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

        async fn next(rx: &mut broadcast::Receiver<LogMessage>) -> LogMessage {
            tokio::time::timeout(WITHIN, rx.recv())
                .await
                .expect("a message in time")
                .expect("an open channel")
        }

        #[tokio::test]
        async fn a_line_logged_on_one_node_reaches_a_follower_on_another_with_the_backlog_and_the_end()
         {
            let redis = TestPrefix::new();
            let (runner, follower) = (hub(&redis, "node-a").await, hub(&redis, "node-b").await);
            let observer = runner.start("x");
            observer(&line(0, "before anyone followed"));
            observer(&line(1, "still before"));

            let (backlog, mut rx) = follower.subscribe("x");
            assert!(backlog.is_empty(), "nothing runs here");
            assert_eq!(
                next(&mut rx).await,
                LogMessage::Line(line(0, "before anyone followed"))
            );
            assert_eq!(
                next(&mut rx).await,
                LogMessage::Line(line(1, "still before"))
            );
            observer(&line(2, "live"));
            assert_eq!(next(&mut rx).await, LogMessage::Line(line(2, "live")));
            runner.finish("x", ExecutionStatus::Completed);
            assert_eq!(
                next(&mut rx).await,
                LogMessage::End(ExecutionStatus::Completed)
            );

            // A second follower there after the end finds nothing live: the store has it.
            let (backlog, _rx) = follower.subscribe("x");
            assert!(backlog.is_empty());
            follower.forget_if_idle("x");
        }

        #[tokio::test]
        async fn a_run_that_starts_after_a_follower_elsewhere_asked_is_relayed_from_its_start() {
            let redis = TestPrefix::new();
            let (runner, follower) = (hub(&redis, "node-a").await, hub(&redis, "node-b").await);
            let (_, mut rx) = follower.subscribe("queued");
            // The request has to reach the runner before the run starts.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let observer = runner.start("queued");
            observer(&line(0, "first"));
            runner.finish("queued", ExecutionStatus::Failed);
            assert_eq!(next(&mut rx).await, LogMessage::Line(line(0, "first")));
            assert_eq!(
                next(&mut rx).await,
                LogMessage::End(ExecutionStatus::Failed)
            );
        }

        #[tokio::test]
        async fn a_run_nobody_follows_elsewhere_writes_nothing_to_redis() {
            let redis = TestPrefix::new();
            let (runner, follower) = (hub(&redis, "node-a").await, hub(&redis, "node-b").await);
            // Followers of other runs, elsewhere and on the same node, change nothing.
            let (_, _other) = follower.subscribe("other");
            let (_, mut local) = runner.subscribe("lonely");
            tokio::time::sleep(Duration::from_millis(300)).await;
            let observer = runner.start("lonely");
            for seq in 0..3 {
                observer(&line(seq, "unseen elsewhere"));
            }
            runner.finish("lonely", ExecutionStatus::Completed);
            for seq in 0..3 {
                assert_eq!(
                    next(&mut local).await,
                    LogMessage::Line(line(seq, "unseen elsewhere"))
                );
            }
            assert_eq!(
                next(&mut local).await,
                LogMessage::End(ExecutionStatus::Completed)
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(!redis.exists(&format!("{}:logs:lonely", redis.prefix)));
            assert!(!redis.exists(&format!("{}:logs:other", redis.prefix)));
        }

        #[tokio::test]
        async fn a_run_stops_being_relayed_once_its_followers_elsewhere_leave() {
            let redis = TestPrefix::new();
            let (runner, follower) = (hub(&redis, "node-a").await, hub(&redis, "node-b").await);
            let observer = runner.start("x");
            observer(&line(0, "followed"));
            let (_, mut rx) = follower.subscribe("x");
            assert_eq!(next(&mut rx).await, LogMessage::Line(line(0, "followed")));
            drop(rx);
            follower.forget_if_idle("x");
            // Three request periods: the runner no longer counts the request.
            tokio::time::sleep(Duration::from_millis(700)).await;
            observer(&line(1, "after they left"));
            runner.finish("x", ExecutionStatus::Completed);
            tokio::time::sleep(Duration::from_millis(200)).await;
            let entries: u64 = redis::cmd("XLEN")
                .arg(format!("{}:logs:x", redis.prefix))
                .query(&mut redis.connection())
                .unwrap();
            assert_eq!(entries, 1, "only the line logged while followed");
        }
    }
}
