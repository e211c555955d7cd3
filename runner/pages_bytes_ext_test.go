package runner_test

import (
	"bytes"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/projector"
)

// Pages end at PageBytes (a larger event comes alone), and a page cut by its byte bound is not
// mistaken for the end of the log: every event is applied exactly once and in order, with a
// transaction held open across the cut (G1, G2), by a projection reading the shared pages and by
// one reading alone with a filter in SQL.
func TestPagesBoundedInBytes(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, false)
	const pageBytes = 1000
	sizes := []int{10, 400, 400, 300, 2500, 5, 999, 1, 1000, 600, 600, 20}
	var want []int64
	sizeAt := map[int64]int{}
	for round := 0; round < 3; round++ {
		for i, size := range sizes {
			typ := "order"
			if i%3 == 0 {
				typ = "account"
			}
			res, err := h.store.Append(ctx, h.db.Pool, eventstore.Any(), []eventstore.Event{{AggregateType: typ,
				AggregateID: fmt.Sprint(i), EventType: "Sized", Payload: bytes.Repeat([]byte("p"), size)}})
			require.NoError(t, err)
			want = append(want, res.GlobalPositions()...)
			sizeAt[res.GlobalPositions()[0]] = size
		}
	}
	// An appender holds a position open after all of them, then more events follow it.
	slow, open := h.openAppend(ctx, "order", "slow", 1)
	sizeAt[open.GlobalPositions()[0]] = 2
	var after []int64
	for i := 0; i < 4; i++ {
		res := h.appendOne(ctx, "order", "late", 1)
		after = append(after, res.GlobalPositions()...)
		sizeAt[res.GlobalPositions()[0]] = 2
	}

	var mu sync.Mutex
	type read struct {
		from   int64
		events int
	}
	var reads []read
	// The projection with a filter runs in a runner of its own, without the PageRead hook: the
	// hook does not tell its filtered reads (of order events only) from the shared reads of every
	// event, and only the latter can be checked against want below.
	cfgOrders := h.config()
	cfgOrders.BatchSize, cfgOrders.PageBytes, cfgOrders.PageCacheBytes = 50, pageBytes, 4*pageBytes
	cfg := h.config()
	cfg.BatchSize, cfg.PageBytes, cfg.PageCacheBytes = 50, pageBytes, 4*pageBytes
	cfg.Hooks.PageRead = func(from int64, n int) {
		mu.Lock()
		reads = append(reads, read{from, n})
		mu.Unlock()
	}
	all := &recorder{name: "all"}
	orders := &recorder{name: "orders", FilterSpec: projector.FilterSpec{Aggregates: []string{"order"}}}
	_, _ = h.start(cfg, all)
	_, _ = h.start(cfgOrders, orders)

	h.waitFor("the events before the open append", func() bool { return len(appliedPositions(t, h.db.Pool, "all")) >= len(want) })
	require.Equal(t, want, appliedPositions(t, h.db.Pool, "all"), "nothing beyond the open position")
	require.NoError(t, slow.Commit(ctx))
	want = append(append(want, open.GlobalPositions()...), after...)
	h.waitFor("every event", func() bool {
		return len(appliedPositions(t, h.db.Pool, "all")) == len(want) &&
			len(appliedPositions(t, h.db.Pool, "orders")) == len(committedPositions(t, h.db.Pool, "aggregate_type = 'order'"))
	})
	require.Equal(t, want, appliedPositions(t, h.db.Pool, "all"))
	require.Equal(t, committedPositions(t, h.db.Pool, "aggregate_type = 'order'"), appliedPositions(t, h.db.Pool, "orders"))

	// Pages of the shared reader ended at the byte bound (the store's own test checks the bound
	// itself): reads of several events that fit, where the next event would not have. Every read
	// the hook saw is one of the shared reader of the runner of "all" (its only projection reads
	// every event), so the events it returned are the first ones after from in want (but for the
	// position held open, while it was).
	mu.Lock()
	defer mu.Unlock()
	cutShort := 0
	for _, rd := range reads {
		i, _ := slices.BinarySearch(want, rd.from+1)
		if rd.events <= 1 || i+rd.events > len(want) {
			continue
		}
		total := 0
		for _, pos := range want[i : i+rd.events] {
			total += sizeAt[pos]
		}
		if total <= pageBytes && i+rd.events < len(want) && total+sizeAt[want[i+rd.events]] > pageBytes {
			cutShort++
		}
	}
	require.Positive(t, cutShort, "some pages ended at the byte bound")
}
