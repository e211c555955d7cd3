package runner_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/internal/horizon"
	"github.com/eventline/eventline/runner"
)

// blocker is a projection whose Handle waits until released, so a test can stop the runner
// while a batch is in flight.
type blocker struct {
	*recorder
	entered chan struct{}
	release chan struct{}
	once    sync.Once
}

func (b *blocker) Handle(ctx context.Context, tx pgx.Tx, events []eventstore.PersistedEvent) error {
	b.once.Do(func() { close(b.entered) })
	select {
	case <-b.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	return b.recorder.Handle(ctx, tx, events)
}

// Shutdown in the middle of a batch lets it finish within the timeout (G8), or rolls it back
// after the timeout; either way a restart resumes without loss or repeat.
func TestShutdownMidBatch(t *testing.T) {
	t.Parallel()
	for _, finish := range []bool{true, false} {
		t.Run(fmt.Sprintf("finishes=%v", finish), func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t)
			h := newHarness(t, true)
			positions := h.appendMany(ctx, 10)
			b := &blocker{recorder: &recorder{name: "rec"}, entered: make(chan struct{}), release: make(chan struct{})}
			cfg := h.config()
			cfg.BatchSize = 2 // the events left after the batch in flight are not handled once shutdown began
			cfg.ShutdownTimeout = 200 * time.Millisecond
			if finish {
				cfg.ShutdownTimeout = waitTimeout
			}
			_, stop := h.start(cfg, b)
			<-b.entered
			stopped := make(chan struct{})
			go func() { stop(); close(stopped) }()
			waitStopped := func() {
				select {
				case <-stopped:
				case <-ctx.Done():
					t.Fatal("Run did not return after the batch in flight ended")
				}
			}
			if finish {
				close(b.release)
				waitStopped()
				require.Equal(t, positions[:2], appliedPositions(t, h.db.Pool, "rec"), "the batch in flight committed, and no batch began after it")
			} else {
				waitStopped() // the timeout cancelled the handler's context
				require.Empty(t, appliedPositions(t, h.db.Pool, "rec"), "the batch in flight rolled back")
				close(b.release)
			}
			// Restart: everything exactly once.
			_, _ = h.start(h.config(), &recorder{name: "rec"})
			h.waitFor("restart caught up", func() bool { return len(appliedPositions(t, h.db.Pool, "rec")) >= len(positions) })
			require.Equal(t, positions, appliedPositions(t, h.db.Pool, "rec"))
		})
	}
}

// The listener's connection is killed while events arrive: it reconnects, re-checks, and nothing
// is missed. Polling and horizon ticks are made too slow to help, and the reconnect delay long
// enough that the events commit while no LISTEN is in place, so only the re-check after the
// reconnect can find them (the test checks that order).
func TestListenerConnectionKilled(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	pids := make(chan uint32, 10)
	cfg := h.config()
	cfg.PollInterval = time.Hour
	cfg.HorizonInterval = time.Hour
	cfg.ReconnectDelay = time.Second
	var connectedAt sync.Map // pid -> time
	cfg.Hooks.ListenerConnected = func(pid uint32) {
		connectedAt.Store(pid, time.Now())
		pids <- pid
	}
	_, _ = h.start(cfg, &recorder{name: "rec"})
	first := <-pids

	var want []int64
	want = append(want, h.appendMany(ctx, 5)...)
	h.waitFor("first events", func() bool { return len(appliedPositions(t, h.db.Pool, "rec")) == 5 })

	var killed bool
	require.NoError(t, h.db.Pool.QueryRow(ctx, `SELECT pg_terminate_backend($1)`, first).Scan(&killed))
	require.True(t, killed)
	// Events committed while the listener is down are found by the re-check after reconnecting.
	want = append(want, h.appendMany(ctx, 5)...)
	committedAt := time.Now()
	select {
	case second := <-pids:
		require.NotEqual(t, first, second)
		at, _ := connectedAt.Load(second)
		require.True(t, at.(time.Time).After(committedAt), "the events must commit before the listener is back")
	case <-time.After(waitTimeout):
		t.Fatal("listener did not reconnect")
	}
	h.waitFor("the events committed while the listener was down", func() bool {
		return len(appliedPositions(t, h.db.Pool, "rec")) == len(want)
	})
	want = append(want, h.appendMany(ctx, 5)...)
	h.waitFor("all events", func() bool { return len(appliedPositions(t, h.db.Pool, "rec")) == len(want) })
	require.Equal(t, want, appliedPositions(t, h.db.Pool, "rec"))
}

// Run refuses an events table without the append lock trigger or with a cached sequence.
func TestStartupChecks(t *testing.T) {
	t.Parallel()
	for name, breakIt := range map[string]string{
		"no trigger":       `DROP TRIGGER eventline_append_lock ON events`,
		"disabled trigger": `ALTER TABLE events DISABLE TRIGGER eventline_append_lock`,
		"sequence cache":   `ALTER TABLE events ALTER COLUMN global_position SET CACHE 20`,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t)
			h := newHarness(t, false)
			_, err := h.db.Pool.Exec(ctx, breakIt)
			require.NoError(t, err)
			r, err := runner.New(h.db.Pool, h.store, h.config())
			require.NoError(t, err)
			require.NoError(t, r.Register(&recorder{name: "rec"}))
			err = r.Run(ctx)
			require.ErrorIs(t, err, horizon.ErrNotSafe)
		})
	}
}

func TestRegisterErrors(t *testing.T) {
	t.Parallel()
	h := newHarness(t, false)
	r, err := runner.New(h.db.Pool, h.store, h.config())
	require.NoError(t, err)
	require.NoError(t, r.Register(&recorder{name: "a"}))
	require.ErrorIs(t, r.Register(&recorder{name: "a"}), runner.ErrDuplicateName)
	require.Error(t, r.Register(&recorder{name: ""}))
	_, err = runner.New(h.db.Pool, h.store, runner.Config{BatchSize: -1})
	require.ErrorContains(t, err, "BatchSize")
}

func TestRebuild(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	positions := h.appendMany(ctx, 12)
	r, _ := h.start(h.config(), &recorder{name: "rec"})
	h.waitFor("caught up", func() bool { return len(appliedPositions(t, h.db.Pool, "rec")) == 12 })
	require.NoError(t, r.Rebuild(ctx, "rec"))
	h.waitFor("rebuilt", func() bool {
		return stateOf(t, r, "rec").Position == positions[11] && len(appliedPositions(t, h.db.Pool, "rec")) == 12
	})
	require.Equal(t, positions, appliedPositions(t, h.db.Pool, "rec"))
	require.ErrorIs(t, r.Rebuild(ctx, "nope"), runner.ErrUnknownProjection)
}

// Status says what a projection held at a hole waits on.
func TestStatusShowsWhatItWaitsOn(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	r, _ := h.start(h.config(), &recorder{name: "rec"})
	tx, open := h.openAppend(ctx, "acct", "slow", 1)
	var pid int
	require.NoError(t, tx.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid))
	h.appendOne(ctx, "acct", "fast", 1)
	h.waitHeld(open.LastPosition())
	h.waitFor("status to name the appender", func() bool {
		// The tracker reports what its latest tick saw; the fast appender may still be in it.
		return strings.Contains(stateOf(t, r, "rec").WaitingOn, fmt.Sprintf("appender pid %d", pid))
	})
	st := stateOf(t, r, "rec")
	require.Contains(t, st.WaitingOn, fmt.Sprintf("appender pid %d", pid))
	require.Equal(t, int64(2), st.Head)
	require.Equal(t, int64(0), st.Position)
	require.Equal(t, int64(2), st.LagEvents)
	require.Greater(t, st.LagSeconds, 0.0)
	require.NoError(t, tx.Commit(ctx))
	h.waitFor("caught up", func() bool { return stateOf(t, r, "rec").Position == 2 })
	st = stateOf(t, r, "rec")
	require.Empty(t, st.WaitingOn)
	require.Zero(t, st.LagEvents)
}
