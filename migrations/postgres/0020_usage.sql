-- Usage rollups; see the SQLite migration of the same number for what each table holds
-- and why. Differences are only of dialect.

CREATE TABLE usage_runs (
    step_ms           BIGINT NOT NULL,
    t                 BIGINT NOT NULL,
    job_id            TEXT COLLATE "C" NOT NULL,
    module            TEXT COLLATE "C" NOT NULL,
    job               TEXT COLLATE "C" NOT NULL,
    runs              BIGINT NOT NULL,
    completed         BIGINT NOT NULL,
    failed            BIGINT NOT NULL,
    timed_out         BIGINT NOT NULL,
    cancelled         BIGINT NOT NULL,
    duration_ms_sum   DOUBLE PRECISION NOT NULL,     -- of the runs that have a duration
    duration_ms_max   DOUBLE PRECISION NOT NULL,
    cpu_time_ms       DOUBLE PRECISION NOT NULL,
    fuel_consumed     BIGINT NOT NULL,
    memory_peak_bytes BIGINT NOT NULL,  -- the largest of the runs' peaks
    log_bytes         BIGINT NOT NULL,
    outbound_requests BIGINT NOT NULL,
    PRIMARY KEY (step_ms, t, job_id)
);

-- One job's usage over time (the primary key serves every job's).
CREATE INDEX usage_runs_by_job ON usage_runs (job_id, step_ms, t);

-- The durations of the runs counted above, as a histogram: `bucket` is
-- `ceil(log2(ms) × 8)` (host/src/domain/usage.rs), `count` the runs in it. Percentiles
-- of any set of points come from the sum of their buckets, exactly as if the runs had
-- been counted together.
CREATE TABLE usage_run_durations (
    step_ms BIGINT NOT NULL,
    t       BIGINT NOT NULL,
    job_id  TEXT COLLATE "C" NOT NULL,
    module  TEXT COLLATE "C" NOT NULL,
    bucket  BIGINT NOT NULL,
    count   BIGINT NOT NULL,
    PRIMARY KEY (step_ms, t, job_id, bucket)
);

-- Outbound HTTP requests of runs, per module and host (the host the guest named).
-- Written with the run's final status, like usage_runs.
CREATE TABLE usage_outbound (
    step_ms        BIGINT NOT NULL,
    t              BIGINT NOT NULL,
    module         TEXT COLLATE "C" NOT NULL,
    host           TEXT COLLATE "C" NOT NULL,
    requests       BIGINT NOT NULL,
    responses_2xx  BIGINT NOT NULL,
    responses_3xx  BIGINT NOT NULL,
    responses_4xx  BIGINT NOT NULL,
    responses_5xx  BIGINT NOT NULL,
    errors         BIGINT NOT NULL,     -- sent, but no response (connection, timeout, cap)
    denied         BIGINT NOT NULL,     -- refused by the policy; never sent
    bytes_sent     BIGINT NOT NULL,
    bytes_received BIGINT NOT NULL,
    PRIMARY KEY (step_ms, t, module, host)
);

-- Latencies of the requests above that were sent, bucketed like usage_run_durations.
CREATE TABLE usage_outbound_latency (
    step_ms BIGINT NOT NULL,
    t       BIGINT NOT NULL,
    module  TEXT COLLATE "C" NOT NULL,
    host    TEXT COLLATE "C" NOT NULL,
    bucket  BIGINT NOT NULL,
    count   BIGINT NOT NULL,
    PRIMARY KEY (step_ms, t, module, host, bucket)
);

-- Executions that ended before this migration, counted once here, as in SQLite (whose
-- missing logarithm leaves their durations without a histogram in both databases, so
-- the two agree).
INSERT INTO usage_runs
SELECT s.step_ms, e.finished_at - e.finished_at % s.step_ms, e.job_id, MIN(e.module),
       MIN(e.job), COUNT(*),
       SUM(CASE WHEN e.status = 'COMPLETED' THEN 1 ELSE 0 END),
       SUM(CASE WHEN e.status = 'FAILED' THEN 1 ELSE 0 END),
       SUM(CASE WHEN e.status = 'TIMED_OUT' THEN 1 ELSE 0 END),
       SUM(CASE WHEN e.status = 'CANCELLED' THEN 1 ELSE 0 END),
       COALESCE(SUM(e.duration_ms), 0), COALESCE(MAX(e.duration_ms), 0),
       COALESCE(SUM(e.cpu_time_ms), 0), COALESCE(SUM(e.fuel_consumed), 0)::BIGINT,
       COALESCE(MAX(e.memory_peak_bytes), 0), 0, 0
FROM executions e
CROSS JOIN (VALUES (60000::BIGINT), (3600000), (86400000)) AS s (step_ms)
WHERE e.status IN ('COMPLETED', 'FAILED', 'TIMED_OUT', 'CANCELLED')
  AND e.finished_at IS NOT NULL
GROUP BY s.step_ms, e.finished_at - e.finished_at % s.step_ms, e.job_id;
