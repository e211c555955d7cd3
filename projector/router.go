package projector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5"

	"github.com/eventline/eventline/eventstore"
)

// Router is a Projection made of one typed function per event type. Build it with NewRouter, On
// (handlers that only write: their writes are sent together) and OnTx (handlers that need the
// transaction itself); it filters to the event types it has handlers for (and the aggregate types
// given with WithAggregateTypes), so the runner does not even read the others when it can avoid
// it.
//
// Handle calls the handlers in event order. The writes queued by On handlers are sent in one
// round trip when Handle returns or an OnTx handler is about to run, whichever comes first, so
// every handler sees the effect of the writes of the events before it. An error is returned as
// an *EventError naming the event whose handler (or queued write) failed.
//
// A Router is configured before it is registered with a runner and must not change afterwards.
type Router struct {
	name       string
	handlers   map[string]handler
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
		handlers: map[string]handler{},
		decode:   json.Unmarshal,
	}
	for _, o := range opts {
		o(r)
	}
	return r
}

// handler is one event type's function: exactly one of write and tx is set.
type handler struct {
	write func(ctx context.Context, w *Writes, ev *eventstore.PersistedEvent) error
	tx    func(ctx context.Context, tx pgx.Tx, ev *eventstore.PersistedEvent) error
}

// On registers handle for events of type eventType: the way to write a read model. handle
// queues its statements with w.Exec; they run in the transaction that moves the checkpoint, in
// order, sent to the server together with the other writes of the batch (one round trip for
// many events, instead of one per statement). Their results are not available: a handler that
// needs rows affected, RETURNING or a read registers with OnTx.
//
// The payload is decoded into a P before handle is called; a payload that does not decode is an
// error of the event (the projection's failure policy applies), as is an error returned by
// handle or by a statement it queued. Registering a type twice panics: it is a programming
// error.
func On[P any](r *Router, eventType string, handle func(ctx context.Context, w *Writes, ev eventstore.PersistedEvent, payload P) error) {
	r.add(eventType, handler{write: func(ctx context.Context, w *Writes, ev *eventstore.PersistedEvent) error {
		var p P
		if err := r.decodePayload(ev, &p); err != nil {
			return err
		}
		return handle(ctx, w, *ev, p)
	}})
}

// OnTx registers handle for events of type eventType, with the transaction itself, for a handler
// that needs the results of its statements (rows affected, RETURNING, reads). Each statement is
// a round trip of its own: prefer On for handlers that only write. The writes that On handlers
// queued for earlier events are sent before handle runs, so it reads what they wrote. Decoding
// and errors are as for On.
func OnTx[P any](r *Router, eventType string, handle func(ctx context.Context, tx pgx.Tx, ev eventstore.PersistedEvent, payload P) error) {
	r.add(eventType, handler{tx: func(ctx context.Context, tx pgx.Tx, ev *eventstore.PersistedEvent) error {
		var p P
		if err := r.decodePayload(ev, &p); err != nil {
			return err
		}
		return handle(ctx, tx, *ev, p)
	}})
}

func (r *Router) add(eventType string, h handler) {
	if _, dup := r.handlers[eventType]; dup {
		panic(fmt.Sprintf("projector: router %q: event type %q registered twice", r.name, eventType))
	}
	r.handlers[eventType] = h
}

func (r *Router) decodePayload(ev *eventstore.PersistedEvent, p any) error {
	if err := r.decode(ev.Payload, p); err != nil {
		return fmt.Errorf("decode %s payload of event %s: %w", ev.EventType, ev.EventID, err)
	}
	return nil
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

// Handle implements Projection: each event goes to its type's function, in order; the writes
// queued by On handlers are sent before an OnTx handler runs and before Handle returns.
func (r *Router) Handle(ctx context.Context, tx pgx.Tx, events []eventstore.PersistedEvent) error {
	w := writesPool.Get().(*Writes)
	defer func() {
		w.reset()
		writesPool.Put(w)
	}()
	for i := range events {
		ev := &events[i]
		h, ok := r.handlers[ev.EventType]
		if !ok {
			continue
		}
		var err error
		if h.tx != nil {
			if err := w.flush(ctx, tx); err != nil {
				return err // names the event that queued the failing write, if known
			}
			if err = h.tx(ctx, tx, ev); err == nil && aborted(tx) {
				err = ErrAborted
			}
		} else {
			w.position = ev.GlobalPosition
			err = h.write(ctx, w, ev)
		}
		if err != nil {
			var ee *EventError
			if errors.As(err, &ee) {
				return err
			}
			return &EventError{Position: ev.GlobalPosition, Err: err}
		}
		if w.Len() >= flushAt {
			if err := w.flush(ctx, tx); err != nil {
				return err
			}
		}
	}
	return w.flush(ctx, tx)
}

// ErrAborted is the error of a handler that returned nil although a statement it ran failed: its
// transaction is aborted (the server runs nothing more in it), so the batch cannot commit.
var ErrAborted = errors.New("projector: the handler returned nil, but a statement it ran failed and left the transaction aborted (return that statement's error)")

// aborted reports whether tx is aborted: a statement failed in it (or in its savepoint).
func aborted(tx pgx.Tx) bool {
	return tx != nil && tx.Conn() != nil && tx.Conn().PgConn().TxStatus() == 'E'
}

// writesPool keeps the Writes of finished Handle calls (and their batch's memory) for the next.
var writesPool = sync.Pool{New: func() any { return new(Writes) }}

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
