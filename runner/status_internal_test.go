package runner

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/eventstore/postgres"
	"github.com/eventline/eventline/internal/lifecycle"
	"github.com/eventline/eventline/internal/pgtest"
)

type noopProjection struct{}

func (noopProjection) Name() string { return "p" }
func (noopProjection) Handle(context.Context, pgx.Tx, []eventstore.PersistedEvent) error {
	return nil
}

// Status reads the lifecycle record for itself: it leaves the manager's copy alone, which is
// what the manager compares a new read with to see a change and wake the workers. (Status used
// to overwrite it, so a change it read first went unnoticed until the workers polled.)
func TestStatusLeavesTheManagersRecord(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db := pgtest.NewDatabase(t)
	store, err := postgres.New(postgres.StoreConfig{})
	require.NoError(t, err)
	r, err := New(db.Pool, store, Config{})
	require.NoError(t, err)
	require.NoError(t, r.Register(noopProjection{}))
	inTx := func(f func(tx pgx.Tx) error) { require.NoError(t, pgx.BeginFunc(ctx, db.Pool, f)) }
	inTx(func(tx pgx.Tx) error {
		_, err := r.lc.Deploy(ctx, tx, "p", lifecycle.Code{Layout: lifecycle.Layout{Version: 1, Partitions: 1}}, []int{1}, nil)
		return err
	})
	g := r.byName["p"]
	require.NoError(t, g.refresh(ctx))

	inTx(func(tx pgx.Tx) error { return r.lc.Pause(ctx, tx, "p") })
	sts, err := r.Status(ctx)
	require.NoError(t, err)
	require.Len(t, sts, 1)
	require.True(t, sts[0].Paused, "Status shows the record it read")
	rec, _ := g.record()
	require.False(t, rec.Paused, "the manager has not read the change yet")
	require.NoError(t, g.refresh(ctx))
	rec, _ = g.record()
	require.True(t, rec.Paused)
}
