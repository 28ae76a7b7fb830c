//! Runcell distributed, end to end: two or three real `runcell serve` processes against
//! one PostgreSQL database and one Redis key prefix, each test with its own of both
//! (created here, removed at the end even when the test fails). The nodes are killed
//! (SIGKILL) and Redis is emptied under them; what is checked is what a client sees:
//! every execution ends exactly once, cron fires once per tick, events fan out once.
//!
//! Needs PostgreSQL on 127.0.0.1:5432 (trust; `RUNCELL_TEST_POSTGRES_URL` overrides) and
//! Redis on 127.0.0.1:6379 (`RUNCELL_TEST_REDIS_URL`). The tests run one at a time: each
//! starts several servers, and the machine they run on may have two cores.

#[allow(
    dead_code,
    reason = "shared with other test binaries, each of which uses a different part of it"
)]
#[path = "support/distributed.rs"]
mod distributed;
#[path = "support/guests.rs"]
mod guests;
#[allow(
    dead_code,
    reason = "shared with other test binaries, each of which uses a different part of it"
)]
#[path = "support/metrics.rs"]
mod metrics;
#[allow(
    dead_code,
    reason = "shared with other test binaries, each of which uses a different part of it"
)]
#[path = "support/server.rs"]
mod server;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use deadpool_redis::redis;
use serde_json::{Value, json};

use distributed::{TestDatabase, TestPrefix, block_on, redis_url};
use server::{Server, ServerOptions, is_final};

/// How long a node may hold a claimed execution without renewing it.
const EXECUTION_LEASE: &str = "3s";
/// The scheduler lease's time to live (`scheduler::SCHEDULER_LEASE_TTL`).
const SCHEDULER_LEASE_TTL: Duration = Duration::from_secs(5);

/// One cluster test at a time: each runs several servers.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    // A failed test poisons the lock; the next one still runs.
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl TestDatabase {
    /// How many executions of `job_id` are in a final state, read straight from the
    /// database (not through a node).
    fn final_executions(&self, job_id: &str) -> usize {
        use sqlx::{Connection, Row};
        block_on(async {
            let mut connection = sqlx::PgConnection::connect(&self.url).await.unwrap();
            let row = sqlx::query(
                "SELECT count(*) AS n FROM executions WHERE job_id = $1 \
                 AND status IN ('COMPLETED', 'FAILED', 'TIMED_OUT', 'CANCELLED')",
            )
            .bind(job_id)
            .fetch_one(&mut connection)
            .await
            .unwrap();
            let _ = connection.close().await;
            usize::try_from(row.get::<i64, _>("n")).unwrap()
        })
    }
}

impl TestPrefix {
    /// Entries in the deployment's execution stream: offered, not yet acknowledged.
    fn stream_length(&self) -> redis::RedisResult<usize> {
        let client = redis::Client::open(redis_url())?;
        let mut connection = client.get_connection()?;
        redis::cmd("XLEN")
            .arg(format!("{}:executions", self.0))
            .query(&mut connection)
    }
}

/// The settings of a node of the deployment on `database_url`, `redis_url` and `prefix`.
fn node_env(
    database_url: &str,
    redis_url: &str,
    prefix: &TestPrefix,
    node_id: &str,
) -> Vec<(String, String)> {
    [
        ("DATABASE_URL", database_url),
        ("REDIS_URL", redis_url),
        ("RUNCELL_REDIS_PREFIX", prefix.0.as_str()),
        ("RUNCELL_NODE_ID", node_id),
        ("RUNCELL_EXECUTION_LEASE", EXECUTION_LEASE),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value.to_owned()))
    .collect()
}

/// Nodes of one deployment. Fields drop in order: the nodes die before their database
/// and keys are removed, so nothing writes them again.
struct Cluster {
    nodes: Vec<Server>,
    prefix: TestPrefix,
    database: TestDatabase,
}

impl Cluster {
    /// `count` nodes named `node-a`, `node-b`, ..., each with `workers` workers.
    fn start(count: usize, workers: usize) -> Self {
        Self::start_with_env(count, workers, &[])
    }

    /// Like [`Cluster::start`], each node with the variables `env` too.
    fn start_with_env(count: usize, workers: usize, env: &[(&str, &str)]) -> Self {
        let mut cluster = Self {
            nodes: Vec::new(),
            prefix: TestPrefix::new(),
            database: TestDatabase::create(),
        };
        // The first node migrates the database and creates the admin and the signing
        // key; the others find them.
        for _ in 0..count {
            cluster.add_node(workers, env);
        }
        cluster
    }

    /// Starts one more node, named after its position, with the variables `env` too.
    fn add_node(&mut self, workers: usize, env: &[(&str, &str)]) -> &Server {
        let node_id = format!("node-{}", (b'a' + self.nodes.len() as u8) as char);
        let mut variables = node_env(&self.database.url, &redis_url(), &self.prefix, &node_id);
        variables.extend(
            env.iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned())),
        );
        self.nodes.push(Server::start_with(ServerOptions {
            workers: Some(workers),
            retry_base_delay: "50ms".to_owned(),
            env: variables,
            generated_admin_password: false,
        }));
        self.nodes.last().expect("just started")
    }

    fn node(&self, index: usize) -> &Server {
        &self.nodes[index]
    }

    /// Index of the node called `node_id`.
    fn index_of(&self, node_id: &str) -> usize {
        let index = node_id
            .strip_prefix("node-")
            .and_then(|name| name.bytes().next())
            .unwrap_or_else(|| panic!("not a test node: {node_id}"));
        (index - b'a') as usize
    }
}

fn id(value: &Value) -> String {
    value["id"].as_str().expect("an id").to_owned()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Uploads `guest` through `server` and creates a job of it; returns the job's id.
fn job(server: &Server, guest: &str, definition: Value) -> String {
    let reply = server.post_bytes(
        "/api/v1/modules?approve=true",
        "application/wasm",
        &guests::guest_bytes(guest),
    );
    // Another test step may have uploaded it already: same content, same version.
    assert_eq!(reply.status, 201, "upload of {guest}: {}", reply.body);
    id(&server.create_job(&definition))
}

/// Waits until every execution of `job_id` is final and there are at least `roots`
/// chains of attempts; returns them all. Panics with the stragglers after `timeout`.
fn wait_all_final(server: &Server, job_id: &str, roots: usize, timeout: Duration) -> Vec<Value> {
    let mut executions = Vec::new();
    let done = server.wait_until(timeout, || {
        executions = server.executions(&format!("jobId={job_id}"));
        let first_attempts = executions.iter().filter(|e| e["attempt"] == 1).count();
        first_attempts >= roots && executions.iter().all(is_final)
    });
    if !done {
        let stragglers: Vec<String> = executions
            .iter()
            .filter(|e| !is_final(e))
            .map(|e| format!("{} {} on {}", e["id"], e["status"], e["nodeId"]))
            .collect();
        panic!(
            "after {timeout:?}: {} executions, not final: {stragglers:?}",
            executions.len()
        );
    }
    executions
}

/// Checks the executions as chains of attempts (first attempt, then its retries) and
/// returns each chain's attempts in order, by first attempt id: no id twice, attempts
/// numbered 1, 2, ... with `retryOf` naming the first, every attempt but the last FAILED,
/// and so at most one COMPLETED per chain.
fn chains(executions: &[Value]) -> BTreeMap<String, Vec<Value>> {
    let mut seen = HashSet::new();
    let mut chains: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for execution in executions {
        let id = id(execution);
        assert!(seen.insert(id.clone()), "execution {id} listed twice");
        let root = match execution["retryOf"].as_str() {
            Some(first) => {
                assert!(execution["attempt"].as_u64().unwrap() > 1, "{execution}");
                first.to_owned()
            }
            None => {
                assert_eq!(execution["attempt"], 1, "{execution}");
                id
            }
        };
        chains.entry(root).or_default().push(execution.clone());
    }
    for (root, attempts) in &mut chains {
        attempts.sort_by_key(|e| e["attempt"].as_u64().unwrap());
        let numbers: Vec<u64> = attempts
            .iter()
            .map(|e| e["attempt"].as_u64().unwrap())
            .collect();
        let expected: Vec<u64> = (1..=attempts.len() as u64).collect();
        assert_eq!(numbers, expected, "attempts of {root}");
        assert_eq!(id(&attempts[0]), *root, "the first attempt of {root}");
        for earlier in &attempts[..attempts.len() - 1] {
            assert_eq!(
                earlier["status"], "FAILED",
                "only a failed attempt is retried: {earlier}"
            );
        }
    }
    chains
}

// ---- tests -------------------------------------------------------------------------

#[test]
fn work_is_spread_over_the_nodes_and_each_execution_completes_exactly_once() {
    let _turn = one_at_a_time();
    let cluster = Cluster::start(2, 4);
    let (a, b) = (cluster.node(0), cluster.node(1));

    // A token from one node is good on the other: they share the signing key.
    let reply = b.request_as(Some(a.token()), "GET", "/api/v1/jobs", None);
    assert_eq!(reply.status, 200, "{}", reply.body);

    let job_id = job(
        a,
        "hello",
        json!({"name": "noop", "module": "hello", "job": "noop"}),
    );
    let queued = b.execute_bulk(&job_id, &json!({"count": 300}));
    assert_eq!(queued.len(), 300);

    let executions = wait_all_final(a, &job_id, 300, Duration::from_secs(60));
    let chains = chains(&executions);
    assert_eq!(chains.len(), 300);
    assert_eq!(
        executions.len(),
        300,
        "no-op runs complete the first time, never twice"
    );
    let queued: HashSet<String> = queued.into_iter().collect();
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for execution in &executions {
        assert!(queued.contains(&id(execution)), "{execution}");
        assert_eq!(execution["status"], "COMPLETED", "{execution}");
        *per_node
            .entry(execution["nodeId"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(
        per_node.keys().collect::<HashSet<_>>(),
        HashSet::from([&"node-a".to_owned(), &"node-b".to_owned()]),
        "both nodes ran executions: {per_node:?}"
    );

    let nodes = b.get("/api/v1/nodes");
    assert_eq!(nodes.status, 200, "{}", nodes.body);
    let alive: Vec<&str> = nodes.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|node| node["alive"] == true)
        .map(|node| node["nodeId"].as_str().unwrap())
        .collect();
    assert_eq!(alive, ["node-a", "node-b"], "{}", nodes.body);
}

#[test]
fn the_server_bench_runs_on_two_nodes_of_one_deployment() {
    let _turn = one_at_a_time();
    let database = TestDatabase::create();
    let prefix = TestPrefix::new();
    let hello = guests::guest("hello");
    let hostile = guests::guest("hostile");
    let redis = redis_url();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_runcell"))
        .args(["bench", "server", "--nodes", "2", "--noop-module"])
        .arg(&hello)
        .arg("--probe-module")
        .arg(&hostile)
        .args([
            "--noop",
            "400",
            "--cpu",
            "40",
            "--rate",
            "100",
            "--latency-for",
            "300ms",
            "--storm-for",
            "300ms",
        ])
        .args(["--", "--database-url", &database.url, "--redis-url", &redis])
        .args(["--redis-prefix", &prefix.0])
        .output()
        .expect("runcell starts");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Both servers answer, and the warm-up runs (one per node and phase) are not counted.
    let servers = printed
        .lines()
        .find_map(|line| line.strip_prefix("runcell bench server — "))
        .unwrap_or_else(|| panic!("no server line in:\n{printed}"));
    assert_eq!(servers.split(", ").count(), 2, "{printed}");
    for expected in [
        "(400 COMPLETED, every one recorded",
        "(40 COMPLETED, every one recorded",
        "dispatch latency at 100 executions/s (30 runs): p50",
    ] {
        assert!(printed.contains(expected), "no `{expected}` in:\n{printed}");
    }
}

#[test]
fn a_node_killed_mid_batch_leaves_every_execution_final_exactly_once() {
    let _turn = one_at_a_time();
    let mut cluster = Cluster::start(2, 2);
    let a = cluster.node(0);
    // About 100 ms of CPU a run on the reference machine (2,000 turns a microsecond).
    let job_id = job(
        a,
        "hostile",
        json!({"name": "burn", "module": "hostile", "job": "burn",
               "input": {"iterations": 200_000_000_u64}, "maxAttempts": 3}),
    );
    let queued = a.execute_bulk(&job_id, &json!({"count": 40}));

    // Kill node b while it runs some of them.
    let mut victims = Vec::new();
    let found = a.wait_until(Duration::from_secs(30), || {
        victims = a
            .executions(&format!("jobId={job_id}&status=RUNNING"))
            .into_iter()
            .filter(|e| e["nodeId"] == "node-b")
            .map(|e| id(&e))
            .collect();
        !victims.is_empty()
    });
    assert!(found, "node b never ran an execution");
    cluster.nodes[1].kill();
    let killed_at = Instant::now();
    let a = cluster.node(0);

    let executions = wait_all_final(a, &job_id, queued.len(), Duration::from_secs(60));
    let elapsed = killed_at.elapsed();
    let chains = chains(&executions);
    assert_eq!(
        chains.keys().cloned().collect::<HashSet<_>>(),
        queued.iter().cloned().collect::<HashSet<_>>(),
        "every queued execution, nothing else"
    );
    for (root, attempts) in &chains {
        let last = attempts.last().unwrap();
        assert_eq!(
            last["status"], "COMPLETED",
            "{root}: the survivor completes it within 3 attempts: {attempts:?}"
        );
    }
    // The runs node b held when it died were taken over by a: failed and retried if b
    // had written down that they began, else put back in the queue as they were (a run
    // killed in the first moments of its handler runs again as the same attempt).
    for victim in &victims {
        let attempts = &chains[victim];
        if attempts.len() >= 2 {
            assert_eq!(attempts[0]["nodeId"], "node-b", "{attempts:?}");
            assert_eq!(attempts[0]["errorKind"], "LEASE_EXPIRED", "{attempts:?}");
        }
        assert_eq!(attempts.last().unwrap()["nodeId"], "node-a", "{attempts:?}");
    }
    // Whatever b had claimed but not begun went back to the queue: only runs that were
    // on b's workers (two) can have failed.
    let failed = executions
        .iter()
        .filter(|e| e["status"] == "FAILED")
        .count();
    assert!(failed <= 2, "{failed} failed with two workers on node b");
    // Usage counted each of them once, with the status it ended in, whichever node
    // (or the reconciler) made it final.
    let report = a.get(&format!(
        "/api/v1/usage/summary?groupBy=job&jobId={job_id}&from=0"
    ));
    assert_eq!(report.status, 200, "{}", report.body);
    let line = &report.body["items"][0];
    assert_eq!(line["runs"], executions.len(), "{line}");
    assert_eq!(line["failed"], failed, "{line}");
    assert_eq!(line["completed"], executions.len() - failed, "{line}");
    eprintln!(
        "{} executions in {} chains final {elapsed:?} after the kill",
        executions.len(),
        chains.len()
    );
}

#[test]
fn a_batch_survives_redis_losing_every_key() {
    let _turn = one_at_a_time();
    let cluster = Cluster::start(2, 1);
    let (a, b) = (cluster.node(0), cluster.node(1));
    // About 25 ms a run: 300 of them keep the two workers busy for several seconds, so
    // many are still waiting in Redis when it forgets them, however fast the machine.
    let job_id = job(
        a,
        "hostile",
        json!({"name": "burn", "module": "hostile", "job": "burn",
               "input": {"iterations": 50_000_000_u64}}),
    );
    let queued = b.execute_bulk(&job_id, &json!({"count": 300}));
    let deleted = cluster.prefix.delete_keys().expect("Redis answers");
    assert!(deleted > 0, "the batch was in Redis");
    let waiting = a.executions(&format!("jobId={job_id}&status=QUEUED")).len();
    assert!(waiting > 0, "the batch finished before Redis lost it");

    // The node that finds the stream gone offers the queued rows again at once, not
    // once they have waited 20 s: they are back in Redis well before that.
    let lost_at = Instant::now();
    let mut in_stream = 0;
    let back = a.wait_until(Duration::from_secs(12), || {
        in_stream = cluster.prefix.stream_length().expect("Redis answers");
        in_stream > 0
            || a.executions(&format!("jobId={job_id}&status=QUEUED"))
                .is_empty()
    });
    assert!(back, "the queued rows were not offered again at once");
    eprintln!("offered again {:?} after the loss", lost_at.elapsed());

    let executions = wait_all_final(a, &job_id, queued.len(), Duration::from_secs(90));
    let chains = chains(&executions);
    assert_eq!(chains.len(), queued.len());
    for (root, attempts) in &chains {
        assert_eq!(
            attempts.last().unwrap()["status"],
            "COMPLETED",
            "{root}: {attempts:?}"
        );
    }
    eprintln!(
        "{waiting} of {} were queued when Redis lost them",
        queued.len()
    );
}

#[test]
fn a_backlog_waiting_its_turn_is_offered_again_at_most_once_by_one_node() {
    let _turn = one_at_a_time();
    let cluster = Cluster::start(2, 1);
    let a = cluster.node(0);
    // Longer than the 20 s after which a queued row looks stranded, on one worker a node.
    let job_id = job(
        a,
        "hostile",
        json!({"name": "spin", "module": "hostile", "job": "spin",
               "fuel": 400_000_000_000_u64, "timeoutMs": 1_000}),
    );
    let queued = a.execute_bulk(&job_id, &json!({"count": 70}));
    let mut most = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(28) {
        most = most.max(cluster.prefix.stream_length().expect("Redis answers"));
        thread::sleep(Duration::from_millis(250));
    }
    // Every pass of every node offered every waiting row again before: the stream
    // grew by twice the backlog every two seconds. Once by one node, it holds each row
    // at most twice.
    assert!(
        most <= 2 * queued.len(),
        "{most} stream entries for {} executions",
        queued.len()
    );
    let still_queued = a.executions(&format!("jobId={job_id}&status=QUEUED")).len();
    assert!(
        still_queued > 0,
        "the backlog was gone before it looked stranded"
    );
    eprintln!("at most {most} stream entries; {still_queued} still queued after 28 s");
}

#[test]
fn cron_fires_once_per_tick_when_the_leader_is_killed() {
    let _turn = one_at_a_time();
    let mut cluster = Cluster::start(3, 2);
    let job_id = job(
        cluster.node(0),
        "hello",
        json!({"name": "every-second", "module": "hello", "job": "noop",
               "schedule": "* * * * * *"}),
    );
    thread::sleep(Duration::from_secs(4));
    let leader = cluster
        .database
        .lease_holder("scheduler")
        .expect("a node holds the scheduler lease");
    // Every node names the same leader in its listing.
    for node in &cluster.nodes {
        let listed = node.get("/api/v1/nodes");
        let leaders: Vec<&str> = listed.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["cronLeader"] == true)
            .map(|n| n["nodeId"].as_str().unwrap())
            .collect();
        assert_eq!(leaders, [leader.as_str()], "{}", listed.body);
    }
    let leader = cluster.index_of(&leader);
    cluster.nodes[leader].kill();
    let killed_at = now_ms();
    thread::sleep(Duration::from_secs(8));
    let listed = cluster.node((leader + 1) % 3).get("/api/v1/nodes");
    let leaders = listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["cronLeader"] == true)
        .count();
    assert_eq!(leaders, 1, "a survivor took over: {}", listed.body);

    let survivor = cluster.node((leader + 1) % 3);
    let reply = survivor.patch_json(
        &format!("/api/v1/jobs/{job_id}"),
        &json!({"enabled": false}),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let stopped_at = now_ms();
    let executions = survivor.executions(&format!("jobId={job_id}"));
    let mut ticks: Vec<i64> = executions
        .iter()
        .map(|e| {
            assert_eq!(e["trigger"], "cron", "{e}");
            assert_eq!(e["attempt"], 1, "{e}");
            e["cronTick"].as_i64().unwrap()
        })
        .collect();
    ticks.sort_unstable();
    let distinct: HashSet<i64> = ticks.iter().copied().collect();
    assert_eq!(distinct.len(), ticks.len(), "a tick fired twice: {ticks:?}");
    for e in &executions {
        assert_eq!(e["scheduledAt"], e["cronTick"], "{e}");
    }
    let before = ticks.iter().filter(|&&t| t < killed_at).count();
    let after: Vec<i64> = ticks.iter().copied().filter(|&t| t >= killed_at).collect();
    assert!(before >= 3, "cron ran before the kill: {ticks:?}");
    // Another node takes the lease once it expires, and firing continues each second.
    let resumed_by = killed_at + SCHEDULER_LEASE_TTL.as_millis() as i64 + 1_500;
    assert!(
        after.iter().any(|&t| t <= resumed_by),
        "no tick within the lease TTL after the kill at {killed_at}: {ticks:?}"
    );
    let last_second = stopped_at - 2_000;
    assert!(
        after.iter().any(|&t| t >= last_second),
        "ticks stopped after the kill at {killed_at}: {ticks:?}"
    );
    for pair in ticks.windows(2) {
        assert!(
            pair[1] - pair[0] <= SCHEDULER_LEASE_TTL.as_millis() as i64 + 1_500,
            "a gap longer than the lease TTL: {ticks:?}"
        );
    }
}

#[test]
fn an_event_published_on_any_node_runs_each_subscriber_exactly_once() {
    let _turn = one_at_a_time();
    let cluster = Cluster::start(2, 2);
    let (a, b) = (cluster.node(0), cluster.node(1));
    let first = job(
        a,
        "hello",
        json!({"name": "first", "module": "hello", "job": "noop", "onEvent": "cluster.test"}),
    );
    let second = id(&b.create_job(
        &json!({"name": "second", "module": "hello", "job": "noop", "onEvent": "cluster.test"}),
    ));
    const EVENTS: usize = 20;
    let mut event_ids = HashSet::new();
    for n in 0..EVENTS {
        let node = cluster.node(n % 2);
        let reply = node.post_json(
            "/api/v1/events",
            &json!({"topic": "cluster.test", "payload": {"n": n}}),
        );
        assert_eq!(reply.status, 202, "{}", reply.body);
        event_ids.insert(reply.body["eventId"].as_str().unwrap().to_owned());
    }
    for job_id in [first, second] {
        let executions = wait_all_final(b, &job_id, EVENTS, Duration::from_secs(30));
        assert_eq!(
            executions.len(),
            EVENTS,
            "one run per event: {executions:?}"
        );
        let triggered: HashSet<String> = executions
            .iter()
            .map(|e| {
                assert_eq!(e["status"], "COMPLETED", "{e}");
                e["eventId"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(triggered, event_ids);
    }
}

#[test]
fn a_self_feeding_chain_of_events_stops_at_the_depth_limit_whichever_node_runs_it() {
    let _turn = one_at_a_time();
    let cluster = Cluster::start(2, 2);
    let (a, b) = (cluster.node(0), cluster.node(1));
    let looping = job(
        a,
        "hostile",
        json!({"name": "loop", "module": "hostile", "job": "publish-on", "onEvent": "hostile.*"}),
    );
    let reply = b.post_json("/api/v1/events", &json!({"topic": "hostile.start"}));
    assert_eq!(reply.status, 202, "{}", reply.body);
    let runs = wait_all_final(a, &looping, 8, Duration::from_secs(30));
    // Nothing more comes: the ninth event started nothing.
    thread::sleep(Duration::from_millis(1_500));
    let runs_after = a.executions(&format!("jobId={looping}"));
    assert_eq!((runs.len(), runs_after.len()), (8, 8), "{runs_after:?}");
    let events = b.get("/api/v1/events?limit=50").body["items"]
        .as_array()
        .unwrap()
        .clone();
    let mut depths: Vec<u64> = events
        .iter()
        .map(|e| e["depth"].as_u64().unwrap())
        .collect();
    depths.sort_unstable();
    assert_eq!(depths, (1..=9).collect::<Vec<_>>(), "{events:?}");
    let deepest = events.iter().find(|e| e["depth"] == 9).unwrap();
    assert_eq!(
        deepest["refused"][0]["jobId"],
        looping.as_str(),
        "{deepest}"
    );
}

#[test]
fn following_a_log_on_another_node_streams_its_lines_and_end() {
    let _turn = one_at_a_time();
    let cluster = Cluster::start(2, 2);
    let (a, b) = (cluster.node(0), cluster.node(1));
    let job_id = job(
        a,
        "data-sync",
        json!({"name": "sync", "module": "data-sync", "job": "hourly-sync"}),
    );
    // Requested on node a while a worker of it is free, it runs there; followed on b
    // from the moment it exists.
    let execution = a.execute(&job_id, None);
    let events = b.follow(&execution, Duration::from_secs(30));
    let finished = a.wait_final(&execution, Duration::from_secs(20));
    assert_eq!(finished["nodeId"], "node-a", "{finished}");
    let stored: Vec<Value> = a
        .logs(&execution)
        .iter()
        .map(|line| line["message"].clone())
        .collect();
    assert!(stored.len() >= 2, "hourly-sync logs its start and end");
    let streamed: Vec<Value> = events
        .iter()
        .filter(|(name, _)| name == "log")
        .map(|(_, data)| data["message"].clone())
        .collect();
    assert_eq!(streamed, stored, "{events:?}");
    let (name, end) = events.last().expect("events");
    assert_eq!(name, "end", "{events:?}");
    assert_eq!(end["status"], "COMPLETED", "{events:?}");
}

#[test]
fn a_run_awaited_on_one_node_answers_when_it_ends_on_another() {
    let _turn = one_at_a_time();
    let cluster = Cluster::start(2, 1);
    let a = cluster.node(0);
    let spin = job(
        a,
        "hostile",
        json!({"name": "spin", "module": "hostile", "job": "spin",
               "fuel": 400_000_000_000_u64, "timeoutMs": 30_000}),
    );
    let echo = id(&a.create_job(&json!({"name": "echo", "module": "hostile", "job": "echo"})));
    let fail =
        id(&a.create_job(&json!({"name": "fail", "module": "hostile", "job": "fail-permanent"})));

    // A spin takes the only worker of whichever node claims it; runs awaited on that
    // node then run on the other one.
    let spinning = a.execute(&spin, None);
    let mut busy = Value::Null;
    let started = a.wait_until(Duration::from_secs(20), || {
        busy = a.execution(&spinning);
        busy["status"] == "RUNNING"
    });
    assert!(started, "the spin never started: {busy}");
    let busy_node = busy["nodeId"].as_str().unwrap().to_owned();
    let here = cluster.node(cluster.index_of(&busy_node));
    let elsewhere = if busy_node == "node-a" {
        "node-b"
    } else {
        "node-a"
    };

    for (job_id, status) in [(&echo, "COMPLETED"), (&fail, "FAILED")] {
        let reply = here.post(&format!("/api/v1/jobs/{job_id}/execute?wait=30s"));
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.body["status"], status, "{}", reply.body);
        assert_eq!(reply.body["nodeId"], elsewhere, "{}", reply.body);
        // 200, not 202: it answered because the run ended, not because the wait did.
        assert_eq!(reply.body, here.execution(&id(&reply.body)));
    }

    // Still running elsewhere when the wait ends: 202 with the run as it stands.
    let asked = Instant::now();
    let reply = here.post(&format!("/api/v1/jobs/{spin}/execute?wait=1500ms"));
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert!(asked.elapsed() >= Duration::from_millis(1500));
    assert!(
        reply.body["status"] == "RUNNING" || reply.body["status"] == "QUEUED",
        "{}",
        reply.body
    );
    for running in [spinning, id(&reply.body)] {
        let cancelled = a.post(&format!("/api/v1/executions/{running}/cancel"));
        assert_eq!(cancelled.status, 200, "{}", cancelled.body);
        let ended = a.wait_final(&running, Duration::from_secs(20));
        assert_eq!(ended["status"], "CANCELLED", "{ended}");
    }
}

#[test]
fn a_module_serves_its_routes_on_every_node_and_changes_reach_them_all() {
    let _turn = one_at_a_time();
    let cluster = Cluster::start(2, 2);
    let (a, b) = (cluster.node(0), cluster.node(1));
    let version_on = |node: &Server, token: Option<&str>| {
        node.request_as(token, "GET", "/m/route-probe/version", None)
    };
    let upload = |node: &Server, guest: &str| {
        let reply = node.post_bytes(
            "/api/v1/modules?approve=true",
            "application/wasm",
            &guests::guest_bytes(guest),
        );
        assert_eq!(reply.status, 201, "upload of {guest}: {}", reply.body);
    };

    upload(a, "route-probe");
    let served = version_on(b, Some(b.token()));
    assert_eq!(served.status, 200, "{}", served.body);
    assert_eq!(served.body, json!("1.0.0"));

    // Other nodes learn of a change within their catalog's second.
    assert_eq!(a.post("/api/v1/modules/route-probe/disable").status, 200);
    assert!(
        b.wait_until(Duration::from_secs(5), || version_on(b, Some(b.token()))
            .status
            == 404),
        "node-b still serves a disabled module's routes"
    );
    assert_eq!(a.post("/api/v1/modules/route-probe/enable").status, 200);
    upload(b, "route-probe-v2");
    assert!(
        a.wait_until(Duration::from_secs(5), || {
            version_on(a, None).body == json!("2.0.0")
        }),
        "node-a does not serve the new version: {}",
        version_on(a, None).body
    );
}

#[test]
fn nodes_sharing_a_secret_key_run_jobs_with_secrets_and_a_node_without_one_refuses_them() {
    const SECRET: &str = "hunter2-cluster-token";
    const KEY: &str = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";
    let _turn = one_at_a_time();
    let mut cluster = Cluster::start_with_env(2, 2, &[("RUNCELL_SECRET_KEY", KEY)]);
    let (a, b) = (cluster.node(0), cluster.node(1));
    let job_id = job(
        a,
        "hostile",
        json!({"name": "probe", "module": "hostile", "job": "use-everything",
               "config": {"region": "eu", "apiKey": {"secret": SECRET}}}),
    );
    b.execute_bulk(&job_id, &json!({"count": 8}));
    let executions = wait_all_final(a, &job_id, 8, Duration::from_secs(60));
    for execution in &executions {
        assert_eq!(execution["status"], "COMPLETED", "{execution}");
        assert_eq!(
            execution["result"]["config"],
            json!({"apiKey": "***", "region": "eu"}),
            "whichever node ran it opened the secret: {execution}"
        );
    }

    // Keyless, a node still serves and takes plain settings, but refuses new secrets.
    let keyless = cluster.add_node(1, &[]);
    let refused = keyless.post_json(
        "/api/v1/jobs",
        &json!({"name": "other", "module": "hostile", "job": "echo",
               "config": {"apiKey": {"secret": SECRET}}}),
    );
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert_eq!(refused.field(), "config.apiKey");
    assert!(
        refused.message().contains("RUNCELL_SECRET_KEY"),
        "{}",
        refused.body
    );
    // Keeping a stored secret needs no key: an edit sent back from a read works there.
    let mut config = keyless.get(&format!("/api/v1/jobs/{job_id}")).body["config"].clone();
    config["region"] = json!("us");
    let patched = keyless.patch_json(
        &format!("/api/v1/jobs/{job_id}"),
        &json!({"config": config}),
    );
    assert_eq!(patched.status, 200, "{}", patched.body);
    assert_eq!(
        patched.body["config"],
        json!({"apiKey": {"secret": "***"}, "region": "us"})
    );
    for node in &cluster.nodes {
        assert!(!node.output().contains(SECRET));
    }
}

/// A TCP relay to a real server that a test can cut and restore, to take a dependency
/// away from a node without touching the server other tests share. While cut, open
/// connections are closed and new ones are accepted and dropped at once.
struct Relay {
    port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl Relay {
    fn start(upstream: &str) -> Self {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let connections: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
        let (relay_up, open) = (up.clone(), connections.clone());
        let upstream = upstream.to_owned();
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if !relay_up.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                    continue;
                };
                let (Ok(client_copy), Ok(server_copy)) = (client.try_clone(), server.try_clone())
                else {
                    continue;
                };
                let mut open = open.lock().unwrap();
                open.extend([client_copy, server_copy]);
                pump(&client, &server);
                pump(&server, &client);
            }
        });
        Self {
            port,
            up,
            connections,
        }
    }

    /// `url` (a database URL) made to go through this relay.
    fn url_for(&self, url: &str) -> String {
        let mut relayed = url::Url::parse(url).unwrap();
        relayed.set_host(Some("127.0.0.1")).unwrap();
        relayed.set_port(Some(self.port)).unwrap();
        relayed.to_string()
    }

    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for connection in self.connections.lock().unwrap().drain(..) {
            let _ = connection.shutdown(std::net::Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The `host:port` a database URL names.
fn upstream_of(url: &str) -> String {
    let url = url::Url::parse(url).unwrap();
    format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432))
}

/// Copies `from` into `to` on a thread of its own until either side closes.
fn pump(from: &std::net::TcpStream, to: &std::net::TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}

#[test]
fn a_node_rides_out_a_redis_outage_and_runs_what_was_asked_meanwhile() {
    let _turn = one_at_a_time();
    let database = TestDatabase::create();
    let prefix = TestPrefix::new();
    let redis = Relay::start("127.0.0.1:6379");
    let relayed_url = format!("redis://127.0.0.1:{}", redis.port);
    let node = Server::start_with(ServerOptions {
        workers: Some(2),
        env: node_env(&database.url, &relayed_url, &prefix, "node-a"),
        ..ServerOptions::default()
    });
    let job_id = job(
        &node,
        "hello",
        json!({"name": "noop", "module": "hello", "job": "noop"}),
    );

    redis.cut();
    let readiness = || node.request_as(None, "GET", "/readyz", None);
    assert!(
        node.wait_until(Duration::from_secs(10), || {
            let reply = readiness();
            reply.status == 503 && reply.body["error"]["details"]["checks"]["queue"] != "ok"
        }),
        "/readyz does not say the queue is down: {}",
        readiness().body
    );
    assert_eq!(
        readiness().body["error"]["details"]["checks"]["database"],
        "ok"
    );
    // What needs only the database still works, and new work is taken: its rows are
    // the truth, and they wait there for the queue.
    assert_eq!(node.get(&format!("/api/v1/jobs/{job_id}")).status, 200);
    let queued = node.execute_bulk(&job_id, &json!({"count": 20}));
    assert_eq!(queued.len(), 20);
    thread::sleep(Duration::from_secs(2));

    redis.restore();
    assert!(
        node.wait_until(Duration::from_secs(15), || readiness().status == 200),
        "/readyz does not recover: {}",
        readiness().body
    );
    let executions = wait_all_final(&node, &job_id, 20, Duration::from_secs(60));
    assert_eq!(executions.len(), 20, "each ran once, none twice");
    for execution in &executions {
        assert_eq!(execution["status"], "COMPLETED", "{execution}");
    }
}

#[test]
fn runs_outliving_a_database_outage_longer_than_their_lease_keep_their_node_and_results() {
    let _turn = one_at_a_time();
    let database = TestDatabase::create();
    let prefix = TestPrefix::new();
    let postgres = Relay::start(&upstream_of(&database.url));
    let node = Server::start_with(ServerOptions {
        workers: Some(3),
        env: node_env(
            &postgres.url_for(&database.url),
            &redis_url(),
            &prefix,
            "node-a",
        ),
        ..ServerOptions::default()
    });
    // Runs that end by their clock, well after the outage; one attempt each, so a run
    // wrongly taken from its live node would end FAILED and never be retried.
    let job_id = job(
        &node,
        "hostile",
        json!({"name": "spin", "module": "hostile", "job": "spin", "maxAttempts": 1,
               "fuel": 400_000_000_000_u64, "timeoutMs": 9_000}),
    );
    let runs: Vec<String> = (0..2).map(|_| node.execute(&job_id, None)).collect();
    assert!(node.wait_until(Duration::from_secs(10), || {
        runs.iter()
            .all(|run| node.execution(run)["status"] == "RUNNING")
    }));
    thread::sleep(Duration::from_millis(300));

    // Cut for more than the lease (3 s): no lease can be renewed meanwhile.
    postgres.cut();
    thread::sleep(Duration::from_secs(5));
    postgres.restore();

    for run in &runs {
        let execution = node.wait_final(run, Duration::from_secs(30));
        assert_eq!(execution["status"], "TIMED_OUT", "{execution}");
        assert_eq!(execution["attempt"], 1, "{execution}");
        assert_eq!(execution["nodeId"], "node-a", "{execution}");
    }
    assert_eq!(
        node.executions(&format!("jobId={job_id}")).len(),
        runs.len()
    );
    assert!(
        !node.output().contains("result refused"),
        "{}",
        node.output()
    );
}

#[test]
fn a_node_restarted_under_its_id_takes_back_at_once_what_its_previous_process_held() {
    let _turn = one_at_a_time();
    let database = TestDatabase::create();
    let prefix = TestPrefix::new();
    let mut env = node_env(&database.url, &redis_url(), &prefix, "node-a");
    // A lease far longer than the test: only the restart can settle the run in time.
    env.retain(|(key, _)| key != "RUNCELL_EXECUTION_LEASE");
    env.push(("RUNCELL_EXECUTION_LEASE".to_owned(), "10m".to_owned()));
    let mut node = Server::start_with(ServerOptions {
        workers: Some(2),
        env,
        ..ServerOptions::default()
    });
    let job_id = job(
        &node,
        "hostile",
        json!({"name": "spin", "module": "hostile", "job": "spin", "maxAttempts": 1,
               "fuel": 400_000_000_000_u64, "timeoutMs": 60_000}),
    );
    let run = node.execute(&job_id, None);
    assert!(
        node.wait_until(Duration::from_secs(10), || node.execution(&run)["status"]
            == "RUNNING")
    );
    thread::sleep(Duration::from_millis(300));
    node.kill();
    node.restart();

    let execution = node.wait_final(&run, Duration::from_secs(10));
    assert_eq!(execution["status"], "FAILED", "{execution}");
    assert_eq!(execution["errorKind"], "LEASE_EXPIRED", "{execution}");
}

#[test]
fn a_node_rides_out_a_postgres_outage_and_loses_nothing() {
    let _turn = one_at_a_time();
    let database = TestDatabase::create();
    let prefix = TestPrefix::new();
    let postgres = Relay::start(&upstream_of(&database.url));
    let relayed_url = postgres.url_for(&database.url);
    let node = Server::start_with(ServerOptions {
        workers: Some(2),
        env: node_env(&relayed_url, &redis_url(), &prefix, "node-a"),
        ..ServerOptions::default()
    });
    // About 20 ms of CPU each: the batch is still running when the database goes.
    let job_id = job(
        &node,
        "hostile",
        json!({"name": "burn", "module": "hostile", "job": "burn", "maxAttempts": 3,
               "input": {"iterations": 8_000_000}}),
    );
    let queued = node.execute_bulk(&job_id, &json!({"count": 200}));
    thread::sleep(Duration::from_millis(500));

    postgres.cut();
    let readiness = || node.request_as(None, "GET", "/readyz", None);
    assert!(
        node.wait_until(Duration::from_secs(10), || {
            let reply = readiness();
            reply.status == 503 && reply.body["error"]["details"]["checks"]["database"] != "ok"
        }),
        "/readyz does not say the database is down: {}",
        readiness().body
    );
    assert_eq!(node.request_as(None, "GET", "/healthz", None).status, 200);
    thread::sleep(Duration::from_secs(3));
    let finished = database.final_executions(&job_id);
    assert!(
        finished < queued.len(),
        "the batch ended before the outage ({finished} final)"
    );

    postgres.restore();
    assert!(
        node.wait_until(Duration::from_secs(20), || readiness().status == 200),
        "/readyz does not recover: {}",
        readiness().body
    );
    let executions = wait_all_final(&node, &job_id, queued.len(), Duration::from_secs(90));
    let chains = chains(&executions);
    assert_eq!(chains.len(), queued.len());
    for (root, attempts) in &chains {
        let last = attempts.last().unwrap();
        assert_eq!(last["status"], "COMPLETED", "{root}: {attempts:?}");
    }
}

#[test]
fn each_node_exports_its_own_counts_beside_its_database_and_redis_pools() {
    let _one = one_at_a_time();
    let cluster = Cluster::start(2, 2);
    let first = cluster.node(0);
    let job_id = job(
        first,
        "hostile",
        json!({"name": "echo", "module": "hostile", "job": "echo"}),
    );
    first.execute_bulk(&job_id, &json!({"count": 40}));
    let executions = wait_all_final(first, &job_id, 40, Duration::from_secs(60));
    assert_eq!(executions.len(), 40);

    let mut completed = 0.0;
    for node in &cluster.nodes {
        let reply = node.get("/metrics");
        assert_eq!(reply.status, 200, "{}", reply.body);
        let metrics = metrics::Metrics::parse(reply.body.as_str().expect("a text body"));
        completed += metrics.sum(
            "runcell_executions",
            &[("handler", "echo"), ("status", "COMPLETED")],
        );
        // PostgreSQL: the pool of most statements and the pool of claims.
        for (pool, max) in [("main", 8.0), ("claims", 4.0)] {
            assert_eq!(
                metrics.sum("runcell_db_pool_max_connections", &[("pool", pool)]),
                max,
                "{pool}"
            );
        }
        // Redis: the queue's two pools and the live log relay's.
        for pool in ["queue-commands", "queue-blocking", "logs"] {
            assert!(
                metrics.sum("runcell_redis_pool_max_connections", &[("pool", pool)]) >= 1.0,
                "{pool}"
            );
            assert_eq!(
                metrics
                    .samples("runcell_redis_pool_waiting")
                    .iter()
                    .filter(|(labels, _)| labels["pool"] == pool)
                    .count(),
                1,
                "{pool}"
            );
        }
        // The backlog is the deployment's, read from the shared database.
        assert_eq!(metrics.sum("runcell_executions_queued", &[]), 0.0);
        assert_eq!(
            metrics.samples("runcell_executions_queued").len(),
            2,
            "due and delayed"
        );
    }
    // Each node counts what it ran; together, every run once.
    assert_eq!(completed, 40.0);
}
