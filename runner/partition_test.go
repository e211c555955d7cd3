package runner_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

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
// else), the runner says at start, as a warning since a partitioned projection is registered, that
// it filters partitions in memory, and why; and every event is still applied exactly once (with
// the selection in SQL, a missing function would fail the reads, and the wrong one would send
// every event to partition 0 and none to the others).
func TestPartitionsInMemoryWhenSQLDisagrees(t *testing.T) {
	t.Parallel()
	const fallback = "partitions are filtered in memory: every partition's owner reads every event"
	for name, tc := range map[string]struct{ ddl, reason string }{
		"missing": {
			ddl:    `DROP FUNCTION eventline_partition_of(text, integer)`,
			reason: "is missing",
		},
		"wrong": {
			ddl: `CREATE OR REPLACE FUNCTION eventline_partition_of(aggregate_id text, partitions integer) RETURNS integer
			LANGUAGE sql IMMUTABLE AS $$ SELECT 0 $$`,
			reason: "projector.PartitionOf gives",
		},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t)
			h := newHarness(t, true)
			_, err := h.db.Pool.Exec(ctx, tc.ddl)
			require.NoError(t, err)
			h.appendSpread(ctx, 60, 3)
			cfg := h.config()
			cfg.BatchSize = 20
			core, logs := observer.New(zap.DebugLevel)
			cfg.Logger = zap.New(zapcore.NewTee(cfg.Logger.Core(), core))
			_, _ = h.start(cfg, partitionedRecorder{&recorder{name: "parts"}, 3})
			h.requireExactlyOnce("parts")

			// The runner started once: one entry, at Warn, with the reason of this case.
			entries := logs.FilterMessage(fallback).All()
			require.Len(t, entries, 1, "the runner fell back to filtering partitions in memory, once per start")
			require.Equal(t, zapcore.WarnLevel, entries[0].Level, "a partitioned projection is registered")
			reason, _ := entries[0].ContextMap()["reason"].(string)
			require.Contains(t, reason, tc.reason)
		})
	}
}
