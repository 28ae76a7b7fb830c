//! `runcell usage`: the consumption report of a running server, as a table for people
//! (or the server's JSON or CSV for scripts). A client of `GET /api/v1/usage/summary`.

use clap::{Args, ValueEnum};
use serde_json::Value;

use super::ExitStatus;

#[derive(Debug, Args)]
pub(super) struct UsageArgs {
    /// The server's address.
    #[arg(long, env = "RUNCELL_SERVER", default_value = "http://127.0.0.1:4000")]
    server: String,
    /// An access or API token (any role may read usage).
    #[arg(long, env = "RUNCELL_TOKEN", hide_env_values = true)]
    token: String,
    /// Start: milliseconds since the Unix epoch or RFC 3339 (default: a day ago).
    #[arg(long)]
    from: Option<String>,
    /// End (default: now).
    #[arg(long)]
    to: Option<String>,
    /// Only this module.
    #[arg(long)]
    module: Option<String>,
    /// One line per job instead of per module.
    #[arg(long)]
    by_job: bool,
    /// fuel, runs, failed, failureRate, cpuTime, p95, memory, outbound, logBytes or module.
    #[arg(long, default_value = "fuel")]
    sort: String,
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
    Csv,
}

pub(super) fn run(args: UsageArgs) -> ExitStatus {
    match fetch(&args) {
        Ok(text) => {
            print!("{text}");
            ExitStatus::Success
        }
        Err(message) => {
            eprintln!("runcell usage: {message}");
            ExitStatus::Environment
        }
    }
}

/// The query string of the report `args` ask for.
fn query(args: &UsageArgs) -> String {
    let mut pairs: Vec<(&str, &str)> = vec![("sort", &args.sort)];
    if let Some(from) = &args.from {
        pairs.push(("from", from));
    }
    if let Some(to) = &args.to {
        pairs.push(("to", to));
    }
    if let Some(module) = &args.module {
        pairs.push(("module", module));
    }
    if args.by_job {
        pairs.push(("groupBy", "job"));
    }
    if args.output == Output::Csv {
        pairs.push(("format", "csv"));
    }
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

fn fetch(args: &UsageArgs) -> Result<String, String> {
    let url = format!(
        "{}/api/v1/usage/summary?{}",
        args.server.trim_end_matches('/'),
        query(args)
    );
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let mut response = agent
        .get(&url)
        .header("authorization", &format!("Bearer {}", args.token))
        .call()
        .map_err(|e| format!("cannot reach {}: {e}", args.server))?;
    let status = response.status();
    let text = response
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("reading the answer: {e}"))?;
    if !status.is_success() {
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|body| body["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or(text);
        return Err(format!("the server answered {status}: {message}"));
    }
    match args.output {
        Output::Csv => Ok(text),
        Output::Json => Ok(format!("{text}\n")),
        Output::Table => {
            let report: Value =
                serde_json::from_str(&text).map_err(|e| format!("not a report: {e}"))?;
            Ok(table(&report, args.by_job))
        }
    }
}

/// The report as aligned columns, one line per module (or job).
fn table(report: &Value, by_job: bool) -> String {
    let mut rows = vec![
        [
            if by_job { "MODULE/JOB" } else { "MODULE" },
            "RUNS",
            "FAILED",
            "FAIL%",
            "FUEL",
            "CPU MS",
            "P95 MS",
            "PEAK MEM",
            "OUTBOUND",
        ]
        .map(str::to_owned),
    ];
    let empty = Vec::new();
    for item in report["items"].as_array().unwrap_or(&empty) {
        let number = |field: &str| item[field].as_i64().unwrap_or(0);
        let name = match item["job"].as_str() {
            Some(job) => format!("{}/{job}", item["module"].as_str().unwrap_or("?")),
            None => item["module"].as_str().unwrap_or("?").to_owned(),
        };
        rows.push([
            name,
            number("runs").to_string(),
            (number("failed") + number("timedOut")).to_string(),
            format!("{:.1}", item["failureRate"].as_f64().unwrap_or(0.0) * 100.0),
            number("fuelConsumed").to_string(),
            format!("{:.1}", item["cpuTimeMs"].as_f64().unwrap_or(0.0)),
            item["durationMs"]["p95"]
                .as_f64()
                .map_or_else(|| "-".to_owned(), |p| format!("{p:.1}")),
            bytesize::ByteSize(item["memoryPeakBytes"].as_u64().unwrap_or(0))
                .display()
                .iec()
                .to_string(),
            number("outboundRequests").to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|column| rows.iter().map(|row| row[column].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(column, cell)| {
                if column == 0 {
                    format!("{cell:<width$}", width = widths[column])
                } else {
                    format!("{cell:>width$}", width = widths[column])
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    if rows.len() == 1 {
        out.push_str("(no runs ended in this window)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_table_aligns_a_line_per_module() {
        let report = json!({"items": [
            {"module": "data-sync", "runs": 1200, "failed": 3, "timedOut": 1,
             "failureRate": 0.00333, "fuelConsumed": 123456789, "cpuTimeMs": 5012.25,
             "durationMs": {"p95": 41.5}, "memoryPeakBytes": 2097152, "outboundRequests": 2400},
            {"module": "hello", "runs": 2, "failed": 0, "timedOut": 0, "failureRate": 0.0,
             "fuelConsumed": 10, "cpuTimeMs": 0.5, "durationMs": {"p95": null},
             "memoryPeakBytes": 65536, "outboundRequests": 0},
        ]});
        let text = table(&report, false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("MODULE "), "{text}");
        assert!(lines[1].starts_with("data-sync  "), "{text}");
        assert!(
            lines[1].contains(" 1200 ") && lines[1].contains(" 4 "),
            "{text}"
        );
        assert!(lines[1].contains("2.0 MiB"), "{text}");
        assert!(lines[2].contains(" - "), "no runs with a duration: {text}");
        assert_eq!(
            lines[0].find("RUNS").map(|i| i + 4),
            lines[1].find("1200").map(|i| i + 4)
        );
        assert!(table(&json!({"items": []}), true).contains("no runs ended"));
    }
}
