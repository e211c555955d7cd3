package runner_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/eventstore"
)

// A transaction writes positions in ways that the horizon tracker once misread (internal/horizon):
// a raw INSERT or COPY before its Append, an Append in a savepoint rolled back after the tracker
// saw it, or a session with session_replication_role = replica. The projection must stop before
// its first position while it is open, and apply every event, in order, once it commits.
//
// To make the outcome independent of when the tracker ticks, an appender D opened before the
// transaction holds the projection back until the transaction has written everything: the
// projection can only move once D rolls back, and then only as far as the tracker allows.
func TestOpenWriterIsNotSkipped(t *testing.T) {
	t.Parallel()
	type writer struct {
		name string
		// write writes two positions or more in tx and returns the first.
		write func(t *testing.T, ctx context.Context, h *harness, tx pgx.Tx) int64
		// settle runs after the projection was seen held, before tx commits.
		settle func(t *testing.T, ctx context.Context, tx pgx.Tx)
		// superuser: write needs one (session_replication_role).
		superuser bool
	}
	appendIn := func(t *testing.T, ctx context.Context, h *harness, tx pgx.Tx) {
		_, err := h.store.Append(ctx, tx, eventstore.Any(), events("acct", uuid.NewString(), 1))
		require.NoError(t, err)
	}
	for _, tc := range []writer{
		{name: "INSERT then Append", write: func(t *testing.T, ctx context.Context, h *harness, tx pgx.Tx) int64 {
			pos := insertRaw(t, ctx, tx)
			appendIn(t, ctx, h, tx)
			return pos
		}},
		{name: "COPY then Append", write: func(t *testing.T, ctx context.Context, h *harness, tx pgx.Tx) int64 {
			pos := copyRaw(t, ctx, tx)
			appendIn(t, ctx, h, tx)
			return pos
		}},
		{name: "INSERT, SAVEPOINT, Append, ROLLBACK TO", write: func(t *testing.T, ctx context.Context, h *harness, tx pgx.Tx) int64 {
			pos := insertRaw(t, ctx, tx)
			_, err := tx.Exec(ctx, `SAVEPOINT s`)
			require.NoError(t, err)
			appendIn(t, ctx, h, tx)
			return pos
		}, settle: func(t *testing.T, ctx context.Context, tx pgx.Tx) {
			_, err := tx.Exec(ctx, `ROLLBACK TO SAVEPOINT s`)
			require.NoError(t, err)
		}},
		{name: "INSERT with session_replication_role = replica", superuser: true, write: func(t *testing.T, ctx context.Context, h *harness, tx pgx.Tx) int64 {
			_, err := tx.Exec(ctx, `SET LOCAL session_replication_role = replica`)
			require.NoError(t, err)
			pos := insertRaw(t, ctx, tx)
			insertRaw(t, ctx, tx)
			return pos
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t)
			h := newHarness(t, false)
			if tc.superuser {
				var super bool
				require.NoError(t, h.db.Pool.QueryRow(ctx, `SELECT rolsuper FROM pg_roles WHERE rolname = current_user`).Scan(&super))
				if !super {
					t.Skip("setting session_replication_role needs a superuser")
				}
			}
			r, _ := h.start(h.config(), &recorder{name: "rec"})
			first := h.appendOne(ctx, "acct", "first", 2)
			h.waitFor("the first events", func() bool { return len(appliedPositions(t, h.db.Pool, "rec")) == 2 })

			// D holds the projection at its position. Once the runner names D as what it waits on,
			// its tracker has read an L at or past D's position: the writer, which starts after, is
			// first seen by a later tick.
			doomed, _ := h.openAppend(ctx, "acct", "doomed", 1)
			var pid int
			require.NoError(t, doomed.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid))
			beforeWriter := h.appendOne(ctx, "acct", "c1", 1)
			h.waitFor("the projection to wait on D", func() bool {
				return strings.Contains(stateOf(t, r, "rec").WaitingOn, fmt.Sprintf("appender pid %d", pid))
			})

			tx, err := h.db.Pool.Begin(ctx)
			require.NoError(t, err)
			t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
			raw := tc.write(t, ctx, h, tx)
			h.appendOne(ctx, "acct", "c2", 2)
			require.NoError(t, doomed.Rollback(ctx))

			h.waitFor("the projection to stop at the writer's first position, or to pass it", func() bool {
				applied := appliedPositions(t, h.db.Pool, "rec")
				h.mu.Lock()
				defer h.mu.Unlock()
				return h.held[raw] || h.held[raw+1] || (len(applied) > 0 && applied[len(applied)-1] > raw)
			})
			h.mu.Lock()
			heldAtRaw, heldPast := h.held[raw], h.held[raw+1]
			h.mu.Unlock()
			// Not fatal: the outcome below shows what a pass over the open position costs.
			assert.True(t, heldAtRaw, "held at the writer's first position %d", raw)
			assert.False(t, heldPast, "not held past the writer's first position %d", raw)
			assert.Equal(t, append(first.GlobalPositions(), beforeWriter.GlobalPositions()...), appliedPositions(t, h.db.Pool, "rec"),
				"applied up to the writer's first position and no further")

			if tc.settle != nil {
				tc.settle(t, ctx, tx)
			}
			require.NoError(t, tx.Commit(ctx))
			want := committedPositions(t, h.db.Pool, "")
			require.True(t, slices.Contains(want, raw))
			h.waitFor("the last committed event", func() bool {
				return slices.Contains(appliedPositions(t, h.db.Pool, "rec"), want[len(want)-1])
			})
			require.Equal(t, want, appliedPositions(t, h.db.Pool, "rec"), "every committed event, in order")
		})
	}
}

// insertRaw inserts one event with plain SQL in tx and returns its position.
func insertRaw(t *testing.T, ctx context.Context, tx pgx.Tx) int64 {
	t.Helper()
	var pos int64
	require.NoError(t, tx.QueryRow(ctx, `INSERT INTO events (event_id, aggregate_type, aggregate_id, aggregate_version, event_type, payload)
		VALUES (gen_random_uuid(), 'raw', gen_random_uuid()::text, 1, 'RawInserted', '\x7b7d') RETURNING global_position`).Scan(&pos))
	return pos
}

// copyRaw writes one event with COPY in tx and returns its position.
func copyRaw(t *testing.T, ctx context.Context, tx pgx.Tx) int64 {
	t.Helper()
	_, err := tx.CopyFrom(ctx, pgx.Identifier{"events"},
		[]string{"event_id", "aggregate_type", "aggregate_id", "aggregate_version", "event_type", "payload"},
		pgx.CopyFromRows([][]any{{uuid.New(), "copy", uuid.NewString(), int64(1), "Copied", []byte("{}")}}))
	require.NoError(t, err)
	var pos int64
	require.NoError(t, tx.QueryRow(ctx, `SELECT max(global_position) FROM events`).Scan(&pos))
	return pos
}
