package runner_test

import (
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/checkpoint"
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
	cps := r.Checkpoints()
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
	_, err = cps.SetState(ctx, h.db.Pool, "ops", checkpoint.Paused)
	require.NoError(t, err)
	h.waitFor("the runner to see the pause", func() bool { return stateOf(t, r, "ops").State == checkpoint.Paused })
	more := h.appendMany(ctx, 2)
	_, err = cps.SetState(ctx, h.db.Pool, "ops", checkpoint.Running)
	require.NoError(t, err)
	h.waitFor("the events appended while paused", func() bool { return len(appliedPositions(t, h.db.Pool, "ops")) == 8 })

	// Rebuild: the read model is emptied and replayed from position 0.
	_, err = cps.RequestRebuild(ctx, h.db.Pool, "ops")
	require.NoError(t, err)
	want := append(append([]int64(nil), positions...), more...)
	h.waitFor("the rebuild", func() bool {
		got := appliedPositions(t, h.db.Pool, "ops")
		cp, err := cps.Get(ctx, h.db.Pool, checkpoint.Key{Projection: "ops"})
		require.NoError(t, err)
		return !cp.RebuildRequested && len(got) == len(want) && got[0] == want[0] && got[2] == want[2]
	})
	require.Equal(t, want, appliedPositions(t, h.db.Pool, "ops"), "replayed in order after the reset")
}
