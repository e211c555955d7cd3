package runner

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/internal/checkpoint"
	"github.com/eventline/eventline/internal/lifecycle"
	"github.com/eventline/eventline/projector"
)

// worker runs one unit (a partition of a layout of a projection) while this process owns it: it
// keeps the unit's in-memory position and is the only goroutine that calls the handler for it.
// This file holds its loop; batch.go applies batches, deadletters.go handles parked events.
type worker struct {
	g      *registration
	key    checkpoint.Key
	unit   Unit // key as hooks see it
	layout lifecycle.Layout
	log    *zap.Logger
	reload chan struct{} // asks the worker to re-read its checkpoint and record

	// Owned by the worker goroutine.
	loaded      bool
	applying    bool  // the lifecycle lets the unit apply, it is not stopped, and this process owns it
	limit       int64 // the barrier it applies up to; -1 for none
	persisted   int64 // the checkpoint as last read or written
	pos         int64 // >= persisted: events in (persisted, pos] matched nothing
	lastPersist time.Time
	loadedAt    time.Time
	parked      map[aggregate]int64 // sequenced dead letters: aggregate -> position of its first parked event
	retrying    retryState          // the event being retried after a transient handler error
	sel         selection           // what it reads behind the horizon, in SQL (filtered.go)

	mu        sync.Mutex         // guards the fields below, read by Status and the coordinator
	stop      context.CancelFunc // stops the running worker after its batch in flight
	done      chan struct{}      // closed when it has stopped
	state     string
	lastErr   string
	statusPos int64
	ownerSeen string
	heldAt    int64 // position the projection waits beyond; 0 when not held
	rate      rateMeter
	batchPID  uint32    // backend of the batch in flight, 0 when none
	batchAt   time.Time // when the batch in flight began
}

type aggregate struct{ typ, id string }

func (w *worker) running() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.stop != nil
}

func (w *worker) requestReload() {
	select {
	case w.reload <- struct{}{}:
	default:
	}
}

// run loops until ctx ends. Database work uses hardCtx, which ends only after the shutdown
// timeout, so the batch in flight at shutdown can finish.
func (w *worker) run(ctx, hardCtx context.Context) {
	r := w.g.r
	backoff := r.cfg.RetryMin
	for ctx.Err() == nil {
		wakeC, gen := r.wake.C()
		progressed, held, err := w.step(hardCtx, gen)
		if err != nil {
			if hardCtx.Err() != nil {
				return
			}
			w.loaded = false // the outcome of a failed commit is unknown: re-read the checkpoint
			var later *retryLater
			if errors.As(err, &later) {
				// A transient handler failure with attempts left: wait, then try the event again
				// (a pause or a takeover meanwhile is seen when the checkpoint is re-read).
				w.setErr(err)
				if f := r.cfg.Hooks.Retrying; f != nil {
					f(w.unit, later.err, later.delay)
				}
				w.log.Warn("handler failed with a transient error; the event is tried again after a delay",
					zap.Int64("position", later.pos), zap.Int("attempt", later.attempt), zap.Int("attempts", later.attempts),
					zap.Duration("delay", later.delay), zap.Error(later.err))
				if !sleep(ctx, later.delay) {
					return
				}
				continue
			}
			if errors.Is(err, checkpoint.ErrConflict) {
				// The lifecycle or the owner changed under the batch (a pause, a barrier, a
				// takeover): not a failure, re-read and go on.
				w.log.Debug("batch not saved: the checkpoint or its lifecycle changed", zap.Error(err))
				if f := r.cfg.Hooks.Retrying; f != nil {
					f(w.unit, err, 0)
				}
				continue
			}
			w.setErr(err)
			if f := r.cfg.Hooks.Retrying; f != nil {
				f(w.unit, err, backoff)
			}
			w.log.Warn("batch failed, retrying", zap.Error(err), zap.Duration("delay", backoff))
			if !sleep(ctx, backoff) {
				return
			}
			backoff = min(2*backoff, r.cfg.RetryMax)
			continue
		}
		backoff = r.cfg.RetryMin
		if time.Since(w.loadedAt) >= r.cfg.PollInterval {
			// Re-read now and then, busy or idle, to notice what other processes and operators
			// changed: a busy unit would otherwise never see a dead letter's retry or discard.
			w.loaded = false
		}
		if progressed {
			continue
		}
		if held {
			r.tracker.Request()
		} else {
			w.persistIdle(hardCtx)
		}
		select {
		case <-ctx.Done():
		case <-wakeC:
		case <-w.reload:
			w.loaded = false
		}
	}
	w.persistIdle(hardCtx)
}

// load re-reads the checkpoint and the lifecycle record, and carries out the operator's dead-letter
// requests when the unit applies.
func (w *worker) load(ctx context.Context) error {
	r := w.g.r
	rec, err := r.lc.Get(ctx, r.pool, w.key.Projection)
	if err != nil {
		return err
	}
	cp, err := r.cps.Get(ctx, r.pool, w.key)
	if errors.Is(err, checkpoint.ErrNotFound) {
		// The layout is gone (switched, retired): the coordinator stops this worker.
		w.applying, w.loaded, w.loadedAt = false, true, time.Now()
		w.setView(rec.State(w.layout, false), "", w.persisted)
		return nil
	}
	if err != nil {
		return err
	}
	w.persisted, w.pos, w.loaded = cp.Position, cp.Position, true
	if w.retrying.pos <= cp.Position {
		w.retrying = retryState{} // applied, skipped or parked meanwhile
	}
	w.sel = w.selection()
	w.loadedAt = time.Now()
	if w.lastPersist.IsZero() {
		w.lastPersist = w.loadedAt
	}
	limit, ok := rec.Limit(w.layout)
	w.limit = limit
	w.applying = ok && !cp.Stopped() && cp.Owner == r.nodeID
	w.mu.Lock()
	w.ownerSeen = cp.Owner
	w.mu.Unlock()
	w.setView(rec.State(w.layout, cp.Stopped()), cp.LastError, cp.Position)
	if !w.applying {
		return nil
	}
	if w.g.sequenced {
		if err := w.loadParked(ctx); err != nil {
			return err
		}
	}
	return w.operatorRequests(ctx)
}

// step applies at most one page. It reports whether the position moved, and whether the unit is
// held at a hole that is not settled yet.
func (w *worker) step(ctx context.Context, gen uint64) (progressed, held bool, err error) {
	r := w.g.r
	if !w.loaded {
		if err := w.load(ctx); err != nil {
			return false, false, err
		}
	}
	if !w.applying || (w.limit >= 0 && w.pos >= w.limit) {
		return false, false, nil
	}
	h := r.tracker.Horizon()
	p, err := r.pages.pageAfter(ctx, w.pos, h, gen, w.sel)
	if err != nil {
		return false, false, err
	}
	w.setHeld(p)
	safe, events := p.safe, p.events
	if w.limit >= 0 && safe > w.limit {
		// Draining to a barrier: nothing beyond it.
		safe = w.limit
		n := len(events)
		for n > 0 && events[n-1].GlobalPosition > safe {
			n--
		}
		events = events[:n]
	}
	if safe <= w.pos {
		return false, p.held && safe == p.safe, nil
	}
	if !w.g.match.All() || w.layout.Partitions > 1 {
		events = w.filterEvents(events)
	}
	if len(events) == 0 {
		w.pos = safe
		w.setStatusPos(w.pos)
	} else if err := w.apply(ctx, events, safe); err != nil {
		return false, false, err
	}
	if f := r.cfg.Hooks.Progressed; f != nil {
		f(w.unit, w.pos)
	}
	return true, false, nil
}

// filterEvents keeps the events of this unit's partition that the projection's filter lets
// through.
func (w *worker) filterEvents(evs []eventstore.PersistedEvent) []eventstore.PersistedEvent {
	keep := func(ev *eventstore.PersistedEvent) bool { return w.g.match.Match(ev) && w.mine(ev.AggregateID) }
	// A shared page is read-only: the events that pass are copied out, unless all pass.
	i := 0
	for i < len(evs) && keep(&evs[i]) {
		i++
	}
	if i == len(evs) {
		return evs
	}
	out := make([]eventstore.PersistedEvent, i, len(evs))
	copy(out, evs[:i])
	for i++; i < len(evs); i++ {
		if keep(&evs[i]) {
			out = append(out, evs[i])
		}
	}
	return out
}

// selection is what the unit reads behind the horizon: its projection's filter, and its partition
// when the database selects partitions as projector.PartitionOf does.
func (w *worker) selection() selection {
	if !w.g.r.pages.partitionSQL {
		return newSelection(w.g.match, 1, 0)
	}
	return newSelection(w.g.match, w.layout.Partitions, w.key.Partition)
}

// mine reports whether an aggregate belongs to this unit's partition.
func (w *worker) mine(aggregateID string) bool {
	return w.layout.Partitions <= 1 || projector.PartitionOf(aggregateID, w.layout.Partitions) == w.key.Partition
}

// persistIdle saves progress over skipped events when it has been kept in memory long enough, or
// at once when it reaches the barrier it drains to (the switch waits for that).
func (w *worker) persistIdle(ctx context.Context) {
	if !w.loaded || !w.applying || w.pos == w.persisted {
		return
	}
	if time.Since(w.lastPersist) < w.g.r.cfg.PersistIdle && (w.limit < 0 || w.pos < w.limit) {
		return
	}
	if err := w.commit(ctx, nil, w.pos, nil, time.Now()); err != nil && ctx.Err() == nil {
		w.loaded = false
		w.log.Debug("saving skipped progress failed", zap.Error(err))
	}
}

func (w *worker) setView(state, lastErr string, pos int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.state, w.statusPos = state, pos
	w.lastErr = lastErr
}

func (w *worker) setErr(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.lastErr = err.Error()
}

func (w *worker) setStatusPos(pos int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.statusPos = pos
	w.lastErr = ""
}

func (w *worker) setHeld(p *page) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if p.held && p.safe <= w.pos {
		if w.heldAt == 0 {
			if f := w.g.r.cfg.Hooks.HeldAtGap; f != nil {
				defer f(w.unit, p.safe+1)
			}
		}
		w.heldAt = p.safe + 1
	} else {
		w.heldAt = 0
	}
}

// sleep waits for d or ctx; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// rateMeter is a one-second sliding estimate of events applied per second.
type rateMeter struct {
	windowStart time.Time
	count, last float64
}

func (m *rateMeter) add(n int) {
	now := time.Now()
	switch el := now.Sub(m.windowStart); {
	case el >= 2*time.Second:
		m.windowStart, m.count, m.last = now, 0, 0
	case el >= time.Second:
		m.last = m.count / el.Seconds()
		m.windowStart, m.count = now, 0
	}
	m.count += float64(n)
}

func (m *rateMeter) perSecond() float64 {
	if time.Since(m.windowStart) >= 2*time.Second {
		return 0
	}
	return m.last
}
