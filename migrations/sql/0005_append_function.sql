-- Raw SQL writers (docs/design.md, "Raw SQL writers"): event IDs get a default, and writers that
-- are not Go get a function with Store.Append's guarantees.

-- A UUIDv7 (RFC 9562) from the clock and gen_random_uuid()'s random bits, since PostgreSQL 15 has
-- no uuidv7(): time-ordered IDs keep the event_id index append-only, as Append's are (random v4
-- IDs would write all over it). Not monotonic within a millisecond, which an index does not need.
-- It holds nothing of any table, so every events table of the schema shares it, like
-- {{.AppendLockFunc}}.
CREATE OR REPLACE FUNCTION {{.UUIDv7Func}}() RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE AS $fn$
    SELECT encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
        PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
        FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid
$fn$;

-- A raw INSERT (or COPY) gives aggregate_type, aggregate_id, aggregate_version, event_type and
-- payload; it may leave out event_id (now a UUIDv7), event_version (1), created_at (now()),
-- metadata, causation_id, correlation_id and trace_id (NULL), and must leave out global_position.
-- Versions go on from the aggregate's without holes. An aggregate without a row in
-- {{.AggregateHeads}} is at its highest stored version for Append and the function below; once it
-- has one, a raw writer must move it in its transaction (or call the function), or Append to that
-- aggregate fails until the row is repaired (docs/design.md, "Raw SQL writers").
ALTER TABLE {{.Events}} ALTER COLUMN event_id SET DEFAULT {{.UUIDv7Func}}();

-- {{.AppendFunc}}(aggregate_type, aggregate_id, expected_version, events, notify_channel)
-- appends events to one aggregate as Store.Append does, and returns one row per event, in version
-- order: (global_position, aggregate_version, event_id).
--
--   SELECT * FROM {{.AppendFunc}}('order', 'o-1', NULL,
--       '[{"event_type": "Placed", "payload": {"total": 12}, "metadata": {"user": "ann"}},
--         {"event_type": "Signed", "payload_base64": "AAEC"}]');
--
-- expected_version: NULL appends whatever the version is (Any); 0 or -1 only when the aggregate
-- has no events (NoStream); n > 0 only when its version is n (Exact). Otherwise it raises SQLSTATE
-- VC409 (version conflict), with the message "optimistic concurrency conflict on ...: expected
-- ..., actual version N" and, as DETAIL, the JSON object {"aggregate_type", "aggregate_id",
-- "expected_version", "actual_version"}; postgres.MapAppendFuncError turns it into a
-- *eventstore.ConcurrencyError. Bad input raises 22023 (invalid_parameter_value) naming the
-- event; an event ID already stored raises 23505 (unique_violation on event_id).
--
-- events: a non-empty JSON array of objects with these keys (no others):
--   event_type      string, required, non-empty
--   payload         any JSON value, stored as its jsonb text in UTF-8 (jsonb normalizes it: key
--                   order, white space; "payload": "x" stores the three bytes "x", quotes included)
--   payload_base64  string, standard padded base64, stored as the bytes it decodes to (binary,
--                   or JSON byte for byte); at most one of payload and payload_base64; neither:
--                   an empty payload
--   metadata        any JSON value (null: none), stored as jsonb
--   event_id        string, a UUID; absent or null: a new UUIDv7 (as Append)
--   event_version   integer >= 0 (0, null or absent: 1)
--   causation_id, correlation_id, trace_id   strings ("" or null: none)
--   created_at      string, a timestamptz; absent or null: the time of the call
-- notify_channel: when not NULL or '', pg_notify(notify_channel, last position) is sent, which is
-- delivered on commit only (as Append with StoreConfig.NotifyChannel).
--
-- The same discipline as Append: versions are assigned contiguously under the aggregate's head
-- row lock (in {{.AggregateHeads}}), which is held until the transaction ends, so concurrent
-- appends to one aggregate serialize; when the aggregate has no head row, the version is taken
-- from its events (rows a raw INSERT wrote without a head row). The append lock trigger takes the
-- append lock; when the call is its transaction's first insert into an events table, the
-- function also takes the position lock on its first position, as Append does (docs/design.md,
-- "The gap problem"). The caller needs SELECT and INSERT on {{.Events}}, and SELECT, INSERT and
-- UPDATE on {{.AggregateHeads}}. A conflict or error aborts the caller's transaction (use a savepoint to go
-- on).
--
-- It refuses events larger than a maximum, as Store.Append does with StoreConfig.MaxEventSize.
-- The maximum is the setting eventline.max_event_size, in bytes of payload (as stored) plus
-- metadata (as jsonb text); unset or empty, 1048576 (1 MiB, Store.Append's default). Set it for a
-- database or a role (ALTER DATABASE ... SET eventline.max_event_size = '4194304') to match a
-- store configured otherwise. A larger event raises SQLSTATE 54000 (program_limit_exceeded)
-- naming the event, which postgres.MapAppendFuncError turns into an error matching
-- eventstore.ErrEventTooLarge; nothing is written.
--
-- Created, not replaced: the function belongs to this events table, and a name taken by another
-- object fails here instead of being redirected.
CREATE FUNCTION {{.AppendFunc}}(
    aggregate_type   text,
    aggregate_id     text,
    expected_version bigint,
    events           jsonb,
    notify_channel   text DEFAULT NULL
) RETURNS TABLE (global_position bigint, aggregate_version bigint, event_id uuid)
LANGUAGE plpgsql VOLATILE AS $fn$
#variable_conflict use_column
-- The parameters are used as $1..$5 below: their names are also column names.
DECLARE
    n         bigint;
    head      bigint; -- the aggregate's version before this append; NULL: the expectation failed
    actual    bigint;
    problem   text;
    max_size  bigint;
    ts        timestamptz := clock_timestamp();
    positions bigint[];
    ids       uuid[];
    first_pos bigint;
    last_pos  bigint;
BEGIN
    IF $1 IS NULL OR $1 = '' OR $2 IS NULL OR $2 = '' THEN
        RAISE EXCEPTION 'eventline append: empty aggregate type or ID' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF $3 < -1 THEN
        RAISE EXCEPTION 'eventline append: expected version % is invalid (NULL: any; 0 or -1: no stream; n > 0: exactly n)', $3
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF jsonb_typeof($4) IS DISTINCT FROM 'array' OR jsonb_array_length($4) = 0 THEN
        RAISE EXCEPTION 'eventline append: events must be a non-empty JSON array' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    n := jsonb_array_length($4);
    -- The first bad event, if any (CASE: its branches are tried in order).
    SELECT format('eventline append: event %s: %s', v.o - 1, v.why) INTO problem
    FROM (
        SELECT x.o, CASE
            WHEN jsonb_typeof(x.e) <> 'object' THEN 'not a JSON object'
            WHEN u.unknown IS NOT NULL THEN format('unknown key %s', to_json(u.unknown))
            WHEN jsonb_typeof(x.e->'event_type') IS DISTINCT FROM 'string' OR x.e->>'event_type' = '' THEN
                'event_type must be a non-empty string'
            WHEN x.e ? 'payload' AND x.e ? 'payload_base64' THEN 'give payload or payload_base64, not both'
            WHEN jsonb_typeof(x.e->'payload_base64') NOT IN ('string', 'null') THEN 'payload_base64 must be a string'
            WHEN jsonb_typeof(x.e->'event_version') NOT IN ('number', 'null') THEN 'event_version must be an integer >= 0'
            WHEN jsonb_typeof(x.e->'event_version') = 'number' AND ((x.e->>'event_version')::numeric NOT BETWEEN 0 AND 2147483647
                OR (x.e->>'event_version')::numeric % 1 <> 0) THEN 'event_version must be an integer >= 0'
            WHEN (SELECT bool_or(jsonb_typeof(x.e->k) NOT IN ('string', 'null'))
                  FROM unnest('{event_id,causation_id,correlation_id,trace_id,created_at}'::text[]) k) THEN
                'event_id, causation_id, correlation_id, trace_id and created_at must be strings'
        END AS why
        FROM jsonb_array_elements($4) WITH ORDINALITY AS x(e, o),
            LATERAL (SELECT min(k) AS unknown
                     FROM jsonb_object_keys(CASE WHEN jsonb_typeof(x.e) = 'object' THEN x.e ELSE '{}' END) k
                     WHERE k <> ALL ('{event_type,payload,payload_base64,metadata,event_id,event_version,causation_id,correlation_id,trace_id,created_at}')) u
    ) v
    WHERE v.why IS NOT NULL
    ORDER BY v.o
    LIMIT 1;
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION '%', problem USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- The size limit, as Store.Append's MaxEventSize: payload (as stored) plus metadata (as
    -- jsonb text).
    max_size := coalesce(nullif(current_setting('eventline.max_event_size', true), ''), '1048576')::bigint;
    SELECT format('eventline append to %s %s: event %s (%s) is too large: %s bytes of payload and metadata, more than the maximum of %s (eventline.max_event_size)',
            $1, to_json($2), s.o - 1, s.event_type, s.size, max_size) INTO problem
    FROM (
        SELECT x.o, x.e->>'event_type' AS event_type,
            coalesce(octet_length(decode(x.e->>'payload_base64', 'base64')),
                     CASE WHEN x.e ? 'payload' THEN octet_length(convert_to((x.e->'payload')::text, 'UTF8')) END, 0)
            + coalesce(octet_length(nullif(x.e->'metadata', 'null'::jsonb)::text), 0) AS size
        FROM jsonb_array_elements($4) WITH ORDINALITY AS x(e, o)
    ) s
    WHERE s.size > max_size
    ORDER BY s.o
    LIMIT 1;
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION '%', problem USING ERRCODE = 'program_limit_exceeded';
    END IF;

    -- Move the head row, as Append's statement does; the row stays locked until the transaction
    -- ends.
    IF $3 IS NULL THEN
        UPDATE {{.AggregateHeads}} SET version = version + n
        WHERE aggregate_type = $1 AND aggregate_id = $2
        RETURNING version - n INTO head;
        IF NOT FOUND THEN
            -- Two first appends racing meet in ON CONFLICT and serialize.
            INSERT INTO {{.AggregateHeads}} AS h (aggregate_type, aggregate_id, version)
            VALUES ($1, $2, coalesce((SELECT max(e.aggregate_version) FROM {{.Events}} e
                                      WHERE e.aggregate_type = $1 AND e.aggregate_id = $2), 0) + n)
            ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET version = h.version + n
            RETURNING version - n INTO head;
        END IF;
    ELSIF $3 <= 0 THEN
        INSERT INTO {{.AggregateHeads}} (aggregate_type, aggregate_id, version)
        SELECT $1, $2, n
        WHERE NOT EXISTS (SELECT 1 FROM {{.Events}} e WHERE e.aggregate_type = $1 AND e.aggregate_id = $2)
        ON CONFLICT (aggregate_type, aggregate_id) DO NOTHING
        RETURNING 0 INTO head;
    ELSE
        UPDATE {{.AggregateHeads}} SET version = version + n
        WHERE aggregate_type = $1 AND aggregate_id = $2 AND version = $3
        RETURNING $3 INTO head;
        IF NOT FOUND THEN
            INSERT INTO {{.AggregateHeads}} (aggregate_type, aggregate_id, version)
            SELECT $1, $2, $3 + n
            WHERE (SELECT max(e.aggregate_version) FROM {{.Events}} e WHERE e.aggregate_type = $1 AND e.aggregate_id = $2) = $3
            ON CONFLICT (aggregate_type, aggregate_id) DO NOTHING
            RETURNING $3 INTO head;
        END IF;
    END IF;
    IF head IS NULL THEN
        actual := coalesce(
            (SELECT h.version FROM {{.AggregateHeads}} h WHERE h.aggregate_type = $1 AND h.aggregate_id = $2),
            (SELECT max(e.aggregate_version) FROM {{.Events}} e WHERE e.aggregate_type = $1 AND e.aggregate_id = $2),
            0);
        RAISE EXCEPTION USING
            ERRCODE = 'VC409',
            MESSAGE = format('optimistic concurrency conflict on %s %s: expected %s, actual version %s', $1, to_json($2),
                CASE WHEN $3 <= 0 THEN 'no stream' ELSE 'version ' || $3 END, actual),
            DETAIL = jsonb_build_object('aggregate_type', $1, 'aggregate_id', $2, 'expected_version', $3,
                'actual_version', actual)::text,
            HINT = 'Read the aggregate again and retry with its version, or append with expected_version NULL (any).';
    END IF;

    -- Positions in version order, as Append's.
    WITH ins AS (
        INSERT INTO {{.Events}} (event_id, aggregate_type, aggregate_id, aggregate_version, event_type,
            event_version, payload, metadata, causation_id, correlation_id, trace_id, created_at)
        SELECT coalesce((x.e->>'event_id')::uuid, {{.UUIDv7Func}}()), $1, $2, head + x.o, x.e->>'event_type',
            coalesce(nullif((x.e->>'event_version')::numeric::integer, 0), 1),
            CASE WHEN x.e->>'payload_base64' IS NOT NULL THEN decode(x.e->>'payload_base64', 'base64')
                 WHEN x.e ? 'payload' THEN convert_to((x.e->'payload')::text, 'UTF8')
                 ELSE ''::bytea END,
            nullif(x.e->'metadata', 'null'::jsonb), nullif(x.e->>'causation_id', ''),
            nullif(x.e->>'correlation_id', ''), nullif(x.e->>'trace_id', ''),
            coalesce((x.e->>'created_at')::timestamptz, ts)
        FROM jsonb_array_elements($4) WITH ORDINALITY AS x(e, o)
        ORDER BY x.o
        RETURNING global_position, aggregate_version, event_id
    )
    SELECT array_agg(ins.global_position ORDER BY ins.aggregate_version), array_agg(ins.event_id ORDER BY ins.aggregate_version),
        min(ins.global_position), max(ins.global_position)
    INTO positions, ids, first_pos, last_pos
    FROM ins;

    -- The position lock, under Append's rule: only when this was the transaction's first insert
    -- into an events table (the trigger counts them), so that the transaction owns nothing below
    -- first_pos, now or later.
    IF current_setting('eventline.event_inserts', true) = '1' THEN
        PERFORM pg_advisory_xact_lock_shared('{{.PositionLockClass}}'::integer, (first_pos & 4294967295)::bit(32)::integer);
    END IF;
    IF nullif($5, '') IS NOT NULL THEN
        PERFORM pg_notify($5, last_pos::text);
    END IF;
    RETURN QUERY SELECT r.p, head + r.i, r.id FROM unnest(positions, ids) WITH ORDINALITY AS r(p, id, i);
END
$fn$;

COMMENT ON FUNCTION {{.AppendFunc}}(text, text, bigint, jsonb, text) IS
    'Appends events to one aggregate with Store.Append''s guarantees; see eventline migration 0005 and docs/design.md, "Raw SQL writers".';
