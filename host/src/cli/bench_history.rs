//! `runcell bench history`: what a long history costs the questions a dashboard asks. It
//! writes executions straight through the store (enqueue, claim, record: the statements
//! a server runs, usage rollups included, without guests or the API), spread over the
//! last 30 days, then times the first page of every filter combination of the
//! executions list and a 30-day usage query at one-hour steps, and prints the figures.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;

use super::ExitStatus;
use crate::domain::retention::first_id_at;
use crate::domain::usage::UsageQuery;
use crate::domain::window::{DAY, HOUR};
use crate::domain::{ExecutionResult, ExecutionStatus, NewExecution, Trigger, now_millis};
use crate::store::{ExecutionFilter, PostgresStore, SqliteStore, Store};

#[derive(Debug, Args)]
pub(super) struct HistoryBenchArgs {
    /// Executions to write before measuring.
    #[arg(long, default_value_t = 1_000_000)]
    executions: u64,
    /// Where the SQLite file goes [default: a temporary directory, removed after].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Measure PostgreSQL at this URL instead (a database of its own: it is filled).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Times each question is asked; the figures are over these.
    #[arg(long, default_value_t = 100)]
    repeats: u32,
}

/// Jobs the history is spread over. `big` takes a fifth of it and never fails: the job
/// whose "show me its failures" once walked every one of its rows.
const JOBS: [&str; 5] = ["big", "job-1", "job-2", "job-3", "job-4"];
/// Executions written per enqueue, claim and record.
const BATCH: u64 = 5_000;

pub(super) fn run(args: HistoryBenchArgs) -> ExitStatus {
    match super::tokio_runtime().block_on(bench(&args)) {
        Ok(()) => ExitStatus::Success,
        Err(err) => {
            eprintln!("error: {err}");
            ExitStatus::Environment
        }
    }
}

async fn bench(args: &HistoryBenchArgs) -> Result<(), String> {
    let temporary = tempfile_dir(args)?;
    let store: Arc<dyn Store> = match &args.database_url {
        Some(url) => Arc::new(
            PostgresStore::connect(url)
                .await
                .map_err(|e| e.to_string())?,
        ),
        None => {
            let dir = args.data_dir.clone().unwrap_or_else(|| temporary.clone());
            Arc::new(
                SqliteStore::open(&dir.join("runcell.db"))
                    .await
                    .map_err(|e| e.to_string())?,
            )
        }
    };
    let started = Instant::now();
    fill(store.as_ref(), args.executions).await?;
    let filled = started.elapsed();
    println!(
        "wrote {} executions in {:.1} s ({:.0}/s), spread over 30 days",
        args.executions,
        filled.as_secs_f64(),
        args.executions as f64 / filled.as_secs_f64()
    );
    println!(
        "\nfirst page (50) of GET /executions, over {} requests:",
        args.repeats
    );
    println!("{:<40} {:>10} {:>10}", "filter", "p50 ms", "p99 ms");
    let statuses = ExecutionStatus::ALL;
    let mut filters: Vec<(String, ExecutionFilter)> = vec![("(none)".into(), filter(None, None))];
    for status in statuses {
        filters.push((
            format!("status={}", status.as_str()),
            filter(None, Some(status)),
        ));
    }
    for job in ["big", "job-1"] {
        filters.push((format!("jobId={job}"), filter(Some(job), None)));
        for status in statuses {
            filters.push((
                format!("jobId={job}&status={}", status.as_str()),
                filter(Some(job), Some(status)),
            ));
        }
    }
    for (name, filter) in &filters {
        let times = timed(args.repeats, || async {
            store.list_executions(filter, None, 50).await.map(|_| ())
        })
        .await?;
        println!("{name:<40} {:>10.2} {:>10.2}", times.0, times.1);
    }
    let now = now_millis();
    let usage = UsageQuery {
        from: now - 30 * DAY - (now % HOUR),
        to: now - (now % HOUR) + HOUR,
        step: Some(HOUR),
        tier: HOUR,
        module: None,
        job_id: None,
        host: None,
        by_job: true,
    };
    let (p50, p99) = timed(args.repeats, || async {
        store.usage_runs(&usage).await.map(|_| ())
    })
    .await?;
    println!("\n30-day usage at 1h steps, by job: p50 {p50:.2} ms, p99 {p99:.2} ms");
    if args.data_dir.is_none() && args.database_url.is_none() {
        let _ = std::fs::remove_dir_all(&temporary);
    }
    Ok(())
}

fn tempfile_dir(args: &HistoryBenchArgs) -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("runcell-bench-history-{}", std::process::id()));
    if args.data_dir.is_none() && args.database_url.is_none() {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    Ok(dir)
}

fn filter(job: Option<&str>, status: Option<ExecutionStatus>) -> ExecutionFilter {
    ExecutionFilter {
        job_id: job.map(str::to_owned),
        status,
    }
}

/// p50 and p99 in milliseconds of `repeats` calls of `ask`.
async fn timed<F, Fut>(repeats: u32, ask: F) -> Result<(f64, f64), String>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), crate::store::StoreError>>,
{
    let mut times: Vec<Duration> = Vec::with_capacity(repeats as usize);
    for _ in 0..repeats.max(1) {
        let started = Instant::now();
        ask().await.map_err(|e| e.to_string())?;
        times.push(started.elapsed());
    }
    times.sort();
    let at = |q: f64| {
        let index = ((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1;
        times[index].as_secs_f64() * 1000.0
    };
    Ok((at(0.5), at(0.99)))
}

/// Writes `total` executions created over the last 30 days, oldest first, each final as
/// a server records it: mostly completed, some failed, timed out or cancelled, except
/// `big`'s, which all complete. A few hundred stay queued and running at the end.
async fn fill(store: &dyn Store, total: u64) -> Result<(), String> {
    let now = now_millis();
    let span = 30 * DAY;
    let start = now - span;
    let mut written = 0;
    while written < total {
        let count = BATCH.min(total - written);
        let batch: Vec<NewExecution> = (0..count)
            .map(|i| {
                let n = written + i;
                let at = start + i64::try_from(n * span as u64 / total.max(1)).unwrap_or(0);
                let job = if n % 5 == 0 {
                    JOBS[0]
                } else {
                    JOBS[1 + (n % 4) as usize]
                };
                NewExecution {
                    // UUID v7 of the creation time, numbered within it.
                    id: format!("{}{n:012x}", first_id_at(at).trim_end_matches('0')),
                    job_id: job.to_owned(),
                    module: "bench".to_owned(),
                    job: "noop".to_owned(),
                    trigger: Trigger::Manual,
                    attempt: 1,
                    retry_of: None,
                    input: "null".to_owned(),
                    scheduled_at: at,
                    run_after: at,
                    cron_tick: None,
                    event_id: None,
                    created_at: at,
                }
            })
            .collect();
        let ids = store
            .enqueue_executions(&batch)
            .await
            .map_err(|e| e.to_string())?;
        let last = written + count >= total;
        // The newest few stay queued or running, as on a live server.
        let (to_claim, _queued) = if last {
            ids.split_at(ids.len() / 2)
        } else {
            (&ids[..], &[][..])
        };
        let at = batch.last().map_or(now, |e| e.created_at);
        store
            .claim_executions(to_claim, "bench", at, at + 60_000)
            .await
            .map_err(|e| e.to_string())?;
        let record: &[String] = if last {
            &to_claim[..to_claim.len() / 2]
        } else {
            to_claim
        };
        let results: Vec<ExecutionResult> = record
            .iter()
            .zip(&batch)
            .enumerate()
            .map(|(i, (id, execution))| {
                let status = match (execution.job_id.as_str(), i % 100) {
                    ("big", _) | (_, 0..=96) => ExecutionStatus::Completed,
                    (_, 97) => ExecutionStatus::Failed,
                    (_, 98) => ExecutionStatus::TimedOut,
                    _ => ExecutionStatus::Cancelled,
                };
                ExecutionResult {
                    id: id.clone(),
                    status,
                    result: (status == ExecutionStatus::Completed).then(|| "null".to_owned()),
                    error: (status != ExecutionStatus::Completed).then(|| "bench".to_owned()),
                    error_kind: None,
                    finished_at: execution.created_at + 1,
                    duration_ms: 0.3 + (i % 7) as f64,
                    fuel_consumed: 10_000,
                    memory_peak_bytes: 1 << 20,
                    cpu_time_ms: 0.2,
                    logs: Vec::new(),
                    outbound: Vec::new(),
                }
            })
            .collect();
        store
            .record_results(&results, &[])
            .await
            .map_err(|e| e.to_string())?;
        written += count;
    }
    Ok(())
}
