//! Following an execution on a server: its log streamed live from the API's server-sent
//! events (resuming after the last line seen when the stream breaks), then its end turned
//! into the exit status `runcell run` gives the same outcome locally.

use std::io::{BufRead, BufReader, Read, Write};
use std::time::Duration;

use serde_json::Value;

use super::ExitStatus;
use super::client::{Client, Failure};

/// How many times a broken stream is reopened before giving up.
const MAX_RECONNECTS: u32 = 5;
/// The pause before reopening: the server or the network gets a moment back.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// How one stream ended.
enum StreamEnd {
    /// The server said the execution ended.
    Ended,
    /// The connection closed, or the server reported it could not read the execution.
    Broken(String),
}

/// Streams execution `id`'s log to stdout until it ends, then prints its result (stdout)
/// or its error (stderr); returns the exit status its outcome maps to.
pub(super) fn follow(client: &mut Client, id: &str) -> Result<ExitStatus, Failure> {
    let execution = stream_log(client, id)?;
    Ok(finish(&execution))
}

/// Streams execution `id`'s log to stdout until it ends; answers the ended execution.
pub(super) fn stream_log(client: &mut Client, id: &str) -> Result<Value, Failure> {
    let path = format!("/executions/{id}/logs?follow=true");
    let mut last_seq = None;
    let mut reconnects = 0;
    loop {
        let stream = client.open_stream(&path, last_seq)?;
        match print_events(stream, &mut last_seq) {
            StreamEnd::Ended => break,
            StreamEnd::Broken(why) if reconnects < MAX_RECONNECTS => {
                reconnects += 1;
                tracing::debug!(%why, "the log stream broke; reopening it");
                std::thread::sleep(RECONNECT_PAUSE);
            }
            StreamEnd::Broken(why) => {
                return Err(Failure::environment(format!(
                    "lost the log stream of execution {id}: {why}"
                )));
            }
        }
    }
    client.get(&format!("/executions/{id}"))
}

/// Prints the `log` events of one stream, remembering the last line's `seq`.
fn print_events(stream: impl Read, last_seq: &mut Option<u32>) -> StreamEnd {
    let mut reader = BufReader::new(stream);
    let (mut event, mut data) = (String::new(), String::new());
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return StreamEnd::Broken("the server closed the stream".to_owned()),
            Ok(_) => {}
            Err(err) => return StreamEnd::Broken(err.to_string()),
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            match event.as_str() {
                "log" => print_line(&data, last_seq),
                "end" => return StreamEnd::Ended,
                "error" => return StreamEnd::Broken(data),
                _ => {}
            }
            event.clear();
            data.clear();
        } else if let Some(value) = line.strip_prefix("event:") {
            value.trim_start().clone_into(&mut event);
        } else if let Some(value) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(value.strip_prefix(' ').unwrap_or(value));
        }
    }
}

fn print_line(data: &str, last_seq: &mut Option<u32>) {
    let Ok(entry) = serde_json::from_str::<Value>(data) else {
        return;
    };
    let seq = entry["seq"].as_u64().and_then(|s| u32::try_from(s).ok());
    if seq.is_some_and(|seq| last_seq.is_some_and(|last| seq <= last)) {
        return;
    }
    *last_seq = seq.or(*last_seq);
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{}", format_line(&entry));
    let _ = stdout.flush();
}

/// `INFO  message key=value ...`, as `runcell run` prints a line.
pub(super) fn format_line(entry: &Value) -> String {
    let mut line = format!(
        "{:<5} {}",
        entry["level"].as_str().unwrap_or("info").to_uppercase(),
        entry["message"].as_str().unwrap_or_default()
    );
    for (key, value) in entry["fields"].as_object().into_iter().flatten() {
        match value {
            Value::String(s) => line.push_str(&format!(" {key}={s}")),
            other => line.push_str(&format!(" {key}={other}")),
        }
    }
    line
}

/// Prints a final execution's result or error; returns its exit status.
pub(super) fn finish(execution: &Value) -> ExitStatus {
    let status = execution["status"].as_str().unwrap_or_default();
    let kind = execution["errorKind"].as_str();
    let duration = execution["durationMs"]
        .as_f64()
        .map(|ms| format!(" in {ms:.1} ms"))
        .unwrap_or_default();
    if status == "COMPLETED" {
        let result = execution.get("result").cloned().unwrap_or(Value::Null);
        println!("{result}");
        eprintln!("completed{duration}");
    } else {
        eprintln!(
            "{}{duration}: {}{}",
            status.to_lowercase().replace('_', " "),
            kind.map(|k| format!("{k}: ")).unwrap_or_default(),
            execution["error"].as_str().unwrap_or("no error message")
        );
    }
    exit_status(status, kind)
}

/// The exit status of an execution that ended in `status` with `error_kind`: the one
/// `runcell run` gives the same outcome, so a pipeline treats a job run on a server like
/// one run locally.
pub(super) fn exit_status(status: &str, error_kind: Option<&str>) -> ExitStatus {
    match (status, error_kind) {
        ("COMPLETED", _) => ExitStatus::Success,
        ("TIMED_OUT", _)
        | (_, Some("OUT_OF_FUEL" | "MEMORY_LIMIT_EXCEEDED" | "OUTPUT_TOO_LARGE" | "TIMED_OUT")) => {
            ExitStatus::LimitExceeded
        }
        (_, Some("TRAP" | "INVALID_OUTPUT" | "HOST_ERROR")) => ExitStatus::Trapped,
        (_, Some("UNKNOWN_JOB")) => ExitStatus::Usage,
        // The job's own errors, a cancellation, and runs that never started (their
        // module awaits approval or is disabled, or a budget is used up).
        _ => ExitStatus::JobFailed,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn each_final_state_exits_as_a_local_run_would() {
        let cases = [
            ("COMPLETED", None, ExitStatus::Success),
            ("FAILED", Some("PERMANENT"), ExitStatus::JobFailed),
            ("FAILED", Some("TRANSIENT"), ExitStatus::JobFailed),
            ("FAILED", Some("INVALID_INPUT"), ExitStatus::JobFailed),
            ("FAILED", Some("OUT_OF_FUEL"), ExitStatus::LimitExceeded),
            (
                "FAILED",
                Some("MEMORY_LIMIT_EXCEEDED"),
                ExitStatus::LimitExceeded,
            ),
            (
                "FAILED",
                Some("OUTPUT_TOO_LARGE"),
                ExitStatus::LimitExceeded,
            ),
            ("TIMED_OUT", Some("TIMED_OUT"), ExitStatus::LimitExceeded),
            ("FAILED", Some("TRAP"), ExitStatus::Trapped),
            ("FAILED", Some("INVALID_OUTPUT"), ExitStatus::Trapped),
            ("FAILED", Some("HOST_ERROR"), ExitStatus::Trapped),
            ("FAILED", Some("UNKNOWN_JOB"), ExitStatus::Usage),
            ("CANCELLED", Some("CANCELLED"), ExitStatus::JobFailed),
            ("FAILED", Some("NOT_RUNNABLE"), ExitStatus::JobFailed),
        ];
        for (status, kind, expected) in cases {
            assert_eq!(exit_status(status, kind), expected, "{status} {kind:?}");
        }
    }

    #[test]
    fn a_stream_prints_new_lines_once_and_stops_at_the_end() {
        let stream = concat!(
            ": keep-alive\n\n",
            "event: log\nid: 0\ndata: {\"seq\":0,\"level\":\"info\",\"message\":\"a\",\"fields\":{}}\n\n",
            "event: log\nid: 1\ndata: {\"seq\":1,\"level\":\"warn\",\"message\":\"b\",\"fields\":{}}\n\n",
            "event: end\ndata: {\"status\":\"COMPLETED\"}\n\n",
        );
        let mut last = Some(0);
        assert!(matches!(
            print_events(stream.as_bytes(), &mut last),
            StreamEnd::Ended
        ));
        assert_eq!(last, Some(1), "line 0 was seen before; line 1 is new");
        let mut last = None;
        assert!(matches!(
            print_events(&stream.as_bytes()[..60], &mut last),
            StreamEnd::Broken(_)
        ));
    }

    #[test]
    fn a_line_reads_as_a_local_run_prints_it() {
        let entry = json!({"level": "warn", "message": "slow upstream",
                           "fields": {"host": "api.example.com", "ms": 812}});
        assert_eq!(
            format_line(&entry),
            "WARN  slow upstream host=api.example.com ms=812"
        );
    }
}
