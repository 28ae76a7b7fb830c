-- Alerting; see the SQLite migration of the same number for what each table holds and
-- why. Differences are only of dialect.
CREATE TABLE alert_rules (
    id          TEXT COLLATE "C" PRIMARY KEY,
    name        TEXT COLLATE "C" NOT NULL CONSTRAINT alert_rules_name_unique UNIQUE,
    query       TEXT NOT NULL,
    condition   TEXT NOT NULL,
    for_ms      BIGINT NOT NULL CHECK (for_ms >= 0),
    severity    TEXT NOT NULL,
    labels      TEXT NOT NULL,
    channels    TEXT NOT NULL,
    description TEXT,
    enabled     BOOLEAN NOT NULL,
    state       TEXT NOT NULL,
    since       BIGINT NOT NULL,
    value       DOUBLE PRECISION,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE alert_channels (
    id         TEXT COLLATE "C" PRIMARY KEY,
    name       TEXT COLLATE "C" NOT NULL CONSTRAINT alert_channels_name_unique UNIQUE,
    kind       TEXT NOT NULL,
    url        TEXT,
    secret     TEXT,
    topic      TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE alert_silences (
    id         TEXT COLLATE "C" PRIMARY KEY,
    rule_id    TEXT COLLATE "C",
    matchers   TEXT,
    until      BIGINT NOT NULL,
    comment    TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE alert_history (
    id       TEXT COLLATE "C" PRIMARY KEY,
    rule_id  TEXT COLLATE "C" NOT NULL,
    rule     TEXT NOT NULL,
    change   TEXT NOT NULL,
    severity TEXT NOT NULL,
    value    DOUBLE PRECISION,
    labels   TEXT NOT NULL,
    silenced BOOLEAN NOT NULL,
    at       BIGINT NOT NULL
);

CREATE INDEX alert_history_by_time ON alert_history (at, id);

CREATE TABLE alert_notifications (
    id              TEXT COLLATE "C" PRIMARY KEY,
    rule_id         TEXT COLLATE "C",
    channel_id      TEXT COLLATE "C" NOT NULL,
    kind            TEXT NOT NULL,
    payload         TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempts        TEXT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    delivered_at    BIGINT,
    created_at      BIGINT NOT NULL
);

CREATE INDEX alert_notifications_due ON alert_notifications (status, next_attempt_at);
CREATE INDEX alert_notifications_by_rule ON alert_notifications (rule_id, id);
