package otel_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/eventline/eventline/eventlinetest"
	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/eventstore/postgres"
	"github.com/eventline/eventline/runner"
	eventlineotel "github.com/eventline/eventline/tracing/otel"
)

// counter counts events with one UPDATE per batch.
type counter struct{ name string }

func (c counter) Name() string { return c.name }
func (c counter) Handle(ctx context.Context, tx pgx.Tx, events []eventstore.PersistedEvent) error {
	_, err := tx.Exec(ctx, `UPDATE bench_counts SET n = n + $2 WHERE name = $1`, c.name, len(events))
	return err
}

// noop is a detached handler that does nothing.
type noop struct{ name string }

func (n noop) Name() string                                                 { return n.name }
func (n noop) HandleEvent(context.Context, eventstore.PersistedEvent) error { return nil }

// BenchmarkTracing measures what tracing costs: a catch-up of EVENTLINE_BENCH_EVENTS (default
// 100,000) events, each carrying an appender's traceparent (one trace per 10 events), by a
// counting projection (a span per batch of 500) and by a detached handler that does nothing (a
// span per event), without and with the OpenTelemetry adapter (SDK, always sampled, batched to an
// exporter that drops the spans), against a hand-written pgx loop in the same run. Run with
// -benchtime=1x.
func BenchmarkTracing(b *testing.B) {
	n := 100_000
	if v, err := strconv.Atoi(os.Getenv("EVENTLINE_BENCH_EVENTS")); err == nil && v > 0 {
		n = v
	}
	const batch = 500
	ctx := context.Background()
	db := eventlinetest.NewDatabase(b)
	pool := db.Pool
	rows := make([][]any, 0, n)
	now := time.Now()
	for i := 0; i < n; i++ {
		tp := fmt.Sprintf("00-%032x-%016x-01", i/10+1, i/10+1)
		rows = append(rows, []any{uuid.Must(uuid.NewV7()), "bench", strconv.Itoa(i % 1000), int64(i/1000 + 1), "Counted",
			[]byte(`{"amount":1234}`), tp, now})
	}
	if _, err := pool.CopyFrom(ctx, pgx.Identifier{"events"},
		[]string{"event_id", "aggregate_type", "aggregate_id", "aggregate_version", "event_type", "payload", "trace_id", "created_at"},
		pgx.CopyFromRows(rows)); err != nil {
		b.Fatal(err)
	}
	for _, sql := range []string{`VACUUM ANALYZE events`, `CREATE TABLE bench_counts (name text PRIMARY KEY, n bigint NOT NULL DEFAULT 0)`} {
		if _, err := pool.Exec(ctx, sql); err != nil {
			b.Fatal(err)
		}
	}
	var head int64
	if err := pool.QueryRow(ctx, `SELECT max(global_position) FROM events`).Scan(&head); err != nil {
		b.Fatal(err)
	}
	store := postgres.NewStore(nil)

	run := func(name string, detached, traced bool) float64 {
		if _, err := pool.Exec(ctx, `INSERT INTO bench_counts (name) VALUES ($1)`, name); err != nil {
			b.Fatal(err)
		}
		done := make(chan struct{})
		var once sync.Once
		hooks := runner.Hooks{Progressed: func(_ runner.Unit, pos int64) {
			if pos >= head {
				once.Do(func() { close(done) })
			}
		}}
		if traced {
			tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(tracetest.NewNoopExporter()))
			defer func() { _ = tp.Shutdown(ctx) }()
			hooks = runner.JoinHooks(hooks, eventlineotel.New(eventlineotel.Config{TracerProvider: tp}).Hooks())
		}
		r, err := runner.New(pool, store, runner.Config{BatchSize: batch, PollInterval: time.Hour, Hooks: hooks})
		if err != nil {
			b.Fatal(err)
		}
		if detached {
			err = r.RegisterDetached(noop{name: name})
		} else {
			err = r.Register(counter{name: name})
		}
		if err != nil {
			b.Fatal(err)
		}
		runCtx, cancel := context.WithCancel(ctx)
		errc := make(chan error, 1)
		start := time.Now()
		go func() { errc <- r.Run(runCtx) }()
		<-done
		elapsed := time.Since(start)
		cancel()
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
		return float64(n) / elapsed.Seconds()
	}
	baseline := func(detached bool) float64 {
		start := time.Now()
		var pos int64
		for {
			var got int
			err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
				evs, err := store.ReadEvents(ctx, tx, pos, batch)
				if err != nil || len(evs) == 0 {
					return err
				}
				got = len(evs)
				if detached {
					h := noop{}
					for _, ev := range evs {
						if err := h.HandleEvent(ctx, ev); err != nil {
							return err
						}
					}
				}
				pos = evs[got-1].GlobalPosition
				_, err = tx.Exec(ctx, `UPDATE bench_counts SET n = n + $2 WHERE name = $1`, "baseline", got)
				return err
			})
			if err != nil {
				b.Fatal(err)
			}
			if got == 0 {
				return float64(n) / time.Since(start).Seconds()
			}
		}
	}
	if _, err := pool.Exec(ctx, `INSERT INTO bench_counts (name) VALUES ('baseline')`); err != nil {
		b.Fatal(err)
	}

	fmt.Printf("\nTracing cost: catch-up of %d events (batch %d), eventline without and with tracing/otel vs a hand-written pgx loop:\n", n, batch)
	fmt.Println("| handler | baseline ev/s | eventline ev/s | ratio | traced ev/s | ratio | traced / untraced |")
	fmt.Println("|---|---|---|---|---|---|---|")
	for _, detached := range []bool{false, true} {
		kind := map[bool]string{false: "projection (span per batch)", true: "detached (span per event)"}[detached]
		base := baseline(detached)
		plain := run(fmt.Sprintf("plain_%t", detached), detached, false)
		traced := run(fmt.Sprintf("traced_%t", detached), detached, true)
		b.ReportMetric(traced/plain, fmt.Sprintf("traced/untraced-%s", map[bool]string{false: "projection", true: "detached"}[detached]))
		fmt.Printf("| %s | %.0f | %.0f | %.2f | %.0f | %.2f | %.2f |\n", kind, base, plain, plain/base, traced, traced/base, traced/plain)
	}
}

// BenchmarkSpan measures the adapter alone (no database): one span for a detached event and one
// for a batch of 500 events, SDK always sampling, batched to an exporter that drops the spans.
func BenchmarkSpan(b *testing.B) {
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(tracetest.NewNoopExporter()))
	b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	handling := eventlineotel.New(eventlineotel.Config{TracerProvider: tp}).Hooks().Handling
	evs := make([]eventstore.PersistedEvent, 500)
	for i := range evs {
		evs[i] = eventstore.PersistedEvent{Event: eventstore.Event{EventID: uuid.Must(uuid.NewV7()), AggregateType: "bench",
			AggregateID: strconv.Itoa(i), EventType: "Counted", TraceID: fmt.Sprintf("00-%032x-%016x-01", i/10+1, i/10+1)},
			GlobalPosition: int64(i + 1)}
	}
	unit := runner.Unit{Projection: "p", Version: 1, Partitions: 1}
	for _, c := range []struct {
		name     string
		detached bool
		events   []eventstore.PersistedEvent
	}{{"event", true, evs[:1]}, {"batch500", false, evs}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_, end := handling(context.Background(), runner.Handling{Unit: unit, Detached: c.detached, Events: c.events,
					From: 0, To: c.events[len(c.events)-1].GlobalPosition, Attempt: 1})
				end(runner.HandlingEnd{Outcome: runner.OutcomeOK})
			}
		})
	}
}
