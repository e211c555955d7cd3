-- Live status: each runner process publishes, with every heartbeat, what only it knows (events
-- applied per second, the appender a unit waits on, its horizon), so that `eventline status` and
-- the console show it for every process. Written by the process as a whole document and read as
-- is, never queried inside: json (no parsing into jsonb) stored uncompressed (EXTERNAL), the
-- cheapest to rewrite every second.

ALTER TABLE {{.Nodes}} ADD COLUMN status json;
ALTER TABLE {{.Nodes}} ALTER COLUMN status SET STORAGE EXTERNAL;
