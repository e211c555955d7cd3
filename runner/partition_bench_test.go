package runner_test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
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

// slowDownstream is a detached handler that waits 2 ms per event, as a call to another service
// would.
type slowDownstream struct {
	name  string
	parts int
}

func (d slowDownstream) Name() string    { return d.name }
func (d slowDownstream) Partitions() int { return d.parts }
func (d slowDownstream) HandleEvent(ctx context.Context, _ eventstore.PersistedEvent) error {
	return downstreamCall(ctx)
}

func downstreamCall(ctx context.Context) error {
	t := time.NewTimer(2 * time.Millisecond)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// threeWrites is a projection that writes three times per event, one statement each: a row per
// event, a per-aggregate total, a per-type count.
type threeWrites struct {
	name  string
	parts int
}

func (p threeWrites) Name() string    { return p.name }
func (p threeWrites) Partitions() int { return p.parts }
func (p threeWrites) Handle(ctx context.Context, tx pgx.Tx, events []eventstore.PersistedEvent) error {
	return writeThree(ctx, tx, p.name, p.parts, events)
}

// writeThree writes three statements per event. The per-type count is kept per partition, so
// that partitions never wait for each other's rows.
func writeThree(ctx context.Context, tx pgx.Tx, name string, parts int, events []eventstore.PersistedEvent) error {
	for _, ev := range events {
		if _, err := tx.Exec(ctx, `INSERT INTO bench_rows (projection, position, aggregate_id) VALUES ($1, $2, $3)`,
			name, ev.GlobalPosition, ev.AggregateID); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO bench_totals (projection, aggregate_id, n) VALUES ($1, $2, 1)
			ON CONFLICT (projection, aggregate_id) DO UPDATE SET n = bench_totals.n + 1`, name, ev.AggregateID); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO bench_types (projection, event_type, n) VALUES ($1, $2, 1)
			ON CONFLICT (projection, event_type) DO UPDATE SET n = bench_types.n + 1`, fmt.Sprintf("%s#%d", name, projector.PartitionOf(ev.AggregateID, parts)), ev.EventType); err != nil {
			return err
		}
	}
	return nil
}

const partitionBenchTables = `
CREATE TABLE bench_rows (projection text NOT NULL, position bigint NOT NULL, aggregate_id text NOT NULL, PRIMARY KEY (projection, position));
CREATE TABLE bench_totals (projection text NOT NULL, aggregate_id text NOT NULL, n bigint NOT NULL, PRIMARY KEY (projection, aggregate_id));
CREATE TABLE bench_types (projection text NOT NULL, event_type text NOT NULL, n bigint NOT NULL, PRIMARY KEY (projection, event_type));`

// partitionRun is one measurement: a workload with parts partitions, served by procs runners
// (each with its own pool, as separate processes would be).
type partitionRun struct {
	workload string // "detached" or "writes"
	parts    int
	procs    int
	inMemory bool // the SQL function is dropped: partitions are filtered in memory, as before
}

// BenchmarkPartitions measures what partitions are for: handler work that dominates. A detached
// handler waiting 2 ms per event (EVENTLINE_BENCH_SLOW_EVENTS, default 4,000 events) and a
// projection with three writes per event (EVENTLINE_BENCH_WRITE_EVENTS, default 20,000) catch up
// with 1, 2, 4 and 8 partitions, in one process and with one process per partition, against a
// hand-written baseline in the same run: one goroutine per partition reading its events with the
// partition in SQL and doing the same work, without checkpoints, horizon or ownership. It also
// counts the rows all owners read together. Run with -benchtime=1x.
func BenchmarkPartitions(b *testing.B) {
	for _, w := range []struct {
		name string
		n    int
	}{{"detached", envInt("EVENTLINE_BENCH_SLOW_EVENTS", 4000)}, {"writes", envInt("EVENTLINE_BENCH_WRITE_EVENTS", 20000)}} {
		what := "a detached handler waiting 2 ms per event"
		if w.name == "writes" {
			what = "a projection with three writes (statements) per event"
		}
		fmt.Printf("\nCatch-up of %d events over 1,000 aggregates, %s:\n", w.n, what)
		fmt.Println("| partitions | processes | eventline ev/s | vs 1 partition | baseline ev/s | ratio | rows read / events |")
		fmt.Println("|---|---|---|---|---|---|---|")
		var one float64
		runs := []partitionRun{{parts: 1, procs: 1}}
		for _, parts := range []int{2, 4, 8} {
			runs = append(runs, partitionRun{parts: parts, procs: 1})
		}
		for _, parts := range []int{2, 4, 8} {
			runs = append(runs, partitionRun{parts: parts, procs: parts})
		}
		runs = append(runs, partitionRun{parts: 8, procs: 1, inMemory: true}, partitionRun{parts: 8, procs: 8, inMemory: true})
		for _, run := range runs {
			run.workload = w.name
			rate, read := run.measure(b, w.n)
			if run.parts == 1 {
				one = rate
			}
			base := run.baseline(b, w.n)
			label := strconv.Itoa(run.parts)
			if run.inMemory {
				label += " (filtered in memory, as before)"
			}
			fmt.Printf("| %s | %d | %.0f | %.2fx | %.0f | %.2f | %.2f |\n", label, run.procs, rate, rate/one, base, rate/base, read)
			if !run.inMemory {
				b.ReportMetric(rate, fmt.Sprintf("%s-p%d-x%d-events/s", w.name, run.parts, run.procs))
			}
		}
	}
}

// measure catches up n events with eventline and returns events/s and rows read per event.
func (pr partitionRun) measure(b *testing.B, n int) (rate, readPerEvent float64) {
	ctx := context.Background()
	db := pgtest.NewDatabase(b)
	if _, err := db.Pool.Exec(ctx, partitionBenchTables); err != nil {
		b.Fatal(err)
	}
	if pr.inMemory {
		if _, err := db.Pool.Exec(ctx, `DROP FUNCTION eventline_partition_of(text, integer)`); err != nil {
			b.Fatal(err)
		}
	}
	store := postgres.NewStore(nil)
	const name = "bench"
	var read atomic.Int64
	var head atomic.Int64
	head.Store(1 << 62)
	var mu sync.Mutex
	done := map[runner.Unit]bool{}
	allDone := make(chan struct{})
	cfg := runner.Config{PollInterval: 100 * time.Millisecond, HeartbeatInterval: 100 * time.Millisecond,
		Lease: time.Second, NodeTimeout: time.Second,
		Hooks: runner.Hooks{
			PageRead: func(_ int64, events int) { read.Add(int64(events)) },
			Progressed: func(k runner.Unit, pos int64) {
				if pos < head.Load() {
					return
				}
				mu.Lock()
				defer mu.Unlock()
				if !done[k] {
					done[k] = true
					if len(done) == pr.parts {
						close(allDone)
					}
				}
			},
		}}
	var runners []*runner.Runner
	var wg sync.WaitGroup
	runCtx, cancel := context.WithCancel(ctx)
	defer func() { cancel(); wg.Wait() }()
	for i := 0; i < pr.procs; i++ {
		pool := benchPool(b, db, max(4, 2*pr.parts/pr.procs))
		defer pool.Close()
		r, err := runner.New(pool, store, cfg)
		if err != nil {
			b.Fatal(err)
		}
		if pr.workload == "detached" {
			err = r.RegisterDetached(slowDownstream{name, pr.parts})
		} else {
			err = r.Register(threeWrites{name, pr.parts})
		}
		if err != nil {
			b.Fatal(err)
		}
		runners = append(runners, r)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := r.Run(runCtx); err != nil {
				b.Error(err)
			}
		}()
	}
	// Every process owns its share before the events come, and the projection is paused while
	// they are loaded, so that the measurement is a catch-up by all owners from the start.
	if !waitUntil(time.Minute, func() bool {
		owners := map[string]int{}
		sts, err := runners[0].Status(ctx)
		if err != nil || len(sts) != pr.parts {
			return false
		}
		for _, st := range sts {
			owners[st.Owner]++
		}
		for _, r := range runners {
			if owners[r.NodeID()] != pr.parts/pr.procs {
				return false
			}
		}
		return true
	}) {
		b.Fatal("the partitions did not spread over the processes")
	}
	if err := runners[0].Pause(ctx, name); err != nil {
		b.Fatal(err)
	}
	read.Store(0) // from here: a unit that has not seen the pause yet may read a page before it does
	loadEvents(b, db.Pool, n)
	var last int64
	if err := db.Pool.QueryRow(ctx, `SELECT max(global_position) FROM events`).Scan(&last); err != nil {
		b.Fatal(err)
	}
	if !waitUntil(time.Minute, func() bool {
		for _, r := range runners {
			if r.HorizonForTest() < last {
				return false
			}
		}
		return true
	}) {
		b.Fatal("the horizon did not reach the events")
	}
	head.Store(last)
	start := time.Now()
	for _, r := range runners { // each runner's Resume wakes its own units at once
		if err := r.Resume(ctx, name); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-allDone:
	case <-time.After(10 * time.Minute):
		b.Fatal("did not catch up")
	}
	rate = float64(n) / time.Since(start).Seconds()
	if pr.workload == "writes" {
		var rows int
		if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM bench_rows`).Scan(&rows); err != nil || rows != n {
			b.Fatalf("wrote %d rows of %d (%v)", rows, n, err)
		}
	}
	return rate, float64(read.Load()) / float64(n)
}

// baseline does the same work by hand: one goroutine per partition, each reading its partition's
// events with the partition in SQL, one transaction per page for the writes.
func (pr partitionRun) baseline(b *testing.B, n int) float64 {
	ctx := context.Background()
	db := pgtest.NewDatabase(b)
	if _, err := db.Pool.Exec(ctx, partitionBenchTables); err != nil {
		b.Fatal(err)
	}
	pool := benchPool(b, db, max(4, 2*pr.parts))
	defer pool.Close()
	loadEvents(b, pool, n)
	store := postgres.NewStore(nil)
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, pr.parts)
	for part := 0; part < pr.parts; part++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- pr.baselineLoop(ctx, pool, store, part)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
	return float64(n) / time.Since(start).Seconds()
}

func (pr partitionRun) baselineLoop(ctx context.Context, pool *pgxpool.Pool, store *postgres.Store, part int) error {
	const batch = runner.BatchSizeDefault
	var pos int64
	for {
		evs, err := store.ReadPartitionBetween(ctx, pool, pos, 1<<62, batch, nil, nil, pr.parts, part)
		if err != nil || len(evs) == 0 {
			return err
		}
		if pr.workload == "detached" {
			for range evs {
				if err := downstreamCall(ctx); err != nil {
					return err
				}
			}
		} else if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			return writeThree(ctx, tx, "base", pr.parts, evs)
		}); err != nil {
			return err
		}
		pos = evs[len(evs)-1].GlobalPosition
	}
}
