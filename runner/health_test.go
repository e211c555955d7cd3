package runner_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/runner"
)

// probe GETs path from h and returns the status code and body.
func probe(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	body, err := io.ReadAll(rec.Result().Body)
	require.NoError(t, err)
	return rec.Code, string(body)
}

// healthConfig heartbeats often, with a Lease (the bound of Health) long enough that a loaded
// machine does not make a heartbeat late by accident.
func healthConfig(h *harness) runner.Config {
	cfg := h.config()
	cfg.HeartbeatInterval, cfg.Lease, cfg.NodeTimeout = 50*time.Millisecond, 2*time.Second, time.Second
	return cfg
}

// Liveness follows Run and its heartbeat; readiness also the lag of the units this process runs.
func TestHealthAndReadiness(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	old := time.Now().Add(-time.Hour)
	failing := &recorder{name: "failing", fail: func(ev eventstore.PersistedEvent) error {
		if ev.AggregateID == "poison" {
			return errBoom
		}
		return nil
	}}
	r, err := runner.New(h.db.Pool, h.store, healthConfig(h))
	require.NoError(t, err)
	require.NoError(t, r.Register(failing))
	handler := r.HealthHandler(time.Minute)

	// Before Run: starting, so neither live nor ready.
	require.ErrorIs(t, r.Health(ctx), runner.ErrNotLive)
	require.ErrorContains(t, r.Health(ctx), "starting")
	code, body := probe(t, handler, "/livez")
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Equal(t, "runner: not live: starting\n", body)
	code, _ = probe(t, handler, "/readyz")
	require.Equal(t, http.StatusServiceUnavailable, code)

	stop := h.run(r)
	h.appendOne(ctx, "acct", "a", 3)
	h.waitFor("live and ready", func() bool {
		return r.Health(ctx) == nil && r.Ready(ctx, time.Minute) == nil && len(appliedPositions(t, h.db.Pool, "failing")) == 3
	})
	code, body = probe(t, handler, "/livez")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "ok\n", body)
	code, body = probe(t, handler, "/some/prefix/readyz")
	require.Equal(t, http.StatusOK, code, body)
	code, _ = probe(t, handler, "/healthz")
	require.Equal(t, http.StatusNotFound, code)

	// An event committed an hour ago stops the projection: it lags an hour, so the process is
	// not ready (it stays live); a bound of 0 only asks for liveness.
	_, err = h.store.Append(ctx, h.db.Pool, eventstore.Any(), []eventstore.Event{{AggregateType: "acct", AggregateID: "poison",
		EventType: "Happened", Payload: []byte(`{}`), CreatedAt: old}})
	require.NoError(t, err)
	h.waitFor("not ready", func() bool { return r.Ready(ctx, time.Minute) != nil })
	err = r.Ready(ctx, time.Minute)
	require.ErrorIs(t, err, runner.ErrNotReady)
	require.Regexp(t, `^runner: not ready: failing lags 1h0m0\.\d+s \(at 3\) \(bound 1m0s\)$`, err.Error())
	require.NoError(t, r.Health(ctx))
	require.NoError(t, r.Ready(ctx, 0))
	require.NoError(t, r.Ready(ctx, 2*time.Hour))
	code, body = probe(t, handler, "/readyz")
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Contains(t, body, "failing lags 1h0m")

	// A heartbeat that cannot be written (the nodes table locked) for longer than Lease: not live.
	tx, err := h.db.Pool.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `LOCK TABLE eventline_nodes IN ACCESS EXCLUSIVE MODE`)
	require.NoError(t, err)
	h.waitFor("not live", func() bool { return r.Health(ctx) != nil })
	require.ErrorIs(t, r.Health(ctx), runner.ErrNotLive)
	require.ErrorContains(t, r.Health(ctx), "last heartbeat")
	code, body = probe(t, handler, "/livez")
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Contains(t, body, "runner: not live: last heartbeat ")
	require.NoError(t, tx.Rollback(ctx))
	h.waitFor("live again", func() bool { return r.Health(ctx) == nil })

	// After Run: stopped.
	stop()
	require.ErrorContains(t, r.Health(context.Background()), "runner: not live: stopped")
}

// With BatchTimeout, a handler still running BatchTimeout + ShutdownGrace after its batch began
// ignores its context: the process is not live (a restart frees the unit), until it returns.
func TestHealthNamesAHandlerThatIgnoresItsContext(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	hung := &hangingProj{name: "hung", release: make(chan struct{}), entered: make(chan struct{})}
	hung.hang.Store(true)
	cfg := healthConfig(h)
	cfg.BatchTimeout, cfg.ShutdownGrace = 200*time.Millisecond, 100*time.Millisecond
	r, _ := h.start(cfg, hung)
	h.waitFor("live", func() bool { return r.Health(ctx) == nil })
	h.appendOne(ctx, "acct", "a", 1)
	<-hung.entered
	h.waitFor("not live", func() bool { return r.Health(ctx) != nil })
	err := r.Health(ctx)
	require.ErrorIs(t, err, runner.ErrNotLive)
	require.Regexp(t, `^runner: not live: hung: a batch running for \d+(\.\d+)?m?s \(BatchTimeout 200ms\): its handler ignores its context$`, err.Error())

	close(hung.release)
	h.waitFor("live again, the event applied", func() bool {
		return r.Health(ctx) == nil && len(appliedPositions(t, h.db.Pool, "hung")) == 1
	})
}

// A process that runs only subscriptions (no projection registered) heartbeats like any other:
// it is live and listed, with an empty list of projections.
func TestSubscriptionOnlyProcessIsLive(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	r, _ := h.start(healthConfig(h))
	s := h.subscribe(ctx, r, runner.FromBeginning())
	pos := h.appendOne(ctx, "acct", "a", 1).GlobalPositions()
	s.waitCount(1)
	require.Equal(t, pos, s.positions())
	h.waitFor("live", func() bool { return r.Health(ctx) == nil })
	var projections []string
	require.NoError(t, h.db.Pool.QueryRow(ctx, `SELECT projections FROM eventline_nodes`).Scan(&projections))
	require.Empty(t, projections)
}
