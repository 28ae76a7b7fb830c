-- The nodes of a deployment, each as it last reported itself. Every `runcell serve`
-- upserts its row on a heartbeat; a node that stopped keeps its row, and how old its
-- last heartbeat is tells that it is gone. An embedded deployment has one row.
CREATE TABLE nodes (
    node_id           TEXT PRIMARY KEY,
    started_at        INTEGER NOT NULL,
    last_heartbeat_at INTEGER NOT NULL,
    workers           INTEGER NOT NULL CHECK (workers >= 0),
    running           INTEGER NOT NULL CHECK (running >= 0),  -- executions it was running
    version           TEXT NOT NULL                           -- of the runcell binary
) STRICT;
