package runner_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/projector"
	"github.com/eventline/eventline/runner"
)

// appendSpread commits events to many aggregates (IDs with multi-byte characters among them), n
// per aggregate, and returns how many it appended.
func (h *harness) appendSpread(ctx context.Context, aggregates, n int) int {
	h.t.Helper()
	for a := 0; a < aggregates; a++ {
		id := fmt.Sprintf("acct-%d", a)
		if a%3 == 0 {
			id = fmt.Sprintf("kontø-日本-%d", a)
		}
		_, err := h.store.Append(ctx, h.db.Pool, eventstore.Any(), events("acct", id, n))
		require.NoError(h.t, err)
	}
	return aggregates * n
}

// rowCounter counts the events a runner reads from the database (the PageRead hook).
func rowCounter(cfg *runner.Config) *atomic.Int64 {
	var n atomic.Int64
	cfg.Hooks.PageRead = func(_ int64, events int) { n.Add(int64(events)) }
	return &n
}

// TestPartitionOwnersReadOneCopy: a projection in 4 partitions, spread over two runners, catches
// up on events appended while it was paused; behind the horizon each owner is sent its
// partition's events only, so together they read about one copy of the events (not one per
// partition), and every event is applied exactly once, each aggregate in order. Events appended
// while they run (read from the shared pages at the horizon) are applied exactly once too.
func TestPartitionOwnersReadOneCopy(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	mk := func() projector.Projection { return partitionedRecorder{&recorder{name: "parts"}, 4} }
	cfgA, cfgB := h.fastConfig(), h.fastConfig()
	cfgA.BatchSize, cfgB.BatchSize = 50, 50
	readA, readB := rowCounter(&cfgA), rowCounter(&cfgB)
	rA, _ := h.start(cfgA, mk())
	rB, _ := h.start(cfgB, mk())
	h.waitFor("the partitions spread over both runners", func() bool {
		sts, err := rA.Status(ctx)
		require.NoError(t, err)
		owners := map[string]int{}
		for _, st := range sts {
			owners[st.Owner]++
		}
		return len(sts) == 4 && owners[rA.NodeID()] == 2 && owners[rB.NodeID()] == 2
	})
	require.NoError(t, rA.Pause(ctx, "parts"))
	n := h.appendSpread(ctx, 400, 8)
	head := committedPositions(t, h.db.Pool, "")
	h.waitFor("both horizons past the events", func() bool {
		return rA.HorizonForTest() >= head[len(head)-1] && rB.HorizonForTest() >= head[len(head)-1]
	})
	readA.Store(0)
	readB.Store(0)
	require.NoError(t, rA.Resume(ctx, "parts"))
	h.requireExactlyOnce("parts")
	read := readA.Load() + readB.Load()
	t.Logf("%d events, rows read by the two owners: %d + %d", n, readA.Load(), readB.Load())
	require.Greater(t, readA.Load(), int64(n/4))
	require.Greater(t, readB.Load(), int64(n/4))
	require.LessOrEqual(t, float64(read), 1.2*float64(n), "the owners of 4 partitions read about one copy of the events")

	h.appendSpread(ctx, 40, 2)
	h.requireExactlyOnce("parts")
}

// TestPartitionsInMemoryWhenSQLDisagrees: when the database cannot select partitions as
// projector.PartitionOf does (the function of migration 0007 is missing, or computes something
// else), the runner filters partitions in memory, and every event is still applied exactly once.
func TestPartitionsInMemoryWhenSQLDisagrees(t *testing.T) {
	t.Parallel()
	for name, ddl := range map[string]string{
		"missing": `DROP FUNCTION eventline_partition_of(text, integer)`,
		"wrong": `CREATE OR REPLACE FUNCTION eventline_partition_of(aggregate_id text, partitions integer) RETURNS integer
			LANGUAGE sql IMMUTABLE AS $$ SELECT 0 $$`,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t)
			h := newHarness(t, true)
			_, err := h.db.Pool.Exec(ctx, ddl)
			require.NoError(t, err)
			n := h.appendSpread(ctx, 60, 3)
			cfg := h.config()
			cfg.BatchSize = 20
			read := rowCounter(&cfg)
			_, _ = h.start(cfg, partitionedRecorder{&recorder{name: "parts"}, 3})
			h.requireExactlyOnce("parts")
			require.GreaterOrEqual(t, read.Load(), int64(n))
		})
	}
}
