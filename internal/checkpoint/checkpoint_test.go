package checkpoint_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline"
	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/internal/checkpoint"
	"github.com/eventline/eventline/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// newStore returns a store on a fresh database.
func newStore(t *testing.T) (*checkpoint.Store, *pgtest.Database) {
	t.Helper()
	s, err := checkpoint.New(eventline.Names{})
	require.NoError(t, err)
	return s, pgtest.NewDatabase(t)
}

// exec runs statements that set the test up.
func exec(t *testing.T, db *pgtest.Database, sql string, args ...any) {
	t.Helper()
	_, err := db.Pool.Exec(ctxT(t), sql, args...)
	require.NoError(t, err)
}

// project creates projection name's lifecycle record, with layout v/partitions active, and the
// checkpoint rows of that layout at position.
func project(t *testing.T, db *pgtest.Database, name string, version, partitions int, position int64) {
	t.Helper()
	exec(t, db, `INSERT INTO eventline_projections (projection, active_version, active_partitions) VALUES ($1, $2, $3)`,
		name, version, partitions)
	rows(t, db, name, version, partitions, position)
}

// rows creates the checkpoint rows of one layout at position.
func rows(t *testing.T, db *pgtest.Database, name string, version, partitions int, position int64) {
	t.Helper()
	exec(t, db, `INSERT INTO eventline_checkpoints (projection, version, partitions, partition, position)
		SELECT $1, $2, $3, p, $4 FROM generate_series(0, $3 - 1) p`, name, version, partitions, position)
}

func claim(t *testing.T, s *checkpoint.Store, db *pgtest.Database, key checkpoint.Key, owner string) {
	t.Helper()
	ok, err := s.Claim(ctxT(t), db.Pool, key, owner, time.Minute)
	require.NoError(t, err)
	require.True(t, ok, "claim %s for %s", key, owner)
}

// save runs Save in a transaction of its own.
func save(t *testing.T, s *checkpoint.Store, db *pgtest.Database, key checkpoint.Key, owner string, from, to int64) error {
	t.Helper()
	ctx := ctxT(t)
	return pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error { return s.Save(ctx, tx, key, owner, from, to) })
}

func position(t *testing.T, s *checkpoint.Store, db *pgtest.Database, key checkpoint.Key) int64 {
	t.Helper()
	cp, err := s.Get(ctxT(t), db.Pool, key)
	require.NoError(t, err)
	return cp.Position
}

// Two workers read a batch from the same position; the second to commit fails its
// compare-and-set, so the batch is applied once (G3). Another owner, an expired owner and a
// stopped checkpoint are fenced too.
func TestCompareAndSetFencesAStaleWorker(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	s, db := newStore(t)
	key := checkpoint.Key{Projection: "p"}
	project(t, db, "p", 1, 1, 0)
	claim(t, s, db, key, "node-a")
	ok, err := s.Claim(ctx, db.Pool, key, "node-b", time.Minute)
	require.NoError(t, err)
	require.False(t, ok, "a live lease is not taken over")

	require.NoError(t, pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		cp, err := s.Load(ctx, tx, key)
		require.NoError(t, err)
		require.Zero(t, cp.Position)
		require.Equal(t, "node-a", cp.Owner)
		return s.Save(ctx, tx, key, "node-a", 0, 10)
	}))
	require.ErrorIs(t, save(t, s, db, key, "node-a", 0, 10), checkpoint.ErrConflict, "a stale position is fenced")
	require.ErrorIs(t, save(t, s, db, key, "node-b", 10, 20), checkpoint.ErrConflict, "another owner is fenced")
	err = save(t, s, db, key, "", 10, 20)
	require.ErrorContains(t, err, "no owner")
	require.NotErrorIs(t, err, checkpoint.ErrConflict)
	require.Equal(t, int64(10), position(t, s, db, key))

	// An expired lease can be claimed; the old owner is then fenced.
	exec(t, db, `UPDATE eventline_checkpoints SET lease_until = now() - interval '1 second'`)
	claim(t, s, db, key, "node-b")
	require.ErrorIs(t, save(t, s, db, key, "node-a", 10, 20), checkpoint.ErrConflict)
	require.NoError(t, save(t, s, db, key, "node-b", 10, 12))

	// A handler failure stops the checkpoint: it moves no further until the failure is cleared
	// (lifecycle Resume does that).
	require.NoError(t, pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error { return s.Stop(ctx, tx, key, 12, 14, 15, "boom") }))
	err = pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error { return s.Stop(ctx, tx, key, 12, 14, 15, "boom") })
	require.ErrorIs(t, err, checkpoint.ErrConflict, "Stop is a compare-and-set too")
	cp, err := s.Get(ctx, db.Pool, key)
	require.NoError(t, err)
	require.True(t, cp.Stopped())
	require.Equal(t, int64(14), cp.Position)
	require.Equal(t, int64(15), cp.FailedPosition)
	require.Equal(t, "boom", cp.LastError)
	require.ErrorIs(t, save(t, s, db, key, "node-b", 14, 20), checkpoint.ErrConflict, "a stopped checkpoint does not move")
	exec(t, db, `UPDATE eventline_checkpoints SET failed_position = NULL, last_error = NULL`)
	require.NoError(t, save(t, s, db, key, "node-b", 14, 20))
	cp, err = s.Get(ctx, db.Pool, key)
	require.NoError(t, err)
	require.False(t, cp.Stopped())
	require.Equal(t, int64(20), cp.Position)

	_, err = s.Get(ctx, db.Pool, checkpoint.Key{Projection: "missing"})
	require.ErrorIs(t, err, checkpoint.ErrNotFound)
	err = pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		_, err := s.Load(ctx, tx, checkpoint.Key{Projection: "missing"})
		return err
	})
	require.ErrorIs(t, err, checkpoint.ErrNotFound)
}

// Save applies the lifecycle's condition in the same compare-and-set: a unit that lost its role
// cannot commit a batch, even if its process has not noticed.
func TestSaveFollowsTheLifecycle(t *testing.T) {
	t.Parallel()
	s, db := newStore(t)
	// p: v1/1 active; v2/1 building beside it.
	project(t, db, "p", 1, 1, 10)
	rows(t, db, "p", 2, 1, 0)
	exec(t, db, `UPDATE eventline_projections SET target_version = 2, target_partitions = 1, target_mode = 'build'
		WHERE projection = 'p'`)
	active := checkpoint.Key{Projection: "p"}
	building := checkpoint.Key{Projection: "p", Version: 2}
	claim(t, s, db, active, "node")
	claim(t, s, db, building, "node")
	require.NoError(t, save(t, s, db, active, "node", 10, 11))
	require.NoError(t, save(t, s, db, building, "node", 0, 5))

	t.Run("paused", func(t *testing.T) {
		exec(t, db, `UPDATE eventline_projections SET paused = true WHERE projection = 'p'`)
		require.ErrorIs(t, save(t, s, db, active, "node", 11, 12), checkpoint.ErrConflict)
		require.ErrorIs(t, save(t, s, db, building, "node", 5, 6), checkpoint.ErrConflict)
		exec(t, db, `UPDATE eventline_projections SET paused = false WHERE projection = 'p'`)
		require.NoError(t, save(t, s, db, active, "node", 11, 12))
		require.NoError(t, save(t, s, db, building, "node", 5, 6))
	})

	t.Run("barrier", func(t *testing.T) {
		exec(t, db, `UPDATE eventline_projections SET barrier = 15 WHERE projection = 'p'`)
		require.ErrorIs(t, save(t, s, db, active, "node", 12, 16), checkpoint.ErrConflict, "beyond the barrier")
		require.NoError(t, save(t, s, db, active, "node", 12, 15), "up to the barrier")
		require.NoError(t, save(t, s, db, building, "node", 6, 30), "the barrier holds the active layout only")
		require.Equal(t, int64(15), position(t, s, db, active))
	})

	t.Run("retired", func(t *testing.T) {
		// The build cut over: v2 is active, v1 retired (its rows not deleted yet).
		exec(t, db, `UPDATE eventline_projections SET active_version = 2, target_version = NULL,
			target_partitions = NULL, target_mode = NULL, barrier = NULL WHERE projection = 'p'`)
		require.ErrorIs(t, save(t, s, db, active, "node", 15, 16), checkpoint.ErrConflict)
		require.NoError(t, save(t, s, db, building, "node", 30, 31))
	})

	t.Run("waiting and standby", func(t *testing.T) {
		// q: v1/1 active, switching to v1/2, which waits for v1/1 to reach the barrier.
		project(t, db, "q", 1, 1, 3)
		rows(t, db, "q", 1, 2, 5)
		rows(t, db, "q", 1, 3, 0) // rows of a layout the projection does not run
		exec(t, db, `UPDATE eventline_projections SET target_version = 1, target_partitions = 2,
			target_mode = 'switch', barrier = 5 WHERE projection = 'q'`)
		waiting := checkpoint.Key{Projection: "q", Partitions: 2, Partition: 1}
		standby := checkpoint.Key{Projection: "q", Partitions: 3, Partition: 0}
		claim(t, s, db, waiting, "node")
		claim(t, s, db, standby, "node")
		require.ErrorIs(t, save(t, s, db, waiting, "node", 5, 6), checkpoint.ErrConflict)
		require.ErrorIs(t, save(t, s, db, standby, "node", 0, 1), checkpoint.ErrConflict)
		qActive := checkpoint.Key{Projection: "q"}
		claim(t, s, db, qActive, "node")
		require.NoError(t, save(t, s, db, qActive, "node", 3, 5), "the active layout drains to the barrier")
	})

	t.Run("no record", func(t *testing.T) {
		rows(t, db, "orphan", 1, 1, 0)
		key := checkpoint.Key{Projection: "orphan"}
		claim(t, s, db, key, "node")
		require.ErrorIs(t, save(t, s, db, key, "node", 0, 1), checkpoint.ErrConflict)
	})
}

// Claim and Renew never wait for a row that a batch in flight holds.
func TestOwnership(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	s, db := newStore(t)
	project(t, db, "p", 1, 2, 0)
	k0 := checkpoint.Key{Projection: "p", Partitions: 2, Partition: 0}
	k1 := checkpoint.Key{Projection: "p", Partitions: 2, Partition: 1}
	claim(t, s, db, k0, "node-a")
	claim(t, s, db, k0, "node-a") // claiming what one owns renews it

	// A batch of node-a is in flight on k0; k1 is free but locked by another transaction.
	batch, err := db.Pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = batch.Rollback(context.WithoutCancel(ctx)) }()
	_, err = s.Load(ctx, batch, k0)
	require.NoError(t, err)
	other, err := db.Pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = other.Rollback(context.WithoutCancel(ctx)) }()
	_, err = s.Load(ctx, other, k1)
	require.NoError(t, err)

	ok, err := s.Claim(ctx, db.Pool, k1, "node-b", time.Minute)
	require.NoError(t, err)
	require.False(t, ok, "a locked row is skipped, not waited for")
	kept, err := s.Renew(ctx, db.Pool, "node-a", time.Minute)
	require.NoError(t, err)
	require.Equal(t, []checkpoint.Key{{Projection: "p", Version: 1, Partitions: 2, Partition: 0}}, kept,
		"a row locked by a batch in flight is still owned")
	require.NoError(t, other.Rollback(ctx))
	claim(t, s, db, k1, "node-b")
	require.NoError(t, batch.Rollback(ctx))

	// An expired lease is taken over; the old owner's Renew no longer returns it.
	exec(t, db, `UPDATE eventline_checkpoints SET lease_until = now() - interval '1 second' WHERE owner = 'node-a'`)
	claim(t, s, db, k0, "node-b")
	kept, err = s.Renew(ctx, db.Pool, "node-a", time.Minute)
	require.NoError(t, err)
	require.Empty(t, kept)
	kept, err = s.Renew(ctx, db.Pool, "node-b", time.Minute)
	require.NoError(t, err)
	require.ElementsMatch(t, []checkpoint.Key{k0.Normalize(), k1.Normalize()}, kept)

	require.NoError(t, s.Release(ctx, db.Pool, k0, "node-a"), "releasing what one does not own is a no-op")
	cp, err := s.Get(ctx, db.Pool, k0)
	require.NoError(t, err)
	require.Equal(t, "node-b", cp.Owner)
	require.NoError(t, s.Release(ctx, db.Pool, k0, "node-b"))
	cp, err = s.Get(ctx, db.Pool, k0)
	require.NoError(t, err)
	require.Empty(t, cp.Owner)
	claim(t, s, db, k0, "node-a")
}

func TestListAndKeys(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	s, db := newStore(t)
	project(t, db, "q", 1, 1, 7)
	project(t, db, "p", 1, 2, 0)
	rows(t, db, "p", 2, 1, 0)
	all, err := s.List(ctx, db.Pool)
	require.NoError(t, err)
	var names []string
	for _, cp := range all {
		names = append(names, cp.Key.String())
	}
	require.Equal(t, []string{"p#0/2", "p#1/2", "p@2", "q"}, names)
	require.Equal(t, int64(7), all[3].Position)

	ps, err := s.Projection(ctx, db.Pool, "p", false)
	require.NoError(t, err)
	require.Len(t, ps, 3)
	require.NoError(t, pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		ps, err := s.Projection(ctx, tx, "p", true)
		require.Len(t, ps, 3)
		return err
	}))
	ps, err = s.Projection(ctx, db.Pool, "missing", false)
	require.NoError(t, err)
	require.Empty(t, ps)

	require.Equal(t, "p", checkpoint.Key{Projection: "p"}.String())
	require.Equal(t, "p#2", checkpoint.Key{Projection: "p", Partition: 2}.String())
	require.Equal(t, "p@3#1/4", checkpoint.Key{Projection: "p", Version: 3, Partitions: 4, Partition: 1}.String())
	require.Equal(t, checkpoint.Key{Projection: "p", Version: 1, Partitions: 1}, checkpoint.Key{Projection: "p"}.Normalize())
}

func TestNodes(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	s, db := newStore(t)
	require.NoError(t, s.Heartbeat(ctx, db.Pool, checkpoint.Node{ID: "n1", Hostname: "h", PID: 1, Projections: []string{"p@1/1"}}))
	nodes, err := s.Nodes(ctx, db.Pool, time.Minute)
	require.NoError(t, err)
	require.Len(t, nodes, 1)
	require.Equal(t, []string{"p@1/1"}, nodes[0].Projections)
	require.NoError(t, s.Heartbeat(ctx, db.Pool, checkpoint.Node{ID: "n1", Hostname: "h", PID: 1, Projections: []string{"p@2/1"}}))
	nodes, err = s.Nodes(ctx, db.Pool, time.Minute)
	require.NoError(t, err)
	require.Equal(t, []string{"p@2/1"}, nodes[0].Projections, "a heartbeat updates what the node runs")
	require.NoError(t, s.Heartbeat(ctx, db.Pool, checkpoint.Node{ID: "n1", Hostname: "h", PID: 1}), "a node that runs no projection (only subscriptions)")
	nodes, err = s.Nodes(ctx, db.Pool, time.Minute)
	require.NoError(t, err)
	require.Empty(t, nodes[0].Projections)
	require.NoError(t, s.Heartbeat(ctx, db.Pool, checkpoint.Node{ID: "stale", Hostname: "h", PID: 2, Projections: []string{"p@1/1"}}))
	exec(t, db, `UPDATE eventline_nodes SET heartbeat_at = now() - interval '1 hour' WHERE node_id = 'stale'`)
	nodes, err = s.Nodes(ctx, db.Pool, time.Minute)
	require.NoError(t, err)
	require.Len(t, nodes, 1, "a node without a recent heartbeat is not listed")
	require.NoError(t, s.ForgetNodes(ctx, db.Pool, 30*time.Minute))
	var n int
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT count(*) FROM eventline_nodes`).Scan(&n))
	require.Equal(t, 1, n)
	require.NoError(t, s.RemoveNode(ctx, db.Pool, "n1"))
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT count(*) FROM eventline_nodes`).Scan(&n))
	require.Zero(t, n)
}

func event(pos int64, aggID string) *eventstore.PersistedEvent {
	return &eventstore.PersistedEvent{
		Event:          eventstore.Event{EventID: uuid.New(), AggregateType: "order", AggregateID: aggID},
		GlobalPosition: pos,
	}
}

// Dead letters belong to a version, not to a partition, and carry the event's aggregate.
func TestDeadLetters(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	s, db := newStore(t)
	park := func(key checkpoint.Key, ev *eventstore.PersistedEvent, errText string, blockedBy int64) {
		t.Helper()
		require.NoError(t, pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error { return s.Park(ctx, tx, key, ev, errText, blockedBy) }))
	}
	p0of2 := checkpoint.Key{Projection: "p", Partitions: 2, Partition: 0}
	p1of4 := checkpoint.Key{Projection: "p", Partitions: 4, Partition: 1}
	e7, e9, e8 := event(7, "o-1"), event(9, "o-1"), event(8, "o-2")
	park(p0of2, e7, "bad", 0)
	park(p0of2, e9, "parked behind 7", 7)
	park(p0of2, e8, "worse", 0)
	park(checkpoint.Key{Projection: "p", Version: 2}, e7, "v2 too", 0)
	park(checkpoint.Key{Projection: "other"}, e7, "elsewhere", 0)

	dl, err := s.DeadLetters(ctx, db.Pool, "p")
	require.NoError(t, err)
	require.Len(t, dl, 4)
	first := dl[0]
	require.Equal(t, "p", first.Projection)
	require.Equal(t, 1, first.Version)
	require.Equal(t, int64(7), first.GlobalPosition)
	require.Equal(t, e7.EventID, first.EventID)
	require.Equal(t, "order", first.AggregateType)
	require.Equal(t, "o-1", first.AggregateID)
	require.Equal(t, "bad", first.Error)
	require.Equal(t, 1, first.Attempts)
	require.Zero(t, first.BlockedBy)
	require.Equal(t, []int64{7, 8, 9, 7}, []int64{dl[0].GlobalPosition, dl[1].GlobalPosition, dl[2].GlobalPosition, dl[3].GlobalPosition})
	require.Equal(t, int64(7), dl[2].BlockedBy)
	require.Equal(t, 2, dl[3].Version)
	all, err := s.DeadLetters(ctx, db.Pool, "")
	require.NoError(t, err)
	require.Len(t, all, 5)
	firstTwo, err := s.FirstDeadLetters(ctx, db.Pool, "", 2)
	require.NoError(t, err)
	require.Equal(t, all[:2], firstTwo)

	// The same event parked again, by another partition layout of the same version: one dead
	// letter, its attempts counted, a pending retry request cleared.
	require.NoError(t, s.RequestRetry(ctx, db.Pool, first.ID))
	v1, err := s.VersionDeadLetters(ctx, db.Pool, "p", 1)
	require.NoError(t, err)
	require.Len(t, v1, 3)
	require.True(t, v1[0].RetryRequested)
	park(p1of4, e7, "still bad", 0)
	v1, err = s.VersionDeadLetters(ctx, db.Pool, "p", 0) // 0 means version 1
	require.NoError(t, err)
	require.Len(t, v1, 3)
	require.Equal(t, first.ID, v1[0].ID)
	require.Equal(t, 2, v1[0].Attempts)
	require.Equal(t, "still bad", v1[0].Error)
	require.False(t, v1[0].RetryRequested)

	require.NoError(t, pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		agg, err := s.LockAggregateDeadLetters(ctx, tx, "p", 1, "order", "o-1")
		require.NoError(t, err)
		require.Len(t, agg, 2)
		require.Equal(t, []int64{7, 9}, []int64{agg[0].GlobalPosition, agg[1].GlobalPosition})
		none, err := s.LockAggregateDeadLetters(ctx, tx, "p", 1, "order", "o-3")
		require.Empty(t, none)
		return err
	}))

	require.NoError(t, s.DeleteDeadLetter(ctx, db.Pool, first.ID))
	require.ErrorIs(t, s.DeleteDeadLetter(ctx, db.Pool, first.ID), checkpoint.ErrNotFound)
	require.ErrorIs(t, s.RequestRetry(ctx, db.Pool, first.ID), checkpoint.ErrNotFound)
	v1, err = s.VersionDeadLetters(ctx, db.Pool, "p", 1)
	require.NoError(t, err)
	require.Len(t, v1, 2)
}

// Parking an event again (a retry that failed, another partition layout) keeps its dead letter
// and does not use up an ID: the next event parked gets the next ID.
func TestDeadLetterIDsWithoutGapsFromRepeats(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	s, db := newStore(t)
	key := checkpoint.Key{Projection: "p"}
	park := func(ev *eventstore.PersistedEvent) {
		t.Helper()
		require.NoError(t, pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error { return s.Park(ctx, tx, key, ev, "bad", 0) }))
	}
	e1, e2 := event(1, "o-1"), event(2, "o-2")
	for range 3 {
		park(e1)
	}
	park(e2)
	dl, err := s.DeadLetters(ctx, db.Pool, "p")
	require.NoError(t, err)
	require.Len(t, dl, 2)
	require.Equal(t, 3, dl[0].Attempts)
	require.Equal(t, dl[0].ID+1, dl[1].ID)
}

func TestInvalidTableNames(t *testing.T) {
	t.Parallel()
	for _, names := range []eventline.Names{
		{CheckpointsTable: "x; drop"},
		{DeadLettersTable: "a b"},
		{NodesTable: "a.b.c"},
		{ProjectionsTable: `p"q`},
		{ProgressChannel: "a b"},
	} {
		_, err := checkpoint.New(names)
		require.ErrorIs(t, err, eventline.ErrInvalidName, "%+v", names)
	}
	_, err := checkpoint.New(eventline.Names{ProjectionsTable: "app.projections"})
	require.NoError(t, err)
}
