-- One job's runs that went wrong, newest first; see the SQLite migration of the same
-- number.
CREATE INDEX executions_job_ended_badly ON executions (job_id, status, id)
    WHERE status IN ('FAILED', 'TIMED_OUT', 'CANCELLED');
