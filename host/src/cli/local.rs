//! `runcell inspect` and `runcell run`: a module author's loop, with no server involved.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::{ExitStatus, kv_file};
use crate::domain::{
    FailureKind, Grants, HostPattern, Limits, LogEntry, Outcome, RunReport, parse_byte_size,
};
use crate::runtime::host::{BackendError, EventSink, MemoryKeyValue, MemoryMetricsSink};
use crate::runtime::{
    HostServices, IpNetwork, LoadError, LoadedModule, OutboundSettings, RunRequest, Runtime,
    RuntimeConfig,
};

#[derive(Debug, Args)]
pub(super) struct InspectArgs {
    /// The module: a `.wasm` component.
    module: PathBuf,
    #[command(flatten)]
    cache: CacheArgs,
}

#[derive(Debug, Args)]
pub(super) struct CacheArgs {
    /// Where compiled modules are cached [default: $XDG_CACHE_HOME/runcell/artifacts].
    #[arg(long, env = "RUNCELL_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Compile every time instead of using the cache.
    #[arg(long)]
    no_cache: bool,
}

impl CacheArgs {
    fn dir(&self) -> Option<PathBuf> {
        if self.no_cache {
            return None;
        }
        self.cache_dir.clone().or_else(super::default_cache_dir)
    }
}

#[derive(Debug, Args)]
pub(super) struct RunArgs {
    /// The module: a `.wasm` component.
    module: PathBuf,
    /// The job to run, as named in the module's manifest (see `runcell inspect`).
    job: String,
    /// The job's input as JSON text.
    #[arg(long, conflicts_with = "input_file")]
    input: Option<String>,
    /// Read the job's input from a JSON file (`-` for stdin).
    #[arg(long)]
    input_file: Option<PathBuf>,
    /// Fuel the run may burn: guest instructions, roughly 11 to 24 million per CPU
    /// millisecond of compiled Rust [default: the job's hint, else 8000000000].
    #[arg(long)]
    fuel: Option<u64>,
    /// Wall-clock limit, e.g. 500ms, 2s, 1m [default: the job's hint, else 30s].
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Memory limit, e.g. 64MiB [default: 64MiB].
    #[arg(long, value_parser = parse_byte_size)]
    memory: Option<u64>,
    /// A setting the job reads through `config`, as KEY=VALUE (repeatable).
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_setting)]
    settings: Vec<(String, String)>,
    /// Also let the job call this host over HTTP, beyond the hosts its manifest asks for:
    /// `api.example.com`, `*.example.com`, `127.0.0.1:8080` (repeatable). Without a
    /// port, only ports 80 and 443.
    #[arg(long = "allow-host", value_name = "PATTERN", value_parser = parse_host_pattern)]
    allow_hosts: Vec<String>,
    /// Let HTTP reach loopback and private-network addresses (127.0.0.0/8, 10.0.0.0/8,
    /// 192.168.0.0/16, ...), e.g. a server on this machine. Link-local and cloud
    /// metadata addresses stay closed.
    #[arg(long)]
    allow_private: bool,
    /// A JSON object file standing in for the module's key-value store: read before the
    /// run, written back after it (whatever its outcome, as a server keeps a failed run's
    /// writes); created if missing. Values are JSON; bytes a job stores that are not JSON
    /// are kept as `{"$base64": "..."}`.
    #[arg(long, value_name = "FILE")]
    kv: Option<PathBuf>,
    /// Let the job publish on this topic (or `prefix.*` pattern) instead of the topics its
    /// manifest asks for, as an operator's grant would (repeatable). Every published
    /// event is printed to stderr as it happens; a publish on any other topic is refused
    /// as on a server.
    #[arg(long = "event", value_name = "TOPIC", value_parser = parse_topic)]
    events: Vec<String>,
    /// Let HTTP reach this address or network, whatever its kind, e.g. 127.0.0.1 or
    /// 10.1.0.0/16 (repeatable).
    #[arg(long = "allow-address", value_name = "ADDRESS[/PREFIX]")]
    allow_addresses: Vec<IpNetwork>,
    #[command(flatten)]
    cache: CacheArgs,
}

fn parse_topic(text: &str) -> Result<String, String> {
    if text.trim().is_empty() || text.chars().any(char::is_whitespace) {
        return Err("a topic is dot-separated words, e.g. report.generated or report.*".into());
    }
    Ok(text.to_owned())
}

fn parse_host_pattern(text: &str) -> Result<String, String> {
    HostPattern::parse(text)
        .map(|pattern| pattern.to_string())
        .map_err(|err| err.to_string())
}

fn parse_setting(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("`{text}` is not KEY=VALUE"))
}

pub(super) struct LocalRuntime {
    pub(super) runtime: Runtime,
    kv: Arc<MemoryKeyValue>,
    metrics: Arc<MemoryMetricsSink>,
}

/// Prints each event a local run publishes to stderr as it happens, between the job's
/// log lines, so the author sees what a server's subscribers would receive.
struct PrintedEvents;

#[async_trait::async_trait]
impl EventSink for PrintedEvents {
    async fn publish(
        &self,
        _source_module: &str,
        _execution_id: &str,
        topic: &str,
        payload: serde_json::Value,
    ) -> Result<Vec<String>, BackendError> {
        eprintln!("event  {topic} {payload}");
        Ok(Vec::new())
    }
}

pub(super) fn local_runtime(
    cache: &CacheArgs,
    outbound: OutboundSettings,
) -> Result<LocalRuntime, ExitStatus> {
    let kv = Arc::new(MemoryKeyValue::default());
    let metrics = Arc::new(MemoryMetricsSink::default());
    let services = HostServices {
        kv: kv.clone(),
        events: Arc::new(PrintedEvents),
        metrics: metrics.clone(),
    };
    let config = RuntimeConfig {
        engine: crate::runtime::EngineSettings {
            max_concurrent_instances: 4,
            // One run on one thread: a second engine would only cost start-up time.
            lanes: 1,
            ..Default::default()
        },
        cache_dir: cache.dir(),
        outbound,
    };
    let runtime = Runtime::new(config, services).map_err(|err| {
        eprintln!("error: {err}");
        ExitStatus::Environment
    })?;
    Ok(LocalRuntime {
        runtime,
        kv,
        metrics,
    })
}

pub(super) async fn load(runtime: &Runtime, path: &Path) -> Result<Arc<LoadedModule>, ExitStatus> {
    let bytes = tokio::fs::read(path).await.map_err(|err| {
        eprintln!("error: cannot read {}: {err}", path.display());
        ExitStatus::Environment
    })?;
    runtime.load(Arc::from(bytes)).await.map_err(|err| {
        eprintln!("error: {}: {}", path.display(), describe_load_error(&err));
        ExitStatus::InvalidModule
    })
}

fn describe_load_error(err: &LoadError) -> String {
    err.to_string()
}

pub(super) fn inspect(args: InspectArgs) -> ExitStatus {
    super::tokio_runtime().block_on(async {
        let local = match local_runtime(&args.cache, OutboundSettings::default()) {
            Ok(local) => local,
            Err(status) => return status,
        };
        let module = match load(&local.runtime, &args.module).await {
            Ok(module) => module,
            Err(status) => return status,
        };
        let json =
            serde_json::to_string_pretty(&module.manifest).expect("a manifest always serializes");
        println!("{json}");
        ExitStatus::Success
    })
}

pub(super) fn run(args: RunArgs) -> ExitStatus {
    let input = match read_input(&args) {
        Ok(input) => input,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitStatus::Usage;
        }
    };
    let outbound = OutboundSettings {
        allow_private: args.allow_private,
        allowed_networks: args.allow_addresses.clone(),
        ..OutboundSettings::default()
    };
    super::tokio_runtime().block_on(async {
        let local = match local_runtime(&args.cache, outbound) {
            Ok(local) => local,
            Err(status) => return status,
        };
        let module = match load(&local.runtime, &args.module).await {
            Ok(module) => module,
            Err(status) => return status,
        };
        let limits = Limits::default().resolve(
            args.fuel,
            args.timeout,
            args.memory,
            module.manifest.job(&args.job),
        );
        if let Err(err) = limits.check_within(&Limits::default_ceiling()) {
            eprintln!("error: {err}");
            return ExitStatus::Usage;
        }
        // A local run is the author running their own module: grant what it asks for,
        // and the hosts the author adds for this run (a local stand-in for an API).
        let mut grants = Grants::as_requested(&module.manifest.capabilities);
        grants
            .outbound_hosts
            .extend(args.allow_hosts.iter().cloned());
        if !args.events.is_empty() {
            grants.publishes = args.events.clone();
        }
        let module_name = module.manifest.name.as_str();
        if let Some(path) = &args.kv
            && let Err(message) = kv_file::load(path, module_name, &local.kv).await
        {
            eprintln!("error: {message}");
            return ExitStatus::Environment;
        }
        let mut request = RunRequest::new(&args.job, input, limits);
        request.grants = Arc::new(grants);
        request.config = Arc::new(args.settings.iter().cloned().collect::<BTreeMap<_, _>>());
        request.context.execution_id = "local".into();
        request.log_observer = Some(Arc::new(|entry: &LogEntry| {
            eprintln!("{}", format_log_line(entry));
        }));
        let report = local.runtime.run(&module, request).await;
        if let Some(path) = &args.kv
            && let Err(message) = kv_file::save(path, module_name, &local.kv).await
        {
            eprintln!("error: {message}");
            return ExitStatus::Environment;
        }
        for (_, sample) in local.metrics.take() {
            let labels: Vec<String> = sample
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            eprintln!(
                "metric {} {} {}",
                sample.name,
                sample.value,
                labels.join(" ")
            );
        }
        finish(&report)
    })
}

fn read_input(args: &RunArgs) -> Result<String, String> {
    let text = match (&args.input, &args.input_file) {
        (Some(text), _) => text.clone(),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .map_err(|err| format!("cannot read input from stdin: {err}"))?;
            text
        }
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|err| format!("cannot read {}: {err}", path.display()))?,
        (None, None) => "null".into(),
    };
    serde_json::from_str::<serde::de::IgnoredAny>(&text)
        .map_err(|err| format!("--input is not JSON: {err}"))?;
    Ok(text)
}

/// `INFO  message key=value ...`, one line per entry.
fn format_log_line(entry: &LogEntry) -> String {
    let mut line = format!(
        "{:<5} {}",
        entry.level.as_str().to_uppercase(),
        entry.message
    );
    for (key, value) in &entry.fields {
        match value {
            serde_json::Value::String(s) => line.push_str(&format!(" {key}={s}")),
            other => line.push_str(&format!(" {key}={other}")),
        }
    }
    line
}

fn finish(report: &RunReport) -> ExitStatus {
    let usage = &report.usage;
    let summary = format!(
        "{:.2} ms wall · {:.2} ms CPU · {} fuel · {} peak memory",
        usage.wall_time.as_secs_f64() * 1000.0,
        usage.cpu_time.as_secs_f64() * 1000.0,
        usage.fuel_consumed,
        bytesize::ByteSize(usage.memory_peak_bytes).display().iec(),
    );
    match &report.outcome {
        Outcome::Completed { output } => {
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "{output}");
            eprintln!("completed: {summary}");
            ExitStatus::Success
        }
        outcome => {
            eprintln!("error: {}", outcome.summary());
            eprintln!("usage: {summary}");
            match outcome {
                Outcome::Failed { kind, .. } => match kind {
                    FailureKind::InvalidInput | FailureKind::Transient | FailureKind::Permanent => {
                        ExitStatus::JobFailed
                    }
                    FailureKind::OutOfFuel
                    | FailureKind::MemoryLimitExceeded
                    | FailureKind::OutputTooLarge => ExitStatus::LimitExceeded,
                    FailureKind::Trap | FailureKind::InvalidOutput | FailureKind::HostError => {
                        ExitStatus::Trapped
                    }
                    FailureKind::UnknownJob => ExitStatus::Usage,
                },
                Outcome::TimedOut { .. } => ExitStatus::LimitExceeded,
                Outcome::Cancelled | Outcome::Completed { .. } => ExitStatus::JobFailed,
            }
        }
    }
}
