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
	require.NoError(t, s.Ensure(ctx, db.Pool, key, 0, checkpoint.Running))
	require.NoError(t, s.Ensure(ctx, db.Pool, key, 5, checkpoint.Running), "idempotent")
	ok, err := s.Claim(ctx, db.Pool, key, "node-a", time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	ok, err = s.Claim(ctx, db.Pool, key, "node-b", time.Minute)
	require.NoError(t, err)
	require.False(t, ok, "a live lease is not taken over")

	require.NoError(t, pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		cp, err := s.Load(ctx, tx, key)
		require.NoError(t, err)
		require.Zero(t, cp.Position)
		require.Equal(t, "node-a", cp.Owner)
		return s.Save(ctx, tx, key, "node-a", 0, 10)
	}))
	err = pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error { return s.Save(ctx, tx, key, "node-a", 0, 10) })
	require.ErrorIs(t, err, checkpoint.ErrConflict, "a stale position is fenced")
	err = pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error { return s.Save(ctx, tx, key, "node-b", 10, 20) })
	require.ErrorIs(t, err, checkpoint.ErrConflict, "another owner is fenced")

	// An expired lease can be claimed; the old owner is then fenced.
	_, err = db.Pool.Exec(ctx, `UPDATE eventline_checkpoints SET lease_until = now() - interval '1 second'`)
	require.NoError(t, err)
	ok, err = s.Claim(ctx, db.Pool, key, "node-b", time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	err = pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error { return s.Save(ctx, tx, key, "node-a", 10, 20) })
	require.ErrorIs(t, err, checkpoint.ErrConflict)
	kept, err := s.Renew(ctx, db.Pool, "node-a", time.Minute)
	require.NoError(t, err)
	require.Empty(t, kept)
	kept, err = s.Renew(ctx, db.Pool, "node-b", time.Minute)
	require.NoError(t, err)
	require.Equal(t, []checkpoint.Key{{Projection: "p", Version: 1, Partitions: 1}}, kept)
	require.NoError(t, s.Release(ctx, db.Pool, key, "node-b"))
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
	err = pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error { return s.Save(ctx, tx, key, "", 14, 20) })
	require.ErrorIs(t, err, checkpoint.ErrConflict, "a stopped checkpoint does not move")
	_, err = s.SetState(ctx, db.Pool, "p", checkpoint.Paused)
	require.NoError(t, err)
	err = pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error { return s.Save(ctx, tx, key, "", 14, 20) })
	require.ErrorIs(t, err, checkpoint.ErrConflict, "a paused checkpoint does not move")
	n, err := s.SetState(ctx, db.Pool, "p", checkpoint.Running)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	cp, err = s.Get(ctx, db.Pool, key)
	require.NoError(t, err)
	require.Equal(t, checkpoint.Running, cp.State)
	require.Empty(t, cp.LastError)
	require.NoError(t, s.Reset(ctx, db.Pool, key, 0))
	require.NoError(t, s.Ensure(ctx, db.Pool, checkpoint.Key{Projection: "p", Partition: 2}, 0, checkpoint.Running))
	all, err := s.List(ctx, db.Pool)
	require.NoError(t, err)
	require.Len(t, all, 2)
	require.Equal(t, "p#2", all[1].Key.String())
	require.Equal(t, "p@3#1/4", checkpoint.Key{Projection: "p", Version: 3, Partitions: 4, Partition: 1}.String())

	// Nodes.
	require.NoError(t, s.Heartbeat(ctx, db.Pool, checkpoint.Node{ID: "n1", Hostname: "h", PID: 1, Projections: []string{"p@1/1"}}))
	nodes, err := s.Nodes(ctx, db.Pool, time.Minute)
	require.NoError(t, err)
	require.Len(t, nodes, 1)
	require.Equal(t, []string{"p@1/1"}, nodes[0].Projections)
	require.NoError(t, s.Heartbeat(ctx, db.Pool, checkpoint.Node{ID: "stale", Hostname: "h", PID: 2, Projections: []string{"p@1/1"}}))
	_, err = db.Pool.Exec(ctx, `UPDATE eventline_nodes SET heartbeat_at = now() - interval '1 hour' WHERE node_id = 'stale'`)
	require.NoError(t, err)
	nodes, err = s.Nodes(ctx, db.Pool, time.Minute)
	require.NoError(t, err)
	require.Len(t, nodes, 1, "a node without a recent heartbeat is not listed")
	require.NoError(t, s.ForgetNodes(ctx, db.Pool, 30*time.Minute))
	var rows int
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT count(*) FROM eventline_nodes`).Scan(&rows))
	require.Equal(t, 1, rows)
	require.NoError(t, s.RemoveNode(ctx, db.Pool, "n1"))
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
	require.NoError(t, s.RequestRetry(ctx, db.Pool, dl[0].ID))
	retry, err := s.RetryRequested(ctx, db.Pool, key)
	require.NoError(t, err)
	require.Len(t, retry, 1)
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
