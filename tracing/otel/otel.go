// Package otel traces eventline with OpenTelemetry. It is an adapter: the core packages do not
// depend on OpenTelemetry, only this one does.
//
//	t := otel.New(otel.Config{}) // the global TracerProvider, or Config.TracerProvider
//	store, err := postgres.New(postgres.StoreConfig{TraceID: t.TraceID}) // Append records the caller's trace on its events
//	r, err := runner.New(pool, store, runner.Config{Hooks: runner.JoinHooks(metrics.Hooks(), t.Hooks())})
//
// The runner then starts a span for every batch of a projection ("eventline.batch", from the
// checkpoint's lock to the commit, the handler's work included) and for every event handed to a
// detached handler ("eventline.event"). The handler's context carries that span, so the spans it
// starts are its children. A span has these attributes:
//
//	eventline.projection, eventline.version, eventline.partition
//	eventline.partitions         (batches only)
//	eventline.detached           a detached handler's event, not a projection's batch
//	eventline.position.from      the checkpoint the batch moves from (batches only)
//	eventline.position.to        the checkpoint it moves to (a detached event: its position)
//	eventline.events             events handed to the handler (batches only)
//	eventline.attempt            1, or the attempt at the first event under the retry policy
//	eventline.outcome            ok, handler_failed, conflict or error (runner.Outcome)
//	eventline.event.id, eventline.event.type, eventline.aggregate.type, eventline.aggregate.id
//	                             (detached events only)
//
// and the status Error, with the error recorded, when the handler failed or the database did. It
// links to the traces that appended its events: an event's stored TraceID (written by TraceID
// through postgres.StoreConfig, or by the writer itself) is a W3C traceparent
// ("00-<trace id>-<span id>-<flags>") or a bare 32-digit trace ID; the span links to that span
// (a bare trace ID: a link without a span, carrying the ID as eventline.trace_id). Events of one
// trace give one link; at most Config.MaxLinks links per span.
//
// A span per event costs a few microseconds of CPU per event (see BenchmarkTracing): use a
// sampler (sdktrace.ParentBased, TraceIDRatioBased) when a detached handler sees many events.
package otel

import (
	"context"
	"fmt"
	"strconv"

	otelapi "go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/runner"
)

// Span names.
const (
	BatchSpanName = "eventline.batch"
	EventSpanName = "eventline.event"
)

// MaxLinksDefault is Config.MaxLinks's default.
const MaxLinksDefault = 32

// ScopeName is the instrumentation scope of the tracer.
const ScopeName = "github.com/eventline/eventline/tracing/otel"

// Config configures New. The zero value is valid.
type Config struct {
	// TracerProvider creates the tracer. Defaults to the global one (otel.GetTracerProvider()).
	TracerProvider trace.TracerProvider
	// MaxLinks bounds the links of one span to the traces that appended its events. Defaults to
	// 32.
	MaxLinks int
}

// Tracer starts eventline's spans and gives Append the caller's trace. It is safe for concurrent
// use.
type Tracer struct {
	tracer   trace.Tracer
	maxLinks int
}

// New returns a Tracer.
func New(cfg Config) *Tracer {
	if cfg.TracerProvider == nil {
		cfg.TracerProvider = otelapi.GetTracerProvider()
	}
	if cfg.MaxLinks <= 0 {
		cfg.MaxLinks = MaxLinksDefault
	}
	return &Tracer{tracer: cfg.TracerProvider.Tracer(ScopeName), maxLinks: cfg.MaxLinks}
}

// Hooks returns the runner hooks that start the spans; join them with others with
// runner.JoinHooks.
func (t *Tracer) Hooks() runner.Hooks {
	return runner.Hooks{Handling: t.handling}
}

// TraceID returns the W3C traceparent of the span in ctx, or "" when ctx has no valid span: set
// it as postgres.StoreConfig.TraceID so that Append stores it on the events that have none.
func (t *Tracer) TraceID(ctx context.Context) string {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		return ""
	}
	return fmt.Sprintf("00-%s-%s-%s", sc.TraceID(), sc.SpanID(), sc.TraceFlags())
}

func (t *Tracer) handling(ctx context.Context, h runner.Handling) (context.Context, func(runner.HandlingEnd)) {
	name := BatchSpanName
	attrs := []attribute.KeyValue{
		attribute.String("eventline.projection", h.Unit.Projection),
		attribute.Int("eventline.version", h.Unit.Version),
		attribute.Int("eventline.partition", h.Unit.Partition),
		attribute.Int("eventline.attempt", h.Attempt),
	}
	if h.Detached && len(h.Events) == 1 {
		// A span per event: only what differs from a batch's.
		name = EventSpanName
		ev := &h.Events[0]
		attrs = append(attrs,
			attribute.Bool("eventline.detached", true),
			attribute.Int64("eventline.position.to", h.To),
			attribute.String("eventline.event.id", ev.EventID.String()),
			attribute.String("eventline.event.type", ev.EventType),
			attribute.String("eventline.aggregate.type", ev.AggregateType),
			attribute.String("eventline.aggregate.id", ev.AggregateID),
		)
	} else {
		attrs = append(attrs,
			attribute.Int("eventline.partitions", h.Unit.Partitions),
			attribute.Bool("eventline.detached", h.Detached),
			attribute.Int64("eventline.position.from", h.From),
			attribute.Int64("eventline.position.to", h.To),
			attribute.Int("eventline.events", len(h.Events)),
		)
	}
	ctx, span := t.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(attrs...), trace.WithLinks(t.links(h.Events)...))
	return ctx, func(e runner.HandlingEnd) {
		span.SetAttributes(attribute.String("eventline.outcome", string(e.Outcome)))
		switch e.Outcome {
		case runner.OutcomeHandlerFailed, runner.OutcomeError:
			span.RecordError(e.Err)
			span.SetStatus(codes.Error, e.Err.Error())
		}
		span.End()
	}
}

// links returns one link per distinct trace that appended events, at most maxLinks.
func (t *Tracer) links(events []eventstore.PersistedEvent) []trace.Link {
	var links []trace.Link
	seen := map[string]bool{}
	for i := range events {
		id := events[i].TraceID
		if id == "" || seen[id] {
			continue
		}
		seen[id] = true
		l, ok := linkTo(id)
		if !ok {
			continue
		}
		l.Attributes = append(l.Attributes, attribute.Int64("eventline.position", events[i].GlobalPosition))
		links = append(links, l)
		if len(links) == t.maxLinks {
			break
		}
	}
	return links
}

// linkTo parses a stored trace ID: a W3C traceparent ("00-<trace id>-<span id>-<flags>"), or a
// bare trace ID.
func linkTo(stored string) (trace.Link, bool) {
	if len(stored) == 55 && stored[2] == '-' && stored[35] == '-' && stored[52] == '-' {
		tid, err1 := trace.TraceIDFromHex(stored[3:35])
		sid, err2 := trace.SpanIDFromHex(stored[36:52])
		flags, err3 := strconv.ParseUint(stored[53:], 16, 8)
		if err1 == nil && err2 == nil && err3 == nil && stored[:2] != "ff" {
			return trace.Link{SpanContext: trace.NewSpanContext(trace.SpanContextConfig{
				TraceID: tid, SpanID: sid, TraceFlags: trace.TraceFlags(flags), Remote: true})}, true
		}
	}
	if tid, err := trace.TraceIDFromHex(stored); err == nil {
		return trace.Link{
			SpanContext: trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid}),
			Attributes:  []attribute.KeyValue{attribute.String("eventline.trace_id", stored)},
		}, true
	}
	return trace.Link{}, false
}
