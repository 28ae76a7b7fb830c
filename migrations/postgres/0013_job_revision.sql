-- Grows by one at every change of a job's definition; see the SQLite migration of the
-- same number.
ALTER TABLE jobs ADD COLUMN revision BIGINT NOT NULL DEFAULT 1;
