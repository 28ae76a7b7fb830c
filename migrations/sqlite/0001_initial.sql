-- Runcell's embedded schema (SQLite). A PostgreSQL backend keeps the same tables in its
-- own folder beside this one.
--
-- Conventions:
--   * Timestamps are INTEGER milliseconds since the Unix epoch, UTC.
--   * Ids are UUID v7 text: time-ordered, so `ORDER BY id` is creation order and a page
--     cursor is simply the last id seen.
--   * JSON is stored as TEXT and only ever read back whole by the server.
--   * Tables are STRICT so a wrongly typed bind fails loudly instead of being coerced.
--   * Enumerations are TEXT with CHECK constraints spelling the values the code writes,
--     as chains of `=` rather than `IN (...)`: SQLite builds a lookup table for an IN
--     list each time a statement runs, which measurably slowed the execution hot path.

-- Component bytes, by content hash. Shared: two modules (or two uploads of one module)
-- with identical bytes store them once. A blob no version refers to any more is garbage
-- and is swept when a module is deleted.
CREATE TABLE module_blobs (
    content_hash TEXT PRIMARY KEY,
    bytes        BLOB NOT NULL
) STRICT;

-- A module and which of its versions is current. `current_hash` always names a row of
-- module_versions for this module; it is not a foreign key because the two rows are
-- written in one transaction and a circular key would need deferral for no gain.
CREATE TABLE modules (
    name         TEXT PRIMARY KEY,
    status       TEXT NOT NULL CHECK (status = 'ENABLED' OR status = 'DISABLED'),
    current_hash TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
) STRICT;

-- Every version a module ever had. Re-uploading identical bytes reuses the row (the
-- primary key), so the history has no duplicates. Listed newest first by uploaded_at,
-- ties broken by rowid (insertion order).
CREATE TABLE module_versions (
    module       TEXT NOT NULL REFERENCES modules (name) ON DELETE CASCADE,
    version      TEXT NOT NULL,
    content_hash TEXT NOT NULL REFERENCES module_blobs (content_hash),
    size_bytes   INTEGER NOT NULL,
    manifest     TEXT NOT NULL,            -- JSON of domain::Manifest
    uploaded_at  INTEGER NOT NULL,
    PRIMARY KEY (module, content_hash)
) STRICT;

-- Finds the versions that still use a blob (the garbage sweep).
CREATE INDEX module_versions_by_hash ON module_versions (content_hash);

-- Job definitions. `module` is deliberately not a foreign key: the service decides
-- whether a module with jobs may be deleted, and deleting it may leave its jobs behind.
-- Executions keep a job's id after the job is deleted, so nothing cascades from here.
CREATE TABLE jobs (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    module       TEXT NOT NULL,
    job          TEXT NOT NULL,
    schedule     TEXT,                     -- cron expression; NULL = not scheduled
    input        TEXT NOT NULL,            -- JSON
    enabled      INTEGER NOT NULL CHECK (enabled = 0 OR enabled = 1),
    max_attempts INTEGER NOT NULL,
    timeout_ms   INTEGER,
    fuel         INTEGER,
    memory_bytes INTEGER,
    on_event     TEXT,                     -- topic pattern; NULL = no event trigger
    next_run_at  INTEGER,                  -- next cron tick, kept by the scheduler
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
) STRICT;

CREATE INDEX jobs_by_module ON jobs (module);

-- The scheduler's question: enabled scheduled jobs that are due.
CREATE INDEX jobs_due ON jobs (next_run_at)
    WHERE enabled = 1 AND schedule IS NOT NULL;

-- One attempt of one trigger of one job: the source of truth every queue only carries
-- the id of. QUEUED -> RUNNING -> COMPLETED | FAILED | TIMED_OUT | CANCELLED, or
-- QUEUED -> CANCELLED. `lease_expires_at` is set while RUNNING: past it, the node that
-- claimed the row is presumed dead. `cancel_requested` flags a RUNNING row whose
-- worker must interrupt it.
CREATE TABLE executions (
    id                TEXT PRIMARY KEY,
    job_id            TEXT NOT NULL,       -- no foreign key: history outlives its job
    module            TEXT NOT NULL,
    job               TEXT NOT NULL,
    status            TEXT NOT NULL CHECK (
                          status = 'QUEUED' OR status = 'RUNNING' OR status = 'COMPLETED'
                          OR status = 'FAILED' OR status = 'TIMED_OUT' OR status = 'CANCELLED'),
    trigger           TEXT NOT NULL CHECK (
                          trigger = 'manual' OR trigger = 'cron' OR trigger = 'event'
                          OR trigger = 'retry'),
    attempt           INTEGER NOT NULL,
    retry_of          TEXT,
    input             TEXT NOT NULL,       -- JSON
    result            TEXT,                -- JSON, for completed runs
    error             TEXT,
    error_kind        TEXT,
    scheduled_at      INTEGER NOT NULL,
    run_after         INTEGER NOT NULL,
    cron_tick         INTEGER,
    event_id          TEXT,
    created_at        INTEGER NOT NULL,
    started_at        INTEGER,
    finished_at       INTEGER,
    duration_ms       REAL,
    fuel_consumed     INTEGER,
    memory_peak_bytes INTEGER,
    node_id           TEXT,
    lease_expires_at  INTEGER,
    cancel_requested  INTEGER NOT NULL DEFAULT 0
                          CHECK (cancel_requested = 0 OR cancel_requested = 1)
) STRICT;

-- A cron tick fires exactly once: however many schedulers enqueue (job, tick), the
-- database keeps one row and `INSERT ... ON CONFLICT DO NOTHING` skips the others.
-- Partial, because rows of other triggers have no tick and need no index entry.
CREATE UNIQUE INDEX executions_cron_tick ON executions (job_id, cron_tick)
    WHERE cron_tick IS NOT NULL;

-- Every write to an index costs on the hot path (each execution is inserted, claimed
-- and recorded), so executions have no plain (status, id) index, which would change
-- twice per execution. Listing by status instead uses, per status:
--   QUEUED, RUNNING        the two partial indexes below (bounded by backlog and workers);
--   FAILED, TIMED_OUT,     executions_ended_badly (few rows, written once per failure);
--   CANCELLED
--   COMPLETED              the id index, newest first (most rows are completed).

-- A job's history, newest first.
CREATE INDEX executions_by_job ON executions (job_id, id);

-- The reconciler: queued rows that are due, oldest first; and the earliest due time.
-- Also the listing of queued rows. Partial: it holds only queued rows.
CREATE INDEX executions_queued_due ON executions (run_after, id)
    WHERE status = 'QUEUED';

-- The reconciler: running rows whose lease expired. Also the listing of running rows.
-- Partial: it holds only running rows.
CREATE INDEX executions_running_lease ON executions (lease_expires_at, id)
    WHERE status = 'RUNNING';

-- Listing the runs that went wrong, newest first. A query uses it only if it repeats
-- this WHERE clause word for word (the code keeps it in one constant).
CREATE INDEX executions_ended_badly ON executions (status, id)
    WHERE status = 'FAILED' OR status = 'TIMED_OUT' OR status = 'CANCELLED';

-- An execution's log, in order. Written once, with the result.
CREATE TABLE execution_logs (
    execution_id TEXT NOT NULL,
    seq          INTEGER NOT NULL,         -- from 0, without gaps
    ts           INTEGER NOT NULL,
    level        TEXT NOT NULL CHECK (
                     level = 'trace' OR level = 'debug' OR level = 'info' OR level = 'warn'
                     OR level = 'error'),
    message      TEXT NOT NULL,
    fields       TEXT,                     -- JSON object; NULL when empty
    PRIMARY KEY (execution_id, seq)
) STRICT, WITHOUT ROWID;

-- The event bus's history.
CREATE TABLE events (
    id         TEXT PRIMARY KEY,
    topic      TEXT NOT NULL,
    payload    TEXT NOT NULL,              -- JSON
    source     TEXT NOT NULL,              -- `api` or the publishing module
    created_at INTEGER NOT NULL
) STRICT;

-- Events of one topic, newest first.
CREATE INDEX events_by_topic ON events (topic, id);

-- Module-scoped key-value data. Keys sort by byte (BINARY collation), which is also the
-- order of code points, so a key prefix is a contiguous key range.
CREATE TABLE kv (
    module     TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      BLOB NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (module, key)
) STRICT, WITHOUT ROWID;

-- Samples modules record through the `metrics` import. History: kept when the module
-- is deleted, like its executions.
CREATE TABLE metric_samples (
    id     INTEGER PRIMARY KEY,            -- rowid: insertion order among equal times
    module TEXT NOT NULL,
    name   TEXT NOT NULL,
    labels TEXT NOT NULL,                  -- JSON array of [key, value] pairs, as recorded
    value  REAL NOT NULL,
    ts     INTEGER NOT NULL
) STRICT;

CREATE INDEX metric_samples_series ON metric_samples (module, name, ts);
