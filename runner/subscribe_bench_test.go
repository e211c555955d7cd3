package runner_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eventline/eventline/eventstore/postgres"
	"github.com/eventline/eventline/internal/pgtest"
	"github.com/eventline/eventline/runner"
)

// BenchmarkSubscribeCatchUp catches up EVENTLINE_BENCH_EVENTS (default 200,000) events, in the same
// run: with a subscription (a loop that counts the events), with a counting projection, with both
// on one runner (they share the page reads), and with a hand-written pgx loop reading the same
// pages (no gap safety, no writes), each on a fresh runner. Run with -benchtime=1x.
func BenchmarkSubscribeCatchUp(b *testing.B) {
	n := envInt("EVENTLINE_BENCH_EVENTS", 200_000)
	const batch = 1000
	ctx := context.Background()
	db := pgtest.NewDatabase(b)
	pool := benchPool(b, db, 16)
	defer pool.Close()
	head := loadCounted(b, pool, n)
	store := postgres.NewStore(nil)

	type result struct {
		name    string
		took    time.Duration
		pages   int64
		heap    uint64
		applied int64
	}
	// catchUp runs a fresh runner with the projection (if any) and the subscription (if sub), and
	// returns how long each took to reach the head, measured from the start of Run.
	catchUp := func(label string, projection, sub bool) []result {
		var pages atomic.Int64
		var projDone sync.WaitGroup
		var projTook time.Duration
		var start time.Time
		name := "sub_bench_" + label
		rcfg := runner.Config{BatchSize: batch, PollInterval: time.Hour, Hooks: runner.Hooks{
			PageRead: func(int64, int) { pages.Add(1) },
		}}
		if projection {
			if _, err := pool.Exec(ctx, `INSERT INTO bench_counts (name) VALUES ($1)`, name); err != nil {
				b.Fatal(err)
			}
			projDone.Add(1)
			var once sync.Once
			rcfg.Hooks.Progressed = func(_ runner.Unit, pos int64) {
				if pos >= head {
					once.Do(func() { projTook = time.Since(start); projDone.Done() })
				}
			}
		}
		r, err := runner.New(pool, store, rcfg)
		if err != nil {
			b.Fatal(err)
		}
		if projection {
			if err := r.Register(&counter{name: name}); err != nil {
				b.Fatal(err)
			}
		}
		stopHeap := make(chan struct{})
		peak := heapPeak(stopHeap)
		runCtx, cancel := context.WithCancel(ctx)
		errc := make(chan error, 1)
		start = time.Now()
		go func() { errc <- r.Run(runCtx) }()
		var subTook time.Duration
		var received int64
		if sub {
			for batch, err := range r.Subscribe(ctx, runner.FromBeginning()) {
				if err != nil {
					b.Fatal(err)
				}
				received += int64(len(batch))
				if batch[len(batch)-1].GlobalPosition >= head {
					break
				}
			}
			subTook = time.Since(start)
		}
		projDone.Wait()
		close(stopHeap)
		cancel()
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
		heap := <-peak
		var out []result
		if sub {
			if received != int64(n) {
				b.Fatalf("subscription received %d of %d events", received, n)
			}
			out = append(out, result{name: "subscription", took: subTook, applied: received})
		}
		if projection {
			var counted int64
			if err := pool.QueryRow(ctx, `SELECT n FROM bench_counts WHERE name = $1`, name).Scan(&counted); err != nil || counted != int64(n) {
				b.Fatalf("counted %d of %d (err %v)", counted, n, err)
			}
			out = append(out, result{name: "projection (counting read model)", took: projTook, applied: counted})
		}
		for i := range out {
			out[i].pages, out[i].heap = pages.Load(), heap
			if len(out) > 1 {
				out[i].name += ", together"
			}
		}
		return out
	}

	// Baseline, first (it also warms the server's cache for every row): a hand-written loop
	// reading the same pages through the pool, counting.
	var basePages int64
	start := time.Now()
	var pos, got int64
	for {
		evs, err := store.ReadEvents(ctx, pool, pos, batch)
		if err != nil {
			b.Fatal(err)
		}
		basePages++
		if len(evs) == 0 {
			break
		}
		got += int64(len(evs))
		pos = evs[len(evs)-1].GlobalPosition
	}
	if got != int64(n) {
		b.Fatalf("baseline read %d of %d", got, n)
	}
	base := result{name: "hand-written pgx read loop (no gap safety)", took: time.Since(start), pages: basePages}

	var rows []result
	rows = append(rows, catchUp("sub", false, true)...)
	rows = append(rows, catchUp("proj", true, false)...)
	rows = append(rows, catchUp("both", true, true)...)

	fmt.Printf("\nCatch-up of %d events (batch %d): subscription vs projection, each on a fresh runner:\n", n, batch)
	fmt.Println("| consumer | events/s | vs read loop | pages read (per runner) | peak live heap |")
	fmt.Println("|---|---|---|---|---|")
	baseRate := float64(n) / base.took.Seconds()
	for _, row := range rows {
		rate := float64(n) / row.took.Seconds()
		fmt.Printf("| %s | %.0f | %.2f | %d | %.1f MiB |\n", row.name, rate, rate/baseRate, row.pages, float64(row.heap)/(1<<20))
	}
	fmt.Printf("| %s | %.0f | 1.00 | %d | |\n", base.name, baseRate, base.pages)
	b.ReportMetric(float64(n)/rows[0].took.Seconds(), "sub-events/s")
	b.ReportMetric(float64(n)/rows[1].took.Seconds(), "proj-events/s")
}
