-- Large inputs stored once. An execution's input used to be copied into its row, so a
-- bulk run of a job whose stored input is 1 MiB wrote 1 MiB per execution (`count`
-- 10,000: about 10 GiB from a 15-byte request). An input longer than the store's
-- inline limit (1 KiB, `INLINE_INPUT_MAX` in host/src/store/mod.rs) is written here
-- once, under the SHA-256 of its text, and every execution with that input refers to
-- it by `input_hash`, its `input` left empty (''). Inputs up to the limit (nearly all:
-- `null`, `{}`, a few fields) stay in the row, so inserting, claiming and recording
-- them costs no extra write or lookup.
--
-- Rows are never changed: the same hash always means the same text. Nothing deletes
-- them yet (executions are not pruned); whatever prunes history must delete a body
-- only once no execution or job refers to it (`executions_by_input` finds referrers).
CREATE TABLE execution_inputs (
    hash       TEXT PRIMARY KEY,    -- SHA-256 of `body`, lower-case hex
    body       TEXT NOT NULL,       -- JSON
    created_at INTEGER NOT NULL
) STRICT;

-- NULL: the input is in `input`. Otherwise the input is `execution_inputs.body`.
ALTER TABLE executions ADD COLUMN input_hash TEXT REFERENCES execution_inputs (hash);

-- Partial: inline inputs (nearly every row) add no index entry on the hot path.
CREATE INDEX executions_by_input ON executions (input_hash) WHERE input_hash IS NOT NULL;

-- The hash of a job's stored input when it is over the inline limit, its body written
-- to `execution_inputs` with the job, so that manual runs with the stored input (any
-- number of them, in one statement) refer to it instead of copying it. The job keeps
-- its own copy in `input`: it is the job's definition, read as one.
ALTER TABLE jobs ADD COLUMN input_hash TEXT REFERENCES execution_inputs (hash);

-- `Idempotency-Key` of manual triggers: the first request under a key records what it
-- asked (`fingerprint`: a digest of route, job and inputs) and what it created, in the
-- transaction that creates its executions; a retry with the same key and fingerprint
-- before `expires_at` gets the same executions back and creates none. Past
-- `expires_at` the key is free again; expired rows are deleted a few at a time by
-- later keyed requests.
CREATE TABLE idempotency_keys (
    key           TEXT PRIMARY KEY,
    fingerprint   TEXT NOT NULL,
    job_id        TEXT NOT NULL,
    execution_ids TEXT NOT NULL,    -- JSON array, in the order of the request
    status        TEXT NOT NULL CHECK (status = 'QUEUED' OR status = 'RUNNING'),
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL
) STRICT;

CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
