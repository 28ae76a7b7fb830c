//! `runcell push`: uploads a module to the server, shows what it is and what it asks for,
//! and, on an upgrade, what it asks for beyond the version before; approves it (admins)
//! only when the user said yes.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::Value;

use super::ExitStatus;
use super::client::{self, Client, Failure, ServerArgs};

#[derive(Debug, Args)]
pub(super) struct PushArgs {
    /// The module's `.wasm` file (default: the only one in `.`, in
    /// `target/wasm32-wasip2/release` or in `build`, where `runcell build` leaves it).
    file: Option<PathBuf>,
    /// Approve what the module asks for once it is uploaded (admins only); asks first.
    #[arg(long)]
    approve: bool,
    /// With --approve: approve without asking (needed when stdin is not a terminal).
    #[arg(long, requires = "approve")]
    yes: bool,
    #[command(flatten)]
    server: ServerArgs,
}

pub(super) fn run(args: PushArgs) -> ExitStatus {
    client::report("push", push(&args))
}

fn push(args: &PushArgs) -> Result<ExitStatus, Failure> {
    let file = match &args.file {
        Some(file) => file.clone(),
        None => find_module()?,
    };
    let bytes = std::fs::read(&file)
        .map_err(|err| Failure::environment(format!("cannot read {}: {err}", file.display())))?;
    let mut client = Client::connect(&args.server)?;
    let installed = client.upload_module(&bytes, true)?;
    let name = installed["name"].as_str().unwrap_or_default().to_owned();
    let previous = previous_version(&mut client, &name, &installed)?;
    print!("{}", describe(&installed, previous.as_ref()));
    let awaiting = texts(&installed["awaitingApproval"]);
    if awaiting.is_empty() {
        return Ok(ExitStatus::Success);
    }
    println!("awaiting approval: {}", awaiting.join("; "));
    if !args.approve {
        println!("an admin approves it with `runcell push --approve`");
        return Ok(ExitStatus::Success);
    }
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            return Err(Failure::usage(
                "not approved: stdin is not a terminal to ask on; pass --yes to approve".to_owned(),
            ));
        }
        if !confirm("approve? [y/N] ")? {
            println!("not approved");
            return Ok(ExitStatus::Success);
        }
    }
    let hash = installed["contentHash"].as_str().unwrap_or_default();
    let approved = client.post(
        &format!("/modules/{name}/capabilities/approve?contentHash={hash}"),
        None,
    )?;
    println!(
        "approved {name} {}",
        approved["version"].as_str().unwrap_or("?")
    );
    Ok(ExitStatus::Success)
}

/// The one `.wasm` file where a build leaves it, or a failure saying to name it.
fn find_module() -> Result<PathBuf, Failure> {
    let dirs = [
        Path::new("."),
        Path::new("target/wasm32-wasip2/release"),
        Path::new(super::project::BUILD_DIR),
    ];
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let found: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "wasm"))
            .collect();
        match found.as_slice() {
            [one] => return Ok(one.clone()),
            [] => {}
            _ => {
                return Err(Failure::usage(format!(
                    "{} holds several .wasm files; name the one to push",
                    dir.display()
                )));
            }
        }
    }
    Err(Failure::usage(
        "no .wasm file here, in target/wasm32-wasip2/release or in build; name the one to push"
            .to_owned(),
    ))
}

/// The version that was current before this upload, if the module had one with other
/// bytes: the newest other version in its history.
fn previous_version(
    client: &mut Client,
    name: &str,
    installed: &Value,
) -> Result<Option<Value>, Failure> {
    let versions = client.get(&format!("/modules/{name}/versions"))?;
    let hash = &installed["contentHash"];
    Ok(versions["items"]
        .as_array()
        .and_then(|items| items.iter().find(|v| &v["contentHash"] != hash).cloned()))
}

/// What was installed, and what it asks for beyond `previous`.
fn describe(installed: &Value, previous: Option<&Value>) -> String {
    let field = |value: &Value, name: &str| value[name].as_str().unwrap_or("?").to_owned();
    let mut out = format!(
        "pushed {} {} ({}, sha256 {})\n",
        field(installed, "name"),
        field(installed, "version"),
        client::size(installed["sizeBytes"].as_u64().unwrap_or(0) as usize),
        &field(installed, "contentHash")
            .get(..12)
            .unwrap_or_default()
    );
    for job in installed["jobs"].as_array().into_iter().flatten() {
        let schedule = job["defaultSchedule"]
            .as_str()
            .map(|s| format!(" [{s}]"))
            .unwrap_or_default();
        out.push_str(&format!(
            "  job {}{schedule}: {}\n",
            field(job, "name"),
            field(job, "description")
        ));
    }
    let asked = capability_lines(&installed["capabilities"]);
    out.push_str(&format!(
        "asks for: {}\n",
        if asked.is_empty() {
            "nothing".to_owned()
        } else {
            asked.join(", ")
        }
    ));
    let withheld = texts(&installed["outboundHosts"]["withheld"]);
    if !withheld.is_empty() {
        out.push_str(&format!("withheld by an admin: {}\n", withheld.join(", ")));
    }
    if let Some(previous) = previous {
        let changes = diff(&previous["capabilities"], &installed["capabilities"]);
        let since = field(previous, "version");
        if changes.is_empty() {
            out.push_str(&format!(
                "changes since {since}: none in what it asks for\n"
            ));
        } else {
            out.push_str(&format!("changes since {since}:\n"));
        }
        for change in changes {
            out.push_str(&format!("  {change}\n"));
        }
    }
    out
}

/// One line per thing `capabilities` asks for: `outbound api.example.com`,
/// `publishes orders.*`, `key-value`, `routes public`.
pub(super) fn capability_lines(capabilities: &Value) -> Vec<String> {
    let mut lines: Vec<String> = texts(&capabilities["outboundHosts"])
        .into_iter()
        .map(|host| format!("outbound {host}"))
        .collect();
    lines.extend(
        texts(&capabilities["publishes"])
            .into_iter()
            .map(|topic| format!("publishes {topic}")),
    );
    if capabilities["keyValue"].as_bool() == Some(true) {
        lines.push("key-value".to_owned());
    }
    match capabilities["routes"].as_str() {
        None | Some("none") => {}
        Some(access) => lines.push(format!("routes {access}")),
    }
    lines
}

/// `+ what` for each thing `after` asks for that `before` did not, `- what` for each it
/// no longer asks for.
fn diff(before: &Value, after: &Value) -> Vec<String> {
    let (before, after) = (capability_lines(before), capability_lines(after));
    let added = after
        .iter()
        .filter(|line| !before.contains(line))
        .map(|line| format!("+ {line}"));
    let removed = before
        .iter()
        .filter(|line| !after.contains(line))
        .map(|line| format!("- {line}"));
    added.chain(removed).collect()
}

fn texts(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

fn confirm(question: &str) -> Result<bool, Failure> {
    eprint!("{question}");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|err| Failure::environment(format!("cannot read the answer: {err}")))?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_diff_names_what_was_added_and_what_was_dropped() {
        let before = json!({"outboundHosts": ["a.example.com"], "publishes": [],
                            "keyValue": true, "routes": "authenticated"});
        let after = json!({"outboundHosts": ["a.example.com", "api.example.com"],
                           "publishes": ["orders.*"], "keyValue": false, "routes": "public"});
        assert_eq!(
            diff(&before, &after),
            [
                "+ outbound api.example.com",
                "+ publishes orders.*",
                "+ routes public",
                "- key-value",
                "- routes authenticated",
            ]
        );
        assert!(diff(&after, &after).is_empty());
    }

    #[test]
    fn a_first_push_lists_its_jobs_and_request_without_a_diff() {
        let installed = json!({"name": "hello", "version": "0.1.0", "sizeBytes": 2048,
            "contentHash": "0123456789abcdef", "jobs": [
                {"name": "greet", "description": "Says hello.", "defaultSchedule": "0 * * * *"}],
            "capabilities": {"outboundHosts": [], "publishes": [], "keyValue": false,
                             "routes": "none"},
            "outboundHosts": {"withheld": []}});
        let text = describe(&installed, None);
        assert_eq!(
            text,
            "pushed hello 0.1.0 (2.0 KiB, sha256 0123456789ab)\n  job greet [0 * * * *]: Says hello.\nasks for: nothing\n"
        );
    }
}
