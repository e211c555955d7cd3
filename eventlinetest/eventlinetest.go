// Package eventlinetest helps you test code that uses eventline against a real PostgreSQL: a
// throwaway database for each test, events appended and applied to a projection in one line, and
// a runner run until every projection has caught up.
//
// In a _test.go file of your package:
//
//	func TestMain(m *testing.M) { eventlinetest.Main(m) }
//
//	func TestBalances(t *testing.T) {
//		db := eventlinetest.NewDatabase(t) // migrated, private to the test, dropped after it
//		eventlinetest.Apply(t, db.Pool, balances(), // Setup, then Handle, in one transaction
//			eventlinetest.Event("account", "a-1", "Deposited", Deposited{Amount: 5}))
//		// ... read the read model through db.Pool
//	}
//
// Main gets a PostgreSQL server once per test binary, in this order:
//
//  1. DATABASE_URL, when set: an existing server where the role may CREATE DATABASE. The
//     databases a run creates have names unique to the test binary (several packages' tests may
//     share the server at once) and are dropped at exit.
//  2. The PostgreSQL server binaries (pg_config --bindir, then PATH, then
//     /usr/lib/postgresql/*/bin; apt-get install postgresql): a throwaway cluster in $TMPDIR,
//     tuned for speed (fsync off), removed at exit, also when the test binary panics or is killed.
//  3. A Docker engine: a postgres:15 container, removed at exit.
//
// Without any of them, the test binary fails with an error that says how to get one. Main then
// migrates a template database (the default eventline.Names), and NewDatabase gives each test a copy
// of it in a few milliseconds; tests may run in parallel. A failed test's database is kept until
// the test binary exits, and the test's log says how to connect to it (set
// EVENTLINE_PGTEST_KEEP=1 to keep it after the run: the local cluster, or the databases on a
// DATABASE_URL server).
//
// The helpers that append events (Append, Apply) use a Store with the default configuration
// (postgres.NewStore(nil): the default eventline.Names), whose tables NewDatabase has. They report failures with
// t.Fatalf, so call them from the test's goroutine.
//
// Two levels of test: Apply checks what a projection writes, in one transaction, with no runner
// and no checkpoint (fast, and the read model is there to query at once); RunUntilCaughtUp runs
// the real runner (dispatch, failure policies, versions and partitions, detached handlers) on the
// test's database until everything registered has caught up. A runner for a test is built as in
// production, on the default tables: runner.New(db.Pool, postgres.NewStore(nil), runner.Config{}).
// More: README.md, "Testing your projections"; what the runner guarantees, docs/design.md,
// "Guarantees".
package eventlinetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/eventstore/postgres"
	"github.com/eventline/eventline/internal/filter"
	"github.com/eventline/eventline/internal/pgtest"
	"github.com/eventline/eventline/projector"
	"github.com/eventline/eventline/runner"
)

// EnvDatabaseURL names the variable that points the tests at an existing server.
const EnvDatabaseURL = pgtest.EnvDatabaseURL

// CaughtUpTimeout bounds RunUntilCaughtUp.
const CaughtUpTimeout = 2 * time.Minute

// Main runs the tests of a package that uses NewDatabase, and exits with their code. Call it from
// TestMain, and nothing else there:
//
//	func TestMain(m *testing.M) { eventlinetest.Main(m) }
//
// It gets a server (see the package documentation), creates the migrated template database, runs
// the tests, and drops what it created and stops what it started.
func Main(m *testing.M) {
	os.Exit(Run(m))
}

// Run is Main returning the exit code instead of exiting, for a TestMain that does more after the
// tests (a goroutine leak check, say) and then calls os.Exit itself.
func Run(m *testing.M) int {
	return pgtest.Run(m)
}

var errNoMain = errors.New("eventlinetest: Main is not running; add func TestMain(m *testing.M) { eventlinetest.Main(m) } to the package's tests")

// Database is a database of one test's own.
type Database struct {
	// Name is the database's name on the server.
	Name string
	// URL is a connection string for the database, for code that opens pools of its own.
	URL string
	// Pool is connected to the database, and closed when the test ends.
	Pool *pgxpool.Pool
}

// NewDatabase returns a new database with eventline's migrations applied (default table names).
// When the test ends, its pool is closed and the database is dropped, unless the test failed: then
// it is kept until the test binary exits, and the test's log says how to connect to it. It needs
// Main to be running.
func NewDatabase(t testing.TB) *Database {
	t.Helper()
	if !pgtest.Running() {
		// Not pgtest's own message, which names its Main: internal, out of the user's reach.
		t.Fatal(errNoMain)
	}
	d := pgtest.NewDatabase(t)
	return &Database{Name: d.Name, URL: d.URL, Pool: d.Pool}
}

// Throwaway gets a server for a program rather than a test (a demo, a try-out): DATABASE_URL when
// set, else a throwaway cluster from the local PostgreSQL binaries, else a Docker container, like
// Main. It returns a connection string for the server's maintenance database (create your tables
// in it, or your own database), and stop, which stops and removes whatever Throwaway started
// (nothing, for DATABASE_URL). A local cluster is also removed if the program dies without
// calling stop.
func Throwaway(ctx context.Context) (databaseURL string, stop func() error, err error) {
	return pgtest.Throwaway(ctx)
}

// Event returns an event of the aggregate with payload encoded as JSON (a []byte or
// json.RawMessage payload is used as it is). It panics if payload cannot be encoded.
func Event(aggregateType, aggregateID, eventType string, payload any) eventstore.Event {
	var b []byte
	switch p := payload.(type) {
	case []byte:
		b = p
	case json.RawMessage:
		b = p
	default:
		var err error
		if b, err = json.Marshal(payload); err != nil {
			panic(fmt.Sprintf("eventlinetest: encode %s payload: %v", eventType, err))
		}
	}
	return eventstore.Event{AggregateType: aggregateType, AggregateID: aggregateID, EventType: eventType, Payload: b}
}

// Append appends events in one transaction, each run of consecutive events of one aggregate in one
// Store.Append (eventstore.Any), and returns them as stored, in order.
func Append(t testing.TB, pool *pgxpool.Pool, events ...eventstore.Event) []eventstore.PersistedEvent {
	t.Helper()
	var out []eventstore.PersistedEvent
	err := pgx.BeginFunc(t.Context(), pool, func(tx pgx.Tx) error {
		var err error
		out, err = appendEvents(t.Context(), tx, events)
		return err
	})
	if err != nil {
		t.Fatalf("eventlinetest: append: %v", err)
	}
	return out
}

// Apply appends events and applies them to p in one transaction, as a runner would hand them to it
// (without a checkpoint): p's Setup, if it has one, then Handle with the events p's Filter lets
// through, in order (a projection that runner.Register would refuse, such as a Router without
// handlers, fails the test). Either all of it commits or, when any step fails, none of it and the test is
// failed. It returns the events as stored.
//
// Calling Apply again with more events is like a runner that restarts: Setup runs again (it must
// be idempotent, as it must be with a runner).
func Apply(t testing.TB, pool *pgxpool.Pool, p projector.Projection, events ...eventstore.Event) []eventstore.PersistedEvent {
	t.Helper()
	ctx := t.Context()
	// Refused here what runner.Register would refuse (Register's own checks, on a runner that
	// never runs).
	r, err := runner.New(pool, postgres.NewStore(nil), runner.Config{})
	if err == nil {
		err = r.Register(p)
	}
	if err != nil {
		t.Fatalf("eventlinetest: apply to %s: %v", p.Name(), err)
	}
	var out []eventstore.PersistedEvent
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if s, ok := p.(projector.Setup); ok {
			if err := s.Setup(ctx, tx); err != nil {
				return fmt.Errorf("setup: %w", err)
			}
		}
		var err error
		if out, err = appendEvents(ctx, tx, events); err != nil {
			return err
		}
		f, _ := p.(projector.Filter)
		m := filter.Compile(f)
		batch := make([]eventstore.PersistedEvent, 0, len(out))
		for i := range out {
			if m.Match(&out[i]) {
				batch = append(batch, out[i])
			}
		}
		if len(batch) == 0 {
			return nil
		}
		if err := p.Handle(ctx, tx, batch); err != nil {
			return fmt.Errorf("handle: %w", err)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("eventlinetest: apply to %s: %v", p.Name(), err)
	}
	return out
}

// appendEvents appends events through a default Store in tx and reads them back.
func appendEvents(ctx context.Context, tx pgx.Tx, events []eventstore.Event) ([]eventstore.PersistedEvent, error) {
	if len(events) == 0 {
		return nil, nil
	}
	store := postgres.NewStore(nil)
	var positions []int64
	for start := 0; start < len(events); {
		end := start + 1
		for end < len(events) && events[end].AggregateType == events[start].AggregateType &&
			events[end].AggregateID == events[start].AggregateID {
			end++
		}
		res, err := store.Append(ctx, tx, eventstore.Any(), events[start:end])
		if err != nil {
			return nil, fmt.Errorf("append events %d to %d (%s %s): %w", start, end-1,
				events[start].AggregateType, events[start].AggregateID, err)
		}
		positions = append(positions, res.GlobalPositions()...)
		start = end
	}
	// Read them back (IDs and times filled in), skipping what other transactions committed
	// in between.
	read, err := store.ReadEventsBetween(ctx, tx, positions[0]-1, positions[len(positions)-1], 0, nil, nil)
	if err != nil {
		return nil, err
	}
	want := make(map[int64]bool, len(positions))
	for _, p := range positions {
		want[p] = true
	}
	out := make([]eventstore.PersistedEvent, 0, len(positions))
	for _, ev := range read {
		if want[ev.GlobalPosition] {
			out = append(out, ev)
		}
	}
	if len(out) != len(positions) {
		return nil, fmt.Errorf("read back %d of the %d appended events", len(out), len(positions))
	}
	return out, nil
}

// RunUntilCaughtUp runs r until every projection and detached handler registered with it has
// applied every event committed when RunUntilCaughtUp was called, and a new version of a
// projection has taken over; then it stops r (as Run does when its context ends) and returns the
// last Status. Run can be called only once, so this uses r up.
//
// It fails the test when Run fails, when a projection stops on a handler error (with the error
// and the event's position) or is paused, or after CaughtUpTimeout. A projection that filters out the last
// events saves its position over them only after runner.Config.PersistIdle (1s by default): set it
// lower in tests to return sooner.
func RunUntilCaughtUp(t testing.TB, r *runner.Runner) []runner.ProjectionStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), CaughtUpTimeout)
	defer cancel()
	sts, err := r.Status(ctx)
	if err != nil {
		t.Fatalf("eventlinetest: %v", err)
	}
	if len(sts) == 0 {
		t.Fatalf("eventlinetest: RunUntilCaughtUp: nothing is registered with the runner")
	}
	target := sts[0].Head

	runCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx) }()
	stopped := false
	defer func() {
		if !stopped { // t.Fatalf below: stop the runner before the test ends
			stop()
			<-done
		}
	}()

	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			stopped = true
			stop()
			t.Fatalf("eventlinetest: the runner stopped before catching up to position %d: %v", target, err)
		case <-ctx.Done():
			t.Fatalf("eventlinetest: the runner did not catch up to position %d within %s:\n%s", target, CaughtUpTimeout, describe(sts))
		case <-tick.C:
		}
		if sts, err = r.Status(ctx); err != nil {
			if ctx.Err() != nil {
				continue // reported above
			}
			t.Fatalf("eventlinetest: %v", err)
		}
		if caughtUp, failure := check(sts, target); failure != "" {
			t.Fatalf("eventlinetest: %s", failure)
		} else if caughtUp {
			break
		}
	}
	stop()
	stopped = true
	if err := <-done; err != nil {
		t.Fatalf("eventlinetest: the runner caught up, then failed to stop: %v", err)
	}
	return sts
}

// check reports whether every unit runs at or past target (versions this process idles on
// excepted), or why it never will.
func check(sts []runner.ProjectionStatus, target int64) (caughtUp bool, failure string) {
	caughtUp = true
	for _, st := range sts {
		switch {
		case st.Stopped:
			return false, fmt.Sprintf("%s stopped at the event at position %d: %s", unit(st), st.FailedPosition, st.LastError)
		case st.Paused && st.State != "retired":
			return false, fmt.Sprintf("%s is paused (eventline resume %s)", unit(st), st.Name)
		case st.State == "retired":
			// An older version, which this process idles on: nothing to wait for.
		case st.State != "running" || st.Position < target:
			caughtUp = false
		}
	}
	return caughtUp, ""
}

func unit(st runner.ProjectionStatus) string {
	s := fmt.Sprintf("%s (version %d", st.Name, st.Version)
	if st.Partitions > 1 {
		s += fmt.Sprintf(", partition %d of %d", st.Partition, st.Partitions)
	}
	return s + ")"
}

func describe(sts []runner.ProjectionStatus) string {
	var b strings.Builder
	for _, st := range sts {
		fmt.Fprintf(&b, "  %s: %s at position %d of %d", unit(st), st.State, st.Position, st.Head)
		if st.LastError != "" {
			fmt.Fprintf(&b, " (%s)", st.LastError)
		}
		b.WriteByte('\n')
	}
	return b.String()
}
