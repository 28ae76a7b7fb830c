-- Users, login sessions, API tokens and the audit trail.
--
-- Secrets are never stored: passwords as argon2id PHC strings, refresh and API tokens as
-- the hex SHA-256 of their random secret (they carry 256 bits of entropy, so a fast hash
-- cannot be brute-forced, and a lookup by hash needs no per-row salt).

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    role          TEXT NOT NULL CHECK (role = 'viewer' OR role = 'operator' OR role = 'admin'),
    password_hash TEXT NOT NULL,
    disabled      INTEGER NOT NULL CHECK (disabled = 0 OR disabled = 1),
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
) STRICT;

-- One row per refresh token ever issued. The tokens of one login share a `family`; a
-- rotated token gets `used_at`; presenting it again revokes its whole family. A family
-- is a session: it is alive while one of its tokens is unrevoked and unexpired.
CREATE TABLE refresh_tokens (
    id         TEXT PRIMARY KEY,
    family     TEXT NOT NULL,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER,
    revoked_at INTEGER
) STRICT;

CREATE INDEX refresh_tokens_by_family ON refresh_tokens (family);
CREATE INDEX refresh_tokens_by_user ON refresh_tokens (user_id);

CREATE TABLE api_tokens (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role       TEXT NOT NULL CHECK (role = 'viewer' OR role = 'operator' OR role = 'admin'),
    token_hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    revoked_at INTEGER
) STRICT;

CREATE INDEX api_tokens_by_user ON api_tokens (user_id, id);

-- Who did what, newest first by id (UUID v7). Append-only.
CREATE TABLE audit_log (
    id      TEXT PRIMARY KEY,
    at      INTEGER NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT NOT NULL,
    details TEXT NOT NULL                  -- JSON
) STRICT;

-- Values every node must agree on and that are generated once (the JWT signing key of
-- a deployment that configured none). First writer wins.
CREATE TABLE shared_secrets (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;
