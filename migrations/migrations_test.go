package migrations_test

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/internal/pgtest"
	"github.com/eventline/eventline/internal/sqlname"
	"github.com/eventline/eventline/migrations"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// schema describes what a migrated database must have, as the catalog shows it.
type schema struct {
	Tables      []string
	Triggers    []string
	SeqCache    int64
	AppliedRows int64
}

func readSchema(t *testing.T, db *pgtest.Database) schema {
	t.Helper()
	ctx := ctxT(t)
	var s schema
	rows, err := db.Pool.Query(ctx, `SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename::text COLLATE "C"`)
	require.NoError(t, err)
	for rows.Next() {
		var n string
		require.NoError(t, rows.Scan(&n))
		s.Tables = append(s.Tables, n)
	}
	require.NoError(t, rows.Err())
	rows, err = db.Pool.Query(ctx, `SELECT tgname || ':' || pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = 'events'::regclass AND NOT tgisinternal ORDER BY 1`)
	require.NoError(t, err)
	for rows.Next() {
		var n string
		require.NoError(t, rows.Scan(&n))
		s.Triggers = append(s.Triggers, n)
	}
	require.NoError(t, rows.Err())
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT seqcache FROM pg_sequence WHERE seqrelid = pg_get_serial_sequence('events', 'global_position')::regclass`).Scan(&s.SeqCache))
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT count(*) FROM eventline_migrations`).Scan(&s.AppliedRows))
	return s
}

func checkSchema(t *testing.T, s schema) {
	t.Helper()
	require.Equal(t, []string{"aggregate_heads", "eventline_checkpoints", "eventline_dead_letters", "eventline_migrations", "eventline_nodes", "events"}, s.Tables)
	require.Len(t, s.Triggers, 1)
	require.Contains(t, s.Triggers[0], "eventline_append_lock:CREATE TRIGGER eventline_append_lock BEFORE INSERT ON public.events FOR EACH STATEMENT")
	require.EqualValues(t, 1, s.SeqCache)
	files, err := migrations.Files(migrations.DefaultConfig())
	require.NoError(t, err)
	require.EqualValues(t, len(files), s.AppliedRows)
}

func TestApplyTwice(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewEmptyDatabase(t)
	applied, err := migrations.Apply(ctx, db.Pool, migrations.DefaultConfig())
	require.NoError(t, err)
	require.Equal(t, []int{1, 2}, applied)
	first := readSchema(t, db)
	checkSchema(t, first)

	applied, err = migrations.Apply(ctx, db.Pool, migrations.Config{})
	require.NoError(t, err)
	require.Empty(t, applied)
	require.Equal(t, first, readSchema(t, db))
}

func TestApplyConcurrently(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewEmptyDatabase(t)
	const procs = 4
	var wg sync.WaitGroup
	results := make([][]int, procs)
	errs := make([]error, procs)
	start := make(chan struct{})
	for i := 0; i < procs; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Separate pools: separate sessions, like separate processes.
			pool, err := pgxpool.NewWithConfig(ctx, db.Config(t))
			if err != nil {
				errs[i] = err
				return
			}
			defer pool.Close()
			<-start
			results[i], errs[i] = migrations.Apply(ctx, pool, migrations.DefaultConfig())
		}()
	}
	close(start)
	wg.Wait()
	total := 0
	for i := range errs {
		require.NoError(t, errs[i])
		total += len(results[i])
	}
	require.Equal(t, 2, total, "every migration ran exactly once")
	checkSchema(t, readSchema(t, db))
}

func TestCustomNamesAndSQL(t *testing.T) {
	t.Parallel()
	cfg := migrations.Config{EventsTable: "shop.Events", CheckpointsTable: "shop_checkpoints"}
	sql, err := migrations.SQL(cfg)
	require.NoError(t, err)
	require.Contains(t, sql, `CREATE TABLE "shop"."Events"`)
	require.Contains(t, sql, `CREATE TABLE "shop_checkpoints"`)
	require.Contains(t, sql, `CREATE TABLE "aggregate_heads"`)
	k := sqlname.AppendLockKey(sqlname.MustParse("shop.Events"))
	require.Contains(t, sql, "'"+itoa(k)+"'")
	require.NotContains(t, sql, "{{")

	ctx := ctxT(t)
	db := pgtest.NewEmptyDatabase(t)
	_, err = db.Pool.Exec(ctx, `CREATE SCHEMA shop`)
	require.NoError(t, err)
	applied, err := migrations.Apply(ctx, db.Pool, cfg)
	require.NoError(t, err)
	require.Len(t, applied, 2)
	// A second events table in the same database is migrated independently.
	applied, err = migrations.Apply(ctx, db.Pool, migrations.Config{EventsTable: "other_events", AggregateHeadsTable: "other_heads",
		CheckpointsTable: "other_checkpoints", DeadLettersTable: "other_dead_letters", NodesTable: "other_nodes"})
	require.NoError(t, err)
	require.Len(t, applied, 2)
}

func TestInvalidNames(t *testing.T) {
	t.Parallel()
	for _, bad := range []migrations.Config{
		{EventsTable: "events; DROP TABLE x"},
		{AggregateHeadsTable: "a b"},
		{CheckpointsTable: `x"y`},
		{DeadLettersTable: "a.b.c"},
		{MigrationsTable: "0abc"},
		{NodesTable: "no-des"},
	} {
		_, err := migrations.SQL(bad)
		require.ErrorIs(t, err, sqlname.ErrInvalidName)
		_, err = migrations.Apply(context.Background(), nil, bad)
		require.ErrorIs(t, err, sqlname.ErrInvalidName, "names are checked before the database is touched")
	}
}

func itoa(k int64) string { return strconv.FormatInt(k, 10) }
