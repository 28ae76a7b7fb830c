-- The outbound hosts an administrator granted a module instead of those its current
-- version asks for; see the SQLite migration of the same number.
ALTER TABLE modules ADD COLUMN granted_outbound_hosts TEXT;
