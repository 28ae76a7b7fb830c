//! `runcell modules list`, `runcell jobs list` and `runcell executions list`: what a
//! server holds, as aligned columns for people or JSON for scripts, with the API's
//! filters as flags.

use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;

use super::ExitStatus;
use super::client::{self, Client, Failure, ServerArgs};
use super::jobs::{encode, find_job};

/// The most items a listing asks the API for in one page.
const MAX_PAGE: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub(super) enum ModulesCommand {
    /// The installed modules and their current versions.
    List(ModulesListArgs),
}

#[derive(Debug, Subcommand)]
pub(super) enum JobsCommand {
    /// The jobs, oldest first.
    List(JobsListArgs),
}

#[derive(Debug, Subcommand)]
pub(super) enum ExecutionsCommand {
    /// Executions, newest first.
    List(ExecutionsListArgs),
}

#[derive(Debug, Args)]
pub(super) struct ModulesListArgs {
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Args)]
pub(super) struct JobsListArgs {
    /// Only jobs of this module.
    #[arg(long)]
    module: Option<String>,
    /// At most this many.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Args)]
pub(super) struct ExecutionsListArgs {
    /// Only this job's executions (its name or id).
    #[arg(long)]
    job: Option<String>,
    /// Only executions in this status (queued, running, completed, failed, timed_out,
    /// cancelled).
    #[arg(long)]
    status: Option<String>,
    /// At most this many.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(flatten)]
    server: ServerArgs,
}

pub(super) fn modules(command: ModulesCommand) -> ExitStatus {
    let ModulesCommand::List(args) = command;
    client::report("modules list", list_modules(&args))
}

pub(super) fn jobs(command: JobsCommand) -> ExitStatus {
    let JobsCommand::List(args) = command;
    client::report("jobs list", list_jobs(&args))
}

pub(super) fn executions(command: ExecutionsCommand) -> ExitStatus {
    let ExecutionsCommand::List(args) = command;
    client::report("executions list", list_executions(&args))
}

fn list_modules(args: &ModulesListArgs) -> Result<ExitStatus, Failure> {
    let mut client = Client::connect(&args.server)?;
    let modules = items(&client.get("/modules")?);
    print(
        args.output,
        &modules,
        |module| {
            let awaiting: Vec<&str> = module["awaitingApproval"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            vec![
                text(&module["name"]),
                text(&module["version"]),
                text(&module["status"]),
                module["jobs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|job| text(&job["name"]))
                    .collect::<Vec<_>>()
                    .join(","),
                if awaiting.is_empty() {
                    "-".to_owned()
                } else {
                    awaiting.join("; ")
                },
            ]
        },
        &["NAME", "VERSION", "STATUS", "JOBS", "AWAITING APPROVAL"],
    );
    Ok(ExitStatus::Success)
}

fn list_jobs(args: &JobsListArgs) -> Result<ExitStatus, Failure> {
    let mut client = Client::connect(&args.server)?;
    let module = args.module.as_deref();
    let jobs = collect(&mut client, "/jobs?", args.limit, |job| {
        module.is_none_or(|module| job["module"] == module)
    })?;
    print(
        args.output,
        &jobs,
        |job| {
            vec![
                text(&job["id"]),
                text(&job["name"]),
                format!("{}/{}", text(&job["module"]), text(&job["job"])),
                job["schedule"]
                    .as_str()
                    .or(job["onEvent"].as_str().map(|_| "on event"))
                    .unwrap_or("-")
                    .to_owned(),
                if job["enabled"] == true { "yes" } else { "no" }.to_owned(),
            ]
        },
        &["ID", "NAME", "MODULE/JOB", "SCHEDULE", "ENABLED"],
    );
    Ok(ExitStatus::Success)
}

fn list_executions(args: &ExecutionsListArgs) -> Result<ExitStatus, Failure> {
    let mut client = Client::connect(&args.server)?;
    let mut path = "/executions?".to_owned();
    if let Some(job) = &args.job {
        let job = find_job(&mut client, job)?;
        path.push_str(&format!("jobId={}&", encode(&text(&job["id"]))));
    }
    if let Some(status) = &args.status {
        path.push_str(&format!("status={}&", encode(status)));
    }
    let executions = collect(&mut client, &path, args.limit, |_| true)?;
    print(
        args.output,
        &executions,
        |execution| {
            vec![
                text(&execution["id"]),
                format!("{}/{}", text(&execution["module"]), text(&execution["job"])),
                text(&execution["status"]),
                execution["errorKind"].as_str().unwrap_or("-").to_owned(),
                execution["createdAt"]
                    .as_i64()
                    .and_then(chrono::DateTime::from_timestamp_millis)
                    .map_or_else(
                        || "-".to_owned(),
                        |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
                    ),
                execution["durationMs"]
                    .as_f64()
                    .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1}")),
            ]
        },
        &["ID", "MODULE/JOB", "STATUS", "ERROR", "CREATED (UTC)", "MS"],
    );
    Ok(ExitStatus::Success)
}

/// Up to `limit` items of the listing at `path` (which ends in `?` or `&`) that `keep`
/// accepts, following its cursor.
fn collect(
    client: &mut Client,
    path: &str,
    limit: usize,
    keep: impl Fn(&Value) -> bool,
) -> Result<Vec<Value>, Failure> {
    let mut found = Vec::new();
    let mut cursor: Option<String> = None;
    while found.len() < limit {
        let mut page_path = format!("{path}limit={}", (limit - found.len()).clamp(1, MAX_PAGE));
        if let Some(cursor) = &cursor {
            page_path.push_str(&format!("&cursor={}", encode(cursor)));
        }
        let page = client.get(&page_path)?;
        found.extend(items(&page).into_iter().filter(|item| keep(item)));
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    found.truncate(limit);
    Ok(found)
}

fn items(page: &Value) -> Vec<Value> {
    page["items"].as_array().cloned().unwrap_or_default()
}

fn text(value: &Value) -> String {
    value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_owned)
}

fn print(output: Output, items: &[Value], row: impl Fn(&Value) -> Vec<String>, header: &[&str]) {
    match output {
        Output::Json => println!("{}", Value::Array(items.to_vec())),
        Output::Table => {
            let mut rows = vec![header.iter().map(|h| (*h).to_owned()).collect()];
            rows.extend(items.iter().map(row));
            print!("{}", table(&rows));
        }
    }
}

/// `rows` as left-aligned columns two spaces apart.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .map(|row| row[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_under_their_headers() {
        let rows = vec![
            vec!["NAME".to_owned(), "STATUS".to_owned()],
            vec!["data-sync".to_owned(), "ENABLED".to_owned()],
        ];
        assert_eq!(table(&rows), "NAME       STATUS\ndata-sync  ENABLED\n");
    }
}
