//! `runcell serve`: the server. Every flag also reads from a `RUNCELL_*` variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::ExitStatus;
use crate::app::{
    AuthConfig, DistributedConfig, Secret, SecretKeySource, ServeConfig, default_cpu_guests,
    default_workers,
};
use crate::runtime::OutboundTls;
use crate::services::Capacity;
use crate::services::RouteSettings;

#[derive(Debug, Args)]
pub(super) struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "RUNCELL_LISTEN", default_value = "127.0.0.1:4000")]
    listen: SocketAddr,
    /// Also serve `GET /metrics` (Prometheus) on this address, without a token: for a
    /// Prometheus on a private network. On --listen, `/metrics` needs a token of any role
    /// like the rest of the API (a `viewer` API token is enough).
    #[arg(long, env = "RUNCELL_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Where the embedded database and compiled modules live.
    #[arg(long, env = "RUNCELL_DATA_DIR", default_value = "./runcell-data")]
    data_dir: PathBuf,
    /// Executions in flight at once [default: 256, fewer on a machine with under 2 GiB
    /// of memory]. A run waiting on the network holds one but no CPU. One of them always
    /// stands by for the queue; the others also start runs requested of this node at once.
    #[arg(long, env = "RUNCELL_WORKERS")]
    workers: Option<usize>,
    /// Guests running their code at once [default: one per core]; the other executions in
    /// flight wait for a CPU, and that wait does not count against their time limit.
    #[arg(long, env = "RUNCELL_CPU_GUESTS")]
    cpu_guests: Option<usize>,
    /// Modules compiled at once; other uploads (and loads of modules this node has not
    /// compiled yet) wait their turn. A compilation already uses every core, and a large
    /// component's takes hundreds of MiB while it runs.
    #[arg(long, env = "RUNCELL_MAX_COMPILATIONS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    max_compilations: u32,
    /// How many times a minute events may start each job (per node; a burst up to this
    /// many passes at once). Past it, an event does not start the job and says so; with
    /// the limit on how deep a chain of events may go, this keeps a pattern of events that
    /// feeds itself from filling the database.
    #[arg(long, env = "RUNCELL_EVENT_TRIGGERS_PER_MINUTE", default_value_t = 600, value_parser = clap::value_parser!(u32).range(1..))]
    event_triggers_per_minute: u32,
    /// Install every `.wasm` module in this directory at start, with a job for each of
    /// their jobs on its default schedule, plus a demo job.
    #[arg(long, env = "RUNCELL_EXAMPLES")]
    examples: Option<PathBuf>,
    /// Delay before the first retry of a failed execution; later ones double it.
    #[arg(long, env = "RUNCELL_RETRY_BASE_DELAY", default_value = "1s", value_parser = humantime::parse_duration)]
    retry_base_delay: Duration,
    /// On SIGTERM, how long running executions may finish before being requeued.
    #[arg(long, env = "RUNCELL_SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
    /// Password of the `admin` user created on first start (when no user exists); a
    /// strong one is generated and printed once when unset.
    #[arg(long, env = "RUNCELL_ADMIN_PASSWORD", hide_env_values = true, value_parser = secret)]
    admin_password: Option<Secret>,
    /// HS256 key that signs access tokens (at least 32 bytes); generated and kept in the
    /// data directory when unset. Every node of a deployment needs the same one.
    #[arg(long, env = "RUNCELL_JWT_SECRET", hide_env_values = true, value_parser = secret)]
    jwt_secret: Option<Secret>,
    /// Key that encrypts jobs' secret settings: base64 of 32 random bytes (`openssl rand
    /// -base64 32`). Embedded, one is generated and kept in the data directory when unset;
    /// distributed, every node needs the same one, and without it secrets cannot be set or
    /// read. Changing it makes the secrets stored under the old one unreadable.
    #[arg(long, env = "RUNCELL_SECRET_KEY", hide_env_values = true, value_parser = secret, conflicts_with = "secret_key_file")]
    secret_key: Option<Secret>,
    /// A file holding the key of --secret-key (a mounted secret), instead of the key itself.
    #[arg(long, env = "RUNCELL_SECRET_KEY_FILE")]
    secret_key_file: Option<PathBuf>,
    /// How long an access token is valid.
    #[arg(long, env = "RUNCELL_ACCESS_TOKEN_TTL", default_value = "15m", value_parser = humantime::parse_duration)]
    access_token_ttl: Duration,
    /// PostgreSQL of a distributed deployment (with --redis-url): every node of the
    /// deployment points at the same database.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_parser = secret, requires = "redis_url")]
    database_url: Option<Secret>,
    /// Redis of a distributed deployment (with --database-url): the queue and the relay
    /// of live logs between nodes.
    #[arg(long, env = "REDIS_URL", hide_env_values = true, value_parser = secret, requires = "database_url")]
    redis_url: Option<Secret>,
    /// Prefix of every Redis key of this deployment (several deployments may share one
    /// Redis).
    #[arg(long, env = "RUNCELL_REDIS_PREFIX", default_value = "runcell")]
    redis_prefix: String,
    /// This node's name in listings and leases [default: host name and a random suffix].
    #[arg(long, env = "RUNCELL_NODE_ID")]
    node_id: Option<String>,
    /// How long an execution stays with the node running it without a renewal; when a
    /// node dies, its executions are retried or failed after this.
    #[arg(long, env = "RUNCELL_EXECUTION_LEASE", default_value = "30s", value_parser = humantime::parse_duration)]
    execution_lease: Duration,
    /// A non-public network or address modules' outbound HTTP may reach (`10.1.0.0/16`,
    /// `127.0.0.1`); repeat, or comma-separate in the variable. Loopback, private,
    /// link-local and metadata addresses are closed otherwise; this server's own address
    /// always is.
    #[arg(
        long = "outbound-allow",
        env = "RUNCELL_OUTBOUND_ALLOW",
        value_delimiter = ','
    )]
    outbound_allow: Vec<crate::runtime::IpNetwork>,
    /// PEM certificates of CAs outbound https trusts besides the public web's roots (an
    /// internal CA).
    #[arg(long, env = "RUNCELL_OUTBOUND_CA_FILE")]
    outbound_ca_file: Option<PathBuf>,
    /// How long a request to a module's HTTP routes (`/m/{module}/...`) may take.
    #[arg(long, env = "RUNCELL_ROUTE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    route_timeout: Duration,
    /// Requests to one module's HTTP routes served at once (at most 64); more are
    /// answered 503.
    #[arg(long, env = "RUNCELL_ROUTE_CONCURRENCY", default_value_t = RouteSettings::default().per_module_concurrency)]
    route_concurrency: usize,
    /// How long final executions (with their logs) are kept, from their creation. A job
    /// may keep its own (`retainDays`, `retainLast`). Usage totals outlive them.
    #[arg(long, env = "RUNCELL_RETAIN_EXECUTIONS", default_value = "30d", value_parser = humantime::parse_duration)]
    retain_executions: Duration,
    /// How long execution logs are kept, when they should go before their executions
    /// (default: as long as the executions).
    #[arg(long, env = "RUNCELL_RETAIN_LOGS", value_parser = humantime::parse_duration)]
    retain_logs: Option<Duration>,
    /// How long usage points of one minute are kept.
    #[arg(long, env = "RUNCELL_RETAIN_USAGE_MINUTES", default_value = "2d", value_parser = humantime::parse_duration)]
    retain_usage_minutes: Duration,
    /// How long usage points of one hour are kept.
    #[arg(long, env = "RUNCELL_RETAIN_USAGE_HOURS", default_value = "90d", value_parser = humantime::parse_duration)]
    retain_usage_hours: Duration,
    /// How long usage points of one day are kept.
    #[arg(long, env = "RUNCELL_RETAIN_USAGE_DAYS", default_value = "1095d", value_parser = humantime::parse_duration)]
    retain_usage_days: Duration,
    /// How long endpoint monitors' checks are kept, from when they were due.
    #[arg(long, env = "RUNCELL_RETAIN_CHECKS", default_value = "30d", value_parser = humantime::parse_duration)]
    retain_checks: Duration,
    /// The shortest interval an endpoint monitor may be checked at. Each check is a
    /// request to someone's server from this deployment: ten seconds keeps a monitor from
    /// turning into a load generator. Lower it for a lab or a test deployment.
    #[arg(long, env = "RUNCELL_ENDPOINT_MIN_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    endpoint_min_interval: Duration,
    /// How long alert history, sent notifications and ended silences are kept.
    #[arg(long, env = "RUNCELL_RETAIN_ALERTS", default_value = "90d", value_parser = humantime::parse_duration)]
    retain_alerts: Duration,
    /// How often alert rules are evaluated (by one node of a deployment at a time).
    #[arg(long, env = "RUNCELL_ALERT_EVERY", default_value = "30s", value_parser = humantime::parse_duration)]
    alert_every: Duration,
    /// How often expired history is pruned (by one node of a deployment at a time).
    #[arg(long, env = "RUNCELL_PRUNE_EVERY", default_value = "1m", value_parser = humantime::parse_duration)]
    prune_every: Duration,
    /// How long a refresh token is valid (each refresh issues a new one).
    #[arg(long, env = "RUNCELL_REFRESH_TOKEN_TTL", default_value = "14d", value_parser = humantime::parse_duration)]
    refresh_token_ttl: Duration,
}

/// Keeps a secret argument out of `Debug` output from the moment it is parsed.
fn secret(value: &str) -> Result<Secret, String> {
    Ok(Secret::new(value.to_owned()))
}

pub(super) fn run(args: ServeArgs) -> ExitStatus {
    let workers = args.workers.unwrap_or_else(default_workers);
    if workers == 0 {
        eprintln!("error: --workers must be at least 1");
        return ExitStatus::Usage;
    }
    let cpu_guests = args.cpu_guests.unwrap_or_else(default_cpu_guests);
    if cpu_guests == 0 {
        eprintln!("error: --cpu-guests must be at least 1");
        return ExitStatus::Usage;
    }
    if args.endpoint_min_interval < Duration::from_secs(1) {
        eprintln!("error: --endpoint-min-interval must be at least 1s");
        return ExitStatus::Usage;
    }
    if args.alert_every < Duration::from_secs(1) {
        eprintln!("error: --alert-every must be at least 1s");
        return ExitStatus::Usage;
    }
    if args.prune_every.is_zero() {
        eprintln!("error: --prune-every must be longer than zero");
        return ExitStatus::Usage;
    }
    let defaults = RouteSettings::default();
    if !(1..=defaults.total_concurrency).contains(&args.route_concurrency) {
        eprintln!(
            "error: --route-concurrency must be between 1 and {}",
            defaults.total_concurrency
        );
        return ExitStatus::Usage;
    }
    let routes = RouteSettings {
        limits: crate::domain::Limits {
            timeout: args.route_timeout,
            ..defaults.limits
        },
        per_module_concurrency: args.route_concurrency,
        ..defaults
    };
    let outbound_tls = match &args.outbound_ca_file {
        None => OutboundTls::default(),
        Some(path) => match std::fs::read(path)
            .map_err(|err| err.to_string())
            .and_then(|pem| OutboundTls::with_extra_roots_pem(&pem).map_err(|e| e.to_string()))
        {
            Ok(tls) => tls,
            Err(reason) => {
                eprintln!("error: --outbound-ca-file {}: {reason}", path.display());
                return ExitStatus::Usage;
            }
        },
    };
    let config = ServeConfig {
        listen: args.listen,
        metrics_listen: args.metrics_listen,
        data_dir: args.data_dir,
        capacity: Capacity {
            workers,
            cpu_guests,
            compilations: args.max_compilations as usize,
        },
        examples: args.examples,
        event_triggers_per_minute: args.event_triggers_per_minute,
        retry_base_delay: args.retry_base_delay,
        shutdown_grace: args.shutdown_grace,
        distributed: match (args.database_url, args.redis_url) {
            (Some(database_url), Some(redis_url)) => Some(DistributedConfig {
                database_url,
                redis_url,
                redis_prefix: args.redis_prefix,
            }),
            _ => None,
        },
        node_id: args.node_id,
        execution_lease: args.execution_lease,
        outbound_allowed_networks: args.outbound_allow,
        outbound_tls,
        routes,
        retention: crate::domain::retention::Retention {
            executions: args.retain_executions,
            logs: args.retain_logs.unwrap_or(args.retain_executions),
            usage_minutes: args.retain_usage_minutes,
            usage_hours: args.retain_usage_hours,
            usage_days: args.retain_usage_days,
            endpoint_checks: args.retain_checks,
            alerts: args.retain_alerts,
        },
        alert_every: args.alert_every,
        endpoint_min_interval: args.endpoint_min_interval,
        prune_every: args.prune_every,
        secret_key: match (args.secret_key, args.secret_key_file) {
            (Some(key), _) => SecretKeySource::Value(key),
            (None, Some(path)) => SecretKeySource::File(path),
            (None, None) => SecretKeySource::Unset,
        },
        auth: AuthConfig {
            admin_password: args.admin_password,
            jwt_secret: args.jwt_secret,
            access_ttl: Some(args.access_token_ttl),
            refresh_ttl: Some(args.refresh_token_ttl),
        },
    };
    match super::tokio_runtime().block_on(crate::app::serve(config)) {
        Ok(()) => ExitStatus::Success,
        Err(err) => {
            eprintln!("error: {err}");
            ExitStatus::Environment
        }
    }
}
