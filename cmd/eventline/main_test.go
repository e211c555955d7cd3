package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/checkpoint"
	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/eventstore/postgres"
	"github.com/eventline/eventline/internal/pgtest"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden with the current output")

func TestMain(m *testing.M) { pgtest.Main(m) }

type result struct {
	stdout, stderr string
	code           int
}

// noEnv is a getenv with nothing set.
func noEnv(string) string { return "" }

// cli runs the CLI in-process with an empty environment. A non-zero now replaces the database's
// clock, so that ages and lags are exact.
func cli(t *testing.T, now time.Time, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	a := newApp(&out, &errOut, noEnv)
	if !now.IsZero() {
		a.now = func() time.Time { return now }
	}
	code := a.main(t.Context(), args)
	return result{stdout: out.String(), stderr: errOut.String(), code: code}
}

// runCLI runs the CLI through run, exactly as main does.
func runCLI(t *testing.T, getenv func(string) string, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(t.Context(), args, &out, &errOut, getenv)
	return result{stdout: out.String(), stderr: errOut.String(), code: code}
}

func requireOK(t *testing.T, r result) {
	t.Helper()
	require.Equal(t, 0, r.code, "stderr: %s", r.stderr)
	require.Empty(t, r.stderr)
}

// golden compares got with testdata/name.golden, or rewrites that file with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		require.NoError(t, os.MkdirAll("testdata", 0o755))
		require.NoError(t, os.WriteFile(path, []byte(got), 0o644))
		return
	}
	want, err := os.ReadFile(path)
	require.NoError(t, err, "run go test ./cmd/eventline -update to create it")
	require.Equal(t, string(want), got, "output differs from %s (go test ./cmd/eventline -update rewrites it)", path)
}

var timestampRE = regexp.MustCompile(`"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z"`)

// normalizeTimes replaces the JSON timestamps, which the database sets.
func normalizeTimes(s string) string { return timestampRE.ReplaceAllString(s, `"<time>"`) }

// fixture is a database with events, checkpoints in every state, dead letters and live nodes.
type fixture struct {
	db  *pgtest.Database
	cps *checkpoint.Store
	// now is the clock the CLI is given: event i (position i, 1..10) was created 10*(11-i)s
	// before it.
	now    time.Time
	events []eventstore.PersistedEvent
}

const longError = "apply Placed to totals: ERROR: duplicate key value violates unique constraint \"totals_pkey\" (SQLSTATE 23505)\n\tat totals.go:42"

func newFixture(t *testing.T) *fixture {
	t.Helper()
	ctx := t.Context()
	f := &fixture{db: pgtest.NewDatabase(t), now: time.Now().UTC().Truncate(time.Second)}
	db := f.db.Pool
	var err error
	f.cps, err = checkpoint.New(checkpoint.Config{})
	require.NoError(t, err)

	evs := make([]eventstore.Event, 10)
	for i := range evs {
		evs[i] = eventstore.Event{
			AggregateType: "order", AggregateID: "o-1", EventType: "Placed", Payload: []byte(`{}`),
			EventID:   uuid.MustParse(fmt.Sprintf("01900000-0000-7000-8000-%012d", i+1)),
			CreatedAt: f.now.Add(-time.Duration(10-i) * 10 * time.Second),
		}
	}
	res, err := postgres.NewStore(nil).Append(ctx, db, eventstore.NoStream(), evs)
	require.NoError(t, err)
	require.Equal(t, []int64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, res.GlobalPositions())
	for i, ev := range evs {
		f.events = append(f.events, eventstore.PersistedEvent{Event: ev, GlobalPosition: int64(i + 1), AggregateVersion: int64(i + 1)})
	}

	// orders: running with lag, owned by node-a.
	orders := checkpoint.Key{Projection: "orders"}
	require.NoError(t, f.cps.Ensure(ctx, db, orders, 4, checkpoint.Running))
	claim(t, f.cps, db, orders, "node-a")
	// search v2 in two partitions: one caught up and owned, one whose owner's lease ran out.
	search0 := checkpoint.Key{Projection: "search", Version: 2, Partitions: 2, Partition: 0}
	search1 := checkpoint.Key{Projection: "search", Version: 2, Partitions: 2, Partition: 1}
	require.NoError(t, f.cps.Ensure(ctx, db, search0, 10, checkpoint.Running))
	require.NoError(t, f.cps.Ensure(ctx, db, search1, 8, checkpoint.Running))
	claim(t, f.cps, db, search0, "node-b")
	claim(t, f.cps, db, search1, "node-gone")
	_, err = db.Exec(ctx, `UPDATE eventline_checkpoints SET lease_until = now() - interval '1 minute' WHERE owner = 'node-gone'`)
	require.NoError(t, err)
	// totals: stopped at the event at position 7.
	totals := checkpoint.Key{Projection: "totals"}
	require.NoError(t, f.cps.Ensure(ctx, db, totals, 6, checkpoint.Running))
	require.NoError(t, pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		return f.cps.Stop(ctx, tx, totals, 6, 6, 7, longError)
	}))
	// mailer: paused, caught up.
	require.NoError(t, f.cps.Ensure(ctx, db, checkpoint.Key{Projection: "mailer"}, 10, checkpoint.Paused))

	// Dead letters 1 and 2 for orders (2 parked twice, which uses up ID 3), 4 for search partition 1.
	require.NoError(t, pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		for _, p := range []struct {
			key checkpoint.Key
			pos int
			err string
		}{
			{orders, 2, "payment service: 503 Service Unavailable"},
			{orders, 3, "first failure"},
			{orders, 3, "customer not found: " + longError},
			{search1, 5, "index write failed"},
		} {
			if err := f.cps.Park(ctx, tx, p.key, f.events[p.pos-1], p.err); err != nil {
				return err
			}
		}
		return nil
	}))
	_, err = db.Exec(ctx, `UPDATE eventline_dead_letters SET created_at = '2026-01-02T03:04:05Z'::timestamptz + id * interval '1 minute'`)
	require.NoError(t, err)

	// Two live runner processes.
	require.NoError(t, f.cps.Heartbeat(ctx, db, checkpoint.Node{ID: "node-a", Hostname: "host-a", PID: 101, Projections: []string{"orders@1", "totals@1"}}))
	require.NoError(t, f.cps.Heartbeat(ctx, db, checkpoint.Node{ID: "node-b", Hostname: "host-b", PID: 202, Projections: []string{"search@2"}}))
	_, err = db.Exec(ctx, `UPDATE eventline_nodes SET heartbeat_at = $1::timestamptz - CASE node_id WHEN 'node-a' THEN interval '2 seconds' ELSE interval '3.5 seconds' END`, f.now)
	require.NoError(t, err)
	return f
}

func claim(t *testing.T, cps *checkpoint.Store, db eventstore.DBTX, key checkpoint.Key, owner string) {
	t.Helper()
	ok, err := cps.Claim(t.Context(), db, key, owner, time.Hour)
	require.NoError(t, err)
	require.True(t, ok)
}

// cli runs the CLI on the fixture's database, with the fixture's clock.
func (f *fixture) cli(t *testing.T, args ...string) result {
	t.Helper()
	return cli(t, f.now, append([]string{"--database-url", f.db.URL}, args...)...)
}

func TestStatus(t *testing.T) {
	t.Parallel()
	f := newFixture(t)

	r := f.cli(t, "status")
	requireOK(t, r)
	golden(t, "status", r.stdout)

	r = f.cli(t, "status", "--json")
	requireOK(t, r)
	golden(t, "status_json", normalizeTimes(r.stdout))

	// The global flags may also come after the command.
	r2 := cli(t, f.now, "status", "--database-url", f.db.URL, "--json")
	requireOK(t, r2)
	require.Equal(t, r.stdout, r2.stdout)
}

// Without a fixed clock, ages are measured with the database's clock.
func TestStatusDatabaseClock(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	r := cli(t, time.Time{}, "--database-url", f.db.URL, "status", "--json")
	requireOK(t, r)
	var s snapshot
	require.NoError(t, jsonUnmarshal(r.stdout, &s))
	require.WithinDuration(t, time.Now(), s.Time, time.Minute)
	require.Len(t, s.Projections, 5)
	orders := s.Projections[1]
	require.Equal(t, "orders", orders.Projection)
	require.Equal(t, "node-a", orders.Owner)
	require.InDelta(t, 60, orders.LagSeconds, 10)
	require.Len(t, s.Nodes, 2)
	require.InDelta(t, 2, s.Nodes[0].HeartbeatAgeSeconds, 10)
}

func TestStatusEmpty(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDatabase(t)
	r := cli(t, time.Now(), "--database-url", db.URL, "status")
	requireOK(t, r)
	golden(t, "status_empty", r.stdout)

	r = cli(t, time.Now(), "--database-url", db.URL, "status", "--json")
	requireOK(t, r)
	golden(t, "status_empty_json", normalizeTimes(r.stdout))
}

// frameWriter cancels the watch after frames writes.
type frameWriter struct {
	bytes.Buffer
	frames int
	cancel context.CancelFunc
}

func (w *frameWriter) Write(p []byte) (int, error) {
	n, err := w.Buffer.Write(p)
	if w.frames--; w.frames == 0 {
		w.cancel()
	}
	return n, err
}

func TestStatusWatch(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	once := f.cli(t, "status")
	requireOK(t, once)

	watch := func(t *testing.T, terminal bool, args ...string) string {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		out := &frameWriter{frames: 3, cancel: cancel}
		var errOut bytes.Buffer
		a := newApp(out, &errOut, noEnv)
		a.now = func() time.Time { return f.now }
		a.terminal = terminal
		code := a.main(ctx, append([]string{"--database-url", f.db.URL, "status", "--watch", "--interval", "10ms"}, args...))
		require.Equal(t, 0, code, "stderr: %s", errOut.String())
		require.Empty(t, errOut.String())
		return out.String()
	}

	t.Run("table", func(t *testing.T) {
		require.Equal(t, once.stdout+"\n"+once.stdout+"\n"+once.stdout, watch(t, false))
	})
	t.Run("terminal", func(t *testing.T) {
		out := watch(t, true)
		frames := bytes.Split([]byte(out), []byte("\033[H\033[2J"))
		require.Len(t, frames, 4)
		require.Empty(t, frames[0])
		for _, fr := range frames[1:] {
			require.Regexp(t, `^eventline status, every 10ms \(Ctrl-C to stop\)   \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\n\n`, string(fr))
			require.Contains(t, string(fr), once.stdout)
		}
	})
	t.Run("json", func(t *testing.T) {
		out := watch(t, false, "--json")
		lines := bytes.Split(bytes.TrimSuffix([]byte(out), []byte("\n")), []byte("\n"))
		require.Len(t, lines, 3)
		for _, l := range lines {
			var s snapshot
			require.NoError(t, jsonUnmarshal(string(l), &s))
			require.Len(t, s.Projections, 5)
		}
	})
}

func TestDeadLetters(t *testing.T) {
	t.Parallel()
	f := newFixture(t)

	r := f.cli(t, "dead-letters", "list")
	requireOK(t, r)
	golden(t, "dead_letters_list", r.stdout)

	r = f.cli(t, "dead-letters", "list", "--projection", "search", "--json")
	requireOK(t, r)
	golden(t, "dead_letters_list_json", r.stdout)

	r = f.cli(t, "dead-letters", "list", "--projection", "nope")
	requireOK(t, r)
	require.Equal(t, "no dead letters\n", r.stdout)
	r = f.cli(t, "dead-letters", "list", "--projection", "nope", "--json")
	requireOK(t, r)
	require.Equal(t, "[]\n", r.stdout)

	r = f.cli(t, "dead-letters", "retry", "2")
	requireOK(t, r)
	golden(t, "dead_letters_retry", r.stdout)
	dls, err := f.cps.DeadLetters(t.Context(), f.db.Pool, "orders")
	require.NoError(t, err)
	require.Len(t, dls, 2)
	require.False(t, dls[0].RetryRequested)
	require.True(t, dls[1].RetryRequested)

	r = f.cli(t, "dead-letters", "discard", "1")
	requireOK(t, r)
	golden(t, "dead_letters_discard", r.stdout)
	dls, err = f.cps.DeadLetters(t.Context(), f.db.Pool, "")
	require.NoError(t, err)
	require.Len(t, dls, 2)
	require.Equal(t, []int64{2, 4}, []int64{dls[0].ID, dls[1].ID})

	r = f.cli(t, "dead-letters", "list")
	requireOK(t, r)
	golden(t, "dead_letters_list_after", r.stdout)

	for _, verb := range []string{"retry", "discard"} {
		r = f.cli(t, "dead-letters", verb, "1")
		require.Equal(t, exitNotFound, r.code, verb)
		require.Equal(t, "eventline: "+map[string]string{"retry": "request retry of", "discard": "delete"}[verb]+
			" dead letter 1: checkpoint: not found\n", r.stderr)
		require.Empty(t, r.stdout)
	}
}

func TestPauseResume(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	state := func(key checkpoint.Key) checkpoint.Checkpoint {
		cp, err := f.cps.Get(t.Context(), f.db.Pool, key)
		require.NoError(t, err)
		return cp
	}

	r := f.cli(t, "pause", "search")
	requireOK(t, r)
	golden(t, "pause", r.stdout)
	require.Equal(t, checkpoint.Paused, state(checkpoint.Key{Projection: "search", Version: 2, Partitions: 2, Partition: 1}).State)

	r = f.cli(t, "resume", "totals")
	requireOK(t, r)
	golden(t, "resume", r.stdout)
	cp := state(checkpoint.Key{Projection: "totals"})
	require.Equal(t, checkpoint.Running, cp.State)
	require.Empty(t, cp.LastError)

	r = f.cli(t, "status")
	requireOK(t, r)
	golden(t, "status_after_pause_resume", r.stdout)

	for _, cmd := range []string{"pause", "resume"} {
		r = f.cli(t, cmd, "nope")
		require.Equal(t, exitNotFound, r.code)
		require.Contains(t, r.stderr, "eventline: set nope ")
		require.Contains(t, r.stderr, "checkpoint: not found")
	}
}

func TestRebuild(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	r := f.cli(t, "rebuild", "search")
	requireOK(t, r)
	golden(t, "rebuild", r.stdout)
	for _, p := range []int{0, 1} {
		cp, err := f.cps.Get(t.Context(), f.db.Pool, checkpoint.Key{Projection: "search", Version: 2, Partitions: 2, Partition: p})
		require.NoError(t, err)
		require.True(t, cp.RebuildRequested)
	}
	r = f.cli(t, "status", "--json")
	requireOK(t, r)
	require.Contains(t, r.stdout, `"rebuild_requested": true`)

	r = f.cli(t, "rebuild", "nope")
	require.Equal(t, exitNotFound, r.code)
	require.Equal(t, "eventline: request rebuild of nope: checkpoint: not found\n", r.stderr)
}

func TestMigrate(t *testing.T) {
	t.Parallel()
	db := pgtest.NewEmptyDatabase(t)

	// Before migrating, status fails with a hint.
	r := cli(t, time.Time{}, "--database-url", db.URL, "status")
	require.Equal(t, exitError, r.code)
	require.Contains(t, r.stderr, `does not exist`)
	require.Contains(t, r.stderr, "eventline migrate")

	r = cli(t, time.Time{}, "--database-url", db.URL, "migrate")
	requireOK(t, r)
	golden(t, "migrate", r.stdout)
	r = cli(t, time.Time{}, "--database-url", db.URL, "migrate")
	requireOK(t, r)
	require.Equal(t, "schema is up to date\n", r.stdout)

	r = cli(t, time.Now(), "--database-url", db.URL, "status")
	requireOK(t, r)
	golden(t, "status_empty", r.stdout)
}

func TestMigrateCustomTables(t *testing.T) {
	t.Parallel()
	db := pgtest.NewEmptyDatabase(t)
	flags := []string{"--database-url", db.URL, "--events-table", "ev", "--checkpoints-table", "cp",
		"--dead-letters-table", "dl", "--nodes-table", "nd"}
	r := cli(t, time.Time{}, append(flags, "migrate", "--aggregate-heads-table", "heads", "--migrations-table", "mig")...)
	requireOK(t, r)
	var tables []string
	rows, err := db.Pool.Query(t.Context(), `SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1`)
	require.NoError(t, err)
	tables, err = pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.Equal(t, []string{"cp", "dl", "ev", "heads", "mig", "nd"}, tables)

	r = cli(t, time.Now(), append(flags, "status")...)
	requireOK(t, r)
	golden(t, "status_empty", r.stdout)
}

func TestMigratePrint(t *testing.T) {
	t.Parallel()
	r := runCLI(t, noEnv, "migrate", "--print") // no database
	requireOK(t, r)
	require.Contains(t, r.stdout, "-- eventline migration 0001_events.sql\n")
	require.Contains(t, r.stdout, `CREATE TABLE "events"`)
	require.Contains(t, r.stdout, `CREATE TABLE "eventline_checkpoints"`)

	r = runCLI(t, noEnv, "--events-table", "app.events", "migrate", "--print")
	requireOK(t, r)
	require.Contains(t, r.stdout, `CREATE TABLE "app"."events"`)
}

func TestHelp(t *testing.T) {
	t.Parallel()
	r := runCLI(t, noEnv, "--help")
	requireOK(t, r)
	golden(t, "help", r.stdout)
	for _, args := range [][]string{{"-h"}, {"help"}, {"help", "help"}} {
		r2 := runCLI(t, noEnv, args...)
		requireOK(t, r2)
		require.Equal(t, r.stdout, r2.stdout, args)
	}

	for _, cmd := range [][]string{
		{"migrate"}, {"status"}, {"rebuild"}, {"pause"}, {"resume"},
		{"dead-letters", "list"}, {"dead-letters", "retry"}, {"dead-letters", "discard"},
	} {
		r := runCLI(t, noEnv, append(cmd, "--help")...)
		requireOK(t, r)
		require.Contains(t, r.stdout, "Usage: eventline "+strings.Join(cmd, " ")+" ")
		require.Contains(t, r.stdout, "Exit codes:")
		r2 := runCLI(t, noEnv, append([]string{"help"}, cmd...)...)
		requireOK(t, r2)
		require.Equal(t, r.stdout, r2.stdout)
	}
	r = runCLI(t, noEnv, "status", "--help")
	golden(t, "help_status", r.stdout)
	r = runCLI(t, noEnv, "dead-letters", "--help")
	requireOK(t, r)
	golden(t, "help_dead_letters", r.stdout)
}

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }

func TestExitCodes(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDatabase(t)
	env := func(k string) string {
		if k == "DATABASE_URL" {
			return db.URL
		}
		return ""
	}
	closed := closedPortURL(t)

	for _, tc := range []struct {
		name   string
		getenv func(string) string
		args   []string
		code   int
		stderr string // prefix
	}{
		{"no command", noEnv, nil, exitUsage, "eventline: no command given\nRun 'eventline --help' for usage.\n"},
		{"unknown command", env, []string{"frobnicate"}, exitUsage, "eventline: unknown command \"frobnicate\"\n"},
		{"bad global flag", env, []string{"--nope", "status"}, exitUsage, "eventline: flag provided but not defined: -nope\n"},
		{"bad flag", env, []string{"status", "--nope"}, exitUsage, "eventline: status: flag provided but not defined: -nope\nRun 'eventline status --help' for usage.\n"},
		{"bad interval", env, []string{"status", "--interval", "0s"}, exitUsage, "eventline: status: --interval must be positive"},
		{"missing URL", noEnv, []string{"status"}, exitUsage, "eventline: no database: set --database-url or DATABASE_URL\n"},
		{"bad URL", noEnv, []string{"--database-url", "postgres://x:y@:notaport/db", "status"}, exitUsage, "eventline: database URL: "},
		{"missing argument", env, []string{"rebuild"}, exitUsage, "eventline: rebuild: missing projection name\n"},
		{"extra argument", env, []string{"pause", "a", "b"}, exitUsage, "eventline: pause: unexpected argument \"b\""},
		{"flag after argument", env, []string{"rebuild", "a", "--json"}, exitUsage, "eventline: rebuild: unexpected argument \"--json\""},
		{"missing dead letter command", env, []string{"dead-letters"}, exitUsage, "eventline: dead-letters: missing command"},
		{"unknown dead letter command", env, []string{"dead-letters", "purge"}, exitUsage, "eventline: dead-letters: unknown command \"purge\""},
		{"bad dead letter ID", env, []string{"dead-letters", "retry", "x1"}, exitUsage, "eventline: dead-letters retry: invalid dead letter ID \"x1\""},
		{"invalid table name", env, []string{"--events-table", "bad-name", "status"}, exitUsage, "eventline: invalid SQL name: events table \"bad-name\""},
		{"invalid table name in migrate", noEnv, []string{"--nodes-table", "a.b.c", "migrate", "--print"}, exitUsage, "eventline: migrations config: invalid SQL name: nodes table"},
		{"unknown projection", env, []string{"rebuild", "nope"}, exitNotFound, "eventline: request rebuild of nope: checkpoint: not found\n"},
		{"unknown dead letter", env, []string{"dead-letters", "discard", "42"}, exitNotFound, "eventline: delete dead letter 42: checkpoint: not found\n"},
		{"unreachable database", noEnv, []string{"--database-url", closed, "status"}, exitError, "eventline: connect: "},
		{"success", env, []string{"status"}, exitOK, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := runCLI(t, tc.getenv, tc.args...)
			require.Equal(t, tc.code, r.code, "stderr: %s", r.stderr)
			if tc.stderr == "" {
				require.Empty(t, r.stderr)
			} else {
				require.True(t, len(r.stderr) >= len(tc.stderr) && r.stderr[:len(tc.stderr)] == tc.stderr,
					"stderr %q does not start with %q", r.stderr, tc.stderr)
			}
			if tc.code != exitOK {
				require.Empty(t, r.stdout)
			}
		})
	}
}

// closedPortURL is a database URL whose port nothing listens on.
func closedPortURL(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	return "postgres://eventline@" + addr + "/eventline?connect_timeout=2&sslmode=disable"
}
