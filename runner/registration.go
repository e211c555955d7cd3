package runner

import (
	"context"
	"fmt"
	"runtime/debug"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/eventline/eventline/internal/checkpoint"
	"github.com/eventline/eventline/internal/filter"
	"github.com/eventline/eventline/internal/lifecycle"
	"github.com/eventline/eventline/projector"
)

// transitionLockTimeout bounds how long a lifecycle transition taken by the runner waits for a
// lock (a record held by another transition, a checkpoint row held by a batch in flight): it
// gives up and tries again on its next round instead of queueing behind a slow handler.
const transitionLockTimeout = 2 * time.Second

// registration is one projection (or detached handler) registered with this process: the code,
// its options, and the projection-wide work this process does for it (the manager loop). The
// units it runs are workers, created for the layouts the lifecycle record names.
type registration struct {
	r         *Runner
	name      string
	code      lifecycle.Code
	proj      projector.Projection
	detached  projector.Detached
	match     filter.Matcher
	policy    FailurePolicy
	sequenced bool // park the later events of an aggregate behind its parked one
	retry     Retry
	// startAtEnd: a first deploy starts at the horizon when the runner starts.
	startAtEnd bool
	log        *zap.Logger
	wake       chan struct{}

	mu     sync.Mutex
	rec    lifecycle.Record
	hasRec bool
	err    string // why the last projection-wide step failed
}

func (g *registration) record() (lifecycle.Record, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.rec, g.hasRec
}

func (g *registration) setErr(err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.err = ""
	if err != nil {
		g.err = err.Error()
	}
}

func (g *registration) wakeManager() {
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

// resetter returns the projection's Reset, or nil when it has none (or is detached).
func (g *registration) resetter() func(context.Context, pgx.Tx) error {
	if rs, ok := g.proj.(projector.Resetter); ok {
		return rs.Reset
	}
	return nil
}

func (g *registration) activator() func(context.Context, pgx.Tx) error {
	if a, ok := g.proj.(projector.Activator); ok {
		return a.Activate
	}
	return nil
}

// transition runs one lifecycle transition in its own transaction, with a lock timeout.
func (g *registration) transition(ctx context.Context, what string, f func(pgx.Tx) (string, error)) (string, error) {
	var change string
	err := pgx.BeginFunc(ctx, g.r.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT set_config('lock_timeout', $1, true)`,
			fmt.Sprintf("%dms", transitionLockTimeout.Milliseconds())); err != nil {
			return err
		}
		var err error
		change, err = callUser(g.log, func() (string, error) { return f(tx) })
		return err
	})
	if err != nil {
		return "", fmt.Errorf("%s %q: %w", what, g.name, err)
	}
	if change != "" {
		g.log.Info("lifecycle: "+change, zap.String("transition", what))
	}
	return change, nil
}

// callUser calls f, which may run the projection's code (Setup, Reset, Activate), and turns a
// panic into an error, as for handlers: it must not escape into Run or the goroutine of the
// lifecycle step (which would end the process, with every projection in it).
func callUser(log *zap.Logger, f func() (string, error)) (change string, err error) {
	defer func() {
		if p := recover(); p != nil {
			log.Error("projection code panicked", zap.Any("panic", p), zap.ByteString("stack", debug.Stack()))
			change, err = "", fmt.Errorf("panicked: %v", p)
		}
	}()
	return f()
}

// setup takes the deploy transition once and runs the projection's Setup; Run calls it before
// anything else runs.
func (g *registration) setup(ctx context.Context, declared []int) error {
	if _, err := g.transition(ctx, "deploy", func(tx pgx.Tx) (string, error) {
		return g.r.lc.Deploy(ctx, tx, g.name, g.code, declared, g.resetter())
	}); err != nil {
		return fmt.Errorf("runner: %w", err)
	}
	var s projector.Setup
	if g.proj != nil {
		s, _ = g.proj.(projector.Setup)
	} else {
		s, _ = g.detached.(projector.Setup)
	}
	if s != nil {
		err := pgx.BeginFunc(ctx, g.r.pool, func(tx pgx.Tx) error {
			// Processes starting together run Setup one at a time: concurrent CREATE ... IF NOT
			// EXISTS statements can still collide in the catalog.
			if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended('eventline/setup/' || $1, 0))`, g.name); err != nil {
				return err
			}
			_, err := callUser(g.log, func() (string, error) { return "", s.Setup(ctx, tx) })
			return err
		})
		if err != nil {
			return fmt.Errorf("runner: projection %q: setup: %w", g.name, err)
		}
	}
	return g.refresh(ctx)
}

// refresh re-reads the record; when it changed, the projection's workers reload and the
// coordinator looks at the units again.
func (g *registration) refresh(ctx context.Context) error {
	rec, err := g.r.lc.Get(ctx, g.r.pool, g.name)
	if err != nil {
		return err
	}
	g.mu.Lock()
	changed := !g.hasRec || rec.Active != g.rec.Active || rec.Target != g.rec.Target || rec.Barrier != g.rec.Barrier ||
		rec.Paused != g.rec.Paused || rec.Rebuilds != g.rec.Rebuilds
	g.rec, g.hasRec = rec, true
	g.mu.Unlock()
	if changed {
		g.r.reloadProjection(g.name)
		g.r.wakeCoordinator()
	}
	return nil
}

// manage does this process's share of the projection-wide work until ctx ends: the deploy
// transition as processes come and go, moving a change of layout on (cut-over, switch), and
// carrying out rebuild requests. Every step is a transition under the record's lock whose
// preconditions are checked there, so when several processes try, it happens once.
func (g *registration) manage(ctx context.Context) {
	t := time.NewTicker(max(g.r.cfg.PollInterval/4, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-g.wake:
		}
		err := g.step(ctx)
		if ctx.Err() != nil {
			return
		}
		g.setErr(err)
		if err != nil {
			g.log.Warn("lifecycle step failed; trying again", zap.Error(err))
		}
	}
}

func (g *registration) step(ctx context.Context) error {
	declared := g.r.declared(g.name, g.code.Version)
	if _, err := g.transition(ctx, "deploy", func(tx pgx.Tx) (string, error) {
		return g.r.lc.Deploy(ctx, tx, g.name, g.code, declared, g.resetter())
	}); err != nil {
		return err
	}
	rec, ok := g.record()
	if ok && rec.HasTarget() {
		slack := int64(4 * g.r.cfg.BatchSize)
		if _, err := g.transition(ctx, "advance", func(tx pgx.Tx) (string, error) {
			return g.r.lc.Advance(ctx, tx, g.name, g.code, slack, g.activator())
		}); err != nil {
			return err
		}
	}
	if ok && rec.Mode == lifecycle.Build && rec.Barrier >= 0 && rec.Active.Version == g.code.Version &&
		len(g.r.declared(g.name, rec.Target.Version)) == 0 {
		if _, err := g.transition(ctx, "release barrier", func(tx pgx.Tx) (string, error) {
			return g.r.lc.ReleaseBuildBarrier(ctx, tx, g.name, rec.Target.Version)
		}); err != nil {
			return err
		}
	}
	if ok && rec.Mode == lifecycle.Switch && rec.Target.Version == g.code.Version && rec.Active.Version != g.code.Version &&
		len(g.r.declared(g.name, rec.Active.Version)) == 0 {
		// A new version of a detached handler whose old processes are all gone: nobody can
		// drain the old partitions to the barrier.
		if _, err := g.transition(ctx, "take over switch", func(tx pgx.Tx) (string, error) {
			return g.r.lc.TakeOverSwitch(ctx, tx, g.name, g.code)
		}); err != nil {
			return err
		}
	}
	if ok && rec.RebuildPending() && rec.Active.Version == g.code.Version {
		if err := g.rebuild(ctx, true); err != nil {
			return err
		}
	}
	return g.refresh(ctx)
}

// rebuild carries out a rebuild (of a pending request, with fromRequest). A request this code
// cannot carry out is cleared with the reason recorded.
func (g *registration) rebuild(ctx context.Context, fromRequest bool) error {
	reset := g.resetter()
	if fromRequest && (g.code.Detached || reset == nil) {
		reason := lifecycle.ErrNotResettable.Error()
		if g.code.Detached {
			reason = lifecycle.ErrDetachedRebuild.Error()
		}
		_, err := g.transition(ctx, "refuse rebuild", func(tx pgx.Tx) (string, error) {
			return "rebuild request refused: " + reason, g.r.lc.RefuseRebuild(ctx, tx, g.name, reason)
		})
		return err
	}
	_, err := g.transition(ctx, "rebuild", func(tx pgx.Tx) (string, error) {
		done, err := g.r.lc.Rebuild(ctx, tx, g.name, g.code, fromRequest, reset)
		if !done || err != nil {
			return "", err
		}
		return "read model emptied; replaying from 0", nil
	})
	if err != nil {
		return err
	}
	return g.refresh(ctx)
}

// units returns the keys of the units this process can run for the projection under the record
// rec (ok: there is one): every partition of the record's layouts of this process's version.
func (g *registration) units(rec lifecycle.Record, ok bool) []checkpoint.Key {
	if !ok {
		return nil
	}
	var keys []checkpoint.Key
	for _, l := range rec.Units() {
		if l.Version != g.code.Version {
			continue
		}
		for p := 0; p < l.Partitions; p++ {
			keys = append(keys, checkpoint.Key{Projection: g.name, Version: l.Version, Partitions: l.Partitions, Partition: p})
		}
	}
	return keys
}

// standbyReason says why this process runs nothing of the projection under the record rec (ok:
// there is one), or "" when it runs some.
func (g *registration) standbyReason(rec lifecycle.Record, ok bool) string {
	if !ok {
		return ""
	}
	switch role := rec.Role(g.code.Layout); {
	case g.code.Version < rec.Active.Version:
		return fmt.Sprintf("version %d is retired: the projection runs version %d (this process idles)", g.code.Version, rec.Active.Version)
	case role == lifecycle.Standby && g.code.Version != rec.Active.Version && g.code.Version != rec.Target.Version:
		return fmt.Sprintf("version %d is superseded by version %d (this process idles)", g.code.Version, rec.Target.Version)
	}
	return ""
}
