//! `runcell job create` and `runcell job run`: define a job on a server and run it,
//! optionally following its log to the end with `runcell run`'s exit statuses; and
//! finding a job by name or id, which the other commands share.

use std::path::Path;

use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

use super::ExitStatus;
use super::client::{self, Client, Failure, ServerArgs};
use super::follow;

/// Jobs read per page while looking one up by name: the API's most.
const LOOKUP_PAGE: u32 = 500;

#[derive(Debug, Subcommand)]
pub(super) enum JobCommand {
    /// Define a job: which job of which module, on what schedule, with what settings.
    Create(CreateArgs),
    /// Run a job now; with --follow, stream its log and exit with its outcome.
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub(super) struct CreateArgs {
    /// The new job's name (letters, digits, `-`, `_`, `.`).
    name: String,
    /// The module it runs.
    #[arg(long)]
    module: String,
    /// Which of the module's jobs.
    #[arg(long)]
    job: String,
    /// A cron expression (UTC); default: the module's schedule for the job, if any.
    #[arg(long, conflicts_with = "no_schedule")]
    schedule: Option<String>,
    /// Never run on a schedule, only when triggered.
    #[arg(long)]
    no_schedule: bool,
    /// Run on every event on this topic (or `prefix.*`).
    #[arg(long)]
    on_event: Option<String>,
    /// The input of runs whose trigger gives none: JSON, or `@file.json`.
    #[arg(long)]
    input: Option<String>,
    /// Wall-clock limit of a run, in milliseconds (default: the module's hint, else the
    /// server's).
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// CPU limit of a run, in fuel units (default: the module's hint, else the server's).
    #[arg(long)]
    fuel: Option<u64>,
    /// A setting, `name=value` (repeatable).
    #[arg(long = "config", value_name = "NAME=VALUE")]
    config: Vec<String>,
    /// A secret setting, `name=@file` (the file's content, one trailing newline dropped)
    /// or `name=value` (repeatable).
    #[arg(long = "secret", value_name = "NAME=@FILE")]
    secrets: Vec<String>,
    /// Print the job as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Args)]
pub(super) struct RunArgs {
    /// The job's name or id.
    job: String,
    /// This run's input instead of the job's: JSON, or `@file.json`.
    #[arg(long)]
    input: Option<String>,
    /// Stream the run's log until it ends; exit 0 when it completed, 1 on the job's
    /// error, 3 on a limit, 4 on a trap (as `runcell run`).
    #[arg(long)]
    follow: bool,
    #[command(flatten)]
    server: ServerArgs,
}

pub(super) fn run(command: JobCommand) -> ExitStatus {
    match command {
        JobCommand::Create(args) => client::report("job create", create(&args)),
        JobCommand::Run(args) => client::report("job run", run_job(&args)),
    }
}

fn create(args: &CreateArgs) -> Result<ExitStatus, Failure> {
    let mut draft = json!({"name": args.name, "module": args.module, "job": args.job});
    if let Some(schedule) = &args.schedule {
        draft["schedule"] = json!(schedule);
    } else if args.no_schedule {
        draft["schedule"] = Value::Null;
    }
    if let Some(topic) = &args.on_event {
        draft["onEvent"] = json!(topic);
    }
    if let Some(timeout) = args.timeout_ms {
        draft["timeoutMs"] = json!(timeout);
    }
    if let Some(fuel) = args.fuel {
        draft["fuel"] = json!(fuel);
    }
    if let Some(input) = &args.input {
        draft["input"] = json_argument("--input", input)?;
    }
    let config = settings(&args.config, &args.secrets)?;
    if !config.is_empty() {
        draft["config"] = Value::Object(config);
    }
    let mut client = Client::connect(&args.server)?;
    let job = client.post("/jobs", Some(&draft))?;
    if args.json {
        println!("{job}");
    } else {
        println!(
            "created job {} ({}): {}/{}{}",
            job["name"].as_str().unwrap_or("?"),
            job["id"].as_str().unwrap_or("?"),
            job["module"].as_str().unwrap_or("?"),
            job["job"].as_str().unwrap_or("?"),
            job["schedule"]
                .as_str()
                .map(|s| format!(", on `{s}`"))
                .unwrap_or_default()
        );
    }
    for warning in job["warnings"].as_array().into_iter().flatten() {
        eprintln!("warning: {}", warning.as_str().unwrap_or_default());
    }
    Ok(ExitStatus::Success)
}

fn run_job(args: &RunArgs) -> Result<ExitStatus, Failure> {
    let input = args
        .input
        .as_deref()
        .map(|input| json_argument("--input", input))
        .transpose()?;
    let mut client = Client::connect(&args.server)?;
    let job = find_job(&mut client, &args.job)?;
    let id = job["id"].as_str().unwrap_or_default();
    let body = input.map(|input| json!({"input": input}));
    let started = client.post(&format!("/jobs/{id}/execute"), body.as_ref())?;
    let execution = started["executionId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if !args.follow {
        println!("{execution}");
        eprintln!(
            "{} {}",
            started["status"]
                .as_str()
                .unwrap_or("queued")
                .to_lowercase(),
            execution
        );
        return Ok(ExitStatus::Success);
    }
    eprintln!("following execution {execution}");
    follow::follow(&mut client, &execution)
}

/// The job named or identified by `name_or_id`, or a failure naming it.
pub(super) fn find_job(client: &mut Client, name_or_id: &str) -> Result<Value, Failure> {
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/jobs?limit={LOOKUP_PAGE}");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={}", encode(cursor)));
        }
        let page = client.get(&path)?;
        if let Some(job) = page["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|job| job["name"] == name_or_id || job["id"] == name_or_id)
        {
            return Ok(job.clone());
        }
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => {
                return Err(Failure::usage(format!(
                    "no job named `{name_or_id}` on {} (nor with that id); `runcell jobs list` shows them",
                    client.base()
                )));
            }
        }
    }
}

/// A query-string value.
pub(super) fn encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// A JSON argument, given inline or as `@file`.
pub(super) fn json_argument(flag: &str, text: &str) -> Result<Value, Failure> {
    let text = match text.strip_prefix('@') {
        Some(path) => read_file(flag, Path::new(path))?,
        None => text.to_owned(),
    };
    serde_json::from_str(&text).map_err(|err| Failure::usage(format!("{flag}: not JSON: {err}")))
}

fn read_file(flag: &str, path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path).map_err(|err| {
        Failure::environment(format!("{flag}: cannot read {}: {err}", path.display()))
    })
}

/// The `config` of a job draft: plain settings as strings, secrets as `{"secret": ...}`.
fn settings(plain: &[String], secrets: &[String]) -> Result<Map<String, Value>, Failure> {
    let mut config = Map::new();
    for pair in plain {
        let (name, value) = split_setting("--config", pair)?;
        config.insert(name.to_owned(), json!(value));
    }
    for pair in secrets {
        let (name, value) = split_setting("--secret", pair)?;
        let value = match value.strip_prefix('@') {
            Some(path) => {
                let text = read_file("--secret", Path::new(path))?;
                text.strip_suffix('\n').map_or(text.clone(), |t| {
                    t.strip_suffix('\r').unwrap_or(t).to_owned()
                })
            }
            None => value.to_owned(),
        };
        config.insert(name.to_owned(), json!({"secret": value}));
    }
    Ok(config)
}

fn split_setting<'a>(flag: &str, pair: &'a str) -> Result<(&'a str, &'a str), Failure> {
    pair.split_once('=')
        .filter(|(name, _)| !name.is_empty())
        .ok_or_else(|| Failure::usage(format!("{flag}: `{pair}` is not NAME=VALUE")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_take_plain_values_and_secrets_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "s3cr3t\n").unwrap();
        let config = settings(
            &["greeting=hi=there".to_owned()],
            &[format!("token=@{}", key.display()), "pin=1234".to_owned()],
        )
        .unwrap();
        assert_eq!(
            Value::Object(config),
            json!({"greeting": "hi=there", "token": {"secret": "s3cr3t"},
                   "pin": {"secret": "1234"}})
        );
        let bad = settings(&["=x".to_owned()], &[]).unwrap_err();
        assert_eq!(bad.message, "--config: `=x` is not NAME=VALUE");
        let missing = settings(&[], &["token=@/nonexistent/key".to_owned()]).unwrap_err();
        assert!(
            missing
                .message
                .starts_with("--secret: cannot read /nonexistent/key")
        );
    }

    #[test]
    fn json_arguments_are_inline_or_read_from_a_file() {
        assert_eq!(
            json_argument("--input", r#"{"a":1}"#).unwrap(),
            json!({"a": 1})
        );
        let wrong = json_argument("--input", "{a").unwrap_err();
        assert!(wrong.message.starts_with("--input: not JSON"), "{wrong:?}");
    }
}
