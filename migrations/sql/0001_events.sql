-- Events, aggregate heads, and the append lock that makes gap-safe reading possible.

-- Every statement that inserts into the events table takes a shared advisory lock K before any
-- position is allocated, so that in-flight appenders are visible in pg_locks (docs/design.md,
-- "The gap problem").
-- The trigger below takes it in its WHEN clause, which PostgreSQL evaluates for every statement
-- (INSERT and COPY alike) before any row, and which is false, so that the function is not called:
-- that saves a PL/pgSQL call per statement (about 10% of append throughput). The function takes
-- the lock too, should it ever be reached.
CREATE OR REPLACE FUNCTION {{.AppendLockFunc}}() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(TG_ARGV[0]::bigint);
    RETURN NULL;
END
$fn$;

CREATE TABLE {{.Events}} (
    -- CACHE 1 is required: with a per-session cache, a later appender could take a lower
    -- position than the sequence's last_value shows, which the horizon tracker relies on.
    global_position   bigint GENERATED ALWAYS AS IDENTITY (CACHE 1) PRIMARY KEY,
    event_id          uuid        NOT NULL,
    aggregate_type    text        NOT NULL,
    aggregate_id      text        NOT NULL,
    aggregate_version bigint      NOT NULL,
    event_type        text        NOT NULL,
    event_version     integer     NOT NULL DEFAULT 1,
    payload           bytea       NOT NULL,
    metadata          jsonb,
    causation_id      text,
    correlation_id    text,
    trace_id          text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_id),
    UNIQUE (aggregate_type, aggregate_id, aggregate_version)
);

CREATE TRIGGER eventline_append_lock
    BEFORE INSERT ON {{.Events}}
    FOR EACH STATEMENT
    WHEN (pg_advisory_xact_lock_shared('{{.AppendLockKey}}'::bigint)::text IS NULL)
    EXECUTE FUNCTION {{.AppendLockFunc}}('{{.AppendLockKey}}');

CREATE TABLE {{.AggregateHeads}} (
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    version        bigint NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);
