-- An approval binds to code: each version records who uploaded it and whether (and by
-- whom) its bytes were approved. A version runs only when its code is approved and it
-- asks for no more than the module's approved capabilities. Before this migration an
-- approval followed the module's name, so any operator's upload ran at once.
ALTER TABLE module_versions ADD COLUMN uploaded_by TEXT;      -- username; NULL before 0014
ALTER TABLE module_versions ADD COLUMN uploader_role TEXT
    CHECK (uploader_role IS NULL OR uploader_role = 'viewer' OR uploader_role = 'operator'
           OR uploader_role = 'admin');
ALTER TABLE module_versions ADD COLUMN uploader_token TEXT;   -- API token name, if one was used
ALTER TABLE module_versions ADD COLUMN signed_by TEXT;        -- key id the upload's signature named
ALTER TABLE module_versions ADD COLUMN approved_at INTEGER;    -- NULL: waits for an admin
ALTER TABLE module_versions ADD COLUMN approved_by TEXT;       -- who or what approved the bytes
ALTER TABLE module_versions ADD COLUMN approved_key TEXT;      -- the pinned key that approved them

-- Running installs keep running: the current version of every module was running (or
-- waiting only for capabilities) before, so its code counts as approved. Older versions
-- were never vouched for and wait for an admin if they become current again.
UPDATE module_versions
   SET approved_at = uploaded_at, approved_by = 'approved before approvals bound to code'
 WHERE EXISTS (SELECT 1 FROM modules m
                WHERE m.name = module_versions.module
                  AND m.current_hash = module_versions.content_hash);

-- Ed25519 public keys an admin pinned to a module: an upload signed by one keeps the
-- approval (as long as it asks for no more capabilities). `key_id` is the first 16 hex
-- digits of the SHA-256 of the 32-byte key.
CREATE TABLE module_publisher_keys (
    module     TEXT NOT NULL REFERENCES modules (name) ON DELETE CASCADE,
    key_id     TEXT NOT NULL,
    public_key BLOB NOT NULL,                                -- 32 bytes
    comment    TEXT NOT NULL,
    pinned_by  TEXT NOT NULL,
    pinned_at  INTEGER NOT NULL,
    PRIMARY KEY (module, key_id)
) STRICT;
