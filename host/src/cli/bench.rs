//! `runcell bench runtime`: figures for the runtime's own costs, printed, never asserted.
//! Per-run overhead is instantiate + call + teardown of a no-op job with every limit on;
//! load time is bytes-to-runnable for a compiled and for a cached module.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;

use super::ExitStatus;
use crate::domain::Limits;
use crate::runtime::{
    EngineSettings, HostServices, LoadedModule, RunRequest, Runtime, RuntimeConfig,
};

#[derive(Debug, Args)]
pub(super) struct BenchArgs {
    /// A module with a `noop` job [default: the built `hello` example].
    #[arg(long)]
    noop_module: Option<PathBuf>,
    /// The module whose load time is measured [default: the built `data-sync` example].
    #[arg(long)]
    load_module: Option<PathBuf>,
    /// Runs per measurement.
    #[arg(long, default_value_t = 20_000)]
    runs: u32,
    /// Measure only the single-thread per-run overhead (for profilers).
    #[arg(long)]
    overhead_only: bool,
}

/// The guests the benches run by default, by package name.
pub(super) const NOOP_GUEST: &str = "hello";
pub(super) const LOAD_GUEST: &str = "data-sync";
pub(super) const PROBE_GUEST: &str = "hostile";
/// A guest whose job waits on an outbound request (the I/O-bound phase).
pub(super) const IO_GUEST: &str = "endpoint-monitor";

/// Where `./dev build` put the guest `package`: below `CARGO_TARGET_DIR` when it is set,
/// else below the target directory this binary was built into (`<target>/release/runcell`),
/// else below the workspace's `target/`. Never relative to the working directory, which
/// says nothing about where the build went.
pub(super) fn guest_path(package: &str) -> PathBuf {
    let file = format!("{}.wasm", package.replace('-', "_"));
    let below = |target: PathBuf| target.join("guests/wasm32-wasip2/guest").join(&file);
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return below(std::path::absolute(target).unwrap_or_default());
    }
    let built_into = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf()));
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|root| root.join("target"));
    let candidates: Vec<PathBuf> = built_into.into_iter().chain(workspace).map(below).collect();
    candidates
        .iter()
        .find(|path| path.exists())
        .or(candidates.first())
        .cloned()
        .unwrap_or_else(|| below(PathBuf::from("target")))
}

fn guest(path: Option<PathBuf>, package: &str) -> PathBuf {
    path.unwrap_or_else(|| guest_path(package))
}

pub(super) fn run(args: BenchArgs) -> ExitStatus {
    let noop_path = guest(args.noop_module, NOOP_GUEST);
    let load_path = guest(args.load_module, LOAD_GUEST);
    let (noop, data_sync) = match (std::fs::read(&noop_path), std::fs::read(&load_path)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(err), _) | (_, Err(err)) => {
            eprintln!(
                "error: cannot read the bench modules ({}, {}): {err}; build them with `./dev build`",
                noop_path.display(),
                load_path.display()
            );
            return ExitStatus::Environment;
        }
    };
    let cache_dir = std::env::temp_dir().join(format!("runcell-bench-{}", std::process::id()));
    let status = bench_all(&noop, &data_sync, &cache_dir, args.runs, args.overhead_only);
    let _ = std::fs::remove_dir_all(&cache_dir);
    status
}

fn new_runtime(cache_dir: &Path) -> Runtime {
    let config = RuntimeConfig {
        engine: EngineSettings {
            max_concurrent_instances: 16,
            ..Default::default()
        },
        cache_dir: Some(cache_dir.to_path_buf()),
        outbound: Default::default(),
    };
    Runtime::new(config, HostServices::in_memory()).expect("the runtime starts")
}

fn bench_all(
    noop: &[u8],
    data_sync: &[u8],
    cache_dir: &Path,
    runs: u32,
    overhead_only: bool,
) -> ExitStatus {
    println!(
        "runcell bench — wasmtime 48, {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let single = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    if !overhead_only {
        bench_loads(&single, data_sync, cache_dir);
    }
    bench_overhead(&single, noop, cache_dir, runs, overhead_only);
    ExitStatus::Success
}

/// Load times: first compile, then cached loads by fresh runtimes (as a restart sees).
fn bench_loads(single: &tokio::runtime::Runtime, data_sync: &[u8], cache_dir: &Path) {
    let (compile_time, cached) = single.block_on(async {
        let runtime = new_runtime(cache_dir);
        let module = runtime
            .load(Arc::from(data_sync))
            .await
            .expect("data-sync loads");
        let compile_time = module.load_time;
        let mut cached = Vec::new();
        for _ in 0..20 {
            let runtime = new_runtime(cache_dir);
            let module = runtime
                .load(Arc::from(data_sync))
                .await
                .expect("data-sync loads");
            assert_eq!(runtime.compilations(), 0, "a cached module was recompiled");
            cached.push(module.load_time);
        }
        (compile_time, cached)
    });
    println!(
        "data-sync ({} KiB): first compile {:.1} ms; cached load median {:.2} ms, max {:.2} ms (20 fresh runtimes, 0 recompiles)",
        data_sync.len() / 1024,
        ms(compile_time),
        ms(percentile(&cached, 0.5)),
        ms(percentile(&cached, 1.0))
    );
}

/// Per-run overhead of a no-op job on one thread, then how two tokio workers compare.
fn bench_overhead(
    single: &tokio::runtime::Runtime,
    noop: &[u8],
    cache_dir: &Path,
    runs: u32,
    overhead_only: bool,
) {
    let runtime = new_runtime(cache_dir);
    let module = single
        .block_on(runtime.load(Arc::from(noop)))
        .expect("noop module loads");
    let request = RunRequest::new("noop", "null", Limits::default());
    // On a guest thread, as a worker's runs are: `Runtime::run` called from any other
    // thread hops to one first.
    let durations = single
        .block_on(runtime.guest_threads().spawn({
            let (runtime, module, request) = (runtime.clone(), module.clone(), request.clone());
            async move {
                for _ in 0..1_000 {
                    runtime.run(&module, fresh(&request)).await;
                }
                let mut durations = Vec::with_capacity(runs as usize);
                for _ in 0..runs {
                    let started = Instant::now();
                    let report = runtime.run(&module, fresh(&request)).await;
                    durations.push(started.elapsed());
                    debug_assert!(matches!(
                        report.outcome,
                        crate::domain::Outcome::Completed { .. }
                    ));
                }
                durations
            }
        }))
        .expect("the measuring task ends");
    let one_thread_rate = f64::from(runs) / durations.iter().sum::<Duration>().as_secs_f64();
    println!(
        "no-op run overhead, 1 thread, {runs} runs, all limits on: median {:.1} µs, p99 {:.1} µs, {:.0} runs/s",
        us(percentile(&durations, 0.5)),
        us(percentile(&durations, 0.99)),
        one_thread_rate
    );
    let fuel = single
        .block_on(runtime.run(&module, request.clone()))
        .usage
        .fuel_consumed;
    println!("no-op run fuel: {fuel} units");
    if overhead_only {
        return;
    }
    // Loops on the runtime's guest threads (one per core), as the worker pool's runs:
    // one alone, then one per thread. Rounds alternate the two in this one process, so
    // that what differs between processes (where the allocator and the pools land) weighs
    // on both alike. Both are wall-clock rates over whole loops.
    let workers = 2;
    let (mut one, mut two) = (Vec::new(), Vec::new());
    for _ in 0..SCALING_ROUNDS {
        let elapsed = single.block_on(on_guest_threads(&runtime, &module, &request, 1, runs));
        one.push(f64::from(runs) / elapsed.as_secs_f64());
        let elapsed = single.block_on(on_guest_threads(&runtime, &module, &request, workers, runs));
        two.push((runs as usize * workers) as f64 / elapsed.as_secs_f64());
    }
    let ratios: Vec<f64> = two.iter().zip(&one).map(|(t, o)| t / o).collect();
    println!(
        "no-op runs/s, medians of {SCALING_ROUNDS} alternating rounds of {runs} runs per loop on the guest threads: \
         1 loop {:.0}; {workers} loops {:.0} = {:.2}× one (rounds {:.2}–{:.2}×)",
        median(&one),
        median(&two),
        median(&two) / median(&one),
        ratios.iter().copied().fold(f64::INFINITY, f64::min),
        ratios.iter().copied().fold(0.0, f64::max),
    );
}

/// Rounds of the scaling measurement.
const SCALING_ROUNDS: usize = 5;

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// `runs` runs one after the other, each with a request of its own.
async fn run_loop(
    runtime: Runtime,
    module: Arc<LoadedModule>,
    request: RunRequest,
    runs: u32,
) -> Duration {
    let started = Instant::now();
    for _ in 0..runs {
        runtime.run(&module, fresh(&request)).await;
    }
    started.elapsed()
}

/// `loops` [`run_loop`]s on the runtime's guest threads; the time until the last is done.
async fn on_guest_threads(
    runtime: &Runtime,
    module: &Arc<LoadedModule>,
    request: &RunRequest,
    loops: usize,
    runs: u32,
) -> Duration {
    let started = Instant::now();
    let tasks: Vec<_> = (0..loops)
        .map(|_| {
            runtime.guest_threads().spawn(run_loop(
                runtime.clone(),
                module.clone(),
                request.clone(),
                runs,
            ))
        })
        .collect();
    for task in tasks {
        task.await.expect("bench task");
    }
    started.elapsed()
}

/// `request` for one more run, sharing nothing with the others, as the worker builds one
/// per execution: runs sharing a cancel token or grants would write the same waiter list
/// and reference counts from every thread.
fn fresh(request: &RunRequest) -> RunRequest {
    RunRequest::new(request.job.clone(), request.input.clone(), request.limits)
}

fn percentile(samples: &[Duration], q: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guest modules of the workspace, as the build script found them.
    const GUESTS: &[&str] = include!(concat!(env!("OUT_DIR"), "/guests.rs"));

    #[test]
    fn the_default_bench_modules_are_guests_of_the_workspace() {
        for guest in [NOOP_GUEST, LOAD_GUEST, PROBE_GUEST, IO_GUEST] {
            assert!(GUESTS.contains(&guest), "{guest} is not in {GUESTS:?}");
        }
    }

    #[test]
    fn a_guest_is_found_under_its_library_name() {
        assert!(guest_path("data-sync").ends_with("guests/wasm32-wasip2/guest/data_sync.wasm"));
    }
}
