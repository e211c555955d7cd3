package runner_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/projector"
	"github.com/eventline/eventline/runner"
)

// writesRouter is a Router whose On handler records each event in the applied table through
// projector.Writes; for the events in bad, it queues (or returns) a failure instead. It counts
// how often each event was handed to the handler.
type writesRouter struct {
	*projector.Router
	mu      sync.Mutex
	handled map[int64]int
	bad     map[int64]bool
}

// failures the tests inject for a bad event.
const (
	failStatement = "statement" // a queued statement fails on the server (division by zero)
	failPrepare   = "prepare"   // a queued statement cannot be prepared (no such table)
	failHandler   = "handler"   // the handler returns an error
)

func newWritesRouter(name, failure string, bad ...int64) *writesRouter {
	wr := &writesRouter{handled: map[int64]int{}, bad: map[int64]bool{}}
	for _, p := range bad {
		wr.bad[p] = true
	}
	wr.Router = projector.NewRouter(name, projector.WithSetup(func(ctx context.Context, tx pgx.Tx) error {
		return createApplied(ctx, tx)
	}))
	projector.On(wr.Router, "Happened", func(_ context.Context, w *projector.Writes, ev eventstore.PersistedEvent, _ struct{}) error {
		wr.mu.Lock()
		wr.handled[ev.GlobalPosition]++
		bad := wr.bad[ev.GlobalPosition]
		wr.mu.Unlock()
		w.Exec(`INSERT INTO applied (projection, global_position, event_id, aggregate_type, aggregate_id, aggregate_version)
			VALUES ($1, $2, $3, $4, $5, $6)`, name, ev.GlobalPosition, ev.EventID, ev.AggregateType, ev.AggregateID, ev.AggregateVersion)
		if !bad {
			return nil
		}
		switch failure {
		case failStatement:
			w.Exec(`SELECT 1 / (0 * $1::bigint)`, ev.GlobalPosition)
		case failPrepare:
			w.Exec(`INSERT INTO no_such_table VALUES ($1)`, ev.GlobalPosition)
		default:
			return errBoom
		}
		return nil
	})
	return wr
}

func (wr *writesRouter) handledCount(pos int64) int {
	wr.mu.Lock()
	defer wr.mu.Unlock()
	return wr.handled[pos]
}

func (wr *writesRouter) heal() {
	wr.mu.Lock()
	defer wr.mu.Unlock()
	clear(wr.bad)
}

// A failure of a queued write stops the projection just before the event whose handler queued
// it, with that event's error; the events before it are applied once. A named failure (a
// statement's error, or the handler's) is found without splitting the batch: the failing event
// is handled twice (in its batch, then alone), not once per halving.
func TestWritesFailureStopsAtItsEvent(t *testing.T) {
	t.Parallel()
	for _, failure := range []string{failStatement, failPrepare, failHandler} {
		t.Run(failure, func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t)
			h := newHarness(t, true)
			positions := h.appendMany(ctx, 40)
			bad := positions[27]
			wr := newWritesRouter("writes", failure, bad)
			cfg := h.config()
			cfg.BatchSize = 16
			r, _ := h.start(cfg, wr)

			h.waitFor("the projection to stop", func() bool { return stateOf(t, r, "writes").State == "stopped" })
			require.Equal(t, positions[:27], appliedPositions(t, h.db.Pool, "writes"), "stops just before the failing event, each earlier one applied once")
			st := stateOf(t, r, "writes")
			require.Equal(t, bad-1, st.Position)
			require.Equal(t, bad, st.FailedPosition)
			require.Contains(t, st.LastError, fmt.Sprintf("event %d (Happened", bad))
			switch failure {
			case failStatement:
				require.Contains(t, st.LastError, "division by zero")
				require.Equal(t, 2, wr.handledCount(bad), "found at once: handled in its batch, then alone")
			case failPrepare:
				require.Contains(t, st.LastError, "no_such_table")
			default:
				require.Contains(t, st.LastError, "boom")
				require.Equal(t, 2, wr.handledCount(bad), "found at once: handled in its batch, then alone")
			}

			wr.heal()
			require.NoError(t, r.Resume(ctx, "writes"))
			h.waitFor("the resumed projection", func() bool { return len(appliedPositions(t, h.db.Pool, "writes")) == 40 })
			require.Equal(t, positions, appliedPositions(t, h.db.Pool, "writes"), "every event applied exactly once, in order")
		})
	}
}

// With DeadLetter, exactly the events whose writes fail are parked; every other event is applied
// exactly once.
func TestWritesFailureDeadLetter(t *testing.T) {
	t.Parallel()
	for _, failure := range []string{failStatement, failPrepare} {
		t.Run(failure, func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t)
			h := newHarness(t, true)
			positions := h.appendMany(ctx, 40)
			bad := map[int64]bool{positions[0]: true, positions[9]: true, positions[10]: true, positions[39]: true}
			wr := newWritesRouter("writes_dl", failure, positions[0], positions[9], positions[10], positions[39])
			cfg := h.config()
			cfg.BatchSize = 16
			r, err := runner.New(h.db.Pool, h.store, cfg)
			require.NoError(t, err)
			require.NoError(t, r.Register(wr, runner.WithFailurePolicy(runner.DeadLetter), runner.WithSequencedDeadLetters(false)))
			h.run(r)

			var want []int64
			for _, p := range positions {
				if !bad[p] {
					want = append(want, p)
				}
			}
			h.waitFor("every event applied or parked", func() bool { return stateOf(t, r, "writes_dl").Position >= positions[39] })
			require.Equal(t, want, appliedPositions(t, h.db.Pool, "writes_dl"))
			dead, err := r.CheckpointsForTest().DeadLetters(ctx, h.db.Pool, "writes_dl")
			require.NoError(t, err)
			var parked []int64
			for _, d := range dead {
				parked = append(parked, d.GlobalPosition)
			}
			require.Equal(t, []int64{positions[0], positions[9], positions[10], positions[39]}, parked)
			require.Equal(t, "running", stateOf(t, r, "writes_dl").State)
			if failure == failStatement {
				// Found at once: handled in a batch, then alone (9 and 10 were also in the batch that
				// failed on 9, and 10 in the one after).
				require.Equal(t, 2, wr.handledCount(positions[0]))
				require.Equal(t, 2, wr.handledCount(positions[39]))
			}
		})
	}
}

// Deferred writes run in the order queued, and a handler registered with OnTx sees the writes
// queued for the events before it (they are sent first); both kinds commit with the checkpoint.
func TestWritesOrderAndMixedHandlers(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	_, err := h.db.Pool.Exec(ctx, `CREATE TABLE cells (id text PRIMARY KEY, v bigint NOT NULL);
		CREATE TABLE seen (seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, id text NOT NULL, v bigint NOT NULL)`)
	require.NoError(t, err)

	type amount struct {
		N int64 `json:"n"`
	}
	r := projector.NewRouter("cells")
	projector.On(r, "Set", func(_ context.Context, w *projector.Writes, ev eventstore.PersistedEvent, p amount) error {
		w.Exec(`INSERT INTO cells (id, v) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET v = $2`, ev.AggregateID, p.N)
		return nil
	})
	projector.On(r, "Double", func(_ context.Context, w *projector.Writes, ev eventstore.PersistedEvent, _ struct{}) error {
		w.Exec(`UPDATE cells SET v = v * 2 WHERE id = $1`, ev.AggregateID)
		return nil
	})
	projector.OnTx(r, "Read", func(ctx context.Context, tx pgx.Tx, ev eventstore.PersistedEvent, _ struct{}) error {
		var v int64
		if err := tx.QueryRow(ctx, `SELECT v FROM cells WHERE id = $1`, ev.AggregateID).Scan(&v); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO seen (id, v) VALUES ($1, $2)`, ev.AggregateID, v)
		return err
	})

	ev := func(id, typ, payload string) eventstore.Event {
		return eventstore.Event{AggregateType: "cell", AggregateID: id, EventType: typ, Payload: []byte(payload)}
	}
	// One transaction, so that one batch holds them all; one append per run of one aggregate.
	var positions []int64
	h.inTx(func(tx pgx.Tx) error {
		for _, run := range [][]eventstore.Event{
			{ev("x", "Set", `{"n":3}`), ev("x", "Double", `{}`)},
			{ev("y", "Set", `{"n":1}`)},
			{ev("x", "Read", `{}`), ev("x", "Set", `{"n":5}`), ev("x", "Double", `{}`), ev("x", "Double", `{}`)},
			{ev("y", "Double", `{}`)},
			{ev("x", "Read", `{}`)},
			{ev("y", "Read", `{}`)},
			{ev("x", "Set", `{"n":7}`)},
		} {
			res, err := h.store.Append(ctx, tx, eventstore.Any(), run)
			if err != nil {
				return err
			}
			positions = append(positions, res.GlobalPositions()...)
		}
		return nil
	})

	rn, _ := h.start(h.config(), r)
	h.waitFor("the projection to apply everything", func() bool {
		return len(h.committedBatches()) > 0 && stateOf(t, rn, "cells").Position >= positions[len(positions)-1]
	})

	rows, err := h.db.Pool.Query(ctx, `SELECT id, v FROM seen ORDER BY seq`)
	require.NoError(t, err)
	type cell struct {
		ID string
		V  int64
	}
	seen, err := pgx.CollectRows(rows, pgx.RowToStructByPos[cell])
	require.NoError(t, err)
	require.Equal(t, []cell{{"x", 6}, {"x", 20}, {"y", 2}}, seen, "each Read sees exactly the writes queued before it")
	var x, y int64
	require.NoError(t, h.db.Pool.QueryRow(ctx, `SELECT (SELECT v FROM cells WHERE id = 'x'), (SELECT v FROM cells WHERE id = 'y')`).Scan(&x, &y))
	require.Equal(t, []int64{7, 2}, []int64{x, y}, "the last write of a row wins: writes run in order")
	require.Len(t, h.committedBatches(), 1, "one batch, hence deferred writes on both sides of the OnTx handlers")
}

// A batch whose handlers queue more statements than Writes holds at once is sent in several
// round trips, in order, in the one transaction.
func TestWritesManyStatementsInOneBatch(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	_, err := h.db.Pool.Exec(ctx, `CREATE TABLE tally (id int PRIMARY KEY, n bigint NOT NULL, last bigint NOT NULL); INSERT INTO tally VALUES (1, 0, 0)`)
	require.NoError(t, err)
	const n = 1500 // 3 statements each: 4,500 in one batch
	res, err := h.store.Append(ctx, h.db.Pool, eventstore.Any(), events("acct", "a", n))
	require.NoError(t, err)
	positions := res.GlobalPositions()

	r := projector.NewRouter("many", projector.WithSetup(func(ctx context.Context, tx pgx.Tx) error { return createApplied(ctx, tx) }))
	projector.On(r, "Happened", func(_ context.Context, w *projector.Writes, ev eventstore.PersistedEvent, _ struct{}) error {
		w.Exec(`INSERT INTO applied (projection, global_position, event_id, aggregate_type, aggregate_id, aggregate_version)
			VALUES ('many', $1, $2, $3, $4, $5)`, ev.GlobalPosition, ev.EventID, ev.AggregateType, ev.AggregateID, ev.AggregateVersion)
		w.Exec(`UPDATE tally SET n = n + 1 WHERE id = 1`)
		w.Exec(`UPDATE tally SET last = $1 WHERE id = 1 AND last < $1`, ev.GlobalPosition)
		return nil
	})
	cfg := h.config()
	cfg.BatchSize = 2 * n
	rn, _ := h.start(cfg, r)
	h.waitFor("the projection to apply everything", func() bool {
		return len(h.committedBatches()) > 0 && stateOf(t, rn, "many").Position >= positions[n-1]
	})
	require.Equal(t, positions, appliedPositions(t, h.db.Pool, "many"))
	var count, last int64
	require.NoError(t, h.db.Pool.QueryRow(ctx, `SELECT n, last FROM tally`).Scan(&count, &last))
	require.Equal(t, []int64{n, positions[n-1]}, []int64{count, last})
	batches := h.committedBatches()
	require.Len(t, batches, 1)
	require.Equal(t, n, batches[0].Events)
}
