package runner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime/debug"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/eventline/eventline/checkpoint"
	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/projector"
)

// worker runs one projection: it owns the projection's in-memory position and is the only
// goroutine that calls its handler.
type worker struct {
	r                 *Runner
	key               checkpoint.Key
	proj              projector.Projection
	detached          projector.Detached
	match             projector.Matcher
	policy            FailurePolicy
	log               *zap.Logger
	reload            chan struct{} // asks the worker to re-read its checkpoint
	parts             int           // the projection's partition count; key.Partition is this worker's
	replay            bool          // a new version of a detached handler starts from 0
	lastTransitionTry time.Time

	// Owned by the worker goroutine.
	loaded      bool
	persisted   int64 // the checkpoint as last read or written
	pos         int64 // >= persisted: events in (persisted, pos] matched nothing
	lastPersist time.Time
	loadedAt    time.Time
	stopAt      int64 // >= 0 while draining to a barrier, else -1

	mu        sync.Mutex         // guards the fields below, read by Status and the coordinator
	stop      context.CancelFunc // stops the running worker after its batch in flight
	done      chan struct{}      // closed when it has stopped
	state     checkpoint.State
	lastErr   string
	statusPos int64
	ownerSeen string // the owner the checkpoint row named when last read
	heldAt    int64  // position the projection waits beyond; 0 when not held
	rate      rateMeter
}

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

// setup creates the checkpoint row and runs the projection's Setup.
func (w *worker) setup(ctx context.Context) error {
	err := pgx.BeginFunc(ctx, w.r.pool, func(tx pgx.Tx) error {
		// Serialize set-up of one projection across processes.
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended('eventline/setup/' || $1, 0))`, w.key.Projection); err != nil {
			return err
		}
		rows, err := w.r.cps.Projection(ctx, tx, w.key.Projection, true)
		if err != nil {
			return err
		}
		// A new version is built beside the active older one; a new version of a detached handler
		// starts where the older one is, unless asked to replay the history.
		state, start := checkpoint.Running, int64(0)
		mine, oldLayouts := false, map[int]int64{} // partition count -> highest position
		for _, cp := range rows {
			if cp.Version < w.key.Version && cp.State != checkpoint.Retired && cp.State != checkpoint.Building {
				state = checkpoint.Building
				if w.detached != nil && !w.replay {
					start = max(start, cp.Position)
				}
			}
			if cp.Version == w.key.Version && cp.State != checkpoint.Retired {
				switch {
				case cp.Partitions == w.parts:
					mine = true
				case cp.State == checkpoint.Waiting:
					// Another change that had not started yet: it never applied anything, so
					// this one replaces it.
					if err := w.r.cps.SetVersionState(ctx, tx, w.key.Projection, w.key.Version, cp.Partitions, checkpoint.Retired); err != nil {
						return err
					}
				default:
					oldLayouts[cp.Partitions] = max(oldLayouts[cp.Partitions], cp.Position)
				}
			}
		}
		if !mine && len(oldLayouts) > 0 {
			// The partition count changes (DESIGN.md section 5, scale-out): the old partitions
			// drain to one barrier, the highest of their positions, and stop there; the new ones
			// wait at the barrier and start once every old one has reached it.
			barrier := int64(0)
			for _, pos := range oldLayouts {
				barrier = max(barrier, pos)
			}
			for parts := range oldLayouts {
				if err := w.r.cps.SetStopAt(ctx, tx, w.key.Projection, w.key.Version, parts, barrier); err != nil {
					return err
				}
			}
			state, start = checkpoint.Waiting, barrier
			w.log.Info("partition count changes: old partitions drain to a barrier", zap.Int64("barrier", barrier),
				zap.Int("partitions", w.parts))
		}
		if !mine {
			for part := 0; part < w.parts; part++ {
				k := w.key
				k.Partition = part
				if err := w.r.cps.Ensure(ctx, tx, k, start, state); err != nil {
					return err
				}
			}
		}
		// Drain old partitions here too, so that the change completes without old processes.
		if w.key.Partition == 0 {
			for parts := range oldLayouts {
				w.r.addDrainWorkers(w, parts)
			}
		}
		var s projector.Setup
		if w.proj != nil {
			s, _ = w.proj.(projector.Setup)
		} else {
			s, _ = w.detached.(projector.Setup)
		}
		if s != nil {
			if err := s.Setup(ctx, tx); err != nil {
				return fmt.Errorf("setup: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("runner: projection %q: %w", w.key.Projection, err)
	}
	return nil
}

// run loops until ctx ends. Database work uses hardCtx, which ends only after the shutdown
// timeout, so the batch in flight at shutdown can finish.
func (w *worker) run(ctx, hardCtx context.Context) {
	backoff := w.r.cfg.RetryMin
	for ctx.Err() == nil {
		wakeC, gen := w.r.wake.C()
		progressed, held, err := w.step(hardCtx, gen)
		if err != nil {
			if hardCtx.Err() != nil {
				return
			}
			w.loaded = false // the outcome of a failed commit is unknown: re-read the checkpoint
			w.setErr(err)
			if f := w.r.cfg.Hooks.Retrying; f != nil {
				f(w.key, err, backoff)
			}
			w.log.Warn("batch failed, retrying", zap.Error(err), zap.Duration("delay", backoff))
			if !sleep(ctx, backoff) {
				return
			}
			backoff = min(2*backoff, w.r.cfg.RetryMax)
			continue
		}
		backoff = w.r.cfg.RetryMin
		if progressed {
			continue
		}
		if held {
			w.r.tracker.Request()
		} else {
			w.persistIdle(hardCtx)
			if err := w.maybeSwitchPartitions(hardCtx); err != nil && hardCtx.Err() == nil {
				w.log.Warn("partition switch failed", zap.Error(err))
				w.loaded = false
			}
			if err := w.maybeCutover(hardCtx); err != nil && hardCtx.Err() == nil {
				w.log.Warn("cut-over failed", zap.Error(err))
				w.loaded = false
			}
		}
		if time.Since(w.loadedAt) >= w.r.cfg.PollInterval {
			// Idle: re-read the checkpoint now and then, to notice resets, pauses and resumes
			// made elsewhere.
			w.loaded = false
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

// step applies at most one page. It reports whether the position moved, and whether the
// projection is held at a hole that is not settled yet.
func (w *worker) step(ctx context.Context, gen uint64) (progressed, held bool, err error) {
	if !w.loaded {
		cp, err := w.r.cps.Get(ctx, w.r.pool, w.key)
		if err != nil {
			return false, false, err
		}
		w.persisted, w.pos, w.loaded = cp.Position, cp.Position, true
		w.loadedAt = time.Now()
		if w.lastPersist.IsZero() {
			w.lastPersist = w.loadedAt
		}
		w.stopAt = cp.StopAt
		w.mu.Lock()
		w.state, w.statusPos, w.ownerSeen = cp.State, cp.Position, cp.Owner
		if cp.State.Applies() {
			w.lastErr = ""
		} else {
			w.lastErr = cp.LastError
		}
		w.mu.Unlock()
		if cp.Owner == w.r.nodeID {
			if err := w.operatorRequests(ctx, cp); err != nil {
				return false, false, err
			}
		}
	}
	if !w.currentState().Applies() || w.currentOwner() != w.r.nodeID {
		return false, false, nil
	}
	h := w.r.tracker.Horizon()
	var p *page
	if !w.match.All() && h > w.pos {
		p, err = w.r.pages.readFiltered(ctx, w.pos, h, w.match)
	} else {
		p, err = w.r.pages.get(ctx, w.pos, h, gen)
	}
	if err != nil {
		return false, false, err
	}
	w.setHeld(p)
	safe, events := p.safe, p.events
	if w.stopAt >= 0 && safe > w.stopAt {
		// Draining to a barrier: nothing beyond it.
		safe = w.stopAt
		n := len(events)
		for n > 0 && events[n-1].GlobalPosition > safe {
			n--
		}
		events = events[:n]
	}
	if safe <= w.pos {
		return false, p.held && safe == p.safe, nil
	}
	if !w.match.All() || w.parts > 1 {
		events = w.filterEvents(events)
	}
	if len(events) == 0 {
		w.pos = safe
		w.setStatusPos(w.pos)
	} else if err := w.apply(ctx, events, safe); err != nil {
		return false, false, err
	}
	if f := w.r.cfg.Hooks.Progressed; f != nil {
		f(w.key, w.pos)
	}
	return true, false, nil
}

// filterEvents keeps the events of this worker's partition that the projection's filter lets
// through.
func (w *worker) filterEvents(evs []eventstore.PersistedEvent) []eventstore.PersistedEvent {
	out := make([]eventstore.PersistedEvent, 0, len(evs))
	for i := range evs {
		if w.match.Match(&evs[i]) && (w.parts <= 1 || projector.PartitionOf(evs[i].AggregateID, w.parts) == w.key.Partition) {
			out = append(out, evs[i])
		}
	}
	return out
}

func (w *worker) currentOwner() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ownerSeen
}

// apply hands events, all in (pos, to], to the projection and moves the checkpoint to to. A
// handler failure is narrowed down to the failing event, to which the failure policy applies.
func (w *worker) apply(ctx context.Context, events []eventstore.PersistedEvent, to int64) error {
	if w.detached != nil {
		return w.applyDetached(ctx, events, to)
	}
	err := w.dispatch(ctx, events, to)
	var he *handlerError
	if err == nil || !errors.As(err, &he) || he.transient {
		return err
	}
	return w.isolate(ctx, events, to)
}

// isolate finds the failing event by splitting the batch, applying what succeeds.
func (w *worker) isolate(ctx context.Context, events []eventstore.PersistedEvent, to int64) error {
	for {
		if len(events) == 1 {
			err := w.dispatch(ctx, events, to)
			var he *handlerError
			if err == nil || !errors.As(err, &he) || he.transient {
				return err
			}
			return w.fail(ctx, events[0], to, he)
		}
		half := len(events) / 2
		first, firstTo := events[:half], events[half].GlobalPosition-1
		err := w.dispatch(ctx, first, firstTo)
		var he *handlerError
		switch {
		case err == nil:
			events = events[half:]
			if err := w.dispatch(ctx, events, to); err == nil || !errors.As(err, &he) || he.transient {
				return err
			}
		case errors.As(err, &he) && !he.transient:
			events, to = first, firstTo
		default:
			return err
		}
	}
}

// handlerError is an error (or panic) of the projection's handler.
type handlerError struct {
	err       error
	transient bool // a database error worth retrying as is (serialization failure, lost connection)
}

func (e *handlerError) Error() string { return e.err.Error() }
func (e *handlerError) Unwrap() error { return e.err }

// dispatch applies one batch in one transaction: lock the checkpoint, handle, compare-and-set,
// commit.
func (w *worker) dispatch(ctx context.Context, events []eventstore.PersistedEvent, to int64) error {
	return w.commit(ctx, events, to, func(ctx context.Context, tx pgx.Tx) error {
		return w.callHandler(ctx, tx, events)
	}, time.Now())
}

// applyDetached hands events one by one to a detached handler, outside any transaction, then
// moves the checkpoint (at-least-once). On a failure it saves the progress made before the
// failing event and applies the failure policy to that event.
func (w *worker) applyDetached(ctx context.Context, events []eventstore.PersistedEvent, to int64) error {
	start := time.Now()
	for i := range events {
		err := w.callDetached(ctx, events[i])
		if err == nil {
			continue
		}
		if i > 0 {
			if err := w.commit(ctx, events[:i], events[i].GlobalPosition-1, nil, start); err != nil {
				return err
			}
		}
		var he *handlerError
		if !errors.As(err, &he) {
			return err
		}
		return w.fail(ctx, events[i], events[i].GlobalPosition, he)
	}
	return w.commit(ctx, events, to, nil, start)
}

// commit runs handle (if any) in a transaction that moves the checkpoint from persisted to to.
func (w *worker) commit(ctx context.Context, events []eventstore.PersistedEvent, to int64,
	handle func(context.Context, pgx.Tx) error, start time.Time) error {
	from := w.persisted
	tx, err := w.r.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	cp, err := w.r.cps.Load(ctx, tx, w.key)
	if err != nil {
		return err
	}
	if cp.Position != from || !cp.State.Applies() || cp.Owner != w.r.nodeID {
		return fmt.Errorf("checkpoint %s is at %d (%s, owner %q), batch was read from %d: %w",
			w.key, cp.Position, cp.State, cp.Owner, from, checkpoint.ErrConflict)
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
	if err := w.r.cps.Save(ctx, tx, w.key, w.r.nodeID, from, to); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	w.persisted, w.pos = to, to
	w.lastPersist = time.Now()
	w.mu.Lock()
	w.statusPos, w.lastErr = to, ""
	w.rate.add(len(events))
	w.mu.Unlock()
	if f := w.r.cfg.Hooks.BatchCommitted; f != nil && len(events) > 0 {
		f(BatchInfo{Key: w.key, Events: len(events), From: from, To: to, Took: time.Since(start),
			Lag: time.Since(events[len(events)-1].CreatedAt)})
	}
	return nil
}

func (w *worker) callHandler(ctx context.Context, tx pgx.Tx, events []eventstore.PersistedEvent) (err error) {
	defer w.recoverHandler(&err)
	if herr := w.proj.Handle(ctx, tx, events); herr != nil {
		return &handlerError{err: herr, transient: isTransient(herr)}
	}
	return nil
}

func (w *worker) callDetached(ctx context.Context, ev eventstore.PersistedEvent) (err error) {
	defer w.recoverHandler(&err)
	if herr := w.detached.HandleEvent(ctx, ev); herr != nil {
		return &handlerError{err: herr}
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
func failureText(ev eventstore.PersistedEvent, err error) string {
	return fmt.Sprintf("event %d (%s %s/%s): %v", ev.GlobalPosition, ev.EventType, ev.AggregateType, ev.AggregateID, err)
}

// fail applies the failure policy to ev, whose batch ends at to.
func (w *worker) fail(ctx context.Context, ev eventstore.PersistedEvent, to int64, herr *handlerError) error {
	from := w.persisted
	msg := failureText(ev, herr.err)
	err := pgx.BeginFunc(ctx, w.r.pool, func(tx pgx.Tx) error {
		cp, err := w.r.cps.Load(ctx, tx, w.key)
		if err != nil {
			return err
		}
		if cp.Position != from || cp.Owner != w.r.nodeID {
			return fmt.Errorf("checkpoint %s moved to %d (owner %q): %w", w.key, cp.Position, cp.Owner, checkpoint.ErrConflict)
		}
		if w.policy == DeadLetter {
			if err := w.r.cps.Park(ctx, tx, w.key, ev, msg); err != nil {
				return err
			}
			return w.r.cps.Save(ctx, tx, w.key, w.r.nodeID, from, to)
		}
		return w.r.cps.Stop(ctx, tx, w.key, from, ev.GlobalPosition-1, ev.GlobalPosition, msg)
	})
	if err != nil {
		return fmt.Errorf("apply %s policy to event %d: %w", w.policy, ev.GlobalPosition, err)
	}
	if f := w.r.cfg.Hooks.HandlerFailed; f != nil {
		f(w.key, ev.GlobalPosition, herr.err, w.policy)
	}
	w.mu.Lock()
	w.lastErr = msg
	if w.policy == DeadLetter {
		w.persisted, w.pos, w.statusPos = to, to, to
	} else {
		w.persisted, w.pos, w.statusPos = ev.GlobalPosition-1, ev.GlobalPosition-1, ev.GlobalPosition-1
		w.state = checkpoint.Stopped
	}
	w.mu.Unlock()
	w.log.Error("handler failed", zap.String("policy", w.policy.String()), zap.Int64("position", ev.GlobalPosition), zap.Error(herr.err))
	return nil
}

// persistIdle saves progress over skipped events when it has been kept in memory long enough, or
// at once when it reaches the barrier it drains to (others wait for that).
func (w *worker) persistIdle(ctx context.Context) {
	if !w.loaded || w.pos == w.persisted {
		return
	}
	if time.Since(w.lastPersist) < w.r.cfg.PersistIdle && (w.stopAt < 0 || w.pos < w.stopAt) {
		return
	}
	if err := w.commit(ctx, nil, w.pos, nil, time.Now()); err != nil && ctx.Err() == nil {
		w.loaded = false
		w.log.Debug("saving skipped progress failed", zap.Error(err))
	}
}

func (w *worker) currentState() checkpoint.State {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.state
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
			if f := w.r.cfg.Hooks.HeldAtGap; f != nil {
				defer f(w.key, p.safe+1)
			}
		}
		w.heldAt = p.safe + 1
	} else {
		w.heldAt = 0
	}
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

// operatorRequests carries out what an operator asked for through the CLI: a rebuild (done by the
// owner of partition 0, for all partitions at once) and retries of dead letters.
func (w *worker) operatorRequests(ctx context.Context, cp checkpoint.Checkpoint) error {
	if cp.RebuildRequested && w.key.Partition == 0 {
		w.log.Info("rebuild requested")
		if err := w.r.Rebuild(ctx, w.key.Projection); err != nil {
			return err
		}
		w.loaded = false
		return nil
	}
	retries, err := w.r.cps.RetryRequested(ctx, w.r.pool, w.key)
	if err != nil || len(retries) == 0 {
		return err
	}
	for _, dl := range retries {
		if err := w.retry(ctx, dl); err != nil {
			return err
		}
	}
	return nil
}

// retry runs the handler again on a parked event: on success the dead letter is deleted in the
// same transaction; on failure it stays parked with one more attempt. The checkpoint does not
// move (the event is applied out of its original order).
func (w *worker) retry(ctx context.Context, dl checkpoint.DeadLetter) error {
	evs, err := w.r.store.ReadEvents(ctx, w.r.pool, dl.GlobalPosition-1, 1)
	if err != nil {
		return fmt.Errorf("retry dead letter %d: %w", dl.ID, err)
	}
	if len(evs) == 0 || evs[0].GlobalPosition != dl.GlobalPosition {
		return fmt.Errorf("retry dead letter %d: event at position %d not found", dl.ID, dl.GlobalPosition)
	}
	ev := evs[0]
	var herr error
	err = pgx.BeginFunc(ctx, w.r.pool, func(tx pgx.Tx) error {
		if w.detached != nil {
			herr = w.callDetached(ctx, ev)
		} else {
			herr = w.callHandler(ctx, tx, evs)
		}
		if herr != nil {
			return herr
		}
		return w.r.cps.DeleteDeadLetter(ctx, tx, dl.ID)
	})
	if herr == nil && err == nil {
		w.log.Info("dead letter retried", zap.Int64("position", dl.GlobalPosition))
		return nil
	}
	if herr == nil {
		return err
	}
	msg := failureText(ev, herr)
	if err := pgx.BeginFunc(ctx, w.r.pool, func(tx pgx.Tx) error { return w.r.cps.Park(ctx, tx, w.key, ev, msg) }); err != nil {
		return err
	}
	w.log.Warn("dead letter retry failed", zap.Int64("position", dl.GlobalPosition), zap.Error(herr))
	return nil
}

// maybeCutover makes a building version take over from the older ones once it has caught up with
// them (DESIGN.md section 5, rebuilds and deploys). It runs on partition 0's worker, now and then
// while idle. In one transaction it locks every checkpoint of the projection, so the old version
// cannot move; applies the few events the new version may still lack (unpartitioned projections);
// checks that every partition of the new version is at or past every partition of the old; runs
// the projection's Activate; and marks the new version running and the old retired.
func (w *worker) maybeCutover(ctx context.Context) error {
	if !w.transitionDue(checkpoint.Building) {
		return nil
	}
	done := false
	err := pgx.BeginFunc(ctx, w.r.pool, func(tx pgx.Tx) error {
		rows, err := w.r.cps.Projection(ctx, tx, w.key.Projection, true)
		if err != nil {
			return err
		}
		minNew, maxOld := int64(-1), int64(0)
		var mine checkpoint.Checkpoint
		for _, cp := range rows {
			switch {
			case cp.Version == w.key.Version:
				if cp.State != checkpoint.Building || cp.Owner != w.r.nodeID && w.parts == 1 {
					return nil // not ours to cut over (any more)
				}
				if minNew < 0 || cp.Position < minNew {
					minNew = cp.Position
				}
				if cp.Partition == 0 {
					mine = cp
				}
			case cp.Version < w.key.Version && cp.State != checkpoint.Retired:
				maxOld = max(maxOld, cp.Position)
			}
		}
		if minNew < maxOld && w.parts == 1 && maxOld-minNew <= int64(w.r.cfg.BatchSize)*4 && w.proj != nil {
			// Close the small gap inside this transaction: positions <= maxOld are settled, since
			// the old version's checkpoint got there.
			evs, err := w.readRange(ctx, tx, minNew, maxOld)
			if err != nil {
				return err
			}
			if len(evs) > 0 {
				if err := w.callHandler(ctx, tx, evs); err != nil {
					return err
				}
			}
			if err := w.r.cps.Save(ctx, tx, mine.Key, w.r.nodeID, minNew, maxOld); err != nil {
				return err
			}
			minNew = maxOld
		}
		if minNew < maxOld {
			return nil // not caught up yet
		}
		if a, ok := w.proj.(projector.Activator); ok {
			if err := a.Activate(ctx, tx); err != nil {
				return fmt.Errorf("activate: %w", err)
			}
		}
		for _, cp := range rows {
			if cp.Version < w.key.Version && cp.State != checkpoint.Retired {
				if err := w.r.cps.SetVersionState(ctx, tx, cp.Projection, cp.Version, 0, checkpoint.Retired); err != nil {
					return err
				}
			}
		}
		if err := w.r.cps.SetVersionState(ctx, tx, w.key.Projection, w.key.Version, w.parts, checkpoint.Running); err != nil {
			return err
		}
		done = true
		return nil
	})
	if err != nil {
		return err
	}
	if done {
		w.log.Info("new version took over", zap.Int("version", w.key.Version))
		w.r.reloadAll(w.key.Projection)
	}
	return nil
}

// transitionDue reports whether this worker should try a version cut-over or a partition switch
// now: it is partition 0 of a set in state, and the last try is a while ago.
func (w *worker) transitionDue(state checkpoint.State) bool {
	if w.key.Partition != 0 || w.currentState() != state || time.Since(w.lastTransitionTry) < w.r.cfg.PollInterval/4 {
		return false
	}
	w.lastTransitionTry = time.Now()
	return true
}

// readRange reads the events in (from, to], filtered for this projection, in one transaction.
func (w *worker) readRange(ctx context.Context, tx pgx.Tx, from, to int64) ([]eventstore.PersistedEvent, error) {
	evs, err := w.r.store.ReadEventsBetween(ctx, tx, from, to, 0, nil, nil)
	if err != nil {
		return nil, err
	}
	return w.filterEvents(evs), nil
}

// maybeSwitchPartitions starts a new set of partitions once every partition of the old set has
// drained to its barrier, in one transaction that also retires the old set. It runs on the new
// set's partition 0, now and then while it waits.
func (w *worker) maybeSwitchPartitions(ctx context.Context) error {
	if !w.transitionDue(checkpoint.Waiting) {
		return nil
	}
	switched := false
	err := pgx.BeginFunc(ctx, w.r.pool, func(tx pgx.Tx) error {
		rows, err := w.r.cps.Projection(ctx, tx, w.key.Projection, true)
		if err != nil {
			return err
		}
		old := map[int]bool{}
		next := checkpoint.Running
		for _, cp := range rows {
			if cp.Version != w.key.Version || cp.State == checkpoint.Retired {
				continue
			}
			if cp.Partitions == w.parts {
				if cp.State != checkpoint.Waiting {
					return nil // switched already
				}
				continue
			}
			if cp.StopAt < 0 || cp.Position < cp.StopAt {
				return nil // still draining
			}
			if cp.State == checkpoint.Building {
				next = checkpoint.Building
			}
			old[cp.Partitions] = true
		}
		for parts := range old {
			if err := w.r.cps.SetVersionState(ctx, tx, w.key.Projection, w.key.Version, parts, checkpoint.Retired); err != nil {
				return err
			}
		}
		if err := w.r.cps.SetVersionState(ctx, tx, w.key.Projection, w.key.Version, w.parts, next); err != nil {
			return err
		}
		switched = true
		return nil
	})
	if err != nil {
		return err
	}
	if switched {
		w.log.Info("partition count changed", zap.Int("partitions", w.parts))
		w.r.reloadAll(w.key.Projection)
	}
	return nil
}
