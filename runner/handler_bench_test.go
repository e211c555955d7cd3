package runner_test

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime/metrics"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/eventstore/postgres"
	"github.com/eventline/eventline/internal/pgtest"
	"github.com/eventline/eventline/projector"
	"github.com/eventline/eventline/runner"
)

// benchAmount is the payload of the benchmark's events.
type benchAmount struct {
	Amount int64 `json:"amount"`
}

// upsertSQL is the per-event write of the handler benchmark: one upsert of the event's aggregate.
func upsertSQL(table string) string {
	return `INSERT INTO ` + table + ` (id, n, total) VALUES ($1, 1, $2)
		ON CONFLICT (id) DO UPDATE SET n = ` + table + `.n + 1, total = ` + table + `.total + $2`
}

// BenchmarkPerEventHandler replays EVENTLINE_BENCH_HANDLER_EVENTS (default 200,000) events over
// 20,000 aggregates into a read model written by a per-event handler, one upsert per event, as
// the README shows (projector.On, writes queued on projector.Writes), and compares it in the same
// run with hand-written pgx loops that read the same pages (one transaction per page, position
// saved in it) and send the same upserts (a) as one pgx.Batch per page, (b) one Exec per event.
// For context it also runs the same handler registered with projector.OnTx (one tx.Exec per
// event). Each of EVENTLINE_BENCH_ROUNDS rounds (default 3) runs all four, the first one
// rotating; the table shows medians, and the ratios are paired within a round. Client CPU and
// heap allocations are per event, for the whole test process. Run with -benchtime=1x.
func BenchmarkPerEventHandler(b *testing.B) {
	n := envInt("EVENTLINE_BENCH_HANDLER_EVENTS", 200_000)
	aggregates := min(20_000, n)
	const batch = 1000
	ctx := context.Background()
	db := pgtest.NewDatabase(b)
	pool := benchPool(b, db, 8)
	defer pool.Close()
	loadEventsOver(b, pool, n, aggregates)
	store := postgres.NewStore(nil)
	var head int64
	if err := pool.QueryRow(ctx, `SELECT max(global_position) FROM events`).Scan(&head); err != nil {
		b.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `CREATE TABLE bench_positions (name text PRIMARY KEY, pos bigint NOT NULL)`); err != nil {
		b.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `CHECKPOINT`); err != nil { // not during the first contender's run
		b.Fatal(err)
	}
	// table creates (or empties) a contender's read model and position.
	table := func(name string) string {
		t := "bench_balances_" + name
		if _, err := pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+t+` (id text PRIMARY KEY, n bigint NOT NULL, total bigint NOT NULL)`); err != nil {
			b.Fatal(err)
		}
		if _, err := pool.Exec(ctx, `TRUNCATE `+t); err != nil {
			b.Fatal(err)
		}
		if _, err := pool.Exec(ctx, `INSERT INTO bench_positions VALUES ($1, 0) ON CONFLICT (name) DO UPDATE SET pos = 0`, name); err != nil {
			b.Fatal(err)
		}
		return t
	}

	type result struct {
		evs, cpu, allocs float64 // events/s, client CPU µs per event, heap allocations per event
	}
	measure := func(name string, run func(t string) error) result {
		t := table(name)
		cpu0, allocs0 := processCPU(), heapAllocs()
		start := time.Now()
		if err := run(t); err != nil {
			b.Fatal(err)
		}
		elapsed := time.Since(start)
		cpu, allocs := processCPU()-cpu0, heapAllocs()-allocs0
		var sum int64
		if err := pool.QueryRow(ctx, `SELECT coalesce(sum(n), 0) FROM `+t).Scan(&sum); err != nil || sum != int64(n) {
			b.Fatalf("%s: applied %d of %d events (err %v)", name, sum, n, err)
		}
		return result{evs: float64(n) / elapsed.Seconds(),
			cpu: float64(cpu.Microseconds()) / float64(n), allocs: float64(allocs) / float64(n)}
	}
	round := 0
	runRouter := func(name string, register func(r *projector.Router, t string)) result {
		round++ // a new projection each time: it starts from 0
		return measure(name, func(t string) error {
			r := projector.NewRouter(fmt.Sprintf("%s_%d", name, round), projector.WithAggregateTypes("bench"))
			register(r, t)
			return runUntil(ctx, pool, store, r, batch, head)
		})
	}
	readme := func(r *projector.Router, t string) { // the README's handler
		upsert := upsertSQL(t)
		projector.On(r, "Counted", func(ctx context.Context, w *projector.Writes, ev eventstore.PersistedEvent, p benchAmount) error {
			w.Exec(upsert, ev.AggregateID, p.Amount)
			return nil
		})
	}
	pgxLoop := func(name string, batched bool) func(string) error {
		return func(string) error { return perEventLoop(ctx, pool, store, name, batch, batched) }
	}

	onTx := func(r *projector.Router, t string) {
		upsert := upsertSQL(t)
		projector.OnTx(r, "Counted", func(ctx context.Context, tx pgx.Tx, ev eventstore.PersistedEvent, p benchAmount) error {
			_, err := tx.Exec(ctx, upsert, ev.AggregateID, p.Amount)
			return err
		})
	}
	contenders := []struct {
		what string
		run  func() result
	}{
		{"eventline, `projector.On` (README): writes queued on `projector.Writes`", func() result { return runRouter("on", readme) }},
		{"(a) pgx loop, one `pgx.Batch` per page", func() result { return measure("pgx_batch", pgxLoop("pgx_batch", true)) }},
		{"(b) pgx loop, one `Exec` per event", func() result { return measure("pgx_exec", pgxLoop("pgx_exec", false)) }},
		{"eventline, `projector.OnTx`: one `tx.Exec` per event", func() result { return runRouter("ontx", onTx) }},
	}
	// Every round runs every contender, starting with a different one, so that the load of a
	// shared machine falls on all of them; the ratios are paired within a round, then the median
	// is taken.
	rounds := envInt("EVENTLINE_BENCH_ROUNDS", 3)
	results := make([][]result, len(contenders)) // [contender][round]
	for i := range rounds {
		for k := range contenders {
			c := (i + k) % len(contenders)
			results[c] = append(results[c], contenders[c].run())
		}
	}
	median := func(xs []float64) float64 {
		xs = slices.Clone(xs)
		slices.Sort(xs)
		return xs[len(xs)/2]
	}
	field := func(c int, f func(result) float64) float64 {
		var xs []float64
		for _, r := range results[c] {
			xs = append(xs, f(r))
		}
		return median(xs)
	}
	ratio := func(c int) float64 { // eventline On over contender c, paired by round
		var xs []float64
		for i := range rounds {
			xs = append(xs, results[0][i].evs/results[c][i].evs)
		}
		return median(xs)
	}

	b.ReportMetric(field(0, func(r result) float64 { return r.evs }), "events/s")
	b.ReportMetric(ratio(1), "x-pgx-batch")
	b.ReportMetric(ratio(2), "x-pgx-exec")
	fmt.Printf("\nCatch-up of %d events over %d aggregates, one upsert per event (pages of %d), against hand-written pgx loops (medians of %d rounds):\n",
		n, aggregates, batch, rounds)
	fmt.Println("| reader | events/s | eventline (On) vs it | client CPU µs/event | allocs/event |")
	fmt.Println("|---|---|---|---|---|")
	for c, con := range contenders {
		fmt.Printf("| %s | %.0f | %.2fx | %.1f | %.1f |\n", con.what, field(c, func(r result) float64 { return r.evs }), ratio(c),
			field(c, func(r result) float64 { return r.cpu }), field(c, func(r result) float64 { return r.allocs }))
	}
}

// runUntil runs a runner with projection p until it has applied everything up to head.
func runUntil(ctx context.Context, pool *pgxpool.Pool, store *postgres.Store, p projector.Projection, batch int, head int64) error {
	done := make(chan struct{})
	var once sync.Once
	r, err := runner.New(pool, store, runner.Config{BatchSize: batch, PollInterval: time.Hour, Hooks: runner.Hooks{
		Progressed: func(_ runner.Unit, pos int64) {
			if pos >= head {
				once.Do(func() { close(done) })
			}
		},
	}})
	if err != nil {
		return err
	}
	if err := r.Register(p); err != nil {
		return err
	}
	runCtx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { errc <- r.Run(runCtx) }()
	select {
	case <-done:
		cancel()
		return <-errc
	case err := <-errc:
		cancel()
		return fmt.Errorf("runner stopped before catching up: %v", err)
	}
}

// perEventLoop is the hand-written baseline: per page, one transaction that reads the page,
// decodes each payload, upserts per event (queued in one pgx.Batch, or one Exec each) and saves
// the position.
func perEventLoop(ctx context.Context, pool *pgxpool.Pool, store *postgres.Store, name string, batch int, batched bool) error {
	upsert := upsertSQL("bench_balances_" + name)
	var pos int64
	for {
		var got int
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			evs, err := store.ReadEvents(ctx, tx, pos, batch)
			if err != nil || len(evs) == 0 {
				return err
			}
			got = len(evs)
			var b pgx.Batch
			for i := range evs {
				var p benchAmount
				if err := json.Unmarshal(evs[i].Payload, &p); err != nil {
					return err
				}
				if batched {
					b.Queue(upsert, evs[i].AggregateID, p.Amount)
				} else if _, err := tx.Exec(ctx, upsert, evs[i].AggregateID, p.Amount); err != nil {
					return err
				}
			}
			pos = evs[got-1].GlobalPosition
			b.Queue(`UPDATE bench_positions SET pos = $2 WHERE name = $1`, name, pos)
			return tx.SendBatch(ctx, &b).Close()
		})
		if err != nil || got == 0 {
			return err
		}
	}
}

// processCPU is the user and system CPU time of the test process so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// heapAllocs is the number of heap objects allocated so far.
func heapAllocs() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:objects"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}
