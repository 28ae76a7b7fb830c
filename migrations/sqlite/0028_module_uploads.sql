-- Uploads of module files that are compiling or finished: a large component compiles for
-- seconds, so an upload can answer `202` and the client follows it here, on any node.
-- `outcome` is the answer the upload would have given synchronously (the installed module,
-- or the error body) with its HTTP status in `outcome_status`; both are NULL while it
-- compiles. `node_id` says who compiles it: if that node stops, the upload is abandoned.
CREATE TABLE module_uploads (
    id             TEXT PRIMARY KEY,
    content_hash   TEXT NOT NULL,
    size_bytes     INTEGER NOT NULL,
    uploaded_by    TEXT NOT NULL,
    node_id        TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    finished_at    INTEGER,
    outcome_status INTEGER,
    outcome        TEXT
) STRICT;

-- Finished uploads are forgotten after a day.
CREATE INDEX module_uploads_by_creation ON module_uploads (created_at);
