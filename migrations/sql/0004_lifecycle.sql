-- The projection lifecycle (docs/design.md, "Projection lifecycle"): one record per projection
-- holds the projection-wide dimensions (which version and partition layout serve, any change in
-- progress, the operator's pause, rebuild requests), each in its own column; the checkpoint rows
-- keep only what belongs to one unit (position, failure, owner, lease).

CREATE TABLE {{.Projections}} (
    projection        text    PRIMARY KEY,
    -- The layout that serves: its version and partition count. Every lower version is retired.
    active_version    integer NOT NULL,
    active_partitions integer NOT NULL,
    -- A layout being brought in, if any. 'build': a newer version replays from 0 beside the
    -- active one and takes over once it has caught up. 'switch': the active layout drains to
    -- barrier, then the target starts from it (a new partition count, or a new version of a
    -- detached handler).
    target_version    integer,
    target_partitions integer,
    target_mode       text,
    -- The active layout applies nothing beyond barrier while set.
    barrier           bigint,
    -- The operator's intent: no unit of the projection applies anything while paused.
    paused            boolean NOT NULL DEFAULT false,
    -- Rebuild requests (from the CLI) and rebuilds carried out: a request is pending while
    -- rebuild_requested > rebuilds.
    rebuild_requested bigint  NOT NULL DEFAULT 0,
    rebuilds          bigint  NOT NULL DEFAULT 0,
    -- What the code of the active version declared, so that the CLI can refuse what cannot be
    -- done: a detached handler is never rebuilt, a projection without Reset cannot be.
    detached          boolean NOT NULL DEFAULT false,
    resettable        boolean NOT NULL DEFAULT false,
    -- Why the last projection-wide request could not be carried out.
    last_error        text,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CHECK (active_version >= 1 AND active_partitions >= 1),
    CHECK ((target_version IS NULL) = (target_partitions IS NULL) AND (target_version IS NULL) = (target_mode IS NULL)),
    CHECK (target_mode IN ('build', 'switch')),
    CHECK (target_version IS NULL OR target_version > active_version
        OR (target_version = active_version AND target_partitions <> active_partitions AND target_mode = 'switch')),
    CHECK (barrier IS NULL OR target_version IS NOT NULL),
    CHECK (target_mode <> 'switch' OR barrier IS NOT NULL),
    CHECK (rebuilds <= rebuild_requested)
);

-- Carry over what the old single state column said. Active: the running, stopped or paused
-- rows (the highest version; while partitions changed, the draining set, which had stop_at).
INSERT INTO {{.Projections}} (projection, active_version, active_partitions, paused)
SELECT DISTINCT ON (projection) projection, version, partitions,
       bool_or(state = 'paused') OVER (PARTITION BY projection)
FROM {{.Checkpoints}}
WHERE state IN ('running', 'stopped', 'paused')
ORDER BY projection, version DESC, (stop_at IS NOT NULL) DESC, partitions;

UPDATE {{.Projections}} p SET target_version = t.version, target_partitions = t.partitions,
       target_mode = CASE WHEN t.state = 'waiting' THEN 'switch' ELSE 'build' END,
       barrier = CASE WHEN t.state = 'waiting' THEN t.barrier END
FROM (SELECT DISTINCT ON (c.projection) c.projection, c.version, c.partitions, c.state,
             (SELECT max(o.stop_at) FROM {{.Checkpoints}} o WHERE o.projection = c.projection AND o.stop_at IS NOT NULL) AS barrier
      FROM {{.Checkpoints}} c WHERE c.state IN ('building', 'waiting')
      ORDER BY c.projection, c.version DESC) t
WHERE p.projection = t.projection
  AND (t.version > p.active_version OR (t.version = p.active_version AND t.partitions <> p.active_partitions AND t.state = 'waiting'));

-- Rows of layouts that no longer serve are gone: a retired version never applies again.
DELETE FROM {{.Checkpoints}} c WHERE NOT EXISTS (
    SELECT 1 FROM {{.Projections}} p WHERE p.projection = c.projection
      AND ((c.version = p.active_version AND c.partitions = p.active_partitions)
        OR (c.version = p.target_version AND c.partitions = p.target_partitions)));

ALTER TABLE {{.Checkpoints}}
    DROP COLUMN state,
    DROP COLUMN stop_at,
    DROP COLUMN rebuild_requested;
COMMENT ON COLUMN {{.Checkpoints}}.failed_position IS
    'Set when a handler failed under the stop policy: the unit applies nothing until resumed.';

-- Dead letters belong to a version, not to a partition: a partition change keeps them, and the
-- owner of the event's aggregate under the current layout retries them. They carry the
-- aggregate so that its later events can be parked behind them (sequenced dead letters).
ALTER TABLE {{.DeadLetters}} ADD COLUMN aggregate_type text, ADD COLUMN aggregate_id text,
    -- Set on events parked only because an earlier event of their aggregate is parked.
    ADD COLUMN blocked_by bigint;
UPDATE {{.DeadLetters}} d SET aggregate_type = e.aggregate_type, aggregate_id = e.aggregate_id
FROM {{.Events}} e WHERE e.global_position = d.global_position;
DELETE FROM {{.DeadLetters}} WHERE aggregate_type IS NULL;
ALTER TABLE {{.DeadLetters}}
    ALTER COLUMN aggregate_type SET NOT NULL,
    ALTER COLUMN aggregate_id SET NOT NULL,
    DROP COLUMN partitions,
    DROP COLUMN partition;
CREATE UNIQUE INDEX ON {{.DeadLetters}} (projection, version, global_position);
CREATE INDEX ON {{.DeadLetters}} (projection, version, aggregate_type, aggregate_id, global_position);
