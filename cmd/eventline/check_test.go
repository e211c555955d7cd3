package main

import (
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline"
	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/eventstore/postgres"
	"github.com/eventline/eventline/internal/admin"
	"github.com/eventline/eventline/internal/checkpoint"
	"github.com/eventline/eventline/internal/lifecycle"
	"github.com/eventline/eventline/internal/pgtest"
)

// The fixture has every problem: dead letters (orders, search), a lag of 60s (orders), units
// without a live owner (an expired lease on search#1/2, none on the building search@3 nor on
// totals) and a stopped unit (totals). The paused mailer is no problem, owned or not.
func TestStatusCheckFixture(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	r := f.cli(t, "status", "--check", "--max-lag", "30s")
	require.Equal(t, exitCheck, r.code, "stderr: %s", r.stderr)
	require.Equal(t, "eventline: status --check: 7 problems\n", r.stderr)
	golden(t, "status_check", r.stdout)

	r = f.cli(t, "status", "--check", "--max-lag", "30s", "--json")
	require.Equal(t, exitCheck, r.code)
	var out struct {
		OK       bool            `json:"ok"`
		Problems []admin.Problem `json:"problems"`
	}
	require.NoError(t, jsonUnmarshal(r.stdout, &out))
	require.False(t, out.OK)
	var kinds []string
	for _, p := range out.Problems {
		kinds = append(kinds, p.Projection+" "+p.Kind)
	}
	require.Equal(t, []string{"orders dead_letters", "search dead_letters", "orders lag", "search no_owner",
		"search no_owner", "totals stopped", "totals no_owner"}, kinds)

	// Without a bound, lag is no problem.
	r = f.cli(t, "status", "--check")
	require.Equal(t, exitCheck, r.code)
	require.NotContains(t, r.stdout, "lags")
}

// Each condition alone fails the check, and the check passes again once it is gone.
func TestStatusCheckConditions(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	db := pgtest.NewDatabase(t)
	now := time.Now().UTC().Truncate(time.Second)
	cps, err := checkpoint.New(eventline.Names{})
	require.NoError(t, err)
	lc := newLifecycle(t)
	key := checkpoint.Key{Projection: "orders", Version: 1, Partitions: 1}
	require.NoError(t, pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		_, err := lc.Deploy(ctx, tx, "orders", lifecycle.Code{Layout: lifecycle.Layout{Version: 1, Partitions: 1}}, []int{1}, nil)
		return err
	}))
	check := func(t *testing.T, args ...string) result {
		t.Helper()
		return cli(t, now, append([]string{"--database-url", db.URL, "status", "--check"}, args...)...)
	}
	requireProblem := func(t *testing.T, r result, line string) {
		t.Helper()
		require.Equal(t, exitCheck, r.code, "stdout: %s\nstderr: %s", r.stdout, r.stderr)
		require.Equal(t, line+"\n", r.stdout)
		require.Equal(t, "eventline: status --check: 1 problem\n", r.stderr)
	}
	requireOK := func(t *testing.T, r result) {
		t.Helper()
		require.Equal(t, 0, r.code, "stdout: %s\nstderr: %s", r.stdout, r.stderr)
		require.Equal(t, "ok: 1 checkpoint of 1 projection, 0 live runners\n", r.stdout)
	}

	// No live owner: nobody ever claimed it, then a lease that ran out.
	requireProblem(t, check(t), "orders: no live owner (no runner process holds a lease on it)")
	claim(t, cps, db.Pool, key, "node-a")
	requireOK(t, check(t))
	_, err = db.Pool.Exec(ctx, `UPDATE eventline_checkpoints SET lease_until = '2026-01-02T03:04:05Z'`)
	require.NoError(t, err)
	requireProblem(t, check(t), "orders: no live owner (the lease of node-a ran out)")
	claim(t, cps, db.Pool, key, "node-a")

	// Lag: an event committed 90s ago that the projection has not applied.
	ev := eventstore.Event{AggregateType: "order", AggregateID: "o-1", EventType: "Placed", Payload: []byte(`{}`),
		CreatedAt: now.Add(-90 * time.Second)}
	_, err = postgres.NewStore(nil).Append(ctx, db.Pool, eventstore.Any(), []eventstore.Event{ev})
	require.NoError(t, err)
	requireOK(t, check(t)) // no bound given
	requireProblem(t, check(t, "--max-lag", "1m"), "orders: lags 90.0s behind (bound 1m0s): at 0, head 1")
	requireOK(t, check(t, "--max-lag", "2m"))
	ev.CreatedAt = now
	_, err = postgres.NewStore(nil).Append(ctx, db.Pool, eventstore.Any(), []eventstore.Event{ev})
	require.NoError(t, err)
	requireProblem(t, check(t, "--max-lag-events", "1"), "orders: lags 2 positions behind (bound 1): at 0, head 2")
	_, err = db.Pool.Exec(ctx, `UPDATE eventline_checkpoints SET position = 2`)
	require.NoError(t, err)
	requireOK(t, check(t, "--max-lag", "1s", "--max-lag-events", "1"))

	// Stopped by a handler failure, until resumed.
	require.NoError(t, pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error { return cps.Stop(ctx, tx, key, 2, 2, 3, "boom") }))
	requireProblem(t, check(t), "orders: stopped at position 3: boom")
	r := cli(t, now, "--database-url", db.URL, "resume", "orders")
	require.Equal(t, 0, r.code, r.stderr)
	requireOK(t, check(t))

	// Dead letters, until discarded.
	var id int64
	require.NoError(t, pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		pe := eventstore.PersistedEvent{Event: ev, GlobalPosition: 2}
		if err := cps.Park(ctx, tx, key, &pe, "boom", 0); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `SELECT id FROM eventline_dead_letters`).Scan(&id)
	}))
	requireProblem(t, check(t), "orders: 1 dead letter (eventline dead-letters list)")
	r = cli(t, now, "--database-url", db.URL, "dead-letters", "discard", strconv.FormatInt(id, 10))
	require.Equal(t, 0, r.code, r.stderr)
	requireOK(t, check(t))
}
