-- What an administrator approved a module to do (JSON of domain::Capabilities). A version
-- whose manifest asks for more than this does not run until approved again; nothing is
-- approved by default.
ALTER TABLE modules ADD COLUMN approved_capabilities TEXT NOT NULL
    DEFAULT '{"outboundHosts":[],"publishes":[],"keyValue":false,"routes":"none"}';
