package checkpoint_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/checkpoint"
	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// Two workers read a batch from the same position; the second to commit fails its
// compare-and-set, so the batch is applied once (G3).
func TestCompareAndSetFencesAStaleWorker(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db := pgtest.NewDatabase(t)
	s, err := checkpoint.New(checkpoint.Config{})
	require.NoError(t, err)
	key := checkpoint.Key{Projection: "p"}
	require.NoError(t, s.Ensure(ctx, db.Pool, key))
	require.NoError(t, s.Ensure(ctx, db.Pool, key), "idempotent")

	require.NoError(t, pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		cp, err := s.Load(ctx, tx, key)
		require.NoError(t, err)
		require.Zero(t, cp.Position)
		return s.Save(ctx, tx, key, 0, 10)
	}))
	err = pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error { return s.Save(ctx, tx, key, 0, 10) })
	require.ErrorIs(t, err, checkpoint.ErrConflict)
	cp, err := s.Get(ctx, db.Pool, key)
	require.NoError(t, err)
	require.Equal(t, int64(10), cp.Position)

	// Stop, resume, reset, list.
	require.NoError(t, pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error { return s.Stop(ctx, tx, key, 10, 14, 15, "boom") }))
	cp, err = s.Get(ctx, db.Pool, key)
	require.NoError(t, err)
	require.Equal(t, checkpoint.Stopped, cp.State)
	require.Equal(t, int64(14), cp.Position)
	require.Equal(t, int64(15), cp.FailedPosition)
	require.Equal(t, "boom", cp.LastError)
	err = pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error { return s.Save(ctx, tx, key, 14, 20) })
	require.ErrorIs(t, err, checkpoint.ErrConflict, "a stopped checkpoint does not move")
	require.NoError(t, s.SetState(ctx, db.Pool, key, checkpoint.Running))
	cp, err = s.Get(ctx, db.Pool, key)
	require.NoError(t, err)
	require.Equal(t, checkpoint.Running, cp.State)
	require.Empty(t, cp.LastError)
	require.NoError(t, s.Reset(ctx, db.Pool, key, 0))
	require.NoError(t, s.Ensure(ctx, db.Pool, checkpoint.Key{Projection: "p", Partition: 2}))
	all, err := s.List(ctx, db.Pool)
	require.NoError(t, err)
	require.Len(t, all, 2)
	require.Equal(t, "p#2", all[1].Key.String())
	_, err = s.Get(ctx, db.Pool, checkpoint.Key{Projection: "missing"})
	require.ErrorIs(t, err, checkpoint.ErrNotFound)
	require.ErrorIs(t, s.Reset(ctx, db.Pool, checkpoint.Key{Projection: "missing"}, 0), checkpoint.ErrNotFound)
}

func TestDeadLetters(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db := pgtest.NewDatabase(t)
	s, err := checkpoint.New(checkpoint.Config{})
	require.NoError(t, err)
	key := checkpoint.Key{Projection: "p"}
	ev := eventstore.PersistedEvent{GlobalPosition: 7}
	for i := 0; i < 2; i++ {
		require.NoError(t, pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error { return s.Park(ctx, tx, key, ev, "bad") }))
	}
	dl, err := s.DeadLetters(ctx, db.Pool, "")
	require.NoError(t, err)
	require.Len(t, dl, 1)
	require.Equal(t, 2, dl[0].Attempts)
	require.NoError(t, s.DeleteDeadLetter(ctx, db.Pool, dl[0].ID))
	require.ErrorIs(t, s.DeleteDeadLetter(ctx, db.Pool, dl[0].ID), checkpoint.ErrNotFound)
}

func TestInvalidTableNames(t *testing.T) {
	t.Parallel()
	_, err := checkpoint.New(checkpoint.Config{Table: "x; drop"})
	require.Error(t, err)
	_, err = checkpoint.New(checkpoint.Config{DeadLettersTable: "a b"})
	require.Error(t, err)
}
