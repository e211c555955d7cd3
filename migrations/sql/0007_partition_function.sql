-- The partition of an aggregate, in SQL (docs/design.md, "Partitions in SQL").
--
-- {{.PartitionFunc}}(aggregate_id, partitions) is projector.PartitionOf: PostgreSQL's 32-bit text
-- hash of the ID's bytes (hashtext; the low 32 bits of hashtextextended(id, 0), which hash
-- partitioning keeps stable across versions), read as an unsigned number, modulo partitions; 0
-- when partitions <= 1. COLLATE "C" makes it hash the bytes whatever the column's collation. Go
-- computes the same value on UTF-8 bytes, so the database must be UTF8 (the runner checks that
-- both agree before it relies on it, and filters in memory otherwise).
--
-- A plain SQL expression, which the planner inlines: a partition owner's read costs one hash per
-- row it looks at, with no function call.
--
--   SELECT {{.PartitionFunc}}(aggregate_id, 8), count(*) FROM {{.Events}} GROUP BY 1;
--
-- It holds nothing of any table, so every events table of the schema shares it.
-- Earlier versions of eventline hashed aggregate IDs to partitions with FNV-1a, in Go. A
-- projection running several partitions under that hash would, after this upgrade, find most of
-- its aggregates in another partition: events skipped or applied twice. Refuse rather than let that
-- happen: drain such projections to one partition first (docs/design.md, "Partitions in SQL").
DO $guard$
DECLARE
    names text;
BEGIN
    SELECT string_agg(format('%s (%s partitions)', projection,
                             greatest(active_partitions, coalesce(target_partitions, 0))), ', ' ORDER BY projection)
      INTO names
      FROM {{.Projections}}
     WHERE active_partitions > 1 OR coalesce(target_partitions, 0) > 1;
    IF names IS NOT NULL THEN
        -- The guidance is in the message: clients show it, not always the hint.
        RAISE EXCEPTION 'eventline: the partition hash changed, and these projections run several partitions '
                        'under the earlier one: %. Deploy them with Partitions() = 1 on the earlier eventline '
                        'version, wait until the change completed (eventline status), then upgrade and deploy '
                        'the partition count again (docs/design.md, "Partitions in SQL")', names;
    END IF;
END
$guard$;

CREATE OR REPLACE FUNCTION {{.PartitionFunc}}(aggregate_id text, partitions integer) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT CASE WHEN partitions <= 1 THEN 0
                ELSE ((hashtextextended(aggregate_id COLLATE "C", 0) & 4294967295) % partitions)::integer END
$fn$;
