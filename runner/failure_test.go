package runner_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/runner"
)

// appendMany commits n single-event appends and returns their positions.
func (h *harness) appendMany(ctx context.Context, n int) []int64 {
	var out []int64
	for i := 0; i < n; i++ {
		out = append(out, h.appendOne(ctx, "acct", fmt.Sprint("a", i%4), 1).GlobalPositions()...)
	}
	return out
}

func TestHandlerFailureStopPolicy(t *testing.T) {
	t.Parallel()
	for _, panics := range []bool{false, true} {
		t.Run(fmt.Sprintf("panic=%v", panics), func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t)
			h := newHarness(t, true)
			positions := h.appendMany(ctx, 40)
			bad := positions[26]
			failing := &recorder{name: "failing", fail: func(ev eventstore.PersistedEvent) error {
				if ev.GlobalPosition == bad {
					if panics {
						panic("poison event")
					}
					return errBoom
				}
				return nil
			}}
			healthy := &recorder{name: "healthy"}
			cfg := h.config()
			cfg.BatchSize = 16
			r, _ := h.start(cfg, failing, healthy)

			h.waitFor("the healthy projection to finish and the failing one to stop", func() bool {
				return len(appliedPositions(t, h.db.Pool, "healthy")) == 40 &&
					stateOf(t, r, "failing").State == "stopped"
			})
			require.Equal(t, positions[:26], appliedPositions(t, h.db.Pool, "failing"), "stops at the event before the failing one")
			st := stateOf(t, r, "failing")
			require.Equal(t, bad-1, st.Position)
			require.Equal(t, bad, st.FailedPosition)
			if panics {
				require.Contains(t, st.LastError, "panicked: poison event")
			} else {
				require.Contains(t, st.LastError, "boom")
			}
			require.Equal(t, positions, appliedPositions(t, h.db.Pool, "healthy"), "one failing projection does not stop others")

			// Fixing the cause and resuming applies the rest.
			failing.fail = nil
			require.NoError(t, r.Resume(ctx, "failing"))
			h.waitFor("the resumed projection", func() bool { return len(appliedPositions(t, h.db.Pool, "failing")) == 40 })
			require.Equal(t, positions, appliedPositions(t, h.db.Pool, "failing"))
		})
	}
}

func TestHandlerFailureDeadLetterPolicy(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	positions := h.appendMany(ctx, 30)
	bad := map[int64]bool{positions[3]: true, positions[17]: true}
	rec := &recorder{name: "dl", fail: func(ev eventstore.PersistedEvent) error {
		if bad[ev.GlobalPosition] {
			return errBoom
		}
		return nil
	}}
	cfg := h.config()
	cfg.BatchSize = 8
	r, err := runner.New(h.db.Pool, h.store, cfg)
	require.NoError(t, err)
	require.NoError(t, r.Register(rec, runner.WithFailurePolicy(runner.DeadLetter), runner.WithSequencedDeadLetters(false)))
	h.run(r)
	h.waitFor("everything but the parked events", func() bool { return len(appliedPositions(t, h.db.Pool, "dl")) == 28 })
	var want []int64
	for _, p := range positions {
		if !bad[p] {
			want = append(want, p)
		}
	}
	require.Equal(t, want, appliedPositions(t, h.db.Pool, "dl"))
	dead, err := r.CheckpointsForTest().DeadLetters(ctx, h.db.Pool, "dl")
	require.NoError(t, err)
	require.Len(t, dead, 2)
	require.Equal(t, positions[3], dead[0].GlobalPosition)
	require.Equal(t, positions[17], dead[1].GlobalPosition)
	require.Contains(t, dead[0].Error, "boom")
	require.Equal(t, "running", stateOf(t, r, "dl").State)
}

// Transient errors (here a serialization failure raised by the handler's SQL) are retried as is:
// nothing is parked or skipped.
func TestTransientHandlerErrorIsRetried(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	positions := h.appendMany(ctx, 5)
	attempts := 0
	rec := &recorder{name: "flaky"}
	flaky := &txFailer{recorder: rec, failures: 3, attempts: &attempts}
	cfg := h.config()
	cfg.RetryMin, cfg.RetryMax = time.Millisecond, 5*time.Millisecond
	_, _ = h.start(cfg, flaky)
	h.waitFor("all events", func() bool { return len(appliedPositions(t, h.db.Pool, "flaky")) == 5 })
	require.Equal(t, positions, appliedPositions(t, h.db.Pool, "flaky"))
	require.GreaterOrEqual(t, attempts, 4)
}

type txFailer struct {
	*recorder
	failures int
	attempts *int
}

func (f *txFailer) Handle(ctx context.Context, tx pgx.Tx, events []eventstore.PersistedEvent) error {
	*f.attempts++
	if *f.attempts <= f.failures {
		_, err := tx.Exec(ctx, `DO $$ BEGIN RAISE EXCEPTION 'simulated' USING ERRCODE = 'serialization_failure'; END $$`)
		return err
	}
	return f.recorder.Handle(ctx, tx, events)
}

func stateOf(t *testing.T, r *runner.Runner, name string) runner.ProjectionStatus {
	t.Helper()
	sts, err := r.Status(context.Background())
	require.NoError(t, err)
	for _, st := range sts {
		if st.Name == name {
			return st
		}
	}
	t.Fatalf("no status for %q", name)
	return runner.ProjectionStatus{}
}
