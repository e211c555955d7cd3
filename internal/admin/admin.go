// Package admin is what an operator reads and does to a running system, shared by the CLI
// (cmd/eventline) and the web console (package console), so that both say and do the same: the
// status snapshot (checkpoints, lifecycle records, head, lag, dead-letter counts, live runner
// processes and the live figures they publish with their heartbeats: events per second, the
// appender a unit waits on, their horizon) and its Check (what `status --check` fails on), pause,
// resume, rebuild and reset through the lifecycle's transitions (with their refusals), and the
// dead letters with retry and discard.
//
// An Admin holds the stores on the tables, no connection; each call takes the pool it works on.
// It is safe for concurrent use.
package admin

import (
	"errors"
	"fmt"
	"time"

	"github.com/eventline/eventline"
	"github.com/eventline/eventline/internal/checkpoint"
	"github.com/eventline/eventline/internal/lifecycle"
	"github.com/eventline/eventline/internal/sqlname"
)

// NodeAliveDefault is how recent a runner's heartbeat must be for the snapshot to list it.
const NodeAliveDefault = 10 * time.Second

// IdleWaitDefault bounds how long Pause waits for the batches in flight.
const IdleWaitDefault = 10 * time.Second

// Config configures an Admin. The zero value is valid: every field has a default.
type Config struct {
	// Names names the tables it reads and changes. Defaults to the zero eventline.Names.
	Names eventline.Names
	// IdleWait bounds how long Pause waits for the batches in flight. Defaults to 10s.
	IdleWait time.Duration
	// Now, when set, replaces the database's clock for ages and lease expiry (tests). Defaults
	// to nil.
	Now func() time.Time
}

// Admin reads and changes the state of the projections on one set of tables.
type Admin struct {
	cps      *checkpoint.Store
	lc       *lifecycle.Store
	events   sqlname.Name
	idleWait time.Duration
	now      func() time.Time
}

// New validates cfg (errors from the names match eventline.ErrInvalidName) and returns an Admin
// on its tables.
func New(cfg Config) (*Admin, error) {
	if cfg.IdleWait == 0 {
		cfg.IdleWait = IdleWaitDefault
	}
	if cfg.IdleWait < 0 {
		return nil, fmt.Errorf("admin config: IdleWait must not be negative, not %s", cfg.IdleWait)
	}
	if err := cfg.Names.Validate(); err != nil {
		return nil, err
	}
	n := cfg.Names.WithDefaults()
	cps, err := checkpoint.New(n)
	if err != nil {
		return nil, err
	}
	return &Admin{cps: cps, lc: lifecycle.New(n), events: sqlname.MustParse(n.EventsTable), idleWait: cfg.IdleWait, now: cfg.Now}, nil
}

// IdleWait is how long Pause waits for the batches in flight.
func (a *Admin) IdleWait() time.Duration { return a.idleWait }

// Refused reports whether err is a request the lifecycle refused (a rebuild of a detached handler
// or of a projection without Reset, a reset of a running projection or beyond the head): the
// request was understood and cannot be carried out, as opposed to a failure to reach the database.
func Refused(err error) bool {
	return errors.Is(err, lifecycle.ErrDetachedRebuild) || errors.Is(err, lifecycle.ErrNotResettable) ||
		errors.Is(err, lifecycle.ErrRunning) || errors.Is(err, ErrBeyondHead)
}

// NotFound reports whether err says that the projection or dead letter does not exist.
func NotFound(err error) bool {
	return errors.Is(err, lifecycle.ErrNotFound) || errors.Is(err, checkpoint.ErrNotFound)
}

// refused is the error of a lifecycle transition that failed: the lifecycle's own sentinel
// errors (no such projection, a rebuild that cannot be carried out) read best without the
// lifecycle's wrapping, as "rebuild NAME: <why>".
func refused(verb, name string, err error) error {
	for _, e := range []error{lifecycle.ErrNotFound, lifecycle.ErrDetachedRebuild, lifecycle.ErrNotResettable, lifecycle.ErrRunning} {
		if errors.Is(err, e) {
			return fmt.Errorf("%s %s: %w", verb, name, e)
		}
	}
	return fmt.Errorf("%s %s: %w", verb, name, err)
}
