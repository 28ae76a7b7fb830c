//! The record of every outbound request of one execution: one structured log line per
//! request, written when the request ends, however it ends (served, refused, failed,
//! dropped by the guest, or cut off by the end of the run).
//!
//! A request outlives the host call that started it (its response and body are read by
//! later calls, on other tasks), so its record lives here, shared, until it ends. The
//! execution closes the journal before it takes its log, which records whatever is
//! still open; nothing written after that could reach the log anyway.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::policy::Denial;
use crate::domain::LogLevel;
use crate::domain::usage::{OutboundTally, ResponseClass};
use crate::runtime::logs::LogCollector;

/// The outbound requests of one execution.
#[derive(Clone)]
pub(crate) struct Journal {
    logs: LogCollector,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    open: BTreeMap<u64, Request>,
    closed: bool,
    /// The requests that ended, counted per host for the run's usage figures. Kept
    /// apart from the log, which may be cut at its cap.
    tallies: BTreeMap<String, OutboundTally>,
}

struct Request {
    method: String,
    host: String,
    port: u16,
    started: Instant,
    status: Option<u16>,
    bytes: u64,
    sent: u64,
}

/// How a request ended.
#[derive(Debug, Clone, Copy)]
pub(super) enum Ending<'a> {
    /// The response body was read to its end (or there was none).
    Completed,
    /// The policy refused the request; nothing was sent.
    Denied(&'a Denial),
    /// The request or its response failed (connection, timeout, size cap, ...).
    Failed(&'a str),
    /// The guest let go of the request or its body before the end.
    Dropped,
    /// The run ended while the request was still under way.
    RunEnded(&'a str),
}

impl Journal {
    pub(crate) fn new(logs: LogCollector) -> Self {
        Self {
            logs,
            state: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Only this file touches the state, and no code here panics while holding it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens the record of a request; it is written when the returned handle ends it, or
    /// when the handle is dropped.
    pub(super) fn start(&self, method: &str, host: &str, port: u16) -> Exchange {
        let mut state = self.lock();
        let id = state.next_id;
        state.next_id += 1;
        state.open.insert(
            id,
            Request {
                method: method.to_owned(),
                host: host.to_owned(),
                port,
                started: Instant::now(),
                status: None,
                bytes: 0,
                sent: 0,
            },
        );
        Exchange {
            journal: self.clone(),
            id,
        }
    }

    /// Requests started and not yet ended.
    pub(super) fn in_flight(&self) -> usize {
        self.lock().open.len()
    }

    /// Records every request still open as cut off because of `why`, and returns the
    /// run's requests counted per host. Later endings are ignored: the run is over and
    /// its log about to be taken.
    pub(crate) fn close(&self, why: &str) -> Vec<OutboundTally> {
        let open = {
            let mut state = self.lock();
            state.closed = true;
            std::mem::take(&mut state.open)
        };
        for request in open.into_values() {
            self.write(&request, Ending::RunEnded(why));
        }
        std::mem::take(&mut self.lock().tallies)
            .into_values()
            .collect()
    }

    fn update(&self, id: u64, change: impl FnOnce(&mut Request)) {
        if let Some(request) = self.lock().open.get_mut(&id) {
            change(request);
        }
    }

    fn end(&self, id: u64, ending: Ending<'_>) {
        let request = {
            let mut state = self.lock();
            if state.closed {
                return;
            }
            state.open.remove(&id)
        };
        if let Some(request) = request {
            self.write(&request, ending);
        }
    }

    /// Counts an ended request in its host's tally, and logs it.
    fn write(&self, request: &Request, ending: Ending<'_>) {
        let class = match (ending, request.status) {
            (Ending::Denied(_), _) => ResponseClass::Denied,
            (_, Some(status)) => ResponseClass::Status(status),
            (_, None) => ResponseClass::Error,
        };
        let latency = (class != ResponseClass::Denied)
            .then(|| request.started.elapsed().as_secs_f64() * 1000.0);
        self.lock()
            .tallies
            .entry(request.host.clone())
            .or_insert_with(|| OutboundTally::new(&request.host))
            .count(class, request.sent, request.bytes, latency);
        self.log(request, ending);
    }

    fn log(&self, request: &Request, ending: Ending<'_>) {
        let (level, message) = describe(request, ending);
        let mut fields = serde_json::Map::new();
        fields.insert("method".into(), request.method.clone().into());
        fields.insert("host".into(), request.host.clone().into());
        fields.insert("port".into(), request.port.into());
        if let Some(status) = request.status {
            fields.insert("status".into(), status.into());
        }
        fields.insert("bytes".into(), request.bytes.into());
        let ms = u64::try_from(request.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        fields.insert("ms".into(), ms.into());
        match ending {
            Ending::Denied(denial) => {
                fields.insert("denied".into(), denial.to_string().into());
            }
            Ending::Failed(reason) | Ending::RunEnded(reason) => {
                fields.insert("error".into(), reason.into());
            }
            Ending::Dropped if request.status.is_some() => {
                fields.insert("complete".into(), false.into());
            }
            Ending::Completed | Ending::Dropped => {}
        }
        self.logs.push(level, &message, fields);
    }
}

/// `http GET api.example.com -> 200`, and how far it got when it did not complete.
fn describe(request: &Request, ending: Ending<'_>) -> (LogLevel, String) {
    let prefix = format!("http {} {} ->", request.method, request.host);
    let (level, outcome) = match (ending, request.status) {
        (Ending::Completed, Some(status)) => (LogLevel::Info, status.to_string()),
        (Ending::Completed, None) => (LogLevel::Info, "done".to_owned()),
        (Ending::Denied(denial), _) => (LogLevel::Warn, format!("denied: {denial}")),
        (Ending::Failed(reason), Some(status)) => {
            (LogLevel::Warn, format!("{status}, then failed: {reason}"))
        }
        (Ending::Failed(reason), None) => (LogLevel::Warn, format!("failed: {reason}")),
        (Ending::Dropped, Some(status)) => (
            LogLevel::Info,
            format!("{status} (body not read to the end)"),
        ),
        (Ending::Dropped, None) => (
            LogLevel::Warn,
            "abandoned by the guest before the response".to_owned(),
        ),
        (Ending::RunEnded(why), Some(status)) => {
            (LogLevel::Warn, format!("{status}, unfinished: {why}"))
        }
        (Ending::RunEnded(why), None) => (LogLevel::Warn, format!("unfinished: {why}")),
    };
    (level, format!("{prefix} {outcome}"))
}

/// One request's handle on its record. Dropping it without an ending records the
/// request as dropped by the guest.
pub(super) struct Exchange {
    journal: Journal,
    id: u64,
}

impl Exchange {
    pub(super) fn responded(&self, status: u16) {
        self.journal.update(self.id, |r| r.status = Some(status));
    }

    pub(super) fn received(&self, bytes: u64) {
        self.journal.update(self.id, |r| r.bytes += bytes);
    }

    /// What counts the request body's bytes as they go out: the body is sent by the
    /// connection's task, apart from this handle.
    pub(super) fn sent_meter(&self) -> SentMeter {
        SentMeter {
            journal: self.journal.clone(),
            id: self.id,
        }
    }

    /// Writes the record; only the first ending of a request counts.
    pub(super) fn end(&self, ending: Ending<'_>) {
        self.journal.end(self.id, ending);
    }
}

/// Counts a request's body bytes as they are sent.
pub(super) struct SentMeter {
    journal: Journal,
    id: u64,
}

impl SentMeter {
    pub(super) fn sent(&self, bytes: u64) {
        self.journal.update(self.id, |r| r.sent += bytes);
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.journal.end(self.id, Ending::Dropped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::LogEntry;

    fn journal() -> (Journal, LogCollector) {
        let logs = LogCollector::new(100, 1 << 20, None);
        (Journal::new(logs.clone()), logs)
    }

    fn lines(logs: &LogCollector) -> Vec<LogEntry> {
        logs.finish().0
    }

    #[test]
    fn a_completed_request_is_one_line_with_status_bytes_and_time() {
        let (journal, logs) = journal();
        let exchange = journal.start("GET", "api.example.com", 80);
        exchange.responded(200);
        exchange.received(10);
        exchange.received(5);
        exchange.end(Ending::Completed);
        drop(exchange);
        let lines = lines(&logs);
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        assert_eq!(line.message, "http GET api.example.com -> 200");
        assert_eq!(line.level, LogLevel::Info);
        assert_eq!(line.fields["method"], "GET");
        assert_eq!(line.fields["host"], "api.example.com");
        assert_eq!(line.fields["port"], 80);
        assert_eq!(line.fields["status"], 200);
        assert_eq!(line.fields["bytes"], 15);
        assert!(line.fields["ms"].is_u64());
        assert!(!line.fields.contains_key("denied"));
    }

    #[test]
    fn a_denied_request_names_the_reason() {
        let (journal, logs) = journal();
        let denial = Denial::NotGranted {
            host: "evil.example".into(),
            port: 80,
        };
        journal
            .start("POST", "evil.example", 80)
            .end(Ending::Denied(&denial));
        let lines = lines(&logs);
        assert_eq!(lines.len(), 1, "the drop after the ending writes nothing");
        assert_eq!(
            lines[0].message,
            "http POST evil.example -> denied: `evil.example:80` is not among the module's granted outbound hosts"
        );
        assert_eq!(lines[0].level, LogLevel::Warn);
        assert_eq!(lines[0].fields["denied"], denial.to_string());
        assert!(!lines[0].fields.contains_key("status"));
    }

    #[test]
    fn a_request_dropped_by_the_guest_is_still_recorded() {
        let (journal, logs) = journal();
        drop(journal.start("GET", "a.example", 80));
        let partial = journal.start("GET", "b.example", 80);
        partial.responded(200);
        partial.received(3);
        drop(partial);
        let lines = lines(&logs);
        assert_eq!(
            lines[0].message,
            "http GET a.example -> abandoned by the guest before the response"
        );
        assert_eq!(
            lines[1].message,
            "http GET b.example -> 200 (body not read to the end)"
        );
        assert_eq!(lines[1].fields["complete"], false);
    }

    #[test]
    fn requests_are_in_flight_until_they_end() {
        let (journal, _logs) = journal();
        let first = journal.start("GET", "a.example", 80);
        let second = journal.start("GET", "b.example", 80);
        assert_eq!(journal.in_flight(), 2);
        first.end(Ending::Completed);
        assert_eq!(journal.in_flight(), 1);
        drop(second);
        assert_eq!(journal.in_flight(), 0);
    }

    #[test]
    fn closing_records_open_requests_once_and_ignores_later_endings() {
        let (journal, logs) = journal();
        let waiting = journal.start("GET", "slow.example", 80);
        let reading = journal.start("GET", "big.example", 8080);
        reading.responded(200);
        journal.close("the run hit its deadline");
        waiting.end(Ending::Failed("connection timeout"));
        drop(waiting);
        drop(reading);
        let lines = lines(&logs);
        let messages: Vec<&str> = lines.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "http GET slow.example -> unfinished: the run hit its deadline",
                "http GET big.example -> 200, unfinished: the run hit its deadline",
            ]
        );
        assert_eq!(lines[0].fields["error"], "the run hit its deadline");
    }

    #[test]
    fn a_failure_after_the_response_keeps_the_status() {
        let (journal, logs) = journal();
        let exchange = journal.start("GET", "big.example", 80);
        exchange.responded(200);
        exchange.end(Ending::Failed("the response body is over the limit"));
        let lines = lines(&logs);
        assert_eq!(
            lines[0].message,
            "http GET big.example -> 200, then failed: the response body is over the limit"
        );
        assert_eq!(lines[0].fields["status"], 200);
    }
}
