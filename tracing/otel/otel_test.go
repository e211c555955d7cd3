package otel_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/eventline/eventline/eventlinetest"
	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/eventstore/postgres"
	"github.com/eventline/eventline/runner"
	eventlineotel "github.com/eventline/eventline/tracing/otel"
)

func TestMain(m *testing.M) { eventlinetest.Main(m) }

// orders is a projection whose handler starts a span of its own and fails on "Bad" events.
type orders struct{ tracer trace.Tracer }

func (o orders) Name() string { return "orders" }
func (o orders) Handle(ctx context.Context, _ pgx.Tx, events []eventstore.PersistedEvent) error {
	_, span := o.tracer.Start(ctx, "orders handler")
	defer span.End()
	for _, ev := range events {
		if ev.EventType == "Bad" {
			return errors.New("cannot apply Bad")
		}
	}
	return nil
}

// mailer is a detached handler that starts a span of its own.
type mailer struct{ tracer trace.Tracer }

func (m mailer) Name() string { return "mailer" }
func (m mailer) HandleEvent(ctx context.Context, _ eventstore.PersistedEvent) error {
	_, span := m.tracer.Start(ctx, "send mail")
	span.End()
	return nil
}

func attr(s tracetest.SpanStub, key string) attribute.Value {
	for _, kv := range s.Attributes {
		if string(kv.Key) == key {
			return kv.Value
		}
	}
	return attribute.Value{}
}

// A real runner against a real database: Append records the caller's trace on its events; the
// runner's batch and event spans carry the unit, positions and outcome, link to the appending
// spans, and are the parents of the handlers' spans.
func TestSpans(t *testing.T) {
	ctx := t.Context()
	db := eventlinetest.NewDatabase(t)
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	app := tp.Tracer("app")
	tr := eventlineotel.New(eventlineotel.Config{TracerProvider: tp})

	store, err := postgres.New(postgres.StoreConfig{TraceID: tr.TraceID})
	require.NoError(t, err)
	appendIn := func(ctx context.Context, evs ...eventstore.Event) {
		t.Helper()
		require.NoError(t, pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
			_, err := store.Append(ctx, tx, eventstore.Any(), evs)
			return err
		}))
	}
	placeCtx, place := app.Start(ctx, "place order")
	appendIn(placeCtx,
		eventlinetest.Event("order", "o-1", "Placed", map[string]int{"total": 5}),
		eventlinetest.Event("order", "o-1", "Paid", map[string]int{"total": 5}))
	place.End()
	bare := "0af7651916cd43dd8448eb211c80319c"
	own := eventlinetest.Event("order", "o-2", "Placed", nil)
	own.TraceID = bare
	appendIn(ctx, own)
	badCtx, badSpan := app.Start(ctx, "bad write")
	appendIn(badCtx, eventlinetest.Event("order", "o-3", "Bad", nil))
	badSpan.End()

	stored, err := store.ReadEvents(ctx, db.Pool, 0, 10)
	require.NoError(t, err)
	require.Len(t, stored, 4)
	require.Equal(t, tr.TraceID(placeCtx), stored[0].TraceID, "Append records the caller's trace")
	require.Regexp(t, `^00-[0-9a-f]{32}-[0-9a-f]{16}-01$`, stored[0].TraceID)
	require.Equal(t, bare, stored[2].TraceID, "an event's own trace ID is kept")

	r, err := runner.New(db.Pool, store, runner.Config{Hooks: tr.Hooks()})
	require.NoError(t, err)
	require.NoError(t, r.Register(orders{tracer: app}, runner.WithFailurePolicy(runner.DeadLetter)))
	require.NoError(t, r.RegisterDetached(mailer{tracer: app}))
	eventlinetest.RunUntilCaughtUp(t, r)

	spans := exp.GetSpans()
	byID := map[trace.SpanID]tracetest.SpanStub{}
	for _, s := range spans {
		byID[s.SpanContext.SpanID()] = s
	}
	linksTo := func(s tracetest.SpanStub, sc trace.SpanContext) bool {
		for _, l := range s.Links {
			if l.SpanContext.TraceID() == sc.TraceID() && l.SpanContext.SpanID() == sc.SpanID() {
				return true
			}
		}
		return false
	}

	// The projection: the first batch holds all four events and fails; the split commits the
	// first three and isolates the Bad one, which is dead-lettered.
	var batches []tracetest.SpanStub
	for _, s := range spans {
		if s.Name == eventlineotel.BatchSpanName {
			batches = append(batches, s)
		}
	}
	require.NotEmpty(t, batches)
	first := batches[0]
	require.Equal(t, trace.SpanKindConsumer, first.SpanKind)
	require.Equal(t, "orders", attr(first, "eventline.projection").AsString())
	require.Equal(t, int64(1), attr(first, "eventline.version").AsInt64())
	require.Equal(t, int64(0), attr(first, "eventline.partition").AsInt64())
	require.Equal(t, int64(0), attr(first, "eventline.position.from").AsInt64())
	require.Equal(t, stored[3].GlobalPosition, attr(first, "eventline.position.to").AsInt64())
	require.Equal(t, int64(4), attr(first, "eventline.events").AsInt64())
	require.Equal(t, "handler_failed", attr(first, "eventline.outcome").AsString())
	require.Equal(t, codes.Error, first.Status.Code)
	require.Contains(t, first.Status.Description, "cannot apply Bad")
	require.True(t, linksTo(first, place.SpanContext()), "links to the trace that appended its events")
	require.True(t, linksTo(first, badSpan.SpanContext()))
	var bareLink bool
	for _, l := range first.Links {
		bareLink = bareLink || l.SpanContext.TraceID().String() == bare
	}
	require.True(t, bareLink, "a bare trace ID gives a link too")
	require.Len(t, first.Links, 3, "one link per trace")

	var okRanges [][2]int64
	for _, s := range batches[1:] {
		if attr(s, "eventline.outcome").AsString() == "ok" {
			okRanges = append(okRanges, [2]int64{attr(s, "eventline.position.from").AsInt64(), attr(s, "eventline.position.to").AsInt64()})
			require.Equal(t, codes.Unset, s.Status.Code)
		}
	}
	require.Contains(t, okRanges, [2]int64{0, stored[1].GlobalPosition}, "the first half of the split committed")

	// Every handler span is the child of a batch (or event) span of its own unit.
	var handlerSpans, mailSpans int
	for _, s := range spans {
		switch s.Name {
		case "orders handler":
			handlerSpans++
			parent, ok := byID[s.Parent.SpanID()]
			require.True(t, ok)
			require.Equal(t, eventlineotel.BatchSpanName, parent.Name)
			require.Equal(t, parent.SpanContext.TraceID(), s.SpanContext.TraceID())
		case "send mail":
			mailSpans++
			parent, ok := byID[s.Parent.SpanID()]
			require.True(t, ok)
			require.Equal(t, eventlineotel.EventSpanName, parent.Name)
		}
	}
	require.Equal(t, len(batches), handlerSpans)
	require.Equal(t, 4, mailSpans)

	// The detached handler: one span per event, linked to the span that appended it.
	var events []tracetest.SpanStub
	for _, s := range spans {
		if s.Name == eventlineotel.EventSpanName {
			events = append(events, s)
		}
	}
	require.Len(t, events, 4)
	for i, s := range events {
		require.Equal(t, "mailer", attr(s, "eventline.projection").AsString())
		require.True(t, attr(s, "eventline.detached").AsBool())
		require.Equal(t, stored[i].GlobalPosition, attr(s, "eventline.position.to").AsInt64())
		require.Equal(t, stored[i].EventID.String(), attr(s, "eventline.event.id").AsString())
		require.Equal(t, stored[i].EventType, attr(s, "eventline.event.type").AsString())
		require.Equal(t, "ok", attr(s, "eventline.outcome").AsString())
	}
	require.True(t, linksTo(events[0], place.SpanContext()))
	require.True(t, linksTo(events[3], badSpan.SpanContext()))
}

// The core packages do not depend on OpenTelemetry: only this adapter does.
func TestCoreDoesNotImportOpenTelemetry(t *testing.T) {
	root, err := filepath.Abs("../..")
	require.NoError(t, err)
	list := func(args ...string) []string {
		t.Helper()
		cmd := exec.Command("go", append([]string{"list"}, args...)...)
		cmd.Dir = root
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		require.NoError(t, err)
		return strings.Fields(string(out))
	}
	var core []string
	for _, p := range list("./...") {
		if !strings.HasPrefix(p, "github.com/eventline/eventline/tracing/") && !strings.HasPrefix(p, "github.com/eventline/eventline/examples/") {
			core = append(core, p)
		}
	}
	require.Contains(t, core, "github.com/eventline/eventline/runner")
	require.Contains(t, core, "github.com/eventline/eventline/eventstore/postgres")
	for _, dep := range list(append([]string{"-deps"}, core...)...) {
		require.False(t, strings.HasPrefix(dep, "go.opentelemetry.io/"), "a core package depends on %s", dep)
	}
}

// Stored trace IDs that are neither a traceparent nor a trace ID give no link.
func TestLinksOnlyForValidTraceIDs(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	tr := eventlineotel.New(eventlineotel.Config{TracerProvider: tp})
	valid := "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	var evs []eventstore.PersistedEvent
	for i, id := range []string{valid, "not a trace", "00-00000000000000000000000000000000-00f067aa0ba902b7-01", valid, ""} {
		evs = append(evs, eventstore.PersistedEvent{Event: eventstore.Event{TraceID: id}, GlobalPosition: int64(i + 1)})
	}
	_, end := tr.Hooks().Handling(context.Background(), runner.Handling{Unit: runner.Unit{Projection: "p", Version: 1, Partitions: 1}, Events: evs, To: 5, Attempt: 1})
	end(runner.HandlingEnd{Outcome: runner.OutcomeOK})
	spans := exp.GetSpans()
	require.Len(t, spans, 1)
	require.Len(t, spans[0].Links, 1)
	require.Equal(t, "4bf92f3577b34da6a3ce929d0e0e4736", spans[0].Links[0].SpanContext.TraceID().String())
	require.Equal(t, "00f067aa0ba902b7", spans[0].Links[0].SpanContext.SpanID().String())
	require.True(t, spans[0].Links[0].SpanContext.IsSampled())
}
