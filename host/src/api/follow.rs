//! `GET /api/v1/executions/{id}/logs?follow=true`: an execution's log as server-sent
//! events. Each line is an event `log` (id: its `seq`, data: the line as JSON); once the
//! execution is final, one event `end` (data: `{"status": "..."}`) and the stream closes.
//!
//! Live lines come from this process's [`LogHub`](crate::services::LogHub) (which, in the
//! distributed deployment, also relays runs on other nodes); the store is the truth and
//! the backstop. The follower subscribes to the hub *before* reading the execution, so
//! nothing published in between is lost; it then sends the hub's backlog and the live
//! lines, deduplicated by `seq`, and re-reads the execution every [`STORE_POLL`] in case
//! the end was missed (a run on a node that died, Redis down, a lagging receiver). At the
//! end it sends whatever stored lines it has not sent yet.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::{broadcast, mpsc};
use tracing::Instrument;

use super::Readiness;
use super::error::ApiError;
use super::executions::LogLine;
use crate::domain::{ExecutionStatus, LogEntry, LogMessage};
use crate::services::{ServiceError, Services};

/// How often a follower re-reads the execution: the longest a missed end can go unseen.
const STORE_POLL: Duration = Duration::from_secs(1);
/// Comment lines that keep idle connections (and proxies) from timing out.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Stored lines read per query at the end.
const STORED_PAGE: u32 = 1_000;
/// Events buffered for a slow client before the follower waits for it.
const CLIENT_BUFFER: usize = 256;

/// Starts following execution `id` from after line `after`; `404` if it does not exist.
pub(super) async fn follow(
    services: Services,
    readiness: &Readiness,
    id: String,
    after: Option<u32>,
) -> Result<Response, ApiError> {
    let (backlog, live) = services.logs.subscribe(&id);
    let execution = match services.get_execution(&id).await {
        Ok(execution) => execution,
        Err(err) => {
            drop(live);
            services.logs.forget_if_idle(&id);
            return Err(err.into());
        }
    };
    let (events, receiver) = mpsc::channel(CLIENT_BUFFER);
    let follower = Follower {
        services,
        id,
        last_sent: after,
        events,
    };
    let shutdown = readiness.shutdown_started();
    tokio::spawn(
        async move {
            tokio::select! {
                () = follower.run(execution.status, backlog, live) => {}
                // Dropping the follower ends the stream; the process is stopping, so
                // a hub channel left behind goes with it.
                () = shutdown => {}
            }
        }
        .instrument(tracing::Span::current()),
    );
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        let event = receiver.recv().await?;
        Some((Ok::<_, Infallible>(event), receiver))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

/// Why a follower stopped early.
enum Stop {
    /// The client went away.
    Gone,
    /// The store failed; the client gets an `error` event.
    Failed(ServiceError),
}

impl From<ServiceError> for Stop {
    fn from(err: ServiceError) -> Self {
        Stop::Failed(err)
    }
}

struct Follower {
    services: Services,
    id: String,
    /// The `seq` of the last line sent; only later lines are sent.
    last_sent: Option<u32>,
    events: mpsc::Sender<Event>,
}

impl Follower {
    async fn run(
        mut self,
        status: ExecutionStatus,
        backlog: Vec<LogEntry>,
        mut live: broadcast::Receiver<LogMessage>,
    ) {
        let outcome = self.stream(status, backlog, &mut live).await;
        drop(live);
        self.services.logs.forget_if_idle(&self.id);
        if let Err(Stop::Failed(err)) = outcome {
            tracing::warn!(execution = %self.id, error = %err, "log follower stopped");
            let event = Event::default()
                .event("error")
                .json_data(json!({"code": "unavailable", "message": "the server could not read the execution; reconnect to resume"}));
            if let Ok(event) = event {
                let _ = self.events.send(event).await;
            }
        }
    }

    async fn stream(
        &mut self,
        status: ExecutionStatus,
        backlog: Vec<LogEntry>,
        live: &mut broadcast::Receiver<LogMessage>,
    ) -> Result<(), Stop> {
        if status.is_final() {
            return self.finish(status).await;
        }
        self.send_lines(backlog).await?;
        let mut poll =
            tokio::time::interval_at(tokio::time::Instant::now() + STORE_POLL, STORE_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut live_open = true;
        loop {
            tokio::select! {
                () = self.events.closed() => return Err(Stop::Gone),
                message = live.recv(), if live_open => match message {
                    Ok(LogMessage::Line(line)) => self.send_line(line).await?,
                    Ok(LogMessage::End(status)) => return self.finish(status).await,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // The lines it skipped are still in the hub's backlog while the
                        // run lasts (and in the store after it).
                        let (backlog, fresh) = self.services.logs.subscribe(&self.id);
                        *live = fresh;
                        self.send_lines(backlog).await?;
                    }
                    Err(broadcast::error::RecvError::Closed) => live_open = false,
                },
                _ = poll.tick() => {
                    let execution = self.services.get_execution(&self.id).await?;
                    if execution.status.is_final() {
                        return self.finish(execution.status).await;
                    }
                }
            }
        }
    }

    /// Sends the stored lines not sent yet, then `end`.
    async fn finish(&mut self, status: ExecutionStatus) -> Result<(), Stop> {
        loop {
            let lines = self
                .services
                .execution_logs(&self.id, self.last_sent, STORED_PAGE)
                .await?;
            let complete = lines.len() < STORED_PAGE as usize;
            self.send_lines(lines).await?;
            if complete {
                break;
            }
        }
        let end = Event::default()
            .event("end")
            .json_data(json!({ "status": status }))
            .map_err(|_| Stop::Gone)?;
        self.send(end).await
    }

    async fn send_lines(&mut self, lines: Vec<LogEntry>) -> Result<(), Stop> {
        for line in lines {
            self.send_line(line).await?;
        }
        Ok(())
    }

    async fn send_line(&mut self, line: LogEntry) -> Result<(), Stop> {
        if self.last_sent.is_some_and(|last| line.seq <= last) {
            return Ok(());
        }
        let seq = line.seq;
        let event = Event::default()
            .event("log")
            .id(seq.to_string())
            .json_data(LogLine::from(line))
            .map_err(|_| Stop::Gone)?;
        self.send(event).await?;
        self.last_sent = Some(seq);
        Ok(())
    }

    async fn send(&self, event: Event) -> Result<(), Stop> {
        self.events.send(event).await.map_err(|_| Stop::Gone)
    }
}
