package postgres_test

import (
	"context"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/eventstore/postgres"
	"github.com/eventline/eventline/internal/pgtest"
	"github.com/eventline/eventline/internal/sqlname"
)

// holdsAppendLock reports whether backend pid holds the shared append lock K of the events table,
// as another session sees it in pg_locks.
func holdsAppendLock(t *testing.T, pool *pgxpool.Pool, pid uint32) bool {
	t.Helper()
	k := uint64(sqlname.AppendLockKey(sqlname.MustParse("events")))
	var held bool
	require.NoError(t, pool.QueryRow(context.Background(), `
		SELECT EXISTS (SELECT 1 FROM pg_locks
		WHERE locktype = 'advisory' AND mode = 'ShareLock' AND granted
		  AND classid = $1 AND objid = $2 AND objsubid = 1 AND pid = $3)`,
		uint32(k>>32), uint32(k), pid).Scan(&held))
	return held
}

// TestAppendersHoldTheAppendLock checks the append lock K of docs/design.md, "The gap problem":
// whatever inserts into the events table (Append, a raw INSERT, COPY) holds the shared lock K
// until its transaction ends.
func TestAppendersHoldTheAppendLock(t *testing.T) {
	t.Parallel()
	store := postgres.NewStore(nil)
	ways := map[string]func(ctx context.Context, tx pgx.Tx) error{
		"Append": func(ctx context.Context, tx pgx.Tx) error {
			_, err := store.Append(ctx, tx, eventstore.Any(), newEvents("a", uuid.NewString(), 2))
			return err
		},
		"raw INSERT": func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `INSERT INTO events (event_id, aggregate_type, aggregate_id, aggregate_version, event_type, payload)
				VALUES (gen_random_uuid(), 'raw', $1, 1, 'RawInserted', '\x00')`, uuid.NewString())
			return err
		},
		"append function": func(ctx context.Context, tx pgx.Tx) error {
			_, err := callAppendFunc(ctx, tx, "func", uuid.NewString(), nil, `[{"event_type": "Called"}]`, "")
			return err
		},
		"COPY": func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.CopyFrom(ctx, pgx.Identifier{"events"},
				[]string{"event_id", "aggregate_type", "aggregate_id", "aggregate_version", "event_type", "payload"},
				pgx.CopyFromRows([][]any{{uuid.New(), "copy", uuid.NewString(), int64(1), "Copied", []byte("x")}}))
			return err
		},
	}
	for name, write := range ways {
		for _, commit := range []bool{true, false} {
			end := "rollback"
			if commit {
				end = "commit"
			}
			t.Run(name+"/"+end, func(t *testing.T) {
				t.Parallel()
				ctx := ctxT(t)
				db := pgtest.NewDatabase(t)
				tx, err := db.Pool.Begin(ctx)
				require.NoError(t, err)
				defer func() { _ = tx.Rollback(ctx) }()
				var pid uint32
				require.NoError(t, tx.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid))
				require.False(t, holdsAppendLock(t, db.Pool, pid), "no lock before writing")

				require.NoError(t, write(ctx, tx))
				require.True(t, holdsAppendLock(t, db.Pool, pid), "lock held while the appending transaction is open")
				if commit {
					require.NoError(t, tx.Commit(ctx))
				} else {
					require.NoError(t, tx.Rollback(ctx))
				}
				require.False(t, holdsAppendLock(t, db.Pool, pid), "lock released at transaction end")
			})
		}
	}
}

// The lock is shared: concurrent appenders do not block each other on it.
func TestAppendLockIsShared(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewDatabase(t)
	store := postgres.NewStore(nil)
	tx1, err := db.Pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx1.Rollback(ctx) }()
	_, err = store.Append(ctx, tx1, eventstore.Any(), newEvents("a", "1", 1))
	require.NoError(t, err)
	// A second appender commits while the first is still open (the test would hang otherwise).
	_, err = store.Append(ctx, db.Pool, eventstore.Any(), newEvents("a", "2", 1))
	require.NoError(t, err)
	require.NoError(t, tx1.Commit(ctx))
}

// Append also holds the position lock on its first position, so the horizon tracker can ignore it
// for holes below that position; but only when its statement is the transaction's first insert
// into the events table (an earlier insert may hold lower positions). The cases run each of
// Append's statements: fast (moves a head row the store knows), full (may insert a missing head
// row) and fallback (full after a fast one found no head row: its trigger has counted the fast
// statement too). Every transaction is rolled back, so "new" has no head row when the store
// believes it has one after the first round: its later rounds run fast, then fallback.
func TestAppendHoldsItsPositionLock(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDatabase(t)
	store := postgres.NewStore(nil)
	// Aggregate "old" has a head row, "raw" only events written by a raw INSERT.
	_, err := store.Append(ctxT(t), db.Pool, eventstore.Any(), newEvents("a", "old", 3))
	require.NoError(t, err)
	_, err = db.Pool.Exec(ctxT(t), `INSERT INTO events (aggregate_type, aggregate_id, aggregate_version, event_type, payload)
		VALUES ('a', 'raw', 1, 'Happened', '\x'), ('a', 'raw', 2, 'Happened', '\x')`)
	require.NoError(t, err)
	class := uint32(sqlname.PositionLockClass(sqlname.MustParse("events")))
	positionLocks := func(t *testing.T, pid uint32) []int64 {
		rows, err := db.Pool.Query(ctxT(t), `SELECT objid::bigint FROM pg_locks
			WHERE locktype = 'advisory' AND classid = $1 AND objsubid = 2 AND pid = $2 AND granted ORDER BY 1`, class, pid)
		require.NoError(t, err)
		objid, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		require.NoError(t, err)
		return objid
	}
	for _, tc := range []struct {
		name     string
		id       string
		expected eventstore.ExpectedVersion
		n        int
	}{
		{"any, head row (fast)", "old", eventstore.Any(), 1},
		{"any, head row, several events (fast)", "old", eventstore.Any(), 3},
		{"exact, head row (fast)", "old", eventstore.Exact(3), 1},
		{"no stream", "none", eventstore.NoStream(), 1},
		{"any, new aggregate (full, then fallback)", "new", eventstore.Any(), 1},
		{"any, new aggregate, several events (fallback)", "new", eventstore.Any(), 3},
		{"any, events without head row (full)", "raw", eventstore.Any(), 1},
		{"exact, events without head row (fallback)", "raw", eventstore.Exact(2), 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, after := range []string{"", "append", "insert"} {
				ctx := ctxT(t)
				tx, err := db.Pool.Begin(ctx)
				require.NoError(t, err)
				// Rolled back also when the test fails: it holds head rows the next cases move.
				t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
				var pid uint32
				require.NoError(t, tx.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid))
				var before []int64
				switch after {
				case "append": // the earlier append holds its position lock, and this one none
					res, err := store.Append(ctx, tx, eventstore.Any(), newEvents("a", "other", 1))
					require.NoError(t, err)
					before = res.GlobalPositions()[:1]
				case "insert": // a raw insert takes no position lock, and this append none
					_, err := tx.Exec(ctx, `INSERT INTO events (aggregate_type, aggregate_id, aggregate_version, event_type, payload)
						VALUES ('a', 'rawtx', 1, 'Happened', '\x')`)
					require.NoError(t, err)
				}
				res, err := store.Append(ctx, tx, tc.expected, newEvents("a", tc.id, tc.n))
				require.NoError(t, err, after)
				want := before
				if after == "" {
					want = res.GlobalPositions()[:1]
				}
				if want == nil {
					want = []int64{}
				}
				require.Equal(t, want, positionLocks(t, pid), "after %q", after)
				require.NoError(t, tx.Rollback(ctx))
			}
		})
	}
}
