package otel_test

import (
	"context"

	"github.com/jackc/pgx/v5/pgxpool"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/eventline/eventline/eventstore/postgres"
	"github.com/eventline/eventline/runner"
	eventlineotel "github.com/eventline/eventline/tracing/otel"
)

// Wiring: the tracer's hooks go to the runner, its TraceID to the store, so that the spans of the
// batches link to the requests that appended their events.
func Example() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, "postgres://localhost/app")
	if err != nil {
		panic(err)
	}
	tp := sdktrace.NewTracerProvider() // with your exporter: sdktrace.WithBatcher(exporter)
	defer func() { _ = tp.Shutdown(ctx) }()
	tracer := eventlineotel.New(eventlineotel.Config{TracerProvider: tp})

	store, err := postgres.New(postgres.StoreConfig{TraceID: tracer.TraceID})
	if err != nil {
		panic(err)
	}

	r, err := runner.New(pool, store, runner.Config{Hooks: runner.JoinHooks(tracer.Hooks() /* , metrics.Hooks() */)})
	if err != nil {
		panic(err)
	}
	_ = r // r.Register(...), then r.Run(ctx)
}
