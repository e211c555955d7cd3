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
// for holes below that position.
func TestAppendHoldsItsPositionLock(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewDatabase(t)
	store := postgres.NewStore(nil)
	tx, err := db.Pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	_, err = store.Append(ctx, db.Pool, eventstore.Any(), newEvents("a", "before", 3))
	require.NoError(t, err)
	res, err := store.Append(ctx, tx, eventstore.Any(), newEvents("a", "1", 3))
	require.NoError(t, err)
	var pid uint32
	require.NoError(t, tx.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid))
	class := uint32(sqlname.PositionLockClass(sqlname.MustParse("events")))
	var objid []int64
	rows, err := db.Pool.Query(ctx, `SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND classid = $1 AND objsubid = 2 AND pid = $2 AND granted`, class, pid)
	require.NoError(t, err)
	objid, err = pgx.CollectRows(rows, pgx.RowTo[int64])
	require.NoError(t, err)
	require.Equal(t, []int64{res.GlobalPositions()[0]}, objid)
}
