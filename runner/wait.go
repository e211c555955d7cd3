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

	"github.com/eventline/eventline"
	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/eventstore/postgres"
	"github.com/eventline/eventline/internal/lifecycle"
	"github.com/eventline/eventline/internal/sqlname"
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

// WaiterConfig configures a Waiter. The zero value is valid: every field has a default. Like a
// Runner, a Waiter takes its tables and channel from the Store it is given.
type WaiterConfig struct {
	// ReconnectDelay is how long the listener waits before reconnecting. Defaults to 1s.
	ReconnectDelay time.Duration
}

// Waiter waits until projections have applied given positions, in any process (an API server
// that appends but runs no runner, say). Create it with NewWaiter, run Run (it holds one listening
// connection), then call Wait from any goroutine.
type Waiter struct {
	pool     *pgxpool.Pool
	cfg      WaiterConfig
	channel  string // the progress channel
	progress *broadcast
	checker  appliedChecker
	running  atomic.Bool
}

// NewWaiter returns a Waiter on pool's database, for the projections of the runners built on the
// same tables as store (store.Names()).
func NewWaiter(pool *pgxpool.Pool, store *postgres.Store, cfg WaiterConfig) (*Waiter, error) {
	if pool == nil || store == nil {
		return nil, errors.New("runner: waiter: pool and store are required")
	}
	if cfg.ReconnectDelay == 0 {
		cfg.ReconnectDelay = ReconnectDelayDefault
	}
	if cfg.ReconnectDelay < 0 {
		return nil, errors.New("runner: waiter config: invalid ReconnectDelay")
	}
	names := store.Names()
	return &Waiter{pool: pool, cfg: cfg, channel: names.ProgressChannel, progress: newBroadcast(),
		checker: newAppliedChecker(names)}, nil
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
	l.Handle(w.channel, progressHandler{w.progress})
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
	return waitApplied(ctx, r.pool, r.progress, r.applied, projection, position, aggregateID)
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

// newAppliedChecker reads names' tables; names are valid, with defaults (a Store's).
func newAppliedChecker(names eventline.Names) appliedChecker {
	return appliedChecker{lc: lifecycle.New(names), checkpoints: sqlname.MustParse(names.CheckpointsTable).Quoted()}
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
