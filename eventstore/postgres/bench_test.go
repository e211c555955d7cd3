package postgres_test

import (
	"context"
	"fmt"
	"os"
	"strings"
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
)

// BenchmarkAppend compares Store.Append with two hand-written pgx writers of the same events, in
// the same run, for 1, 4 and 16 writers, 1 and 10 events per transaction, with and without a
// notify channel: the baseline, a multi-row INSERT into a copy of the events table without
// eventline's trigger (which writes versions it keeps itself, checking nothing), and "checked",
// the same INSERT in one statement with an upsert of the aggregate's row in a copy of the heads
// table (what a writer needs for contiguous versions under concurrent writers, without gap
// safety). It prints a table of events/s and the ratios. Run it with -benchtime=1x: each cell is
// measured for a fixed time in three rounds (EVENTLINE_BENCH_CELL, default 4.5s per side),
// alternating the writers so that machine drift hits them alike.
func BenchmarkAppend(b *testing.B) {
	cell := 4500 * time.Millisecond
	if v := os.Getenv("EVENTLINE_BENCH_CELL"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			b.Fatalf("EVENTLINE_BENCH_CELL: %v", err)
		}
		cell = d
	}
	ctx := context.Background()
	db := pgtest.NewDatabase(b)
	cfg := db.Config(b)
	cfg.MaxConns = 20
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, `CREATE TABLE baseline_events (LIKE events INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING CONSTRAINTS INCLUDING INDEXES);
		CREATE TABLE baseline_heads (LIKE aggregate_heads INCLUDING ALL)`); err != nil {
		b.Fatal(err)
	}
	plain := postgres.NewStore(nil)
	notifying := postgres.NewStore(&postgres.StoreConfig{Names: eventline.Names{NotifyChannel: "bench_events"}})

	type result struct{ store, baseline, checked float64 }
	var lines []string
	for _, notify := range []bool{false, true} {
		for _, perTx := range []int{1, 10} {
			if only := os.Getenv("EVENTLINE_BENCH_PER_TX"); only != "" && only != fmt.Sprint(perTx) {
				continue
			}
			for _, writers := range []int{1, 4, 16} {
				store := plain
				if notify {
					store = notifying
				}
				var r result
				const rounds = 3
				for round := 0; round < rounds; round++ {
					s := measure(ctx, b, pool, writers, cell/rounds, func(ctx context.Context, tx pgx.Tx, w *benchWriter) error {
						_, err := store.Append(ctx, tx, eventstore.Any(), w.events(perTx))
						return err
					})
					base := measure(ctx, b, pool, writers, cell/rounds, func(ctx context.Context, tx pgx.Tx, w *benchWriter) error {
						return w.baselineInsert(ctx, tx, perTx, notify, false)
					})
					checked := measure(ctx, b, pool, writers, cell/rounds, func(ctx context.Context, tx pgx.Tx, w *benchWriter) error {
						return w.baselineInsert(ctx, tx, perTx, notify, true)
					})
					r.store += s / rounds
					r.baseline += base / rounds
					r.checked += checked / rounds
				}
				name := fmt.Sprintf("writers=%d/events=%d/notify=%v", writers, perTx, notify)
				b.ReportMetric(r.store, name+"/store-ev/s")
				lines = append(lines, fmt.Sprintf("| %7d | %6d | %-6v | %11.0f | %11.0f | %11.0f | %5.2f | %5.2f |",
					writers, perTx, notify, r.store, r.baseline, r.checked, r.store/r.baseline, r.store/r.checked))
			}
		}
	}
	fmt.Printf("\nAppend throughput (events/s), Store.Append vs hand-written pgx INSERTs (baseline: unchecked; checked: with a heads upsert), same run:\n")
	fmt.Printf("| writers | ev/tx  | notify | store       | baseline    | checked     | ratio | vs checked |\n|---|---|---|---|---|---|---|---|\n")
	fmt.Println(strings.Join(lines, "\n"))
}

// benchWriter owns a few aggregates and knows their versions, as a hand-written writer would.
type benchWriter struct {
	id       int
	n        int
	versions map[string]int64
	payload  []byte
}

func (w *benchWriter) aggregate() string {
	w.n++
	return fmt.Sprintf("w%d-a%d", w.id, w.n%50)
}

func (w *benchWriter) events(n int) []eventstore.Event {
	agg := w.aggregate()
	evs := make([]eventstore.Event, n)
	for i := range evs {
		evs[i] = eventstore.Event{AggregateType: "bench", AggregateID: agg, EventType: "Measured",
			Payload: w.payload, Metadata: []byte(`{"source":"bench"}`)}
	}
	return evs
}

// baselineInsert writes n events of one aggregate into baseline_events, with versions it keeps
// itself; checked, it takes them from baseline_heads instead, in the same statement, which
// upserts the aggregate's row there (and so serializes writers of one aggregate).
func (w *benchWriter) baselineInsert(ctx context.Context, tx pgx.Tx, n int, notify, checked bool) error {
	agg := w.aggregate()
	var sb strings.Builder
	args := make([]any, 0, 3+n*8)
	if checked {
		sb.WriteString(`WITH head AS (INSERT INTO baseline_heads AS h (aggregate_type, aggregate_id, version) VALUES ($1, $2, $3)
			ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET version = h.version + $3 RETURNING version) `)
		args = append(args, "bench", agg, int64(n))
	}
	sb.WriteString(`INSERT INTO baseline_events (event_id, aggregate_type, aggregate_id, aggregate_version, event_type, event_version, payload, metadata, created_at) `)
	now := time.Now()
	for i := 0; i < n; i++ {
		p := len(args)
		if checked {
			if i == 0 {
				sb.WriteString(`SELECT e.id, $1, $2, head.version - $3 + e.ord, 'Measured', 1, e.payload, e.metadata::jsonb, e.created
					FROM head, (VALUES `)
			} else {
				sb.WriteString(",")
			}
			fmt.Fprintf(&sb, "($%d::uuid, %d, $%d::bytea, $%d::text, $%d::timestamptz)", p+1, i+1, p+2, p+3, p+4)
			id, _ := uuid.NewV7()
			args = append(args, id, w.payload, `{"source":"bench"}`, now)
			continue
		}
		if i == 0 {
			sb.WriteString("VALUES ")
		} else {
			sb.WriteString(",")
		}
		fmt.Fprintf(&sb, "($%d,$%d,$%d,$%d,$%d,1,$%d,$%d,$%d)", p+1, p+2, p+3, p+4, p+5, p+6, p+7, p+8)
		w.versions[agg]++
		id, _ := uuid.NewV7()
		args = append(args, id, "bench", agg, w.versions[agg], "Measured", w.payload, `{"source":"bench"}`, now)
	}
	if checked {
		sb.WriteString(") AS e(id, ord, payload, metadata, created)")
	}
	sb.WriteString(" RETURNING global_position")
	rows, err := tx.Query(ctx, sb.String(), args...)
	if err != nil {
		return err
	}
	var last int64
	for rows.Next() {
		if err := rows.Scan(&last); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if notify {
		_, err = tx.Exec(ctx, `SELECT pg_notify('bench_events', $1)`, fmt.Sprint(last))
	}
	return err
}

// measure runs writers goroutines, each committing transactions made by write, for d, and
// returns committed events per second (counting rows, not transactions).
func measure(ctx context.Context, b *testing.B, pool *pgxpool.Pool, writers int, d time.Duration,
	write func(context.Context, pgx.Tx, *benchWriter) error) float64 {
	b.Helper()
	var before int64
	if err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM baseline_events)`).Scan(&before); err != nil {
		b.Fatal(err)
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	start := time.Now()
	for i := 0; i < writers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := &benchWriter{id: int(start.UnixNano()%1e6)*100 + i, versions: map[string]int64{},
				payload: []byte(`{"amount":1234,"currency":"EUR","note":"a payload of a realistic size for a small event"}`)}
			for !stop.Load() {
				if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return write(ctx, tx, w) }); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	time.Sleep(d) // the measurement window itself, not a synchronization
	stop.Store(true)
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	var after int64
	if err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM baseline_events)`).Scan(&after); err != nil {
		b.Fatal(err)
	}
	return float64(after-before) / elapsed.Seconds()
}
