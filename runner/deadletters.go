package runner

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/internal/checkpoint"
)

// Dead letters (docs/design.md, "Dead letters"). Under the DeadLetter policy a failing event is
// parked and the unit goes on. With sequenced dead letters (the default for DeadLetter), the later
// events of a parked event's aggregate are parked behind it instead of being handled, so that the
// aggregate's events are never applied out of order; a retry applies the aggregate's parked
// events in position order and stops at the first that fails again. Without sequencing, a retried
// event is applied after later events of its aggregate.

// loadParked reads which aggregates of this unit have parked events.
func (w *worker) loadParked(ctx context.Context) error {
	r := w.g.r
	dls, err := r.cps.VersionDeadLetters(ctx, r.pool, w.key.Projection, w.key.Version)
	if err != nil {
		return err
	}
	parked := map[aggregate]int64{}
	for _, d := range dls {
		if !w.mine(d.AggregateID) {
			continue
		}
		a := aggregate{d.AggregateType, d.AggregateID}
		if _, ok := parked[a]; !ok {
			parked[a] = d.GlobalPosition
		}
	}
	w.mu.Lock()
	w.parked = parked
	w.mu.Unlock()
	return nil
}

// blockedBy returns the position of the parked event that ev must wait behind, if any.
func (w *worker) blockedBy(ev *eventstore.PersistedEvent) (int64, bool) {
	if !w.g.sequenced || len(w.parked) == 0 {
		return 0, false
	}
	p, ok := w.parked[aggregate{ev.AggregateType, ev.AggregateID}]
	return p, ok
}

// parkBlocked parks, in tx, the events that must wait behind a parked event of their aggregate,
// and returns the others.
func (w *worker) parkBlocked(ctx context.Context, tx pgx.Tx, events []eventstore.PersistedEvent) ([]eventstore.PersistedEvent, error) {
	if !w.g.sequenced || len(w.parked) == 0 {
		return events, nil
	}
	var rest []eventstore.PersistedEvent
	for i := range events {
		first, blocked := w.blockedBy(&events[i])
		if !blocked {
			rest = append(rest, events[i])
			continue
		}
		msg := fmt.Sprintf("event %d (%s %s/%s): parked behind the earlier parked event %d of its aggregate",
			events[i].GlobalPosition, events[i].EventType, events[i].AggregateType, events[i].AggregateID, first)
		if err := w.g.r.cps.Park(ctx, tx, w.key, &events[i], msg, first); err != nil {
			return nil, err
		}
	}
	return rest, nil
}

// operatorRequests retries the dead letters of this unit's aggregates that an operator asked to
// retry.
func (w *worker) operatorRequests(ctx context.Context) error {
	r := w.g.r
	dls, err := r.cps.VersionDeadLetters(ctx, r.pool, w.key.Projection, w.key.Version)
	if err != nil {
		return err
	}
	seen := map[aggregate]bool{}
	for _, d := range dls {
		a := aggregate{d.AggregateType, d.AggregateID}
		// With sequencing, one retry runs the aggregate's whole chain; without, each dead letter
		// is retried alone.
		if !d.RetryRequested || !w.mine(d.AggregateID) || (w.g.sequenced && seen[a]) {
			continue
		}
		seen[a] = true
		if err := w.retry(ctx, d); err != nil {
			return err
		}
	}
	if len(seen) > 0 && w.g.sequenced {
		return w.loadParked(ctx)
	}
	return nil
}

// retry runs the handler again on a parked event (with sequencing: on every parked event of its
// aggregate, in order), in one transaction that holds the unit's checkpoint row, so that it cannot
// interleave with a batch or a rebuild of the unit: a retried event that succeeds is deleted from
// the dead letters in the same transaction; the first that fails stays parked with one more
// attempt, and those behind it stay parked.
func (w *worker) retry(ctx context.Context, dl checkpoint.DeadLetter) error {
	applied := 0
	var failed error
	timeout := w.g.r.cfg.BatchTimeout
	if w.g.detached != nil {
		timeout = 0 // BatchTimeout bounds transactions of projections, not a detached handler's call
	}
	err := func() error {
		ctx, tx, done, err := w.begin(ctx, timeout)
		if err != nil {
			return err
		}
		defer done()
		if err := w.retryChain(ctx, tx, dl, &applied, &failed); err != nil {
			return err
		}
		return tx.Commit(ctx)
	}()
	if err != nil {
		return err
	}
	if failed != nil {
		w.log.Warn("dead letter retry failed", zap.Int64("id", dl.ID), zap.Int("applied", applied), zap.Error(failed))
	} else {
		w.log.Info("dead letters retried", zap.Int64("id", dl.ID), zap.Int("applied", applied))
	}
	return nil
}

// retryChain runs in tx the retry of dl (with sequencing, of its aggregate's chain), counting the
// events applied; failed is the error of the event that failed again, if any.
func (w *worker) retryChain(ctx context.Context, tx pgx.Tx, dl checkpoint.DeadLetter, applied *int, failed *error) error {
	r := w.g.r
	cp, err := r.cps.Load(ctx, tx, w.key)
	if err != nil {
		return err
	}
	if cp.Owner != r.nodeID {
		return fmt.Errorf("retry dead letter %d: %s is owned by %q: %w", dl.ID, w.key, cp.Owner, checkpoint.ErrConflict)
	}
	// Like a batch's compare-and-set: not once the projection is paused, or the unit stopped or
	// no longer running (the record may have changed since the unit read it).
	if ok, err := r.cps.Applying(ctx, tx, w.key, r.nodeID); err != nil || !ok {
		if err == nil {
			err = fmt.Errorf("retry dead letter %d: %s does not apply now: %w", dl.ID, w.key, checkpoint.ErrConflict)
		}
		return err
	}
	chain, err := r.cps.LockAggregateDeadLetters(ctx, tx, w.key.Projection, w.key.Version, dl.AggregateType, dl.AggregateID)
	if err != nil {
		return err
	}
	if !w.g.sequenced {
		chain = chainOf(chain, dl.ID)
	}
	for _, d := range chain {
		ev, err := w.readEvent(ctx, tx, d.GlobalPosition)
		if err != nil {
			return fmt.Errorf("retry dead letter %d: %w", d.ID, err)
		}
		herr := w.retryOne(ctx, tx, ev)
		if herr != nil {
			*failed = herr
			// The aggregate's requests are withdrawn when its chain stops here; without
			// sequencing the others are independent of this one (Park withdraws its own).
			if w.g.sequenced {
				if err := r.cps.ClearRetryRequests(ctx, tx, w.key.Projection, w.key.Version, dl.AggregateType, dl.AggregateID); err != nil {
					return err
				}
			}
			if err := r.cps.Park(ctx, tx, w.key, &ev, failureText(&ev, herr), d.BlockedBy); err != nil {
				return err
			}
			break
		}
		if err := r.cps.DeleteDeadLetter(ctx, tx, d.ID); err != nil {
			return err
		}
		*applied++
	}
	return nil
}

// chainOf returns the dead letter id alone.
func chainOf(dls []checkpoint.DeadLetter, id int64) []checkpoint.DeadLetter {
	for _, d := range dls {
		if d.ID == id {
			return []checkpoint.DeadLetter{d}
		}
	}
	return nil
}

// retryOne runs the handler on ev; a projection's writes go in a savepoint of tx, undone if it
// fails.
func (w *worker) retryOne(ctx context.Context, tx pgx.Tx, ev eventstore.PersistedEvent) error {
	if w.g.detached != nil {
		return w.callDetached(ctx, ev)
	}
	sp, err := tx.Begin(ctx)
	if err != nil {
		return fmt.Errorf("savepoint: %w", err)
	}
	if herr := w.callHandler(ctx, sp, []eventstore.PersistedEvent{ev}); herr != nil {
		if err := sp.Rollback(ctx); err != nil {
			return errors.Join(herr, err)
		}
		return herr
	}
	return sp.Commit(ctx)
}

func (w *worker) readEvent(ctx context.Context, tx pgx.Tx, position int64) (eventstore.PersistedEvent, error) {
	evs, err := w.g.r.store.ReadEvents(ctx, tx, position-1, 1)
	if err != nil {
		return eventstore.PersistedEvent{}, err
	}
	if len(evs) == 0 || evs[0].GlobalPosition != position {
		return eventstore.PersistedEvent{}, fmt.Errorf("event at position %d not found", position)
	}
	return evs[0], nil
}
