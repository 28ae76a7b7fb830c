//! `runcell serve`: the server. Every flag also reads from a `RUNCELL_*` variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::ExitStatus;
use crate::app::{ServeConfig, default_workers};

#[derive(Debug, Args)]
pub(super) struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "RUNCELL_LISTEN", default_value = "127.0.0.1:4000")]
    listen: SocketAddr,
    /// Where the embedded database and compiled modules live.
    #[arg(long, env = "RUNCELL_DATA_DIR", default_value = "./runcell-data")]
    data_dir: PathBuf,
    /// Executions running at once [default: 4 × cores].
    #[arg(long, env = "RUNCELL_WORKERS")]
    workers: Option<usize>,
    /// Install every `.wasm` module in this directory at start, plus a demo job.
    #[arg(long, env = "RUNCELL_EXAMPLES")]
    examples: Option<PathBuf>,
    /// Delay before the first retry of a failed execution; later ones double it.
    #[arg(long, env = "RUNCELL_RETRY_BASE_DELAY", default_value = "1s", value_parser = humantime::parse_duration)]
    retry_base_delay: Duration,
    /// On SIGTERM, how long running executions may finish before being requeued.
    #[arg(long, env = "RUNCELL_SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
}

pub(super) fn run(args: ServeArgs) -> ExitStatus {
    let workers = args.workers.unwrap_or_else(default_workers);
    if workers == 0 {
        eprintln!("error: --workers must be at least 1");
        return ExitStatus::Usage;
    }
    let config = ServeConfig {
        listen: args.listen,
        data_dir: args.data_dir,
        workers,
        examples: args.examples,
        retry_base_delay: args.retry_base_delay,
        shutdown_grace: args.shutdown_grace,
    };
    match super::tokio_runtime().block_on(crate::app::serve(config)) {
        Ok(()) => ExitStatus::Success,
        Err(err) => {
            eprintln!("error: {err}");
            ExitStatus::Environment
        }
    }
}
