package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline"
	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/eventstore/postgres"
	"github.com/eventline/eventline/internal/pgtest"
	"github.com/eventline/eventline/projector"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func newEvents(aggType, aggID string, n int) []eventstore.Event {
	evs := make([]eventstore.Event, n)
	for i := range evs {
		evs[i] = eventstore.Event{
			AggregateType: aggType, AggregateID: aggID,
			EventType: "Happened", Payload: []byte(fmt.Sprintf(`{"i":%d}`, i)),
		}
	}
	return evs
}

func count(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	require.NoError(t, pool.QueryRow(context.Background(), sql, args...).Scan(&n))
	return n
}

func TestAppendAndRead(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewDatabase(t)
	store := postgres.NewStore(nil)

	id := uuid.New()
	created := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	in := []eventstore.Event{
		{AggregateType: "account", AggregateID: "a1", EventID: id, EventType: "Opened", EventVersion: 2,
			Payload: []byte(`{"owner":"ann"}`), Metadata: []byte(`{"ip":"10.0.0.1"}`),
			CausationID: "c1", CorrelationID: "r1", TraceID: "t1", CreatedAt: created},
		{AggregateType: "account", AggregateID: "a1", EventType: "Deposited", Payload: []byte(`{"amount":5}`)},
	}
	before := time.Now()
	res, err := store.Append(ctx, db.Pool, eventstore.NoStream(), in)
	require.NoError(t, err)
	require.Equal(t, int64(1), res.FromVersion())
	require.Equal(t, int64(2), res.ToVersion())
	require.Len(t, res.GlobalPositions(), 2)
	require.Equal(t, uuid.Nil, in[1].EventID, "the caller's slice is not modified")

	got, err := store.ReadEvents(ctx, db.Pool, 0, 10)
	require.NoError(t, err)
	require.Len(t, got, 2)
	e0, e1 := got[0], got[1]
	require.Equal(t, res.GlobalPositions()[0], e0.GlobalPosition)
	require.Equal(t, id, e0.EventID)
	require.Equal(t, int64(1), e0.AggregateVersion)
	require.Equal(t, 2, e0.EventVersion)
	require.JSONEq(t, `{"owner":"ann"}`, string(e0.Payload))
	require.JSONEq(t, `{"ip":"10.0.0.1"}`, string(e0.Metadata))
	require.Equal(t, "c1", e0.CausationID)
	require.Equal(t, "r1", e0.CorrelationID)
	require.Equal(t, "t1", e0.TraceID)
	require.True(t, e0.CreatedAt.Equal(created))

	require.NotEqual(t, uuid.Nil, e1.EventID, "a zero event ID is filled in")
	require.Equal(t, uuid.Version(7), e1.EventID.Version())
	require.Equal(t, int64(2), e1.AggregateVersion)
	require.Equal(t, 1, e1.EventVersion)
	require.Nil(t, e1.Metadata)
	require.WithinDuration(t, before, e1.CreatedAt, time.Minute)
}

func TestGetLatestGlobalPositionEmpty(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewDatabase(t)
	store := postgres.NewStore(nil)
	pos, err := store.GetLatestGlobalPosition(ctx, db.Pool)
	require.NoError(t, err)
	require.Zero(t, pos)
	res, err := store.Append(ctx, db.Pool, eventstore.Any(), newEvents("a", "1", 3))
	require.NoError(t, err)
	pos, err = store.GetLatestGlobalPosition(ctx, db.Pool)
	require.NoError(t, err)
	require.Equal(t, res.LastPosition(), pos)
}

func TestReadEventsPaging(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewDatabase(t)
	store := postgres.NewStore(nil)
	for i := 0; i < 10; i++ {
		_, err := store.Append(ctx, db.Pool, eventstore.Any(), newEvents("a", fmt.Sprint(i%3), 5))
		require.NoError(t, err)
	}
	var all []eventstore.PersistedEvent
	from := int64(0)
	pages := 0
	for {
		page, err := store.ReadEvents(ctx, db.Pool, from, 7)
		require.NoError(t, err)
		if len(page) == 0 {
			break
		}
		require.LessOrEqual(t, len(page), 7)
		pages++
		all = append(all, page...)
		from = page[len(page)-1].GlobalPosition
	}
	require.Len(t, all, 50)
	require.Equal(t, 8, pages)
	for i := 1; i < len(all); i++ {
		require.Greater(t, all[i].GlobalPosition, all[i-1].GlobalPosition)
	}
	_, err := store.ReadEvents(ctx, db.Pool, 0, 0)
	require.Error(t, err)
}

func TestReadAggregateStreamRanges(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewDatabase(t)
	store := postgres.NewStore(nil)
	_, err := store.Append(ctx, db.Pool, eventstore.NoStream(), newEvents("order", "o1", 6))
	require.NoError(t, err)
	_, err = store.Append(ctx, db.Pool, eventstore.NoStream(), newEvents("order", "o2", 2))
	require.NoError(t, err)

	v := func(n int64) *int64 { return &n }
	for _, tc := range []struct {
		name     string
		from, to *int64
		want     []int64
	}{
		{"all", nil, nil, []int64{1, 2, 3, 4, 5, 6}},
		{"from", v(4), nil, []int64{4, 5, 6}},
		{"to", nil, v(2), []int64{1, 2}},
		{"between", v(2), v(4), []int64{2, 3, 4}},
		{"single", v(3), v(3), []int64{3}},
		{"past the end", v(7), nil, nil},
		{"inverted", v(4), v(2), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := store.ReadAggregateStream(ctx, db.Pool, "order", "o1", tc.from, tc.to)
			require.NoError(t, err)
			var got []int64
			for _, e := range s.Events {
				require.Equal(t, "o1", e.AggregateID)
				got = append(got, e.AggregateVersion)
			}
			require.Equal(t, tc.want, got)
			require.Equal(t, len(tc.want), s.Len())
			require.Equal(t, len(tc.want) == 0, s.IsEmpty())
			if len(tc.want) > 0 {
				require.Equal(t, tc.want[len(tc.want)-1], s.Version())
			}
		})
	}
	s, err := store.ReadAggregateStream(ctx, db.Pool, "order", "missing", nil, nil)
	require.NoError(t, err)
	require.True(t, s.IsEmpty())
	require.Zero(t, s.Version())
}

func TestNoStreamRace(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewDatabase(t)
	store := postgres.NewStore(nil)
	const racers = 50
	var (
		wg              sync.WaitGroup
		mu              sync.Mutex
		wins, conflicts int
		other           []error
		start           = make(chan struct{})
	)
	for i := 0; i < racers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
				_, err := store.Append(ctx, tx, eventstore.NoStream(), newEvents("cart", "c1", 2))
				return err
			})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				wins++
			case errors.Is(err, eventstore.ErrOptimisticConcurrency):
				conflicts++
			default:
				other = append(other, err)
			}
		}()
	}
	close(start)
	wg.Wait()
	require.Empty(t, other)
	require.Equal(t, 1, wins)
	require.Equal(t, racers-1, conflicts)
	require.EqualValues(t, 2, count(t, db.Pool, `SELECT count(*) FROM events`))
	require.EqualValues(t, 2, count(t, db.Pool, `SELECT version FROM aggregate_heads WHERE aggregate_id = 'c1'`))
}

// Concurrent Any appends to one new aggregate all succeed with contiguous versions, whichever of
// Append's statements they send: store a has never seen the aggregate (the statement that may
// insert the head row), store b believes it has a head row (its first append was rolled back),
// so its appends update alone, find no row while nobody committed one, then take the fallback.
func TestAnyConcurrentAllSucceed(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewDatabase(t)
	a, b := postgres.NewStore(nil), postgres.NewStore(nil)
	require.Error(t, pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		if _, err := b.Append(ctx, tx, eventstore.Any(), newEvents("ledger", "l1", 1)); err != nil {
			return err
		}
		return errors.New("roll back")
	}))
	const writers, perWriter, batch = 20, 5, 3
	var wg sync.WaitGroup
	errs := make(chan error, writers*perWriter)
	for w := 0; w < writers; w++ {
		store := []*postgres.Store{a, b}[w%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perWriter; i++ {
				errs <- pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
					res, err := store.Append(ctx, tx, eventstore.Any(), newEvents("ledger", "l1", batch))
					if err == nil && res.ToVersion()-res.FromVersion() != batch-1 {
						err = fmt.Errorf("versions %d..%d for %d events", res.FromVersion(), res.ToVersion(), batch)
					}
					return err
				})
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	requireContiguous(ctx, t, a, db.Pool, "ledger", "l1", writers*perWriter*batch)
}

// requireContiguous checks that the aggregate has n events, versions 1 to n, in position order.
func requireContiguous(ctx context.Context, t *testing.T, store *postgres.Store, pool *pgxpool.Pool, aggType, aggID string, n int) {
	t.Helper()
	s, err := store.ReadAggregateStream(ctx, pool, aggType, aggID, nil, nil)
	require.NoError(t, err)
	require.Equal(t, n, s.Len())
	for i, e := range s.Events {
		require.Equal(t, int64(i+1), e.AggregateVersion, "versions are contiguous")
		if i > 0 {
			require.Greater(t, e.GlobalPosition, s.Events[i-1].GlobalPosition, "versions follow positions")
		}
	}
}

func TestExactRace(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewDatabase(t)
	store := postgres.NewStore(nil)
	_, err := store.Append(ctx, db.Pool, eventstore.NoStream(), newEvents("doc", "d1", 1))
	require.NoError(t, err)

	const racers = 20
	var wg sync.WaitGroup
	results := make(chan error, racers)
	start := make(chan struct{})
	for i := 0; i < racers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			results <- pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
				_, err := store.Append(ctx, tx, eventstore.Exact(1), newEvents("doc", "d1", 2))
				return err
			})
		}()
	}
	close(start)
	wg.Wait()
	close(results)
	wins := 0
	for err := range results {
		if err == nil {
			wins++
			continue
		}
		var ce *eventstore.ConcurrencyError
		require.ErrorAs(t, err, &ce)
		require.Equal(t, "d1", ce.AggregateID)
		require.Equal(t, int64(3), ce.Actual)
		require.ErrorContains(t, err, `expected version 1, actual version 3`)
	}
	require.Equal(t, 1, wins)
	require.EqualValues(t, 3, count(t, db.Pool, `SELECT count(*) FROM events`))

	// A wrong expectation on an aggregate that does not exist.
	_, err = store.Append(ctx, db.Pool, eventstore.Exact(4), newEvents("doc", "nope", 1))
	require.ErrorIs(t, err, eventstore.ErrOptimisticConcurrency)
	require.ErrorContains(t, err, "actual version 0")
}

func TestRollbackLeavesHeadUnchanged(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewDatabase(t)
	store := postgres.NewStore(nil)
	_, err := store.Append(ctx, db.Pool, eventstore.NoStream(), newEvents("a", "1", 2))
	require.NoError(t, err)

	tx, err := db.Pool.Begin(ctx)
	require.NoError(t, err)
	res, err := store.Append(ctx, tx, eventstore.Exact(2), newEvents("a", "1", 3))
	require.NoError(t, err)
	require.Equal(t, int64(5), res.ToVersion())
	require.NoError(t, tx.Rollback(ctx))

	require.EqualValues(t, 2, count(t, db.Pool, `SELECT version FROM aggregate_heads`))
	res, err = store.Append(ctx, db.Pool, eventstore.Exact(2), newEvents("a", "1", 1))
	require.NoError(t, err)
	require.Equal(t, int64(3), res.FromVersion())
}

func TestBadInputWritesNothing(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewDatabase(t)
	store := postgres.NewStore(nil)
	dup := uuid.New()
	mixed := newEvents("a", "1", 2)
	mixed[1].AggregateID = "2"
	for _, tc := range []struct {
		name   string
		events []eventstore.Event
		want   error
		text   string
	}{
		{"nil batch", nil, eventstore.ErrNoEvents, ""},
		{"empty batch", []eventstore.Event{}, eventstore.ErrNoEvents, ""},
		{"mixed aggregates", mixed, eventstore.ErrInvalidEvent, "differs from the batch"},
		{"empty aggregate type", []eventstore.Event{{AggregateID: "1", EventType: "x"}}, eventstore.ErrInvalidEvent, "empty aggregate type"},
		{"empty aggregate ID", []eventstore.Event{{AggregateType: "a", EventType: "x"}}, eventstore.ErrInvalidEvent, "empty aggregate ID"},
		{"empty event type", []eventstore.Event{{AggregateType: "a", AggregateID: "1"}}, eventstore.ErrInvalidEvent, "empty event type"},
		{"invalid metadata", []eventstore.Event{{AggregateType: "a", AggregateID: "1", EventType: "x", Metadata: []byte(`{"a":`)}}, eventstore.ErrInvalidEvent, "metadata"},
		{"duplicate IDs in batch", []eventstore.Event{
			{AggregateType: "a", AggregateID: "1", EventType: "x", EventID: dup},
			{AggregateType: "a", AggregateID: "1", EventType: "y", EventID: dup}}, eventstore.ErrDuplicateEventID, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := store.Append(ctx, db.Pool, eventstore.Any(), tc.events)
			require.ErrorIs(t, err, tc.want)
			require.NotErrorIs(t, err, eventstore.ErrOptimisticConcurrency)
			if tc.text != "" {
				require.ErrorContains(t, err, tc.text)
			}
		})
	}
	_, err := store.Append(ctx, db.Pool, eventstore.Exact(-1), newEvents("a", "1", 1))
	require.ErrorIs(t, err, eventstore.ErrInvalidEvent)
	require.Zero(t, count(t, db.Pool, `SELECT count(*) FROM events`))
	require.Zero(t, count(t, db.Pool, `SELECT count(*) FROM aggregate_heads`))
}

func TestDuplicateEventIDIsNotAVersionConflict(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewDatabase(t)
	store := postgres.NewStore(nil)
	evs := newEvents("a", "1", 1)
	evs[0].EventID = uuid.New()
	_, err := store.Append(ctx, db.Pool, eventstore.Any(), evs)
	require.NoError(t, err)

	other := newEvents("b", "2", 1)
	other[0].EventID = evs[0].EventID
	tx, err := db.Pool.Begin(ctx)
	require.NoError(t, err)
	_, err = store.Append(ctx, tx, eventstore.Any(), other)
	require.ErrorIs(t, err, eventstore.ErrDuplicateEventID)
	require.NotErrorIs(t, err, eventstore.ErrOptimisticConcurrency)
	require.NoError(t, tx.Rollback(ctx))
	require.EqualValues(t, 1, count(t, db.Pool, `SELECT count(*) FROM events`))
	require.EqualValues(t, 0, count(t, db.Pool, `SELECT count(*) FROM aggregate_heads WHERE aggregate_type = 'b'`))
}

func TestInvalidNames(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		names eventline.Names
		field string // the error names it
	}{
		{eventline.Names{EventsTable: "events; DROP TABLE users"}, "EventsTable"},
		{eventline.Names{EventsTable: "1events"}, "EventsTable"},
		{eventline.Names{EventsTable: "a.b.c"}, "EventsTable"},
		{eventline.Names{EventsTable: `ev"ents`}, "EventsTable"},
		{eventline.Names{AggregateHeadsTable: "heads-table"}, "AggregateHeadsTable"},
		{eventline.Names{CheckpointsTable: "check points"}, "CheckpointsTable"},
		{eventline.Names{NotifyChannel: "new events"}, "NotifyChannel"},
		{eventline.Names{NotifyChannel: "x123456789012345678901234567890123456789012345678901234567890abcd"}, "NotifyChannel"},
		{eventline.Names{AggregateHeadsTable: "events"}, "AggregateHeadsTable"},
	} {
		cfg := postgres.StoreConfig{Names: c.names}
		err := cfg.Validate()
		require.ErrorIs(t, err, eventline.ErrInvalidName)
		require.ErrorContains(t, err, c.field)
		store, nerr := postgres.New(cfg)
		require.Nil(t, store)
		require.Equal(t, err, nerr, "New returns Validate's error")
		require.PanicsWithError(t, err.Error(), func() { postgres.NewStore(&cfg) })
	}
	require.NoError(t, postgres.StoreConfig{Names: eventline.Names{EventsTable: "app.events", NotifyChannel: "Events_1"}}.Validate())
	// The zero value and nil are the defaults.
	require.Equal(t, eventline.Names{}.WithDefaults(), postgres.NewStore(nil).Names())
	store, err := postgres.New(postgres.StoreConfig{})
	require.NoError(t, err)
	require.Equal(t, eventline.EventsTableDefault, store.Names().EventsTable)
}

func TestNotifyOnCommitOnly(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewDatabase(t)
	store := postgres.NewStore(&postgres.StoreConfig{Names: eventline.Names{NotifyChannel: "Events_Here"}})
	listener := db.Conn(t)
	_, err := listener.Exec(ctx, `LISTEN `+pgx.Identifier{"Events_Here"}.Sanitize())
	require.NoError(t, err)

	// Rolled back: no notification.
	tx, err := db.Pool.Begin(ctx)
	require.NoError(t, err)
	_, err = store.Append(ctx, tx, eventstore.Any(), newEvents("a", "1", 2))
	require.NoError(t, err)
	require.NoError(t, tx.Rollback(ctx))

	// Committed: one notification carrying the last position.
	var res eventstore.AppendResult
	require.NoError(t, pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		res, err = store.Append(ctx, tx, eventstore.Any(), newEvents("a", "1", 3))
		return err
	}))
	waitCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	n, err := listener.WaitForNotification(waitCtx)
	require.NoError(t, err)
	require.Equal(t, "Events_Here", n.Channel)
	require.Equal(t, fmt.Sprint(res.LastPosition()), n.Payload, "the first notification is the committed append's")

	// A failed Exact append that the caller commits anyway notifies nothing either.
	_, err = store.Append(ctx, db.Pool, eventstore.Exact(99), newEvents("a", "1", 1))
	require.ErrorIs(t, err, eventstore.ErrOptimisticConcurrency)
	_, err = db.Pool.Exec(ctx, `SELECT pg_notify('Events_Here', 'marker')`)
	require.NoError(t, err)
	n, err = listener.WaitForNotification(waitCtx)
	require.NoError(t, err)
	require.Equal(t, "marker", n.Payload)
}

func TestCustomTableNames(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewEmptyDatabase(t)
	_, err := db.Pool.Exec(ctx, `CREATE SCHEMA app`)
	require.NoError(t, err)
	cfg := &postgres.StoreConfig{Names: eventline.Names{EventsTable: "app.Ledger_Events", AggregateHeadsTable: "app.ledger_heads"}}
	_, err = migrationsApply(ctx, db.Pool, cfg)
	require.NoError(t, err)
	store := postgres.NewStore(cfg)
	_, err = store.Append(ctx, db.Pool, eventstore.NoStream(), newEvents("a", "1", 2))
	require.NoError(t, err)
	require.EqualValues(t, 2, count(t, db.Pool, `SELECT count(*) FROM app."Ledger_Events"`))
	got, err := store.ReadEvents(ctx, db.Pool, 0, 10)
	require.NoError(t, err)
	require.Len(t, got, 2)
}

// Batches up to 32 events go as VALUES rows, larger ones as arrays: both keep version order in
// position order and round-trip every field.
func TestLargeAndSmallBatches(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewDatabase(t)
	store := postgres.NewStore(&postgres.StoreConfig{Names: eventline.Names{NotifyChannel: "big"}})
	for _, n := range []int{1, 31, 32, 33, 250} {
		evs := newEvents("batch", fmt.Sprint(n), n)
		for i := range evs {
			evs[i].Metadata = []byte(fmt.Sprintf(`{"i":%d}`, i))
			evs[i].TraceID = fmt.Sprint("t", i)
		}
		res, err := store.Append(ctx, db.Pool, eventstore.NoStream(), evs)
		require.NoError(t, err)
		require.Equal(t, int64(n), res.ToVersion())
		res, err = store.Append(ctx, db.Pool, eventstore.Exact(int64(n)), evs[:1])
		require.NoError(t, err)
		require.Equal(t, int64(n+1), res.ToVersion())
		s, err := store.ReadAggregateStream(ctx, db.Pool, "batch", fmt.Sprint(n), nil, nil)
		require.NoError(t, err)
		require.Equal(t, n+1, s.Len())
		for i, e := range s.Events[:n] {
			require.Equal(t, int64(i+1), e.AggregateVersion)
			require.JSONEq(t, fmt.Sprintf(`{"i":%d}`, i), string(e.Metadata))
			require.Equal(t, fmt.Sprint("t", i), e.TraceID)
			require.JSONEq(t, fmt.Sprintf(`{"i":%d}`, i), string(e.Payload))
			if i > 0 {
				require.Greater(t, e.GlobalPosition, s.Events[i-1].GlobalPosition)
			}
		}
	}
}

func TestReadEventsBetween(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewDatabase(t)
	store := postgres.NewStore(nil)
	var all []int64
	for i, typ := range []string{"order", "account", "order", "account"} {
		evs := newEvents(typ, fmt.Sprint(i), 2)
		evs[1].EventType = "Other"
		res, err := store.Append(ctx, db.Pool, eventstore.NoStream(), evs)
		require.NoError(t, err)
		all = append(all, res.GlobalPositions()...)
	}
	positions := func(evs []eventstore.PersistedEvent) []int64 {
		var out []int64
		for _, e := range evs {
			out = append(out, e.GlobalPosition)
		}
		return out
	}
	got, err := store.ReadEventsBetween(ctx, db.Pool, all[1], all[5], 0, nil, nil)
	require.NoError(t, err)
	require.Equal(t, all[2:6], positions(got), "(from, to], no limit")
	got, err = store.ReadEventsBetween(ctx, db.Pool, 0, all[7], 3, nil, nil)
	require.NoError(t, err)
	require.Equal(t, all[:3], positions(got), "limit")
	got, err = store.ReadEventsBetween(ctx, db.Pool, 0, all[7], 0, []string{"account"}, []string{"Happened"})
	require.NoError(t, err)
	require.Equal(t, []int64{all[2], all[6]}, positions(got), "filters in SQL")
}

// TestReadPartitionBetween: the P partitions' reads together return every event once, each to
// the partition projector.PartitionOf gives its aggregate, with the type filters and limit.
func TestReadPartitionBetween(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewDatabase(t)
	store := postgres.NewStore(nil)
	for i := 0; i < 40; i++ {
		evs := newEvents([]string{"order", "account"}[i%2], fmt.Sprintf("agg-%d-é", i), 1+i%3)
		_, err := store.Append(ctx, db.Pool, eventstore.NoStream(), evs)
		require.NoError(t, err)
	}
	all, err := store.ReadEventsBetween(ctx, db.Pool, 0, 1<<62, 0, nil, nil)
	require.NoError(t, err)
	const parts = 4
	seen := map[int64]bool{}
	for p := 0; p < parts; p++ {
		got, err := store.ReadPartitionBetween(ctx, db.Pool, 0, all[len(all)-1].GlobalPosition, 0, nil, nil, parts, p)
		require.NoError(t, err)
		require.NotEmpty(t, got)
		for i, ev := range got {
			require.Equal(t, p, projector.PartitionOf(ev.AggregateID, parts), "%s in partition %d", ev.AggregateID, p)
			require.False(t, seen[ev.GlobalPosition])
			seen[ev.GlobalPosition] = true
			if i > 0 {
				require.Less(t, got[i-1].GlobalPosition, ev.GlobalPosition, "position order")
			}
		}
		limited, err := store.ReadPartitionBetween(ctx, db.Pool, 0, all[len(all)-1].GlobalPosition, 2, []string{"account"}, nil, parts, p)
		require.NoError(t, err)
		require.LessOrEqual(t, len(limited), 2)
		for _, ev := range limited {
			require.Equal(t, "account", ev.AggregateType)
		}
	}
	require.Len(t, seen, len(all), "every event in exactly one partition")
}

// StoreConfig.TraceID fills the trace ID of the events appended without one, from the Append
// call's context; an event's own trace ID is kept.
func TestAppendRecordsCallersTraceID(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewDatabase(t)
	type traceKey struct{}
	cfg := &postgres.StoreConfig{}
	cfg.TraceID = func(ctx context.Context) string { s, _ := ctx.Value(traceKey{}).(string); return s }
	store := postgres.NewStore(cfg)
	_, err := store.Append(context.WithValue(ctx, traceKey{}, "caller"), db.Pool, eventstore.Any(), []eventstore.Event{
		{AggregateType: "a", AggregateID: "1", EventType: "X"},
		{AggregateType: "a", AggregateID: "1", EventType: "X", TraceID: "own"},
	})
	require.NoError(t, err)
	_, err = store.Append(ctx, db.Pool, eventstore.Any(), []eventstore.Event{{AggregateType: "a", AggregateID: "1", EventType: "X"}})
	require.NoError(t, err)
	got, err := store.ReadEvents(ctx, db.Pool, 0, 10)
	require.NoError(t, err)
	require.Equal(t, []string{"caller", "own", ""}, []string{got[0].TraceID, got[1].TraceID, got[2].TraceID})
}
