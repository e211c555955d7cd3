package console_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/eventline/eventline/console"
	"github.com/eventline/eventline/eventlinetest"
	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/eventstore/postgres"
	"github.com/eventline/eventline/projector"
	"github.com/eventline/eventline/runner"
)

func TestMain(m *testing.M) { eventlinetest.Main(m) }

// waitTimeout bounds every wait of these tests.
const waitTimeout = 30 * time.Second

// gate holds a projection's handler while it is closed, so that a test can make lag build up
// on purpose and then let it fall.
type gate struct {
	mu   sync.Mutex
	open chan struct{} // nil: the handler passes
}

func (g *gate) hold() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.open = make(chan struct{})
}

func (g *gate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.open != nil {
		close(g.open)
		g.open = nil
	}
}

func (g *gate) wait(ctx context.Context) error {
	g.mu.Lock()
	ch := g.open
	g.mu.Unlock()
	if ch == nil {
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

type Ticked struct {
	N int `json:"n"`
}

// counter is a projection with Reset (rebuildable) that counts Ticked events, through g.
func counter(g *gate) *projector.Router {
	r := projector.NewRouter("counter", projector.WithAggregateTypes("clock"),
		projector.WithSetup(func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS console_counter (n bigint NOT NULL)`)
			return err
		}),
		projector.WithReset(func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `TRUNCATE console_counter`)
			return err
		}))
	projector.OnTx(r, "Ticked", func(ctx context.Context, tx pgx.Tx, _ eventstore.PersistedEvent, p Ticked) error {
		if err := g.wait(ctx); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO console_counter (n) VALUES ($1)`, p.N)
		return err
	})
	return r
}

// audit is a projection without Reset: the lifecycle refuses to rebuild it.
type audit struct{}

func (audit) Name() string { return "audit" }

func (audit) Handle(context.Context, pgx.Tx, []eventstore.PersistedEvent) error { return nil }

// poisoned is a detached handler that fails on every "Poison" event; registered with the
// dead-letter policy, it parks them.
type poisoned struct{}

func (poisoned) Name() string { return "poisoned" }

func (poisoned) HandleEvent(_ context.Context, ev eventstore.PersistedEvent) error {
	if ev.EventType == "Poison" {
		return errors.New("poison event")
	}
	return nil
}

// fixture is a database with a runner running counter, audit and poisoned until the test ends.
type fixture struct {
	t    *testing.T
	db   *eventlinetest.Database
	gate *gate
	r    *runner.Runner
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{t: t, db: eventlinetest.NewDatabase(t), gate: &gate{}}
	store := postgres.NewStore(nil)
	r, err := runner.New(f.db.Pool, store, runner.Config{
		Logger: zaptest.NewLogger(t), PollInterval: 50 * time.Millisecond, HeartbeatInterval: 200 * time.Millisecond,
		PersistIdle: 50 * time.Millisecond,
	})
	require.NoError(t, err)
	require.NoError(t, r.Register(counter(f.gate)))
	require.NoError(t, r.Register(audit{}))
	require.NoError(t, r.RegisterDetached(poisoned{}, runner.WithFailurePolicy(runner.DeadLetter)))
	f.r = r
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		f.gate.release() // a held handler would hold the runner's shutdown
		cancel()
		select {
		case err := <-done:
			require.NoError(t, err, "runner stopped with an error")
		case <-time.After(waitTimeout):
			t.Error("the runner did not stop")
		}
	})
	f.waitFor("the runner to register its projections", func() bool {
		return len(f.records()) == 3
	})
	return f
}

// records lists the projections that have a lifecycle record, with their pause.
func (f *fixture) records() map[string]bool {
	rows, err := f.db.Pool.Query(f.t.Context(), `SELECT projection, paused FROM eventline_projections`)
	require.NoError(f.t, err)
	out := map[string]bool{}
	for rows.Next() {
		var name string
		var paused bool
		require.NoError(f.t, rows.Scan(&name, &paused))
		out[name] = paused
	}
	require.NoError(f.t, rows.Err())
	return out
}

// paused reads projection name's lifecycle record: whether it is paused.
func (f *fixture) paused(name string) bool {
	var paused bool
	require.NoError(f.t, f.db.Pool.QueryRow(f.t.Context(), `SELECT paused FROM eventline_projections WHERE projection = $1`, name).
		Scan(&paused))
	return paused
}

func (f *fixture) ticks(n int) {
	events := make([]eventstore.Event, n)
	for i := range events {
		events[i] = eventlinetest.Event("clock", "c-1", "Ticked", Ticked{N: i})
	}
	eventlinetest.Append(f.t, f.db.Pool, events...)
}

// waitFor polls cond every 20ms until it holds or waitTimeout passes.
func (f *fixture) waitFor(what string, cond func() bool) {
	f.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			f.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// serve starts a console on the fixture's database.
func (f *fixture) serve(cfg console.Config) *httptest.Server {
	f.t.Helper()
	cfg.Pool = f.db.Pool
	cfg.Logger = zaptest.NewLogger(f.t)
	h, err := console.New(cfg)
	require.NoError(f.t, err)
	srv := httptest.NewServer(h)
	f.t.Cleanup(srv.Close)
	return srv
}
