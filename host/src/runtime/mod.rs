//! Runs job modules. Owns the three lifetimes of wasm execution: the process (one engine,
//! one linker, filled once), the module (a validated component compiled once, cached by
//! content hash, pre-linked), and the execution (a fresh store per run, dropped after).
//!
//! Knows nothing of HTTP or SQL: capability backends come in through [`HostServices`].

mod bindings;
mod cache;
mod engine;
mod execution;
pub mod host;
mod incoming;
mod limiter;
mod logs;
mod redact;
mod stdio;
mod validate;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::Engine;
use wasmtime::component::{ComponentExportIndex, HasSelf, Linker};

use crate::domain::{
    Capabilities, FailureKind, JobSpec, Limits, Manifest, ManifestError, Outcome, RouteAccess,
    RunReport, Usage,
};

pub use cache::{LoadSource, content_hash};
pub use engine::{EPOCH_TICK, EngineSettings};
pub use execution::{CancelToken, RunRequest};
pub use host::HostServices;
pub use host::http::{
    AddressClass, BadNetwork, Denial, IpNetwork, OutboundPolicy, OutboundSettings, OutboundTls,
    TlsSetupError,
};
pub use incoming::ServedRequest;
pub use logs::LogObserver;
pub use redact::{MIN_REDACTED_LEN, Redactor};
pub use validate::ValidationError;

use bindings::JobModulePre;
use execution::ExecutionState;
use host::HostContext;

/// How the runtime is set up.
#[derive(Debug, Clone, Default)]
pub struct RuntimeConfig {
    pub engine: EngineSettings,
    /// Where compiled artifacts are kept; `None` compiles on every load.
    pub cache_dir: Option<PathBuf>,
    /// Which addresses outbound HTTP may reach, and its timeouts and size cap.
    pub outbound: OutboundSettings,
}

/// Why a module could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("the module's manifest is invalid: {0}")]
    Manifest(#[from] ManifestError),
    #[error("`describe` failed: {0}")]
    Describe(String),
}

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("could not configure the wasm engine: {0}")]
    Engine(String),
    #[error("could not start the epoch ticker thread: {0}")]
    Ticker(#[from] std::io::Error),
}

/// A validated, compiled, pre-linked module, ready to instantiate.
pub struct LoadedModule {
    pub hash: String,
    pub manifest: Manifest,
    pub source: LoadSource,
    /// Time from bytes to a runnable module, `describe` excluded.
    pub load_time: Duration,
    pre: JobModulePre<ExecutionState>,
    /// The `handle` of its `wasi:http/incoming-handler` export, if it serves routes.
    handler: Option<ComponentExportIndex>,
    name: Arc<str>,
}

impl LoadedModule {
    /// Whether the component exports the HTTP handler its routes are served through.
    pub fn serves_routes(&self) -> bool {
        self.handler.is_some()
    }
}

impl std::fmt::Debug for LoadedModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModule")
            .field("hash", &self.hash)
            .field("name", &self.name)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// The limits `describe` runs under: it only builds a record.
const DESCRIBE_LIMITS: Limits = Limits {
    fuel: 500 * crate::domain::FUEL_PER_CPU_MS,
    timeout: Duration::from_secs(5),
    memory_bytes: 64 * 1024 * 1024,
    max_log_lines: 100,
    max_log_bytes: 64 * 1024,
    max_output_bytes: 1024 * 1024,
};

/// The wasm runtime: cheap to clone, shared by every worker.
#[derive(Clone, Debug)]
pub struct Runtime {
    shared: Arc<Shared>,
}

struct Shared {
    engine: Engine,
    linker: Linker<ExecutionState>,
    cache: cache::ArtifactCache,
    services: HostServices,
    outbound: Arc<OutboundSettings>,
    loaded: Mutex<HashMap<String, Arc<LoadedModule>>>,
    _ticker: engine::EpochTicker,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Runtime {
    pub fn new(config: RuntimeConfig, services: HostServices) -> Result<Self, RuntimeError> {
        let engine = engine::build_engine(&config.engine)
            .or_else(|err| {
                // Pooling reserves address space up front; some hosts cap it. Run slower
                // rather than not at all.
                tracing::warn!(error = %err, "pooling allocator unavailable, falling back to on-demand allocation");
                let fallback = EngineSettings {
                    pooling: false,
                    ..config.engine.clone()
                };
                engine::build_engine(&fallback)
            })
            .map_err(|err| RuntimeError::Engine(format!("{err:#}")))?;
        let linker =
            build_linker(&engine).map_err(|err| RuntimeError::Engine(format!("{err:#}")))?;
        let cache = cache::ArtifactCache::new(config.cache_dir, engine::engine_key(&engine));
        let ticker = engine::EpochTicker::start(engine.clone())?;
        Ok(Self {
            shared: Arc::new(Shared {
                engine,
                linker,
                cache,
                services,
                outbound: Arc::new(config.outbound),
                loaded: Mutex::new(HashMap::new()),
                _ticker: ticker,
            }),
        })
    }

    /// Compilations performed by this runtime (cached loads excluded).
    pub fn compilations(&self) -> u64 {
        self.shared.cache.compilations()
    }

    /// Validates, compiles (or maps from the cache) and describes a module. Loading the
    /// same bytes again returns the module already in memory.
    pub async fn load(&self, wasm: Arc<[u8]>) -> Result<Arc<LoadedModule>, LoadError> {
        validate::check_header(&wasm)?;
        let hash = content_hash(&wasm);
        if let Some(module) = self.loaded_module(&hash) {
            return Ok(module);
        }
        let started = Instant::now();
        let shared = self.shared.clone();
        let compile_hash = hash.clone();
        // Compilation is CPU-bound for up to seconds: keep it off the async workers.
        let (pre, source) =
            tokio::task::spawn_blocking(move || shared.prepare(&wasm, &compile_hash))
                .await
                .map_err(|err| LoadError::Describe(format!("compilation task failed: {err}")))??;
        let load_time = started.elapsed();
        let manifest = self.describe(&pre).await?;
        manifest.validate()?;
        let handler = incoming::find_handler(&self.shared.engine, pre.instance_pre().component());
        incoming::check_routes_export(&manifest, handler.is_some())?;
        let module = Arc::new(LoadedModule {
            hash: hash.clone(),
            name: Arc::from(manifest.name.as_str()),
            manifest,
            source,
            load_time,
            pre,
            handler,
        });
        self.shared
            .loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(hash, module.clone());
        Ok(module)
    }

    /// The module with this content hash, if this runtime already loaded it.
    pub fn loaded_module(&self, hash: &str) -> Option<Arc<LoadedModule>> {
        self.shared
            .loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(hash)
            .cloned()
    }

    /// Forgets a loaded module, so the next load maps it from the cache again.
    pub fn unload(&self, hash: &str) {
        self.shared
            .loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(hash);
    }

    async fn describe(&self, pre: &JobModulePre<ExecutionState>) -> Result<Manifest, LoadError> {
        let request = RunRequest::new("describe", "null", DESCRIBE_LIMITS);
        let (mut store, _logs) = execution::new_store(
            &self.shared.engine,
            &self.shared.services,
            &self.shared.outbound,
            Arc::from("describe"),
            &request,
        );
        let call = async {
            let instance = pre.instantiate_async(&mut store).await?;
            instance.call_describe(&mut store).await
        };
        let manifest = tokio::time::timeout(DESCRIBE_LIMITS.timeout, call)
            .await
            .map_err(|_| LoadError::Describe("did not return within 5 s".into()))?
            .map_err(|err| LoadError::Describe(format!("{err:#}")))?;
        convert_manifest(manifest)
    }

    /// Runs one job on a fresh instance of `module`.
    pub async fn run(&self, module: &LoadedModule, request: RunRequest) -> RunReport {
        if module.manifest.job(&request.job).is_none() {
            let offered: Vec<&str> = module
                .manifest
                .jobs
                .iter()
                .map(|j| j.name.as_str())
                .collect();
            return RunReport {
                outcome: Outcome::Failed {
                    kind: FailureKind::UnknownJob,
                    message: format!(
                        "module `{}` offers no job `{}`; it offers: {}",
                        module.manifest.name,
                        request.job,
                        offered.join(", ")
                    ),
                },
                usage: Usage::default(),
                logs: Vec::new(),
                dropped_log_lines: 0,
            };
        }
        execution::execute(
            &self.shared.engine,
            &self.shared.services,
            &self.shared.outbound,
            module.name.clone(),
            &module.pre,
            request,
        )
        .await
    }

    /// Serves one request for `module`'s routes on a fresh instance, with `limits` and
    /// `grants` as a job run of the module would have them; the response body may hold
    /// at most `max_response_bytes`. The request's path is the one the module sees
    /// (below `/m/{module}`).
    pub async fn serve_http(
        &self,
        module: &LoadedModule,
        request: http::Request<bytes::Bytes>,
        limits: Limits,
        grants: Arc<crate::domain::Grants>,
        max_response_bytes: u64,
    ) -> ServedRequest {
        let Some(handler) = &module.handler else {
            return ServedRequest {
                response: Err(Outcome::Failed {
                    kind: FailureKind::HostError,
                    message: format!("module `{}` serves no HTTP routes", module.name),
                }),
                usage: Usage::default(),
                logs: Vec::new(),
                dropped_log_lines: 0,
            };
        };
        let mut run = RunRequest::new("http", "", limits);
        run.grants = grants;
        incoming::serve(
            &self.shared,
            module,
            handler,
            run,
            request,
            max_response_bytes,
        )
        .await
    }
}

impl Shared {
    fn prepare(
        &self,
        wasm: &[u8],
        hash: &str,
    ) -> Result<(JobModulePre<ExecutionState>, LoadSource), LoadError> {
        let (component, source) = self
            .cache
            .load(&self.engine, wasm, hash)
            .map_err(|err| ValidationError::Malformed(format!("{err:#}")))?;
        validate::check_contract(&self.engine, &component)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|err| ValidationError::ContractMismatch(format!("{err:#}")))?;
        let pre = JobModulePre::new(pre)
            .map_err(|err| ValidationError::ContractMismatch(format!("{err:#}")))?;
        Ok((pre, source))
    }
}

fn host(state: &mut ExecutionState) -> &mut HostContext {
    &mut state.host
}

fn build_linker(engine: &Engine) -> wasmtime::Result<Linker<ExecutionState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    bindings::log::add_to_linker::<_, HasSelf<HostContext>>(&mut linker, host)?;
    bindings::kv::add_to_linker::<_, HasSelf<HostContext>>(&mut linker, host)?;
    bindings::events::add_to_linker::<_, HasSelf<HostContext>>(&mut linker, host)?;
    bindings::config::add_to_linker::<_, HasSelf<HostContext>>(&mut linker, host)?;
    bindings::metrics::add_to_linker::<_, HasSelf<HostContext>>(&mut linker, host)?;
    Ok(linker)
}

fn convert_manifest(manifest: bindings::types::Manifest) -> Result<Manifest, LoadError> {
    let jobs = manifest
        .jobs
        .into_iter()
        .map(|job| {
            let input_schema = job
                .input_schema
                .map(|schema| {
                    serde_json::from_str(&schema).map_err(|err| ManifestError::BadInputSchema {
                        job: job.name.clone(),
                        reason: err.to_string(),
                    })
                })
                .transpose()?;
            Ok(JobSpec {
                name: job.name,
                description: job.description,
                default_schedule: job.default_schedule,
                input_schema,
                timeout_ms: job.timeout_ms,
                fuel: job.fuel,
            })
        })
        .collect::<Result<Vec<_>, ManifestError>>()?;
    let caps = manifest.capabilities;
    Ok(Manifest {
        name: manifest.name,
        version: manifest.version,
        description: manifest.description,
        jobs,
        capabilities: Capabilities {
            outbound_hosts: caps.outbound_hosts,
            publishes: caps.publishes,
            key_value: caps.key_value,
            routes: match caps.routes {
                bindings::types::RouteAccess::None => RouteAccess::None,
                bindings::types::RouteAccess::Authenticated => RouteAccess::Authenticated,
                bindings::types::RouteAccess::Public => RouteAccess::Public,
            },
        },
    })
}
