-- Named, expiring, fenced leases: at most one holder at a time (the cron leader, for
-- one). A lease is held while `holder` is set and `expires_at` is in the future; a
-- holder keeps it by renewing before then. `token` grows by one at every change of
-- tenure (a takeover, or an acquisition after a release) and never goes back: a write
-- fenced by (holder, token) is refused once anyone else has held the lease, even if
-- the old holder still believes it leads. So a row is never deleted, only released.
CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT,                       -- NULL once released
    token      BIGINT NOT NULL CHECK (token > 0),
    expires_at BIGINT NOT NULL
);
