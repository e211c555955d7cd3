package migrations_test

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline"
	"github.com/eventline/eventline/internal/lifecycle"
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

// readColumnsAndIndexes describes every column and index of the public schema, in an order that
// does not depend on how the tables came to be.
func readColumnsAndIndexes(t *testing.T, db *pgtest.Database) []string {
	t.Helper()
	rows, err := db.Pool.Query(ctxT(t), `
		SELECT table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable || ' ' || coalesce(column_default, '')
		FROM information_schema.columns WHERE table_schema = 'public'
		UNION ALL
		SELECT indexdef FROM pg_indexes WHERE schemaname = 'public'
		ORDER BY 1`)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return out
}

func checkSchema(t *testing.T, s schema) {
	t.Helper()
	require.Equal(t, []string{"aggregate_heads", "eventline_checkpoints", "eventline_dead_letters", "eventline_migrations",
		"eventline_nodes", "eventline_projections", "events"}, s.Tables)
	require.Len(t, s.Triggers, 1)
	require.Contains(t, s.Triggers[0], "eventline_append_lock:CREATE TRIGGER eventline_append_lock BEFORE INSERT ON public.events FOR EACH STATEMENT")
	require.EqualValues(t, 1, s.SeqCache)
	files, err := migrations.Files(eventline.Names{})
	require.NoError(t, err)
	require.EqualValues(t, len(files), s.AppliedRows)
}

// versions lists the versions of the embedded migrations, those before until (all with 0).
func versions(t *testing.T, until int) []int {
	t.Helper()
	files, err := migrations.Files(eventline.Names{})
	require.NoError(t, err)
	var out []int
	for _, m := range files {
		if until == 0 || m.Version < until {
			out = append(out, m.Version)
		}
	}
	return out
}

func TestApplyTwice(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewEmptyDatabase(t)
	applied, err := migrations.Apply(ctx, db.Pool, eventline.Names{})
	require.NoError(t, err)
	require.Equal(t, versions(t, 0), applied)
	require.Contains(t, applied, 4)
	first := readSchema(t, db)
	checkSchema(t, first)

	applied, err = migrations.Apply(ctx, db.Pool, eventline.Names{})
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
			results[i], errs[i] = migrations.Apply(ctx, pool, eventline.Names{})
		}()
	}
	close(start)
	wg.Wait()
	total := 0
	for i := range errs {
		require.NoError(t, errs[i])
		total += len(results[i])
	}
	require.Equal(t, len(versions(t, 0)), total, "every migration ran exactly once")
	checkSchema(t, readSchema(t, db))
}

func TestCustomNamesAndSQL(t *testing.T) {
	t.Parallel()
	cfg := eventline.Names{EventsTable: "shop.Events", CheckpointsTable: "shop_checkpoints"}
	sql, err := migrations.SQL(cfg)
	require.NoError(t, err)
	require.Contains(t, sql, `CREATE TABLE "shop"."Events"`)
	require.Contains(t, sql, `CREATE TABLE "shop_checkpoints"`)
	require.Contains(t, sql, `CREATE TABLE "aggregate_heads"`)
	require.Contains(t, sql, `CREATE TABLE "eventline_projections"`)
	k := sqlname.AppendLockKey(sqlname.MustParse("shop.Events"))
	require.Contains(t, sql, "'"+itoa(k)+"'")
	require.NotContains(t, sql, "{{")

	ctx := ctxT(t)
	db := pgtest.NewEmptyDatabase(t)
	_, err = db.Pool.Exec(ctx, `CREATE SCHEMA shop`)
	require.NoError(t, err)
	applied, err := migrations.Apply(ctx, db.Pool, cfg)
	require.NoError(t, err)
	require.Equal(t, versions(t, 0), applied)
	// A second events table in the same database is migrated independently.
	applied, err = migrations.Apply(ctx, db.Pool, eventline.Names{EventsTable: "other_events", AggregateHeadsTable: "other_heads",
		CheckpointsTable: "other_checkpoints", DeadLettersTable: "other_dead_letters", NodesTable: "other_nodes",
		ProjectionsTable: "shop.projections"})
	require.NoError(t, err)
	require.Equal(t, versions(t, 0), applied)
	var n int
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT count(*) FROM shop.projections`).Scan(&n))
}

func TestInvalidNames(t *testing.T) {
	t.Parallel()
	for _, bad := range []eventline.Names{
		{EventsTable: "events; DROP TABLE x"},
		{AggregateHeadsTable: "a b"},
		{CheckpointsTable: `x"y`},
		{DeadLettersTable: "a.b.c"},
		{MigrationsTable: "0abc"},
		{NodesTable: "no-des"},
		{ProjectionsTable: "pro jections"},
	} {
		_, err := migrations.SQL(bad)
		require.ErrorIs(t, err, sqlname.ErrInvalidName)
		_, err = migrations.Apply(context.Background(), nil, bad)
		require.ErrorIs(t, err, sqlname.ErrInvalidName, "names are checked before the database is touched")
	}
}

func itoa(k int64) string { return strconv.FormatInt(k, 10) }

// A database migrated before the lifecycle records (0004) keeps what its checkpoints' state
// column said: which layout serves, the change in progress, the operator's pause.
func TestUpgradeToLifecycleRecords(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewEmptyDatabase(t)
	cfg := eventline.Names{}.WithDefaults()
	files, err := migrations.Files(cfg)
	require.NoError(t, err)

	// The schema as it was: the migrations before 0004, recorded as Apply records them.
	exec := func(sql string, args ...any) {
		t.Helper()
		_, err := db.Pool.Exec(ctx, sql, args...)
		require.NoError(t, err)
	}
	exec(`CREATE TABLE eventline_migrations (events_table text NOT NULL, version integer NOT NULL, name text NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (events_table, version))`)
	var old []int
	for _, m := range files {
		if m.Version >= 4 {
			continue
		}
		exec(m.SQL)
		exec(`INSERT INTO eventline_migrations (events_table, version, name) VALUES ('events', $1, $2)`, m.Version, m.Name)
		old = append(old, m.Version)
	}
	require.Equal(t, versions(t, 4), old)

	// Rows in the old style.
	exec(`INSERT INTO events (event_id, aggregate_type, aggregate_id, aggregate_version, event_type, payload)
		SELECT gen_random_uuid(), 'order', 'o-' || (g % 3), g, 'Placed', '\x'::bytea FROM generate_series(1, 10) g`)
	exec(`INSERT INTO eventline_checkpoints (projection, version, partitions, partition, position, state, stop_at,
			last_error, failed_position, rebuild_requested) VALUES
		-- resize: v1/2 drains to 9 while v1/4 waits to start from there.
		('resize', 1, 2, 0, 7, 'running', 9, NULL, NULL, false),
		('resize', 1, 2, 1, 9, 'running', 9, NULL, NULL, false),
		('resize', 1, 4, 0, 9, 'waiting', NULL, NULL, NULL, false),
		('resize', 1, 4, 1, 9, 'waiting', NULL, NULL, NULL, false),
		('resize', 1, 4, 2, 9, 'waiting', NULL, NULL, NULL, false),
		('resize', 1, 4, 3, 9, 'waiting', NULL, NULL, NULL, false),
		-- held: paused by an operator while its partition count changed.
		('held', 1, 1, 0, 4, 'paused', 6, NULL, NULL, false),
		('held', 1, 3, 0, 6, 'waiting', NULL, NULL, NULL, false),
		('held', 1, 3, 1, 6, 'waiting', NULL, NULL, NULL, false),
		('held', 1, 3, 2, 6, 'waiting', NULL, NULL, NULL, false),
		-- paused: paused by an operator.
		('paused', 1, 1, 0, 5, 'paused', NULL, NULL, NULL, false),
		-- upgraded: v2 took over from v1.
		('upgraded', 1, 1, 0, 10, 'retired', NULL, NULL, NULL, false),
		('upgraded', 2, 1, 0, 10, 'running', NULL, NULL, NULL, false),
		-- building: v2 replays beside v1.
		('building', 1, 1, 0, 10, 'running', NULL, NULL, NULL, false),
		('building', 2, 1, 0, 3, 'building', NULL, NULL, NULL, false),
		-- stopped: a handler failed on the event at 6.
		('stopped', 1, 1, 0, 5, 'stopped', NULL, 'boom', 6, false)`)
	exec(`INSERT INTO eventline_dead_letters (projection, version, partitions, partition, global_position, event_id, error) VALUES
		('resize', 1, 2, 1, 4, gen_random_uuid(), 'bad'),
		('resize', 1, 2, 0, 99, gen_random_uuid(), 'event gone')`)

	// 0004 to 0006 as Apply runs them: 0007 refuses this database (below).
	for _, m := range files {
		if m.Version < 4 || m.Version >= 7 {
			continue
		}
		exec(m.SQL)
		exec(`INSERT INTO eventline_migrations (events_table, version, name) VALUES ('events', $1, $2)`, m.Version, m.Name)
	}

	lc := lifecycle.New(cfg)
	type record struct {
		Active, Target lifecycle.Layout
		Mode           lifecycle.Mode
		Barrier        int64
		Paused         bool
	}
	want := map[string]record{
		"building": {Active: lifecycle.Layout{Version: 1, Partitions: 1}, Target: lifecycle.Layout{Version: 2, Partitions: 1},
			Mode: lifecycle.Build, Barrier: -1},
		"held": {Active: lifecycle.Layout{Version: 1, Partitions: 1}, Target: lifecycle.Layout{Version: 1, Partitions: 3},
			Mode: lifecycle.Switch, Barrier: 6, Paused: true},
		"paused": {Active: lifecycle.Layout{Version: 1, Partitions: 1}, Barrier: -1, Paused: true},
		"resize": {Active: lifecycle.Layout{Version: 1, Partitions: 2}, Target: lifecycle.Layout{Version: 1, Partitions: 4},
			Mode: lifecycle.Switch, Barrier: 9},
		"stopped":  {Active: lifecycle.Layout{Version: 1, Partitions: 1}, Barrier: -1},
		"upgraded": {Active: lifecycle.Layout{Version: 2, Partitions: 1}, Barrier: -1},
	}
	var count int
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT count(*) FROM eventline_projections`).Scan(&count))
	require.Equal(t, len(want), count)
	for name, w := range want {
		r, err := lc.Get(ctx, db.Pool, name)
		require.NoError(t, err)
		require.Equal(t, w, record{r.Active, r.Target, r.Mode, r.Barrier, r.Paused}, name)
		require.False(t, r.RebuildPending(), name)
	}

	// The rows of the layouts that serve stay, with their positions and failures; the retired
	// version's go.
	rows, err := db.Pool.Query(ctx, `SELECT projection || '@' || version || '#' || partition || '/' || partitions || ':' || position
		|| coalesce(' failed at ' || failed_position || ': ' || last_error, '')
		FROM eventline_checkpoints ORDER BY projection, version, partitions, partition`)
	require.NoError(t, err)
	cps, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.Equal(t, []string{
		"building@1#0/1:10", "building@2#0/1:3",
		"held@1#0/1:4", "held@1#0/3:6", "held@1#1/3:6", "held@1#2/3:6",
		"paused@1#0/1:5",
		"resize@1#0/2:7", "resize@1#1/2:9", "resize@1#0/4:9", "resize@1#1/4:9", "resize@1#2/4:9", "resize@1#3/4:9",
		"stopped@1#0/1:5 failed at 6: boom",
		"upgraded@2#0/1:10",
	}, cps)
	rows, err = db.Pool.Query(ctx, `SELECT column_name FROM information_schema.columns
		WHERE table_name = 'eventline_checkpoints' AND column_name IN ('state', 'stop_at', 'rebuild_requested')`)
	require.NoError(t, err)
	gone, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.Empty(t, gone)

	// Dead letters carry their event's aggregate; one whose event is gone is dropped.
	rows, err = db.Pool.Query(ctx, `SELECT projection || '@' || version || ':' || global_position || ' ' || aggregate_type
		|| '/' || aggregate_id FROM eventline_dead_letters ORDER BY id`)
	require.NoError(t, err)
	dls, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.Equal(t, []string{"resize@1:4 order/o-1"}, dls)

	// 0007 changes the partition hash: partitioned projections must be drained to one partition
	// first, and the upgrade says so rather than letting their aggregates change partition.
	_, err = migrations.Apply(ctx, db.Pool, cfg)
	require.ErrorContains(t, err, "held (3 partitions), resize (4 partitions)")
	require.ErrorContains(t, err, "Partitions() = 1")
	exec(`UPDATE eventline_projections SET active_partitions = 1, target_version = NULL, target_partitions = NULL,
		target_mode = NULL, barrier = NULL WHERE projection IN ('held', 'resize')`)
	exec(`DELETE FROM eventline_checkpoints WHERE projection IN ('held', 'resize') AND partitions > 1`)
	exec(`INSERT INTO eventline_checkpoints (projection, version, partitions, partition, position) VALUES ('resize', 1, 1, 0, 9)`)
	applied, err := migrations.Apply(ctx, db.Pool, cfg)
	require.NoError(t, err)
	require.Equal(t, versions(t, 0)[len(versions(t, 7)):], applied)

	// And the upgraded schema is the one a new database gets.
	checkSchema(t, readSchema(t, db))
	require.Equal(t, readColumnsAndIndexes(t, pgtest.NewDatabase(t)), readColumnsAndIndexes(t, db))
	applied, err = migrations.Apply(ctx, db.Pool, cfg)
	require.NoError(t, err)
	require.Empty(t, applied)
}

func TestAppendFuncNames(t *testing.T) {
	t.Parallel()
	long1 := "a23456789012345678901234567890123456789012345678901234567890ab1"
	long2 := "a23456789012345678901234567890123456789012345678901234567890ab2"
	for cfg, want := range map[string]string{
		"":                `"eventline_append_events"`,
		"shop.Events":     `"shop"."eventline_append_Events"`,
		"ledger":          `"eventline_append_ledger"`,
		"app." + long1:    `"app"."eventline_append_a234567890123456789012345678901234567_`,
		"app." + long2:    `"app"."eventline_append_a234567890123456789012345678901234567_`,
		long1:             `"eventline_append_a234567890123456789012345678901234567_`,
		"x.eventline_app": `"x"."eventline_append_eventline_app"`,
	} {
		name, err := migrations.AppendFunc(eventline.Names{EventsTable: cfg})
		require.NoError(t, err)
		require.Contains(t, name, want, cfg)
		table := name[strings.LastIndex(name, `."`)+1:]
		require.LessOrEqual(t, len(table)-2, 63, "within PostgreSQL's identifier length: %s", name)
	}
	a, _ := migrations.AppendFunc(eventline.Names{EventsTable: "app." + long1})
	b, _ := migrations.AppendFunc(eventline.Names{EventsTable: "app." + long2})
	c, _ := migrations.AppendFunc(eventline.Names{EventsTable: long1})
	require.Len(t, map[string]bool{a: true, b: true, c: true}, 3, "shortened names stay distinct")
	_, err := migrations.AppendFunc(eventline.Names{EventsTable: "no good"})
	require.ErrorIs(t, err, sqlname.ErrInvalidName)
}

// Two events tables in one schema each get their own append function, writing to their own
// tables; the UUIDv7 function (the event_id default) is shared.
func TestAppendFuncPerEventsTable(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewDatabase(t) // the default tables
	other := eventline.Names{EventsTable: "other_events", AggregateHeadsTable: "other_heads", CheckpointsTable: "other_checkpoints",
		DeadLettersTable: "other_dead_letters", NodesTable: "other_nodes", ProjectionsTable: "other_projections"}
	applied, err := migrations.Apply(ctx, db.Pool, other)
	require.NoError(t, err)
	require.Equal(t, versions(t, 0), applied)
	for _, cfg := range []eventline.Names{eventline.Names{}.WithDefaults(), other.WithDefaults()} {
		fn, err := migrations.AppendFunc(cfg)
		require.NoError(t, err)
		var pos int64
		require.NoError(t, db.Pool.QueryRow(ctx, `SELECT max(global_position) FROM `+fn+`('a', $1, NULL, '[{"event_type": "x"}, {"event_type": "y"}]')`,
			cfg.EventsTable).Scan(&pos))
		var n, head int64
		require.NoError(t, db.Pool.QueryRow(ctx, `SELECT count(*) FROM `+pgx.Identifier{cfg.EventsTable}.Sanitize()+` WHERE aggregate_id = $1`,
			cfg.EventsTable).Scan(&n))
		require.EqualValues(t, 2, n, cfg.EventsTable)
		require.NoError(t, db.Pool.QueryRow(ctx, `SELECT version FROM `+pgx.Identifier{cfg.AggregateHeadsTable}.Sanitize()+` WHERE aggregate_id = $1`,
			cfg.EventsTable).Scan(&head))
		require.EqualValues(t, 2, head, cfg.AggregateHeadsTable)
	}
	var total int64
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM other_events)`).Scan(&total))
	require.EqualValues(t, 4, total)
}
