package main

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/eventstore/postgres"
	"github.com/eventline/eventline/internal/pgtest"
	"github.com/eventline/eventline/projector"
	"github.com/eventline/eventline/runner"
)

// startRunner runs a runner with one projection, "orders", on db until the test ends.
func startRunner(t *testing.T, db *pgtest.Database, store *postgres.Store) *runner.Runner {
	t.Helper()
	orders := projector.NewRouter("orders", projector.WithAggregateTypes("order"))
	projector.OnTx(orders, "Placed", func(context.Context, pgx.Tx, eventstore.PersistedEvent, struct{}) error { return nil })
	r, err := runner.New(db.Pool, store, runner.Config{Logger: zaptest.NewLogger(t), PollInterval: 50 * time.Millisecond,
		HeartbeatInterval: 50 * time.Millisecond, Lease: 2 * time.Second, NodeTimeout: time.Second})
	require.NoError(t, err)
	require.NoError(t, r.Register(orders))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	return r
}

// waitStatus reads status --json until ok accepts it.
func waitStatus(t *testing.T, url, what string, ok func(snapshot) bool) snapshot {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := cli(t, time.Time{}, "--database-url", url, "status", "--json")
		require.Equal(t, 0, r.code, r.stderr)
		var s snapshot
		require.NoError(t, jsonUnmarshal(r.stdout, &s))
		if ok(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("status never showed %s; last:\n%s", what, r.stdout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// What only the runner process knows (the appender it waits on, its horizon) shows in the status
// of another process: the runner publishes it with its heartbeat.
func TestStatusShowsLiveStatusOfRunners(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	db := pgtest.NewDatabase(t)
	store := postgres.NewStore(nil)
	r := startRunner(t, db, store)
	ev := func(id string) []eventstore.Event {
		return []eventstore.Event{{AggregateType: "order", AggregateID: id, EventType: "Placed", Payload: []byte(`{}`)}}
	}
	_, err := store.Append(ctx, db.Pool, eventstore.Any(), ev("o-1"))
	require.NoError(t, err)
	s := waitStatus(t, db.URL, "orders caught up at 1", func(s snapshot) bool {
		return len(s.Projections) == 1 && s.Projections[0].Position == 1 && len(s.Nodes) == 1 && s.Nodes[0].Horizon == 1
	})
	require.Equal(t, r.NodeID(), s.Projections[0].Owner)
	require.Equal(t, 1, s.Nodes[0].Owned)
	require.Nil(t, s.Projections[0].WaitingOn)

	// An appender keeps its transaction open at position 2; position 3 commits behind it.
	tx, err := db.Pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	var pid int
	require.NoError(t, tx.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid))
	open, err := store.Append(ctx, tx, eventstore.Any(), ev("o-2"))
	require.NoError(t, err)
	require.Equal(t, int64(2), open.LastPosition())
	_, err = store.Append(ctx, db.Pool, eventstore.Any(), ev("o-3"))
	require.NoError(t, err)

	s = waitStatus(t, db.URL, "orders waiting on the open appender", func(s snapshot) bool {
		return len(s.Projections) == 1 && s.Projections[0].WaitingOn != nil && s.Projections[0].WaitingOn.AppenderPID == pid
	})
	w := s.Projections[0].WaitingOn
	require.Equal(t, int64(2), w.Position)
	require.NotEmpty(t, w.Transaction)
	require.GreaterOrEqual(t, w.AgeSeconds, 0.0)
	require.Equal(t, int64(1), s.Nodes[0].Horizon)

	text := cli(t, time.Time{}, "--database-url", db.URL, "status")
	require.Equal(t, 0, text.code, text.stderr)
	require.Contains(t, text.stdout, fmt.Sprintf("orders: waiting at position 2: appender pid %d (transaction %s) open for ", pid, w.Transaction))

	// Once it commits, the unit catches up and waits on nothing.
	require.NoError(t, tx.Commit(ctx))
	waitStatus(t, db.URL, "orders caught up at 3", func(s snapshot) bool {
		return s.Projections[0].Position == 3 && s.Projections[0].WaitingOn == nil && s.Nodes[0].Horizon == 3
	})
}
