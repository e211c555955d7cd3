package horizon

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/internal/pgtest"
)

// A tick reads L before the locks (docs/design.md, "The gap problem"): an appender that takes K
// between the two reads has a position above L, so missing it is harmless, while one that takes
// K before L is read is among the holders. Read the other way round, an appender that starts
// between the reads owns a position <= L without being seen, and the horizon passes it (G1).
//
// The test holds the tick inside its statement reading L (the same statement behind an advisory
// lock the test holds), starts an appender there, then lets the tick go on: the horizon must stay
// below the open position.
func TestLastPositionIsReadBeforeTheLocks(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		insert func(t *testing.T, tx pgx.Tx) int64
	}{
		{name: "Append (position lock)", insert: func(t *testing.T, tx pgx.Tx) int64 { return appendEvents(t, tx, 1).GlobalPositions()[0] }},
		{name: "raw INSERT (no position lock)", insert: func(t *testing.T, tx pgx.Tx) int64 { return rawInsert(t, tx) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := ctxT(t)
			db := pgtest.NewDatabase(t)
			seq, err := Check(ctx, db.Pool, eventsTable)
			require.NoError(t, err)
			tr := newTracker(t, db)
			before := appendEvents(t, db.Pool, 2)
			require.Equal(t, before.LastPosition(), tick(t, tr))
			require.Equal(t, before.LastPosition(), tick(t, tr), "a trusted tick")

			// The statement that reads L, held at an advisory lock the test takes first.
			exec(t, db.Pool, `CREATE FUNCTION gated_last_value(OUT l bigint, OUT started timestamptz) LANGUAGE plpgsql AS $$
				BEGIN
					PERFORM pg_advisory_xact_lock(4343);
					SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END, pg_postmaster_start_time()
						INTO l, started FROM `+seq+`;
				END $$`)
			tr.tickMu.Lock()
			tr.lastValueSQL = `SELECT l, started FROM gated_last_value()`
			tr.tickMu.Unlock()
			gate, err := db.Pool.Begin(ctx)
			require.NoError(t, err)
			defer func() { _ = gate.Rollback(ctx) }()
			exec(t, gate, `SELECT pg_advisory_xact_lock(4343)`)

			type result struct {
				h   int64
				err error
			}
			ticked := make(chan result, 1)
			go func() {
				h, err := tr.Tick(ctx)
				ticked <- result{h, err}
			}()
			// Wait until the tick waits at the gate, inside its statement reading L.
			deadline := time.Now().Add(30 * time.Second)
			for {
				var waiting int
				require.NoError(t, db.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_locks
					WHERE locktype = 'advisory' AND objid = 4343 AND objsubid = 1 AND NOT granted
					  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&waiting))
				if waiting == 1 {
					break
				}
				require.True(t, time.Now().Before(deadline), "the tick never reached the gate")
				time.Sleep(time.Millisecond)
			}

			// An appender starts while the tick is held there, and stays open.
			open, err := db.Pool.Begin(ctx)
			require.NoError(t, err)
			defer func() { _ = open.Rollback(ctx) }()
			pos := tc.insert(t, open)
			require.Greater(t, pos, before.LastPosition())
			require.NoError(t, gate.Rollback(ctx))

			res := <-ticked
			require.NoError(t, res.err)
			require.Less(t, res.h, pos, "the horizon passed a position its appender has not committed")
			require.Equal(t, before.LastPosition(), res.h)

			require.NoError(t, open.Commit(ctx))
			require.Equal(t, pos, tick(t, tr), "the position is settled once its appender commits")
		})
	}
}
