-- Grows by one at every change of a job's definition (not of its next tick), so a node
-- that caches definitions learns from the claim of an execution whether its copy of the
-- job is still current, without reading the job again.
ALTER TABLE jobs ADD COLUMN revision INTEGER NOT NULL DEFAULT 1;
