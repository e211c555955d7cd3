package runner_test

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/runner"
)

// What the CLI asks for through the database (pause, resume, rebuild, retry a dead letter) is
// carried out by the runner that owns the projection.
func TestOperatorRequests(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	positions := h.appendMany(ctx, 6)
	var broken atomic.Bool
	broken.Store(true)
	rec := &recorder{name: "ops", fail: func(ev eventstore.PersistedEvent) error {
		if broken.Load() && ev.GlobalPosition == positions[2] {
			return errBoom
		}
		return nil
	}}
	r, err := runner.New(h.db.Pool, h.store, h.config())
	require.NoError(t, err)
	require.NoError(t, r.Register(rec, runner.WithFailurePolicy(runner.DeadLetter)))
	h.run(r)
	cps := r.CheckpointsForTest()
	h.waitFor("all but the parked event", func() bool { return len(appliedPositions(t, h.db.Pool, "ops")) == 5 })

	// Retry the dead letter once the cause is fixed.
	broken.Store(false)
	dead, err := cps.DeadLetters(ctx, h.db.Pool, "ops")
	require.NoError(t, err)
	require.Len(t, dead, 1)
	require.NoError(t, cps.RequestRetry(ctx, h.db.Pool, dead[0].ID))
	h.waitFor("the retried event", func() bool { return len(appliedPositions(t, h.db.Pool, "ops")) == 6 })
	dead, err = cps.DeadLetters(ctx, h.db.Pool, "ops")
	require.NoError(t, err)
	require.Empty(t, dead)

	// Pause, then resume: the events appended meanwhile are applied after the resume. (That a
	// paused checkpoint cannot move is checked in package checkpoint.)
	h.inTx(func(tx pgx.Tx) error { return h.lc().Pause(ctx, tx, "ops") })
	h.waitFor("the runner to see the pause", func() bool { return stateOf(t, r, "ops").State == "paused" })
	more := h.appendMany(ctx, 2)
	h.inTx(func(tx pgx.Tx) error { return h.lc().Resume(ctx, tx, "ops") })
	h.waitFor("the events appended while paused", func() bool { return len(appliedPositions(t, h.db.Pool, "ops")) == 8 })

	// Rebuild: the read model is emptied and replayed from position 0.
	h.inTx(func(tx pgx.Tx) error { return h.lc().RequestRebuild(ctx, tx, "ops") })
	want := append(append([]int64(nil), positions...), more...)
	h.waitFor("the rebuild", func() bool {
		got := appliedPositions(t, h.db.Pool, "ops")
		return !h.record("ops").RebuildPending() && len(got) == len(want) && got[0] == want[0] && got[2] == want[2]
	})
	require.Equal(t, want, appliedPositions(t, h.db.Pool, "ops"), "replayed in order after the reset")
}

// Without sequencing, dead letters of one aggregate are independent: a retry runs that one event
// only, so the retry of another dead letter of the aggregate, requested too, is not withdrawn when
// the first fails again; it is carried out.
func TestRetryUnsequencedDeadLettersOfOneAggregate(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	positions := h.appendMany(ctx, 8) // positions[1] and positions[5] are both of aggregate a1
	var fixed atomic.Bool
	rec := &recorder{name: "unseq", fail: func(ev eventstore.PersistedEvent) error {
		if ev.GlobalPosition == positions[1] || (ev.GlobalPosition == positions[5] && !fixed.Load()) {
			return errBoom
		}
		return nil
	}}
	r, err := runner.New(h.db.Pool, h.store, h.config())
	require.NoError(t, err)
	require.NoError(t, r.Register(rec, runner.WithFailurePolicy(runner.DeadLetter), runner.WithSequencedDeadLetters(false)))
	h.run(r)
	cps := r.CheckpointsForTest()
	h.waitFor("all but the two parked events", func() bool { return len(appliedPositions(t, h.db.Pool, "unseq")) == 6 })
	dead, err := cps.DeadLetters(ctx, h.db.Pool, "unseq")
	require.NoError(t, err)
	require.Len(t, dead, 2)
	require.Equal(t, []int64{positions[1], positions[5]}, []int64{dead[0].GlobalPosition, dead[1].GlobalPosition})

	// The cause of the second is fixed, not the first's; the operator retries both.
	fixed.Store(true)
	require.NoError(t, pgx.BeginFunc(ctx, h.db.Pool, func(tx pgx.Tx) error {
		for _, d := range dead {
			if err := cps.RequestRetry(ctx, tx, d.ID); err != nil {
				return err
			}
		}
		return nil
	}))
	h.waitFor("the first to fail again", func() bool {
		dls, err := cps.DeadLetters(ctx, h.db.Pool, "unseq")
		require.NoError(t, err)
		return len(dls) > 0 && dls[0].Attempts == 2
	})
	dls, err := cps.DeadLetters(ctx, h.db.Pool, "unseq")
	require.NoError(t, err)
	if len(dls) == 2 {
		require.True(t, dls[1].RetryRequested, "the retry of dead letter %d was withdrawn by the failure of %d", dls[1].ID, dls[0].ID)
	}
	h.waitFor("the second to be applied", func() bool { return len(appliedPositions(t, h.db.Pool, "unseq")) == 7 })
	dls, err = cps.DeadLetters(ctx, h.db.Pool, "unseq")
	require.NoError(t, err)
	require.Len(t, dls, 1)
	require.Equal(t, positions[1], dls[0].GlobalPosition)
	require.False(t, dls[0].RetryRequested, "a failed retry waits for a new request")
}

// A unit that always has work still re-reads its dead letters every PollInterval: an operator's
// retry is carried out while the backlog is being applied, not once it is done.
func TestRetryReachesABusyUnit(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	positions := h.appendMany(ctx, 300)
	var fixed atomic.Bool
	rec := &recorder{name: "busy", fail: func(ev eventstore.PersistedEvent) error {
		if ev.GlobalPosition == positions[0] && !fixed.Load() {
			return errBoom
		}
		time.Sleep(2 * time.Millisecond) // a slow handler: the backlog keeps the unit busy for over half a second
		return nil
	}}
	cfg := h.config()
	cfg.BatchSize = 1
	cfg.PollInterval = 50 * time.Millisecond
	r, err := runner.New(h.db.Pool, h.store, cfg)
	require.NoError(t, err)
	require.NoError(t, r.Register(rec, runner.WithFailurePolicy(runner.DeadLetter), runner.WithSequencedDeadLetters(false)))
	h.run(r)
	cps := r.CheckpointsForTest()
	var id int64
	h.waitFor("the parked event", func() bool {
		dls, err := cps.DeadLetters(ctx, h.db.Pool, "busy")
		require.NoError(t, err)
		if len(dls) == 1 {
			id = dls[0].ID
		}
		return id != 0
	})
	fixed.Store(true)
	require.NoError(t, cps.RequestRetry(ctx, h.db.Pool, id))
	h.waitFor("the retry", func() bool {
		dls, err := cps.DeadLetters(ctx, h.db.Pool, "busy")
		require.NoError(t, err)
		return len(dls) == 0
	})
	require.Less(t, stateOf(t, r, "busy").Position, positions[len(positions)-1], "the retry waited for the backlog to be applied")
	h.waitFor("the backlog", func() bool { return len(appliedPositions(t, h.db.Pool, "busy")) == len(positions) })
}
