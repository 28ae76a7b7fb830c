//! The `runcell` command line: parses arguments once, at the edge, and hands typed values
//! to the verbs. Exit codes are part of the interface (see [`ExitStatus`]).

mod bench;
mod bench_history;
mod bench_server;
mod build;
mod client;
mod credentials;
mod dev;
mod dev_server;
mod follow;
mod jobs;
mod kv_file;
mod lists;
mod local;
mod login;
mod new;
mod project;
mod push;
mod runs;
mod serve;
mod sign;
mod usage;
mod user;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Runcell runs WebAssembly job modules: on demand, on schedules and on events, each run
/// in a fresh sandbox with hard limits.
#[derive(Debug, Parser)]
#[command(name = "runcell", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: API, workers, scheduler (embedded SQLite by default).
    Serve(Box<serve::ServeArgs>),
    /// Print a module's manifest (name, version, jobs, requested capabilities) as JSON.
    Inspect(local::InspectArgs),
    /// Start a module project: a Rust crate on the SDK with one job, its test and a README.
    New(new::NewArgs),
    /// Build the module project here (or in DIR) and check the component as a server would.
    Build(build::BuildArgs),
    /// Run one job of a module locally, without a server: output JSON on stdout, logs
    /// and a usage summary on stderr.
    Run(local::RunArgs),
    /// Make a publisher key pair for signing modules (`<out>` and `<out>.pub`).
    Keygen(sign::KeygenArgs),
    /// Print a publisher signature of a module file (for the `X-Runcell-Signature`
    /// header of its upload).
    Sign(sign::SignArgs),
    /// Manage users directly in a deployment's database.
    #[command(subcommand)]
    User(user::UserCommand),
    /// Log in to a server and keep the session (or an API token) for the commands below.
    Login(login::LoginArgs),
    /// End the stored session and forget it.
    Logout(login::LogoutArgs),
    /// The inner loop in a module project: build, push, run a job and stream its log, then
    /// again on every change to the sources (on a server started for you unless one is
    /// given).
    Dev(dev::DevArgs),
    /// Upload a module to the server; show what it asks for and what changed.
    Push(push::PushArgs),
    /// The server's modules.
    #[command(subcommand)]
    Modules(lists::ModulesCommand),
    /// The server's jobs.
    #[command(subcommand)]
    Jobs(lists::JobsCommand),
    /// The server's executions.
    #[command(subcommand)]
    Executions(lists::ExecutionsCommand),
    /// Define a job on the server, or run one.
    #[command(subcommand)]
    Job(jobs::JobCommand),
    /// Print an execution's log, or follow it live.
    Logs(runs::LogsArgs),
    /// Cancel an execution.
    Cancel(runs::CancelArgs),
    /// Publish events.
    #[command(subcommand)]
    Events(runs::EventsCommand),
    /// Print a server's consumption report: what each module (or job) used over a
    /// window, from `GET /api/v1/usage/summary`.
    Usage(usage::UsageArgs),
    /// Measure Runcell and print the figures.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// The runtime alone: per-run overhead of a no-op job, module load times.
    Runtime(bench::BenchArgs),
    /// A real server over its API: bulk throughput and dispatch latency.
    Server(bench_server::ServerBenchArgs),
    /// A long history written through the store: how fast the executions list and the
    /// usage series answer over it.
    History(bench_history::HistoryBenchArgs),
}

/// How the process ends. Scripts can tell a job's own failure from a limit or a bad file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Success = 0,
    /// The job returned an error (invalid input, transient or permanent).
    JobFailed = 1,
    /// The command line was wrong.
    Usage = 2,
    /// The run hit a limit: fuel, wall clock, memory or output size.
    LimitExceeded = 3,
    /// The guest trapped (panic, unreachable, stack overflow).
    Trapped = 4,
    /// The file is not a module Runcell can run.
    InvalidModule = 5,
    /// Something outside the module failed (a file could not be read, a server could
    /// not be reached, ...).
    Environment = 6,
    /// The server refused a request (the message is its reason).
    Refused = 7,
}

impl From<ExitStatus> for ExitCode {
    fn from(status: ExitStatus) -> Self {
        ExitCode::from(status as u8)
    }
}

/// Where compiled artifacts are cached unless `--cache-dir` says otherwise.
fn default_cache_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .map(|dir| dir.join("runcell").join("artifacts"))
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The server's own activity is worth reading; a local run's stderr is the job's.
    init_tracing(match cli.command {
        Command::Serve(_) => "info,sqlx=warn",
        _ => "warn",
    });
    let status = match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Inspect(args) => local::inspect(args),
        Command::New(args) => new::run(args),
        Command::Build(args) => build::run(args),
        Command::Run(args) => local::run(args),
        Command::Keygen(args) => sign::keygen(args),
        Command::Sign(args) => sign::sign(args),
        Command::User(command) => user::run(command),
        Command::Usage(args) => usage::run(args),
        Command::Login(args) => login::login(args),
        Command::Logout(args) => login::logout(args),
        Command::Dev(args) => dev::run(args),
        Command::Push(args) => push::run(args),
        Command::Modules(command) => lists::modules(command),
        Command::Jobs(command) => lists::jobs(command),
        Command::Executions(command) => lists::executions(command),
        Command::Job(command) => jobs::run(command),
        Command::Logs(args) => runs::logs(args),
        Command::Cancel(args) => runs::cancel(args),
        Command::Events(command) => runs::events(command),
        Command::Bench(BenchCommand::Runtime(args)) => bench::run(args),
        Command::Bench(BenchCommand::Server(args)) => bench_server::run(args),
        Command::Bench(BenchCommand::History(args)) => bench_history::run(args),
    };
    status.into()
}

fn init_tracing(default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("RUNCELL_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// A tokio runtime for a command-line verb.
fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime can be built")
}
