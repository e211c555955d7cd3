package runner

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgxlisten"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/internal/lifecycle"
	"github.com/eventline/eventline/internal/sqlname"
	"github.com/eventline/eventline/migrations"
	"github.com/eventline/eventline/projector"
)

// Read-your-writes: after Append returns the position of an event, a request handler waits until
// a projection has applied it, and then reads the projection's read model. Runners notify the
// progress channel in every batch transaction that moves a checkpoint; a waiter listens to it and
// re-checks the checkpoints when notified (and once a second, in case a notification was missed
// while its connection was down).

// recheckInterval bounds how long a waiter trusts notifications alone.
const recheckInterval = time.Second

// ErrWaiterNotRunning: Wait was called on a Waiter whose Run is not running.
var ErrWaiterNotRunning = errors.New("runner: waiter is not running (call Run first)")

// WaiterConfig configures a Waiter. The zero value is valid: every field has a default.
type WaiterConfig struct {
	// ProjectionsTable and CheckpointsTable name the runner's tables. Default to
	// "eventline_projections" and "eventline_checkpoints".
	ProjectionsTable, CheckpointsTable string
	// ProgressChannel is the runners' Config.ProgressChannel. Defaults to "eventline_progress".
	ProgressChannel string
	// ReconnectDelay is how long the listener waits before reconnecting. Defaults to 1s.
	ReconnectDelay time.Duration
}

// Waiter waits until projections have applied given positions, in any process (an API server
// that appends but runs no runner, say). Create it with NewWaiter, run Run (it holds one listening
// connection), then call Wait from any goroutine.
type Waiter struct {
	pool     *pgxpool.Pool
	cfg      WaiterConfig
	progress *broadcast
	checker  appliedChecker
	running  atomic.Bool
}

// NewWaiter returns a Waiter on pool's database.
func NewWaiter(pool *pgxpool.Pool, cfg WaiterConfig) (*Waiter, error) {
	if pool == nil {
		return nil, errors.New("runner: waiter: pool is required")
	}
	if cfg.ProgressChannel == "" {
		cfg.ProgressChannel = ProgressChannelDefault
	}
	if cfg.ProjectionsTable == "" {
		cfg.ProjectionsTable = migrations.ProjectionsTableDefault
	}
	if cfg.CheckpointsTable == "" {
		cfg.CheckpointsTable = migrations.CheckpointsTableDefault
	}
	if cfg.ReconnectDelay == 0 {
		cfg.ReconnectDelay = ReconnectDelayDefault
	}
	if err := sqlname.Channel(cfg.ProgressChannel); err != nil {
		return nil, fmt.Errorf("runner: waiter config: %w", err)
	}
	checker, err := newAppliedChecker(cfg.ProjectionsTable, cfg.CheckpointsTable)
	if err != nil {
		return nil, err
	}
	return &Waiter{pool: pool, cfg: cfg, progress: newBroadcast(), checker: checker}, nil
}

// Run listens for progress notifications until ctx ends; it returns nil then.
func (w *Waiter) Run(ctx context.Context) error {
	w.running.Store(true)
	defer w.running.Store(false)
	connCfg := w.pool.Config().ConnConfig.Copy()
	l := &pgxlisten.Listener{
		Connect: func(ctx context.Context) (*pgx.Conn, error) {
			return pgx.ConnectConfig(ctx, connCfg)
		},
		ReconnectDelay: w.cfg.ReconnectDelay,
	}
	l.Handle(w.cfg.ProgressChannel, progressHandler{w.progress})
	if err := l.Listen(ctx); err != nil && ctx.Err() == nil {
		return fmt.Errorf("runner: waiter: listen: %w", err)
	}
	return nil
}

// Wait returns once projection's active version has applied position: for a partitioned
// projection, the partition of aggregateID ("" waits for every partition). It returns ctx's error
// when ctx ends first. A position that the projection's filter skips counts as applied only once
// the runner saves its progress over skipped events (within Config.PersistIdle).
func (w *Waiter) Wait(ctx context.Context, projection string, position int64, aggregateID string) error {
	if !w.running.Load() {
		return ErrWaiterNotRunning
	}
	return waitApplied(ctx, w.pool, w.progress, w.checker, projection, position, aggregateID)
}

// WaitApplied is Waiter.Wait on the runner's own listener: it needs Run to be running.
func (r *Runner) WaitApplied(ctx context.Context, projection string, position int64, aggregateID string) error {
	checker, err := newAppliedChecker(r.cfg.ProjectionsTable, r.cfg.CheckpointsTable)
	if err != nil {
		return err
	}
	return waitApplied(ctx, r.pool, r.progress, checker, projection, position, aggregateID)
}

func waitApplied(ctx context.Context, db eventstore.DBTX, progress *broadcast, checker appliedChecker,
	projection string, position int64, aggregateID string) error {
	t := time.NewTimer(recheckInterval)
	defer t.Stop()
	for {
		notified, _ := progress.C() // before the check: a notification during it is not lost
		done, err := checker.applied(ctx, db, projection, position, aggregateID)
		if err != nil || done {
			return err
		}
		t.Reset(recheckInterval)
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %q to apply position %d: %w", projection, position, ctx.Err())
		case <-notified:
		case <-t.C:
		}
	}
}

// appliedChecker reads whether a projection has applied a position.
type appliedChecker struct {
	lc          *lifecycle.Store
	checkpoints string
}

func newAppliedChecker(projections, checkpoints string) (appliedChecker, error) {
	p, err := sqlname.Parse("projections table", projections)
	if err != nil {
		return appliedChecker{}, fmt.Errorf("runner: %w", err)
	}
	c, err := sqlname.Parse("checkpoints table", checkpoints)
	if err != nil {
		return appliedChecker{}, fmt.Errorf("runner: %w", err)
	}
	// The dead letters table is not used by the reads below.
	return appliedChecker{lc: lifecycle.New(p, c, sqlname.MustParse(migrations.DeadLettersTableDefault)), checkpoints: c.Quoted()}, nil
}

func (c appliedChecker) applied(ctx context.Context, db eventstore.DBTX, projection string, position int64, aggregateID string) (bool, error) {
	rec, err := c.lc.Get(ctx, db, projection)
	if errors.Is(err, lifecycle.ErrNotFound) {
		return false, nil // not deployed yet
	}
	if err != nil {
		return false, err
	}
	part := -1
	if aggregateID != "" {
		part = projector.PartitionOf(aggregateID, rec.Active.Partitions)
	}
	var low *int64
	if err := db.QueryRow(ctx, `SELECT min(position) FROM `+c.checkpoints+`
		WHERE projection = $1 AND version = $2 AND partitions = $3 AND ($4 < 0 OR partition = $4)`,
		projection, rec.Active.Version, rec.Active.Partitions, part).Scan(&low); err != nil {
		return false, fmt.Errorf("read the checkpoints of %q: %w", projection, err)
	}
	return low != nil && *low >= position, nil
}

// progressHandler signals a broadcast on every progress notification and after every
// (re)connect (what was committed while away is then checked).
type progressHandler struct{ b *broadcast }

func (h progressHandler) HandleNotification(context.Context, *pgconn.Notification, *pgx.Conn) error {
	h.b.Signal()
	return nil
}

func (h progressHandler) HandleBacklog(context.Context, string, *pgx.Conn) error {
	h.b.Signal()
	return nil
}
