package runner_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime/metrics"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/eventline/eventline"
	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/eventstore/postgres"
	"github.com/eventline/eventline/internal/pgtest"
	"github.com/eventline/eventline/runner"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// counter is the counting read model: one UPDATE per batch.
type counter struct{ name string }

func (c *counter) Name() string { return c.name }
func (c *counter) Handle(ctx context.Context, tx pgx.Tx, events []eventstore.PersistedEvent) error {
	_, err := tx.Exec(ctx, `UPDATE bench_counts SET n = n + $2 WHERE name = $1`, c.name, len(events))
	return err
}

// benchPool opens a pool of at most maxConns connections to db; the caller closes it.
func benchPool(b *testing.B, db *pgtest.Database, maxConns int) *pgxpool.Pool {
	b.Helper()
	cfg := db.Config(b)
	cfg.MaxConns = int32(maxConns)
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	return pool
}

func loadEvents(b *testing.B, pool *pgxpool.Pool, n int) { loadEventsOver(b, pool, n, 1000) }

// loadCounted loads n events and creates the counting read model's table; it returns the head.
func loadCounted(b *testing.B, pool *pgxpool.Pool, n int) int64 {
	b.Helper()
	ctx := context.Background()
	loadEvents(b, pool, n)
	if _, err := pool.Exec(ctx, `CREATE TABLE bench_counts (name text PRIMARY KEY, n bigint NOT NULL DEFAULT 0)`); err != nil {
		b.Fatal(err)
	}
	var head int64
	if err := pool.QueryRow(ctx, `SELECT max(global_position) FROM events`).Scan(&head); err != nil {
		b.Fatal(err)
	}
	return head
}

// loadEventsOver copies n events spread round-robin over the given number of aggregates.
func loadEventsOver(b *testing.B, pool *pgxpool.Pool, n, aggregates int) {
	ctx := context.Background()
	const chunk = 100_000
	payload := []byte(`{"amount":1234,"currency":"EUR","note":"a payload of a realistic size for a small event"}`)
	now := time.Now()
	for start := 0; start < n; start += chunk {
		rows := make([][]any, 0, chunk)
		for i := start; i < min(n, start+chunk); i++ {
			rows = append(rows, []any{uuid.Must(uuid.NewV7()), "bench", strconv.Itoa(i % aggregates), int64(i/aggregates + 1), "Counted", payload, now})
		}
		if _, err := pool.CopyFrom(ctx, pgx.Identifier{"events"},
			[]string{"event_id", "aggregate_type", "aggregate_id", "aggregate_version", "event_type", "payload", "created_at"},
			pgx.CopyFromRows(rows)); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := pool.Exec(ctx, `VACUUM ANALYZE events`); err != nil {
		b.Fatal(err)
	}
}

// heapPeak samples the live heap until stop is closed and returns the peak in bytes.
func heapPeak(stop <-chan struct{}) <-chan uint64 {
	out := make(chan uint64, 1)
	go func() {
		sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
		var peak uint64
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			metrics.Read(sample)
			peak = max(peak, sample[0].Value.Uint64())
			select {
			case <-stop:
				out <- peak
				return
			case <-t.C:
			}
		}
	}()
	return out
}

// BenchmarkCatchUp replays EVENTLINE_BENCH_EVENTS (default 1,000,000) events into a counting read
// model with 1 and 10 projections, against a hand-written pgx loop doing the same reads and the
// same writes in one transaction per page, in the same run. Run with -benchtime=1x.
func BenchmarkCatchUp(b *testing.B) {
	n := envInt("EVENTLINE_BENCH_EVENTS", 1_000_000)
	const batch = 1000
	ctx := context.Background()
	db := pgtest.NewDatabase(b)
	pool := benchPool(b, db, 16)
	defer pool.Close()
	head := loadCounted(b, pool, n)
	store := postgres.NewStore(nil)

	fmt.Printf("\nCatch-up of %d events into a counting read model (batch %d), eventline vs hand-written pgx loop:\n", n, batch)
	fmt.Println("| projections | eventline ev/s | baseline ev/s | ratio | pages read (eventline / baseline) | peak live heap |")
	fmt.Println("|---|---|---|---|---|---|")
	for run, projections := range []int{1, 10} {
		names := make([]string, projections)
		for i := range names {
			names[i] = fmt.Sprintf("count_%d_%d", run, i)
			if _, err := pool.Exec(ctx, `INSERT INTO bench_counts (name) VALUES ($1), ($2)`, names[i], "base_"+names[i]); err != nil {
				b.Fatal(err)
			}
		}
		// eventline
		var pages atomic.Int64
		var done sync.WaitGroup
		done.Add(projections)
		var once sync.Map
		rcfg := runner.Config{BatchSize: batch, PollInterval: time.Hour, Hooks: runner.Hooks{
			PageRead: func(int64, int) { pages.Add(1) },
			Progressed: func(k runner.Unit, pos int64) {
				if pos >= head {
					if _, loaded := once.LoadOrStore(k.Projection, true); !loaded {
						done.Done()
					}
				}
			},
		}}
		r, err := runner.New(pool, store, rcfg)
		if err != nil {
			b.Fatal(err)
		}
		for _, name := range names {
			if err := r.Register(&counter{name: name}); err != nil {
				b.Fatal(err)
			}
		}
		stopHeap := make(chan struct{})
		peak := heapPeak(stopHeap)
		runCtx, cancel := context.WithCancel(ctx)
		start := time.Now()
		errc := make(chan error, 1)
		go func() { errc <- r.Run(runCtx) }()
		done.Wait()
		elapsed := time.Since(start)
		close(stopHeap)
		cancel()
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
		el := float64(n) / elapsed.Seconds()

		// baseline: each projection its own loop, one transaction per page.
		var basePages atomic.Int64
		start = time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, projections)
		for _, name := range names {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs <- baselineLoop(ctx, pool, store, "base_"+name, batch, &basePages)
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				b.Fatal(err)
			}
		}
		base := float64(n) / time.Since(start).Seconds()
		var counted int64
		if err := pool.QueryRow(ctx, `SELECT n FROM bench_counts WHERE name = $1`, names[0]).Scan(&counted); err != nil || counted != int64(n) {
			b.Fatalf("counted %d of %d (err %v)", counted, n, err)
		}
		b.ReportMetric(el, fmt.Sprintf("p%d-events/s", projections))
		fmt.Printf("| %d | %.0f | %.0f | %.2f | %d / %d | %.1f MiB |\n", projections, el, base, el/base,
			pages.Load(), basePages.Load(), float64(<-peak)/(1<<20))
	}
}

func baselineLoop(ctx context.Context, pool *pgxpool.Pool, store *postgres.Store, name string, batch int, pages *atomic.Int64) error {
	var pos int64
	for {
		var got int
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			evs, err := store.ReadEvents(ctx, tx, pos, batch)
			if err != nil {
				return err
			}
			pages.Add(1)
			got = len(evs)
			if got == 0 {
				return nil
			}
			if _, err := tx.Exec(ctx, `UPDATE bench_counts SET n = n + $2 WHERE name = $1`, name, got); err != nil {
				return err
			}
			pos = evs[got-1].GlobalPosition
			return nil
		})
		if err != nil || got == 0 {
			return err
		}
	}
}

// latencyRecorder notes when each event reached a handler.
type latencyRecorder struct {
	mu   sync.Mutex
	seen map[uuid.UUID]time.Time
}

func (l *latencyRecorder) note(id uuid.UUID, at time.Time) {
	l.mu.Lock()
	l.seen[id] = at
	l.mu.Unlock()
}

type tailProjection struct{ rec *latencyRecorder }

func (p *tailProjection) Name() string { return "tail" }
func (p *tailProjection) Handle(_ context.Context, _ pgx.Tx, events []eventstore.PersistedEvent) error {
	now := time.Now()
	for _, ev := range events {
		p.rec.note(ev.EventID, now)
	}
	return nil
}

// tailWriters appends rate events/s (single-event transactions) from 4 writers for d and returns
// each event's commit time.
func tailWriters(ctx context.Context, b *testing.B, pool *pgxpool.Pool, store *postgres.Store, rate int, d time.Duration) map[uuid.UUID]time.Time {
	var mu sync.Mutex
	committed := map[uuid.UUID]time.Time{}
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(time.Second * 4 / time.Duration(rate))
			defer t.Stop()
			end := time.After(d)
			for i := 0; ; i++ {
				select {
				case <-end:
					return
				case <-t.C:
				}
				evs := events("tail", fmt.Sprintf("w%d-%d", w, i%20), 1)
				evs[0].EventID = uuid.Must(uuid.NewV7())
				if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
					_, err := store.Append(ctx, tx, eventstore.Any(), evs)
					return err
				}); err != nil {
					b.Error(err)
					return
				}
				now := time.Now()
				mu.Lock()
				committed[evs[0].EventID] = now
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return committed
}

func percentiles(committed, seen map[uuid.UUID]time.Time) (p50, p99 time.Duration, missing int) {
	var lat []time.Duration
	for id, c := range committed {
		s, ok := seen[id]
		if !ok {
			missing++
			continue
		}
		lat = append(lat, max(0, s.Sub(c)))
	}
	slices.Sort(lat)
	if len(lat) == 0 {
		return 0, 0, missing
	}
	return lat[len(lat)/2], lat[len(lat)*99/100], missing
}

// BenchmarkLiveTail measures commit-to-handler latency while 4 writers append 1,000 events/s,
// for the runner and for a hand-written LISTEN loop that reads new rows on each notification.
func BenchmarkLiveTail(b *testing.B) {
	d := time.Duration(envInt("EVENTLINE_BENCH_TAIL_SECONDS", 5)) * time.Second
	ctx := context.Background()
	db := pgtest.NewDatabase(b)
	store := postgres.NewStore(&postgres.StoreConfig{Names: eventline.Names{NotifyChannel: "tail_events"}})

	rec := &latencyRecorder{seen: map[uuid.UUID]time.Time{}}
	r, err := runner.New(db.Pool, store, runner.Config{})
	if err != nil {
		b.Fatal(err)
	}
	if err := r.Register(&tailProjection{rec: rec}); err != nil {
		b.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { errc <- r.Run(runCtx) }()
	time.Sleep(200 * time.Millisecond) // let it start; the measurement does not depend on it
	committed := tailWriters(ctx, b, db.Pool, store, 1000, d)
	time.Sleep(100 * time.Millisecond)
	cancel()
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	rec.mu.Lock()
	e50, e99, emiss := percentiles(committed, rec.seen)
	rec.mu.Unlock()

	// Baseline: LISTEN on a dedicated connection, read new rows on each notification.
	base := &latencyRecorder{seen: map[uuid.UUID]time.Time{}}
	conn := db.Conn(b)
	if _, err := conn.Exec(ctx, `LISTEN tail_events`); err != nil {
		b.Fatal(err)
	}
	var last int64
	if err := conn.QueryRow(ctx, `SELECT coalesce(max(global_position), 0) FROM events`).Scan(&last); err != nil {
		b.Fatal(err)
	}
	lctx, lcancel := context.WithCancel(ctx)
	ldone := make(chan struct{})
	go func() {
		defer close(ldone)
		for {
			if _, err := conn.WaitForNotification(lctx); err != nil {
				return
			}
			evs, err := store.ReadEvents(lctx, conn, last, 1000)
			if err != nil {
				return
			}
			now := time.Now()
			for _, ev := range evs {
				base.note(ev.EventID, now)
				last = ev.GlobalPosition
			}
		}
	}()
	committed = tailWriters(ctx, b, db.Pool, store, 1000, d)
	time.Sleep(100 * time.Millisecond)
	lcancel()
	<-ldone
	base.mu.Lock()
	b50, b99, bmiss := percentiles(committed, base.seen)
	base.mu.Unlock()
	b.ReportMetric(float64(e50.Microseconds()), "p50-µs")
	b.ReportMetric(float64(e99.Microseconds()), "p99-µs")
	fmt.Printf("\nLive tail, 4 writers at 1,000 events/s for %s: commit-to-handler latency\n", d)
	fmt.Println("| reader | p50 | p99 | not delivered |\n|---|---|---|---|")
	fmt.Printf("| eventline runner | %s | %s | %d |\n", e50, e99, emiss)
	fmt.Printf("| hand-written LISTEN + SELECT loop (no gap safety) | %s | %s | %d |\n", b50, b99, bmiss)
}

// BenchmarkHoleRelease measures how long a projection waits at a rolled-back position beyond
// the moment the position (and every one below it) is settled, while other appenders keep
// transactions open for up to 2 s.
func BenchmarkHoleRelease(b *testing.B) {
	rounds := envInt("EVENTLINE_BENCH_HOLES", 40)
	ctx := context.Background()
	db := pgtest.NewDatabase(b)
	pool := benchPool(b, db, 16)
	defer pool.Close()
	db.Pool.Close() // replaced by the larger pool; the harness closes that one too
	db.Pool = pool
	store := postgres.NewStore(&postgres.StoreConfig{Names: eventline.Names{NotifyChannel: "hole_events"}})

	var mu sync.Mutex
	type span struct {
		pos int64
		end time.Time
	}
	var spans []span // background appenders: first position, when they ended
	passed := make(chan int64, 1024)
	var target atomic.Int64
	r, err := runner.New(db.Pool, store, runner.Config{Hooks: runner.Hooks{
		Progressed: func(_ runner.Unit, pos int64) {
			if t := target.Load(); t > 0 && pos >= t && target.CompareAndSwap(t, 0) {
				passed <- pos
			}
		},
	}})
	if err != nil {
		b.Fatal(err)
	}
	if err := r.Register(&tailProjection{rec: &latencyRecorder{seen: map[uuid.UUID]time.Time{}}}); err != nil {
		b.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := r.Run(runCtx); err != nil {
			b.Error(err)
		}
	}()
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for runCtx.Err() == nil {
				var pos int64
				_ = pgx.BeginFunc(runCtx, db.Pool, func(tx pgx.Tx) error {
					res, err := store.Append(runCtx, tx, eventstore.Any(), events("bg", fmt.Sprint(w), 1))
					if err != nil {
						return err
					}
					pos = res.LastPosition()
					select { // a slow appender, on purpose
					case <-time.After(time.Duration(rng.IntN(2000)) * time.Millisecond):
					case <-runCtx.Done():
					}
					return nil
				})
				mu.Lock()
				spans = append(spans, span{pos, time.Now()})
				mu.Unlock()
			}
		}()
	}
	var waits []time.Duration
	for i := 0; i < rounds; i++ {
		tx, err := db.Pool.Begin(ctx)
		if err != nil {
			b.Fatal(err)
		}
		res, err := store.Append(ctx, tx, eventstore.Any(), events("hole", "h", 1))
		if err != nil {
			b.Fatal(err)
		}
		p := res.LastPosition()
		if _, err := store.Append(ctx, db.Pool, eventstore.Any(), events("after", fmt.Sprint(i), 1)); err != nil {
			b.Fatal(err)
		}
		target.Store(p)
		rolledBack := time.Now()
		if err := tx.Rollback(ctx); err != nil {
			b.Fatal(err)
		}
		select {
		case <-passed:
		case <-time.After(30 * time.Second):
			b.Fatal("projection never passed the hole")
		}
		at := time.Now()
		// Settled: the rollback, and every background appender holding a lower position ended.
		settled := rolledBack
		mu.Lock()
		for _, s := range spans {
			if s.pos > 0 && s.pos < p && s.end.After(settled) && s.end.Before(at) {
				settled = s.end
			}
		}
		mu.Unlock()
		waits = append(waits, at.Sub(settled))
	}
	cancel()
	wg.Wait()
	slices.Sort(waits)
	p50, p99 := waits[len(waits)/2], waits[len(waits)*99/100]
	b.ReportMetric(float64(p99.Microseconds()), "p99-µs")
	fmt.Printf("\nHole release (%d rolled-back positions, 4 appenders holding up to 2 s): wait beyond settlement p50 %s, p99 %s, max %s\n",
		rounds, p50.Round(10*time.Microsecond), p99.Round(10*time.Microsecond), waits[len(waits)-1].Round(10*time.Microsecond))
}
