//! The `runcell` command line: parses arguments once, at the edge, and hands typed values
//! to the verbs. Exit codes are part of the interface (see [`ExitStatus`]).

mod bench;
mod local;

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
    /// Print a module's manifest (name, version, jobs, requested capabilities) as JSON.
    Inspect(local::InspectArgs),
    /// Run one job of a module locally, without a server: output JSON on stdout, logs
    /// and a usage summary on stderr.
    Run(local::RunArgs),
    /// Measure the runtime: per-run overhead of a no-op job and module load times.
    Bench(bench::BenchArgs),
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
    /// Something outside the module failed (a file could not be read, ...).
    Environment = 6,
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
    init_tracing();
    let status = match cli.command {
        Command::Inspect(args) => local::inspect(args),
        Command::Run(args) => local::run(args),
        Command::Bench(args) => bench::run(args),
    };
    status.into()
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("RUNCELL_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// A tokio runtime for a command-line verb.
fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime can be built")
}
