package runner_test

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/eventline/eventline/internal/pgtest"
)

// waitUntil polls cond every 10ms (a measurement, not a synchronization) until it holds or d
// passes; it reports whether it held.
func waitUntil(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return cond()
}

// BenchmarkPartitionsAcrossProcesses catches up EVENTLINE_BENCH_EVENTS (default 1,000,000) events
// with one counting projection split into 1, 2 and 4 partitions, each partition's owner a separate
// runner process (one process per partition), and measures failover after SIGKILL (median of 5).
// Run with -benchtime=1x.
func BenchmarkPartitionsAcrossProcesses(b *testing.B) {
	n := envInt("EVENTLINE_BENCH_EVENTS", 1_000_000)
	ctx := context.Background()
	db := pgtest.NewDatabase(b)
	loadEvents(b, db.Pool, n)
	if _, err := db.Pool.Exec(ctx, `CREATE TABLE bench_counts (name text PRIMARY KEY, n bigint NOT NULL DEFAULT 0)`); err != nil {
		b.Fatal(err)
	}
	var head int64
	if err := db.Pool.QueryRow(ctx, `SELECT max(global_position) FROM events`).Scan(&head); err != nil {
		b.Fatal(err)
	}
	minPosition := func(pool *pgxpool.Pool, name string, parts int) int64 {
		var pos, rows int64
		if err := pool.QueryRow(ctx, `SELECT coalesce(min(position), 0), count(*) FROM eventline_checkpoints WHERE projection = $1`, name).Scan(&pos, &rows); err != nil {
			b.Fatal(err)
		}
		if rows < int64(parts) {
			return 0
		}
		return pos
	}

	fmt.Printf("\nCatch-up of %d events, one counting projection split into partitions, one runner process per partition:\n", n)
	fmt.Println("| partitions (processes) | events/s | vs 1 partition |\n|---|---|---|")
	var base float64
	for _, parts := range []int{1, 2, 4} {
		name := fmt.Sprintf("scale_%d", parts)
		start := time.Now()
		var children []*child
		for i := 0; i < parts; i++ {
			children = append(children, startChild(b, db.URL, childCounterEnv+"="+name, childPartsEnv+"="+strconv.Itoa(parts)))
		}
		if !waitUntil(10*time.Minute, func() bool { return minPosition(db.Pool, name, parts) >= head }) {
			b.Fatalf("%s did not catch up", name)
		}
		rate := float64(n) / time.Since(start).Seconds()
		if parts == 1 {
			base = rate
		}
		var counted int64
		if err := db.Pool.QueryRow(ctx, `SELECT coalesce(sum(n), 0) FROM bench_counts WHERE name LIKE $1`, name+"#%").Scan(&counted); err != nil || counted != int64(n) {
			b.Fatalf("%s counted %d of %d (%v)", name, counted, n, err)
		}
		fmt.Printf("| %d | %.0f | %.2f |\n", parts, rate, rate/base)
		b.ReportMetric(rate, fmt.Sprintf("p%d-events/s", parts))
		for _, c := range children {
			_ = c.cmd.Process.Signal(syscall.SIGTERM)
			_ = c.cmd.Wait()
		}
	}

	// Failover: two processes, the owner of the (caught-up) projection is killed.
	name := "scale_1"
	owner := func() string {
		var o string
		_ = db.Pool.QueryRow(ctx, `SELECT coalesce(owner, '') FROM eventline_checkpoints WHERE projection = $1 AND lease_until > now()`, name).Scan(&o)
		return o
	}
	var failovers []time.Duration
	procs := []*child{
		startChild(b, db.URL, childCounterEnv+"="+name, childPartsEnv+"=1"),
		startChild(b, db.URL, childCounterEnv+"="+name, childPartsEnv+"=1"),
	}
	for round := 0; round < 5; round++ {
		var victim *child
		if !waitUntil(30*time.Second, func() bool {
			o := owner()
			for _, c := range procs {
				if c.node == o {
					victim = c
					return true
				}
			}
			return false
		}) {
			b.Fatal("nobody owns the projection")
		}
		_ = victim.cmd.Process.Signal(syscall.SIGKILL)
		killed := time.Now()
		if !waitUntil(30*time.Second, func() bool { o := owner(); return o != "" && o != victim.node }) {
			b.Fatal("no failover")
		}
		failovers = append(failovers, time.Since(killed))
		_ = victim.cmd.Wait()
		for i, c := range procs {
			if c == victim {
				procs[i] = startChild(b, db.URL, childCounterEnv+"="+name, childPartsEnv+"=1")
			}
		}
	}
	slices.Sort(failovers)
	fmt.Printf("\nFailover after SIGKILL (lease 5s, heartbeat 1s), 5 runs: median %s, min %s, max %s\n",
		failovers[2].Round(time.Millisecond), failovers[0].Round(time.Millisecond), failovers[4].Round(time.Millisecond))
	b.ReportMetric(failovers[2].Seconds(), "failover-median-s")
}
