package runner_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/eventline/eventline"
	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/eventstore/postgres"
	"github.com/eventline/eventline/internal/lifecycle"
	"github.com/eventline/eventline/internal/pgtest"
	"github.com/eventline/eventline/projector"
	"github.com/eventline/eventline/runner"
)

func TestMain(m *testing.M) {
	if url := os.Getenv(childEnv); url != "" {
		os.Exit(childMain(url))
	}
	pgtest.Main(m)
}

const waitTimeout = 30 * time.Second

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// recorder is a projection that writes every event it applies into the table applied, in the
// batch's transaction: what is in that table is exactly what committed.
type recorder struct {
	name string
	projector.FilterSpec
	fail func(ev eventstore.PersistedEvent) error // optional
}

func (r *recorder) Name() string { return r.name }

func (r *recorder) Setup(ctx context.Context, tx pgx.Tx) error { return createApplied(ctx, tx) }

func createApplied(ctx context.Context, db interface {
	Exec(context.Context, string, ...any) (pgconn.CommandTag, error)
}) error {
	_, err := db.Exec(ctx, `CREATE TABLE IF NOT EXISTS applied (
		seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
		projection text NOT NULL, global_position bigint NOT NULL, event_id uuid NOT NULL,
		aggregate_type text NOT NULL, aggregate_id text NOT NULL, aggregate_version bigint NOT NULL)`)
	return err
}

func (r *recorder) Reset(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, `DELETE FROM applied WHERE projection = $1`, r.name)
	return err
}

func (r *recorder) Handle(ctx context.Context, tx pgx.Tx, events []eventstore.PersistedEvent) error {
	rows := make([][]any, 0, len(events))
	for _, ev := range events {
		if r.fail != nil {
			if err := r.fail(ev); err != nil {
				return err
			}
		}
		rows = append(rows, []any{r.name, ev.GlobalPosition, ev.EventID, ev.AggregateType, ev.AggregateID, ev.AggregateVersion})
	}
	_, err := tx.CopyFrom(ctx, pgx.Identifier{"applied"},
		[]string{"projection", "global_position", "event_id", "aggregate_type", "aggregate_id", "aggregate_version"},
		pgx.CopyFromRows(rows))
	return err
}

// insertApplied records ev as applied by projection, in tx (one statement per event).
func insertApplied(ctx context.Context, tx pgx.Tx, projection string, ev eventstore.PersistedEvent) error {
	_, err := tx.Exec(ctx, `INSERT INTO applied (projection, global_position, event_id, aggregate_type, aggregate_id, aggregate_version)
		VALUES ($1, $2, $3, $4, $5, $6)`, projection, ev.GlobalPosition, ev.EventID, ev.AggregateType, ev.AggregateID, ev.AggregateVersion)
	return err
}

// appliedPositions returns the positions a projection applied, in the order applied.
func appliedPositions(t *testing.T, pool *pgxpool.Pool, name string) []int64 {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT global_position FROM applied WHERE projection = $1 ORDER BY seq`, name)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	require.NoError(t, err)
	return out
}

func committedPositions(t *testing.T, pool *pgxpool.Pool, where string) []int64 {
	t.Helper()
	if where == "" {
		where = "true"
	}
	rows, err := pool.Query(context.Background(), `SELECT global_position FROM events WHERE `+where+` ORDER BY global_position`)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	require.NoError(t, err)
	return out
}

// harness runs runners against one database and lets tests wait on their progress.
type harness struct {
	t     *testing.T
	db    *pgtest.Database
	store *postgres.Store

	mu      sync.Mutex
	changed chan struct{}
	held    map[int64]bool
	batches []runner.BatchInfo // committed, as the BatchCommitted hook reported them
}

func newHarness(t *testing.T, notify bool) *harness {
	db := pgtest.NewDatabase(t)
	require.NoError(t, createApplied(context.Background(), db.Pool))
	var names eventline.Names
	if notify {
		names.NotifyChannel = "eventline_events"
	}
	return &harness{t: t, db: db, store: postgres.NewStore(&postgres.StoreConfig{Names: names}),
		changed: make(chan struct{}), held: map[int64]bool{}}
}

func (h *harness) signal() {
	h.mu.Lock()
	defer h.mu.Unlock()
	close(h.changed)
	h.changed = make(chan struct{})
}

// config returns a runner config whose hooks signal the harness.
func (h *harness) config() runner.Config {
	return runner.Config{
		Logger:       zaptest.NewLogger(h.t),
		PollInterval: 200 * time.Millisecond,
		Hooks: runner.Hooks{
			BatchCommitted: func(b runner.BatchInfo) {
				h.mu.Lock()
				h.batches = append(h.batches, b)
				h.mu.Unlock()
				h.signal()
			},
			HandlerFailed: func(_ runner.Unit, _ int64, _ error, _ runner.FailurePolicy) { h.signal() },
			HeldAtGap: func(_ runner.Unit, pos int64) {
				h.mu.Lock()
				h.held[pos] = true
				h.mu.Unlock()
				h.signal()
			},
		},
	}
}

// start runs a runner with the given projections until the test ends (or stop is called).
func (h *harness) start(cfg runner.Config, projections ...projector.Projection) (r *runner.Runner, stop func()) {
	h.t.Helper()
	r, err := runner.New(h.db.Pool, h.store, cfg)
	require.NoError(h.t, err)
	for _, p := range projections {
		require.NoError(h.t, r.Register(p))
	}
	return r, h.run(r)
}

func (h *harness) run(r *runner.Runner) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		err := r.Run(ctx)
		if err != nil {
			h.t.Errorf("runner stopped with an error: %v", err)
		}
		done <- err
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case <-done: // an error was reported when Run returned
			case <-time.After(waitTimeout):
				h.t.Fatal("runner did not stop")
			}
		})
	}
	h.t.Cleanup(stop)
	return stop
}

// waitFor waits until cond holds, checking after every runner event and every 20ms.
func (h *harness) waitFor(what string, cond func() bool) {
	h.t.Helper()
	deadline := time.After(waitTimeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		h.mu.Lock()
		ch := h.changed
		h.mu.Unlock()
		if cond() {
			return
		}
		if h.t.Failed() {
			h.t.FailNow()
		}
		select {
		case <-ch:
		case <-tick.C:
		case <-deadline:
			h.t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// committedBatches returns the batches the runners of h.config() have committed so far. The hook
// runs after the batch's commit, which a checkpoint may show first.
func (h *harness) committedBatches() []runner.BatchInfo {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.batches)
}

func (h *harness) waitHeld(pos int64) {
	h.t.Helper()
	h.waitFor(fmt.Sprintf("a projection held at position %d", pos), func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		return h.held[pos]
	})
}

// appendOne appends n events to aggregate id in its own committed transaction.
func (h *harness) appendOne(ctx context.Context, aggType, id string, n int) eventstore.AppendResult {
	h.t.Helper()
	res, err := h.store.Append(ctx, h.db.Pool, eventstore.Any(), events(aggType, id, n))
	require.NoError(h.t, err)
	return res
}

// openAppend appends in a transaction it leaves open; the caller commits or rolls back.
func (h *harness) openAppend(ctx context.Context, aggType, id string, n int) (pgx.Tx, eventstore.AppendResult) {
	h.t.Helper()
	tx, err := h.db.Pool.Begin(ctx)
	require.NoError(h.t, err)
	h.t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	res, err := h.store.Append(ctx, tx, eventstore.Any(), events(aggType, id, n))
	require.NoError(h.t, err)
	return tx, res
}

func events(aggType, id string, n int) []eventstore.Event {
	evs := make([]eventstore.Event, n)
	for i := range evs {
		evs[i] = eventstore.Event{AggregateType: aggType, AggregateID: id, EventType: "Happened", Payload: []byte(`{}`)}
	}
	return evs
}

var errBoom = errors.New("boom")

// lc returns a lifecycle store on the default tables, to read records and act as the CLI does.
func (h *harness) lc() *lifecycle.Store {
	return lifecycle.New(eventline.Names{})
}

// record reads a projection's lifecycle record (the zero Record before it exists).
func (h *harness) record(name string) lifecycle.Record {
	h.t.Helper()
	rec, err := h.lc().Get(context.Background(), h.db.Pool, name)
	if errors.Is(err, lifecycle.ErrNotFound) {
		return lifecycle.Record{}
	}
	require.NoError(h.t, err)
	return rec
}

// inTx runs f in a transaction and requires it to succeed.
func (h *harness) inTx(f func(tx pgx.Tx) error) {
	h.t.Helper()
	require.NoError(h.t, pgx.BeginFunc(context.Background(), h.db.Pool, f))
}
