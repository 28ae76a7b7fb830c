-- Where a job's schedule comes from, and an event's place in a chain of events; see the
-- SQLite migration of the same number.
ALTER TABLE jobs ADD COLUMN schedule_source TEXT NOT NULL DEFAULT 'job'
    CHECK (schedule_source IN ('module', 'job'));

ALTER TABLE events ADD COLUMN depth INTEGER NOT NULL DEFAULT 1;
ALTER TABLE events ADD COLUMN caused_by TEXT;
ALTER TABLE events ADD COLUMN refusals TEXT;
