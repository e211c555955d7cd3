package runner_test

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
)

// A writer holds its transaction open after Append while later writers commit: the projection
// must stop before the open position, and deliver everything, in order, once it commits (G1, G2).
func TestLateCommitIsNotSkipped(t *testing.T) {
	t.Parallel()
	for _, notify := range []bool{true, false} {
		t.Run(fmt.Sprintf("notify=%v", notify), func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t)
			h := newHarness(t, notify)
			rec := &recorder{name: "rec"}
			_, _ = h.start(h.config(), rec)

			first := h.appendOne(ctx, "acct", "a", 2)
			slow, open := h.openAppend(ctx, "acct", "slow", 2)
			later := h.appendOne(ctx, "acct", "b", 3)
			require.Greater(t, later.GlobalPositions()[0], open.LastPosition())

			h.waitHeld(open.GlobalPositions()[0])
			require.Equal(t, first.GlobalPositions(), appliedPositions(t, h.db.Pool, "rec"),
				"applied up to the open position and no further")

			require.NoError(t, slow.Commit(ctx))
			want := append(append(first.GlobalPositions(), open.GlobalPositions()...), later.GlobalPositions()...)
			h.waitFor("all events applied", func() bool { return len(appliedPositions(t, h.db.Pool, "rec")) >= len(want) })
			require.Equal(t, want, appliedPositions(t, h.db.Pool, "rec"))
		})
	}
}

// A rolled-back append leaves a hole that the projection passes as soon as the appender is gone,
// even while an appender holding a higher position is still open (G5).
func TestRolledBackAppendIsPassedWithoutWaitingForOthers(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	rec := &recorder{name: "rec"}
	_, _ = h.start(h.config(), rec)

	doomed, gone := h.openAppend(ctx, "acct", "doomed", 1)
	committed := h.appendOne(ctx, "acct", "ok", 2)
	h.waitHeld(gone.LastPosition())
	_, stillOpen := h.openAppend(ctx, "acct", "slow", 1)
	require.Greater(t, stillOpen.LastPosition(), committed.LastPosition())
	require.Empty(t, appliedPositions(t, h.db.Pool, "rec"))
	require.NoError(t, doomed.Rollback(ctx))

	h.waitFor("the committed events after the hole", func() bool {
		return len(appliedPositions(t, h.db.Pool, "rec")) == 2
	})
	require.Equal(t, committed.GlobalPositions(), appliedPositions(t, h.db.Pool, "rec"))
	h.appendOne(ctx, "acct", "after", 1)
	h.waitHeld(stillOpen.LastPosition())
	require.Equal(t, committed.GlobalPositions(), appliedPositions(t, h.db.Pool, "rec"))
}

// A raw INSERT outside Append takes the same lock (the trigger), so it is not skipped either.
func TestRawInsertHeldOpenIsNotSkipped(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, false)
	rec := &recorder{name: "rec"}
	_, _ = h.start(h.config(), rec)

	tx, err := h.db.Pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	var raw int64
	require.NoError(t, tx.QueryRow(ctx, `INSERT INTO events (event_id, aggregate_type, aggregate_id, aggregate_version, event_type, payload)
		VALUES (gen_random_uuid(), 'raw', 'r1', 1, 'RawInserted', '\x7b7d') RETURNING global_position`).Scan(&raw))
	later := h.appendOne(ctx, "acct", "b", 2)
	h.waitHeld(raw)
	require.Empty(t, appliedPositions(t, h.db.Pool, "rec"))
	require.NoError(t, tx.Commit(ctx))
	h.waitFor("everything", func() bool { return len(appliedPositions(t, h.db.Pool, "rec")) == 3 })
	require.Equal(t, append([]int64{raw}, later.GlobalPositions()...), appliedPositions(t, h.db.Pool, "rec"))
}

// A long transaction that is not an appender (a report, a migration) does not hold projections
// back, even when it has an xid and wrote elsewhere.
func TestUnrelatedLongTransactionDoesNotHoldBack(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	_, err := h.db.Pool.Exec(ctx, `CREATE TABLE report (n int)`)
	require.NoError(t, err)
	tx, err := h.db.Pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	_, err = tx.Exec(ctx, `INSERT INTO report VALUES (1)`)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `SELECT count(*) FROM events`)
	require.NoError(t, err)

	rec := &recorder{name: "rec"}
	_, _ = h.start(h.config(), rec)
	var want []int64
	for i := 0; i < 5; i++ {
		want = append(want, h.appendOne(ctx, "acct", fmt.Sprint(i), 2).GlobalPositions()...)
	}
	// A rolled-back append in between: its hole must be passed while the report is still open.
	doomed, _ := h.openAppend(ctx, "acct", "doomed", 1)
	require.NoError(t, doomed.Rollback(ctx))
	want = append(want, h.appendOne(ctx, "acct", "last", 1).GlobalPositions()...)
	h.waitFor("all events while the report is open", func() bool {
		return len(appliedPositions(t, h.db.Pool, "rec")) == len(want)
	})
	require.Equal(t, want, appliedPositions(t, h.db.Pool, "rec"))
}

// An appender in another database of the same cluster (same table name, same lock key) does not
// hold a projection back: advisory locks are per database.
func TestAppenderInAnotherDatabaseDoesNotHoldBack(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	other := newHarness(t, false)
	otherTx, _ := other.openAppend(ctx, "acct", "elsewhere", 1) // holds position 1 over there

	h := newHarness(t, true)
	_, _ = h.start(h.config(), &recorder{name: "rec"})
	doomed, _ := h.openAppend(ctx, "acct", "doomed", 1) // position 1 here
	committed := h.appendOne(ctx, "acct", "ok", 2)
	require.NoError(t, doomed.Rollback(ctx))
	h.waitFor("the events after the hole, while the other database's appender is open", func() bool {
		return len(appliedPositions(t, h.db.Pool, "rec")) == 2
	})
	require.Equal(t, committed.GlobalPositions(), appliedPositions(t, h.db.Pool, "rec"))
	require.NoError(t, otherTx.Rollback(ctx))
}
