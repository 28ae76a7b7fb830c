-- Usage rollups: what runs consumed, per job and per point of time, kept at three steps
-- (`step_ms`: a minute, an hour, a day) so that a question over a month reads hours, not
-- millions of executions, and totals outlive the executions that retention deletes.
--
-- Written by the statement (or transaction) that records an execution's final status,
-- never afterwards, so each execution is counted exactly once: a crash before the commit
-- counts it nowhere and leaves it RUNNING (to be settled, and counted, later); a
-- duplicate result finds it no longer RUNNING and counts nothing. Every step is written
-- from the run itself (not rolled up from the step below), so minutes, hours and days
-- agree by construction. Rows are added to (`ON CONFLICT DO UPDATE SET runs = runs +
-- excluded.runs`), which concurrent writers on several nodes can do without reading.
--
-- `t` is the start of the point, milliseconds since the Unix epoch, a multiple of
-- `step_ms`, of the execution's `finished_at`. `module` and `job` are the execution's
-- (a job's module never changes); history outlives the job, so there is no foreign key.
CREATE TABLE usage_runs (
    step_ms           INTEGER NOT NULL,
    t                 INTEGER NOT NULL,
    job_id            TEXT NOT NULL,
    module            TEXT NOT NULL,
    job               TEXT NOT NULL,
    runs              INTEGER NOT NULL,
    completed         INTEGER NOT NULL,
    failed            INTEGER NOT NULL,
    timed_out         INTEGER NOT NULL,
    cancelled         INTEGER NOT NULL,
    duration_ms_sum   REAL NOT NULL,     -- of the runs that have a duration
    duration_ms_max   REAL NOT NULL,
    cpu_time_ms       REAL NOT NULL,
    fuel_consumed     INTEGER NOT NULL,
    memory_peak_bytes INTEGER NOT NULL,  -- the largest of the runs' peaks
    log_bytes         INTEGER NOT NULL,
    outbound_requests INTEGER NOT NULL,
    PRIMARY KEY (step_ms, t, job_id)
) STRICT, WITHOUT ROWID;

-- One job's usage over time (the primary key serves every job's).
CREATE INDEX usage_runs_by_job ON usage_runs (job_id, step_ms, t);

-- The durations of the runs counted above, as a histogram: `bucket` is
-- `ceil(log2(ms) × 8)` (host/src/domain/usage.rs), `count` the runs in it. Percentiles
-- of any set of points come from the sum of their buckets, exactly as if the runs had
-- been counted together.
CREATE TABLE usage_run_durations (
    step_ms INTEGER NOT NULL,
    t       INTEGER NOT NULL,
    job_id  TEXT NOT NULL,
    module  TEXT NOT NULL,
    bucket  INTEGER NOT NULL,
    count   INTEGER NOT NULL,
    PRIMARY KEY (step_ms, t, job_id, bucket)
) STRICT, WITHOUT ROWID;

-- Outbound HTTP requests of runs, per module and host (the host the guest named).
-- Written with the run's final status, like usage_runs.
CREATE TABLE usage_outbound (
    step_ms        INTEGER NOT NULL,
    t              INTEGER NOT NULL,
    module         TEXT NOT NULL,
    host           TEXT NOT NULL,
    requests       INTEGER NOT NULL,
    responses_2xx  INTEGER NOT NULL,
    responses_3xx  INTEGER NOT NULL,
    responses_4xx  INTEGER NOT NULL,
    responses_5xx  INTEGER NOT NULL,
    errors         INTEGER NOT NULL,     -- sent, but no response (connection, timeout, cap)
    denied         INTEGER NOT NULL,     -- refused by the policy; never sent
    bytes_sent     INTEGER NOT NULL,
    bytes_received INTEGER NOT NULL,
    PRIMARY KEY (step_ms, t, module, host)
) STRICT, WITHOUT ROWID;

-- Latencies of the requests above that were sent, bucketed like usage_run_durations.
CREATE TABLE usage_outbound_latency (
    step_ms INTEGER NOT NULL,
    t       INTEGER NOT NULL,
    module  TEXT NOT NULL,
    host    TEXT NOT NULL,
    bucket  INTEGER NOT NULL,
    count   INTEGER NOT NULL,
    PRIMARY KEY (step_ms, t, module, host, bucket)
) STRICT, WITHOUT ROWID;

-- Executions that ended before this migration, counted once here. Their durations have
-- no histogram (SQLite has no logarithm to bucket them with), so percentiles of points
-- before the upgrade are empty; counts, sums and maxima are whole. Log bytes and outbound
-- requests were not kept per execution, so they start at the upgrade.
INSERT INTO usage_runs
SELECT s.step_ms, e.finished_at - e.finished_at % s.step_ms, e.job_id, MIN(e.module),
       MIN(e.job), COUNT(*),
       SUM(CASE WHEN e.status = 'COMPLETED' THEN 1 ELSE 0 END),
       SUM(CASE WHEN e.status = 'FAILED' THEN 1 ELSE 0 END),
       SUM(CASE WHEN e.status = 'TIMED_OUT' THEN 1 ELSE 0 END),
       SUM(CASE WHEN e.status = 'CANCELLED' THEN 1 ELSE 0 END),
       COALESCE(SUM(e.duration_ms), 0), COALESCE(MAX(e.duration_ms), 0),
       COALESCE(SUM(e.cpu_time_ms), 0), COALESCE(SUM(e.fuel_consumed), 0),
       COALESCE(MAX(e.memory_peak_bytes), 0), 0, 0
FROM executions e
CROSS JOIN (SELECT 60000 AS step_ms UNION ALL SELECT 3600000 UNION ALL SELECT 86400000) s
WHERE e.status IN ('COMPLETED', 'FAILED', 'TIMED_OUT', 'CANCELLED')
  AND e.finished_at IS NOT NULL
GROUP BY s.step_ms, e.finished_at - e.finished_at % s.step_ms, e.job_id;
