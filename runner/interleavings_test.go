package runner_test

// Interleavings of two operations found by review: each test failed on the code before its fix.

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/runner"
)

// A dead-letter retry is a batch like any other: it may not commit once the projection is paused,
// nor once another process has taken its unit. The retry has started (its unit read a record that
// was not paused, and owned the unit) and waits for its checkpoint row, which the test holds; the
// pause, or the change of owner, commits meanwhile. The retry must then be refused, as a batch's
// compare-and-set is.
func TestDeadLetterRetryRefusedWhilePaused(t *testing.T) {
	t.Parallel()
	for _, takeOver := range []bool{false, true} {
		name := "paused"
		if takeOver {
			name = "taken over"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			deadLetterRetryRefused(t, takeOver)
		})
	}
}

func deadLetterRetryRefused(t *testing.T, takeOver bool) {
	ctx := testCtx(t)
	h := newHarness(t, true)
	positions := h.appendMany(ctx, 6)
	var broken atomic.Bool
	broken.Store(true)
	rec := &recorder{name: "dlpause", fail: func(ev eventstore.PersistedEvent) error {
		if broken.Load() && ev.GlobalPosition == positions[2] {
			return errBoom
		}
		return nil
	}}
	r, err := runner.New(h.db.Pool, h.store, h.fastConfig())
	require.NoError(t, err)
	require.NoError(t, r.Register(rec, runner.WithFailurePolicy(runner.DeadLetter)))
	h.run(r)
	cps := r.CheckpointsForTest()
	h.waitFor("all but the parked event", func() bool { return len(appliedPositions(t, h.db.Pool, "dlpause")) == 5 })
	h.waitFor("the checkpoint past the parked event", func() bool {
		var pos int64
		require.NoError(t, h.db.Pool.QueryRow(ctx, `SELECT position FROM eventline_checkpoints WHERE projection = 'dlpause'`).Scan(&pos))
		return pos == positions[5]
	})
	broken.Store(false)
	dead, err := cps.DeadLetters(ctx, h.db.Pool, "dlpause")
	require.NoError(t, err)
	require.Len(t, dead, 1)

	// Hold the unit's checkpoint row, then ask for the retry: the unit starts it and waits.
	lock, err := h.db.Pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = lock.Rollback(context.Background()) }()
	_, err = lock.Exec(ctx, `SELECT 1 FROM eventline_checkpoints WHERE projection = 'dlpause' FOR UPDATE`)
	require.NoError(t, err)
	require.NoError(t, cps.RequestRetry(ctx, h.db.Pool, dead[0].ID))
	h.waitFor("the retry to wait for the checkpoint row", func() bool {
		var n int
		require.NoError(t, h.db.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
			AND wait_event_type = 'Lock' AND query LIKE '%eventline_checkpoints%FOR UPDATE%'`).Scan(&n))
		return n > 0
	})
	if takeOver {
		// A live process of its own took the unit (its lease runs for an hour).
		_, err = lock.Exec(ctx, `UPDATE eventline_checkpoints SET owner = 'other-node', lease_until = now() + interval '1 hour'
			WHERE projection = 'dlpause'`)
		require.NoError(t, err)
		require.NoError(t, lock.Commit(ctx))
		// Take the row again: that waits for the retry's transaction to end.
		h.inTx(func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `SELECT 1 FROM eventline_checkpoints WHERE projection = 'dlpause' FOR UPDATE`)
			return err
		})
		require.NotContains(t, appliedPositions(t, h.db.Pool, "dlpause"), positions[2],
			"a dead letter was applied by a retry of a process that no longer owned the unit")
		left, err := cps.DeadLetters(ctx, h.db.Pool, "dlpause")
		require.NoError(t, err)
		require.Len(t, left, 1)
		return
	}
	h.inTx(func(tx pgx.Tx) error { return h.lc().Pause(ctx, tx, "dlpause") })
	require.NoError(t, lock.Commit(ctx))
	// The retry got the row first; WaitIdle returns once its transaction has ended.
	require.NoError(t, h.lc().WaitIdle(ctx, h.db.Pool, "dlpause"))
	require.True(t, h.record("dlpause").Paused)
	require.NotContains(t, appliedPositions(t, h.db.Pool, "dlpause"), positions[2],
		"a dead letter was applied by a retry that ran after the pause")

	// After the resume, the retry still requested is carried out, once.
	h.inTx(func(tx pgx.Tx) error { return h.lc().Resume(ctx, tx, "dlpause") })
	h.waitFor("the retried event", func() bool { return len(appliedPositions(t, h.db.Pool, "dlpause")) == 6 })
	require.Len(t, appliedPositions(t, h.db.Pool, "dlpause"), 6)
	left, err := cps.DeadLetters(ctx, h.db.Pool, "dlpause")
	require.NoError(t, err)
	require.Empty(t, left)
}
