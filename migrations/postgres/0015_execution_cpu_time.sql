-- CPU time the host spent on the run, beside its fuel; see the SQLite migration of the
-- same number.
ALTER TABLE executions ADD COLUMN cpu_time_ms DOUBLE PRECISION;
