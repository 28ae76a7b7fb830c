-- A job's settings (JSON text of domain::JobConfig's stored form): a name maps to a plain
-- string, or to {"sealed": "v1:..."} for a secret encrypted under the server's secret key,
-- which is never kept in the database.
ALTER TABLE jobs ADD COLUMN config TEXT NOT NULL DEFAULT '{}';
