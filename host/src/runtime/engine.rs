//! The process-wide wasmtime engine and the epoch ticker that gives it a wall clock.
//!
//! Tuning here is about two threats: a guest that never yields (bounded by fuel and by
//! epoch deadlines) and the cost of a fresh instance per run (kept low by the pooling
//! allocator resetting only the pages a run dirtied, instead of unmapping memory).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances. A runaway guest is stopped at most one tick after its
/// deadline, and a CPU-bound guest yields its thread to others once per tick.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(5);

/// wasm stack per instance. Deep enough for real recursive code; a runaway recursion
/// traps with "stack overflow" long before the host stack is in danger.
const MAX_WASM_STACK: usize = 1024 * 1024;
/// The fiber stack an async call runs on must hold the wasm stack plus host frames.
const ASYNC_STACK: usize = MAX_WASM_STACK + 1024 * 1024;
/// Core instances, memories and tables a typical component needs (guest plus adapters).
const CORE_INSTANCES_PER_COMPONENT: u32 = 16;
const MEMORIES_PER_COMPONENT: u32 = 4;
const TABLES_PER_COMPONENT: u32 = 16;
/// Memory kept mapped between runs in a pooled slot; resetting it costs a scan of the
/// dirty pages rather than an `madvise` and page faults on the next run. The scan walks
/// the whole kept range, so it is sized to a typical guest (about 1 MiB of linear memory):
/// 2 MiB measured 12.6 µs per no-op run against 14.5 µs with 16 MiB.
const KEEP_RESIDENT_BYTES: usize = 2 * 1024 * 1024;

/// How the engine is set up. Changing any of these changes compiled artifacts, so the
/// artifact cache keys on the engine's compatibility hash.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Instances that may be alive at once, over all lanes; with pooling, slots are
    /// reserved up front.
    pub max_concurrent_instances: u32,
    /// Engines, each with its share of the instances; runs on different threads use
    /// different engines. One per core by default.
    pub lanes: usize,
    /// The largest linear memory any run may be granted.
    pub memory_ceiling_bytes: u64,
    /// Use the pooling allocator (fast instantiation); off falls back to mmap per run.
    pub pooling: bool,
    /// Guests that run their code at once; the other runs in flight wait for a CPU (see
    /// `cpu_permits`). One per core by default.
    pub cpu_guests: usize,
    /// Modules compiled at once; loads of code that needs compiling wait for a turn. One
    /// by default: a compilation already uses every core, and each holds hundreds of MiB
    /// at its peak for a large component.
    pub compilations: usize,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            max_concurrent_instances: 64,
            lanes: super::lanes::default_lane_count(),
            memory_ceiling_bytes: crate::domain::Limits::default_ceiling().memory_bytes,
            pooling: true,
            cpu_guests: super::cpu_permits::default_cpu_permits(),
            compilations: 1,
        }
    }
}

/// An engine whose pool, if pooling, holds `instances` instances.
pub(crate) fn build_engine(settings: &EngineSettings, instances: u32) -> wasmtime::Result<Engine> {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .consume_fuel(true)
        .epoch_interruption(true)
        .max_wasm_stack(MAX_WASM_STACK)
        .async_stack_size(ASYNC_STACK)
        // Component-model async is not part of the contract; leaving it off keeps
        // per-call bookkeeping out of the hot path.
        .concurrency_support(false)
        .cranelift_opt_level(wasmtime::OptLevel::Speed);
    if settings.pooling {
        let instances = instances.max(1);
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(instances)
            .total_core_instances(instances * CORE_INSTANCES_PER_COMPONENT)
            .total_memories(instances * MEMORIES_PER_COMPONENT)
            .total_tables(instances * TABLES_PER_COMPONENT)
            .total_stacks(instances)
            .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
            .max_memories_per_component(MEMORIES_PER_COMPONENT)
            .max_tables_per_component(TABLES_PER_COMPONENT)
            .max_memory_size(usize::try_from(settings.memory_ceiling_bytes).unwrap_or(usize::MAX))
            .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
            .table_keep_resident(64 * 1024)
            .pagemap_scan(Enabled::Auto);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    Engine::new(&config)
}

/// A stable key for "artifacts compiled by this engine can be loaded by this engine".
pub(crate) fn engine_key(engine: &Engine) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// Advances the engines' epochs every [`EPOCH_TICK`] on its own thread until dropped.
#[derive(Debug)]
pub(crate) struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    pub(crate) fn start(engines: Vec<Engine>) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name("runcell-epoch".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    for engine in &engines {
                        engine.increment_epoch();
                    }
                }
            })?;
        Ok(Self { stop })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
