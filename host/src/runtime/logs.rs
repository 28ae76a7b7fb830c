//! The log of one execution: guest log lines and captured stdout/stderr, in order, under
//! a line and byte cap, with the job's secrets redacted. Guests are untrusted, so
//! everything they write is bounded and cleaned here before it can reach memory, a
//! database or a terminal.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use super::redact::Redactor;
use crate::domain::{LogEntry, LogLevel};

/// A single message longer than this is cut, so one call cannot use the whole byte cap.
const MAX_MESSAGE_BYTES: usize = 16 * 1024;
/// Fields beyond this count are dropped from a line.
const MAX_FIELDS: usize = 32;
/// A partial stdout line is flushed as a line of its own once it grows past this size, so
/// output without newlines still counts against the cap.
const MAX_PENDING_STREAM_BYTES: usize = 16 * 1024;

/// Called with every line as it is kept, for live log streaming.
pub(crate) type LogObserver = Arc<dyn Fn(&LogEntry) + Send + Sync>;

/// Shared by the guest's log import and its stdout/stderr streams.
#[derive(Clone)]
pub(crate) struct LogCollector {
    inner: Arc<Mutex<LogBuffer>>,
}

impl std::fmt::Debug for LogCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogCollector").finish_non_exhaustive()
    }
}

struct LogBuffer {
    entries: Vec<LogEntry>,
    bytes: u64,
    dropped: u64,
    max_lines: u32,
    max_bytes: u64,
    observer: Option<LogObserver>,
    redactor: Redactor,
    pending_stdout: Vec<u8>,
    pending_stderr: Vec<u8>,
}

/// Which captured stream a write came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

impl LogCollector {
    pub(crate) fn new(max_lines: u32, max_bytes: u64, observer: Option<LogObserver>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(LogBuffer {
                entries: Vec::new(),
                bytes: 0,
                dropped: 0,
                max_lines,
                max_bytes,
                observer,
                redactor: Redactor::default(),
                pending_stdout: Vec::new(),
                pending_stderr: Vec::new(),
            })),
        }
    }

    /// Masks `redactor`'s secrets in every line from now on, before the line is counted,
    /// cut, observed or kept.
    pub(crate) fn redacting(self, redactor: Redactor) -> Self {
        self.lock().redactor = redactor;
        self
    }

    fn lock(&self) -> MutexGuard<'_, LogBuffer> {
        // A panic while holding this lock can only come from our own code; the buffer
        // stays consistent line by line, so keep using it.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends a structured line, unless the cap is reached.
    pub(crate) fn push(
        &self,
        level: LogLevel,
        message: &str,
        fields: serde_json::Map<String, serde_json::Value>,
    ) {
        self.lock().push(level, message, fields);
    }

    /// Appends raw bytes written to stdout or stderr; complete lines become log lines.
    pub(crate) fn write_stream(&self, stream: Stream, bytes: &[u8]) {
        let mut buffer = self.lock();
        let buffer = &mut *buffer;
        if buffer.is_full() {
            // Count what would have become lines without buffering it.
            let lines = bytes.iter().filter(|&&b| b == b'\n').count() as u64;
            buffer.dropped += lines;
            return;
        }
        let pending = match stream {
            Stream::Stdout => &mut buffer.pending_stdout,
            Stream::Stderr => &mut buffer.pending_stderr,
        };
        let mut lines = Vec::new();
        for &byte in bytes {
            if byte == b'\n' {
                lines.push(std::mem::take(pending));
            } else {
                pending.push(byte);
                if pending.len() >= MAX_PENDING_STREAM_BYTES {
                    lines.push(std::mem::take(pending));
                }
            }
        }
        for line in lines {
            buffer.push_stream_line(stream, &line);
        }
    }

    /// Turns unterminated stdout/stderr text into final lines; called when the run ends.
    pub(crate) fn flush_streams(&self) {
        let mut buffer = self.lock();
        for stream in [Stream::Stdout, Stream::Stderr] {
            let pending = match stream {
                Stream::Stdout => std::mem::take(&mut buffer.pending_stdout),
                Stream::Stderr => std::mem::take(&mut buffer.pending_stderr),
            };
            if !pending.is_empty() {
                buffer.push_stream_line(stream, &pending);
            }
        }
    }

    /// Takes the kept lines and the number dropped.
    pub(crate) fn finish(&self) -> (Vec<LogEntry>, u64) {
        self.flush_streams();
        let mut buffer = self.lock();
        let dropped = buffer.dropped;
        if dropped > 0 {
            // Said once, at the end, so a reader of a capped log knows it is incomplete.
            let seq = buffer.entries.len() as u32;
            let mut fields = serde_json::Map::new();
            fields.insert("droppedLines".into(), dropped.into());
            let notice = LogEntry {
                seq,
                ts_ms: now_ms(),
                level: LogLevel::Warn,
                message: format!("log cap reached: {dropped} more lines were dropped"),
                fields,
            };
            // A live reader (`runcell run`'s terminal, a log stream) is told too, not
            // only whoever reads the stored log.
            if let Some(observer) = &buffer.observer {
                observer(&notice);
            }
            buffer.entries.push(notice);
        }
        (std::mem::take(&mut buffer.entries), dropped)
    }
}

impl LogBuffer {
    fn is_full(&self) -> bool {
        self.entries.len() as u64 >= u64::from(self.max_lines) || self.bytes >= self.max_bytes
    }

    fn push_stream_line(&mut self, stream: Stream, line: &[u8]) {
        let (level, name) = match stream {
            Stream::Stdout => (LogLevel::Info, "stdout"),
            Stream::Stderr => (LogLevel::Error, "stderr"),
        };
        let text = String::from_utf8_lossy(line);
        let mut fields = serde_json::Map::new();
        fields.insert("stream".into(), name.into());
        self.push(level, text.trim_end_matches('\r'), fields);
    }

    fn push(
        &mut self,
        level: LogLevel,
        message: &str,
        mut fields: serde_json::Map<String, serde_json::Value>,
    ) {
        if self.is_full() {
            self.dropped += 1;
            return;
        }
        // Redacted before the cut, which could otherwise leave half a secret behind.
        let message = truncate(&self.redactor.text(message), MAX_MESSAGE_BYTES);
        if fields.len() > MAX_FIELDS {
            fields = fields.into_iter().take(MAX_FIELDS).collect();
        }
        self.redactor.object(&mut fields);
        let field_bytes: usize = fields
            .iter()
            .map(|(k, v)| k.len() + estimate_json_len(v))
            .sum();
        let size = (message.len() + field_bytes) as u64;
        if self.bytes + size > self.max_bytes {
            self.dropped += 1;
            self.bytes = self.max_bytes;
            return;
        }
        self.bytes += size;
        let entry = LogEntry {
            seq: self.entries.len() as u32,
            ts_ms: now_ms(),
            level,
            message,
            fields,
        };
        if let Some(observer) = &self.observer {
            observer(&entry);
        }
        self.entries.push(entry);
    }
}

fn estimate_json_len(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::String(s) => s.len() + 2,
        serde_json::Value::Null | serde_json::Value::Bool(_) | serde_json::Value::Number(_) => 8,
        other => other.to_string().len(),
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [{} bytes cut]", &text[..end], text.len() - end)
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_past_the_line_cap_are_counted_not_kept() {
        let logs = LogCollector::new(3, 1 << 20, None);
        for i in 0..10 {
            logs.push(LogLevel::Info, &format!("line {i}"), Default::default());
        }
        let (entries, dropped) = logs.finish();
        assert_eq!(dropped, 7);
        assert_eq!(entries.len(), 4, "three lines and the notice");
        assert!(entries[3].message.contains("7 more lines were dropped"));
    }

    #[test]
    fn a_live_observer_is_told_that_lines_were_dropped() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let observer: LogObserver = Arc::new(move |e: &LogEntry| {
            sink.lock().unwrap().push(e.message.clone());
        });
        let logs = LogCollector::new(2, 1 << 20, Some(observer));
        for i in 0..5 {
            logs.push(LogLevel::Info, &format!("line {i}"), Default::default());
        }
        logs.finish();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert_eq!(seen[2], "log cap reached: 3 more lines were dropped");
    }

    #[test]
    fn the_byte_cap_bounds_what_is_kept() {
        let logs = LogCollector::new(1000, 100, None);
        for _ in 0..10 {
            logs.push(LogLevel::Info, &"x".repeat(30), Default::default());
        }
        let (entries, dropped) = logs.finish();
        assert_eq!(entries.len() - 1, 3);
        assert_eq!(dropped, 7);
    }

    #[test]
    fn stdout_is_split_into_lines_and_a_trailing_fragment_is_kept() {
        let logs = LogCollector::new(100, 1 << 20, None);
        logs.write_stream(Stream::Stdout, b"first\nsec");
        logs.write_stream(Stream::Stdout, b"ond\r\nthird");
        logs.write_stream(Stream::Stderr, b"oops\n");
        let (entries, _) = logs.finish();
        let messages: Vec<_> = entries.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(messages, ["first", "second", "oops", "third"]);
        assert_eq!(entries[2].level, LogLevel::Error);
        assert_eq!(entries[0].fields["stream"], "stdout");
        assert!(entries.iter().enumerate().all(|(i, e)| e.seq == i as u32));
    }

    #[test]
    fn a_long_message_is_cut_on_a_char_boundary() {
        let text = "é".repeat(20_000);
        let cut = truncate(&text, MAX_MESSAGE_BYTES);
        assert!(cut.len() < text.len());
        assert!(cut.contains("bytes cut"));
    }

    #[test]
    fn secrets_are_masked_in_messages_and_fields_before_anyone_sees_them() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let logs = LogCollector::new(
            100,
            1 << 20,
            Some(Arc::new(move |e: &LogEntry| {
                sink.lock().unwrap().push(e.message.clone());
            })),
        )
        .redacting(Redactor::new(["s3cret-token".to_owned()]));
        let mut fields = serde_json::Map::new();
        fields.insert("auth".into(), "Bearer s3cret-token".into());
        logs.push(LogLevel::Info, "using s3cret-token", fields);
        logs.write_stream(Stream::Stdout, b"token=s3cret-token\n");
        let (entries, _) = logs.finish();
        assert_eq!(entries[0].message, "using ***");
        assert_eq!(entries[0].fields["auth"], "Bearer ***");
        assert_eq!(entries[1].message, "token=***");
        assert_eq!(*seen.lock().unwrap(), ["using ***", "token=***"]);
    }

    #[test]
    fn the_observer_sees_each_kept_line() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let logs = LogCollector::new(
            2,
            1 << 20,
            Some(Arc::new(move |e: &LogEntry| {
                sink.lock().unwrap().push(e.message.clone());
            })),
        );
        for m in ["a", "b", "c"] {
            logs.push(LogLevel::Info, m, Default::default());
        }
        assert_eq!(*seen.lock().unwrap(), ["a", "b"]);
    }
}
