-- Alerting: rules with where each stands, the channels they notify, silences, the
-- history of transitions, and the notification outbox. A transition writes the rule's
-- new state, its history row and its outbox rows in one transaction, fenced by the
-- `alerts` lease; the delivery loop sends outbox rows until each is delivered or expires.

-- `query` and `condition` are JSON as the API shows them; `labels` a JSON object;
-- `channels` a JSON array of channel ids. `state` is ok, pending or firing, entered at
-- `since`; `value` is the number seen at that transition.
CREATE TABLE alert_rules (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    query       TEXT NOT NULL,
    condition   TEXT NOT NULL,
    for_ms      INTEGER NOT NULL CHECK (for_ms >= 0),
    severity    TEXT NOT NULL,
    labels      TEXT NOT NULL,
    channels    TEXT NOT NULL,
    description TEXT,
    enabled     INTEGER NOT NULL CHECK (enabled = 0 OR enabled = 1),
    state       TEXT NOT NULL,
    since       INTEGER NOT NULL,
    value       REAL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
) STRICT;

-- `secret` is a webhook's HMAC key, sealed like jobs' secret settings.
CREATE TABLE alert_channels (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    kind       TEXT NOT NULL,
    url        TEXT,
    secret     TEXT,
    topic      TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;

CREATE TABLE alert_silences (
    id         TEXT PRIMARY KEY,
    rule_id    TEXT,
    matchers   TEXT,
    until      INTEGER NOT NULL,
    comment    TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;

-- One row per transition; ids are UUID v7, so by id is by time too.
CREATE TABLE alert_history (
    id       TEXT PRIMARY KEY,
    rule_id  TEXT NOT NULL,
    rule     TEXT NOT NULL,
    change   TEXT NOT NULL,
    severity TEXT NOT NULL,
    value    REAL,
    labels   TEXT NOT NULL,
    silenced INTEGER NOT NULL CHECK (silenced = 0 OR silenced = 1),
    at       INTEGER NOT NULL
) STRICT;

-- The history over a window, and its retention.
CREATE INDEX alert_history_by_time ON alert_history (at, id);

-- The outbox: one row per message and channel. Its id is the message's idempotency key
-- (webhook) and event id (event channel), so a row sent twice (its sender died before
-- recording the answer) is recognised by its receiver. `attempts` is a JSON array of
-- {at, status, error}.
CREATE TABLE alert_notifications (
    id              TEXT PRIMARY KEY,
    rule_id         TEXT,
    channel_id      TEXT NOT NULL,
    kind            TEXT NOT NULL,
    payload         TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempts        TEXT NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    delivered_at    INTEGER,
    created_at      INTEGER NOT NULL
) STRICT;

-- The delivery loop's question: pending rows that are due.
CREATE INDEX alert_notifications_due ON alert_notifications (status, next_attempt_at);
-- A rule's notifications, newest first.
CREATE INDEX alert_notifications_by_rule ON alert_notifications (rule_id, id);
