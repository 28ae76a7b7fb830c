//! `runcell logs`, `runcell cancel` and `runcell events publish`: an execution's log
//! (all of it, or followed to its end), cancelling one, and publishing an event that
//! starts the jobs subscribed to its topic.

use clap::{Args, Subcommand};
use serde_json::json;

use super::ExitStatus;
use super::client::{self, Client, Failure, ServerArgs};
use super::follow;
use super::jobs::json_argument;

/// Lines per page when printing a log: the API's most.
const LOG_PAGE: u32 = 10_000;

#[derive(Debug, Args)]
pub(super) struct LogsArgs {
    /// The execution's id.
    execution: String,
    /// Stream the log until the execution ends, and exit with its outcome (as `job run
    /// --follow`).
    #[arg(long)]
    follow: bool,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Args)]
pub(super) struct CancelArgs {
    /// The execution's id.
    execution: String,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Subcommand)]
pub(super) enum EventsCommand {
    /// Publish an event: every job subscribed to its topic runs with it as input.
    Publish(PublishArgs),
}

#[derive(Debug, Args)]
pub(super) struct PublishArgs {
    /// The topic, e.g. `orders.created`.
    topic: String,
    /// The payload: JSON, or `@file.json`.
    payload: String,
    #[command(flatten)]
    server: ServerArgs,
}

pub(super) fn logs(args: LogsArgs) -> ExitStatus {
    client::report("logs", print_logs(&args))
}

pub(super) fn cancel(args: CancelArgs) -> ExitStatus {
    client::report("cancel", cancel_execution(&args))
}

pub(super) fn events(command: EventsCommand) -> ExitStatus {
    let EventsCommand::Publish(args) = command;
    client::report("events publish", publish(&args))
}

fn print_logs(args: &LogsArgs) -> Result<ExitStatus, Failure> {
    let mut client = Client::connect(&args.server)?;
    let id = path_segment(&args.execution);
    if args.follow {
        return follow::follow(&mut client, &id);
    }
    let mut after: Option<u64> = None;
    loop {
        let mut path = format!("/executions/{id}/logs?limit={LOG_PAGE}");
        if let Some(after) = after {
            path.push_str(&format!("&after={after}"));
        }
        let page = client.get(&path)?;
        for entry in page["items"].as_array().into_iter().flatten() {
            println!("{}", follow::format_line(entry));
        }
        match page["nextAfter"].as_u64() {
            Some(next) => after = Some(next),
            None => return Ok(ExitStatus::Success),
        }
    }
}

fn cancel_execution(args: &CancelArgs) -> Result<ExitStatus, Failure> {
    let mut client = Client::connect(&args.server)?;
    let id = path_segment(&args.execution);
    let execution = client.post(&format!("/executions/{id}/cancel"), None)?;
    let status = execution["status"].as_str().unwrap_or("?");
    if status == "CANCELLED" {
        println!("cancelled {id}");
    } else {
        println!("cancelling {id}: it stops shortly ({status})");
    }
    Ok(ExitStatus::Success)
}

fn publish(args: &PublishArgs) -> Result<ExitStatus, Failure> {
    let payload = json_argument("payload", &args.payload)?;
    let mut client = Client::connect(&args.server)?;
    let published = client.post(
        "/events",
        Some(&json!({"topic": args.topic, "payload": payload})),
    )?;
    println!(
        "published {} on {}: {} execution(s) started",
        published["eventId"].as_str().unwrap_or("?"),
        args.topic,
        match &published["triggeredExecutions"] {
            serde_json::Value::Array(ids) => ids.len().to_string(),
            other => other.to_string(),
        }
    );
    Ok(ExitStatus::Success)
}

/// `id` made safe as one path segment: an id never holds `/`, `?` or `#`, so text that
/// does is not one, and must not reach another route.
fn path_segment(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes()).collect()
}
