-- Rollup rows are updated in place by every batch that ends runs (or records samples) in
-- their point: the current minute, hour and day of a busy job are rewritten many times a
-- second, never by their key. With room left in each page PostgreSQL makes those updates
-- HOT: the new version goes in the same page, no index entry is added, and old versions
-- are pruned when the page is next touched instead of waiting for a vacuum. Without the
-- room, a month of history left the usage durations' primary key holding 62,670 entries
-- for 25,199 live rows (2 million runs written by `runcell bench history`), and every
-- read of the month walked past the dead ones. Applies to pages written from now on.
ALTER TABLE usage_runs SET (fillfactor = 70);
ALTER TABLE usage_run_durations SET (fillfactor = 70);
ALTER TABLE usage_outbound SET (fillfactor = 70);
ALTER TABLE usage_outbound_latency SET (fillfactor = 70);
ALTER TABLE metric_rollups SET (fillfactor = 70);
