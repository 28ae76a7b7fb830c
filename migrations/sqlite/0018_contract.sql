-- Where a job's schedule comes from: 'module' follows the default schedule its module
-- declares (and a new version's), 'job' is what an operator set on the job, including
-- no schedule at all. Jobs made before defaults were followed keep what they had.
ALTER TABLE jobs ADD COLUMN schedule_source TEXT NOT NULL DEFAULT 'job'
    CHECK (schedule_source IN ('module', 'job'));

-- An event's place in a chain of events: 1 for one posted through the API or published by
-- a run no event started, one more than its cause's for one published by a run an event
-- started. `caused_by` is the publishing execution. `refusals` (JSON, absent when none)
-- lists the subscribed jobs the event did not start, and why: past the depth limit, or
-- over a job's rate of event triggers.
ALTER TABLE events ADD COLUMN depth INTEGER NOT NULL DEFAULT 1;
ALTER TABLE events ADD COLUMN caused_by TEXT;
ALTER TABLE events ADD COLUMN refusals TEXT;
