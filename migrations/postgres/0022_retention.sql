-- A job's own retention; see the SQLite migration of the same number.
ALTER TABLE jobs ADD COLUMN retain_days INTEGER CHECK (retain_days > 0);
ALTER TABLE jobs ADD COLUMN retain_last INTEGER CHECK (retain_last > 0);
