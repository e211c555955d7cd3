package horizon

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/eventstore/postgres"
	"github.com/eventline/eventline/internal/pgtest"
	"github.com/eventline/eventline/internal/sqlname"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

var eventsTable = sqlname.MustParse("events")

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// newTracker returns a tracker on db's events table with a connection of its own.
func newTracker(t *testing.T, db *pgtest.Database) *Tracker {
	t.Helper()
	seq, err := Check(ctxT(t), db.Pool, eventsTable)
	require.NoError(t, err)
	tr := New(eventsTable, seq, 0, func(ctx context.Context) (*pgx.Conn, error) { return pgx.Connect(ctx, db.URL) })
	t.Cleanup(func() { tr.Close(context.Background()) })
	return tr
}

func tick(t *testing.T, tr *Tracker) int64 {
	t.Helper()
	h, err := tr.Tick(ctxT(t))
	require.NoError(t, err)
	return h
}

var store = postgres.NewStore(nil)

// appendEvents appends n events to a new aggregate on db (a transaction, or the pool to commit).
func appendEvents(t *testing.T, db eventstore.DBTX, n int) eventstore.AppendResult {
	t.Helper()
	evs := make([]eventstore.Event, n)
	id := uuid.NewString()
	for i := range evs {
		evs[i] = eventstore.Event{AggregateType: "acct", AggregateID: id, EventType: "Happened", Payload: []byte(`{}`)}
	}
	res, err := store.Append(ctxT(t), db, eventstore.Any(), evs)
	require.NoError(t, err)
	return res
}

// rawInsert inserts one event with plain SQL and returns its position.
func rawInsert(t *testing.T, db eventstore.DBTX) int64 {
	t.Helper()
	var pos int64
	require.NoError(t, db.QueryRow(ctxT(t), `INSERT INTO events (event_id, aggregate_type, aggregate_id, aggregate_version, event_type, payload)
		VALUES (gen_random_uuid(), 'raw', gen_random_uuid()::text, 1, 'RawInserted', '\x7b7d') RETURNING global_position`).Scan(&pos))
	return pos
}

// copyInsert writes one event with COPY in tx and returns its position.
func copyInsert(t *testing.T, tx pgx.Tx) int64 {
	t.Helper()
	ctx := ctxT(t)
	_, err := tx.CopyFrom(ctx, pgx.Identifier{"events"},
		[]string{"event_id", "aggregate_type", "aggregate_id", "aggregate_version", "event_type", "payload"},
		pgx.CopyFromRows([][]any{{uuid.New(), "copy", uuid.NewString(), int64(1), "Copied", []byte("{}")}}))
	require.NoError(t, err)
	var pos int64
	require.NoError(t, tx.QueryRow(ctx, `SELECT max(global_position) FROM events`).Scan(&pos))
	return pos
}

func exec(t *testing.T, db eventstore.DBTX, sql string) {
	t.Helper()
	_, err := db.Exec(ctxT(t), sql)
	require.NoError(t, err, sql)
}

// skipUnlessSuperuser skips the test unless it may set session_replication_role (superusers
// only; a server given by DATABASE_URL may not grant that).
func skipUnlessSuperuser(t *testing.T, db eventstore.DBTX) {
	t.Helper()
	var super bool
	require.NoError(t, db.QueryRow(ctxT(t), `SELECT rolsuper FROM pg_roles WHERE rolname = current_user`).Scan(&super))
	if !super {
		t.Skip("setting session_replication_role needs a superuser")
	}
}

func backendPID(t *testing.T, db eventstore.DBTX) uint32 {
	t.Helper()
	var pid uint32
	require.NoError(t, db.QueryRow(ctxT(t), `SELECT pg_backend_pid()`).Scan(&pid))
	return pid
}

// Item 1: a transaction that inserts raw (INSERT or COPY) and then appends. Its Append is not its
// first insert, so its first position says nothing about the raw row below it: the horizon must
// stay below the raw row until the transaction ends.
func TestAppendAfterRawInsertIsNotPassed(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		raw       func(t *testing.T, tx pgx.Tx) int64
		savepoint bool // Append in a savepoint that is rolled back after the tracker saw it
	}{
		{name: "INSERT then Append", raw: func(t *testing.T, tx pgx.Tx) int64 { return rawInsert(t, tx) }},
		{name: "COPY then Append", raw: copyInsert},
		{name: "INSERT, SAVEPOINT, Append, ROLLBACK TO", raw: func(t *testing.T, tx pgx.Tx) int64 { return rawInsert(t, tx) }, savepoint: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := ctxT(t)
			db := pgtest.NewDatabase(t)
			tr := newTracker(t, db)
			before := appendEvents(t, db.Pool, 2)
			require.Equal(t, before.LastPosition(), tick(t, tr))

			tx, err := db.Pool.Begin(ctx)
			require.NoError(t, err)
			defer func() { _ = tx.Rollback(ctx) }()
			raw := tc.raw(t, tx)
			if tc.savepoint {
				exec(t, tx, `SAVEPOINT s`)
			}
			appendEvents(t, tx, 1)
			after := appendEvents(t, db.Pool, 2)
			require.Equal(t, raw-1, tick(t, tr), "the raw row is in flight")
			if tc.savepoint {
				exec(t, tx, `ROLLBACK TO SAVEPOINT s`)
			}
			require.Equal(t, raw-1, tick(t, tr), "the raw row is still in flight")
			b, ok := tr.Blocker()
			require.True(t, ok)
			require.Equal(t, raw-1, b.Bound)

			require.NoError(t, tx.Commit(ctx))
			require.Equal(t, after.LastPosition(), tick(t, tr))
		})
	}
}

// Append takes its position lock only when it is the first insert of its transaction (a
// savepoint rolled back does not count), so that the lock is a lower bound for the whole
// transaction.
func TestAppendPositionLockOnlyOnFirstInsert(t *testing.T) {
	t.Parallel()
	class := uint32(sqlname.PositionLockClass(eventsTable))
	for _, tc := range []struct {
		name string
		// write writes in tx and returns the positions the transaction should hold locks on.
		write func(t *testing.T, tx pgx.Tx) []int64
	}{
		{"Append", func(t *testing.T, tx pgx.Tx) []int64 {
			return appendEvents(t, tx, 3).GlobalPositions()[:1]
		}},
		{"Append, then Append", func(t *testing.T, tx pgx.Tx) []int64 {
			first := appendEvents(t, tx, 2)
			appendEvents(t, tx, 2)
			return first.GlobalPositions()[:1]
		}},
		{"raw INSERT, then Append", func(t *testing.T, tx pgx.Tx) []int64 {
			rawInsert(t, tx)
			appendEvents(t, tx, 2)
			return nil
		}},
		{"COPY, then Append", func(t *testing.T, tx pgx.Tx) []int64 {
			copyInsert(t, tx)
			appendEvents(t, tx, 2)
			return nil
		}},
		{"raw INSERT in a savepoint rolled back, then Append", func(t *testing.T, tx pgx.Tx) []int64 {
			exec(t, tx, `SAVEPOINT s`)
			rawInsert(t, tx)
			exec(t, tx, `ROLLBACK TO SAVEPOINT s`)
			return appendEvents(t, tx, 2).GlobalPositions()[:1]
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := ctxT(t)
			db := pgtest.NewDatabase(t)
			tx, err := db.Pool.Begin(ctx)
			require.NoError(t, err)
			defer func() { _ = tx.Rollback(ctx) }()
			want := tc.write(t, tx)
			rows, err := db.Pool.Query(ctx, `SELECT objid::bigint FROM pg_locks
				WHERE locktype = 'advisory' AND classid = $1 AND objsubid = 2 AND pid = $2 AND granted ORDER BY 1`,
				class, backendPID(t, tx))
			require.NoError(t, err)
			got, err := pgx.CollectRows(rows, pgx.RowTo[int64])
			require.NoError(t, err)
			if len(want) == 0 {
				require.Empty(t, got)
			} else {
				require.Equal(t, want, got)
			}
		})
	}
}

// The position lock still lets the horizon pass a rolled-back append below an open appender that
// was first seen at the same time (the property the lock exists for).
func TestPositionLockPassesHoleBelow(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewDatabase(t)
	tr := newTracker(t, db)
	require.EqualValues(t, 0, tick(t, tr))

	doomed, err := db.Pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = doomed.Rollback(ctx) }()
	appendEvents(t, doomed, 1)
	committed := appendEvents(t, db.Pool, 2)
	open, err := db.Pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = open.Rollback(ctx) }()
	held := appendEvents(t, open, 1)

	require.EqualValues(t, 0, tick(t, tr), "both appenders are new; the doomed one holds position 1")
	require.NoError(t, doomed.Rollback(ctx))
	require.Equal(t, committed.LastPosition(), tick(t, tr), "the open appender owns nothing below its position lock")
	require.Equal(t, held.GlobalPositions()[0]-1, committed.LastPosition())
}

// A tick that reads the locks while an Append statement has taken K but not yet its position lock
// bounds the appender by the previous L; once the lock appears, the next tick raises the bound to
// it, so events committed before the appender began do not wait for its transaction to end. A row
// trigger holds the statement in that window, on an advisory lock the test holds.
func TestPositionLockSeenLateRaisesTheBound(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewDatabase(t)
	exec(t, db.Pool, `CREATE FUNCTION gate() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN IF NEW.aggregate_type = 'gated' THEN PERFORM pg_advisory_xact_lock(4242); END IF; RETURN NEW; END $$`)
	exec(t, db.Pool, `CREATE TRIGGER gate BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION gate()`)
	tr := newTracker(t, db)
	require.EqualValues(t, 0, tick(t, tr))
	committed := appendEvents(t, db.Pool, 2)

	gate, err := db.Pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = gate.Rollback(ctx) }()
	exec(t, gate, `SELECT pg_advisory_xact_lock(4242)`)
	open, err := db.Pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = open.Rollback(ctx) }()
	pid := backendPID(t, open)
	appended := make(chan eventstore.AppendResult, 1)
	appendErr := make(chan error, 1)
	go func() {
		res, err := store.Append(ctx, open, eventstore.Any(), []eventstore.Event{{AggregateType: "gated", AggregateID: "g",
			EventType: "Happened", Payload: []byte(`{}`)}})
		appended <- res
		appendErr <- err
	}()
	// Wait until the statement waits at the gate: it holds K and its position, not its lock.
	for {
		var waiting bool
		require.NoError(t, db.Pool.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_locks
			WHERE pid = $1 AND locktype = 'advisory' AND objid = 4242 AND NOT granted)`, pid).Scan(&waiting))
		if waiting {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("the Append never reached the gate")
		case <-time.After(time.Millisecond):
		}
	}
	require.EqualValues(t, 0, tick(t, tr), "seen with K only: bounded by the previous L")
	b, ok := tr.Blocker()
	require.True(t, ok)
	require.Zero(t, b.FirstPosition)

	require.NoError(t, gate.Rollback(ctx))
	res := <-appended
	require.NoError(t, <-appendErr)
	require.Equal(t, committed.LastPosition()+1, res.GlobalPositions()[0])
	require.Equal(t, committed.LastPosition(), tick(t, tr), "its position lock raises its bound: the committed events pass")
	b, ok = tr.Blocker()
	require.True(t, ok)
	require.Equal(t, res.GlobalPositions()[0], b.FirstPosition)

	require.NoError(t, open.Commit(ctx))
	require.Equal(t, res.LastPosition(), tick(t, tr))
}

// Item 2: a prepared transaction that inserted, across a server restart. After the restart its
// locks show a new virtual transaction ID; the tracker must not take it for a new appender
// bounded by the L it read before the restart.
func TestPreparedTransactionAcrossRestart(t *testing.T) {
	// Not parallel: it restarts the server.
	if !pgtest.CanRestart() {
		t.Skip("the test server is not ours to restart")
	}
	ctx := ctxT(t)
	db := pgtest.NewDatabase(t)
	tr := newTracker(t, db)
	before := appendEvents(t, db.Pool, 2)
	require.Equal(t, before.LastPosition(), tick(t, tr))

	gid := db.Name + "_prepared"
	conn := db.Conn(t)
	exec(t, conn, `BEGIN`)
	raw := rawInsert(t, conn)
	exec(t, conn, `PREPARE TRANSACTION '`+gid+`'`)
	t.Cleanup(func() {
		// A database with a prepared transaction cannot be dropped.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, db.URL)
		if err != nil {
			t.Errorf("connect to end the prepared transaction: %v", err)
			return
		}
		defer func() { _ = c.Close(ctx) }()
		var n int
		if err := c.QueryRow(ctx, `SELECT count(*) FROM pg_prepared_xacts WHERE gid = $1`, gid).Scan(&n); err != nil {
			t.Errorf("look for the prepared transaction: %v", err)
			return
		}
		if n > 0 {
			if _, err := c.Exec(ctx, `ROLLBACK PREPARED '`+gid+`'`); err != nil {
				t.Errorf("end the prepared transaction: %v", err)
			}
		}
	})
	after := appendEvents(t, db.Pool, 2)
	require.Equal(t, raw-1, tick(t, tr), "the prepared transaction holds position %d", raw)

	pgtest.RestartServer(t)
	h, err := tr.Tick(ctx)
	if err != nil {
		t.Logf("first tick after the restart failed, as expected: %v", err)
		h, err = tr.Tick(ctx)
	}
	require.NoError(t, err)
	require.Equal(t, raw-1, h, "the prepared transaction still holds position %d after the restart", raw)
	b, ok := tr.Blocker()
	require.True(t, ok)
	require.Equal(t, 0, b.PID, "the blocker is the prepared transaction")
	t.Logf("the prepared transaction shows as %s after the restart", b.VirtualXID)

	c, err := pgx.Connect(ctx, db.URL)
	require.NoError(t, err)
	defer func() { _ = c.Close(ctx) }()
	exec(t, c, `COMMIT PREPARED '`+gid+`'`)
	require.Equal(t, after.LastPosition(), tick(t, tr))
}

// PREPARE TRANSACTION works for an appender: the append lock is transaction-level (PostgreSQL
// refuses PREPARE only for a transaction that also holds a session-level lock on the same object),
// and the prepared transaction keeps holding it.
func TestPreparedAppenderKeepsAppendLock(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewDatabase(t)
	tr := newTracker(t, db)
	require.EqualValues(t, 0, tick(t, tr))
	gid := db.Name + "_prepared"
	conn := db.Conn(t)
	exec(t, conn, `BEGIN`)
	res := appendEvents(t, conn, 2)
	exec(t, conn, `PREPARE TRANSACTION '`+gid+`'`)
	defer func() { _, _ = db.Pool.Exec(context.Background(), `ROLLBACK PREPARED '`+gid+`'`) }()
	after := appendEvents(t, db.Pool, 1)
	require.EqualValues(t, 0, tick(t, tr))
	b, ok := tr.Blocker()
	require.True(t, ok)
	require.Equal(t, 0, b.PID, "prepared")
	require.Equal(t, res.GlobalPositions()[0], b.FirstPosition, "its position lock went with it")

	// A session-level lock on the append lock's key makes PREPARE fail.
	k := sqlname.AppendLockKey(eventsTable)
	exec(t, conn, fmt.Sprintf(`SELECT pg_advisory_lock_shared(%d)`, k))
	exec(t, conn, `BEGIN`)
	refused := rawInsert(t, conn)
	_, err := conn.Exec(ctx, `PREPARE TRANSACTION '`+gid+`_2'`)
	require.ErrorContains(t, err, "cannot PREPARE while holding both session-level and transaction-level locks on the same object")
	exec(t, conn, `SELECT pg_advisory_unlock_all()`)
	require.Greater(t, refused, after.LastPosition())

	exec(t, db.Pool, `COMMIT PREPARED '`+gid+`'`)
	require.Equal(t, refused, tick(t, tr), "the refused transaction was rolled back: its position is a settled hole")
}

// Item 3: with the trigger ENABLE ALWAYS, a writer in a session with session_replication_role =
// replica takes the append lock too, and the horizon waits for it.
func TestReplicaSessionTakesAppendLock(t *testing.T) {
	t.Parallel()
	k := uint64(sqlname.AppendLockKey(eventsTable))
	for _, copyIt := range []bool{false, true} {
		t.Run(fmt.Sprintf("copy=%v", copyIt), func(t *testing.T) {
			t.Parallel()
			ctx := ctxT(t)
			db := pgtest.NewDatabase(t)
			skipUnlessSuperuser(t, db.Pool)
			tr := newTracker(t, db)
			require.EqualValues(t, 0, tick(t, tr))

			tx, err := db.Pool.Begin(ctx)
			require.NoError(t, err)
			defer func() { _ = tx.Rollback(ctx) }()
			exec(t, tx, `SET LOCAL session_replication_role = replica`)
			var pos int64
			if copyIt {
				pos = copyInsert(t, tx)
			} else {
				pos = rawInsert(t, tx)
			}
			var held bool
			require.NoError(t, db.Pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_locks
				WHERE locktype = 'advisory' AND mode = 'ShareLock' AND granted
				  AND classid = $1 AND objid = $2 AND objsubid = 1 AND pid = $3)`,
				uint32(k>>32), uint32(k), backendPID(t, tx)).Scan(&held))
			require.True(t, held, "the replica session holds the append lock while its transaction is open")

			after := appendEvents(t, db.Pool, 2)
			require.Equal(t, pos-1, tick(t, tr))
			require.NoError(t, tx.Commit(ctx))
			require.Equal(t, after.LastPosition(), tick(t, tr))
		})
	}
}

// Item 3: while the trigger does not fire always, the horizon is frozen and Unsafe says why and
// how to fix it; once it fires always again, the tracker moves on.
func TestUnsafeTriggerFreezesHorizon(t *testing.T) {
	t.Parallel()
	for _, bad := range []string{"DISABLE TRIGGER", "ENABLE TRIGGER", "ENABLE REPLICA TRIGGER"} {
		t.Run(bad, func(t *testing.T) {
			t.Parallel()
			ctx := ctxT(t)
			db := pgtest.NewDatabase(t)
			tr := newTracker(t, db)
			// Only the trigger's state read by every tick finds it: the whole Check is not due.
			tr.SetCheckInterval(time.Hour)
			frozen := appendEvents(t, db.Pool, 2).LastPosition()
			require.Equal(t, frozen, tick(t, tr))
			require.NoError(t, tr.Unsafe())

			exec(t, db.Pool, `ALTER TABLE events `+bad+` eventline_append_lock`)
			appendEvents(t, db.Pool, 2)
			for i := 0; i < 2; i++ {
				h, err := tr.Tick(ctx)
				require.ErrorIs(t, err, ErrNotSafe)
				require.Equal(t, frozen, h)
				require.Equal(t, frozen, tr.Horizon(), "frozen")
				require.ErrorIs(t, tr.Unsafe(), ErrNotSafe)
				require.ErrorContains(t, tr.Unsafe(), `ALTER TABLE "events" ENABLE ALWAYS TRIGGER eventline_append_lock`)
			}

			exec(t, db.Pool, `ALTER TABLE events ENABLE ALWAYS TRIGGER eventline_append_lock`)
			last := appendEvents(t, db.Pool, 1)
			require.Equal(t, last.LastPosition(), tick(t, tr))
			require.NoError(t, tr.Unsafe())
		})
	}
}

// The trigger cannot be enabled again while a transaction that inserted without the append lock is
// open: ALTER TABLE waits for it. So when a tick sees the trigger enabled, no such writer is left.
func TestTriggerIsNotEnabledOverOpenWriter(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewDatabase(t)
	exec(t, db.Pool, `ALTER TABLE events DISABLE TRIGGER eventline_append_lock`)
	writer, err := db.Pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = writer.Rollback(ctx) }()
	rawInsert(t, writer)

	conn := db.Conn(t)
	exec(t, conn, `SET lock_timeout = '50ms'`)
	_, err = conn.Exec(ctx, `ALTER TABLE events ENABLE ALWAYS TRIGGER eventline_append_lock`)
	var pgErr *pgconn.PgError
	require.True(t, errors.As(err, &pgErr), "%v", err)
	require.Equal(t, "55P03", pgErr.Code, "lock_not_available: %v", err)

	require.NoError(t, writer.Commit(ctx))
	exec(t, conn, `ALTER TABLE events ENABLE ALWAYS TRIGGER eventline_append_lock`)
}

// A trigger replaced by one that fires always but is not the migrations' (here: 0001's, which
// does not count inserts) is found by the periodic Check.
func TestPeriodicCheckFindsReplacedTrigger(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDatabase(t)
	tr := newTracker(t, db)
	tr.SetCheckInterval(time.Hour)
	require.EqualValues(t, 0, tick(t, tr))

	k := sqlname.AppendLockKey(eventsTable)
	exec(t, db.Pool, fmt.Sprintf(`BEGIN;
		DROP TRIGGER eventline_append_lock ON events;
		CREATE TRIGGER eventline_append_lock BEFORE INSERT ON events FOR EACH STATEMENT
			WHEN (pg_advisory_xact_lock_shared('%[1]d'::bigint)::text IS NULL)
			EXECUTE FUNCTION eventline_append_lock('%[1]d');
		ALTER TABLE events ENABLE ALWAYS TRIGGER eventline_append_lock;
		COMMIT`, k))
	last := appendEvents(t, db.Pool, 1)
	require.Equal(t, last.LastPosition(), tick(t, tr), "not due yet")

	tr.SetCheckInterval(0)
	appendEvents(t, db.Pool, 1)
	h, err := tr.Tick(ctxT(t))
	require.ErrorIs(t, err, ErrNotSafe)
	require.ErrorContains(t, err, "run the migrations")
	require.Equal(t, last.LastPosition(), h, "frozen")
	require.ErrorIs(t, tr.Unsafe(), ErrNotSafe)
}

// Run re-checks the table: disabling the trigger makes Unsafe non-nil (reported once to onError)
// and freezes the horizon; enabling it again lets the horizon move.
func TestRunFreezesWhileUnsafe(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDatabase(t)
	tr := newTracker(t, db)
	tr.SetCheckInterval(10 * time.Millisecond)
	errs := make(chan error, 100)
	ctx, cancel := context.WithCancel(ctxT(t))
	done := make(chan error, 1)
	go func() { done <- tr.Run(ctx, 5*time.Millisecond, time.Millisecond, func(err error) { errs <- err }) }()
	defer func() {
		cancel()
		require.NoError(t, <-done)
	}()
	deadline := time.After(30 * time.Second)

	first := appendEvents(t, db.Pool, 1)
	for {
		changed := tr.Changed()
		if tr.Horizon() >= first.LastPosition() {
			break
		}
		select {
		case <-changed:
		case err := <-errs:
			t.Fatalf("tick failed: %v", err)
		case <-deadline:
			t.Fatal("the horizon did not reach the first event")
		}
	}

	exec(t, db.Pool, `ALTER TABLE events DISABLE TRIGGER eventline_append_lock`)
	select {
	case err := <-errs:
		require.ErrorIs(t, err, ErrNotSafe)
	case <-deadline:
		t.Fatal("Run did not report the disabled trigger")
	}
	require.ErrorIs(t, tr.Unsafe(), ErrNotSafe)
	changed := tr.Changed()
	appendEvents(t, db.Pool, 2)
	require.Equal(t, first.LastPosition(), tr.Horizon(), "frozen")

	exec(t, db.Pool, `ALTER TABLE events ENABLE ALWAYS TRIGGER eventline_append_lock`)
	select {
	case <-changed:
	case <-deadline:
		t.Fatal("the horizon did not move after the trigger was enabled again")
	}
	require.NoError(t, tr.Unsafe())
	select {
	case err := <-errs:
		require.Failf(t, "reported again", "the unsafe table is reported once: %v", err)
	default:
	}
}

// Check refuses a trigger that does not fire always, and says how to fix it.
func TestCheckRequiresEnableAlways(t *testing.T) {
	t.Parallel()
	for stmt, want := range map[string]string{
		"DISABLE TRIGGER eventline_append_lock":        "is disabled",
		"ENABLE TRIGGER eventline_append_lock":         "origin",
		"ENABLE REPLICA TRIGGER eventline_append_lock": "replica",
	} {
		t.Run(stmt, func(t *testing.T) {
			t.Parallel()
			ctx := ctxT(t)
			db := pgtest.NewDatabase(t)
			_, err := Check(ctx, db.Pool, eventsTable)
			require.NoError(t, err)
			exec(t, db.Pool, `ALTER TABLE events `+stmt)
			_, err = Check(ctx, db.Pool, eventsTable)
			require.ErrorIs(t, err, ErrNotSafe)
			require.ErrorContains(t, err, want)
			require.ErrorContains(t, err, `ALTER TABLE "events" ENABLE ALWAYS TRIGGER eventline_append_lock`)
			require.True(t, strings.HasPrefix(err.Error(), ErrNotSafe.Error()), err.Error())
		})
	}
}
