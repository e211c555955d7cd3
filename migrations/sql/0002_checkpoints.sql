-- Checkpoints of projections, the runner processes that own them, and the events they parked.

CREATE TABLE {{.Checkpoints}} (
    projection        text        NOT NULL,
    -- A new version of a projection is built beside the old one, from position 0.
    version           integer     NOT NULL DEFAULT 1,
    -- Partition k of a projection split into partitions parts handles the aggregates whose
    -- hashed ID modulo partitions is k. Unpartitioned: 0 of 1. While the partition count of a
    -- projection changes, the old and the new set of partitions exist side by side.
    partitions        integer     NOT NULL DEFAULT 1,
    partition         integer     NOT NULL DEFAULT 0,
    position          bigint      NOT NULL DEFAULT 0,
    -- running; stopped (a handler failed under the stop policy); paused (by an operator);
    -- building (a new version catching up beside the active one); waiting (a new set of
    -- partitions waiting for the old set to drain to stop_at); retired (replaced).
    state             text        NOT NULL DEFAULT 'running',
    -- While the partition count changes: the old partitions apply events up to here, no further.
    stop_at           bigint,
    last_error        text,
    failed_position   bigint,
    -- The runner process that may apply batches, and until when it holds the lease.
    owner             text,
    lease_until       timestamptz,
    -- Set by the CLI; the owner resets the read model and replays from 0.
    rebuild_requested boolean     NOT NULL DEFAULT false,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, version, partitions, partition)
);

CREATE TABLE {{.Nodes}} (
    node_id      text        PRIMARY KEY,
    hostname     text        NOT NULL,
    pid          integer     NOT NULL,
    -- The projections (name@version) this process has registered: work is only assigned to
    -- processes that have the code for it.
    projections  text[]      NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE {{.DeadLetters}} (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    projection      text        NOT NULL,
    version         integer     NOT NULL DEFAULT 1,
    partitions      integer     NOT NULL DEFAULT 1,
    partition       integer     NOT NULL DEFAULT 0,
    global_position bigint      NOT NULL,
    event_id        uuid        NOT NULL,
    error           text        NOT NULL,
    attempts        integer     NOT NULL DEFAULT 1,
    -- Set by the CLI; the owner runs the handler on the event again.
    retry_requested boolean     NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (projection, version, partitions, partition, global_position)
);
