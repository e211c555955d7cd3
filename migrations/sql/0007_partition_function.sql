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
CREATE OR REPLACE FUNCTION {{.PartitionFunc}}(aggregate_id text, partitions integer) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT CASE WHEN partitions <= 1 THEN 0
                ELSE ((hashtextextended(aggregate_id COLLATE "C", 0) & 4294967295) % partitions)::integer END
$fn$;
