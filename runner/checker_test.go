package runner_test

import (
	"context"
	"errors"
	"fmt"
	"github.com/eventline/eventline/internal/lifecycle"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/internal/pgtest"
	"github.com/eventline/eventline/projector"
)

// workload appends from several writers at once: transactions that touch several aggregates,
// write another table first, stay open a while, or roll back. It records the IDs of events whose
// transaction did not commit.
type workload struct {
	h          *harness
	writers    int
	txPerWrite int
	aggregates int

	mu         sync.Mutex
	rolledBack map[uuid.UUID]bool
	commits    atomic.Int64
}

func (w *workload) run(ctx context.Context, tolerateErrors bool) error {
	var wg sync.WaitGroup
	errs := make(chan error, w.writers)
	for i := 0; i < w.writers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(i), uint64(time.Now().UnixNano())))
			for n := 0; n < w.txPerWrite; n++ {
				if err := w.oneTx(ctx, rng); err != nil && !tolerateErrors {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

func (w *workload) oneTx(ctx context.Context, rng *rand.Rand) error {
	var ids []uuid.UUID
	rollback := rng.IntN(10) == 0
	err := func() error {
		tx, err := w.h.db.Pool.Begin(ctx)
		if err != nil {
			return err
		}
		defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
		if rng.IntN(4) == 0 {
			if _, err := tx.Exec(ctx, `INSERT INTO side_effects (note) VALUES ('before append')`); err != nil {
				return err
			}
		}
		for a := 0; a < 1+rng.IntN(3); a++ {
			aggType := "order"
			if rng.IntN(2) == 0 {
				aggType = "account"
			}
			evs := events(aggType, fmt.Sprint(rng.IntN(w.aggregates)), 1+rng.IntN(3))
			for i := range evs {
				evs[i].EventID = uuid.Must(uuid.NewV7())
				ids = append(ids, evs[i].EventID)
			}
			if _, err := w.h.store.Append(ctx, tx, eventstore.Any(), evs); err != nil {
				return err
			}
		}
		if rng.IntN(5) == 0 {
			time.Sleep(time.Duration(rng.IntN(30)) * time.Millisecond) // a slow writer, on purpose
		}
		if rollback {
			return tx.Rollback(ctx)
		}
		return tx.Commit(ctx)
	}()
	if err != nil || rollback {
		// Not committed (or unknown, after a lost connection: then the events table decides, and
		// only IDs that are really absent count as rolled back).
		w.mu.Lock()
		for _, id := range ids {
			w.rolledBack[id] = true
		}
		w.mu.Unlock()
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "40P01" {
			return nil // two writers locked the same aggregates in opposite orders: expected
		}
		return err
	}
	w.commits.Add(1)
	return nil
}

// verify checks one projection against the events table: every committed event it should see
// was applied exactly once, in global order, and no rolled-back event was.
func (w *workload) verify(t *testing.T, projection, where string) {
	t.Helper()
	ctx := context.Background()
	want := committedPositions(t, w.h.db.Pool, where)
	got := appliedPositions(t, w.h.db.Pool, projection)
	require.Equal(t, len(want), len(got), "%s: applied count", projection)
	require.Equal(t, want, got, "%s: every committed event once, in global order", projection)

	rows, err := w.h.db.Pool.Query(ctx, `SELECT aggregate_type, aggregate_id, aggregate_version, event_id FROM applied WHERE projection = $1 ORDER BY seq`, projection)
	require.NoError(t, err)
	last := map[string]int64{}
	for rows.Next() {
		var typ, id string
		var version int64
		var eventID uuid.UUID
		require.NoError(t, rows.Scan(&typ, &id, &version, &eventID))
		key := typ + "/" + id
		require.Greater(t, version, last[key], "%s: %s versions in order", projection, key)
		last[key] = version
		w.mu.Lock()
		if w.rolledBack[eventID] {
			var committed bool
			require.NoError(t, w.h.db.Pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM events WHERE event_id = $1)`, eventID).Scan(&committed))
			require.True(t, committed, "%s: applied rolled-back event %s", projection, eventID)
		}
		w.mu.Unlock()
	}
	require.NoError(t, rows.Err())
}

func (w *workload) waitCaughtUp(projection, where string) {
	w.h.t.Helper()
	want := len(committedPositions(w.h.t, w.h.db.Pool, where))
	w.h.waitFor(projection+" to catch up", func() bool {
		return len(appliedPositions(w.h.t, w.h.db.Pool, projection)) >= want
	})
}

func newWorkload(t *testing.T, h *harness, writers, txs int) *workload {
	_, err := h.db.Pool.Exec(context.Background(), `CREATE TABLE side_effects (note text)`)
	require.NoError(t, err)
	return &workload{h: h, writers: writers, txPerWrite: txs, aggregates: 12, rolledBack: map[uuid.UUID]bool{}}
}

func checkerProjections() []projector.Projection {
	return []projector.Projection{
		&recorder{name: "all"},
		&recorder{name: "accounts", FilterSpec: projector.FilterSpec{Aggregates: []string{"account"}}},
	}
}

// TestRandomizedChecker: 8 writers with random rollbacks, multi-aggregate transactions and slow
// commits; two runners running the same projections, one of them stopped and restarted twice;
// then every committed event was applied exactly once per projection, in order (G1 to G5).
func TestRandomizedChecker(t *testing.T) {
	t.Parallel()
	for round := 0; round < 3; round++ {
		t.Run(fmt.Sprint("round", round), func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t)
			h := newHarness(t, round%2 == 0)
			wl := newWorkload(t, h, 8, 40)
			cfg := h.config()
			cfg.BatchSize = 7 + round*20
			_, _ = h.start(cfg, checkerProjections()...)
			_, stopB := h.start(cfg, checkerProjections()...)

			done := make(chan error, 1)
			go func() { done <- wl.run(ctx, false) }()
			for restart := 0; restart < 2; restart++ {
				h.waitFor("some progress", func() bool { return wl.commits.Load() > int64(40+restart*80) })
				stopB()
				_, stopB = h.start(cfg, checkerProjections()...)
			}
			require.NoError(t, <-done)
			wl.waitCaughtUp("all", "")
			wl.waitCaughtUp("accounts", "aggregate_type = 'account'")
			wl.verify(t, "all", "")
			wl.verify(t, "accounts", "aggregate_type = 'account'")
		})
	}
}

// TestServerRestart restarts the PostgreSQL server while writers append and two runners run:
// they recover by themselves and nothing is lost or applied twice. Not parallel: it takes the
// whole server down.
func TestServerRestart(t *testing.T) {
	if !pgtest.CanRestart() {
		t.Skip("the test server is not ours to restart")
	}
	ctx := testCtx(t)
	h := newHarness(t, true)
	wl := newWorkload(t, h, 4, 60)
	cfg := h.config()
	cfg.RetryMax = 200 * time.Millisecond
	cfg.ReconnectDelay = 50 * time.Millisecond
	_, _ = h.start(cfg, checkerProjections()...)
	_, _ = h.start(cfg, checkerProjections()...)

	done := make(chan error, 1)
	go func() { done <- wl.run(ctx, true) }()
	h.waitFor("some progress", func() bool { return wl.commits.Load() > 30 })
	pgtest.RestartServer(t)
	<-done
	// Writers that failed during the restart are fine; make sure some commit after it, too.
	wl.txPerWrite = 10
	require.NoError(t, wl.run(ctx, false))
	wl.waitCaughtUp("all", "")
	wl.waitCaughtUp("accounts", "aggregate_type = 'account'")
	wl.verify(t, "all", "")
	wl.verify(t, "accounts", "aggregate_type = 'account'")
}

// partitionedRecorder is a recorder split into partitions.
type partitionedRecorder struct {
	*recorder
	parts int
}

func (p partitionedRecorder) Partitions() int { return p.parts }

// verifyUnordered checks a partitioned projection: every committed event exactly once, each
// aggregate's events in version order (global order holds only within a partition).
func (w *workload) verifyUnordered(t *testing.T, projection string) {
	t.Helper()
	want := committedPositions(t, w.h.db.Pool, "")
	got := appliedPositions(t, w.h.db.Pool, projection)
	require.Equal(t, len(want), len(got), "%s: applied count", projection)
	sorted := append([]int64(nil), got...)
	slices.Sort(sorted)
	require.Equal(t, want, sorted, "%s: every committed event exactly once", projection)
	rows, err := w.h.db.Pool.Query(context.Background(), `SELECT aggregate_type || '/' || aggregate_id, aggregate_version FROM applied WHERE projection = $1 ORDER BY seq`, projection)
	require.NoError(t, err)
	last := map[string]int64{}
	for rows.Next() {
		var key string
		var version int64
		require.NoError(t, rows.Scan(&key, &version))
		require.Greater(t, version, last[key], "%s: %s versions in order", projection, key)
		last[key] = version
	}
	require.NoError(t, rows.Err())
}

// TestPartitionedProjectionAcrossRunners: a projection in 4 partitions shared by two runners
// (one restarted) under the randomized workload: exactly once, per-aggregate order.
func TestPartitionedProjectionAcrossRunners(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	wl := newWorkload(t, h, 6, 30)
	mk := func() projector.Projection { return partitionedRecorder{&recorder{name: "parts"}, 4} }
	cfg := h.config()
	cfg.BatchSize = 9
	rA, _ := h.start(cfg, mk())
	_, stopB := h.start(cfg, mk())
	h.waitFor("the partitions spread over both runners", func() bool {
		sts, err := rA.Status(ctx)
		require.NoError(t, err)
		owners := map[string]int{}
		for _, st := range sts {
			owners[st.Owner]++
		}
		return len(sts) == 4 && len(owners) == 2 && owners[""] == 0
	})
	done := make(chan error, 1)
	go func() { done <- wl.run(ctx, false) }()
	h.waitFor("some progress", func() bool { return wl.commits.Load() > 60 })
	stopB()
	_, _ = h.start(cfg, mk())
	require.NoError(t, <-done)
	want := len(committedPositions(t, h.db.Pool, ""))
	h.waitFor("caught up", func() bool { return len(appliedPositions(t, h.db.Pool, "parts")) >= want })
	wl.verifyUnordered(t, "parts")
}

// TestPartitionCountChangedUnderLoad: a projection in 2 partitions is re-registered with 4 while
// writers append; the old partitions drain to one barrier, the new ones start from it, and every
// event is applied exactly once, each aggregate in order.
func TestPartitionCountChangedUnderLoad(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	wl := newWorkload(t, h, 6, 40)
	mk := func(parts int) projector.Projection { return partitionedRecorder{&recorder{name: "reshard"}, parts} }
	cfg := h.config()
	cfg.BatchSize = 7
	_, stopOld := h.start(cfg, mk(2))
	// The old process has deployed its layout and announced itself before the new one starts
	// (on a loaded machine, Run may not have got that far yet).
	h.waitFor("the old process to deploy 2 partitions and heartbeat", func() bool {
		var nodes int
		require.NoError(t, h.db.Pool.QueryRow(ctx, `SELECT count(*) FROM eventline_nodes`).Scan(&nodes))
		return h.record("reshard").Active == lifecycle.Layout{Version: 1, Partitions: 2} && nodes == 1
	})
	done := make(chan error, 1)
	go func() { done <- wl.run(ctx, false) }()
	h.waitFor("some progress", func() bool { return wl.commits.Load() > 40 })

	rNew, _ := h.start(cfg, mk(4))
	t.Cleanup(func() {
		if t.Failed() {
			sts, _ := rNew.CheckpointsForTest().Projection(context.Background(), h.db.Pool, "reshard", false)
			for _, cp := range sts {
				t.Logf("checkpoint %s: position %d, failed at %d, owner %s", cp.Key, cp.Position, cp.FailedPosition, cp.Owner)
			}
			t.Logf("record: %+v", h.record("reshard"))
		}
	})
	h.waitFor("more progress", func() bool { return wl.commits.Load() > 120 })
	// While a process declaring 2 partitions lives, the count does not change: the new process
	// serves the active layout (2 partitions) too.
	require.Equal(t, lifecycle.Layout{Version: 1, Partitions: 2}, h.record("reshard").Active)
	require.False(t, h.record("reshard").HasTarget())
	stopOld() // now every live process declares 4: the switch starts, the new process drains the old partitions by itself
	h.waitFor("the old partitions to have a barrier", func() bool {
		rec := h.record("reshard")
		return rec.Barrier >= 0 || rec.Active.Partitions == 4
	})
	require.NoError(t, <-done)
	h.waitFor("the switch to 4 partitions", func() bool {
		rec := h.record("reshard")
		return rec.Active.Partitions == 4 && !rec.HasTarget()
	})
	// More events after the switch go to the new partitions.
	wl.txPerWrite = 10
	require.NoError(t, wl.run(ctx, false))
	want := len(committedPositions(t, h.db.Pool, ""))
	h.waitFor("caught up", func() bool { return len(appliedPositions(t, h.db.Pool, "reshard")) >= want })
	wl.verifyUnordered(t, "reshard")
}
