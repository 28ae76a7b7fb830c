-- Consumption budgets and their counters; see the SQLite migration of the same number for
-- what each holds and why. Differences are only of dialect.
ALTER TABLE modules ADD COLUMN budgets TEXT NOT NULL DEFAULT '[]';

CREATE TABLE budget_counters (
    module       TEXT COLLATE "C" NOT NULL,
    metric       TEXT COLLATE "C" NOT NULL,
    host         TEXT COLLATE "C" NOT NULL,
    per          TEXT COLLATE "C" NOT NULL,
    window_start BIGINT NOT NULL,
    used         BIGINT NOT NULL,
    PRIMARY KEY (module, metric, host, per, window_start)
);

CREATE INDEX budget_counters_by_window ON budget_counters (window_start);
