-- One job's runs that went wrong, newest first: "show me this job's failures" is the
-- question a dashboard asks most, and walking `executions_by_job` for it visits every
-- run of the job when there are few or none (a second per two million rows). Partial,
-- like executions_ended_badly: written once per run that ends badly, never on the way
-- of the runs that complete. A query uses it only if it repeats this WHERE clause word
-- for word (the code keeps it in one constant).
CREATE INDEX executions_job_ended_badly ON executions (job_id, status, id)
    WHERE status = 'FAILED' OR status = 'TIMED_OUT' OR status = 'CANCELLED';
