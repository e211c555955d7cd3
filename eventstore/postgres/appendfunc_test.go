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
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline"
	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/eventstore/postgres"
	"github.com/eventline/eventline/internal/horizon"
	"github.com/eventline/eventline/internal/pgtest"
	"github.com/eventline/eventline/internal/sqlname"
	"github.com/eventline/eventline/migrations"
)

// funcRow is a row returned by the append function of migration 0005.
type funcRow struct {
	Position, Version int64
	EventID           uuid.UUID
}

// callAppendFunc calls the append function of the default events table ("events"). expected nil
// is SQL NULL (any); channel "" is NULL.
func callAppendFunc(ctx context.Context, db eventstore.DBTX, aggType, aggID string, expected *int64, events, channel string) ([]funcRow, error) {
	var ch *string
	if channel != "" {
		ch = &channel
	}
	rows, err := db.Query(ctx, `SELECT global_position, aggregate_version, event_id FROM eventline_append_events($1, $2, $3, $4, $5)`,
		aggType, aggID, expected, events, ch)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (funcRow, error) {
		var f funcRow
		err := r.Scan(&f.Position, &f.Version, &f.EventID)
		return f, err
	})
}

func i64(n int64) *int64 { return &n }

func versionsOf(rows []funcRow) []int64 {
	var out []int64
	for _, r := range rows {
		out = append(out, r.Version)
	}
	return out
}

func headOf(t *testing.T, db *pgtest.Database, aggType, aggID string) int64 {
	t.Helper()
	return count(t, db.Pool, `SELECT coalesce((SELECT version FROM aggregate_heads WHERE aggregate_type = $1 AND aggregate_id = $2), -1)`, aggType, aggID)
}

func TestAppendFuncName(t *testing.T) {
	t.Parallel()
	name, err := migrations.AppendFunc(eventline.Names{})
	require.NoError(t, err)
	require.Equal(t, `"eventline_append_events"`, name, "the name callAppendFunc uses")
}

// The function writes every field as Append does, with contiguous versions and the head row, and
// Append and the function go on from each other's versions.
func TestAppendFuncAppends(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewDatabase(t)
	store := postgres.NewStore(nil)
	id := uuid.New()
	created := time.Date(2021, 2, 3, 4, 5, 6, 0, time.UTC)
	before := time.Now()
	rows, err := callAppendFunc(ctx, db.Pool, "account", "a1", nil, fmt.Sprintf(`[
		{"event_type": "Opened", "event_id": %q, "event_version": 2, "payload": {"owner": "ann", "n": 1.50},
		 "metadata": {"ip": "10.0.0.1"}, "causation_id": "c1", "correlation_id": "r1", "trace_id": "t1",
		 "created_at": %q},
		{"event_type": "Signed", "payload_base64": "AAH/", "metadata": null, "trace_id": ""},
		{"event_type": "Noted", "payload": "text"},
		{"event_type": "Empty", "event_version": 0}]`, id, created.Format(time.RFC3339Nano)), "")
	require.NoError(t, err)
	require.Equal(t, []int64{1, 2, 3, 4}, versionsOf(rows))
	require.Equal(t, id, rows[0].EventID)
	for i := 1; i < len(rows); i++ {
		require.Greater(t, rows[i].Position, rows[i-1].Position, "positions in version order")
		require.Equal(t, uuid.Version(7), rows[i].EventID.Version(), "a missing event ID becomes a UUIDv7")
	}
	require.EqualValues(t, 4, headOf(t, db, "account", "a1"))

	s, err := store.ReadAggregateStream(ctx, db.Pool, "account", "a1", nil, nil)
	require.NoError(t, err)
	require.Equal(t, 4, s.Len())
	e0, e1, e2, e3 := s.Events[0], s.Events[1], s.Events[2], s.Events[3]
	require.Equal(t, rows[0].Position, e0.GlobalPosition)
	require.Equal(t, "Opened", e0.EventType)
	require.Equal(t, 2, e0.EventVersion)
	require.JSONEq(t, `{"owner": "ann", "n": 1.50}`, string(e0.Payload))
	require.Equal(t, `{"n": 1.50, "owner": "ann"}`, string(e0.Payload), "payload: the jsonb text")
	require.JSONEq(t, `{"ip": "10.0.0.1"}`, string(e0.Metadata))
	require.Equal(t, []string{"c1", "r1", "t1"}, []string{e0.CausationID, e0.CorrelationID, e0.TraceID})
	require.True(t, e0.CreatedAt.Equal(created))
	require.Equal(t, []byte{0, 1, 0xff}, e1.Payload, "payload_base64: the decoded bytes")
	require.Nil(t, e1.Metadata)
	require.Empty(t, e1.TraceID)
	require.Equal(t, 1, e1.EventVersion)
	require.WithinDuration(t, before, e1.CreatedAt, time.Minute)
	require.Equal(t, `"text"`, string(e2.Payload))
	require.Empty(t, e3.Payload)
	require.Equal(t, 1, e3.EventVersion)

	// Append goes on from the function's head, and the function from Append's.
	res, err := store.Append(ctx, db.Pool, eventstore.Exact(4), newEvents("account", "a1", 2))
	require.NoError(t, err)
	require.Equal(t, int64(5), res.FromVersion())
	rows, err = callAppendFunc(ctx, db.Pool, "account", "a1", i64(6), `[{"event_type": "Closed"}]`, "")
	require.NoError(t, err)
	require.Equal(t, []int64{7}, versionsOf(rows))
	require.EqualValues(t, 7, headOf(t, db, "account", "a1"))
}

// Any, NoStream (0 or -1) and Exact: a failed expectation raises VC409, which
// MapAppendFuncError turns into Append's *ConcurrencyError, and writes nothing.
func TestAppendFuncExpectations(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewDatabase(t)
	ev := `[{"event_type": "Happened"}, {"event_type": "Happened"}]`
	_, err := callAppendFunc(ctx, db.Pool, "doc", "d1", i64(-1), ev, "")
	require.NoError(t, err)
	for _, tc := range []struct {
		name     string
		aggID    string
		expected *int64
		want     []int64 // nil: a conflict
		expect   eventstore.ExpectedVersion
		actual   int64
	}{
		{"NoStream on a stream", "d1", i64(-1), nil, eventstore.NoStream(), 2},
		{"Exact(0) on a stream", "d1", i64(0), nil, eventstore.NoStream(), 2},
		{"Exact behind", "d1", i64(1), nil, eventstore.Exact(1), 2},
		{"Exact ahead", "d1", i64(3), nil, eventstore.Exact(3), 2},
		{"Exact on no stream", "nope", i64(1), nil, eventstore.Exact(1), 0},
		{"Exact", "d1", i64(2), []int64{3, 4}, eventstore.Any(), 0},
		{"Any", "d1", nil, []int64{5, 6}, eventstore.Any(), 0},
		{"Any on no stream", "d2", nil, []int64{1, 2}, eventstore.Any(), 0},
		{"Exact(0) on no stream", "d3", i64(0), []int64{1, 2}, eventstore.Any(), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tx, err := db.Pool.Begin(ctx)
			require.NoError(t, err)
			defer func() { _ = tx.Rollback(ctx) }()
			before := count(t, db.Pool, `SELECT count(*) FROM events`)
			rows, err := callAppendFunc(ctx, tx, "doc", tc.aggID, tc.expected, ev, "")
			if tc.want != nil {
				require.NoError(t, err)
				require.Equal(t, tc.want, versionsOf(rows))
				require.NoError(t, tx.Commit(ctx))
				require.EqualValues(t, tc.want[len(tc.want)-1], headOf(t, db, "doc", tc.aggID))
				return
			}
			var pgErr *pgconn.PgError
			require.ErrorAs(t, err, &pgErr)
			require.Equal(t, postgres.ConflictSQLState, pgErr.Code)
			require.Contains(t, pgErr.Message, fmt.Sprintf(`optimistic concurrency conflict on doc %q: expected %s, actual version %d`,
				tc.aggID, tc.expect, tc.actual))
			mapped := postgres.MapAppendFuncError(err)
			require.ErrorIs(t, mapped, eventstore.ErrOptimisticConcurrency)
			var ce *eventstore.ConcurrencyError
			require.ErrorAs(t, mapped, &ce)
			require.Equal(t, eventstore.ConcurrencyError{AggregateType: "doc", AggregateID: tc.aggID, Expected: tc.expect, Actual: tc.actual}, *ce)
			require.NoError(t, tx.Rollback(ctx))
			require.Equal(t, before, count(t, db.Pool, `SELECT count(*) FROM events`))
		})
	}
}

func TestAppendFuncRejectsBadInput(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewDatabase(t)
	for _, tc := range []struct {
		name, aggID string
		expected    *int64
		events      string
		text        string
	}{
		{"empty aggregate ID", "", nil, `[{"event_type": "x"}]`, "empty aggregate type or ID"},
		{"expected below -1", "a", i64(-2), `[{"event_type": "x"}]`, "expected version -2 is invalid"},
		{"not an array", "a", nil, `{"event_type": "x"}`, "non-empty JSON array"},
		{"empty array", "a", nil, `[]`, "non-empty JSON array"},
		{"not an object", "a", nil, `[{"event_type": "x"}, 1]`, "event 1: not a JSON object"},
		{"unknown key", "a", nil, `[{"event_type": "x", "type": "y"}]`, `event 0: unknown key "type"`},
		{"no event type", "a", nil, `[{"payload": {}}]`, "event 0: event_type must be a non-empty string"},
		{"empty event type", "a", nil, `[{"event_type": ""}]`, "event 0: event_type must be a non-empty string"},
		{"both payloads", "a", nil, `[{"event_type": "x", "payload": 1, "payload_base64": "AA=="}]`, "not both"},
		{"base64 not a string", "a", nil, `[{"event_type": "x", "payload_base64": 1}]`, "payload_base64 must be a string"},
		{"bad base64", "a", nil, `[{"event_type": "x", "payload_base64": "!!"}]`, "base64"},
		{"fractional event version", "a", nil, `[{"event_type": "x", "event_version": 1.5}]`, "event_version must be an integer"},
		{"negative event version", "a", nil, `[{"event_type": "x", "event_version": -1}]`, "event_version must be an integer"},
		{"trace ID not a string", "a", nil, `[{"event_type": "x", "trace_id": 7}]`, "must be strings"},
		{"bad event ID", "a", nil, `[{"event_type": "x", "event_id": "nope"}]`, "uuid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := callAppendFunc(ctx, db.Pool, "agg", tc.aggID, tc.expected, tc.events, "")
			require.ErrorContains(t, err, tc.text)
			require.NotErrorIs(t, postgres.MapAppendFuncError(err), eventstore.ErrOptimisticConcurrency)
		})
	}
	require.Zero(t, count(t, db.Pool, `SELECT count(*) FROM events`))
	require.Zero(t, count(t, db.Pool, `SELECT count(*) FROM aggregate_heads`))
}

func TestAppendFuncDuplicateEventID(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewDatabase(t)
	id := uuid.NewString()
	ev := fmt.Sprintf(`[{"event_type": "x", "event_id": %q}]`, id)
	_, err := callAppendFunc(ctx, db.Pool, "a", "1", nil, ev, "")
	require.NoError(t, err)
	_, err = callAppendFunc(ctx, db.Pool, "b", "2", nil, ev, "")
	mapped := postgres.MapAppendFuncError(err)
	require.ErrorIs(t, mapped, eventstore.ErrDuplicateEventID)
	require.NotErrorIs(t, mapped, eventstore.ErrOptimisticConcurrency)
	require.Nil(t, postgres.MapAppendFuncError(nil))
	other := errors.New("other")
	require.Equal(t, other, postgres.MapAppendFuncError(other))
	require.EqualValues(t, -1, headOf(t, db, "b", "2"), "the head row rolled back with the statement")
}

func TestAppendFuncNotifiesOnCommitOnly(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewDatabase(t)
	listener := db.Conn(t)
	_, err := listener.Exec(ctx, `LISTEN "Func_Events"`)
	require.NoError(t, err)

	// Rolled back: no notification.
	tx, err := db.Pool.Begin(ctx)
	require.NoError(t, err)
	_, err = callAppendFunc(ctx, tx, "a", "1", nil, `[{"event_type": "x"}]`, "Func_Events")
	require.NoError(t, err)
	require.NoError(t, tx.Rollback(ctx))
	// No channel: no notification.
	_, err = callAppendFunc(ctx, db.Pool, "a", "1", nil, `[{"event_type": "x"}]`, "")
	require.NoError(t, err)

	// Committed: one notification, once the transaction commits, carrying the last position.
	tx, err = db.Pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	rows, err := callAppendFunc(ctx, tx, "a", "1", nil, `[{"event_type": "x"}, {"event_type": "y"}]`, "Func_Events")
	require.NoError(t, err)
	early, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	_, err = listener.WaitForNotification(early)
	cancel()
	require.Error(t, err, "nothing is delivered before the commit")
	require.NoError(t, tx.Commit(ctx))
	waitCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	n, err := listener.WaitForNotification(waitCtx)
	require.NoError(t, err)
	require.Equal(t, "Func_Events", n.Channel)
	require.Equal(t, fmt.Sprint(rows[1].Position), n.Payload)

	// A conflict notifies nothing either.
	_, err = callAppendFunc(ctx, db.Pool, "a", "1", i64(99), `[{"event_type": "x"}]`, "Func_Events")
	require.ErrorIs(t, postgres.MapAppendFuncError(err), eventstore.ErrOptimisticConcurrency)
	_, err = db.Pool.Exec(ctx, `SELECT pg_notify('Func_Events', 'marker')`)
	require.NoError(t, err)
	n, err = listener.WaitForNotification(waitCtx)
	require.NoError(t, err)
	require.Equal(t, "marker", n.Payload)
}

// Calls to one aggregate, through the function and Append alike, serialize on the head row: a
// second call waits for the first transaction, then goes on from its version.
func TestAppendFuncConcurrentCallsSerialize(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewDatabase(t)
	store := postgres.NewStore(nil)

	// A first call holds the head row; a second one waits for it.
	tx1, err := db.Pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx1.Rollback(ctx) }()
	first, err := callAppendFunc(ctx, tx1, "ledger", "l0", nil, `[{"event_type": "x"}, {"event_type": "x"}]`, "")
	require.NoError(t, err)
	conn := db.Conn(t)
	var pid uint32
	require.NoError(t, conn.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid))
	done := make(chan []funcRow, 1)
	go func() {
		rows, err := callAppendFunc(ctx, conn, "ledger", "l0", nil, `[{"event_type": "y"}]`, "")
		if err != nil {
			t.Error(err)
		}
		done <- rows
	}()
	require.Eventually(t, func() bool {
		return count(t, db.Pool, `SELECT count(*) FROM pg_locks WHERE pid = $1 AND NOT granted`, pid) > 0
	}, 10*time.Second, 5*time.Millisecond, "the second call waits for the first transaction's head row")
	require.Equal(t, []int64{1, 2}, versionsOf(first))
	require.NoError(t, tx1.Commit(ctx))
	second := <-done
	require.Equal(t, []int64{3}, versionsOf(second))
	require.Greater(t, second[0].Position, first[1].Position)

	// Many writers, half through the function and half through Append, on one new aggregate.
	const writers, perWriter, batch = 12, 5, 3
	var wg sync.WaitGroup
	errs := make(chan error, writers*perWriter)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perWriter; i++ {
				errs <- pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
					if w%2 == 0 {
						_, err := store.Append(ctx, tx, eventstore.Any(), newEvents("ledger", "l1", batch))
						return err
					}
					rows, err := callAppendFunc(ctx, tx, "ledger", "l1", nil, `[{"event_type": "a"}, {"event_type": "b"}, {"event_type": "c"}]`, "")
					if err == nil && rows[2].Version-rows[0].Version != batch-1 {
						err = fmt.Errorf("versions %v for %d events", versionsOf(rows), batch)
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
	requireContiguous(ctx, t, store, db.Pool, "ledger", "l1", writers*perWriter*batch)
	require.EqualValues(t, writers*perWriter*batch, headOf(t, db, "ledger", "l1"))

	// Exact through the function: one of the racers wins.
	const racers = 10
	results := make(chan error, racers)
	start := make(chan struct{})
	for i := 0; i < racers; i++ {
		go func() {
			<-start
			results <- pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
				_, err := callAppendFunc(ctx, tx, "ledger", "l0", i64(3), `[{"event_type": "z"}]`, "")
				return postgres.MapAppendFuncError(err)
			})
		}()
	}
	close(start)
	wins := 0
	for i := 0; i < racers; i++ {
		err := <-results
		if err == nil {
			wins++
			continue
		}
		var ce *eventstore.ConcurrencyError
		require.ErrorAs(t, err, &ce)
		require.Equal(t, int64(4), ce.Actual)
	}
	require.Equal(t, 1, wins)
}

// The function's transaction holds the append lock (see TestAppendersHoldTheAppendLock) and, when
// the call is its transaction's first insert, the position lock on its first position, as Append
// does; after another insert it takes none.
func TestAppendFuncPositionLock(t *testing.T) {
	t.Parallel()
	class := uint32(sqlname.PositionLockClass(sqlname.MustParse("events")))
	for _, tc := range []struct {
		name string
		// before writes first in the transaction, and returns the position locks that it holds.
		before func(ctx context.Context, tx pgx.Tx) ([]int64, error)
		locked bool
	}{
		{"first insert", nil, true},
		{"after a raw INSERT", func(ctx context.Context, tx pgx.Tx) ([]int64, error) {
			_, err := tx.Exec(ctx, `INSERT INTO events (aggregate_type, aggregate_id, aggregate_version, event_type, payload)
				VALUES ('raw', gen_random_uuid()::text, 1, 'RawInserted', '\x00')`)
			return nil, err
		}, false},
		{"after the function", func(ctx context.Context, tx pgx.Tx) ([]int64, error) {
			rows, err := callAppendFunc(ctx, tx, "other", uuid.NewString(), nil, `[{"event_type": "x"}]`, "")
			if err != nil {
				return nil, err
			}
			return []int64{rows[0].Position}, nil
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := ctxT(t)
			db := pgtest.NewDatabase(t)
			_, err := callAppendFunc(ctx, db.Pool, "a", "before", nil, `[{"event_type": "x"}, {"event_type": "x"}]`, "")
			require.NoError(t, err)
			tx, err := db.Pool.Begin(ctx)
			require.NoError(t, err)
			defer func() { _ = tx.Rollback(ctx) }()
			var pid uint32
			require.NoError(t, tx.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid))
			var want []int64
			if tc.before != nil {
				want, err = tc.before(ctx, tx)
				require.NoError(t, err)
			}
			rows, err := callAppendFunc(ctx, tx, "a", "1", nil, `[{"event_type": "x"}, {"event_type": "x"}]`, "")
			require.NoError(t, err)
			require.True(t, holdsAppendLock(t, db.Pool, pid))
			locks, err := db.Pool.Query(ctx, `SELECT objid::bigint FROM pg_locks
				WHERE locktype = 'advisory' AND classid = $1 AND objsubid = 2 AND pid = $2 AND granted`, class, pid)
			require.NoError(t, err)
			objid, err := pgx.CollectRows(locks, pgx.RowTo[int64])
			require.NoError(t, err)
			if tc.locked {
				want = append(want, rows[0].Position)
			}
			require.ElementsMatch(t, want, objid)
		})
	}
}

// The horizon tracker holds back at the first position of a transaction that called the function
// until it commits (its position lock lets a fresh tick go up to just below it), and then the
// rows are read.
func TestAppendFuncSeenByHorizon(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewDatabase(t)
	store := postgres.NewStore(nil)
	events := sqlname.MustParse("events")
	earlier, err := store.Append(ctx, db.Pool, eventstore.Any(), newEvents("a", "0", 2))
	require.NoError(t, err)

	tx, err := db.Pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	rows, err := callAppendFunc(ctx, tx, "a", "1", nil, `[{"event_type": "x"}, {"event_type": "y"}]`, "")
	require.NoError(t, err)
	later, err := store.Append(ctx, db.Pool, eventstore.Any(), newEvents("a", "2", 2))
	require.NoError(t, err)

	seq, err := horizon.Check(ctx, db.Pool, events)
	require.NoError(t, err)
	tr := horizon.New(events, seq, 0, func(ctx context.Context) (*pgx.Conn, error) { return pgx.Connect(ctx, db.URL) })
	t.Cleanup(func() { tr.Close(context.Background()) })
	h, err := tr.Tick(ctx)
	require.NoError(t, err)
	require.Equal(t, rows[0].Position-1, h, "the function's rows are in flight; its position lock bounds it")
	require.Equal(t, earlier.LastPosition(), h)
	b, ok := tr.Blocker()
	require.True(t, ok)
	require.Equal(t, rows[0].Position, b.FirstPosition)
	h, err = tr.Tick(ctx)
	require.NoError(t, err)
	require.Equal(t, rows[0].Position-1, h, "still in flight")

	require.NoError(t, tx.Commit(ctx))
	h, err = tr.Tick(ctx)
	require.NoError(t, err)
	require.Equal(t, later.LastPosition(), h)
	got, err := store.ReadEventsBetween(ctx, db.Pool, earlier.LastPosition(), h, 0, nil, nil)
	require.NoError(t, err)
	require.Len(t, got, 4)
	require.Equal(t, rows[0].Position, got[0].GlobalPosition)
	require.Equal(t, rows[1].EventID, got[1].EventID)
}

// A raw INSERT needs only the columns without defaults, and may leave the heads table alone for
// an aggregate that has no head row: Append (and the function) then go on from the highest stored
// version, and concurrent appends still serialize.
func TestAppendAfterRawInsertWithoutHead(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewDatabase(t)
	store := postgres.NewStore(nil)
	raw := func(aggID string, versions int) {
		t.Helper()
		_, err := db.Pool.Exec(ctx, `INSERT INTO events (aggregate_type, aggregate_id, aggregate_version, event_type, payload)
			SELECT 'imported', $1, v, 'Imported', convert_to('{}', 'UTF8') FROM generate_series(1, $2::int) v`, aggID, versions)
		require.NoError(t, err)
	}
	for _, id := range []string{"any", "exact", "nostream", "wrong", "func", "race"} {
		raw(id, 3)
		require.EqualValues(t, -1, headOf(t, db, "imported", id))
	}
	var ids []uuid.UUID
	rows, err := db.Pool.Query(ctx, `SELECT event_id FROM events ORDER BY global_position`)
	require.NoError(t, err)
	ids, err = pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	require.NoError(t, err)
	for _, id := range ids {
		require.Equal(t, uuid.Version(7), id.Version(), "event_id defaults to a UUIDv7")
	}

	res, err := store.Append(ctx, db.Pool, eventstore.Any(), newEvents("imported", "any", 2))
	require.NoError(t, err)
	require.Equal(t, []int64{4, 5}, []int64{res.FromVersion(), res.ToVersion()})
	require.EqualValues(t, 5, headOf(t, db, "imported", "any"))
	res, err = store.Append(ctx, db.Pool, eventstore.Any(), newEvents("imported", "any", 1))
	require.NoError(t, err)
	require.Equal(t, int64(6), res.FromVersion())

	res, err = store.Append(ctx, db.Pool, eventstore.Exact(3), newEvents("imported", "exact", 1))
	require.NoError(t, err)
	require.Equal(t, int64(4), res.FromVersion())
	require.EqualValues(t, 4, headOf(t, db, "imported", "exact"))

	// Conflicts report the events' version and leave the transaction usable, as with a head row.
	tx, err := db.Pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	for _, exp := range []eventstore.ExpectedVersion{eventstore.NoStream(), eventstore.Exact(2), eventstore.Exact(4)} {
		_, err = store.Append(ctx, tx, exp, newEvents("imported", "nostream", 1))
		var ce *eventstore.ConcurrencyError
		require.ErrorAs(t, err, &ce, exp.String())
		require.Equal(t, int64(3), ce.Actual, exp.String())
	}
	_, err = store.Append(ctx, tx, eventstore.Exact(2), newEvents("imported", "wrong", 1))
	require.ErrorContains(t, err, "expected version 2, actual version 3")
	require.NoError(t, tx.Commit(ctx))
	require.EqualValues(t, -1, headOf(t, db, "imported", "nostream"))

	fr, err := callAppendFunc(ctx, db.Pool, "imported", "func", i64(3), `[{"event_type": "x"}]`, "")
	require.NoError(t, err)
	require.Equal(t, []int64{4}, versionsOf(fr))
	_, err = callAppendFunc(ctx, db.Pool, "imported", "race", i64(-1), `[{"event_type": "x"}]`, "")
	require.ErrorContains(t, err, "expected no stream, actual version 3")

	// First appends racing on an aggregate without a head row meet in ON CONFLICT and serialize.
	const racers = 10
	var wg sync.WaitGroup
	errs := make(chan error, racers)
	start := make(chan struct{})
	for i := 0; i < racers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs <- pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
				_, err := store.Append(ctx, tx, eventstore.Any(), newEvents("imported", "race", 2))
				return err
			})
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	s, err := store.ReadAggregateStream(ctx, db.Pool, "imported", "race", nil, nil)
	require.NoError(t, err)
	require.Equal(t, 3+2*racers, s.Len())
	for i, e := range s.Events {
		require.Equal(t, int64(i+1), e.AggregateVersion)
	}
	require.EqualValues(t, 3+2*racers, headOf(t, db, "imported", "race"))
}

// A raw INSERT past an existing head row leaves it behind: Append still fails then, and says why.
func TestAppendBehindRawInsertExplains(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewDatabase(t)
	store := postgres.NewStore(nil)
	_, err := store.Append(ctx, db.Pool, eventstore.Any(), newEvents("a", "1", 2))
	require.NoError(t, err)
	_, err = db.Pool.Exec(ctx, `INSERT INTO events (aggregate_type, aggregate_id, aggregate_version, event_type, payload)
		VALUES ('a', '1', 3, 'Raw', '\x')`)
	require.NoError(t, err)
	_, err = store.Append(ctx, db.Pool, eventstore.Any(), newEvents("a", "1", 1))
	var ce *eventstore.ConcurrencyError
	require.ErrorAs(t, err, &ce)
	require.Equal(t, int64(-1), ce.Actual)
	require.ErrorContains(t, err, `row in aggregate_heads is behind its events`)

	// The repair of docs/design.md, "Raw SQL writers".
	_, err = db.Pool.Exec(ctx, `INSERT INTO aggregate_heads (aggregate_type, aggregate_id, version)
		SELECT aggregate_type, aggregate_id, max(aggregate_version) FROM events GROUP BY 1, 2
		ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET version = greatest(aggregate_heads.version, EXCLUDED.version)`)
	require.NoError(t, err)
	res, err := store.Append(ctx, db.Pool, eventstore.Any(), newEvents("a", "1", 1))
	require.NoError(t, err)
	require.Equal(t, int64(4), res.FromVersion())
}
