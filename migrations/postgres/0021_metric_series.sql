-- Module metrics as series and rollups; see the SQLite migration of the same number.
-- `metric_samples` is no longer written; its rows are moved here when a node starts.

-- An identity never reuses an id: nodes remember the ids of the series they write to.
CREATE TABLE metric_series (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    module     TEXT COLLATE "C" NOT NULL,
    name       TEXT COLLATE "C" NOT NULL,
    labels     TEXT COLLATE "C" NOT NULL,  -- JSON object, keys sorted
    created_at BIGINT NOT NULL,
    UNIQUE (module, name, labels)
);

CREATE TABLE metric_rollups (
    series_id  BIGINT NOT NULL REFERENCES metric_series (id) ON DELETE CASCADE,
    width      BIGINT NOT NULL CHECK (width IN (60000, 3600000, 86400000)),
    t          BIGINT NOT NULL,
    samples    BIGINT NOT NULL,
    sum_value  DOUBLE PRECISION NOT NULL,
    min_value  DOUBLE PRECISION NOT NULL,
    max_value  DOUBLE PRECISION NOT NULL,
    last_value DOUBLE PRECISION NOT NULL,
    last_at    BIGINT NOT NULL,
    PRIMARY KEY (series_id, width, t)
);

-- For pruning by time. A sample updates no indexed column of an existing row, so such
-- an update can stay heap-only (HOT) and leave every index as it was.
CREATE INDEX metric_rollups_by_time ON metric_rollups (t);

CREATE TABLE metric_modules (
    module          TEXT COLLATE "C" PRIMARY KEY,
    refused_samples BIGINT NOT NULL DEFAULT 0,
    last_refused_at BIGINT
);
