-- Endpoint monitors: an HTTP endpoint the server checks every `interval_ms`, and what
-- each check saw. `headers` is JSON as a job's `config` is (secret values sealed);
-- `conditions` a JSON array of condition texts. `next_check_at` is when the next check
-- is due (NULL while disabled); the holder of the `endpoints` lease moves it forward,
-- fenced by the lease, before it checks.
CREATE TABLE endpoints (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    url           TEXT NOT NULL,
    method        TEXT NOT NULL,
    headers       TEXT NOT NULL,
    body          TEXT,
    interval_ms   INTEGER NOT NULL CHECK (interval_ms > 0),
    timeout_ms    INTEGER NOT NULL CHECK (timeout_ms > 0),
    conditions    TEXT NOT NULL,
    enabled       INTEGER NOT NULL CHECK (enabled = 0 OR enabled = 1),
    next_check_at INTEGER,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
) STRICT;

-- The checker's question: endpoints that are due (a disabled one has no due time).
CREATE INDEX endpoints_due ON endpoints (next_check_at);

-- One row per endpoint and due time: the key is the final guard that an interval is
-- checked once however many nodes believe they hold the lease, as (job, cron tick) is
-- for cron. It also serves every read: an endpoint's checks newest first, and its
-- uptime over a window (a range of the key).
CREATE TABLE endpoint_checks (
    endpoint_id      TEXT NOT NULL,
    due_at           INTEGER NOT NULL,
    checked_at       INTEGER NOT NULL,
    up               INTEGER NOT NULL CHECK (up = 0 OR up = 1),
    status_code      INTEGER,
    latency_ms       INTEGER,
    failed_condition TEXT,
    error            TEXT,
    node_id          TEXT NOT NULL,
    PRIMARY KEY (endpoint_id, due_at)
) STRICT, WITHOUT ROWID;

-- Retention deletes by due time across endpoints.
CREATE INDEX endpoint_checks_by_due ON endpoint_checks (due_at);
