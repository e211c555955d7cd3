package runner

import (
	"context"
	"errors"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/internal/checkpoint"
)

// Handling describes one call of a handler, for Hooks.Handling: a batch of a projection (its
// transaction, from locking the checkpoint to the commit), or one event of a detached handler.
type Handling struct {
	Unit Unit
	// Detached: one event of a detached handler (Events holds it); otherwise a projection's batch.
	Detached bool
	// Events are the events handed to the handler, in position order. They belong to the runner:
	// read them during the hook's call only, do not modify or keep them.
	Events []eventstore.PersistedEvent
	// From and To: the batch moves the unit's checkpoint from From to To (events in (From, To]).
	// For a detached event, From and To are the event's position.
	From, To int64
	// Attempt counts the attempts at the first event under the retry policy (WithRetry): 1, then
	// 2 and on when it is tried again after a transient error.
	Attempt int
}

// Outcome says how a handler call ended.
type Outcome string

const (
	// OutcomeOK: the batch committed (a detached event: the handler returned nil).
	OutcomeOK Outcome = "ok"
	// OutcomeHandlerFailed: the handler returned an error or panicked; the batch rolled back.
	OutcomeHandlerFailed Outcome = "handler_failed"
	// OutcomeConflict: the checkpoint moved, was paused or changed owner under the batch, which
	// rolled back; nothing failed.
	OutcomeConflict Outcome = "conflict"
	// OutcomeError: a database error; the batch rolled back and is retried.
	OutcomeError Outcome = "error"
)

// HandlingEnd is how a handler call ended: Outcome, and the error for all but OutcomeOK.
type HandlingEnd struct {
	Outcome Outcome
	Err     error
}

func handlingEnd(err error) HandlingEnd {
	var he *handlerError
	switch {
	case err == nil:
		return HandlingEnd{Outcome: OutcomeOK}
	case errors.As(err, &he):
		return HandlingEnd{Outcome: OutcomeHandlerFailed, Err: he.err}
	case errors.Is(err, checkpoint.ErrConflict):
		return HandlingEnd{Outcome: OutcomeConflict, Err: err}
	}
	return HandlingEnd{Outcome: OutcomeError, Err: err}
}

// startHandling calls the Handling hook, if any, for a call of the handler on events; it returns
// the context of the call and the function to call with the call's error when it ends.
func (w *worker) startHandling(ctx context.Context, events []eventstore.PersistedEvent, from, to int64) (context.Context, func(error)) {
	f := w.g.r.cfg.Hooks.Handling
	if f == nil || len(events) == 0 {
		return ctx, func(error) {}
	}
	attempt := 1
	if events[0].GlobalPosition == w.retrying.pos {
		attempt += w.retrying.attempts
	}
	hctx, end := f(ctx, Handling{Unit: w.unit, Detached: w.g.detached != nil, Events: events, From: from, To: to, Attempt: attempt})
	if hctx == nil {
		hctx = ctx
	}
	return hctx, func(err error) {
		if end != nil {
			end(handlingEnd(err))
		}
	}
}

// joinHandling calls a, then b, each with the context the previous one returned; the end
// functions run in the reverse order.
func joinHandling(a, b func(context.Context, Handling) (context.Context, func(HandlingEnd))) func(context.Context, Handling) (context.Context, func(HandlingEnd)) {
	if a == nil || b == nil {
		if a == nil {
			return b
		}
		return a
	}
	return func(ctx context.Context, h Handling) (context.Context, func(HandlingEnd)) {
		call := func(f func(context.Context, Handling) (context.Context, func(HandlingEnd))) func(HandlingEnd) {
			c, end := f(ctx, h)
			if c != nil {
				ctx = c
			}
			return end
		}
		endA := call(a)
		endB := call(b)
		return ctx, func(e HandlingEnd) {
			if endB != nil {
				endB(e)
			}
			if endA != nil {
				endA(e)
			}
		}
	}
}
