package eventlinetest_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/eventlinetest"
	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/eventstore/postgres"
	"github.com/eventline/eventline/projector"
	"github.com/eventline/eventline/runner"
)

// envNoMain, set to 1, runs the tests without eventlinetest.Main (TestNewDatabaseWithoutMain).
const envNoMain = "EVENTLINETEST_TEST_NO_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(envNoMain) == "1" {
		os.Exit(m.Run())
	}
	eventlinetest.Main(m)
}

// fakeT stands in for a *testing.T where there is none (the examples) or where a test checks
// that a helper fails the test: FailNow records the failure and panics with errFailNow, which
// runAsT recovers. It implements what eventlinetest and internal/pgtest call on a testing.TB.
type fakeT struct {
	testing.TB // nil: any other method panics
	name       string
	ctx        context.Context

	mu       sync.Mutex
	failed   bool
	logs     []string
	cleanups []func()
}

var errFailNow = errors.New("fakeT: FailNow")

func (t *fakeT) Helper()                  {}
func (t *fakeT) Name() string             { return t.name }
func (t *fakeT) Context() context.Context { return t.ctx }
func (t *fakeT) Cleanup(f func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cleanups = append(t.cleanups, f)
}
func (t *fakeT) Failed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.failed
}
func (t *fakeT) Fail() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.failed = true
}
func (t *fakeT) FailNow()                        { t.Fail(); panic(errFailNow) }
func (t *fakeT) Log(args ...any)                 { t.log(fmt.Sprintln(args...)) }
func (t *fakeT) Logf(format string, args ...any) { t.log(fmt.Sprintf(format, args...)) }
func (t *fakeT) Error(args ...any)               { t.Log(args...); t.Fail() }
func (t *fakeT) Errorf(format string, args ...any) {
	t.Logf(format, args...)
	t.Fail()
}
func (t *fakeT) Fatal(args ...any)                 { t.Log(args...); t.FailNow() }
func (t *fakeT) Fatalf(format string, args ...any) { t.Logf(format, args...); t.FailNow() }
func (t *fakeT) log(s string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.logs = append(t.logs, strings.TrimSuffix(s, "\n"))
}

// runAsT runs f with a fakeT named name, then its cleanups (last first), and returns what it
// logged and whether it failed.
func runAsT(name string, f func(t testing.TB)) (logs string, failed bool) {
	ctx, cancel := context.WithCancel(context.Background())
	t := &fakeT{name: name, ctx: ctx}
	func() {
		defer func() {
			if p := recover(); p != nil && p != errFailNow {
				panic(p)
			}
		}()
		f(t)
	}()
	cancel() // as testing does: the context ends before the cleanups run
	for i := len(t.cleanups) - 1; i >= 0; i-- {
		t.cleanups[i]()
	}
	return strings.Join(t.logs, "\n"), t.Failed()
}

// runAsTest runs a test function where there is no *testing.T (in an example), and panics if it
// fails.
func runAsTest(f func(t testing.TB)) {
	if logs, failed := runAsT("Example", f); failed {
		panic("the example failed:\n" + logs)
	}
}

// counter is a projection that counts deposits per account in the table deposits.
func counter(fail func(ev eventstore.PersistedEvent) error) *projector.Router {
	r := projector.NewRouter("deposits", projector.WithAggregateTypes("account"),
		projector.WithSetup(func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS deposits (account text PRIMARY KEY, n int NOT NULL, total bigint NOT NULL)`)
			return err
		}),
		projector.WithReset(func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `TRUNCATE deposits`)
			return err
		}))
	projector.On(r, "Deposited", func(ctx context.Context, w *projector.Writes, ev eventstore.PersistedEvent, p Deposited) error {
		if fail != nil {
			if err := fail(ev); err != nil {
				return err
			}
		}
		w.Exec(`INSERT INTO deposits VALUES ($1, 1, $2)
			ON CONFLICT (account) DO UPDATE SET n = deposits.n + 1, total = deposits.total + $2`, ev.AggregateID, p.Amount)
		return nil
	})
	return r
}

type deposits struct {
	N     int
	Total int64
}

func readDeposits(t *testing.T, db *eventlinetest.Database) map[string]deposits {
	t.Helper()
	rows, err := db.Pool.Query(t.Context(), `SELECT account, n, total FROM deposits`)
	require.NoError(t, err)
	out := map[string]deposits{}
	for rows.Next() {
		var a string
		var d deposits
		require.NoError(t, rows.Scan(&a, &d.N, &d.Total))
		out[a] = d
	}
	require.NoError(t, rows.Err())
	return out
}

func eventCount(t *testing.T, db *eventlinetest.Database) int {
	t.Helper()
	var n int
	require.NoError(t, db.Pool.QueryRow(t.Context(), `SELECT count(*) FROM events`).Scan(&n))
	return n
}

func TestNewDatabaseIsMigratedAndPrivate(t *testing.T) {
	t.Parallel()
	a, b := eventlinetest.NewDatabase(t), eventlinetest.NewDatabase(t)
	require.NotEqual(t, a.Name, b.Name)
	var name string
	var events *string
	require.NoError(t, a.Pool.QueryRow(t.Context(), `SELECT current_database(), to_regclass('events')::text`).Scan(&name, &events))
	require.Equal(t, a.Name, name)
	require.NotNil(t, events, "the migrations are applied")

	conn, err := pgx.Connect(t.Context(), a.URL)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	require.NoError(t, conn.QueryRow(t.Context(), `SELECT current_database()`).Scan(&name))
	require.Equal(t, a.Name, name, "URL names the test's database")

	eventlinetest.Append(t, a.Pool, eventlinetest.Event("account", "a-1", "Deposited", Deposited{Amount: 1}))
	require.Equal(t, 1, eventCount(t, a))
	require.Zero(t, eventCount(t, b))
}

func TestEventEncodesThePayload(t *testing.T) {
	t.Parallel()
	ev := eventlinetest.Event("account", "a-1", "Deposited", Deposited{Amount: 5})
	require.Equal(t, eventstore.Event{AggregateType: "account", AggregateID: "a-1", EventType: "Deposited", Payload: []byte(`{"amount":5}`)}, ev)
	require.Equal(t, []byte(`{"raw":1}`), eventlinetest.Event("a", "1", "T", []byte(`{"raw":1}`)).Payload)
	require.Panics(t, func() { eventlinetest.Event("a", "1", "T", func() {}) })
}

// Apply appends the events (one Append per run of one aggregate's events), runs Setup, and hands
// Handle the events the filter lets through; calling it again goes on from there.
func TestApply(t *testing.T) {
	t.Parallel()
	db := eventlinetest.NewDatabase(t)
	var handled []int64
	p := counter(func(ev eventstore.PersistedEvent) error { handled = append(handled, ev.GlobalPosition); return nil })
	got := eventlinetest.Apply(t, db.Pool, p,
		eventlinetest.Event("account", "a-1", "Deposited", Deposited{Amount: 5}),
		eventlinetest.Event("account", "a-1", "Deposited", Deposited{Amount: 7}),
		eventlinetest.Event("order", "o-1", "Deposited", Deposited{Amount: 100}), // another aggregate type: filtered out
		eventlinetest.Event("account", "a-2", "Opened", nil),                     // no handler
		eventlinetest.Event("account", "a-2", "Deposited", Deposited{Amount: 1}),
	)
	require.Len(t, got, 5)
	for i, ev := range got {
		require.NotEqual(t, uuid.Nil, ev.EventID)
		require.False(t, ev.CreatedAt.IsZero())
		if i > 0 {
			require.Greater(t, ev.GlobalPosition, got[i-1].GlobalPosition)
		}
	}
	require.Equal(t, []int64{1, 2, 1, 1, 2}, []int64{got[0].AggregateVersion, got[1].AggregateVersion,
		got[2].AggregateVersion, got[3].AggregateVersion, got[4].AggregateVersion})
	require.Equal(t, []int64{got[0].GlobalPosition, got[1].GlobalPosition, got[4].GlobalPosition}, handled)
	require.Equal(t, map[string]deposits{"a-1": {2, 12}, "a-2": {1, 1}}, readDeposits(t, db))

	eventlinetest.Apply(t, db.Pool, p, eventlinetest.Event("account", "a-1", "Deposited", Deposited{Amount: 3}))
	require.Equal(t, map[string]deposits{"a-1": {3, 15}, "a-2": {1, 1}}, readDeposits(t, db))
	eventlinetest.Apply(t, db.Pool, p) // no events: Setup only
	require.Equal(t, 6, eventCount(t, db))
}

// Apply is one transaction: when Handle fails, the events and what Setup created are gone too,
// and the test fails with the handler's error.
func TestApplyFailsTheTestAndCommitsNothing(t *testing.T) {
	t.Parallel()
	db := eventlinetest.NewDatabase(t)
	p := counter(func(ev eventstore.PersistedEvent) error {
		if ev.AggregateVersion == 2 {
			return errors.New("no second deposit")
		}
		return nil
	})
	logs, failed := runAsT(t.Name(), func(ft testing.TB) {
		eventlinetest.Apply(ft, db.Pool, p,
			eventlinetest.Event("account", "a-1", "Deposited", Deposited{Amount: 5}),
			eventlinetest.Event("account", "a-1", "Deposited", Deposited{Amount: 7}))
		t.Error("Apply returned after a handler failed")
	})
	require.True(t, failed)
	require.Contains(t, logs, "apply to deposits: handle: event at position 2: no second deposit")
	require.Zero(t, eventCount(t, db))
	var table *string
	require.NoError(t, db.Pool.QueryRow(t.Context(), `SELECT to_regclass('deposits')::text`).Scan(&table))
	require.Nil(t, table)

	logs, failed = runAsT(t.Name(), func(ft testing.TB) {
		eventlinetest.Apply(ft, db.Pool, projector.NewRouter("empty"), eventlinetest.Event("account", "a-1", "Deposited", nil))
	})
	require.True(t, failed)
	require.Contains(t, logs, `router "empty"`)
	require.ErrorIs(t, projector.NewRouter("empty").Validate(), projector.ErrNoHandlers)
	require.Zero(t, eventCount(t, db))
}

// versioned gives a projection a version and a partition count of its choosing.
type versioned struct {
	*projector.Router
	version, partitions int
}

func (v versioned) Version() int    { return v.version }
func (v versioned) Partitions() int { return v.partitions }

// unnamed is a projection without a name.
type unnamed struct{ *projector.Router }

func (unnamed) Name() string { return "" }

// Apply refuses what runner.Register refuses, as it says, and touches nothing then.
func TestApplyRefusesWhatRegisterRefuses(t *testing.T) {
	t.Parallel()
	db := eventlinetest.NewDatabase(t)
	r, err := runner.New(db.Pool, postgres.NewStore(nil), runner.Config{})
	require.NoError(t, err)
	for _, tc := range []struct {
		p    projector.Projection
		want string
	}{
		{unnamed{counter(nil)}, "projection name is empty"},
		{versioned{counter(nil), 0, 1}, "version 0; want 1 or more"},
		{versioned{counter(nil), 1, 0}, "0 partitions; want 1 to 1024"},
		{versioned{counter(nil), 1, 2000}, "2000 partitions; want 1 to 1024"},
	} {
		require.Error(t, r.Register(tc.p), "runner.Register refuses it")
		logs, failed := runAsT(t.Name(), func(ft testing.TB) {
			eventlinetest.Apply(ft, db.Pool, tc.p, eventlinetest.Event("account", "a-1", "Deposited", Deposited{Amount: 5}))
		})
		require.True(t, failed, "Apply accepted what Register refuses (%s)", tc.want)
		require.Contains(t, logs, tc.want)
	}
	require.Zero(t, eventCount(t, db))
}

// Without Main, NewDatabase says what to add, with a function the user can call (not the
// internal harness's). The check runs in a child process whose TestMain does not call Main.
func TestNewDatabaseWithoutMain(t *testing.T) {
	if os.Getenv(envNoMain) == "1" {
		eventlinetest.NewDatabase(t)
		return
	}
	t.Parallel()
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestNewDatabaseWithoutMain$", "-test.count=1")
	cmd.Env = append(os.Environ(), envNoMain+"=1")
	out, err := cmd.CombinedOutput()
	require.Error(t, err, "NewDatabase without Main failed nothing:\n%s", out)
	require.Contains(t, string(out), "add func TestMain(m *testing.M) { eventlinetest.Main(m) }")
	require.NotContains(t, string(out), "pgtest.Main")
}

// notifier is a detached handler that counts what it saw.
type notifier struct{ seen atomic.Int64 }

func (n *notifier) Name() string { return "notifier" }
func (n *notifier) HandleEvent(context.Context, eventstore.PersistedEvent) error {
	n.seen.Add(1)
	return nil
}

// RunUntilCaughtUp returns once every registered projection, detached handler and filtered
// projection that skips everything has reached the events committed when it was called, and the
// runner has stopped.
func TestRunUntilCaughtUp(t *testing.T) {
	t.Parallel()
	db := eventlinetest.NewDatabase(t)
	var events []eventstore.Event
	for i := range 60 {
		events = append(events, eventlinetest.Event("account", fmt.Sprintf("a-%d", i%7), "Deposited", Deposited{Amount: int64(i)}))
	}
	appended := eventlinetest.Append(t, db.Pool, events...)
	head := appended[len(appended)-1].GlobalPosition

	r, err := runner.New(db.Pool, postgres.NewStore(nil), runner.Config{PersistIdle: 10 * time.Millisecond})
	require.NoError(t, err)
	require.NoError(t, r.Register(counter(nil)))
	n := &notifier{}
	require.NoError(t, r.RegisterDetached(n))
	nothing := projector.NewRouter("orders", projector.WithAggregateTypes("order"))
	projector.On(nothing, "Placed", func(context.Context, *projector.Writes, eventstore.PersistedEvent, struct{}) error { return nil })
	require.NoError(t, r.Register(nothing))

	sts := eventlinetest.RunUntilCaughtUp(t, r)
	require.Len(t, sts, 3)
	for _, st := range sts {
		require.Equal(t, "running", st.State, st.Name)
		require.GreaterOrEqual(t, st.Position, head, st.Name)
	}
	var total int64
	for _, d := range readDeposits(t, db) {
		total += d.Total
	}
	require.Equal(t, int64(59*60/2), total)
	require.GreaterOrEqual(t, n.seen.Load(), int64(60))
	require.ErrorIs(t, r.Run(t.Context()), runner.ErrAlreadyRunning, "the runner was run and stopped")
}

// A projection that stops on a handler error fails the test at once, with the error and the
// event's position; a runner whose Run fails (here: nothing can be set up) too.
func TestRunUntilCaughtUpFailsTheTest(t *testing.T) {
	t.Parallel()
	db := eventlinetest.NewDatabase(t)
	appended := eventlinetest.Append(t, db.Pool,
		eventlinetest.Event("account", "a-1", "Deposited", Deposited{Amount: 5}),
		eventlinetest.Event("account", "a-1", "Deposited", Deposited{Amount: 7}))
	store := postgres.NewStore(nil)

	r, err := runner.New(db.Pool, store, runner.Config{})
	require.NoError(t, err)
	require.NoError(t, r.Register(counter(func(ev eventstore.PersistedEvent) error {
		if ev.AggregateVersion == 2 {
			return errors.New("no second deposit")
		}
		return nil
	})))
	began := time.Now()
	logs, failed := runAsT(t.Name(), func(ft testing.TB) { eventlinetest.RunUntilCaughtUp(ft, r) })
	require.True(t, failed)
	require.Contains(t, logs, fmt.Sprintf("deposits (version 1) stopped at the event at position %d", appended[1].GlobalPosition))
	require.Contains(t, logs, "no second deposit")
	require.Less(t, time.Since(began), time.Minute)

	r, err = runner.New(db.Pool, store, runner.Config{})
	require.NoError(t, err)
	broken := projector.NewRouter("broken", projector.WithSetup(func(context.Context, pgx.Tx) error { return errors.New("cannot set up") }))
	projector.On(broken, "Deposited", func(context.Context, *projector.Writes, eventstore.PersistedEvent, struct{}) error { return nil })
	require.NoError(t, r.Register(broken))
	logs, failed = runAsT(t.Name(), func(ft testing.TB) { eventlinetest.RunUntilCaughtUp(ft, r) })
	require.True(t, failed)
	require.Contains(t, logs, "the runner stopped before catching up")
	require.Contains(t, logs, "cannot set up")
}
