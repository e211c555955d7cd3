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
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline"
	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/eventstore/postgres"
	"github.com/eventline/eventline/internal/checkpoint"
	"github.com/eventline/eventline/internal/lifecycle"
	"github.com/eventline/eventline/internal/pgtest"
	"github.com/eventline/eventline/migrations"
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

// fixture is a database with events, projections in every state, dead letters and live nodes.
type fixture struct {
	db  *pgtest.Database
	cps *checkpoint.Store
	lc  *lifecycle.Store
	// now is the clock the CLI is given: event i (position i, 1..10) was created 10*(11-i)s
	// before it.
	now    time.Time
	events []eventstore.PersistedEvent
}

const longError = "apply Placed to totals: ERROR: duplicate key value violates unique constraint \"totals_pkey\" (SQLSTATE 23505)\n\tat totals.go:42"

func newLifecycle(t *testing.T) *lifecycle.Store {
	t.Helper()
	return lifecycle.New(eventline.Names{})
}

// newFixture creates:
//   - orders v1: running at 4 (lag 6), owned by node-a, resettable; dead letters 1 and 2 (2 was
//     parked twice, which drew no new ID);
//   - search v2 in two partitions, resettable: one caught up and owned by node-b, one at 8
//     whose owner's lease ran out; dead letters 3 and 4 (4 parked behind 3); and v3 building
//     beside it, at 3;
//   - totals v1: stopped by the event at 7, not resettable;
//   - mailer v1: a detached handler, paused, caught up;
//   - two live runner processes.
func newFixture(t *testing.T) *fixture {
	t.Helper()
	ctx := t.Context()
	f := &fixture{db: pgtest.NewDatabase(t), now: time.Now().UTC().Truncate(time.Second), lc: newLifecycle(t)}
	db := f.db.Pool
	var err error
	f.cps, err = checkpoint.New(eventline.Names{})
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

	orders := checkpoint.Key{Projection: "orders"}
	f.deploy(t, "orders", lifecycle.Code{Layout: lifecycle.Layout{Version: 1, Partitions: 1}, Resettable: true}, 1)
	f.setPosition(t, orders, 4)
	claim(t, f.cps, db, orders, "node-a")

	search0 := checkpoint.Key{Projection: "search", Version: 2, Partitions: 2, Partition: 0}
	search1 := checkpoint.Key{Projection: "search", Version: 2, Partitions: 2, Partition: 1}
	f.deploy(t, "search", lifecycle.Code{Layout: lifecycle.Layout{Version: 2, Partitions: 2}, Resettable: true}, 2)
	f.setPosition(t, search0, 10)
	f.setPosition(t, search1, 8)
	claim(t, f.cps, db, search0, "node-b")
	claim(t, f.cps, db, search1, "node-gone")
	_, err = db.Exec(ctx, `UPDATE eventline_checkpoints SET lease_until = now() - interval '1 minute' WHERE owner = 'node-gone'`)
	require.NoError(t, err)
	f.deploy(t, "search", lifecycle.Code{Layout: lifecycle.Layout{Version: 3, Partitions: 1}, Resettable: true}, 1)
	f.setPosition(t, checkpoint.Key{Projection: "search", Version: 3}, 3)

	totals := checkpoint.Key{Projection: "totals"}
	f.deploy(t, "totals", lifecycle.Code{Layout: lifecycle.Layout{Version: 1, Partitions: 1}}, 1)
	f.setPosition(t, totals, 6)
	require.NoError(t, pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		return f.cps.Stop(ctx, tx, totals, 6, 6, 7, longError)
	}))

	f.deploy(t, "mailer", lifecycle.Code{Layout: lifecycle.Layout{Version: 1, Partitions: 1}, Detached: true}, 1)
	f.setPosition(t, checkpoint.Key{Projection: "mailer"}, 10)
	require.NoError(t, pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error { return f.lc.Pause(ctx, tx, "mailer") }))

	require.NoError(t, pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		for _, p := range []struct {
			key       checkpoint.Key
			pos       int
			err       string
			blockedBy int64
		}{
			{orders, 2, "payment service: 503 Service Unavailable", 0},
			{orders, 3, "first failure", 0},
			{orders, 3, "customer not found: " + longError, 0},
			{search1, 5, "index write failed", 0},
			{search1, 6, "parked behind the event at 5", 5},
		} {
			if err := f.cps.Park(ctx, tx, p.key, &f.events[p.pos-1], p.err, p.blockedBy); err != nil {
				return err
			}
		}
		return nil
	}))
	_, err = db.Exec(ctx, `UPDATE eventline_dead_letters SET created_at = '2026-01-02T03:04:05Z'::timestamptz + id * interval '1 minute'`)
	require.NoError(t, err)

	// node-a publishes its live status (a runner does with every heartbeat): orders waits on an
	// appender; node-b is a process that publishes none.
	require.NoError(t, f.cps.Heartbeat(ctx, db, checkpoint.Node{ID: "node-a", Hostname: "host-a", PID: 101, Projections: []string{"orders@1", "totals@1"},
		Status: &checkpoint.NodeStatus{Horizon: 4, Units: []checkpoint.UnitStatus{
			{Projection: "orders", Version: 1, Partitions: 1, Owned: true, State: "running", Position: 4, EventsPerSecond: 12.5,
				LastError: "connection reset by peer",
				WaitingOn: &checkpoint.Waiting{Position: 5, AppenderPID: 4242, Transaction: "7/31", Since: f.now.Add(-2500 * time.Millisecond)}},
		}}}))
	require.NoError(t, f.cps.Heartbeat(ctx, db, checkpoint.Node{ID: "node-b", Hostname: "host-b", PID: 202, Projections: []string{"search@2", "search@3"}}))
	_, err = db.Exec(ctx, `UPDATE eventline_nodes SET heartbeat_at = $1::timestamptz - CASE node_id WHEN 'node-a' THEN interval '2 seconds' ELSE interval '3.5 seconds' END`, f.now)
	require.NoError(t, err)
	return f
}

// deploy registers code for projection name as a runner process does, with live processes that
// declare partitions.
func (f *fixture) deploy(t *testing.T, name string, code lifecycle.Code, partitions int) {
	t.Helper()
	ctx := t.Context()
	require.NoError(t, pgx.BeginFunc(ctx, f.db.Pool, func(tx pgx.Tx) error {
		_, err := f.lc.Deploy(ctx, tx, name, code, []int{partitions}, nil)
		return err
	}))
}

// setPosition moves a checkpoint, as batches applied by a runner would have.
func (f *fixture) setPosition(t *testing.T, key checkpoint.Key, position int64) {
	t.Helper()
	k := key.Normalize()
	tag, err := f.db.Pool.Exec(t.Context(), `UPDATE eventline_checkpoints SET position = $5
		WHERE projection = $1 AND version = $2 AND partitions = $3 AND partition = $4`,
		k.Projection, k.Version, k.Partitions, k.Partition, position)
	require.NoError(t, err)
	require.EqualValues(t, 1, tag.RowsAffected(), key.String())
}

// record reads projection name's lifecycle record.
func (f *fixture) record(t *testing.T, name string) lifecycle.Record {
	t.Helper()
	r, err := f.lc.Get(t.Context(), f.db.Pool, name)
	require.NoError(t, err)
	return r
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

	// Each row's role and state follow from the record and the checkpoint.
	var s snapshot
	require.NoError(t, jsonUnmarshal(r.stdout, &s))
	type rs struct{ row, role, state string }
	var got []rs
	for _, p := range s.Projections {
		got = append(got, rs{fmt.Sprintf("%s@%d#%d/%d", p.Projection, p.Version, p.Partition, p.Partitions), p.Role, p.State})
	}
	require.Equal(t, []rs{
		{"mailer@1#0/1", "active", "paused"},
		{"orders@1#0/1", "active", "running"},
		{"search@2#0/2", "active", "running"},
		{"search@2#1/2", "active", "running"},
		{"search@3#0/1", "building", "building"},
		{"totals@1#0/1", "active", "stopped"},
	}, got)
	require.Len(t, s.Lifecycle, 4)
	require.True(t, s.Lifecycle[0].Paused, "mailer")
	require.True(t, s.Lifecycle[0].Detached, "mailer")
	require.Equal(t, 3, s.Lifecycle[2].TargetVersion, "search")
	require.Equal(t, "build", s.Lifecycle[2].TargetMode, "search")
	require.Nil(t, s.Lifecycle[2].Barrier, "search")
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
	require.Len(t, s.Projections, 6)
	orders := s.Projections[1]
	require.Equal(t, "orders", orders.Projection)
	require.Equal(t, "node-a", orders.Owner)
	require.InDelta(t, 60, orders.LagSeconds, 10)
	require.Len(t, s.Nodes, 2)
	require.InDelta(t, 2, s.Nodes[0].HeartbeatAgeSeconds, 10)
}

// A partition change in progress, a barrier and a refused rebuild show in the projection lines.
func TestStatusLayoutChanges(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := t.Context()
	// orders' runners now declare 4 partitions: the switch to v1/4 drains v1/1 to 4.
	f.deploy(t, "orders", lifecycle.Code{Layout: lifecycle.Layout{Version: 1, Partitions: 4}, Resettable: true}, 4)
	// search's build of v3 has come close: v2 stops at 10 for the cut-over.
	_, err := f.db.Pool.Exec(ctx, `UPDATE eventline_projections SET barrier = 10 WHERE projection = 'search'`)
	require.NoError(t, err)
	// totals' rebuild request was refused by its runner.
	_, err = f.db.Pool.Exec(ctx, `UPDATE eventline_projections SET resettable = true WHERE projection = 'totals'`)
	require.NoError(t, err)
	requireOK(t, f.cli(t, "rebuild", "totals"))
	require.NoError(t, pgx.BeginFunc(ctx, f.db.Pool, func(tx pgx.Tx) error {
		return f.lc.RefuseRebuild(ctx, tx, "totals", "this process runs version 2")
	}))

	r := f.cli(t, "status")
	requireOK(t, r)
	golden(t, "status_layout_changes", r.stdout)

	r = f.cli(t, "status", "--json")
	requireOK(t, r)
	var s snapshot
	require.NoError(t, jsonUnmarshal(r.stdout, &s))
	var roles []string
	for _, p := range s.Projections {
		if p.Projection == "orders" {
			roles = append(roles, p.Role+"/"+p.State)
		}
	}
	require.Equal(t, []string{"active/running", "waiting/waiting", "waiting/waiting", "waiting/waiting", "waiting/waiting"}, roles)
	orders := s.Lifecycle[1]
	require.Equal(t, "switch", orders.TargetMode)
	require.Equal(t, int64(4), *orders.Barrier)
	require.Equal(t, "rebuild request refused: this process runs version 2", s.Lifecycle[3].LastError)
	require.False(t, s.Lifecycle[3].RebuildPending)
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
			require.Len(t, s.Projections, 6)
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
	require.Len(t, dls, 3)
	require.Equal(t, []int64{2, 3, 4}, []int64{dls[0].ID, dls[1].ID, dls[2].ID})

	r = f.cli(t, "dead-letters", "list")
	requireOK(t, r)
	golden(t, "dead_letters_list_after", r.stdout)

	for _, verb := range []string{"retry", "discard"} {
		r = f.cli(t, "dead-letters", verb, "1")
		require.Equal(t, exitNotFound, r.code, verb)
		require.Equal(t, "eventline: dead letter 1 not found\n", r.stderr)
		require.Empty(t, r.stdout)
	}
}

// paused reads the paused column of projection name's record.
func (f *fixture) paused(t *testing.T, name string) bool {
	t.Helper()
	var paused bool
	require.NoError(t, f.db.Pool.QueryRow(t.Context(), `SELECT paused FROM eventline_projections WHERE projection = $1`, name).Scan(&paused))
	return paused
}

func TestPauseResume(t *testing.T) {
	t.Parallel()
	f := newFixture(t)

	require.False(t, f.paused(t, "search"))
	r := f.cli(t, "pause", "search")
	requireOK(t, r)
	golden(t, "pause", r.stdout)
	require.True(t, f.paused(t, "search"))
	requireOK(t, f.cli(t, "pause", "search")) // pausing again changes nothing
	require.True(t, f.paused(t, "search"))

	r = f.cli(t, "resume", "totals")
	requireOK(t, r)
	golden(t, "resume", r.stdout)
	cp, err := f.cps.Get(t.Context(), f.db.Pool, checkpoint.Key{Projection: "totals"})
	require.NoError(t, err)
	require.False(t, cp.Stopped())
	require.Empty(t, cp.LastError)
	require.False(t, f.paused(t, "totals"))

	r = f.cli(t, "status")
	requireOK(t, r)
	golden(t, "status_after_pause_resume", r.stdout)

	r = f.cli(t, "resume", "search")
	requireOK(t, r)
	require.Equal(t, "resumed search\n", r.stdout)
	require.False(t, f.paused(t, "search"))
	require.True(t, f.paused(t, "mailer"), "other projections keep their pause")

	for _, cmd := range []string{"pause", "resume"} {
		r = f.cli(t, cmd, "nope")
		require.Equal(t, exitNotFound, r.code)
		require.Equal(t, "eventline: "+cmd+" nope: no such projection (no runner has registered it yet)\n", r.stderr)
		require.Empty(t, r.stdout)
	}
}

// pause waits for the batches in flight; when one outlasts the wait, it says so.
func TestPauseBatchInFlight(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := t.Context()
	// A batch in flight holds its checkpoint row locked until it commits.
	batch, err := f.db.Pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = batch.Rollback(context.WithoutCancel(ctx)) }()
	_, err = batch.Exec(ctx, `SELECT 1 FROM eventline_checkpoints WHERE projection = 'search' AND partition = 1 FOR UPDATE`)
	require.NoError(t, err)

	var out, errOut bytes.Buffer
	a := newApp(&out, &errOut, noEnv)
	a.idleWait = 100 * time.Millisecond
	code := a.main(ctx, []string{"--database-url", f.db.URL, "pause", "search"})
	require.Equal(t, 0, code, "stderr: %s", errOut.String())
	require.Empty(t, errOut.String())
	require.Equal(t, "paused search, but a batch is still in flight after 100ms: it may still commit\n", out.String())
	require.True(t, f.paused(t, "search"))

	require.NoError(t, batch.Rollback(ctx))
	r := f.cli(t, "pause", "search")
	requireOK(t, r)
	require.Equal(t, "paused search\n", r.stdout)
}

func TestRebuild(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	requested := func(name string) (requested, done int64) {
		require.NoError(t, f.db.Pool.QueryRow(t.Context(), `SELECT rebuild_requested, rebuilds FROM eventline_projections
			WHERE projection = $1`, name).Scan(&requested, &done))
		return requested, done
	}

	r := f.cli(t, "rebuild", "search")
	requireOK(t, r)
	golden(t, "rebuild", r.stdout)
	req, done := requested("search")
	require.Equal(t, [2]int64{1, 0}, [2]int64{req, done})
	r = f.cli(t, "status", "--json")
	requireOK(t, r)
	var s snapshot
	require.NoError(t, jsonUnmarshal(r.stdout, &s))
	require.Equal(t, "search", s.Lifecycle[2].Projection)
	require.True(t, s.Lifecycle[2].RebuildPending)
	require.NotContains(t, r.stdout, `"rebuild_requested"`, "no longer per checkpoint")
	r = f.cli(t, "status")
	requireOK(t, r)
	require.Contains(t, r.stdout, "\nsearch: building v3/1 beside v2/2; rebuild pending\n")

	// A second request before a runner picked up the first: both are carried out at once.
	r = f.cli(t, "rebuild", "search")
	requireOK(t, r)
	require.Contains(t, r.stdout, "a request was already pending: they are carried out once\n")
	req, _ = requested("search")
	require.Equal(t, int64(2), req)

	// Refused: a detached handler, a projection without Reset. Nothing changes.
	for _, tc := range []struct{ name, why string }{
		{"mailer", "detached handlers are not rebuilt (it would repeat their side effects)"},
		{"totals", "the projection cannot be rebuilt: it has no Reset to empty its read model (implement projector.Resetter, or Router.WithReset)"},
	} {
		before := f.record(t, tc.name)
		r = f.cli(t, "rebuild", tc.name)
		require.Equal(t, exitError, r.code, tc.name)
		require.Equal(t, "eventline: rebuild "+tc.name+": "+tc.why+"\n", r.stderr)
		require.Empty(t, r.stdout)
		require.Equal(t, before, f.record(t, tc.name), "refused rebuild of %s changed the record", tc.name)
	}

	// A partition change in progress completes at once when the rebuild is carried out; a
	// paused projection stays paused.
	f.deploy(t, "orders", lifecycle.Code{Layout: lifecycle.Layout{Version: 1, Partitions: 4}, Resettable: true}, 4)
	requireOK(t, f.cli(t, "pause", "orders"))
	r = f.cli(t, "rebuild", "orders")
	requireOK(t, r)
	require.Equal(t, "rebuild of orders v1/1 requested\n"+
		"a runner with the code of version 1 will empty the read model once and replay it from position 0\n"+
		"the pending change to v1/4 completes at once\n"+
		"orders is paused: it replays nothing until 'eventline resume orders'\n", r.stdout)
	require.True(t, f.paused(t, "orders"))

	r = f.cli(t, "rebuild", "nope")
	require.Equal(t, exitNotFound, r.code)
	require.Equal(t, "eventline: rebuild nope: no such projection (no runner has registered it yet)\n", r.stderr)
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
	files, err := migrations.Files(eventline.Names{})
	require.NoError(t, err)
	var want strings.Builder
	for _, m := range files {
		fmt.Fprintf(&want, "applied migration %d (%s)\n", m.Version, m.Name)
	}
	require.Equal(t, want.String(), r.stdout)
	require.Contains(t, r.stdout, "applied migration 4 (0004_lifecycle.sql)\n")
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
		"--dead-letters-table", "dl", "--nodes-table", "nd", "--projections-table", "pr"}
	r := cli(t, time.Time{}, append(flags, "migrate", "--aggregate-heads-table", "heads", "--migrations-table", "mig")...)
	requireOK(t, r)
	var tables []string
	rows, err := db.Pool.Query(t.Context(), `SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1`)
	require.NoError(t, err)
	tables, err = pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.Equal(t, []string{"cp", "dl", "ev", "heads", "mig", "nd", "pr"}, tables)

	r = cli(t, time.Now(), append(flags, "status")...)
	requireOK(t, r)
	golden(t, "status_empty", r.stdout)

	// The lifecycle commands use the custom tables too: an unknown projection, not a missing table.
	_, err = db.Pool.Exec(t.Context(), `INSERT INTO pr (projection, active_version, active_partitions) VALUES ('p', 1, 1);
		INSERT INTO cp (projection) VALUES ('p')`)
	require.NoError(t, err)
	for _, cmd := range []string{"pause", "resume", "rebuild"} {
		r = cli(t, time.Now(), append(flags, cmd, "nope")...)
		require.Equal(t, exitNotFound, r.code, "%s: %s", cmd, r.stderr)
	}
	requireOK(t, cli(t, time.Now(), append(flags, "pause", "p")...))
	var paused bool
	require.NoError(t, db.Pool.QueryRow(t.Context(), `SELECT paused FROM pr WHERE projection = 'p'`).Scan(&paused))
	require.True(t, paused)
	r = cli(t, time.Now(), append(flags, "status")...)
	requireOK(t, r)
	require.Contains(t, r.stdout, "\np: paused\n")
}

// Every table of eventline.Names has a flag that sets that field: the global flags, and the two
// tables only migrate touches. A table added to Names without a flag fails here.
func TestTableFlagsCoverNames(t *testing.T) {
	t.Parallel()
	g := defaultGlobals()
	require.Equal(t, eventline.Names{}.WithDefaults(), g.names, "the flags' defaults are Names' defaults")
	fs := flag.NewFlagSet("eventline", flag.ContinueOnError)
	g.register(fs)
	migrateOnly := map[string]bool{"aggregate-heads-table": true, "migrations-table": true}
	var args []string
	defaults := eventline.Names{}.WithDefaults()
	want := reflect.ValueOf(&defaults).Elem()
	for i := range want.NumField() {
		field := want.Type().Field(i).Name
		if !strings.HasSuffix(field, "Table") {
			continue
		}
		name, ok := tableFlags[field]
		require.True(t, ok, "Names.%s has no flag", field)
		if migrateOnly[name] {
			continue
		}
		require.NotNil(t, fs.Lookup(name), "--%s is not a global flag", name)
		args = append(args, "--"+name, "t_"+field)
		want.Field(i).SetString("t_" + field)
	}
	require.NoError(t, fs.Parse(args))
	require.Equal(t, defaults, g.names, "each flag sets its field")
	require.Len(t, tableFlags, len(args)/2+len(migrateOnly))
}

func TestMigratePrint(t *testing.T) {
	t.Parallel()
	r := runCLI(t, noEnv, "migrate", "--print") // no database
	requireOK(t, r)
	require.Contains(t, r.stdout, "-- eventline migration 0001_events.sql\n")
	require.Contains(t, r.stdout, `CREATE TABLE "events"`)
	require.Contains(t, r.stdout, `CREATE TABLE "eventline_checkpoints"`)
	require.Contains(t, r.stdout, `CREATE TABLE "eventline_projections"`)

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
		{"check and watch", env, []string{"status", "--check", "--watch"}, exitUsage, "eventline: status: --check and --watch do not go together"},
		{"max lag without check", env, []string{"status", "--max-lag", "1s"}, exitUsage, "eventline: status: --max-lag and --max-lag-events go with --check"},
		{"negative max lag", env, []string{"status", "--check", "--max-lag-events", "-1"}, exitUsage, "eventline: status: --max-lag and --max-lag-events must not be negative"},
		{"missing URL", noEnv, []string{"status"}, exitUsage, "eventline: no database: set --database-url or DATABASE_URL\n"},
		{"bad URL", noEnv, []string{"--database-url", "postgres://x:y@:notaport/db", "status"}, exitUsage, "eventline: database URL: "},
		{"missing argument", env, []string{"rebuild"}, exitUsage, "eventline: rebuild: missing projection name\n"},
		{"extra argument", env, []string{"pause", "a", "b"}, exitUsage, "eventline: pause: unexpected argument \"b\""},
		{"flag after argument", env, []string{"rebuild", "a", "--json"}, exitUsage, "eventline: rebuild: unexpected argument \"--json\""},
		{"missing dead letter command", env, []string{"dead-letters"}, exitUsage, "eventline: dead-letters: missing command"},
		{"unknown dead letter command", env, []string{"dead-letters", "purge"}, exitUsage, "eventline: dead-letters: unknown command \"purge\""},
		{"bad dead letter ID", env, []string{"dead-letters", "retry", "x1"}, exitUsage, "eventline: dead-letters retry: invalid dead letter ID \"x1\""},
		{"invalid table name", env, []string{"--events-table", "bad-name", "status"}, exitUsage, "eventline: invalid SQL name: --events-table \"bad-name\""},
		{"invalid table name in migrate", noEnv, []string{"--nodes-table", "a.b.c", "migrate", "--print"}, exitUsage, "eventline: invalid SQL name: --nodes-table \"a.b.c\""},
		{"unknown projection", env, []string{"rebuild", "nope"}, exitNotFound, "eventline: rebuild nope: no such projection (no runner has registered it yet)\n"},
		{"unknown projection to pause", env, []string{"pause", "nope"}, exitNotFound, "eventline: pause nope: no such projection"},
		{"unknown dead letter", env, []string{"dead-letters", "discard", "42"}, exitNotFound, "eventline: dead letter 42 not found\n"},
		{"unknown dead letter to retry", env, []string{"dead-letters", "retry", "42"}, exitNotFound, "eventline: dead letter 42 not found\n"},
		{"invalid projections table name", env, []string{"--projections-table", "a b", "pause", "x"}, exitUsage, "eventline: invalid SQL name: --projections-table \"a b\""},
		{"two tables one name", noEnv, []string{"--nodes-table", "t", "migrate", "--print", "--migrations-table", "t"}, exitUsage,
			"eventline: invalid SQL name: --nodes-table and --migrations-table are both \"t\""},
		{"two table flags with a name spelled like a field", env, []string{"--nodes-table", "EventsTable", "--events-table", "EventsTable", "status"}, exitUsage,
			"eventline: invalid SQL name: --events-table and --nodes-table are both \"EventsTable\""},
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

// reset moves a paused or stopped projection; it is refused while the projection runs or changes.
func TestReset(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	pos := func(key checkpoint.Key) checkpoint.Checkpoint {
		cp, err := f.cps.Get(t.Context(), f.db.Pool, key)
		require.NoError(t, err)
		return cp
	}

	r := f.cli(t, "reset", "--to", "2", "orders")
	require.Equal(t, exitError, r.code, r.stderr)
	require.Contains(t, r.stderr, "the projection is running: pause it first")
	require.EqualValues(t, 4, pos(checkpoint.Key{Projection: "orders"}).Position, "nothing moved")

	r = f.cli(t, "reset", "--to", "9", "totals") // stopped by a failure
	requireOK(t, r)
	require.Equal(t, "moved totals to position 9 (from [6])\n", r.stdout)
	cp := pos(checkpoint.Key{Projection: "totals"})
	require.EqualValues(t, 9, cp.Position)
	require.False(t, cp.Stopped(), "the failure is cleared")

	r = f.cli(t, "reset", "--to", "2", "mailer") // paused
	requireOK(t, r)
	require.EqualValues(t, 2, pos(checkpoint.Key{Projection: "mailer"}).Position)
	require.True(t, f.paused(t, "mailer"), "the pause stays")

	requireOK(t, f.cli(t, "pause", "search"))
	r = f.cli(t, "reset", "--to", "0", "search")
	require.Equal(t, exitError, r.code)
	require.Contains(t, r.stderr, "a change to v3/1 is in progress")

	r = f.cli(t, "reset", "orders")
	require.Equal(t, exitUsage, r.code)
	r = f.cli(t, "reset", "--to", "1", "nope")
	require.Equal(t, exitNotFound, r.code)
}

// reset --to a position beyond the head is refused: it would skip, silently and unseen (the lag
// reads 0), the events appended up to it later.
func TestResetBeyondHead(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	r := f.cli(t, "reset", "--to", "11", "mailer") // paused, at 10; the head is 10
	require.Equal(t, exitError, r.code, "stdout: %s", r.stdout)
	require.Equal(t, "eventline: reset mailer: position 11 is beyond the head of the events table (10)\n", r.stderr)
	cp, err := f.cps.Get(t.Context(), f.db.Pool, checkpoint.Key{Projection: "mailer"})
	require.NoError(t, err)
	require.EqualValues(t, 10, cp.Position, "nothing moved")

	requireOK(t, f.cli(t, "reset", "--to", "10", "mailer")) // up to the head is fine
}
