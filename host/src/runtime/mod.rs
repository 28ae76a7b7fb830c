//! Runs job modules. Owns the three lifetimes of wasm execution: the process (an engine
//! and a linker per lane, see [`lanes`]), the module (a validated component compiled once,
//! cached by content hash, pre-linked in every lane), and the execution (a fresh store per
//! run, dropped after).
//!
//! Knows nothing of HTTP or SQL: capability backends come in through [`HostServices`].

mod bindings;
mod cache;
mod clock;
mod cpu;
mod cpu_permits;
mod engine;
mod execution;
mod guests;
pub(crate) mod host;
mod incoming;
mod lanes;
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

use lanes::Lane;

use crate::domain::{
    Capabilities, FailureKind, JobSpec, Limits, Manifest, ManifestError, Outcome, RouteAccess,
    RunReport, Usage,
};

pub use cache::LoadSource;
pub(crate) use cache::content_hash;
pub use engine::EngineSettings;
pub(crate) use execution::StartListener;
pub use execution::{CancelToken, RunRequest};
pub use host::HostServices;
pub(crate) use host::http::{BudgetRefusal, OutboundBudget};
pub use host::http::{IpNetwork, OutboundSettings, OutboundTls};
pub(crate) use host::http::{Probe, ProbeFailure, probe};
pub(crate) use incoming::ServedRequest;
pub(crate) use logs::LogObserver;
pub use redact::Redactor;
pub use validate::ValidationError;
pub(crate) use validate::check_header;

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
    /// The module pre-linked in each lane, in lane order.
    lanes: Box<[LaneModule]>,
}

/// A module as one lane's engine has it.
struct LaneModule {
    pre: JobModulePre<ExecutionState>,
    /// The `handle` of its `wasi:http/incoming-handler` export, if it serves routes.
    handler: Option<ComponentExportIndex>,
    /// The module's name for this lane's runs, so that lanes count their references to
    /// it apart.
    name: Arc<str>,
}

/// A module linked in one lane, before `describe` has said its name.
struct Linked {
    pre: JobModulePre<ExecutionState>,
    handler: Option<ComponentExportIndex>,
}

impl LoadedModule {
    /// Whether the component exports the HTTP handler its routes are served through.
    pub fn serves_routes(&self) -> bool {
        self.lanes[0].handler.is_some()
    }
}

impl std::fmt::Debug for LoadedModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModule")
            .field("hash", &self.hash)
            .field("name", &self.manifest.name)
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
    lanes: Box<[Lane]>,
    cache: cache::ArtifactCache,
    loaded: Mutex<HashMap<String, Arc<LoadedModule>>>,
    /// One gate per content hash being loaded: runs that arrive together for a module
    /// this node has not loaded yet wait for one compilation instead of each starting
    /// their own.
    loading: LoadingGates,
    _ticker: engine::EpochTicker,
    /// Where guest code runs: never on the threads of the caller (the API's).
    guests: guests::GuestThreads,
    /// How many guests run their code at once, whatever the runs in flight.
    cpu: cpu_permits::CpuPermits,
    /// Turns to compile: a compilation uses every core and, for a large component,
    /// hundreds of MiB, so a burst of uploads takes turns instead of piling up.
    compile_turns: tokio::sync::Semaphore,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

type LoadingGates = Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>;

/// A load's hold on the gate of its content hash; the last holder removes the gate from
/// the map when it is dropped, also when the load is abandoned half-way.
struct LoadingGate<'a> {
    gates: &'a LoadingGates,
    hash: &'a str,
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl<'a> LoadingGate<'a> {
    fn take(gates: &'a LoadingGates, hash: &'a str) -> Self {
        let gate = lock_gates(gates)
            .entry(hash.to_owned())
            .or_default()
            .clone();
        Self { gates, hash, gate }
    }
}

impl Drop for LoadingGate<'_> {
    fn drop(&mut self) {
        let mut gates = lock_gates(self.gates);
        // Holders clone the gate only under the map's lock, so this count is exact: the
        // map's reference and this one mean nobody else waits.
        if Arc::strong_count(&self.gate) == 2 {
            gates.remove(self.hash);
        }
    }
}

fn lock_gates(
    gates: &LoadingGates,
) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<()>>>> {
    gates.lock().unwrap_or_else(|e| e.into_inner())
}

impl Runtime {
    pub fn new(config: RuntimeConfig, services: HostServices) -> Result<Self, RuntimeError> {
        let lanes = build_lanes(&config.engine, &services, &config.outbound)
            .or_else(|err| {
                // Pooling reserves address space up front; some hosts cap it. Run slower
                // rather than not at all.
                tracing::warn!(error = %err, "pooling allocator unavailable, falling back to on-demand allocation");
                let fallback = EngineSettings {
                    pooling: false,
                    ..config.engine.clone()
                };
                build_lanes(&fallback, &services, &config.outbound)
            })
            .map_err(|err| RuntimeError::Engine(format!("{err:#}")))?;
        let cache =
            cache::ArtifactCache::new(config.cache_dir, engine::engine_key(&lanes[0].engine));
        let ticker =
            engine::EpochTicker::start(lanes.iter().map(|lane| lane.engine.clone()).collect())?;
        // A thread per lane: each keeps its lane, so runs on different cores share no
        // engine state.
        let guests = guests::GuestThreads::start(lanes.len())
            .map_err(|err| RuntimeError::Engine(format!("could not start guest threads: {err}")))?;
        Ok(Self {
            shared: Arc::new(Shared {
                lanes,
                cache,
                loaded: Mutex::new(HashMap::new()),
                loading: Mutex::new(HashMap::new()),
                _ticker: ticker,
                guests,
                cpu: cpu_permits::CpuPermits::new(config.engine.cpu_guests),
                compile_turns: tokio::sync::Semaphore::new(config.engine.compilations.max(1)),
            }),
        })
    }

    /// Where to spawn work that runs guest code (a worker's whole run), so that it starts
    /// on a guest thread and [`Runtime::run`] needs no hop.
    pub fn guest_threads(&self) -> &tokio::runtime::Handle {
        self.shared.guests.handle()
    }

    /// How many guests may run their code at once.
    pub fn cpu_guests(&self) -> usize {
        self.shared.cpu.total()
    }

    /// Guests running their code now (holding a CPU permit).
    pub fn cpu_guests_busy(&self) -> usize {
        self.shared.cpu.in_use()
    }

    /// Instances alive now (runs, route requests, `describe` calls) over every lane, and
    /// how many the instance pools hold.
    pub fn instances(&self) -> (u32, u32) {
        self.shared
            .lanes
            .iter()
            .map(Lane::use_and_capacity)
            .fold((0, 0), |(used, held), (u, h)| (used + u, held + h))
    }

    /// Compilations performed by this runtime (cached loads excluded).
    pub fn compilations(&self) -> u64 {
        self.shared.cache.compilations()
    }

    /// Validates, compiles (or maps from the cache) and describes a module. Loading the
    /// same bytes again returns the module already in memory.
    pub async fn load(&self, wasm: Arc<[u8]>) -> Result<Arc<LoadedModule>, LoadError> {
        check_header(&wasm)?;
        let hash = content_hash(&wasm);
        if let Some(module) = self.loaded_module(&hash) {
            return Ok(module);
        }
        let gate = LoadingGate::take(&self.shared.loading, &hash);
        let _turn = gate.gate.lock().await;
        if let Some(module) = self.loaded_module(&hash) {
            return Ok(module);
        }
        self.load_now(wasm, hash.clone()).await
    }

    async fn load_now(
        &self,
        wasm: Arc<[u8]>,
        hash: String,
    ) -> Result<Arc<LoadedModule>, LoadError> {
        let started = Instant::now();
        // Mapping a compiled artifact is cheap and needs no turn.
        let turn = if self.shared.cache.has_artifact(&hash) {
            None
        } else {
            Some(
                self.shared
                    .compile_turns
                    .acquire()
                    .await
                    .map_err(|_| LoadError::Describe("the runtime is shutting down".into()))?,
            )
        };
        let shared = self.shared.clone();
        let compile_hash = hash.clone();
        // Compilation is CPU-bound for up to seconds: keep it off the async workers.
        let (lanes, source) =
            tokio::task::spawn_blocking(move || shared.prepare(&wasm, &compile_hash))
                .await
                .map_err(|err| LoadError::Describe(format!("compilation task failed: {err}")))??;
        drop(turn);
        let load_time = started.elapsed();
        let lanes = Arc::new(lanes);
        let runtime = self.clone();
        let described = lanes.clone();
        let manifest = self
            .shared
            .guests
            .run(async move { runtime.describe(&described).await })
            .await
            .map_err(|err| LoadError::Describe(format!("`describe` ended abnormally: {err}")))??;
        let lanes = Arc::into_inner(lanes).ok_or_else(|| {
            LoadError::Describe("the module's code is still in use by `describe`".into())
        })?;
        manifest.validate()?;
        incoming::check_routes_export(&manifest, lanes[0].handler.is_some())?;
        let lanes = lanes
            .into_iter()
            .map(|Linked { pre, handler }| LaneModule {
                pre,
                handler,
                name: Arc::from(manifest.name.as_str()),
            })
            .collect();
        let module = Arc::new(LoadedModule {
            hash: hash.clone(),
            manifest,
            source,
            load_time,
            lanes,
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

    /// Calls `describe` without a CPU permit: it only builds a record, within 500 ms of
    /// fuel, once per load, and an upload should not wait behind a storm of runs.
    async fn describe(&self, lanes: &[Linked]) -> Result<Manifest, LoadError> {
        let request = RunRequest::new("describe", "null", DESCRIBE_LIMITS);
        let seat = lanes::take_seat(&self.shared.lanes);
        let (mut store, _logs, _clock) =
            execution::new_store(seat.lane(), Arc::from("describe"), &request);
        let call = async {
            let pre: &JobModulePre<_> = &lanes[seat.index].pre;
            let instance = pre.instance_pre().instantiate_async(&mut store).await?;
            let module = bindings::JobModule::new(&mut store, &instance)?;
            let manifest = module.call_describe(&mut store).await?;
            // `settings` came in 0.1.1; a module without it declares none.
            let settings = match instance.get_export_index(&mut store, None, "settings") {
                None => Vec::new(),
                Some(export) => {
                    let settings = instance
                        .get_typed_func::<(), (Vec<bindings::types::SettingSpec>,)>(
                            &mut store, &export,
                        )
                        .map_err(|err| {
                            err.context(
                                "the export `settings` is not `func() -> list<setting-spec>`",
                            )
                        })?;
                    settings.call_async(&mut store, ()).await?.0
                }
            };
            Ok::<_, wasmtime::Error>((manifest, settings))
        };
        let (manifest, settings) = tokio::time::timeout(DESCRIBE_LIMITS.timeout, call)
            .await
            .map_err(|_| LoadError::Describe("did not return within 5 s".into()))?
            .map_err(|err| LoadError::Describe(format!("{err:#}")))?;
        convert_manifest(manifest, settings)
    }

    /// Runs one job on a fresh instance of `module`, on a guest thread.
    pub async fn run(&self, module: &Arc<LoadedModule>, request: RunRequest) -> RunReport {
        let runtime = self.clone();
        let module = module.clone();
        let run = async move { runtime.run_here(&module, request).await };
        match self.shared.guests.run(run).await {
            Ok(report) => report,
            Err(err) => RunReport {
                outcome: Outcome::Failed {
                    kind: FailureKind::HostError,
                    message: format!("the run ended abnormally: {err}"),
                },
                usage: Usage::default(),
                logs: Vec::new(),
                dropped_log_lines: 0,
                outbound: Vec::new(),
            },
        }
    }

    /// Runs one job on a fresh instance of `module`, on the calling thread.
    async fn run_here(&self, module: &LoadedModule, request: RunRequest) -> RunReport {
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
                outbound: Vec::new(),
            };
        }
        let seat = lanes::take_seat(&self.shared.lanes);
        let in_lane = &module.lanes[seat.index];
        execution::execute(
            seat.lane(),
            &self.shared.cpu,
            in_lane.name.clone(),
            &in_lane.pre,
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
        module: &Arc<LoadedModule>,
        request: http::Request<bytes::Bytes>,
        limits: Limits,
        grants: Arc<crate::domain::Grants>,
        outbound_budget: Option<Arc<dyn OutboundBudget>>,
        max_response_bytes: u64,
    ) -> ServedRequest {
        let mut run = RunRequest::new("http", "", limits);
        run.grants = grants;
        run.outbound_budget = outbound_budget;
        let shared = self.shared.clone();
        let module = module.clone();
        let serve = async move {
            incoming::serve(&shared, &module, run, request, max_response_bytes).await
        };
        match self.shared.guests.run(serve).await {
            Ok(served) => served,
            Err(err) => ServedRequest {
                response: Err(Outcome::Failed {
                    kind: FailureKind::HostError,
                    message: format!("the request's handling ended abnormally: {err}"),
                }),
                usage: Usage::default(),
                logs: Vec::new(),
                dropped_log_lines: 0,
                outbound: Vec::new(),
            },
        }
    }
}

impl Shared {
    fn prepare(&self, wasm: &[u8], hash: &str) -> Result<(Vec<Linked>, LoadSource), LoadError> {
        let engines: Vec<Engine> = self.lanes.iter().map(|lane| lane.engine.clone()).collect();
        let (components, source) = self
            .cache
            .load_into_each(&engines, wasm, hash)
            .map_err(|err| ValidationError::Malformed(format!("{err:#}")))?;
        validate::check_contract(&engines[0], &components[0])?;
        let lanes = self
            .lanes
            .iter()
            .zip(components)
            .map(|(lane, component)| {
                let pre = lane
                    .linker
                    .instantiate_pre(&component)
                    .and_then(JobModulePre::new)
                    .map_err(|err| ValidationError::ContractMismatch(format!("{err:#}")))?;
                let handler = incoming::find_handler(&lane.engine, &component);
                Ok(Linked { pre, handler })
            })
            .collect::<Result<_, LoadError>>()?;
        Ok((lanes, source))
    }
}

/// The lanes `settings` ask for, the instances shared out between them.
fn build_lanes(
    settings: &EngineSettings,
    services: &HostServices,
    outbound: &OutboundSettings,
) -> wasmtime::Result<Box<[Lane]>> {
    let count = settings.lanes.max(1);
    let capacity = lanes::lane_capacity(settings.max_concurrent_instances, count);
    (0..count)
        .map(|_| {
            let engine = engine::build_engine(settings, capacity)?;
            let linker = build_linker(&engine)?;
            Ok(Lane::new(engine, linker, services, outbound, capacity))
        })
        .collect()
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

fn convert_manifest(
    manifest: bindings::types::Manifest,
    settings: Vec<bindings::types::SettingSpec>,
) -> Result<Manifest, LoadError> {
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
        settings: settings
            .into_iter()
            .map(|setting| crate::domain::SettingSpec {
                name: setting.name,
                description: setting.description,
                required: setting.required,
                secret: setting.secret,
                jobs: setting.jobs,
            })
            .collect(),
    })
}
