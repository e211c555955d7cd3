package runner_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/eventline/eventline"
	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/eventstore/postgres"
	"github.com/eventline/eventline/internal/pgtest"
	"github.com/eventline/eventline/runner"
)

// balancesRYW is a per-event projection: one upsert per event, as the README writes them.
type balancesRYW struct{}

func (balancesRYW) Name() string { return "ryw" }
func (balancesRYW) Setup(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS ryw_counts (id text PRIMARY KEY, n bigint NOT NULL)`)
	return err
}
func (balancesRYW) Handle(ctx context.Context, tx pgx.Tx, events []eventstore.PersistedEvent) error {
	for _, ev := range events {
		if _, err := tx.Exec(ctx, `INSERT INTO ryw_counts VALUES ($1, 1) ON CONFLICT (id) DO UPDATE SET n = ryw_counts.n + 1`, ev.AggregateID); err != nil {
			return err
		}
	}
	return nil
}

// BenchmarkReadYourWrites: 4 writers at 1,000 events/s in all; after each Append returns, the
// writer waits until the projection has applied the event. Waiter.Wait (woken by the progress
// notification) against a hand-written loop that polls the checkpoint every millisecond, in the
// same run. Run with -benchtime=1x.
func BenchmarkReadYourWrites(b *testing.B) {
	d := time.Duration(envInt("EVENTLINE_BENCH_TAIL_SECONDS", 5)) * time.Second
	ctx := context.Background()
	db := pgtest.NewDatabase(b)
	store := postgres.NewStore(&postgres.StoreConfig{Names: eventline.Names{NotifyChannel: "ryw_events"}})
	r, err := runner.New(db.Pool, store, runner.Config{})
	if err != nil {
		b.Fatal(err)
	}
	if err := r.Register(balancesRYW{}); err != nil {
		b.Fatal(err)
	}
	w, err := runner.NewWaiter(db.Pool, store, runner.WaiterConfig{})
	if err != nil {
		b.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = r.Run(runCtx) }()
	go func() { defer wg.Done(); _ = w.Run(runCtx) }()
	defer func() { cancel(); wg.Wait() }()
	for {
		if err := w.Wait(ctx, "ryw", 0, ""); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond) // until the waiter runs and the projection exists
	}

	polling := func(ctx context.Context, position int64) error {
		for {
			var p int64
			if err := db.Pool.QueryRow(ctx, `SELECT position FROM eventline_checkpoints WHERE projection = 'ryw'`).Scan(&p); err != nil {
				return err
			}
			if p >= position {
				return nil
			}
			time.Sleep(time.Millisecond)
		}
	}
	measure := func(wait func(ctx context.Context, position int64, id string) error) []time.Duration {
		var mu sync.Mutex
		var lat []time.Duration
		var wg sync.WaitGroup
		for writer := 0; writer < 4; writer++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				tick := time.NewTicker(4 * time.Millisecond) // 250 events/s per writer
				defer tick.Stop()
				deadline := time.Now().Add(d)
				for i := 0; time.Now().Before(deadline); i++ {
					<-tick.C
					id := fmt.Sprintf("w%d-%d", writer, i%50)
					res, err := store.Append(ctx, db.Pool, eventstore.Any(), []eventstore.Event{{AggregateType: "acct", AggregateID: id, EventType: "Counted", Payload: []byte(`{}`)}})
					if err != nil {
						b.Error(err)
						return
					}
					start := time.Now()
					wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
					err = wait(wctx, res.GlobalPositions()[0], id)
					wcancel()
					if err != nil {
						b.Error(err)
						return
					}
					mu.Lock()
					lat = append(lat, time.Since(start))
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		slices.Sort(lat)
		return lat
	}
	pct := func(lat []time.Duration, p float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[min(len(lat)-1, int(float64(len(lat))*p))]
	}
	el := measure(func(ctx context.Context, pos int64, id string) error { return w.Wait(ctx, "ryw", pos, id) })
	base := measure(func(ctx context.Context, pos int64, _ string) error { return polling(ctx, pos) })
	b.ReportMetric(float64(pct(el, 0.5).Microseconds()), "p50-µs")
	b.ReportMetric(float64(pct(el, 0.99).Microseconds()), "p99-µs")
	fmt.Printf("\nRead-your-writes, 4 writers at 1,000 events/s for %s: Append returns -> wait returns\n", d)
	fmt.Println("| waiter | p50 | p99 | waits |\n|---|---|---|---|")
	fmt.Printf("| runner.Waiter (progress notification) | %s | %s | %d |\n", pct(el, 0.5), pct(el, 0.99), len(el))
	fmt.Printf("| hand-written loop polling the checkpoint every 1 ms | %s | %s | %d |\n", pct(base, 0.5), pct(base, 0.99), len(base))
}
