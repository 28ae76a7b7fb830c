-- Large inputs stored once, and `Idempotency-Key` of manual triggers; see the SQLite
-- migration of the same number.
CREATE TABLE execution_inputs (
    hash       TEXT COLLATE "C" PRIMARY KEY,  -- SHA-256 of `body`, lower-case hex
    body       TEXT NOT NULL,                 -- JSON
    created_at BIGINT NOT NULL
);

-- NOT VALID: every existing row has NULL here, so checking them would only read the
-- whole table under a lock; new rows are checked all the same.
ALTER TABLE executions ADD COLUMN input_hash TEXT COLLATE "C";
ALTER TABLE executions ADD CONSTRAINT executions_input_hash_fkey
    FOREIGN KEY (input_hash) REFERENCES execution_inputs (hash) NOT VALID;

CREATE INDEX executions_by_input ON executions (input_hash) WHERE input_hash IS NOT NULL;

ALTER TABLE jobs ADD COLUMN input_hash TEXT COLLATE "C" REFERENCES execution_inputs (hash);

CREATE TABLE idempotency_keys (
    key           TEXT COLLATE "C" PRIMARY KEY,
    fingerprint   TEXT NOT NULL,
    job_id        TEXT NOT NULL,
    execution_ids TEXT NOT NULL,              -- JSON array, in the order of the request
    status        TEXT NOT NULL CHECK (status IN ('QUEUED', 'RUNNING')),
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL
);

CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
