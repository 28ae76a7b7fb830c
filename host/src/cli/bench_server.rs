//! `runcell bench server`: the whole execution path measured as a client sees it. Starts a
//! real `runcell serve` on a fresh data directory, installs the benchmark module over the
//! API, and measures (0) I/O-bound executions, each waiting on a slow endpoint, all
//! enqueued at once, with the server's memory while they run; (1) throughput of no-op
//! executions enqueued in bulk, every one recorded, after one run on each server has
//! loaded the module there; (2) the same for ~1 ms CPU jobs; (3) latency from `execute`
//! to the handler's first instruction at a paced rate. With `--nodes N` it starts N
//! servers on the same PostgreSQL database and Redis prefix (given after `--`), sends the
//! requests to each in turn and reads the results through the first (the I/O-bound phase
//! uses the first server only). Figures are printed, never asserted.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use serde_json::{Value, json};

use super::ExitStatus;

#[derive(Debug, Args)]
pub(super) struct ServerBenchArgs {
    /// The module with the `noop` job [default: the built `hello` example].
    #[arg(long)]
    noop_module: Option<PathBuf>,
    /// The module with the `burn` and `clock` jobs [default: the built `hostile` fixture].
    #[arg(long)]
    probe_module: Option<PathBuf>,
    /// The module whose `check-endpoints` job makes the I/O-bound runs [default: the
    /// built `endpoint-monitor` example].
    #[arg(long)]
    io_module: Option<PathBuf>,
    /// I/O-bound executions, each waiting `--io-wait` on a slow endpoint of the bench;
    /// 0 skips the phase.
    #[arg(long, default_value_t = 1_000)]
    io: u32,
    /// How long the slow endpoint takes to answer each request.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    io_wait: Duration,
    /// Measure the I/O-bound executions only.
    #[arg(long)]
    io_only: bool,
    /// Upload this module first (e.g. a large Python component) and measure the time to
    /// the upload's answer and to its installation, and the server's resident memory
    /// before, at its peak and after.
    #[arg(long)]
    upload_module: Option<PathBuf>,
    /// No-op executions for the throughput run; 0 skips the phase.
    #[arg(long, default_value_t = 50_000)]
    noop: u32,
    /// 1 ms CPU executions for the throughput run; 0 skips the phase.
    #[arg(long, default_value_t = 5_000)]
    cpu: u32,
    /// Requests per second for the latency run.
    #[arg(long, default_value_t = 500)]
    rate: u32,
    /// Duration of the latency run; 0s skips the phase.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    latency_for: Duration,
    /// How long API requests are timed while every worker runs a spinning guest; 0s
    /// skips the phase.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    storm_for: Duration,
    /// Worker count of the server under test [default: the server's default].
    #[arg(long)]
    workers: Option<usize>,
    /// Servers to start against the same database and queue; more than one needs
    /// `--database-url` and `--redis-url` (or DATABASE_URL and REDIS_URL).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    nodes: u16,
    /// Serve from this data directory, kept afterwards (e.g. one `bench history
    /// --data-dir` filled, to see the hot path over a long history) [default: a
    /// temporary directory, removed after]. One node only.
    #[arg(long, conflicts_with = "nodes")]
    data_dir: Option<PathBuf>,
    /// Extra arguments for `runcell serve` (e.g. `--database-url ...`), after `--`.
    #[arg(last = true)]
    serve_args: Vec<String>,
}

struct Server {
    child: Child,
    base: String,
    agent: ureq::Agent,
    data_dir: PathBuf,
    /// Whether the data directory is the bench's own, to remove at the end.
    own_data_dir: bool,
    /// `Bearer <access token>` of the bench's admin.
    authorization: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.own_data_dir {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

type BenchResult<T> = Result<T, String>;

/// Adds an admin named for this run to the deployment in `data_dir`, with `password`,
/// through `runcell user add`; returns its name.
fn add_admin(
    exe: &std::path::Path,
    data_dir: &std::path::Path,
    password: &str,
) -> BenchResult<String> {
    let name = format!("bench-{}", now_ns());
    let mut child = Command::new(exe)
        .args([
            "user",
            "add",
            &name,
            "--role",
            "admin",
            "--password-stdin",
            "--data-dir",
        ])
        .arg(data_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot add the bench's admin: {e}"))?;
    {
        let mut stdin = child.stdin.take().ok_or("no stdin")?;
        writeln!(stdin, "{password}").map_err(|e| e.to_string())?;
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("`runcell user add` failed ({status})"));
    }
    Ok(name)
}

/// `name` made this run's own.
fn run_name(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

impl Server {
    /// Starts server number `index` of the run; the first creates the admin with
    /// `admin_password`, the others find it in the shared database. In a data directory
    /// given, which may have its users already, the bench adds an admin of its own.
    fn start(args: &ServerBenchArgs, index: u16, admin_password: &str) -> BenchResult<Self> {
        let data_dir = args.data_dir.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!(
                "runcell-bench-server-{}-{}-{index}",
                std::process::id(),
                now_ns()
            ))
        });
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let admin = match &args.data_dir {
            Some(dir) => add_admin(&exe, dir, admin_password)?,
            None => "admin".to_owned(),
        };
        let mut command = Command::new(exe);
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir)
            // The slow endpoint of the I/O-bound phase listens on loopback.
            .args(["--outbound-allow", "127.0.0.1"])
            .args(&args.serve_args)
            .env("RUNCELL_LOG", "warn")
            .env("RUNCELL_ADMIN_PASSWORD", admin_password)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(workers) = args.workers {
            command.args(["--workers", &workers.to_string()]);
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start the server: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let base = loop {
            let line = lines
                .next()
                .ok_or("the server exited before listening")?
                .map_err(|e| e.to_string())?;
            if let Some(addr) = line.strip_prefix("listening on ") {
                break addr.trim().to_owned();
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .new_agent();
        let mut server = Self {
            child,
            base,
            agent,
            data_dir,
            own_data_dir: args.data_dir.is_none(),
            authorization: String::new(),
        };
        let session = server.post(
            "/auth/login",
            &json!({"username": admin, "password": admin_password}),
        )?;
        let token = session["accessToken"]
            .as_str()
            .ok_or("the login answer has no accessToken")?;
        server.authorization = format!("Bearer {token}");
        Ok(server)
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    fn post(&self, path: &str, body: &Value) -> BenchResult<Value> {
        let mut response = self
            .agent
            .post(&self.url(path))
            .header("authorization", &self.authorization)
            .send_json(body)
            .map_err(|e| format!("POST {path}: {e}"))?;
        let status = response.status();
        let body: Value = response
            .body_mut()
            .read_json()
            .map_err(|e| format!("POST {path}: {status}: {e}"))?;
        if !status.is_success() {
            return Err(format!("POST {path}: {status}: {body}"));
        }
        Ok(body)
    }

    /// Cancels execution `id`, with no body: the route reads none.
    fn cancel(&self, id: &str) -> BenchResult<()> {
        let path = format!("/executions/{id}/cancel");
        let response = self
            .agent
            .post(&self.url(&path))
            .header("authorization", &self.authorization)
            .send_empty()
            .map_err(|e| format!("POST {path}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("POST {path}: {}", response.status()));
        }
        Ok(())
    }

    /// Times one request to `path` (below the server's root, not the API's); fails
    /// unless it answers 2xx.
    fn timed(&self, method: &str, path: &str) -> BenchResult<Duration> {
        let url = format!("{}{path}", self.base);
        let started = Instant::now();
        let response = match method {
            "POST" => self
                .agent
                .post(&url)
                .header("authorization", &self.authorization)
                .send_json(json!({})),
            _ => self
                .agent
                .get(&url)
                .header("authorization", &self.authorization)
                .call(),
        }
        .map_err(|e| format!("{method} {path}: {e}"))?;
        let took = started.elapsed();
        if !response.status().is_success() {
            return Err(format!("{method} {path}: {}", response.status()));
        }
        Ok(took)
    }

    fn get(&self, path: &str) -> BenchResult<Value> {
        let mut response = self
            .agent
            .get(&self.url(path))
            .header("authorization", &self.authorization)
            .call()
            .map_err(|e| format!("GET {path}: {e}"))?;
        let status = response.status();
        let body: Value = response
            .body_mut()
            .read_json()
            .map_err(|e| format!("GET {path}: {status}: {e}"))?;
        if !status.is_success() {
            return Err(format!("GET {path}: {status}: {body}"));
        }
        Ok(body)
    }

    fn upload(&self, wasm: &[u8]) -> BenchResult<()> {
        let response = self
            .agent
            .post(&self.url("/modules?approve=true"))
            .header("authorization", &self.authorization)
            .header("content-type", "application/wasm")
            .send(wasm)
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("upload failed: {}", response.status()));
        }
        Ok(())
    }

    /// Creates a job named `name` and this run's process id, so that runs on a kept data
    /// directory do not collide.
    fn create_job(&self, name: &str, module: &str, job: &str, input: Value) -> BenchResult<String> {
        let created = self.post(
            "/jobs",
            &json!({"name": run_name(name), "module": module, "job": job, "input": input}),
        )?;
        created["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| "job without id".into())
    }

    /// Runs `job_id` once, with its stored input; returns the execution's id.
    fn execute(&self, job_id: &str) -> BenchResult<String> {
        self.post(&format!("/jobs/{job_id}/execute"), &json!({}))?["executionId"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| "execute answered without executionId".into())
    }

    /// Waits until no execution of `job_id` is queued or running.
    fn wait_idle(&self, job_id: &str) -> BenchResult<()> {
        loop {
            let mut busy = false;
            for status in ["QUEUED", "RUNNING"] {
                let page = self.get(&format!(
                    "/executions?jobId={job_id}&status={status}&limit=1"
                ))?;
                busy |= page["items"]
                    .as_array()
                    .is_some_and(|items| !items.is_empty());
            }
            if !busy {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Counts executions of `job_id` in `status` by paging through them.
    fn count(&self, job_id: &str, status: &str) -> BenchResult<usize> {
        let mut count = 0;
        let mut cursor = String::new();
        loop {
            let page = self.get(&format!(
                "/executions?jobId={job_id}&status={status}&limit=500{cursor}"
            ))?;
            count += page["items"].as_array().map_or(0, Vec::len);
            match page["nextCursor"].as_str() {
                Some(next) => cursor = format!("&cursor={next}"),
                None => return Ok(count),
            }
        }
    }
}

pub(super) fn run(args: ServerBenchArgs) -> ExitStatus {
    match bench(&args) {
        Ok(()) => ExitStatus::Success,
        Err(err) => {
            eprintln!("error: {err}");
            ExitStatus::Environment
        }
    }
}

fn bench(args: &ServerBenchArgs) -> BenchResult<()> {
    let read = |path: Option<PathBuf>, package: &str| {
        let path = path.unwrap_or_else(|| super::bench::guest_path(package));
        std::fs::read(&path).map_err(|e| {
            format!(
                "cannot read {}: {e}; build it with `./dev build`",
                path.display()
            )
        })
    };
    // The arguments first: a wrong command line is said before anything is looked for.
    let distributed = args
        .serve_args
        .iter()
        .any(|a| a.starts_with("--database-url"))
        || std::env::var_os("DATABASE_URL").is_some();
    if args.nodes > 1 && !distributed {
        return Err(
            "--nodes above 1 needs a shared database and queue: add `-- --database-url ... --redis-url ...`"
                .into(),
        );
    }
    let noop_wasm = read(args.noop_module.clone(), super::bench::NOOP_GUEST)?;
    let probe_wasm = read(args.probe_module.clone(), super::bench::PROBE_GUEST)?;
    let io_wasm = read(args.io_module.clone(), super::bench::IO_GUEST)?;
    let admin_password = crate::services::auth::random_secret(18);
    // One after the other: the first migrates the database and creates the admin.
    let servers = (0..args.nodes)
        .map(|index| Server::start(args, index, &admin_password))
        .collect::<BenchResult<Vec<_>>>()?;
    let server = &servers[0];
    server.upload(&noop_wasm)?;
    server.upload(&probe_wasm)?;
    server.upload(&io_wasm)?;
    let bases: Vec<&str> = servers.iter().map(|s| s.base.as_str()).collect();
    println!("runcell bench server — {}", bases.join(", "));

    if let Some(path) = &args.upload_module {
        let wasm =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        timed_upload(server, &wasm)?;
    }

    // First, while the server's memory holds nothing of the other phases.
    if args.io > 0 {
        io_bound(server, args.io, args.io_wait)?;
    }
    if args.io_only {
        return Ok(());
    }

    let noop = server.create_job("bench-noop", "hello", "noop", Value::Null)?;
    if args.noop > 0 {
        throughput(&servers, "no-op", &noop, args.noop)?;
    }

    if args.cpu > 0 {
        let iterations = calibrate_burn(server)?;
        let cpu = server.create_job(
            "bench-cpu",
            "hostile",
            "burn",
            json!({"iterations": iterations}),
        )?;
        let rate = throughput(&servers, "1 ms CPU", &cpu, args.cpu)?;
        let ceiling = burn_ceiling(iterations, args.cpu);
        println!(
            "1 ms CPU ceiling: the same loop on {} plain threads, without Runcell: {ceiling:.0} runs/s; Runcell reached {:.1} % of it",
            ceiling_threads(),
            100.0 * rate / ceiling
        );
    }

    latency(&servers, args.rate, args.latency_for)?;
    cpu_storm(server, &noop, args.storm_for)?;
    Ok(())
}

/// Enqueues `total` executions in bulk requests, to each server in turn, and times until
/// all are recorded.
fn throughput(servers: &[Server], label: &str, job_id: &str, total: u32) -> BenchResult<f64> {
    const BULK: u32 = 10_000;
    // Smaller requests when there are several servers, so each gets a share.
    let bulk = BULK.min(total.div_ceil(servers.len() as u32).max(1));
    let server = &servers[0];
    let warm_ups = warm_up(servers, job_id)?;
    let started = Instant::now();
    let mut sent = 0;
    let mut requests = 0;
    let mut last = String::new();
    while sent < total {
        let count = bulk.min(total - sent);
        let queued = servers[requests % servers.len()].post(
            &format!("/jobs/{job_id}/execute-bulk"),
            &json!({"count": count}),
        )?;
        if let Some(id) = queued["executionIds"]
            .as_array()
            .and_then(|ids| ids.last())
            .and_then(Value::as_str)
        {
            last = id.to_owned();
        }
        sent += count;
        requests += 1;
    }
    let enqueued = started.elapsed();
    // First the last execution queued, by id: a point lookup, cheap to repeat. Listing
    // by status is not (in PostgreSQL it reads every row version not yet vacuumed), and
    // asking it every few milliseconds would load the database it measures.
    wait_final(server, &last)?;
    server.wait_idle(job_id)?;
    let elapsed = started.elapsed();
    let completed = server.count(job_id, "COMPLETED")?.saturating_sub(warm_ups);
    println!(
        "{label}: {total} executions in {:.2} s = {:.0} executions/s end to end ({completed} COMPLETED, every one recorded; enqueueing took {:.2} s)",
        elapsed.as_secs_f64(),
        f64::from(total) / elapsed.as_secs_f64(),
        enqueued.as_secs_f64()
    );
    if completed != total as usize {
        return Err(format!("{label}: only {completed} of {total} completed"));
    }
    Ok(f64::from(total) / elapsed.as_secs_f64())
}

/// One thread per core, as many as the machine runs guests on at once.
fn ceiling_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// What the machine does with the 1 ms CPU phase's work and nothing else: `runs` runs
/// of the `hostile` guest's `burn` loop, `iterations` each, compiled natively and shared
/// among [`ceiling_threads`] plain threads. Returns runs per second.
fn burn_ceiling(iterations: u64, runs: u32) -> f64 {
    let threads = ceiling_threads();
    let started = Instant::now();
    std::thread::scope(|scope| {
        for thread in 0..threads {
            let share = (runs as usize + threads - 1 - thread) / threads;
            scope.spawn(move || {
                for _ in 0..share {
                    // The guest's loop, word for word.
                    let mut acc = 0x9e37_79b9_7f4a_7c15_u64;
                    for i in 0..iterations {
                        acc = std::hint::black_box(acc.rotate_left(5) ^ i)
                            .wrapping_mul(0x0100_0000_01b3);
                    }
                    std::hint::black_box(acc);
                }
            });
        }
    });
    f64::from(runs) / started.elapsed().as_secs_f64()
}

/// Runs `job_id` once on every server, so that each has its module loaded before the
/// clock starts: a node compiles a module it has not seen in the background, within
/// seconds of its install, and that one-time cost (measured by `runcell bench runtime`)
/// would otherwise land in whichever phase it overlaps. A single execute starts on the
/// node that takes it while that node has a free worker besides the one standing by for
/// the queue (so with `--workers 1` a run may warm another node). Returns the runs made.
fn warm_up(servers: &[Server], job_id: &str) -> BenchResult<usize> {
    for server in servers {
        let id = server.execute(job_id)?;
        let execution = wait_final(server, &id)?;
        if execution["status"] != "COMPLETED" {
            return Err(format!("warm-up run of {job_id} ended {execution}"));
        }
    }
    Ok(servers.len())
}

/// Finds the `burn` iteration count that takes about a millisecond of CPU here.
fn calibrate_burn(server: &Server) -> BenchResult<u64> {
    let probe = 2_000_000_u64;
    let job = server.create_job(
        "bench-calibrate",
        "hostile",
        "burn",
        json!({"iterations": probe}),
    )?;
    let mut best = f64::MAX;
    for _ in 0..5 {
        let id = server.execute(&job)?;
        let execution = wait_final(server, &id)?;
        best = best.min(execution["durationMs"].as_f64().unwrap_or(f64::MAX));
    }
    let iterations = (probe as f64 / best).round() as u64;
    println!("calibration: {iterations} burn iterations ≈ 1 ms of CPU");
    Ok(iterations.max(1))
}

fn wait_final(server: &Server, id: &str) -> BenchResult<Value> {
    loop {
        let execution = server.get(&format!("/executions/{id}"))?;
        if !matches!(execution["status"].as_str(), Some("QUEUED" | "RUNNING")) {
            return Ok(execution);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Paced single executes of `clock`; latency is the handler's own start time minus the
/// moment the client sent the request (same machine, same clock).
fn latency(servers: &[Server], rate: u32, duration: Duration) -> BenchResult<()> {
    if duration.is_zero() {
        return Ok(());
    }
    let server = &servers[0];
    let job = server.create_job("bench-clock", "hostile", "clock", Value::Null)?;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let total = (duration.as_secs_f64() * f64::from(rate)) as u32;
    let mut sent = Vec::with_capacity(total as usize);
    let started = Instant::now();
    for i in 0..total {
        let due = started + interval * i;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let at = now_ns();
        let target = &servers[i as usize % servers.len()];
        let id = target.execute(&job)?;
        sent.push((id, at));
    }
    server.wait_idle(&job)?;
    let mut latencies = Vec::with_capacity(sent.len());
    for (id, at) in &sent {
        let execution = server.get(&format!("/executions/{id}"))?;
        let started_ns: u128 = execution["result"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("execution {id} has no clock result: {execution}"))?;
        latencies.push(Duration::from_nanos(started_ns.saturating_sub(*at) as u64));
    }
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    println!(
        "dispatch latency at {rate} executions/s ({} runs): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (request sent → handler started)",
        latencies.len(),
        pick(0.5).as_secs_f64() * 1000.0,
        pick(0.99).as_secs_f64() * 1000.0,
        pick(1.0).as_secs_f64() * 1000.0
    );
    Ok(())
}

/// Every worker of `server` runs a guest that spins without calling the host; meanwhile
/// the API is asked, paced, for `/healthz`, a page of executions and a run of `noop_job`
/// (queued, since no worker is free), and each answer is timed as the client sees it.
/// Guests must not slow the API: they run on threads of their own.
fn cpu_storm(server: &Server, noop_job: &str, duration: Duration) -> BenchResult<()> {
    if duration.is_zero() {
        return Ok(());
    }
    let nodes = server.get("/nodes")?;
    let workers = nodes["items"]
        .as_array()
        .and_then(|items| items.first())
        .and_then(|node| node["workers"].as_u64())
        .ok_or("GET /nodes names no worker count")?;
    let timeout_ms = (duration + Duration::from_secs(30)).as_millis() as u64;
    let spin = server.post(
        "/jobs",
        &json!({"name": run_name("bench-spin"), "module": "hostile", "job": "spin",
                "fuel": 400_000_000_000_u64, "timeoutMs": timeout_ms}),
    )?;
    let spin = spin["id"].as_str().ok_or("job without id")?.to_owned();
    let queued = server.post(
        &format!("/jobs/{spin}/execute-bulk"),
        &json!({"count": workers}),
    )?;
    let spinning: Vec<String> = queued["executionIds"]
        .as_array()
        .map(|ids| {
            ids.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let all_running = Instant::now();
    loop {
        let page = server.get(&format!(
            "/executions?jobId={spin}&status=RUNNING&limit=500"
        ))?;
        if page["items"].as_array().map_or(0, Vec::len) as u64 >= workers {
            break;
        }
        if all_running.elapsed() > Duration::from_secs(30) {
            return Err("the spinning guests did not all start within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let probes = [
        ("GET", "/healthz".to_owned(), "/healthz"),
        (
            "GET",
            "/api/v1/executions?limit=20".to_owned(),
            "/api/v1/executions?limit=20",
        ),
        (
            "POST",
            format!("/api/v1/jobs/{noop_job}/execute"),
            "/api/v1/jobs/{id}/execute",
        ),
    ];
    let mut timings: Vec<Vec<Duration>> = vec![Vec::new(); probes.len()];
    let started = Instant::now();
    let mut turn = 0;
    while started.elapsed() < duration {
        let (method, path, _) = &probes[turn % probes.len()];
        timings[turn % probes.len()].push(server.timed(method, path)?);
        turn += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    for id in &spinning {
        server.cancel(id)?;
    }
    server.wait_idle(&spin)?;
    server.wait_idle(noop_job)?;
    println!("cpu storm ({workers} guests spinning, one per worker):");
    for ((method, _, shown), mut taken) in probes.iter().zip(timings) {
        taken.sort();
        let pick = |q: f64| taken[((taken.len() - 1) as f64 * q).round() as usize];
        println!(
            "  {method} {shown}: {} requests, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            taken.len(),
            pick(0.5).as_secs_f64() * 1000.0,
            pick(0.99).as_secs_f64() * 1000.0,
            pick(1.0).as_secs_f64() * 1000.0
        );
    }
    Ok(())
}

/// A server on 127.0.0.1 that answers every request `200 ok` after `delay`, a thread per
/// connection; returns its port and the most requests it held at once so far.
fn slow_endpoint(delay: Duration) -> BenchResult<(u16, Arc<AtomicUsize>)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let (waiting, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let most_seen = most.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let (waiting, most) = (waiting.clone(), most.clone());
            let answer = move || {
                let Ok(read) = stream.try_clone() else { return };
                let mut reader = BufReader::new(read);
                let mut line = String::new();
                // The request head ends with an empty line; a GET has no body.
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    line.clear();
                }
                most.fetch_max(waiting.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                std::thread::sleep(delay);
                waiting.fetch_sub(1, Ordering::SeqCst);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                );
            };
            // Small stacks: a thousand of them wait at once.
            let _ = std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(answer);
        }
    });
    Ok((port, most_seen))
}

/// Uploads `wasm` as `runcell push` does (`Prefer: respond-async`), follows it until it
/// is installed, and prints the times and the server's resident memory: before, the
/// most seen while it compiled, and a while after.
fn timed_upload(server: &Server, wasm: &[u8]) -> BenchResult<()> {
    let pid = server.child.id();
    let before = resident_bytes(pid).unwrap_or(0);
    let started = Instant::now();
    let mut response = server
        .agent
        .post(&server.url("/modules?approve=true"))
        .header("authorization", &server.authorization)
        .header("content-type", "application/wasm")
        .header("prefer", "respond-async")
        .send(wasm)
        .map_err(|e| e.to_string())?;
    let answered = started.elapsed();
    let status = response.status();
    let body: Value = response
        .body_mut()
        .read_json()
        .map_err(|e| format!("upload: {status}: {e}"))?;
    let mut most = resident_bytes(pid).unwrap_or(0);
    if status.as_u16() == 202 {
        let id = body["id"].as_str().ok_or("202 without an upload id")?;
        loop {
            let upload = server.get(&format!("/module-uploads/{id}"))?;
            most = most.max(resident_bytes(pid).unwrap_or(0));
            match upload["status"].as_str() {
                Some("INSTALLED") => break,
                Some("COMPILING") => std::thread::sleep(Duration::from_millis(20)),
                _ => return Err(format!("the upload failed: {upload}")),
            }
        }
    } else if !status.is_success() {
        return Err(format!("upload: {status}: {body}"));
    }
    let installed = started.elapsed();
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    println!(
        "upload of {:.1} MiB: answered {} in {:.0} ms, installed after {:.1} s",
        mib(wasm.len() as u64),
        status.as_u16(),
        answered.as_secs_f64() * 1e3,
        installed.as_secs_f64()
    );
    let mut after = Vec::new();
    for wait in [1, 5, 30] {
        let waited = started.elapsed().saturating_sub(installed);
        std::thread::sleep(Duration::from_secs(wait).saturating_sub(waited));
        after.push(format!(
            "{wait} s after {:.0} MiB",
            mib(resident_bytes(pid).unwrap_or(0))
        ));
    }
    println!(
        "  server RSS: before {:.0} MiB, most while compiling {:.0} MiB, {}",
        mib(before),
        mib(most),
        after.join(", ")
    );
    Ok(())
}

/// The resident memory of process `pid` now, in bytes (Linux; `None` elsewhere).
fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `total` runs of `endpoint-monitor`'s `check-endpoints`, each waiting `wait` on a slow
/// endpoint of the bench, enqueued at once on `server`; times until all are recorded and
/// samples the server's resident memory meanwhile.
fn io_bound(server: &Server, total: u32, wait: Duration) -> BenchResult<()> {
    let (port, most_waiting) = slow_endpoint(wait)?;
    let timeout_ms = (wait + Duration::from_secs(10)).as_millis() as u64;
    let job = server.create_job(
        "bench-io",
        "endpoint-monitor",
        "check-endpoints",
        json!({"endpoints": [{"name": "slow", "url": format!("http://127.0.0.1:{port}/"),
                              "timeoutMs": timeout_ms}]}),
    )?;
    let warm_ups = warm_up(std::slice::from_ref(server), &job)?;
    let pid = server.child.id();
    let before = resident_bytes(pid);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let mut peak = 0;
            while !stop.load(Ordering::Relaxed) {
                peak = peak.max(resident_bytes(pid).unwrap_or(0));
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        }
    });
    let started = Instant::now();
    let queued = server.post(
        &format!("/jobs/{job}/execute-bulk"),
        &json!({"count": total}),
    )?;
    let last = queued["executionIds"]
        .as_array()
        .and_then(|ids| ids.last())
        .and_then(Value::as_str)
        .ok_or("execute-bulk answered without executionIds")?
        .to_owned();
    wait_final(server, &last)?;
    server.wait_idle(&job)?;
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.join().map_err(|_| "the memory sampler panicked")?;
    let completed = server.count(&job, "COMPLETED")?.saturating_sub(warm_ups);
    let workers = server.get("/nodes")?["items"][0]["workers"].clone();
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    println!(
        "I/O-bound: {total} executions each waiting {} on a slow endpoint in {:.2} s ({completed} COMPLETED; {workers} workers; at most {} waiting at the endpoint at once); server RSS {} before, peak {:.0} MiB",
        humantime::format_duration(wait),
        elapsed.as_secs_f64(),
        most_waiting.load(Ordering::SeqCst),
        before.map_or("?".to_owned(), |b| format!("{:.0} MiB", mib(b))),
        mib(peak),
    );
    if completed != total as usize {
        return Err(format!("I/O-bound: only {completed} of {total} completed"));
    }
    Ok(())
}
