-- Module metrics as series and rollups. A series is one metric of one module with one
-- set of labels; its samples are kept as rollups of whole minutes, hours and days
-- (count, sum, min, max, and the value of the latest sample), which answer every
-- aggregate a query offers exactly (avg = sum / count) and make a query read rows in
-- proportion to its window and step, never to the age of the deployment: a 30-day
-- query at one-hour steps reads 720 hour rows of a series.
--
-- `metric_samples` (one row per sample) is no longer written: nothing needed a sample
-- once it is in its rollups. Its rows, if any, are moved into these tables and deleted
-- when a node starts (`adopt_metric_samples` in host/src/store/shared/mod.rs); a later
-- migration drops it.
--
-- Like executions, metric history outlives its module: nothing here refers to
-- `modules`.

-- One row per series. A module may have at most so many (`MAX_SERIES_PER_MODULE` in
-- host/src/services/metrics.rs); the count of a module's rows is the truth, read under
-- the module's `metric_modules` row by whoever admits a new series. AUTOINCREMENT: an
-- id is never reused, since nodes remember the ids of the series they write to.
CREATE TABLE metric_series (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    module     TEXT NOT NULL,
    name       TEXT NOT NULL,
    labels     TEXT NOT NULL,      -- JSON object, keys sorted: {"endpoint":"api"}, {}
    created_at INTEGER NOT NULL,
    UNIQUE (module, name, labels)
) STRICT;

-- Each sample is added to three rows of its series, one of each width, by one upsert
-- that merges (count + count, min of mins, the later `last`). The primary key is the
-- order queries read in (a series, a width, a range of starts). Pruning goes by
-- `metric_rollups_by_time`: `DELETE ... WHERE t < $1`, in small batches, perhaps
-- keeping wider rows longer; a series whose rollups are all gone may then be deleted
-- (its rollups would go with it).
CREATE TABLE metric_rollups (
    series_id  INTEGER NOT NULL REFERENCES metric_series (id) ON DELETE CASCADE,
    width      INTEGER NOT NULL CHECK (width IN (60000, 3600000, 86400000)), -- ms
    t          INTEGER NOT NULL,   -- start, ms since the epoch, a multiple of `width`
    samples    INTEGER NOT NULL,
    sum_value  REAL NOT NULL,
    min_value  REAL NOT NULL,
    max_value  REAL NOT NULL,
    last_value REAL NOT NULL,      -- the value of the sample with the latest `last_at`
    last_at    INTEGER NOT NULL,
    PRIMARY KEY (series_id, width, t)
) STRICT, WITHOUT ROWID;

-- A sample updates rows whose `t` it does not change, so this index is written only
-- when a minute, hour or day begins for a series.
CREATE INDEX metric_rollups_by_time ON metric_rollups (t);

-- One row per module with metric history: samples refused because they would have
-- started a series past the module's bound (counted, never silently dropped), and the
-- row admissions of the module's new series lock.
CREATE TABLE metric_modules (
    module          TEXT PRIMARY KEY,
    refused_samples INTEGER NOT NULL DEFAULT 0,
    last_refused_at INTEGER
) STRICT, WITHOUT ROWID;
