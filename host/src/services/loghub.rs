//! Live logs of executions running in this process, for `logs?follow=true`. A follower
//! that arrives mid-run gets the lines so far, then each new one, then the end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::domain::{ExecutionStatus, LogEntry};
use crate::runtime::LogObserver;

/// Lines a slow follower may lag behind before it is told it missed some.
const FOLLOW_BUFFER: usize = 1024;

/// What a follower receives.
#[derive(Debug, Clone, PartialEq)]
pub enum LogMessage {
    Line(LogEntry),
    End(ExecutionStatus),
}

#[derive(Debug, Clone, Default)]
pub struct LogHub {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

#[derive(Debug)]
struct Channel {
    backlog: Vec<LogEntry>,
    sender: broadcast::Sender<LogMessage>,
}

impl Channel {
    fn new() -> Self {
        Self {
            backlog: Vec::new(),
            sender: broadcast::channel(FOLLOW_BUFFER).0,
        }
    }
}

impl LogHub {
    fn channels(&self) -> std::sync::MutexGuard<'_, HashMap<String, Channel>> {
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called when an execution starts here; returns the observer its run reports to.
    pub fn start(&self, id: &str) -> LogObserver {
        self.channels()
            .entry(id.to_owned())
            .or_insert_with(Channel::new);
        let hub = self.clone();
        let id = id.to_owned();
        Arc::new(move |entry: &LogEntry| {
            if let Some(channel) = hub.channels().get_mut(&id) {
                channel.backlog.push(entry.clone());
                let _ = channel.sender.send(LogMessage::Line(entry.clone()));
            }
        })
    }

    /// Called when an execution reached a final state.
    pub fn finish(&self, id: &str, status: ExecutionStatus) {
        if let Some(channel) = self.channels().remove(id) {
            let _ = channel.sender.send(LogMessage::End(status));
        }
    }

    /// The lines so far and a receiver for the rest. A follower that subscribes before
    /// the run starts simply gets an empty backlog.
    pub fn subscribe(&self, id: &str) -> (Vec<LogEntry>, broadcast::Receiver<LogMessage>) {
        let mut channels = self.channels();
        let channel = channels.entry(id.to_owned()).or_insert_with(Channel::new);
        (channel.backlog.clone(), channel.sender.subscribe())
    }

    /// Drops a channel nobody runs or follows (a follower gave up on a queued run).
    pub fn forget_if_idle(&self, id: &str) {
        let mut channels = self.channels();
        if channels
            .get(id)
            .is_some_and(|c| c.backlog.is_empty() && c.sender.receiver_count() == 0)
        {
            channels.remove(id);
        }
    }
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
}
