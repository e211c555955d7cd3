package runner_test

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/eventline/eventline/eventstore/postgres"
	"github.com/eventline/eventline/internal/pgtest"
	"github.com/eventline/eventline/runner"
)

// BenchmarkCatchUpMemory measures the process's peak RSS (VmHWM, reset before each run) and peak
// live heap while one counting projection catches up with 200,000 and 1,000,000 events, at the
// runner's default settings (EVENTLINE_BENCH_MEMORY_EVENTS, comma-separated, changes the
// counts). The events are written by the server itself, so that loading them costs this
// process nothing. Memory should not grow with the number of events. Linux only (VmHWM).
func BenchmarkCatchUpMemory(b *testing.B) {
	counts := []int{200_000, 1_000_000}
	if v := os.Getenv("EVENTLINE_BENCH_MEMORY_EVENTS"); v != "" {
		counts = nil
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.Atoi(f)
			if err != nil {
				b.Fatalf("EVENTLINE_BENCH_MEMORY_EVENTS: %v", err)
			}
			counts = append(counts, n)
		}
	}
	ctx := context.Background()
	fmt.Println("\nCatch-up memory, one counting projection, default runner.Config:")
	fmt.Println("| events | events/s | RSS before | peak RSS (VmHWM) | peak heap (objects) |")
	fmt.Println("|---|---|---|---|---|")
	for _, n := range counts {
		db := pgtest.NewDatabase(b)
		pool, err := pgxpool.NewWithConfig(ctx, db.Config(b))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := pool.Exec(ctx, `INSERT INTO events (event_id, aggregate_type, aggregate_id, aggregate_version, event_type, payload, created_at)
			SELECT gen_random_uuid(), 'bench', (i % 1000)::text, i / 1000 + 1, 'Counted',
				convert_to('{"amount":1234,"currency":"EUR","note":"a payload of a realistic size for a small event"}', 'UTF8'), now()
			FROM generate_series(0, $1 - 1) i`, n); err != nil {
			b.Fatal(err)
		}
		if _, err := pool.Exec(ctx, `VACUUM ANALYZE events`); err != nil {
			b.Fatal(err)
		}
		if _, err := pool.Exec(ctx, `CREATE TABLE bench_counts (name text PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
			INSERT INTO bench_counts (name) VALUES ('count')`); err != nil {
			b.Fatal(err)
		}
		var head int64
		if err := pool.QueryRow(ctx, `SELECT max(global_position) FROM events`).Scan(&head); err != nil {
			b.Fatal(err)
		}
		var once sync.Once
		done := make(chan struct{})
		r, err := runner.New(pool, postgres.NewStore(nil), runner.Config{Hooks: runner.Hooks{
			Progressed: func(_ runner.Unit, pos int64) {
				if pos >= head {
					once.Do(func() { close(done) })
				}
			},
		}})
		if err != nil {
			b.Fatal(err)
		}
		if err := r.Register(&counter{name: "count"}); err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		debug.FreeOSMemory()
		if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
			b.Fatalf("reset the peak RSS: %v", err)
		}
		before := procStatus(b, "VmHWM:")
		stopHeap := make(chan struct{})
		peak := heapPeak(stopHeap)
		runCtx, cancel := context.WithCancel(ctx)
		errc := make(chan error, 1)
		start := time.Now()
		go func() { errc <- r.Run(runCtx) }()
		<-done
		elapsed := time.Since(start)
		hwm := procStatus(b, "VmHWM:")
		close(stopHeap)
		cancel()
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
		pool.Close()
		fmt.Printf("| %d | %.0f | %.1f MiB | %.1f MiB | %.1f MiB |\n", n, float64(n)/elapsed.Seconds(),
			float64(before)/(1<<20), float64(hwm)/(1<<20), float64(<-peak)/(1<<20))
		b.ReportMetric(float64(hwm)/(1<<20), fmt.Sprintf("n%d-peak-RSS-MiB", n))
	}
}

// procStatus returns a size field of /proc/self/status (VmHWM: the peak resident set size since
// the last reset), in bytes.
func procStatus(b *testing.B, field string) int64 {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, field); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			return kb << 10
		}
	}
	b.Fatalf("no %s in /proc/self/status", field)
	return 0
}
