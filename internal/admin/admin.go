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

	"github.com/eventline/eventline/internal/checkpoint"
	"github.com/eventline/eventline/internal/lifecycle"
	"github.com/eventline/eventline/internal/sqlname"
	"github.com/eventline/eventline/migrations"
)

// NodeAliveDefault is how recent a runner's heartbeat must be for the snapshot to list it.
const NodeAliveDefault = 10 * time.Second

// IdleWaitDefault bounds how long Pause waits for the batches in flight.
const IdleWaitDefault = 10 * time.Second

// Config names the tables; empty names take the migrations defaults.
type Config struct {
	// EventsTable defaults to "events".
	EventsTable string
	// CheckpointsTable defaults to "eventline_checkpoints".
	CheckpointsTable string
	// DeadLettersTable defaults to "eventline_dead_letters".
	DeadLettersTable string
	// NodesTable defaults to "eventline_nodes".
	NodesTable string
	// ProjectionsTable (the lifecycle records) defaults to "eventline_projections".
	ProjectionsTable string
	// IdleWait bounds how long Pause waits for the batches in flight. Defaults to 10s.
	IdleWait time.Duration
	// Now, when set, replaces the database's clock for ages and lease expiry (tests). Defaults
	// to nil.
	Now func() time.Time
}

func (c Config) withDefaults() Config {
	def := func(s *string, d string) {
		if *s == "" {
			*s = d
		}
	}
	def(&c.EventsTable, migrations.EventsTableDefault)
	def(&c.CheckpointsTable, migrations.CheckpointsTableDefault)
	def(&c.DeadLettersTable, migrations.DeadLettersTableDefault)
	def(&c.NodesTable, migrations.NodesTableDefault)
	def(&c.ProjectionsTable, migrations.ProjectionsTableDefault)
	if c.IdleWait == 0 {
		c.IdleWait = IdleWaitDefault
	}
	return c
}

// Admin reads and changes the state of the projections on one set of tables.
type Admin struct {
	cps      *checkpoint.Store
	lc       *lifecycle.Store
	events   sqlname.Name
	idleWait time.Duration
	now      func() time.Time
}

// New validates cfg's table names (sqlname.ErrInvalidName) and returns an Admin on them.
func New(cfg Config) (*Admin, error) {
	cfg = cfg.withDefaults()
	if cfg.IdleWait < 0 {
		return nil, fmt.Errorf("admin config: IdleWait must not be negative, not %s", cfg.IdleWait)
	}
	events, err := sqlname.Parse("events table", cfg.EventsTable)
	if err != nil {
		return nil, err
	}
	cps, err := checkpoint.New(checkpoint.Config{
		Table: cfg.CheckpointsTable, DeadLettersTable: cfg.DeadLettersTable, NodesTable: cfg.NodesTable,
		ProjectionsTable: cfg.ProjectionsTable,
	})
	if err != nil {
		return nil, err
	}
	// The same names checkpoint.New validated; lifecycle.New takes them parsed.
	var lc [3]sqlname.Name
	for i, f := range []struct{ what, val string }{
		{"projections table", cfg.ProjectionsTable},
		{"checkpoints table", cfg.CheckpointsTable},
		{"dead letters table", cfg.DeadLettersTable},
	} {
		if lc[i], err = sqlname.Parse(f.what, f.val); err != nil {
			return nil, err
		}
	}
	return &Admin{cps: cps, lc: lifecycle.New(lc[0], lc[1], lc[2]), events: events, idleWait: cfg.IdleWait, now: cfg.Now}, nil
}

// IdleWait is how long Pause waits for the batches in flight.
func (a *Admin) IdleWait() time.Duration { return a.idleWait }

// Refused reports whether err is a request the lifecycle refused (a rebuild of a detached handler
// or of a projection without Reset, a reset of a running projection): the request was understood
// and cannot be carried out, as opposed to a failure to reach the database.
func Refused(err error) bool {
	return errors.Is(err, lifecycle.ErrDetachedRebuild) || errors.Is(err, lifecycle.ErrNotResettable) ||
		errors.Is(err, lifecycle.ErrRunning)
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
