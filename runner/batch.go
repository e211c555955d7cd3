package runner

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime/debug"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/internal/checkpoint"
	"github.com/eventline/eventline/projector"
)

// This file applies batches: one transaction per batch that locks the checkpoint, runs the
// handler and moves the checkpoint with a compare-and-set; and isolates a failing event by
// splitting the batch, so that the failure policy applies to it alone.

// apply hands events, all in (pos, to], to the projection and moves the checkpoint to to. A
// handler failure is narrowed down to the failing event, to which the retry and failure policies
// apply.
func (w *worker) apply(ctx context.Context, events []eventstore.PersistedEvent, to int64) error {
	if w.g.detached != nil {
		return w.applyDetached(ctx, events, to)
	}
	if len(events) > 1 && events[0].GlobalPosition == w.retrying.pos {
		// The first event failed before: try it alone, so that each retry does not split the
		// batch again. The rest follows in the next step.
		events, to = events[:1], events[1].GlobalPosition-1
	}
	err := w.dispatch(ctx, events, to)
	var he *handlerError
	if err == nil || !errors.As(err, &he) || he.transient {
		return err
	}
	if len(events) == 1 {
		return w.failed(ctx, &events[0], to, he)
	}
	w.log.Warn("handler failed on a batch: isolating the failing event; the handler runs again on the events before it",
		zap.Int64("first", events[0].GlobalPosition), zap.Int64("last", events[len(events)-1].GlobalPosition),
		zap.Int("events", len(events)), zap.Error(he.err))
	return w.isolate(ctx, events, to, he)
}

// isolate finds the failing event of a batch whose dispatch failed with he, applying the events
// before it, and applies the failure policy to it. When the error names its event (a
// projector.EventError), the batch is cut just before that event; otherwise in halves. Either
// way the policy applies only to an event that failed alone, so a wrong name costs time, not
// correctness.
func (w *worker) isolate(ctx context.Context, events []eventstore.PersistedEvent, to int64, he *handlerError) error {
	for len(events) > 1 {
		cut, named := len(events)/2, false
		if i := namedEvent(events, he); i >= 0 {
			cut, named = max(i, 1), i > 0
		}
		first, firstTo := events[:cut], events[cut].GlobalPosition-1
		err := w.dispatch(ctx, first, firstTo)
		if err != nil {
			if !errors.As(err, &he) || he.transient {
				return err
			}
			events, to = first, firstTo
			continue
		}
		events = events[cut:]
		if named {
			// The named event alone: if it fails, it is the one.
			one, oneTo := events[:1], to
			if len(events) > 1 {
				oneTo = events[1].GlobalPosition - 1
			}
			err := w.dispatch(ctx, one, oneTo)
			if err != nil {
				if !errors.As(err, &he) || he.transient {
					return err
				}
				return w.failed(ctx, &one[0], oneTo, he)
			}
			if events = events[1:]; len(events) == 0 {
				return nil
			}
		}
		if err := w.dispatch(ctx, events, to); err == nil || !errors.As(err, &he) || he.transient {
			return err
		}
	}
	return w.failed(ctx, &events[0], to, he)
}

// failed handles a handler failure on ev alone, whose batch ends at to: a retryable error that
// has attempts left is tried again later (retryLater); otherwise the failure policy applies.
func (w *worker) failed(ctx context.Context, ev *eventstore.PersistedEvent, to int64, he *handlerError) error {
	if he.retryable {
		if w.retrying.pos != ev.GlobalPosition {
			w.retrying = retryState{pos: ev.GlobalPosition}
		}
		w.retrying.attempts++
		if n := w.retrying.attempts; n < w.g.retry.Attempts {
			return &retryLater{err: he.err, pos: ev.GlobalPosition, attempt: n, attempts: w.g.retry.Attempts, delay: w.g.retry.delay(n)}
		}
	}
	w.retrying = retryState{}
	return w.fail(ctx, ev, to, he)
}

// namedEvent is the index in events of the event that he names (a projector.EventError), or -1.
func namedEvent(events []eventstore.PersistedEvent, he *handlerError) int {
	var ee *projector.EventError
	if !errors.As(he.err, &ee) {
		return -1
	}
	i, found := slices.BinarySearchFunc(events, ee.Position, func(ev eventstore.PersistedEvent, pos int64) int {
		return cmp.Compare(ev.GlobalPosition, pos)
	})
	if !found {
		return -1
	}
	return i
}

// handlerError is an error (or panic) of the projection's handler.
type handlerError struct {
	err error
	// transient: a database error of a projection's transaction worth retrying as is, without
	// limit (serialization failure, lost connection).
	transient bool
	// retryable: an error marked transient (or a network error of a detached handler), retried
	// under the registration's Retry policy before the failure policy applies.
	retryable bool
}

func (e *handlerError) Error() string { return e.err.Error() }
func (e *handlerError) Unwrap() error { return e.err }

// dispatch applies one batch in one transaction: lock the checkpoint, handle, compare-and-set,
// commit. Events of aggregates with a parked event are parked behind it instead (sequenced dead
// letters), in the same transaction.
func (w *worker) dispatch(ctx context.Context, events []eventstore.PersistedEvent, to int64) (err error) {
	ctx, end := w.startHandling(ctx, events, w.persisted, to)
	defer func() { end(err) }()
	return w.commit(ctx, events, to, func(ctx context.Context, tx pgx.Tx) error {
		handle, err := w.parkBlocked(ctx, tx, events)
		if err != nil || len(handle) == 0 {
			return err
		}
		return w.callHandler(ctx, tx, handle)
	}, time.Now())
}

// applyDetached hands events one by one to a detached handler, outside any transaction, then
// moves the checkpoint (at-least-once). On a failure it saves the progress made before the
// failing event and applies the failure policy to that event.
func (w *worker) applyDetached(ctx context.Context, events []eventstore.PersistedEvent, to int64) error {
	start := time.Now()
	for i := range events {
		if _, blocked := w.blockedBy(&events[i]); blocked {
			continue // parked in the commit below
		}
		err := w.callDetached(ctx, events[i])
		if err == nil {
			continue
		}
		if i > 0 {
			done := events[:i]
			if err := w.commit(ctx, done, events[i].GlobalPosition-1, w.parkOnly(done), start); err != nil {
				return err
			}
		}
		var he *handlerError
		if !errors.As(err, &he) {
			return err
		}
		return w.failed(ctx, &events[i], events[i].GlobalPosition, he)
	}
	return w.commit(ctx, events, to, w.parkOnly(events), start)
}

// parkOnly returns the handle function of a detached batch's commit: it parks the blocked events.
func (w *worker) parkOnly(events []eventstore.PersistedEvent) func(context.Context, pgx.Tx) error {
	if len(w.parked) == 0 {
		return nil
	}
	return func(ctx context.Context, tx pgx.Tx) error {
		_, err := w.parkBlocked(ctx, tx, events)
		return err
	}
}

// commit runs handle (if any) in a transaction that moves the checkpoint from persisted to to.
func (w *worker) commit(ctx context.Context, events []eventstore.PersistedEvent, to int64,
	handle func(context.Context, pgx.Tx) error, start time.Time) error {
	r := w.g.r
	from := w.persisted
	ctx, tx, done, err := w.begin(ctx, r.cfg.BatchTimeout)
	if err != nil {
		return err
	}
	defer done()
	cp, err := r.cps.Load(ctx, tx, w.key)
	if err != nil {
		return err
	}
	if cp.Position != from || cp.Stopped() || cp.Owner != r.nodeID {
		return fmt.Errorf("checkpoint %s is at %d (stopped %t, owner %q), batch was read from %d: %w",
			w.key, cp.Position, cp.Stopped(), cp.Owner, from, checkpoint.ErrConflict)
	}
	if handle != nil {
		if err := handle(ctx, tx); err != nil {
			var he *handlerError
			if errors.As(err, &he) && !he.transient && tx.Conn().IsClosed() {
				he.transient = true
			}
			return err
		}
	}
	if err := r.cps.Save(ctx, tx, w.key, r.nodeID, from, to); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	w.persisted, w.pos = to, to
	if w.retrying.pos <= to {
		w.retrying = retryState{} // the event retried is applied
	}
	w.lastPersist = time.Now()
	w.mu.Lock()
	w.statusPos, w.lastErr = to, ""
	w.rate.add(len(events))
	w.mu.Unlock()
	if f := r.cfg.Hooks.BatchCommitted; f != nil && len(events) > 0 {
		f(BatchInfo{Unit: w.unit, Events: len(events), From: from, To: to, Took: time.Since(start),
			Lag: time.Since(events[len(events)-1].CreatedAt)})
	}
	return nil
}

// begin starts the transaction of a batch (or of a dead letter's retry), in which the handler
// runs while it holds the unit's checkpoint row: it is bounded by timeout (BatchTimeout; 0 for
// none), and its backend is the unit's batch in flight (Health, and ErrStuck at shutdown). done
// rolls it back unless it was committed, and ends the timeout.
func (w *worker) begin(ctx context.Context, timeout time.Duration) (context.Context, pgx.Tx, func(), error) {
	r := w.g.r
	cancel := context.CancelFunc(func() {})
	if d := timeout; d > 0 {
		ctx, cancel = context.WithTimeout(ctx, d)
	}
	tx, err := r.pool.Begin(ctx)
	if err != nil {
		cancel()
		return ctx, nil, nil, fmt.Errorf("begin: %w", err)
	}
	w.setBatch(tx.Conn().PgConn().PID())
	done := func() {
		w.setBatch(0)
		_ = tx.Rollback(context.WithoutCancel(ctx))
		cancel()
	}
	if d := timeout; d > 0 {
		// Enforced by the server too: a handler that ignores its context cannot keep the
		// checkpoint row locked beyond it.
		ms := fmt.Sprintf("%dms", d.Milliseconds())
		if _, err := tx.Exec(ctx, `SELECT set_config('statement_timeout', $1, true), set_config('idle_in_transaction_session_timeout', $1, true)`, ms); err != nil {
			done()
			return ctx, nil, nil, fmt.Errorf("set batch timeout: %w", err)
		}
	}
	return ctx, tx, done, nil
}

func (w *worker) setBatch(pid uint32) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.batchPID, w.batchAt = pid, time.Now()
}

func (w *worker) callHandler(ctx context.Context, tx pgx.Tx, events []eventstore.PersistedEvent) (err error) {
	defer w.recoverHandler(&err)
	if herr := w.g.proj.Handle(ctx, tx, events); herr != nil {
		marked := projector.IsTransient(herr)
		return &handlerError{err: herr, transient: !marked && isTransient(herr), retryable: marked}
	}
	if tx != nil && tx.Conn().PgConn().TxStatus() == 'E' {
		// A statement failed and the handler swallowed its error: the batch cannot commit, and
		// retrying it as a database error would fail the same way forever.
		return &handlerError{err: projector.ErrAborted}
	}
	return nil
}

func (w *worker) callDetached(ctx context.Context, ev eventstore.PersistedEvent) (err error) {
	if w.g.r.cfg.Hooks.Handling != nil {
		var end func(error)
		ctx, end = w.startHandling(ctx, []eventstore.PersistedEvent{ev}, ev.GlobalPosition, ev.GlobalPosition)
		defer func() { end(err) }()
	}
	defer w.recoverHandler(&err)
	if herr := w.g.detached.HandleEvent(ctx, ev); herr != nil {
		return &handlerError{err: herr, retryable: retryable(herr, true)}
	}
	return nil
}

// recoverHandler turns a handler's panic into its error; use it deferred.
func (w *worker) recoverHandler(err *error) {
	if p := recover(); p != nil {
		w.log.Error("handler panicked", zap.Any("panic", p), zap.ByteString("stack", debug.Stack()))
		*err = &handlerError{err: fmt.Errorf("handler panicked: %v", p)}
	}
}

// failureText describes a handler failure on ev, for the checkpoint and the dead letter.
func failureText(ev *eventstore.PersistedEvent, err error) string {
	if ee, ok := err.(*projector.EventError); ok && ee.Position == ev.GlobalPosition {
		err = ee.Err // the text names the event already
	}
	return fmt.Sprintf("event %d (%s %s/%s): %v", ev.GlobalPosition, ev.EventType, ev.AggregateType, ev.AggregateID, err)
}

// fail applies the failure policy to ev, whose batch ends at to: park it and move on, or stop the
// unit before it.
func (w *worker) fail(ctx context.Context, ev *eventstore.PersistedEvent, to int64, herr *handlerError) error {
	r := w.g.r
	from := w.persisted
	msg := failureText(ev, herr.err)
	err := pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		cp, err := r.cps.Load(ctx, tx, w.key)
		if err != nil {
			return err
		}
		if cp.Position != from || cp.Owner != r.nodeID || cp.Stopped() {
			return fmt.Errorf("checkpoint %s moved to %d (owner %q): %w", w.key, cp.Position, cp.Owner, checkpoint.ErrConflict)
		}
		if w.g.policy == DeadLetter {
			if err := r.cps.Park(ctx, tx, w.key, ev, msg, 0); err != nil {
				return err
			}
			return r.cps.Save(ctx, tx, w.key, r.nodeID, from, to)
		}
		return r.cps.Stop(ctx, tx, w.key, from, ev.GlobalPosition-1, ev.GlobalPosition, msg)
	})
	if err != nil {
		return fmt.Errorf("apply %s policy to event %d: %w", w.g.policy, ev.GlobalPosition, err)
	}
	if f := r.cfg.Hooks.HandlerFailed; f != nil {
		f(w.unit, ev.GlobalPosition, herr.err, w.g.policy)
	}
	w.mu.Lock()
	w.lastErr = msg
	if w.g.policy == DeadLetter {
		w.persisted, w.pos, w.statusPos = to, to, to
		if w.g.sequenced {
			w.parked[aggregate{ev.AggregateType, ev.AggregateID}] = ev.GlobalPosition
		}
	} else {
		w.persisted, w.pos, w.statusPos = ev.GlobalPosition-1, ev.GlobalPosition-1, ev.GlobalPosition-1
		w.state, w.applying = "stopped", false
	}
	w.mu.Unlock()
	w.log.Error("handler failed", zap.String("policy", w.g.policy.String()), zap.Int64("position", ev.GlobalPosition), zap.Error(herr.err))
	return nil
}

// isTransient reports whether a database error is worth retrying unchanged.
func isTransient(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code[:2] {
		case "08", "53", "57": // connection exception, insufficient resources, operator intervention
			return true
		case "40": // serialization failure, deadlock
			return pgErr.Code == "40001" || pgErr.Code == "40P01"
		}
		return false
	}
	var netErr net.Error
	return errors.As(err, &netErr) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		pgconn.SafeToRetry(err) || pgconn.Timeout(err)
}
