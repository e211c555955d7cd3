-- Live status: each runner process publishes, with every heartbeat, what only it knows (events
-- applied per second, the appender a unit waits on, its horizon), so that `eventline status` and
-- the console show it for every process. Written by the process as a whole document; read as is.

ALTER TABLE {{.Nodes}} ADD COLUMN status jsonb;
