package runner_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/internal/checkpoint"
	"github.com/eventline/eventline/projector"
	"github.com/eventline/eventline/runner"
)

// retries counts the Retrying hook's calls for one projection, and its delays.
type retries struct {
	name   string
	mu     sync.Mutex
	delays []time.Duration
	failed []int64 // positions the failure policy applied to
}

func (rs *retries) hooks(h *harness) runner.Hooks {
	return runner.JoinHooks(h.config().Hooks, runner.Hooks{
		Retrying: func(k runner.Unit, _ error, d time.Duration) {
			if k.Projection == rs.name {
				rs.mu.Lock()
				rs.delays = append(rs.delays, d)
				rs.mu.Unlock()
				h.signal()
			}
		},
		HandlerFailed: func(k runner.Unit, pos int64, _ error, _ runner.FailurePolicy) {
			if k.Projection == rs.name {
				rs.mu.Lock()
				rs.failed = append(rs.failed, pos)
				rs.mu.Unlock()
			}
		},
	})
}

func (rs *retries) get() ([]time.Duration, []int64) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return append([]time.Duration(nil), rs.delays...), append([]int64(nil), rs.failed...)
}

// A projection's handler marks an error transient: the event is tried again after a backoff that
// doubles, alone (the batch is split once, not at every attempt), and applied exactly once when
// the cause goes away; the events around it are applied once each, in order.
func TestTransientHandlerErrorRetriedThenApplied(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	positions := h.appendMany(ctx, 40)
	bad := positions[21]
	var badCalls atomic.Int64
	rec := &recorder{name: "flaky", fail: func(ev eventstore.PersistedEvent) error {
		if ev.GlobalPosition == bad && badCalls.Add(1) <= 7 {
			return projector.Transient(fmt.Errorf("downstream: 503 Service Unavailable"))
		}
		return nil
	}}
	rs := &retries{name: "flaky"}
	cfg := h.config()
	cfg.Hooks = rs.hooks(h)
	cfg.BatchSize = 16
	r, err := runner.New(h.db.Pool, h.store, cfg)
	require.NoError(t, err)
	require.NoError(t, r.Register(rec, runner.WithFailurePolicy(runner.DeadLetter),
		runner.WithRetry(runner.Retry{Attempts: 4, Min: time.Millisecond, Max: 3 * time.Millisecond})))
	h.run(r)
	h.waitFor("every event applied", func() bool { return len(appliedPositions(t, h.db.Pool, "flaky")) == 40 })
	require.Equal(t, positions, appliedPositions(t, h.db.Pool, "flaky"), "each event applied once, in order")
	delays, failed := rs.get()
	require.Equal(t, []time.Duration{time.Millisecond, 2 * time.Millisecond, 3 * time.Millisecond}, delays)
	require.Empty(t, failed)
	// The first attempt meets the event in its batch (16), then in halves of 8, 4, 2 and 1 (the
	// split); the retries hand it over alone; the fourth attempt succeeds.
	require.Equal(t, int64(5+3), badCalls.Load())
	dead, err := r.CheckpointsForTest().DeadLetters(ctx, h.db.Pool, "flaky")
	require.NoError(t, err)
	require.Empty(t, dead)
}

// An error that stays transient applies the failure policy after the last attempt; an error not
// marked transient applies it at once, without any retry.
func TestRetryAttemptsExhausted(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		transient bool
		policy    runner.FailurePolicy
	}{
		{"transient-deadletter", true, runner.DeadLetter},
		{"transient-stop", true, runner.Stop},
		{"permanent-deadletter", false, runner.DeadLetter},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t)
			h := newHarness(t, true)
			positions := h.appendMany(ctx, 10)
			bad := positions[4]
			rec := &recorder{name: "failing", fail: func(ev eventstore.PersistedEvent) error {
				if ev.GlobalPosition != bad {
					return nil
				}
				if tc.transient {
					return projector.Transient(errBoom)
				}
				return errBoom
			}}
			rs := &retries{name: "failing"}
			cfg := h.config()
			cfg.Hooks = rs.hooks(h)
			r, err := runner.New(h.db.Pool, h.store, cfg)
			require.NoError(t, err)
			require.NoError(t, r.Register(rec, runner.WithFailurePolicy(tc.policy),
				runner.WithRetry(runner.Retry{Attempts: 3, Min: time.Millisecond, Max: time.Millisecond})))
			h.run(r)
			h.waitFor("the policy to apply", func() bool { _, failed := rs.get(); return len(failed) == 1 })
			delays, failed := rs.get()
			require.Equal(t, []int64{bad}, failed)
			if tc.transient {
				require.Len(t, delays, 2, "3 attempts: 2 retries")
			} else {
				require.Empty(t, delays, "a permanent error is not retried")
			}
			if tc.policy == runner.Stop {
				require.Equal(t, positions[:4], appliedPositions(t, h.db.Pool, "failing"))
				st := stateOf(t, r, "failing")
				require.Equal(t, "stopped", st.State)
				require.Equal(t, bad, st.FailedPosition)
				require.Contains(t, st.LastError, "boom")
				return
			}
			// The later event of the same aggregate is parked behind it (sequenced dead letters).
			h.waitFor("the rest applied", func() bool { return len(appliedPositions(t, h.db.Pool, "failing")) == 8 })
			require.Equal(t, append(append([]int64(nil), positions[:4]...), positions[5], positions[6], positions[7], positions[9]),
				appliedPositions(t, h.db.Pool, "failing"))
			dead, err := r.CheckpointsForTest().DeadLetters(ctx, h.db.Pool, "failing")
			require.NoError(t, err)
			require.Len(t, dead, 2)
			require.Equal(t, []int64{bad, positions[8]}, []int64{dead[0].GlobalPosition, dead[1].GlobalPosition})
			require.Equal(t, bad, dead[1].BlockedBy)
		})
	}
}

// A detached handler whose downstream is briefly down (connection refused, then 503) is retried,
// not dead-lettered at its first attempt; its side effect happens once per event.
func TestDetachedDownstreamBrieflyDown(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	positions := h.appendMany(ctx, 6)

	var mu sync.Mutex
	received := map[string]int{}
	var unavailable atomic.Int64
	unavailable.Store(2)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if unavailable.Add(-1) >= 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		mu.Lock()
		received[req.URL.Query().Get("event")]++
		mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	// A closed port: the first calls are refused.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	down := "http://" + l.Addr().String()
	require.NoError(t, l.Close())
	var refusals atomic.Int64
	refusals.Store(2)

	hook := &webhook{url: func() string {
		if refusals.Add(-1) >= 0 {
			return down
		}
		return srv.URL
	}}
	rs := &retries{name: "webhook"}
	cfg := h.config()
	cfg.Hooks = rs.hooks(h)
	r, err := runner.New(h.db.Pool, h.store, cfg)
	require.NoError(t, err)
	require.NoError(t, r.RegisterDetached(hook, runner.WithFailurePolicy(runner.DeadLetter),
		runner.WithRetry(runner.Retry{Attempts: 5, Min: time.Millisecond, Max: 2 * time.Millisecond})))
	h.run(r)
	h.waitFor("every event delivered", func() bool {
		cp, err := r.CheckpointsForTest().Get(ctx, h.db.Pool, checkpoint.Key{Projection: "webhook", Version: 1})
		return err == nil && cp.Position == positions[5]
	})
	delays, failed := rs.get()
	require.Len(t, delays, 4, "2 refused, 2 unavailable")
	require.Empty(t, failed)
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, received, 6)
	for ev, n := range received {
		require.Equal(t, 1, n, "event %s delivered once", ev)
	}
	dead, err := r.CheckpointsForTest().DeadLetters(ctx, h.db.Pool, "webhook")
	require.NoError(t, err)
	require.Empty(t, dead)
}

// webhook is a detached handler that posts each event to a URL; a 5xx answer is transient.
type webhook struct{ url func() string }

func (w *webhook) Name() string { return "webhook" }
func (w *webhook) HandleEvent(ctx context.Context, ev eventstore.PersistedEvent) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.url()+"/?event="+ev.EventID.String(), nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err // connection refused: a network error, transient for a detached handler
	}
	resp.Body.Close()
	if resp.StatusCode >= 500 {
		return projector.Transient(fmt.Errorf("webhook: %s", resp.Status))
	}
	return nil
}

// A runner that stops while an event waits for its next attempt returns at once, without
// applying the policy; the wait does not hold other projections back.
func TestStopDuringRetryBackoff(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	positions := h.appendMany(ctx, 5)
	rec := &recorder{name: "waiting", fail: func(ev eventstore.PersistedEvent) error {
		if ev.GlobalPosition == positions[2] {
			return projector.Transient(errBoom)
		}
		return nil
	}}
	healthy := &recorder{name: "healthy"}
	rs := &retries{name: "waiting"}
	cfg := h.config()
	cfg.Hooks = rs.hooks(h)
	r, err := runner.New(h.db.Pool, h.store, cfg)
	require.NoError(t, err)
	require.NoError(t, r.Register(rec, runner.WithRetry(runner.Retry{Attempts: 10, Min: time.Hour})))
	require.NoError(t, r.Register(healthy))
	stop := h.run(r)
	h.waitFor("the first retry to wait and the other projection to finish", func() bool {
		delays, _ := rs.get()
		return len(delays) == 1 && len(appliedPositions(t, h.db.Pool, "healthy")) == 5
	})
	require.Equal(t, "running", stateOf(t, r, "waiting").State)
	require.Contains(t, stateOf(t, r, "waiting").LastError, "boom", "Status shows why it waits")
	start := time.Now()
	stop()
	require.Less(t, time.Since(start), 5*time.Second, "the backoff ends when the runner stops")
	require.Equal(t, positions[:2], appliedPositions(t, h.db.Pool, "waiting"))
	cp, err := r.CheckpointsForTest().Get(ctx, h.db.Pool, checkpoint.Key{Projection: "waiting", Version: 1})
	require.NoError(t, err)
	require.False(t, cp.Stopped())
	require.Equal(t, positions[1], cp.Position)
}

func TestRetryOptionValidated(t *testing.T) {
	t.Parallel()
	h := newHarness(t, false)
	r, err := runner.New(h.db.Pool, h.store, h.config())
	require.NoError(t, err)
	for _, bad := range []runner.Retry{{Attempts: -1}, {Min: -time.Second}, {Min: time.Second, Max: time.Millisecond}} {
		require.Error(t, r.Register(&recorder{name: "r"}, runner.WithRetry(bad)), "%+v", bad)
	}
	require.NoError(t, r.Register(&recorder{name: "r"}, runner.WithRetry(runner.Retry{Attempts: 1})))
}
