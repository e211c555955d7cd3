package runner_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline"
	"github.com/eventline/eventline/eventstore/postgres"
	"github.com/eventline/eventline/internal/pgtest"
	"github.com/eventline/eventline/migrations"
	"github.com/eventline/eventline/runner"
)

// One eventline.Names names every table and channel: the runner and the waiter take them from
// the store, so that they cannot disagree with it. With every name changed from its default, a
// projection runs, its checkpoint is in the configured table, a waiter wakes on the configured
// progress channel, and none of the default tables exists.
func TestRunnerAndWaiterTakeTheStoresNames(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	db := pgtest.NewEmptyDatabase(t)
	_, err := db.Pool.Exec(ctx, `CREATE SCHEMA ledger`)
	require.NoError(t, err)
	names := eventline.Names{
		EventsTable: "ledger.entries", AggregateHeadsTable: "ledger.heads", CheckpointsTable: "ledger.cps",
		DeadLettersTable: "ledger.parked", NodesTable: "ledger.procs", ProjectionsTable: "ledger.projs",
		MigrationsTable: "ledger.migs", NotifyChannel: "ledger_new", ControlChannel: "ledger_control",
		ProgressChannel: "ledger_progress",
	}
	_, err = migrations.Apply(ctx, db.Pool, names)
	require.NoError(t, err)
	require.NoError(t, createApplied(ctx, db.Pool))
	store, err := postgres.New(postgres.StoreConfig{Names: names})
	require.NoError(t, err)
	require.Equal(t, names, store.Names(), "every name set: nothing defaulted")
	h := &harness{t: t, db: db, store: store, changed: make(chan struct{}), held: map[int64]bool{}}

	r, _ := h.startProc(h.fastConfig(), &recorder{name: "ledger"})
	w, err := runner.NewWaiter(db.Pool, store, runner.WaiterConfig{})
	require.NoError(t, err)
	wctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = w.Run(wctx) }()
	t.Cleanup(func() { cancel(); wg.Wait() })
	h.waitFor("the waiter to run", func() bool {
		return !errors.Is(w.Wait(ctx, "ledger", 0, ""), runner.ErrWaiterNotRunning)
	})

	res := h.appendOne(ctx, "acct", "a1", 3)
	dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
	defer dcancel()
	require.NoError(t, w.Wait(dctx, "ledger", res.LastPosition(), "a1"), "the waiter reads ledger.cps and ledger.projs")
	require.NoError(t, r.WaitApplied(dctx, "ledger", res.LastPosition(), "a1"))
	require.True(t, slices.Contains(appliedPositions(t, db.Pool, "ledger"), res.LastPosition()))

	var pos int64
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT position FROM ledger.cps WHERE projection = 'ledger'`).Scan(&pos))
	require.Equal(t, res.LastPosition(), pos)
	var nodes int
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT count(*) FROM ledger.procs`).Scan(&nodes))
	require.Equal(t, 1, nodes)
	for _, def := range []string{eventline.EventsTableDefault, eventline.AggregateHeadsTableDefault, eventline.CheckpointsTableDefault,
		eventline.DeadLettersTableDefault, eventline.NodesTableDefault, eventline.ProjectionsTableDefault, eventline.MigrationsTableDefault} {
		var exists bool
		require.NoError(t, db.Pool.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, def).Scan(&exists))
		require.False(t, exists, "default table %s was created or used", def)
	}
}

// A runner or waiter cannot be given names of its own: it has no field for them, and a store
// with invalid names is refused when it is built, before any runner sees it.
func TestInvalidNamesFailAtConstruction(t *testing.T) {
	t.Parallel()
	_, err := postgres.New(postgres.StoreConfig{Names: eventline.Names{ProgressChannel: "bad channel"}})
	require.ErrorIs(t, err, eventline.ErrInvalidName)
	require.ErrorContains(t, err, "ProgressChannel")
	_, err = postgres.New(postgres.StoreConfig{Names: eventline.Names{ControlChannel: "same", ProgressChannel: "same"}})
	require.ErrorIs(t, err, eventline.ErrInvalidName)
	require.ErrorContains(t, err, "ControlChannel and ProgressChannel")
	_, err = runner.New(nil, nil, runner.Config{})
	require.Error(t, err)
	_, err = runner.NewWaiter(nil, postgres.NewStore(nil), runner.WaiterConfig{})
	require.Error(t, err)
}
