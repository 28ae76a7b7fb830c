-- What an administrator approved a module to do (JSON of domain::Capabilities); see the
-- SQLite migration of the same number.
ALTER TABLE modules ADD COLUMN approved_capabilities TEXT NOT NULL
    DEFAULT '{"outboundHosts":[],"publishes":[],"keyValue":false,"routes":"none"}';
