package runner

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// Health errors, for errors.Is.
var (
	// ErrNotLive: Health found the runner not running, or a loop of it not keeping up.
	ErrNotLive = errors.New("runner: not live")
	// ErrNotReady: Ready found a unit of this process lagging beyond the bound.
	ErrNotReady = errors.New("runner: not ready")
)

// HealthTimeoutDefault bounds one probe of HealthHandler when the request sets no deadline.
const HealthTimeoutDefault = 5 * time.Second

// heartbeats records the coordinator's heartbeats, for Health.
type heartbeats struct {
	mu  sync.Mutex
	at  time.Time // the last heartbeat that was written
	err error     // the last heartbeat's error, nil when it was written
}

func (h *heartbeats) record(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.err = err
	if err == nil {
		h.at = time.Now()
	}
}

func (h *heartbeats) last() (time.Time, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.at, h.err
}

// Health returns nil while the runner is live: Run is running, its heartbeat (which renews this
// process's leases) was written within Lease, its horizon was refreshed within Lease, and (with
// BatchTimeout set) no batch has been in flight for longer than BatchTimeout plus ShutdownGrace.
// Past Lease without a heartbeat, the other processes take this one's work over, so a process
// stuck there is of no use; a handler that outlives BatchTimeout that long ignores its context,
// and only a restart frees its unit. Otherwise it returns an error matching ErrNotLive that says why: "starting"
// (before Run's first heartbeat: give a liveness probe a start-up allowance, as Run waits for
// the database during start-up), "stopped", or which loop fell behind and its last error.
//
// It reads memory only and never blocks on the database, so a liveness probe may call it often.
func (r *Runner) Health(context.Context) error {
	select {
	case <-r.life.overChan():
		return fmt.Errorf("%w: stopped", ErrNotLive)
	default:
	}
	beat, beatErr := r.beats.last()
	if beat.IsZero() {
		if beatErr != nil {
			return fmt.Errorf("%w: starting: heartbeat failed: %v", ErrNotLive, beatErr)
		}
		return fmt.Errorf("%w: starting", ErrNotLive)
	}
	var problems []string
	if age := time.Since(beat); age > r.cfg.Lease {
		p := fmt.Sprintf("last heartbeat %s ago (Lease %s)", age.Round(time.Millisecond), r.cfg.Lease)
		if beatErr != nil {
			p += ": " + beatErr.Error()
		}
		problems = append(problems, p)
	}
	r.mu.Lock()
	tracker := r.tracker
	r.mu.Unlock()
	if tracker != nil {
		ticked, tickErr := tracker.LastTick()
		if age := time.Since(ticked); age > r.cfg.Lease {
			p := fmt.Sprintf("horizon last refreshed %s ago", age.Round(time.Millisecond))
			if tickErr != nil {
				p += ": " + tickErr.Error()
			}
			problems = append(problems, p)
		}
	}
	problems = append(problems, r.stuckBatches()...)
	if len(problems) > 0 {
		return fmt.Errorf("%w: %s", ErrNotLive, strings.Join(problems, "; "))
	}
	return nil
}

// stuckBatches names the batches in flight for longer than BatchTimeout plus ShutdownGrace: their
// context was cancelled and the server ended their transaction, so a handler that has not
// returned by then ignores its context and holds its unit for good. Without BatchTimeout, a long
// batch may be legitimate and none is named.
func (r *Runner) stuckBatches() []string {
	if r.cfg.BatchTimeout <= 0 {
		return nil
	}
	limit := r.cfg.BatchTimeout + r.cfg.ShutdownGrace
	var out []string
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, w := range r.workers {
		w.mu.Lock()
		if w.batchPID != 0 {
			if d := time.Since(w.batchAt); d > limit {
				out = append(out, fmt.Sprintf("%s: a batch running for %s (BatchTimeout %s): its handler ignores its context",
					w.key, d.Round(time.Millisecond), r.cfg.BatchTimeout))
			}
		}
		w.mu.Unlock()
	}
	slices.Sort(out)
	return out
}

// Ready returns nil when the runner is live (Health) and every unit this process runs has
// applied every event older than maxLag (the age of the first event it has not applied is at
// most maxLag); with maxLag <= 0 only liveness counts. Otherwise it returns an error matching
// ErrNotLive or ErrNotReady that says why, naming the lagging units. It runs one query, for the
// units this process runs that are behind the horizon.
func (r *Runner) Ready(ctx context.Context, maxLag time.Duration) error {
	if err := r.Health(ctx); err != nil {
		return err
	}
	if maxLag <= 0 {
		return nil
	}
	// The live status and the Heartbeat hook's lag: one query for every unit behind the horizon.
	_, info := r.liveStatus()
	if err := r.measureLag(ctx, r.pool, &info); err != nil {
		return fmt.Errorf("%w: %v", ErrNotReady, err)
	}
	var lagging []string
	for _, u := range info.Units {
		if u.Owned && u.Lag > maxLag {
			lagging = append(lagging, fmt.Sprintf("%s lags %s (at %d)", u.Unit, u.Lag.Round(time.Millisecond), u.Position))
		}
	}
	if len(lagging) > 0 {
		return fmt.Errorf("%w: %s (bound %s)", ErrNotReady, strings.Join(lagging, ", "), maxLag)
	}
	return nil
}

// HealthHandler serves liveness and readiness probes: a request whose path ends in /livez is
// answered from Health, one ending in /readyz from Ready(maxLag), anything else with 404. It
// answers 200 "ok", or 503 with the reason on one line. Each probe is bounded by the request's
// deadline, or HealthTimeoutDefault. Mount it where the probes look:
//
//	mux.Handle("/livez", r.HealthHandler(30*time.Second))
//	mux.Handle("/readyz", r.HealthHandler(30*time.Second))
func (r *Runner) HealthHandler(maxLag time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		ctx := req.Context()
		if _, ok := ctx.Deadline(); !ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, HealthTimeoutDefault)
			defer cancel()
		}
		var err error
		switch {
		case strings.HasSuffix(req.URL.Path, "/livez"):
			err = r.Health(ctx)
		case strings.HasSuffix(req.URL.Path, "/readyz"):
			err = r.Ready(ctx, maxLag)
		default:
			http.NotFound(w, req)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, strings.Join(strings.Fields(err.Error()), " "))
			return
		}
		fmt.Fprintln(w, "ok")
	})
}
