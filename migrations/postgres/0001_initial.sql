-- Runcell's distributed schema (PostgreSQL): the same tables, with the same meaning, as
-- the embedded schema in ../sqlite/0001_initial.sql. Differences are only of dialect.
--
-- Conventions:
--   * Timestamps are BIGINT milliseconds since the Unix epoch, UTC.
--   * Ids are UUID v7 text: time-ordered, so `ORDER BY id` is creation order and a page
--     cursor is simply the last id seen.
--   * JSON is stored as TEXT and only ever read back whole by the server: jsonb would
--     parse and re-serialise every result on the hot path for no query that needs it.
--   * Text that is ordered or compared by range is `COLLATE "C"`: byte order, which for
--     UTF-8 is code-point order, the same as SQLite's BINARY. The database's default
--     collation is the operator's choice (often a language's), and would make listings
--     and cursors disagree with the embedded backend; "C" is also the fastest to compare.
--   * Enumerations are TEXT with CHECK constraints spelling the values the code writes.

-- Component bytes, by content hash. Shared: two modules (or two uploads of one module)
-- with identical bytes store them once. A blob no version refers to any more is garbage
-- and is swept when a module is deleted.
CREATE TABLE module_blobs (
    content_hash TEXT PRIMARY KEY,
    bytes        BYTEA NOT NULL
);

-- A module and which of its versions is current. `current_hash` always names a row of
-- module_versions for this module; it is not a foreign key because the two rows are
-- written in one transaction and a circular key would need deferral for no gain.
CREATE TABLE modules (
    name         TEXT COLLATE "C" PRIMARY KEY,
    status       TEXT NOT NULL CHECK (status IN ('ENABLED', 'DISABLED')),
    current_hash TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);

-- Every version a module ever had. Re-uploading identical bytes reuses the row (the
-- primary key), so the history has no duplicates. Listed newest first by uploaded_at,
-- ties broken by `seq` (insertion order; SQLite uses its rowid).
CREATE TABLE module_versions (
    module       TEXT COLLATE "C" NOT NULL REFERENCES modules (name) ON DELETE CASCADE,
    version      TEXT NOT NULL,
    content_hash TEXT NOT NULL REFERENCES module_blobs (content_hash),
    size_bytes   BIGINT NOT NULL,
    manifest     TEXT NOT NULL,            -- JSON of domain::Manifest
    uploaded_at  BIGINT NOT NULL,
    seq          BIGINT GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY (module, content_hash)
);

-- Finds the versions that still use a blob (the garbage sweep).
CREATE INDEX module_versions_by_hash ON module_versions (content_hash);

-- Job definitions. `module` is deliberately not a foreign key: the service decides
-- whether a module with jobs may be deleted, and deleting it may leave its jobs behind.
-- Executions keep a job's id after the job is deleted, so nothing cascades from here.
CREATE TABLE jobs (
    id           TEXT COLLATE "C" PRIMARY KEY,
    name         TEXT COLLATE "C" NOT NULL CONSTRAINT jobs_name_unique UNIQUE,
    module       TEXT COLLATE "C" NOT NULL,
    job          TEXT NOT NULL,
    schedule     TEXT,                     -- cron expression; NULL = not scheduled
    input        TEXT NOT NULL,            -- JSON
    enabled      BOOLEAN NOT NULL,
    max_attempts INTEGER NOT NULL CHECK (max_attempts >= 0),
    timeout_ms   BIGINT,
    fuel         BIGINT,
    memory_bytes BIGINT,
    on_event     TEXT,                     -- topic pattern; NULL = no event trigger
    next_run_at  BIGINT,                   -- next cron tick, kept by the scheduler
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);

CREATE INDEX jobs_by_module ON jobs (module);

-- The scheduler's question: enabled scheduled jobs that are due.
CREATE INDEX jobs_due ON jobs (next_run_at)
    WHERE enabled AND schedule IS NOT NULL;

-- One attempt of one trigger of one job: the source of truth every queue only carries
-- the id of. QUEUED -> RUNNING -> COMPLETED | FAILED | TIMED_OUT | CANCELLED, or
-- QUEUED -> CANCELLED. `lease_expires_at` is set while RUNNING: past it, the node that
-- claimed the row is presumed dead. `cancel_requested` flags a RUNNING row whose
-- worker must interrupt it.
CREATE TABLE executions (
    id                TEXT COLLATE "C" PRIMARY KEY,
    job_id            TEXT COLLATE "C" NOT NULL, -- no foreign key: history outlives its job
    module            TEXT NOT NULL,
    job               TEXT NOT NULL,
    status            TEXT NOT NULL CHECK (status IN (
                          'QUEUED', 'RUNNING', 'COMPLETED', 'FAILED', 'TIMED_OUT',
                          'CANCELLED')),
    trigger           TEXT NOT NULL CHECK (trigger IN ('manual', 'cron', 'event', 'retry')),
    attempt           INTEGER NOT NULL CHECK (attempt >= 0),
    retry_of          TEXT,
    input             TEXT NOT NULL,       -- JSON
    result            TEXT,                -- JSON, for completed runs
    error             TEXT,
    error_kind        TEXT,
    scheduled_at      BIGINT NOT NULL,
    run_after         BIGINT NOT NULL,
    cron_tick         BIGINT,
    event_id          TEXT,
    created_at        BIGINT NOT NULL,
    started_at        BIGINT,
    finished_at       BIGINT,
    duration_ms       DOUBLE PRECISION,
    fuel_consumed     BIGINT,
    memory_peak_bytes BIGINT,
    node_id           TEXT,
    lease_expires_at  BIGINT,
    cancel_requested  BOOLEAN NOT NULL DEFAULT false
);

-- A cron tick fires exactly once: however many schedulers enqueue (job, tick), the
-- database keeps one row and `INSERT ... ON CONFLICT DO NOTHING` skips the others.
-- Partial, because rows of other triggers have no tick and need no index entry.
CREATE UNIQUE INDEX executions_cron_tick ON executions (job_id, cron_tick)
    WHERE cron_tick IS NOT NULL;

-- Every index costs on the hot path, more here than in SQLite: a status change is never
-- a HOT update (status appears in index predicates), so each of the three writes of an
-- execution (insert, claim, record) adds an entry to every index whose predicate the new
-- row matches. Hence no plain (status, id) index; listing by status instead uses, per
-- status:
--   QUEUED, RUNNING        the two partial indexes below (bounded by backlog and workers);
--   FAILED, TIMED_OUT,     executions_ended_badly (few rows, written once per failure);
--   CANCELLED
--   COMPLETED              the primary key, newest first (most rows are completed).
-- A query uses a partial index only if its WHERE clause implies the predicate when the
-- plan is made, so the code writes the status as a literal, never as a parameter.

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

-- Listing the runs that went wrong, newest first.
CREATE INDEX executions_ended_badly ON executions (status, id)
    WHERE status IN ('FAILED', 'TIMED_OUT', 'CANCELLED');

-- An execution's log, in order. Written once, with the result.
CREATE TABLE execution_logs (
    execution_id TEXT COLLATE "C" NOT NULL,
    seq          INTEGER NOT NULL CHECK (seq >= 0), -- from 0, without gaps
    ts           BIGINT NOT NULL,
    level        TEXT NOT NULL CHECK (level IN ('trace', 'debug', 'info', 'warn', 'error')),
    message      TEXT NOT NULL,
    fields       TEXT,                     -- JSON object; NULL when empty
    PRIMARY KEY (execution_id, seq)
);

-- The event bus's history.
CREATE TABLE events (
    id         TEXT COLLATE "C" PRIMARY KEY,
    topic      TEXT COLLATE "C" NOT NULL,
    payload    TEXT NOT NULL,              -- JSON
    source     TEXT NOT NULL,              -- `api` or the publishing module
    created_at BIGINT NOT NULL
);

-- Events of one topic, newest first.
CREATE INDEX events_by_topic ON events (topic, id);

-- Module-scoped key-value data. The key is the UTF-8 bytes of the guest's string:
-- BYTEA sorts by byte (so by code point, as SQLite's BINARY text does, whatever the
-- database's collation), a key prefix is a contiguous byte range, and a key may hold
-- any character, NUL included, which PostgreSQL TEXT cannot store.
CREATE TABLE kv (
    module     TEXT COLLATE "C" NOT NULL,
    key        BYTEA NOT NULL,
    value      BYTEA NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (module, key)
);

-- Samples modules record through the `metrics` import. History: kept when the module
-- is deleted, like its executions.
CREATE TABLE metric_samples (
    id     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, -- insertion order among equal times
    module TEXT COLLATE "C" NOT NULL,
    name   TEXT COLLATE "C" NOT NULL,
    labels TEXT NOT NULL,                  -- JSON array of [key, value] pairs, as recorded
    value  DOUBLE PRECISION NOT NULL,
    ts     BIGINT NOT NULL
);

CREATE INDEX metric_samples_series ON metric_samples (module, name, ts);
