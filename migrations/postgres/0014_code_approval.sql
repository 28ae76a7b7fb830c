-- An approval binds to code: each version records who uploaded it and whether (and by
-- whom) its bytes were approved; see the SQLite migration of the same number.
ALTER TABLE module_versions ADD COLUMN uploaded_by TEXT;
ALTER TABLE module_versions ADD COLUMN uploader_role TEXT
    CHECK (uploader_role IN ('viewer', 'operator', 'admin'));
ALTER TABLE module_versions ADD COLUMN uploader_token TEXT;
ALTER TABLE module_versions ADD COLUMN signed_by TEXT;
ALTER TABLE module_versions ADD COLUMN approved_at BIGINT;
ALTER TABLE module_versions ADD COLUMN approved_by TEXT;
ALTER TABLE module_versions ADD COLUMN approved_key TEXT;

-- Running installs keep running: the current version of every module counts as approved.
UPDATE module_versions
   SET approved_at = uploaded_at, approved_by = 'approved before approvals bound to code'
 WHERE EXISTS (SELECT 1 FROM modules m
                WHERE m.name = module_versions.module
                  AND m.current_hash = module_versions.content_hash);

-- Ed25519 public keys an admin pinned to a module.
CREATE TABLE module_publisher_keys (
    module     TEXT COLLATE "C" NOT NULL REFERENCES modules (name) ON DELETE CASCADE,
    key_id     TEXT NOT NULL,
    public_key BYTEA NOT NULL,
    comment    TEXT NOT NULL,
    pinned_by  TEXT NOT NULL,
    pinned_at  BIGINT NOT NULL,
    PRIMARY KEY (module, key_id)
);
