-- A job's settings (JSON text of domain::JobConfig's stored form); see the SQLite
-- migration of the same number. The key that opens its secrets is never kept here.
ALTER TABLE jobs ADD COLUMN config TEXT NOT NULL DEFAULT '{}';
