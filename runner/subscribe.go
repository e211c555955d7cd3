package runner

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/internal/filter"
	"github.com/eventline/eventline/internal/horizon"
	"github.com/eventline/eventline/projector"
)

// Subscriptions: a gap-safe stream of the events table for consumers whose position lives
// elsewhere (a relay to a broker, a websocket, another service), with no checkpoint row. A
// subscription reads exactly as a projection's unit does (docs/design.md, "The gap problem", "The
// page cut", and "Reading and dispatch"): it shares the process's horizon tracker, wake-ups and
// page reader with the projections, delivers only what the page cut says is safe, and waits at a
// hole that is not settled.

// ErrRunnerStopped ends a subscription whose runner's Run has returned or is returning (its
// context ended, or it failed to start). Subscribe again, on a runner that runs, after the
// position of the last event received.
var ErrRunnerStopped = errors.New("runner: Run has returned; the subscription cannot go on")

// StartPosition says where a subscription starts: FromBeginning (the zero value), FromEnd, or
// After a position.
type StartPosition struct {
	after int64
	end   bool
}

// FromBeginning starts a subscription with the first event of the log. It is the zero
// StartPosition.
func FromBeginning() StartPosition { return StartPosition{} }

// FromEnd starts a subscription at the end of the log as it is when the iteration starts: the
// horizon (every position at or below it is settled). Only events above it are delivered, so an
// event that commits late, after the subscription started, is delivered too; an event committed
// shortly before the subscription (less than Config.HorizonInterval) may be delivered as well.
func FromEnd() StartPosition { return StartPosition{end: true} }

// After starts a subscription after position: with the first event whose global position is
// above it. To resume, pass the global position of the last event received (for example an SSE
// Last-Event-ID); After(0) is FromBeginning.
func After(position int64) StartPosition { return StartPosition{after: position} }

func (s StartPosition) String() string {
	if s.end {
		return "end"
	}
	return fmt.Sprintf("after %d", s.after)
}

// SubscribeOption configures a subscription.
type SubscribeOption func(*subscribeOptions)

type subscribeOptions struct {
	filter projector.Filter
	// Observers for the tests (export_subscribe_test.go).
	started func(position int64) // the start position was resolved
	held    func(position int64) // waits at this position, not settled yet
}

// WithFilter delivers only the events of the aggregate types and event types that f lists (an
// empty list lets every type through), as a projection's Filter does: reuse a projector.FilterSpec
// or a projection. Behind the horizon the filter runs in SQL, as for a filtered projection.
func WithFilter(f projector.Filter) SubscribeOption {
	return func(o *subscribeOptions) { o.filter = f }
}

// Subscribe streams the events of the log after from, in global-position order, in batches of at
// most Config.BatchSize events, never empty:
//
//	for batch, err := range r.Subscribe(ctx, runner.After(lastSent)) {
//		if err != nil {
//			return err // ctx.Err(), ErrRunnerStopped, or a database error that is not transient
//		}
//		publish(batch)
//		lastSent = batch[len(batch)-1].GlobalPosition
//	}
//
// It has the projections' no-skip guarantee (docs/design.md, G1, G2, G5): every committed event
// after from is delivered exactly once per iteration, in order, however late its transaction
// commits; the iteration waits at a hole until it is settled, and rolled-back appends are never
// delivered. The subscription keeps no position: resume after the last event received
// (After(position)), from wherever it is stored.
//
// It works while Run is running (with or without registered projections), and shares the
// process's horizon tracker, wake-ups (notifications, Wake, polling, horizon moves) and page
// reader with the projections: a subscription at the position of a projection reads no page of
// its own. Called before Run has started, the iteration waits for it. It ends:
//   - when the loop breaks: at once, and nothing is left behind (it starts no goroutine);
//   - when ctx ends: it yields ctx.Err() once;
//   - when Run returns or fails to start: it yields ErrRunnerStopped once (also at once for an
//     iteration started after Run returned);
//   - on a database error that is not transient: it yields it once. Transient errors (a lost
//     connection, a server restart) are retried with the runner's backoff, as projections do.
//
// Each range over the returned sequence is a new subscription from from (FromEnd is resolved
// anew). A batch belongs to the caller, but the byte slices of its events are shared with the
// projections: do not modify them. While the loop body runs, the subscription holds no
// connection.
func (r *Runner) Subscribe(ctx context.Context, from StartPosition, opts ...SubscribeOption) iter.Seq2[[]eventstore.PersistedEvent, error] {
	var o subscribeOptions
	for _, opt := range opts {
		opt(&o)
	}
	return func(yield func([]eventstore.PersistedEvent, error) bool) {
		if err := r.subscribe(ctx, from, o, yield); err != nil {
			yield(nil, err)
		}
	}
}

// Events flattens a subscription's batches into single events, for a consumer that handles one
// event at a time; errors pass through.
//
//	for ev, err := range runner.Events(r.Subscribe(ctx, runner.FromEnd())) { ... }
func Events(batches iter.Seq2[[]eventstore.PersistedEvent, error]) iter.Seq2[eventstore.PersistedEvent, error] {
	return func(yield func(eventstore.PersistedEvent, error) bool) {
		for batch, err := range batches {
			if err != nil {
				yield(eventstore.PersistedEvent{}, err)
				return
			}
			for i := range batch {
				if !yield(batch[i], nil) {
					return
				}
			}
		}
	}
}

// subscribe runs one subscription until yield returns false (nil) or it must end (the error to
// yield last).
func (r *Runner) subscribe(ctx context.Context, from StartPosition, o subscribeOptions,
	yield func([]eventstore.PersistedEvent, error) bool) error {
	if from.after < 0 {
		return fmt.Errorf("runner: subscribe after %d: the position must not be negative", from.after)
	}
	tracker, runCtx, err := r.life.await(ctx)
	if err != nil {
		return err
	}
	pos := from.after
	if from.end {
		pos = tracker.Horizon()
	}
	if o.started != nil {
		o.started(pos)
	}
	match := filter.Compile(o.filter)
	sel := newSelection(match, 1, 0)
	backoff := r.cfg.RetryMin
	var heldAt int64
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		if runCtx.Err() != nil {
			return ErrRunnerStopped
		}
		// Taken before the read: a wake-up during the read is not lost.
		wakeC, gen := r.wake.C()
		h := tracker.Horizon()
		p, err := r.pages.pageAfter(ctx, pos, h, gen, sel)
		if err != nil {
			switch {
			case ctx.Err() != nil:
				return ctx.Err()
			case runCtx.Err() != nil:
				return ErrRunnerStopped
			case !isTransient(err):
				return fmt.Errorf("runner: subscription after %d: %w", pos, err)
			}
			r.log.Warn("subscription read failed, retrying", zap.Int64("position", pos), zap.Error(err),
				zap.Duration("delay", backoff))
			if err := retryAfter(ctx, runCtx, backoff); err != nil {
				return err
			}
			backoff = min(2*backoff, r.cfg.RetryMax)
			continue
		}
		backoff = r.cfg.RetryMin
		if p.safe > pos {
			var events []eventstore.PersistedEvent
			if match.All() {
				events = slices.Clone(p.events) // the page stays shared
			} else {
				for i := range p.events {
					if match.Match(&p.events[i]) {
						events = append(events, p.events[i])
					}
				}
			}
			pos, heldAt = p.safe, 0
			if len(events) > 0 && !yield(events, nil) {
				return nil
			}
			continue
		}
		if p.held {
			// At a hole above the horizon: ask for a tick; the horizon's move wakes us.
			if heldAt != p.safe+1 {
				heldAt = p.safe + 1
				if o.held != nil {
					o.held(heldAt)
				}
			}
			tracker.Request()
		}
		select {
		case <-ctx.Done():
		case <-runCtx.Done():
		case <-wakeC:
		}
	}
}

// retryAfter waits d after a failed read; it returns the error that ends the subscription, if
// one came first.
func retryAfter(ctx, runCtx context.Context, d time.Duration) error {
	sleepCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(runCtx, cancel)
	defer stop()
	if !sleep(sleepCtx, d) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return ErrRunnerStopped
	}
	return nil
}

// runLife is Run's lifetime as subscriptions see it: not started, up (the tracker and the wake-ups
// run), then over. Run calls up once its services run and over when it returns. The zero value
// is "not started".
type runLife struct {
	mu      sync.Mutex
	upC     chan struct{} // closed by up
	overC   chan struct{} // closed by over
	tracker *horizon.Tracker
	ctx     context.Context // ends when Run stops
}

func (l *runLife) init() {
	if l.upC == nil {
		l.upC, l.overC = make(chan struct{}), make(chan struct{})
	}
}

// up records that Run's reading services run with tracker until ctx ends.
func (l *runLife) up(tracker *horizon.Tracker, ctx context.Context) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.init()
	l.tracker, l.ctx = tracker, ctx
	close(l.upC)
}

// over records that Run has returned (also after a failed start).
func (l *runLife) over() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.init()
	close(l.overC)
}

// overChan returns a channel closed once Run has returned.
func (l *runLife) overChan() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.init()
	return l.overC
}

// await waits until Run is up, and returns its tracker and the context that ends when it stops;
// ErrRunnerStopped when Run is over, ctx.Err() when ctx ends first.
func (l *runLife) await(ctx context.Context) (*horizon.Tracker, context.Context, error) {
	l.mu.Lock()
	l.init()
	upC, overC := l.upC, l.overC
	l.mu.Unlock()
	select {
	case <-overC:
		return nil, nil, ErrRunnerStopped
	default:
	}
	select {
	case <-upC:
	case <-overC:
		return nil, nil, ErrRunnerStopped
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.tracker, l.ctx, nil
}
