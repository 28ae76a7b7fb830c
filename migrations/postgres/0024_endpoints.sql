-- Endpoint monitors and their checks; see the SQLite migration of the same number for
-- what each table holds and why. Differences are only of dialect.
CREATE TABLE endpoints (
    id            TEXT COLLATE "C" PRIMARY KEY,
    name          TEXT COLLATE "C" NOT NULL CONSTRAINT endpoints_name_unique UNIQUE,
    url           TEXT NOT NULL,
    method        TEXT NOT NULL,
    headers       TEXT NOT NULL,
    body          TEXT,
    interval_ms   BIGINT NOT NULL CHECK (interval_ms > 0),
    timeout_ms    BIGINT NOT NULL CHECK (timeout_ms > 0),
    conditions    TEXT NOT NULL,
    enabled       BOOLEAN NOT NULL,
    next_check_at BIGINT,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

CREATE INDEX endpoints_due ON endpoints (next_check_at);

CREATE TABLE endpoint_checks (
    endpoint_id      TEXT COLLATE "C" NOT NULL,
    due_at           BIGINT NOT NULL,
    checked_at       BIGINT NOT NULL,
    up               BOOLEAN NOT NULL,
    status_code      BIGINT,
    latency_ms       BIGINT,
    failed_condition TEXT,
    error            TEXT,
    node_id          TEXT NOT NULL,
    PRIMARY KEY (endpoint_id, due_at)
);

CREATE INDEX endpoint_checks_by_due ON endpoint_checks (due_at);
