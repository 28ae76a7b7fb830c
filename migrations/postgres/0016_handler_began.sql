-- Set once the node running an execution has recorded that its handler began; see the
-- SQLite migration of the same number.
ALTER TABLE executions ADD COLUMN handler_began BOOLEAN NOT NULL DEFAULT FALSE;
