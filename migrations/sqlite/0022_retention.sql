-- A job's own retention, instead of the server's `--retain-executions`: its final
-- executions are kept `retain_days` days from their creation (NULL: the server's
-- setting), and at most its newest `retain_last` (NULL: no such bound).
ALTER TABLE jobs ADD COLUMN retain_days INTEGER CHECK (retain_days > 0);
ALTER TABLE jobs ADD COLUMN retain_last INTEGER CHECK (retain_last > 0);
