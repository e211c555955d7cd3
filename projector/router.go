package projector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/eventline/eventline/eventstore"
)

// Router is a Projection made of one typed function per event type. Build it with NewRouter and
// On; it filters to the event types it has handlers for (and the aggregate types given with
// WithAggregateTypes), so the runner does not even read the others when it can avoid it.
//
// A Router is configured before it is registered with a runner and must not change afterwards.
type Router struct {
	name       string
	handlers   map[string]func(ctx context.Context, tx pgx.Tx, ev eventstore.PersistedEvent) error
	aggregates []string
	setup      func(ctx context.Context, tx pgx.Tx) error
	reset      func(ctx context.Context, tx pgx.Tx) error
	decode     func(data []byte, v any) error
}

var (
	_ Projection = (*Router)(nil)
	_ Filter     = (*Router)(nil)
	_ Setup      = (*Router)(nil)
	_ Resetter   = (*Router)(nil)
	_ Validator  = (*Router)(nil)
)

// ErrNoHandlers is returned by Router.Validate (hence by runner.Register) for a Router that has no
// handler: it would skip every event and silently project nothing.
var ErrNoHandlers = errors.New("projector: router has no handlers (register one per event type with projector.On)")

// RouterOption configures a Router.
type RouterOption func(*Router)

// WithAggregateTypes limits the router to events of these aggregate types.
func WithAggregateTypes(types ...string) RouterOption {
	return func(r *Router) { r.aggregates = append(r.aggregates, types...) }
}

// WithSetup sets the function run by Setup (create read-model tables).
func WithSetup(f func(ctx context.Context, tx pgx.Tx) error) RouterOption {
	return func(r *Router) { r.setup = f }
}

// WithReset sets the function run by Reset (empty read-model tables for a rebuild).
func WithReset(f func(ctx context.Context, tx pgx.Tx) error) RouterOption {
	return func(r *Router) { r.reset = f }
}

// WithDecoder replaces JSON (encoding/json.Unmarshal) as the payload decoder.
func WithDecoder(decode func(data []byte, v any) error) RouterOption {
	return func(r *Router) { r.decode = decode }
}

// NewRouter returns an empty Router named name.
func NewRouter(name string, opts ...RouterOption) *Router {
	r := &Router{
		name:     name,
		handlers: map[string]func(context.Context, pgx.Tx, eventstore.PersistedEvent) error{},
		decode:   json.Unmarshal,
	}
	for _, o := range opts {
		o(r)
	}
	return r
}

// On registers handle for events of type eventType. The payload is decoded into a P before handle
// is called; a payload that does not decode is an error of the event (the projection's failure
// policy applies). Registering a type twice panics: it is a programming error.
func On[P any](r *Router, eventType string, handle func(ctx context.Context, tx pgx.Tx, ev eventstore.PersistedEvent, payload P) error) {
	if _, dup := r.handlers[eventType]; dup {
		panic(fmt.Sprintf("projector: router %q: event type %q registered twice", r.name, eventType))
	}
	r.handlers[eventType] = func(ctx context.Context, tx pgx.Tx, ev eventstore.PersistedEvent) error {
		var p P
		if err := r.decode(ev.Payload, &p); err != nil {
			return fmt.Errorf("decode %s payload of event %s at position %d: %w", eventType, ev.EventID, ev.GlobalPosition, err)
		}
		return handle(ctx, tx, ev, p)
	}
}

// Name implements Projection.
func (r *Router) Name() string { return r.name }

// Validate implements Validator: a Router needs at least one handler (ErrNoHandlers).
func (r *Router) Validate() error {
	if len(r.handlers) == 0 {
		return fmt.Errorf("router %q: %w", r.name, ErrNoHandlers)
	}
	return nil
}

// Handle implements Projection: each event goes to its type's function, in order.
func (r *Router) Handle(ctx context.Context, tx pgx.Tx, events []eventstore.PersistedEvent) error {
	for _, ev := range events {
		h, ok := r.handlers[ev.EventType]
		if !ok {
			continue
		}
		if err := h(ctx, tx, ev); err != nil {
			return err
		}
	}
	return nil
}

// AggregateTypes implements Filter.
func (r *Router) AggregateTypes() []string { return r.aggregates }

// EventTypes implements Filter: the types with a handler.
func (r *Router) EventTypes() []string {
	out := make([]string, 0, len(r.handlers))
	for t := range r.handlers {
		out = append(out, t)
	}
	return out
}

// Setup implements Setup.
func (r *Router) Setup(ctx context.Context, tx pgx.Tx) error {
	if r.setup == nil {
		return nil
	}
	return r.setup(ctx, tx)
}

// Reset implements Resetter.
func (r *Router) Reset(ctx context.Context, tx pgx.Tx) error {
	if r.reset == nil {
		return nil
	}
	return r.reset(ctx, tx)
}
