//! `runcell dev`: the author's inner loop. Builds the module project, pushes it, runs one
//! of its jobs through a job of its own and streams the log and result; then watches the
//! sources and does it all again on every change, until Ctrl-C. A failed build or a
//! refused push is reported and the loop waits for the next change.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use clap::Args;
use serde_json::{Value, json};

use super::ExitStatus;
use super::client::{self, Client, Failure, ServerArgs};
use super::dev_server::DevServer;
use super::follow;
use super::jobs::{find_job, json_argument};
use super::project::Project;

/// How often the sources are looked at.
const POLL_INTERVAL: Duration = Duration::from_millis(400);
/// After a change, how long to wait for the rest of it (an editor saving several files).
const SETTLE: Duration = Duration::from_millis(150);

#[derive(Debug, Args)]
pub(super) struct DevArgs {
    /// The project's directory (the one holding its Cargo.toml, pyproject.toml or
    /// package.json) [default: .].
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// The module's job to run [default: its first].
    #[arg(long)]
    job: Option<String>,
    /// The input of each run: JSON, or `@file.json` (read again on every run, and watched).
    #[arg(long)]
    input: Option<String>,
    /// On a server given with --server or the stored login: approve what the module asks
    /// for (admins only). On the dev server started for you this is always done.
    #[arg(long)]
    approve: bool,
    #[command(flatten)]
    server: ServerArgs,
}

/// The server the loop pushes to.
enum Target {
    /// Given on the command line, in the environment or by the stored login.
    Given(ServerArgs),
    /// Started for this loop; shared with the signal handler, which stops it.
    Own(Arc<Mutex<Option<DevServer>>>),
}

pub(super) fn run(args: DevArgs) -> ExitStatus {
    client::report("dev", dev(args))
}

fn dev(args: DevArgs) -> Result<ExitStatus, Failure> {
    let project = check_project(&args.dir)?;
    project
        .check_toolchain(&args.dir)
        .map_err(Failure::environment)?;
    let target = choose_target(&args.server)?;
    let own = match &target {
        Target::Own(server) => Some(server.clone()),
        Target::Given(_) => None,
    };
    stop_on_signal(own)?;
    let watched = Sources::new(project.sources(&args.dir), args.input.as_deref());
    loop {
        let before = watched.snapshot();
        if let Err(failure) = cycle(&args, &project, &target) {
            eprintln!("runcell dev: {}", failure.message);
        }
        println!("watching {} for changes (Ctrl-C ends)", args.dir.display());
        watched.wait_for_change(&before);
    }
}

/// A module project: Python or JavaScript as `runcell build` takes them, or a Cargo.toml
/// building a `cdylib` on `runcell-sdk`.
fn check_project(dir: &Path) -> Result<Project, Failure> {
    let project = Project::detect(dir).map_err(Failure::usage)?;
    if project != Project::Rust {
        return Ok(project);
    }
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).map_err(|err| {
        Failure::environment(format!(
            "cannot read {}: {err}",
            dir.join("Cargo.toml").display()
        ))
    })?;
    if !manifest.contains("cdylib") || !manifest.contains("runcell-sdk") {
        return Err(Failure::usage(format!(
            "{} is not a module project: its Cargo.toml should build a cdylib on runcell-sdk (see `runcell new`)",
            dir.join("Cargo.toml").display()
        )));
    }
    Ok(project)
}

/// The server named (flags, environment, stored login), else one started here.
fn choose_target(server: &ServerArgs) -> Result<Target, Failure> {
    let stored = super::credentials::load(&super::credentials::credentials_path()?)?;
    if !server.is_unset() || stored.is_some() {
        // Checked now, so a wrong address or token ends dev before the first build.
        let mut client = Client::connect(server)?;
        client.get("/auth/me")?;
        println!("server {}", client.base());
        return Ok(Target::Given(server.clone()));
    }
    let started = DevServer::start()?;
    println!(
        "dev server {} (data in {}; removed at exit)",
        started.url(),
        started.data_dir().display()
    );
    Ok(Target::Own(Arc::new(Mutex::new(Some(started)))))
}

/// On SIGINT or SIGTERM: stops the dev server (if any) and ends the process, whatever the
/// loop is doing (a build, an upload, a stream).
fn stop_on_signal(own: Option<Arc<Mutex<Option<DevServer>>>>) -> Result<(), Failure> {
    use tokio::signal::unix::{SignalKind, signal};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| Failure::environment(format!("cannot watch for signals: {err}")))?;
    // Registered here, before the first build, so an early Ctrl-C is not lost.
    let (mut interrupt, mut terminate) = runtime
        .block_on(async {
            Ok::<_, std::io::Error>((
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
            ))
        })
        .map_err(|err| Failure::environment(format!("cannot watch for signals: {err}")))?;
    std::thread::spawn(move || {
        runtime.block_on(async {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        });
        if let Some(own) = own {
            let server = own.lock().map(|mut server| server.take());
            if let Ok(Some(mut server)) = server {
                eprintln!("stopping the dev server");
                server.stop();
            }
        }
        std::process::exit(0);
    });
    Ok(())
}

/// One turn of the loop: build, push, approve if allowed, run and follow.
fn cycle(args: &DevArgs, project: &Project, target: &Target) -> Result<(), Failure> {
    let started = Instant::now();
    let wasm = project
        .build(&args.dir)
        .map_err(|message| Failure::environment(format!("build failed: {message}")))?;
    println!(
        "built {} in {:.1} s",
        project.label(&args.dir, &wasm),
        started.elapsed().as_secs_f64()
    );
    let input = args
        .input
        .as_deref()
        .map(|input| json_argument("--input", input))
        .transpose()?;
    let (server, may_approve) = match target {
        Target::Given(server) => (server.clone(), args.approve),
        Target::Own(own) => {
            let mut own = own
                .lock()
                .map_err(|_| Failure::environment("the dev server is gone".to_owned()))?;
            let own = own
                .as_mut()
                .ok_or_else(|| Failure::environment("the dev server is gone".to_owned()))?;
            (own.server_args()?, true)
        }
    };
    let mut client = Client::connect(&server)?;
    let bytes = std::fs::read(&wasm)
        .map_err(|err| Failure::environment(format!("cannot read {}: {err}", wasm.display())))?;
    let installed = client.upload_module(&bytes, false)?;
    let module = installed["name"].as_str().unwrap_or_default().to_owned();
    let uploads = client.get(&format!("/modules/{module}/versions"))?["items"]
        .as_array()
        .map_or(0, Vec::len);
    println!(
        "pushed {module} {} (upload {uploads}, sha256 {})",
        installed["version"].as_str().unwrap_or("?"),
        installed["contentHash"]
            .as_str()
            .and_then(|hash| hash.get(..12))
            .unwrap_or("?")
    );
    if !approve(&mut client, &installed, may_approve)? {
        return Ok(());
    }
    let job = module_job(&installed, args.job.as_deref())?;
    let id = ensure_job(&mut client, &module, &job)?;
    let body = input.map(|input| json!({"input": input}));
    let started = client.post(&format!("/jobs/{id}/execute"), body.as_ref())?;
    let execution = started["executionId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    println!("run {execution}:");
    let ended = follow::stream_log(&mut client, &execution)?;
    println!("{}", outcome(&ended));
    Ok(())
}

/// Approves what the module waits for when allowed; answers whether it may run.
fn approve(client: &mut Client, installed: &Value, may_approve: bool) -> Result<bool, Failure> {
    let awaiting: Vec<&str> = installed["awaitingApproval"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if awaiting.is_empty() {
        return Ok(true);
    }
    if !may_approve {
        println!(
            "awaiting approval: {}; not run (an admin passes --approve to approve it here)",
            awaiting.join("; ")
        );
        return Ok(false);
    }
    let name = installed["name"].as_str().unwrap_or_default();
    let hash = installed["contentHash"].as_str().unwrap_or_default();
    client.post(
        &format!("/modules/{name}/capabilities/approve?contentHash={hash}"),
        None,
    )?;
    println!("approved: {}", awaiting.join("; "));
    Ok(true)
}

/// The module job to run: the one asked for, else the module's first.
fn module_job(installed: &Value, asked: Option<&str>) -> Result<String, Failure> {
    let jobs: Vec<&str> = installed["jobs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|job| job["name"].as_str())
        .collect();
    match asked {
        Some(asked) if jobs.contains(&asked) => Ok(asked.to_owned()),
        Some(asked) => Err(Failure::usage(format!(
            "--job {asked}: the module has no such job (it has: {})",
            jobs.join(", ")
        ))),
        None => jobs
            .first()
            .map(|job| (*job).to_owned())
            .ok_or_else(|| Failure::usage("the module offers no job to run".to_owned())),
    }
}

/// The id of the job `dev-<module>-<job>`, created on the first turn (without a schedule:
/// it runs when the loop runs it).
fn ensure_job(client: &mut Client, module: &str, job: &str) -> Result<String, Failure> {
    let name = format!("dev-{module}-{job}");
    let found = match find_job(client, &name) {
        Ok(found) => found,
        // Not found is a usage failure; anything else (network, refusal) ends this turn.
        Err(failure) if failure.status == ExitStatus::Usage => {
            let created = client.post(
                "/jobs",
                Some(&json!({"name": name, "module": module, "job": job, "schedule": null})),
            )?;
            println!("created job {name}");
            created
        }
        Err(failure) => return Err(failure),
    };
    Ok(found["id"].as_str().unwrap_or_default().to_owned())
}

/// `completed in 12 ms: {...}`, or the state, the kind and the error of a run that failed.
fn outcome(execution: &Value) -> String {
    let status = execution["status"].as_str().unwrap_or_default();
    let duration = execution["durationMs"]
        .as_f64()
        .map(|ms| format!(" in {ms:.1} ms"))
        .unwrap_or_default();
    if status == "COMPLETED" {
        let result = execution.get("result").cloned().unwrap_or(Value::Null);
        return format!("completed{duration}: {result}");
    }
    format!(
        "{}{duration}: {}{}",
        status.to_lowercase().replace('_', " "),
        execution["errorKind"]
            .as_str()
            .map(|kind| format!("{kind}: "))
            .unwrap_or_default(),
        execution["error"].as_str().unwrap_or("no error message")
    )
}

/// What the loop watches: the project's sources (its manifest and everything under src/),
/// and an `--input @file`. Cargo.lock is left out, since the build itself writes it.
struct Sources {
    roots: Vec<PathBuf>,
}

/// Each watched file with its modification time and size, sorted by path.
type Snapshot = Vec<(PathBuf, Option<SystemTime>, u64)>;

impl Sources {
    fn new(mut roots: Vec<PathBuf>, input: Option<&str>) -> Self {
        if let Some(file) = input.and_then(|input| input.strip_prefix('@')) {
            roots.push(PathBuf::from(file));
        }
        Self { roots }
    }

    fn snapshot(&self) -> Snapshot {
        let mut files = Vec::new();
        for root in &self.roots {
            collect(root, &mut files);
        }
        files.sort();
        files
    }

    /// Returns once the sources differ from `before`, and have settled.
    fn wait_for_change(&self, before: &Snapshot) {
        loop {
            std::thread::sleep(POLL_INTERVAL);
            if self.snapshot() != *before {
                std::thread::sleep(SETTLE);
                return;
            }
        }
    }
}

fn collect(path: &Path, files: &mut Snapshot) {
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    if meta.is_dir() {
        // Python writes its bytecode cache beside the sources during a build; watching it
        // would make every build ask for the next.
        if path.file_name().is_some_and(|name| name == "__pycache__") {
            return;
        }
        let Ok(entries) = std::fs::read_dir(path) else {
            return;
        };
        for entry in entries.flatten() {
            collect(&entry.path(), files);
        }
    } else {
        files.push((path.to_owned(), meta.modified().ok(), meta.len()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_under_src_or_to_the_manifest_is_seen_and_cargo_lock_is_not() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("src/nested")).unwrap();
        std::fs::write(dir.path().join("Cargo.toml"), "[package]\n").unwrap();
        std::fs::write(dir.path().join("src/lib.rs"), "").unwrap();
        let sources = Sources::new(Project::Rust.sources(dir.path()), None);
        let before = sources.snapshot();
        assert_eq!(before.len(), 2);
        std::fs::write(dir.path().join("Cargo.lock"), "written by cargo").unwrap();
        assert_eq!(sources.snapshot(), before);
        std::fs::write(dir.path().join("src/nested/more.rs"), "fn f() {}").unwrap();
        assert_ne!(sources.snapshot(), before);
    }

    #[test]
    fn a_run_reads_as_its_outcome() {
        let completed = json!({"status": "COMPLETED", "durationMs": 12.4,
                               "result": {"greeting": "Hello, Ada!"}});
        assert_eq!(
            outcome(&completed),
            r#"completed in 12.4 ms: {"greeting":"Hello, Ada!"}"#
        );
        let failed = json!({"status": "FAILED", "durationMs": 3.0,
                            "errorKind": "INVALID_INPUT", "error": "name must not be empty"});
        assert_eq!(
            outcome(&failed),
            "failed in 3.0 ms: INVALID_INPUT: name must not be empty"
        );
    }

    #[test]
    fn the_job_run_is_the_one_asked_for_or_the_first() {
        let installed = json!({"jobs": [{"name": "greet"}, {"name": "sweep"}]});
        assert_eq!(module_job(&installed, None).unwrap(), "greet");
        assert_eq!(module_job(&installed, Some("sweep")).unwrap(), "sweep");
        let missing = module_job(&installed, Some("nope")).unwrap_err();
        assert_eq!(
            missing.message,
            "--job nope: the module has no such job (it has: greet, sweep)"
        );
    }
}
