package runner_test

import (
	"context"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/internal/checkpoint"
	"github.com/eventline/eventline/runner"
)

// mailer is a detached handler that records what it "sent".
type mailer struct {
	version int
	mu      sync.Mutex
	sent    []int64
}

func (m *mailer) Name() string { return "mailer" }
func (m *mailer) Version() int { return m.version }
func (m *mailer) HandleEvent(_ context.Context, ev eventstore.PersistedEvent) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sent = append(m.sent, ev.GlobalPosition)
	return nil
}

func (m *mailer) positions() []int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]int64(nil), m.sent...)
}

// A detached handler sees every event at least once; a new version of it does not fire again for
// the history, unless registered with WithReplayHistory (docs/design.md, "Guarantees", G4).
func TestDetachedNewVersionDoesNotReplayHistory(t *testing.T) {
	t.Parallel()
	for _, replay := range []bool{false, true} {
		t.Run(map[bool]string{false: "default", true: "replay"}[replay], func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t)
			h := newHarness(t, true)
			history := h.appendMany(ctx, 5)
			v1 := &mailer{version: 1}
			r1, err := runner.New(h.db.Pool, h.store, h.config())
			require.NoError(t, err)
			require.NoError(t, r1.RegisterDetached(v1))
			stop1 := h.run(r1)
			h.waitFor("v1 to send the history", func() bool { return len(v1.positions()) == 5 })
			require.Equal(t, history, v1.positions())
			stop1()

			v2 := &mailer{version: 2}
			r2, err := runner.New(h.db.Pool, h.store, h.config())
			require.NoError(t, err)
			var opts []runner.Option
			if replay {
				opts = append(opts, runner.WithReplayHistory())
			}
			require.NoError(t, r2.RegisterDetached(v2, opts...))
			h.run(r2)
			more := h.appendMany(ctx, 3)
			h.waitFor("v2 to take over and send the new events", func() bool {
				cp, err := r2.CheckpointsForTest().Get(ctx, h.db.Pool, checkpoint.Key{Projection: "mailer", Version: 2})
				return err == nil && h.record("mailer").Active.Version == 2 && cp.Position >= more[2]
			})
			if replay {
				require.Equal(t, append(history, more...), v2.positions())
			} else {
				require.Equal(t, more, v2.positions(), "no history sent again")
			}
			require.ErrorIs(t, r2.Rebuild(ctx, "mailer"), runner.ErrDetachedRebuild)
		})
	}
}
