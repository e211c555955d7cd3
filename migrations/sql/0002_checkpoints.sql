-- Checkpoints of projections and the events they parked.

CREATE TABLE {{.Checkpoints}} (
    projection      text        NOT NULL,
    partition       integer     NOT NULL DEFAULT 0,
    position        bigint      NOT NULL DEFAULT 0,
    -- running, stopped (a handler failed under the stop policy) or paused (by an operator).
    state           text        NOT NULL DEFAULT 'running',
    last_error      text,
    failed_position bigint,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, partition)
);

CREATE TABLE {{.DeadLetters}} (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    projection      text        NOT NULL,
    partition       integer     NOT NULL DEFAULT 0,
    global_position bigint      NOT NULL,
    event_id        uuid        NOT NULL,
    error           text        NOT NULL,
    attempts        integer     NOT NULL DEFAULT 1,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (projection, partition, global_position)
);
