package lifecycle_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline"
	"github.com/eventline/eventline/internal/lifecycle"
	"github.com/eventline/eventline/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

type L = lifecycle.Layout

func TestRolesAndLimits(t *testing.T) {
	rec := lifecycle.Record{Active: L{2, 2}, Barrier: -1}
	build := rec
	build.Target, build.Mode = L{3, 1}, lifecycle.Build
	sw := rec
	sw.Target, sw.Mode, sw.Barrier = L{2, 4}, lifecycle.Switch, 40
	paused := build
	paused.Paused = true
	for _, c := range []struct {
		name      string
		rec       lifecycle.Record
		l         L
		role      lifecycle.Role
		limit     int64
		applies   bool
		state     string
		stateStop string
	}{
		{"active", rec, L{2, 2}, lifecycle.Active, -1, true, "running", "stopped"},
		{"older version", rec, L{1, 2}, lifecycle.Retired, 0, false, "retired", "retired"},
		{"other count", rec, L{2, 3}, lifecycle.Standby, 0, false, "standby", "standby"},
		{"newer, not deployed", rec, L{3, 1}, lifecycle.Standby, 0, false, "standby", "standby"},
		{"building", build, L{3, 1}, lifecycle.Building, -1, true, "building", "stopped"},
		{"active beside a build", build, L{2, 2}, lifecycle.Active, -1, true, "running", "stopped"},
		{"switch target waits", sw, L{2, 4}, lifecycle.Waiting, 0, false, "waiting", "stopped"},
		{"active drains to the barrier", sw, L{2, 2}, lifecycle.Active, 40, true, "running", "stopped"},
		{"paused active", paused, L{2, 2}, lifecycle.Active, 0, false, "paused", "paused"},
		{"paused build", paused, L{3, 1}, lifecycle.Building, 0, false, "paused", "paused"},
		{"paused retired", paused, L{1, 1}, lifecycle.Retired, 0, false, "retired", "retired"},
	} {
		t.Run(c.name, func(t *testing.T) {
			require.Equal(t, c.role, c.rec.Role(c.l))
			limit, ok := c.rec.Limit(c.l)
			require.Equal(t, c.applies, ok)
			if ok {
				require.Equal(t, c.limit, limit)
			}
			require.Equal(t, c.state, c.rec.State(c.l, false))
			require.Equal(t, c.stateStop, c.rec.State(c.l, true))
		})
	}
}

type fixture struct {
	t  *testing.T
	db *pgtest.Database
	s  *lifecycle.Store
}

func newFixture(t *testing.T) *fixture {
	t.Parallel()
	return &fixture{t: t, db: pgtest.NewDatabase(t), s: lifecycle.New(eventline.Names{})}
}

func (f *fixture) tx(fn func(ctx context.Context, tx pgx.Tx) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return pgx.BeginFunc(ctx, f.db.Pool, func(tx pgx.Tx) error { return fn(ctx, tx) })
}

func (f *fixture) deploy(v, p int, detached bool, declared ...int) string {
	f.t.Helper()
	var change string
	if declared == nil {
		declared = []int{p}
	}
	require.NoError(f.t, f.tx(func(ctx context.Context, tx pgx.Tx) (err error) {
		change, err = f.s.Deploy(ctx, tx, "p", lifecycle.Code{Layout: L{v, p}, Detached: detached, Resettable: !detached}, declared, f.reset)
		return err
	}))
	return change
}

func (f *fixture) reset(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS resets (n int); INSERT INTO resets VALUES (1)`)
	return err
}

func (f *fixture) record() lifecycle.Record {
	f.t.Helper()
	r, err := f.s.Get(context.Background(), f.db.Pool, "p")
	require.NoError(f.t, err)
	return r
}

// rows returns the checkpoint rows as "v/P#p@pos".
func (f *fixture) rows() []string {
	f.t.Helper()
	rows, err := f.db.Pool.Query(context.Background(), `SELECT version, partitions, partition, position FROM eventline_checkpoints
		WHERE projection = 'p' ORDER BY version, partitions, partition`)
	require.NoError(f.t, err)
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (string, error) {
		var v, ps, p int32
		var pos int64
		err := r.Scan(&v, &ps, &p, &pos)
		return fmt.Sprintf("%d/%d#%d@%d", v, ps, p, pos), err
	})
	require.NoError(f.t, err)
	return out
}

func (f *fixture) setPositions(v, p int, pos int64) {
	f.t.Helper()
	_, err := f.db.Pool.Exec(context.Background(), `UPDATE eventline_checkpoints SET position = $3 WHERE version = $1 AND partitions = $2`, v, p, pos)
	require.NoError(f.t, err)
}

func (f *fixture) advance(v int) string {
	f.t.Helper()
	var change string
	require.NoError(f.t, f.tx(func(ctx context.Context, tx pgx.Tx) (err error) {
		change, err = f.s.Advance(ctx, tx, "p", lifecycle.Code{Layout: L{v, 1}, Resettable: true}, 100, nil)
		return err
	}))
	return change
}

// The deploy transition's rules, one case each.
func TestDeploy(t *testing.T) {
	t.Run("first deploy creates the record and rows at 0", func(t *testing.T) {
		f := newFixture(t)
		require.Equal(t, "created v1/2", f.deploy(1, 2, false))
		require.Equal(t, L{1, 2}, f.record().Active)
		require.Equal(t, []string{"1/2#0@0", "1/2#1@0"}, f.rows())
		require.Empty(t, f.deploy(1, 2, false), "idempotent")
	})
	t.Run("a new count waits until every live process declares it", func(t *testing.T) {
		f := newFixture(t)
		f.deploy(1, 2, false)
		f.setPositions(1, 2, 7)
		require.Empty(t, f.deploy(1, 4, false, 4, 2))
		require.False(t, f.record().HasTarget())
		require.Contains(t, f.deploy(1, 4, false, 4, 4), "partition change to v1/4 started")
		rec := f.record()
		require.Equal(t, L{1, 4}, rec.Target)
		require.Equal(t, lifecycle.Switch, rec.Mode)
		require.EqualValues(t, 7, rec.Barrier)
		require.Equal(t, []string{"1/2#0@7", "1/2#1@7", "1/4#0@7", "1/4#1@7", "1/4#2@7", "1/4#3@7"}, f.rows())
	})
	t.Run("a pending switch is cancelled when the processes declare the active count again", func(t *testing.T) {
		f := newFixture(t)
		f.deploy(1, 2, false)
		f.deploy(1, 4, false)
		require.Contains(t, f.deploy(1, 2, false), "cancelled")
		rec := f.record()
		require.False(t, rec.HasTarget())
		require.EqualValues(t, -1, rec.Barrier)
		require.Equal(t, []string{"1/2#0@0", "1/2#1@0"}, f.rows())
	})
	t.Run("a pending switch is replaced by another count", func(t *testing.T) {
		f := newFixture(t)
		f.deploy(1, 2, false)
		f.deploy(1, 4, false)
		f.deploy(1, 3, false)
		require.Equal(t, L{1, 3}, f.record().Target)
		require.Len(t, f.rows(), 5)
	})
	t.Run("a newer version builds from 0 beside the active one", func(t *testing.T) {
		f := newFixture(t)
		f.deploy(1, 1, false)
		f.setPositions(1, 1, 50)
		require.Contains(t, f.deploy(2, 2, false), "build of v2/2 started")
		rec := f.record()
		require.Equal(t, L{2, 2}, rec.Target)
		require.Equal(t, lifecycle.Build, rec.Mode)
		require.Equal(t, []string{"1/1#0@50", "2/2#0@0", "2/2#1@0"}, f.rows())
	})
	t.Run("a newer detached version switches at the highest old position", func(t *testing.T) {
		f := newFixture(t)
		f.deploy(1, 2, true)
		_, err := f.db.Pool.Exec(context.Background(), `UPDATE eventline_checkpoints SET position = 10 + 10 * partition`)
		require.NoError(t, err)
		require.Contains(t, f.deploy(2, 2, true), "switch to v2/2 started")
		rec := f.record()
		require.Equal(t, lifecycle.Switch, rec.Mode)
		require.EqualValues(t, 20, rec.Barrier, "the old partition behind drains to the highest")
		require.Empty(t, f.advance(2), "not before every old partition reached the barrier")
		f.setPositions(1, 2, 20)
		require.Contains(t, f.advance(2), "switched")
		require.Equal(t, L{2, 2}, f.record().Active)
		require.Equal(t, []string{"2/2#0@20", "2/2#1@20"}, f.rows())
	})
	t.Run("an older version changes nothing", func(t *testing.T) {
		f := newFixture(t)
		f.deploy(2, 1, false)
		before := f.record()
		require.Empty(t, f.deploy(1, 1, false))
		require.Equal(t, before, f.record())
	})
	t.Run("a version between the active one and the target is superseded", func(t *testing.T) {
		f := newFixture(t)
		f.deploy(1, 1, false)
		f.deploy(3, 1, false)
		require.Empty(t, f.deploy(2, 1, false))
		require.Equal(t, 3, f.record().Target.Version)
	})
	t.Run("a newer version replaces an older target", func(t *testing.T) {
		f := newFixture(t)
		f.deploy(1, 1, false)
		f.deploy(2, 1, false)
		f.deploy(3, 1, false)
		require.Equal(t, L{3, 1}, f.record().Target)
		require.Equal(t, []string{"1/1#0@0", "3/1#0@0"}, f.rows())
	})
	t.Run("a building version re-declared with another count restarts after a reset", func(t *testing.T) {
		f := newFixture(t)
		f.deploy(1, 1, false)
		f.deploy(2, 2, false)
		f.setPositions(2, 2, 30)
		require.Contains(t, f.deploy(2, 4, false), "target replaced by v2/4")
		require.Equal(t, L{2, 4}, f.record().Target)
		require.Equal(t, []string{"1/1#0@0", "2/4#0@0", "2/4#1@0", "2/4#2@0", "2/4#3@0"}, f.rows())
		var n int
		require.NoError(t, f.db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM resets`).Scan(&n))
		require.Equal(t, 1, n)
	})
}

func TestAdvanceBuild(t *testing.T) {
	f := newFixture(t)
	f.deploy(1, 1, false)
	f.setPositions(1, 1, 1000)
	f.deploy(2, 1, false)
	require.Empty(t, f.advance(1), "only a process with the target's code cuts over")
	require.Empty(t, f.advance(2), "far behind: nothing")
	f.setPositions(2, 1, 950)
	require.Contains(t, f.advance(2), "stops at 1000")
	require.EqualValues(t, 1000, f.record().Barrier)
	f.setPositions(2, 1, 1000)
	require.Contains(t, f.advance(2), "v2/1 took over from v1/1")
	rec := f.record()
	require.Equal(t, L{2, 1}, rec.Active)
	require.False(t, rec.HasTarget())
	require.EqualValues(t, -1, rec.Barrier)
	require.Equal(t, []string{"2/1#0@1000"}, f.rows())
}

func TestPauseResumeRebuild(t *testing.T) {
	f := newFixture(t)
	f.deploy(1, 2, false)
	f.deploy(1, 4, false) // a pending switch
	f.setPositions(1, 4, 9)
	require.NoError(t, f.tx(func(ctx context.Context, tx pgx.Tx) error { return f.s.Pause(ctx, tx, "p") }))
	require.True(t, f.record().Paused)
	require.NoError(t, f.tx(func(ctx context.Context, tx pgx.Tx) error { return f.s.RequestRebuild(ctx, tx, "p") }))
	require.True(t, f.record().RebuildPending())
	err := f.tx(func(ctx context.Context, tx pgx.Tx) error {
		_, err := f.s.Rebuild(ctx, tx, "p", lifecycle.Code{Layout: L{2, 1}}, true, f.reset)
		return err
	})
	require.ErrorIs(t, err, lifecycle.ErrWrongVersion)
	require.NoError(t, f.tx(func(ctx context.Context, tx pgx.Tx) error {
		done, err := f.s.Rebuild(ctx, tx, "p", lifecycle.Code{Layout: L{1, 2}, Resettable: true}, true, f.reset)
		require.True(t, done)
		return err
	}))
	rec := f.record()
	require.Equal(t, L{1, 4}, rec.Active, "the pending switch completed")
	require.False(t, rec.HasTarget())
	require.False(t, rec.RebuildPending())
	require.True(t, rec.Paused, "the pause stays")
	require.Equal(t, []string{"1/4#0@0", "1/4#1@0", "1/4#2@0", "1/4#3@0"}, f.rows())
	require.NoError(t, f.tx(func(ctx context.Context, tx pgx.Tx) error {
		done, err := f.s.Rebuild(ctx, tx, "p", lifecycle.Code{Layout: L{1, 2}, Resettable: true}, true, f.reset)
		require.False(t, done, "no request pending: nothing")
		return err
	}))
	require.NoError(t, f.tx(func(ctx context.Context, tx pgx.Tx) error { return f.s.Resume(ctx, tx, "p") }))
	require.False(t, f.record().Paused)
}

func TestRefusals(t *testing.T) {
	f := newFixture(t)
	f.deploy(1, 1, true)
	err := f.tx(func(ctx context.Context, tx pgx.Tx) error { return f.s.RequestRebuild(ctx, tx, "p") })
	require.ErrorIs(t, err, lifecycle.ErrDetachedRebuild)
	err = f.tx(func(ctx context.Context, tx pgx.Tx) error { return f.s.Pause(ctx, tx, "nope") })
	require.ErrorIs(t, err, lifecycle.ErrNotFound)
	_, err = f.db.Pool.Exec(context.Background(), `UPDATE eventline_projections SET rebuild_requested = 1`)
	require.NoError(t, err)
	require.NoError(t, f.tx(func(ctx context.Context, tx pgx.Tx) error {
		return f.s.RefuseRebuild(ctx, tx, "p", "detached handlers are not rebuilt")
	}))
	rec := f.record()
	require.False(t, rec.RebuildPending())
	require.Contains(t, rec.LastError, "refused")
	_, err = f.db.Pool.Exec(context.Background(), `UPDATE eventline_projections SET target_version = 1, target_partitions = 1, target_mode = 'build'`)
	require.Error(t, err, "the table refuses an illegal record: a build target of the active version")
}
