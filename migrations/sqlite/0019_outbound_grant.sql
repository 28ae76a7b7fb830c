-- The outbound hosts an administrator granted a module instead of those its current
-- version asks for (JSON array of host patterns): fewer (a request narrowed to the hosts
-- actually needed) or others (an operator's extension). NULL: the module may reach what
-- its current version asks for, as every module could before this migration.
ALTER TABLE modules ADD COLUMN granted_outbound_hosts TEXT;
