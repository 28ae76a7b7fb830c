//! The composition root: the only code that sees every part. Builds the store, queue,
//! runtime and services from a [`ServeConfig`], starts the workers, scheduler, endpoint
//! checker, alerter and reconciler, serves the API, and shuts everything down in order.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::domain::{NODE_HEARTBEAT_EVERY, NodeHeartbeat, RetryPolicy, now_millis};
use crate::queue::{
    LogRelay, MemoryQueue, Queue, RedisLogRelay, RedisLogRelayConfig, RedisQueue, RedisQueueConfig,
};
use crate::reconciler::{Reconciler, ReconcilerSettings};
use crate::runtime::OutboundSettings;
use crate::services::LogHub as LiveLogs;
use crate::services::auth::jwt::{KeyError, SigningKey};
use crate::services::auth::{AuthService, AuthSettings, random_secret};
use crate::services::secrets::SecretBox;
use crate::services::{Capacity, JobDraft, ServiceSettings, Services};
use crate::store::{AuthStore, PostgresStore, SqliteStore, Store};
use crate::worker::{WorkerPool, WorkerSettings};

/// Everything `runcell serve` needs, parsed once at the edge.
#[derive(Debug, Clone)]
pub(crate) struct ServeConfig {
    pub listen: SocketAddr,
    /// Where `GET /metrics` is also served, without a token.
    pub metrics_listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    /// Runs in flight at once (worker slots), and guests running their code at once.
    pub capacity: Capacity,
    /// A directory of `.wasm` modules to install at start, with a demo job.
    pub examples: Option<PathBuf>,
    pub retry_base_delay: Duration,
    pub shutdown_grace: Duration,
    pub auth: AuthConfig,
    /// PostgreSQL + Redis instead of the embedded database and in-process queue.
    pub distributed: Option<DistributedConfig>,
    /// This node's name in the deployment; generated when absent.
    pub node_id: Option<String>,
    /// How long a claimed execution stays this node's without a renewal.
    pub execution_lease: Duration,
    /// Non-public addresses modules' outbound HTTP may reach (an internal API, a test
    /// server); this server's own listen address is never among them.
    pub outbound_allowed_networks: Vec<crate::runtime::IpNetwork>,
    /// The roots outbound https checks certificates against.
    pub outbound_tls: crate::runtime::OutboundTls,
    /// What requests to modules' HTTP routes may use.
    pub routes: crate::services::RouteSettings,
    /// How often events may start each job, per minute and node.
    pub event_triggers_per_minute: u32,
    /// The key that seals jobs' secret settings.
    pub secret_key: SecretKeySource,
    /// How long history is kept, and how often it is pruned.
    pub retention: crate::domain::retention::Retention,
    pub prune_every: Duration,
    /// The shortest interval an endpoint monitor may be checked at.
    pub endpoint_min_interval: Duration,
    /// How often alert rules are evaluated.
    pub alert_every: Duration,
}

/// Where the key that seals jobs' secret settings comes from: base64 of 32 bytes.
#[derive(Debug, Clone, Default)]
pub(crate) enum SecretKeySource {
    /// Embedded: a key generated once into the data directory. Distributed: none, since
    /// keeping it in the database beside the ciphertexts would protect nothing; secrets
    /// can then be neither set nor read.
    #[default]
    Unset,
    /// `RUNCELL_SECRET_KEY`.
    Value(Secret),
    /// `RUNCELL_SECRET_KEY_FILE`: a file holding the key (a mounted secret).
    File(PathBuf),
}

/// Where the nodes of a distributed deployment meet.
#[derive(Debug, Clone)]
pub(crate) struct DistributedConfig {
    pub database_url: Secret,
    pub redis_url: Secret,
    /// Prefix of every Redis key; one deployment, one prefix.
    pub redis_prefix: String,
}

/// How the server authenticates.
#[derive(Debug, Clone, Default)]
pub(crate) struct AuthConfig {
    /// The first-start `admin` password; generated and printed once when absent.
    pub admin_password: Option<Secret>,
    /// The HS256 signing key; generated and kept in the data directory when absent.
    pub jwt_secret: Option<Secret>,
    pub access_ttl: Option<Duration>,
    pub refresh_ttl: Option<Duration>,
}

/// A configured secret: usable, never printed (`Debug` shows `***`).
#[derive(Clone)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn new(value: String) -> Self {
        Self(value)
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Where the generated JWT signing key of an embedded deployment is kept.
const JWT_SECRET_FILE: &str = "jwt-secret";
/// Where the generated key sealing the secret settings of an embedded deployment is kept:
/// beside the database, so it protects a copy of the database (a backup, a raw row read),
/// not a copy of the whole data directory.
const SECRET_KEY_FILE: &str = "secret-key";

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "another runcell process is using data directory {0}; stop it, or give this one another --data-dir"
    )]
    DataDirInUse(PathBuf),
    #[error("cannot open the database: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("RUNCELL_JWT_SECRET: {0}")]
    JwtSecret(KeyError),
    #[error("cannot use the JWT secret file {path}: {message}")]
    JwtSecretFile { path: PathBuf, message: String },
    /// Names where the key came from, never the key.
    #[error("{source_name}: {message}")]
    SecretKey {
        source_name: String,
        message: String,
    },
    #[error("cannot set up authentication: {0}")]
    Auth(#[from] crate::services::ServiceError),
    #[error("cannot use Redis: {0}")]
    Redis(#[from] crate::queue::QueueError),
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl Default for Capacity {
    fn default() -> Self {
        Self::with_workers(default_workers())
    }
}

/// The most runs a node keeps in flight by default, however large the machine.
///
/// A run in flight that waits on the network costs memory, not CPU (its guest gives its
/// CPU permit up while it waits), so the number in flight is bounded by memory and by
/// what a node should claim at once, not by cores: claims are sized to it, and a node
/// that dies leaves that many runs to the reconciler for a lease. 256 runs that each wait
/// 1 s on a slow endpoint get through 1,000 in 4.4–4.7 s (`runcell bench server`,
/// BENCHMARKS.md), where the former default of 4 × cores (8 on two cores) took 125 s.
const DEFAULT_WORKERS_CAP: usize = 256;

/// The memory one run in flight is budgeted at when the default is sized to a small
/// machine. A run of `endpoint-monitor` waiting on its request measured 0.15–0.23 MiB of
/// resident memory (its store, fiber stack, touched linear memory and connection: the
/// server's growth with 256 and 1,000 such runs in flight, BENCHMARKS.md); a guest that
/// touches more memory costs more, and a slot the pooling allocator has used keeps up to
/// 2 MiB of linear memory resident for the next run.
const MEMORY_PER_RUN_IN_FLIGHT: u64 = 2 * 1024 * 1024;

/// The share of the machine's memory (or of the process's cgroup limit) the default
/// number of runs in flight may be budgeted at; the rest is left to the database cache,
/// compiled modules, the guests' own growth and everything else on the machine.
const MEMORY_SHARE_FOR_RUNS: u64 = 4;

/// The default number of runs in flight: [`DEFAULT_WORKERS_CAP`], fewer on a machine whose
/// memory would not hold that many (see [`MEMORY_PER_RUN_IN_FLIGHT`]), never fewer than
/// four per core.
pub(crate) fn default_workers() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let by_memory = memory_limit().map_or(DEFAULT_WORKERS_CAP, |bytes| {
        usize::try_from(bytes / MEMORY_SHARE_FOR_RUNS / MEMORY_PER_RUN_IN_FLIGHT)
            .unwrap_or(usize::MAX)
    });
    by_memory.min(DEFAULT_WORKERS_CAP).max(cores * 4)
}

/// The default number of guests running their code at once: one per core.
pub(crate) fn default_cpu_guests() -> usize {
    crate::runtime::EngineSettings::default().cpu_guests
}

/// The memory this process may use: the machine's, or its cgroup's limit if lower.
/// `None` where neither can be read.
fn memory_limit() -> Option<u64> {
    let machine = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| mem_total(&info));
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .into_iter()
    .find_map(|path| std::fs::read_to_string(path).ok())
    .and_then(|limit| limit.trim().parse::<u64>().ok());
    match (machine, cgroup) {
        (Some(machine), Some(cgroup)) => Some(machine.min(cgroup)),
        (machine, cgroup) => machine.or(cgroup),
    }
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Runs the server until SIGTERM or Ctrl-C.
pub(crate) async fn serve(config: ServeConfig) -> Result<(), StartError> {
    prepare_data_dir(&config.data_dir, config.distributed.is_none())?;
    let node_id = config.node_id.clone().unwrap_or_else(default_node_id);
    let backend = open_backend(&config, &node_id).await?;
    // Bound first: their real addresses (port 0 picks one) must be closed to modules.
    let (listener, addr) = bind(config.listen).await?;
    let metrics_listener = match config.metrics_listen {
        Some(metrics_addr) => Some(bind(metrics_addr).await?),
        None => None,
    };
    let mut own_addresses = vec![addr];
    own_addresses.extend(metrics_listener.as_ref().map(|(_, addr)| *addr));
    let outbound = OutboundSettings {
        allowed_networks: config.outbound_allowed_networks.clone(),
        own_addresses,
        tls: config.outbound_tls.clone(),
        ..OutboundSettings::default()
    };
    let mut services = Services::new(
        backend.store.clone(),
        backend.queue,
        Some(config.data_dir.join("cache")),
        config.capacity,
        outbound,
        ServiceSettings {
            routes: config.routes.clone(),
            event_triggers_per_minute: config.event_triggers_per_minute,
            endpoint_min_interval: config.endpoint_min_interval,
            node_id: node_id.clone(),
            ..ServiceSettings::default()
        },
    )?;
    if let Some(relay) = backend.log_relay {
        services.logs = LiveLogs::with_relay(relay);
    }
    services.secrets = secret_box(
        &config.secret_key,
        &config.data_dir,
        config.distributed.is_some(),
    )?;
    if services.secrets.is_none() {
        tracing::warn!(
            "no RUNCELL_SECRET_KEY: jobs' secret settings can be neither set nor read on this node"
        );
    }
    let key = match &config.auth.jwt_secret {
        Some(secret) => {
            SigningKey::from_secret(secret.expose().as_bytes()).map_err(StartError::JwtSecret)?
        }
        // Every node must sign with the same key, so a distributed deployment keeps the
        // generated one in its database (first node wins).
        None if config.distributed.is_some() => {
            let secret = backend
                .auth_store
                .shared_secret("jwt-signing-key", &random_secret(32))
                .await?;
            SigningKey::from_secret(secret.as_bytes()).map_err(StartError::JwtSecret)?
        }
        None => load_or_create_key_file(&config.data_dir.join(JWT_SECRET_FILE))?,
    };
    let auth = build_auth(backend.auth_store, key, &config.auth).await?;
    let retry = RetryPolicy {
        base_delay: config.retry_base_delay,
        ..RetryPolicy::default()
    };
    let worker_settings = WorkerSettings {
        concurrency: config.capacity.workers,
        retry,
        lease: config.execution_lease,
        node_id: node_id.clone(),
        ..WorkerSettings::default()
    };

    if let Some(dir) = &config.examples {
        install_examples(&services, dir).await;
    }
    let sole_node = config.distributed.is_none();
    let reconciler_settings = ReconcilerSettings {
        node_id: node_id.clone(),
        lease: config.execution_lease,
        retry,
    };
    let mut reconciler = Reconciler::new(services.clone(), reconciler_settings, sole_node);
    if let Err(err) = reconciler.start_up().await {
        tracing::warn!(error = %err, "start-up reconciliation failed; the periodic pass will retry");
    }

    let pool = WorkerPool::start(services.clone(), worker_settings);
    let (stop, stop_rx) = watch::channel(false);
    let scheduler = tokio::spawn(crate::scheduler::run(
        services.clone(),
        node_id.clone(),
        stop_rx.clone(),
    ));
    let monitor = tokio::spawn(crate::monitor::run(
        services.clone(),
        node_id.clone(),
        stop_rx.clone(),
    ));
    let alerter = tokio::spawn(crate::alerter::run(
        services.clone(),
        node_id.clone(),
        config.alert_every,
        stop_rx.clone(),
    ));
    let reconciler = tokio::spawn(crate::reconciler::run(reconciler, stop_rx.clone()));
    let pruner = tokio::spawn(crate::services::retention::run(
        services.clone(),
        config.retention,
        config.prune_every,
        node_id.clone(),
        stop_rx.clone(),
    ));
    let route_outbound = tokio::spawn(crate::services::usage::count_route_outbound(
        services.clone(),
        stop_rx.clone(),
    ));
    let preloader = tokio::spawn({
        let services = services.clone();
        let stop = stop_rx.clone();
        async move { services.keep_modules_loaded(stop).await }
    });
    let heartbeat = tokio::spawn(heartbeat(
        services.clone(),
        NodeHeartbeat {
            node_id: node_id.clone(),
            started_at: now_millis(),
            last_heartbeat_at: now_millis(),
            workers: config.capacity.workers as u32,
            running: 0,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        },
        stop_rx,
    ));

    let readiness = crate::api::Readiness::new();
    readiness.set_workers_running(true);
    let router = crate::api::router(crate::api::ApiState {
        services: services.clone(),
        auth,
        readiness: readiness.clone(),
    });
    println!("listening on http://{addr}");
    let metrics_server = metrics_listener.map(|(listener, metrics_addr)| {
        println!("  metrics: http://{metrics_addr}/metrics, served without a token");
        tokio::spawn(serve_metrics(listener, services.clone(), readiness.clone()))
    });
    match &config.distributed {
        Some(distributed) => println!(
            "  node: {node_id} (PostgreSQL + Redis, key prefix `{}`)",
            distributed.redis_prefix
        ),
        None => println!("  data: {}", config.data_dir.display()),
    }
    if config.examples.is_some() {
        println!(
            "  try:  curl -X POST http://{addr}/api/v1/auth/login -H 'content-type: application/json' -d '{{\"username\":\"admin\",\"password\":\"...\"}}'"
        );
        println!(
            "        curl -H 'authorization: Bearer <accessToken>' 'http://{addr}/api/v1/executions?limit=5'"
        );
        println!("        or open http://{addr}/api/docs");
    }
    tracing::info!(
        %addr,
        workers = config.capacity.workers,
        cpu_guests = config.capacity.cpu_guests,
        "runcell serving"
    );

    let served = axum::serve(
        listener,
        // The client's address feeds login throttling.
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown({
        let readiness = readiness.clone();
        async move {
            shutdown_signal().await;
            readiness.begin_shutdown();
        }
    })
    .await;
    if let Err(err) = served {
        tracing::error!(error = %err, "HTTP server failed");
    }
    if let Some(metrics_server) = metrics_server {
        // Begun already, unless the API's server failed: the metrics server ends with it.
        readiness.begin_shutdown();
        let _ = metrics_server.await;
    }
    tracing::info!("shutting down: finishing running executions");
    let _ = stop.send(true);
    let _ = scheduler.await;
    let _ = monitor.await;
    let _ = alerter.await;
    let _ = reconciler.await;
    let _ = pruner.await;
    let _ = route_outbound.await;
    let _ = heartbeat.await;
    let _ = preloader.await;
    pool.shutdown(config.shutdown_grace).await;
    tracing::info!("stopped");
    Ok(())
}

/// A listener on `addr`, and the address it got (port 0 picks a free one).
async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), StartError> {
    let failed = |source| StartError::Listen { addr, source };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(failed)?;
    let bound = listener.local_addr().map_err(failed)?;
    Ok((listener, bound))
}

/// Serves `GET /metrics` without a token on the `--metrics-listen` listener until shutdown
/// begins.
async fn serve_metrics(
    listener: tokio::net::TcpListener,
    services: Services,
    readiness: crate::api::Readiness,
) {
    let served = axum::serve(listener, crate::api::metrics::scrape_router(services))
        .with_graceful_shutdown(readiness.shutdown_started())
        .await;
    if let Err(err) = served {
        tracing::error!(error = %err, "metrics HTTP server failed");
    }
}

/// The storage and transport of one node, embedded or distributed.
struct Backend {
    store: Arc<dyn Store>,
    auth_store: Arc<dyn AuthStore>,
    queue: Arc<dyn Queue>,
    log_relay: Option<Arc<dyn LogRelay>>,
    /// The embedded database's lock on its data directory, held while serving.
    _data_dir_lock: Option<std::fs::File>,
}

async fn open_backend(config: &ServeConfig, node_id: &str) -> Result<Backend, StartError> {
    let Some(distributed) = &config.distributed else {
        let lock = lock_data_dir(&config.data_dir)?;
        let sqlite = Arc::new(SqliteStore::open(&config.data_dir.join("runcell.db")).await?);
        return Ok(Backend {
            store: sqlite.clone(),
            auth_store: sqlite,
            queue: Arc::new(MemoryQueue::default()),
            log_relay: None,
            _data_dir_lock: Some(lock),
        });
    };
    let postgres = Arc::new(PostgresStore::connect(distributed.database_url.expose()).await?);
    let redis_url = distributed.redis_url.expose().to_owned();
    let queue = RedisQueue::new(RedisQueueConfig {
        url: redis_url.clone(),
        key_prefix: distributed.redis_prefix.clone(),
        node_id: node_id.to_owned(),
        lease: config.execution_lease,
    })?;
    let relay = RedisLogRelay::connect(RedisLogRelayConfig::new(
        redis_url,
        distributed.redis_prefix.clone(),
        node_id.to_owned(),
    ))
    .await?;
    Ok(Backend {
        store: postgres.clone(),
        auth_store: postgres,
        queue: Arc::new(queue),
        log_relay: Some(Arc::new(relay)),
        _data_dir_lock: None,
    })
}

/// A node name that is unique in practice and readable in listings: the host name and a
/// random suffix (a restarted process is a new node).
fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "node".to_owned());
    format!("{host}-{}", &crate::domain::new_id()[28..])
}

async fn heartbeat(services: Services, mut node: NodeHeartbeat, mut stop: watch::Receiver<bool>) {
    loop {
        node.last_heartbeat_at = now_millis();
        node.running = services.running.len() as u32;
        if let Err(err) = services.store.heartbeat_node(&node).await {
            tracing::warn!(error = %err, "cannot record this node's heartbeat; retrying");
        }
        tokio::select! {
            () = tokio::time::sleep(NODE_HEARTBEAT_EVERY) => {}
            _ = stop.changed() => return,
        }
    }
}

/// The auth service, with the first-start admin created if there is no user yet. A
/// generated password is printed on the console once, never logged.
pub(crate) async fn build_auth(
    store: Arc<dyn AuthStore>,
    key: SigningKey,
    config: &AuthConfig,
) -> Result<AuthService, StartError> {
    let defaults = AuthSettings::default();
    let settings = AuthSettings {
        access_ttl_ms: config
            .access_ttl
            .map_or(defaults.access_ttl_ms, |ttl| ttl.as_millis() as i64),
        refresh_ttl_ms: config
            .refresh_ttl
            .map_or(defaults.refresh_ttl_ms, |ttl| ttl.as_millis() as i64),
        ..defaults
    };
    let auth = AuthService::new(store, key, settings, AuthService::system_clock()).await?;
    let configured = config
        .admin_password
        .as_ref()
        .map(|secret| secret.expose().to_owned());
    if let Some(password) = auth.ensure_first_admin(configured).await? {
        println!("created user `admin` with the generated password: {password}");
        println!(
            "  it is shown only this once: store it, or set RUNCELL_ADMIN_PASSWORD on a fresh data directory"
        );
    }
    Ok(auth)
}

/// The signing key kept in `path`, created (readable by this user only) on first use.
fn load_or_create_key_file(path: &Path) -> Result<SigningKey, StartError> {
    let failure = |message: String| StartError::JwtSecretFile {
        path: path.to_path_buf(),
        message,
    };
    let secret = read_or_create_secret_file(path, || random_secret(32)).map_err(failure)?;
    SigningKey::from_secret(secret.as_bytes()).map_err(|err| failure(err.to_string()))
}

/// The key that seals jobs' secret settings on this node, if it has one.
fn secret_box(
    source: &SecretKeySource,
    data_dir: &Path,
    distributed: bool,
) -> Result<Option<SecretBox>, StartError> {
    let (source_name, text) = match source {
        SecretKeySource::Value(secret) => {
            ("RUNCELL_SECRET_KEY".to_owned(), secret.expose().to_owned())
        }
        SecretKeySource::File(path) => {
            let source_name = format!("RUNCELL_SECRET_KEY_FILE {}", path.display());
            match std::fs::read_to_string(path) {
                Ok(text) => (source_name, text),
                Err(err) => {
                    return Err(StartError::SecretKey {
                        source_name,
                        message: err.to_string(),
                    });
                }
            }
        }
        SecretKeySource::Unset if distributed => return Ok(None),
        SecretKeySource::Unset => {
            let path = data_dir.join(SECRET_KEY_FILE);
            let source_name = format!("the secret key file {}", path.display());
            match read_or_create_secret_file(&path, SecretBox::generate_key) {
                Ok(text) => (source_name, text),
                Err(message) => {
                    return Err(StartError::SecretKey {
                        source_name,
                        message,
                    });
                }
            }
        }
    };
    SecretBox::from_base64(&text)
        .map(Some)
        .map_err(|err| StartError::SecretKey {
            source_name,
            message: err.to_string(),
        })
}

/// The secret text kept in `path` (trimmed), created by `generate` and written readable by
/// this user only on first use.
fn read_or_create_secret_file(
    path: &Path,
    generate: impl FnOnce() -> String,
) -> Result<String, String> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut file) => {
            let secret = generate();
            std::io::Write::write_all(&mut file, secret.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|err| err.to_string())?;
            Ok(secret)
        }
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            let secret = std::fs::read_to_string(path).map_err(|err| err.to_string())?;
            Ok(secret.trim().to_owned())
        }
        Err(err) => Err(err.to_string()),
    }
}

/// The files of an embedded deployment that hold its data or its keys.
const PRIVATE_FILES: [&str; 6] = [
    "runcell.db",
    "runcell.db-wal",
    "runcell.db-shm",
    "runcell.lock",
    JWT_SECRET_FILE,
    SECRET_KEY_FILE,
];

/// Creates the data directory, and, embedded, keeps it and the files in it readable by
/// this user only: the database holds password hashes, sealed secrets and module data,
/// and the key files unseal them. The directory becomes 0700 and the files 0600, also on
/// a deployment made before this rule; the database file is created 0600 before SQLite
/// opens it, and SQLite gives its `-wal` and `-shm` files the database file's mode.
fn prepare_data_dir(dir: &Path, embedded: bool) -> Result<(), StartError> {
    let failed = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StartError::DataDir { path, source }
    };
    std::fs::create_dir_all(dir).map_err(failed(dir))?;
    #[cfg(unix)]
    if embedded {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let private = |path: &Path, mode: u32| -> Result<(), StartError> {
            let current = std::fs::metadata(path).map_err(failed(path))?.permissions();
            if current.mode() & 0o777 != mode {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                    .map_err(failed(path))?;
                tracing::info!(path = %path.display(), mode = format!("{mode:o}"), "made private");
            }
            Ok(())
        };
        private(dir, 0o700)?;
        let database = dir.join("runcell.db");
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&database)
            .map_err(failed(&database))?;
        for name in PRIVATE_FILES {
            let path = dir.join(name);
            if path.exists() {
                private(&path, 0o600)?;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = embedded;
    Ok(())
}

/// The embedded database is this process's alone: a second server on the same data
/// directory would take over executions the first is running. Held until dropped.
fn lock_data_dir(dir: &Path) -> Result<std::fs::File, StartError> {
    let path = dir.join("runcell.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StartError::DataDir {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StartError::DataDirInUse(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(source)) => Err(StartError::DataDir { path, source }),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM can be handled");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The demo job a newcomer sees running within seconds of `./dev up`.
const DEMO_JOB: &str = "hello-every-5s";

/// Installs every `.wasm` file of `dir` and a demo job on a short schedule. Problems are
/// reported and skipped: examples must never keep the server from starting.
async fn install_examples(services: &Services, dir: &Path) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) => {
            eprintln!(
                "warning: cannot read examples from {}: {err}",
                dir.display()
            );
            return;
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
        .collect();
    paths.sort();
    let mut examples = Vec::new();
    for path in paths {
        let installed = match std::fs::read(&path) {
            Ok(bytes) => services
                .upload_module(bytes)
                .await
                .map_err(|e| e.to_string()),
            Err(err) => Err(err.to_string()),
        };
        match installed {
            // The operator chose these modules by passing --examples: their requests
            // are approved on their behalf.
            Ok(module) => match services.approve_module_capabilities(&module.name).await {
                Ok(_) => {
                    println!(
                        "installed module {} {} (capabilities approved)",
                        module.name, module.current.version
                    );
                    examples.push(module.name);
                }
                Err(err) => eprintln!(
                    "warning: {} installed, but its capabilities are not approved: {err}",
                    module.name
                ),
            },
            Err(err) => {
                eprintln!("warning: {} not installed: {err}", path.display());
            }
        }
    }
    // As their authors meant them to run: data-sync syncs hourly out of the box.
    for module in &examples {
        match services.create_module_jobs(module).await {
            Ok(jobs) => {
                for job in &jobs.created {
                    let schedule = job.schedule.as_deref().unwrap_or("no schedule");
                    println!("created job {} ({schedule})", job.name);
                }
                for skipped in &jobs.skipped {
                    println!(
                        "no job created for {module}/{}: {}",
                        skipped.job, skipped.reason
                    );
                }
            }
            Err(err) => eprintln!("warning: could not create the jobs of {module}: {err}"),
        }
    }
    let has_demo = services
        .list_jobs(None, 500)
        .await
        .map(|page| page.items.iter().any(|j| j.name == DEMO_JOB))
        .unwrap_or(true);
    if !has_demo && services.get_module("hello").await.is_ok() {
        let draft = JobDraft {
            schedule: Some(Some("*/5 * * * * *".into())),
            input: Some(serde_json::json!({"name": "Runcell"})),
            ..JobDraft::new(DEMO_JOB, "hello", "greet")
        };
        match services.create_job(draft).await {
            Ok(job) => println!("created job {} ({}), runs every 5 s", job.name, job.id),
            Err(err) => eprintln!("warning: could not create the demo job: {err}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_runs_in_flight_are_many_but_fit_the_memory() {
        let workers = default_workers();
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        assert!(workers <= DEFAULT_WORKERS_CAP.max(cores * 4), "{workers}");
        assert!(workers >= cores * 4, "{workers}");
        if let Some(memory) = memory_limit()
            && memory >= 2 * 1024 * 1024 * 1024
        {
            assert_eq!(
                workers,
                DEFAULT_WORKERS_CAP.max(cores * 4),
                "{memory} bytes"
            );
        }
        assert_eq!(
            mem_total("MemFree:  10 kB\nMemTotal:       24683812 kB\n"),
            Some(24_683_812 * 1024)
        );
        assert_eq!(mem_total("MemTotal: lots"), None);
    }

    #[test]
    fn an_embedded_node_generates_its_secret_key_once_and_a_distributed_one_has_none() {
        let dir = tempfile::tempdir().unwrap();
        let first = secret_box(&SecretKeySource::Unset, dir.path(), false)
            .unwrap()
            .unwrap();
        let again = secret_box(&SecretKeySource::Unset, dir.path(), false)
            .unwrap()
            .unwrap();
        let sealed = first.seal("job", "key", "value");
        assert_eq!(again.open("job", "key", &sealed).unwrap(), "value");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(SECRET_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let empty = tempfile::tempdir().unwrap();
        assert!(
            secret_box(&SecretKeySource::Unset, empty.path(), true)
                .unwrap()
                .is_none()
        );
        assert!(!empty.path().join(SECRET_KEY_FILE).exists());
    }

    #[cfg(unix)]
    #[test]
    fn an_embedded_data_dir_and_its_files_are_made_private_even_when_they_were_not() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("data");
        prepare_data_dir(&dir, true).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("runcell.db")), 0o600);

        // A deployment from before: everything world-readable.
        let open = std::fs::Permissions::from_mode(0o644);
        std::fs::write(dir.join(JWT_SECRET_FILE), "old").unwrap();
        std::fs::write(dir.join("runcell.db-wal"), "").unwrap();
        for name in ["runcell.db", "runcell.db-wal", JWT_SECRET_FILE] {
            std::fs::set_permissions(dir.join(name), open.clone()).unwrap();
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare_data_dir(&dir, true).unwrap();
        assert_eq!(mode(&dir), 0o700);
        for name in ["runcell.db", "runcell.db-wal", JWT_SECRET_FILE] {
            assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
        }
        assert_eq!(
            std::fs::read_to_string(dir.join(JWT_SECRET_FILE)).unwrap(),
            "old"
        );

        // Distributed, the directory holds no database and is left as it is.
        let shared = parent.path().join("shared");
        prepare_data_dir(&shared, false).unwrap();
        assert!(!shared.join("runcell.db").exists());
    }

    #[test]
    fn a_bad_secret_key_stops_the_start_naming_its_source_not_the_key() {
        let dir = tempfile::tempdir().unwrap();
        for text in ["c2hvcnQ=", "not base64 at all!"] {
            let source = SecretKeySource::Value(Secret::new(text.to_owned()));
            let err = secret_box(&source, dir.path(), true)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("RUNCELL_SECRET_KEY: "), "{err}");
            assert!(!err.contains(text), "{err}");
        }
        let file = dir.path().join("mounted-key");
        std::fs::write(&file, format!("{}\n", SecretBox::generate_key())).unwrap();
        assert!(
            secret_box(&SecretKeySource::File(file), dir.path(), true)
                .unwrap()
                .is_some()
        );
        let missing = SecretKeySource::File(dir.path().join("missing"));
        let err = secret_box(&missing, dir.path(), true)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("RUNCELL_SECRET_KEY_FILE "), "{err}");
    }
}
