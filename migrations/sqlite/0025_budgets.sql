-- Consumption budgets. `modules.budgets` is the module's list of budgets (JSON array of
-- {metric, host?, per, limit, action}), read with the module so that every node learns a
-- change when it next resolves the module.
ALTER TABLE modules ADD COLUMN budgets TEXT NOT NULL DEFAULT '[]';

-- What each budget used in each window, shared by every node. `host` is the budget's
-- host pattern ('' for every host and for other metrics); `per` is `hour` or `day` (an
-- hour and a day starting at midnight have the same start, so it is part of the key).
-- A run or a request is counted by one conditional upsert that refuses past the limit,
-- so two nodes can never both take the last unit.
CREATE TABLE budget_counters (
    module       TEXT NOT NULL,
    metric       TEXT NOT NULL,
    host         TEXT NOT NULL,
    per          TEXT NOT NULL,
    window_start INTEGER NOT NULL,
    used         INTEGER NOT NULL,
    PRIMARY KEY (module, metric, host, per, window_start)
) STRICT, WITHOUT ROWID;

-- Pruning removes windows long over, across modules.
CREATE INDEX budget_counters_by_window ON budget_counters (window_start);
