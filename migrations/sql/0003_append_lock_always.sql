-- The append lock trigger fires always, and counts the insert statements of each transaction
-- (docs/design.md, "The gap problem").
--
-- ENABLE ALWAYS: an ENABLEd trigger does not fire in sessions with session_replication_role =
-- replica, so such a writer would take no append lock K and the horizon tracker would pass its
-- positions while it is still in flight. horizon.Check refuses a trigger in any other state.
--
-- The count (the transaction-local setting eventline.event_inserts, which a rolled-back
-- savepoint reverts together with its rows and its locks) tells Append whether its statement is
-- the first insert of its transaction: only then does it take its position lock, which then says
-- truly that the transaction owns nothing below that position. The setting is shared by every
-- events table of the database: an insert into one makes a later Append to another skip its
-- position lock, which is safe, only less precise. Applications must not set it.
--
-- DROP and CREATE run in the migration's transaction: no writer ever sees the table without the
-- trigger (DROP TRIGGER waits for the writers in flight).
DROP TRIGGER eventline_append_lock ON {{.Events}};

CREATE TRIGGER eventline_append_lock
    BEFORE INSERT ON {{.Events}}
    FOR EACH STATEMENT
    WHEN ((pg_advisory_xact_lock_shared('{{.AppendLockKey}}'::bigint)::text
           || set_config('eventline.event_inserts',
                         (coalesce(nullif(current_setting('eventline.event_inserts', true), ''), '0')::bigint + 1)::text,
                         true)) IS NULL)
    EXECUTE FUNCTION {{.AppendLockFunc}}('{{.AppendLockKey}}');

ALTER TABLE {{.Events}} ENABLE ALWAYS TRIGGER eventline_append_lock;
