// Package runner keeps projections up to date from the events table: it wakes on notifications
// (and polls), reads pages of events without ever skipping one that commits late (the horizon of
// DESIGN.md section 4), and hands each batch to the projection inside the transaction that moves
// its checkpoint forward with a compare-and-set.
//
//	r, err := runner.New(pool, store, runner.Config{Logger: logger})
//	r.Register(balances)                               // a projector.Projection
//	r.Register(audit, runner.WithFailurePolicy(runner.DeadLetter))
//	err = r.Run(ctx)                                   // blocks; returns nil after ctx ends
//
// Run the same runner in every process of a service: the processes share the projections (and
// their partitions) through leases in the checkpoint rows, move the work of a process that dies
// within about Config.Lease, and hand it over at once on a graceful stop. A process that lost its
// lease cannot commit, since the checkpoint compare-and-set includes the owner.
package runner

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgxlisten"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/eventline/eventline/checkpoint"
	"github.com/eventline/eventline/eventstore/postgres"
	"github.com/eventline/eventline/internal/horizon"
	"github.com/eventline/eventline/internal/sqlname"
	"github.com/eventline/eventline/projector"
)

// Errors.
var (
	// ErrAlreadyRunning: Run was called twice, or Register after Run.
	ErrAlreadyRunning = errors.New("runner: already running")
	// ErrDuplicateName: two projections with one name.
	ErrDuplicateName = errors.New("runner: duplicate projection name")
	// ErrUnknownProjection: no projection with that name is registered.
	ErrUnknownProjection = errors.New("runner: unknown projection")
	// ErrDetachedRebuild: a detached handler is not rebuilt, since that would repeat its side
	// effects for the whole history.
	ErrDetachedRebuild = errors.New("runner: detached handlers are not rebuilt (it would repeat their side effects)")
)

// Runner runs projections. Create it with New, Register projections, then Run.
type Runner struct {
	pool  *pgxpool.Pool
	store *postgres.Store
	cfg   Config
	log   *zap.Logger
	cps   *checkpoint.Store

	mu      sync.Mutex
	workers []*worker
	byName  map[string][]*worker
	started bool
	tracker *horizon.Tracker
	wake    *broadcast
	pages   *pageReader
	nodeID  string
	control chan struct{} // wakes the ownership coordinator
	lagSQL  string
}

// New returns a runner reading store's events table through pool.
func New(pool *pgxpool.Pool, store *postgres.Store, cfg Config) (*Runner, error) {
	if pool == nil || store == nil {
		return nil, errors.New("runner: pool and store are required")
	}
	cfg = cfg.withDefaults(store.Config().NotifyChannel)
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	for _, ch := range []string{cfg.NotifyChannel, cfg.ControlChannel} {
		if ch == "" {
			continue
		}
		if err := sqlname.Channel(ch); err != nil {
			return nil, fmt.Errorf("runner config: %w", err)
		}
	}
	cps, err := checkpoint.New(checkpoint.Config{Table: cfg.CheckpointsTable, DeadLettersTable: cfg.DeadLettersTable, NodesTable: cfg.NodesTable})
	if err != nil {
		return nil, fmt.Errorf("runner: %w", err)
	}
	ev := store.EventsTable().Quoted()
	pages := newPageReader(pool, store, cfg.BatchSize, cfg.PageCache)
	pages.onRead = cfg.Hooks.PageRead
	return &Runner{
		pool:    pool,
		store:   store,
		cfg:     cfg,
		log:     cfg.Logger.Named("runner"),
		cps:     cps,
		byName:  map[string][]*worker{},
		wake:    newBroadcast(),
		pages:   pages,
		nodeID:  newNodeID(),
		control: make(chan struct{}, 1),
		lagSQL:  `SELECT created_at FROM ` + ev + ` WHERE global_position > $1 ORDER BY global_position LIMIT 1`,
	}, nil
}

// NodeID identifies this runner process among the others ("host/pid/random").
func (r *Runner) NodeID() string { return r.nodeID }

// Checkpoints returns the checkpoint store the runner uses.
func (r *Runner) Checkpoints() *checkpoint.Store { return r.cps }

// Register adds a projection. It must be called before Run. The name must be non-empty and
// unique.
func (r *Runner) Register(p projector.Projection, opts ...Option) error {
	if p == nil {
		return errors.New("runner: nil projection")
	}
	return r.add(p.Name(), p, nil, opts)
}

// RegisterDetached adds a detached (side-effect) handler: at-least-once, outside any transaction.
func (r *Runner) RegisterDetached(d projector.Detached, opts ...Option) error {
	if d == nil {
		return errors.New("runner: nil handler")
	}
	return r.add(d.Name(), nil, d, opts)
}

func (r *Runner) add(name string, p projector.Projection, d projector.Detached, opts []Option) error {
	if name == "" {
		return errors.New("runner: projection name is empty")
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.started {
		return fmt.Errorf("register %q: %w", name, ErrAlreadyRunning)
	}
	if _, dup := r.byName[name]; dup {
		return fmt.Errorf("register %q: %w", name, ErrDuplicateName)
	}
	var f projector.Filter
	var impl any = p
	if p == nil {
		impl = d
	}
	f, _ = impl.(projector.Filter)
	version := 1
	if v, ok := impl.(projector.Versioned); ok {
		version = v.Version()
		if version < 1 {
			return fmt.Errorf("register %q: version %d; want 1 or more", name, version)
		}
	}
	parts := 1
	if pp, ok := impl.(projector.Partitioned); ok {
		parts = pp.Partitions()
		if parts < 1 || parts > 1024 {
			return fmt.Errorf("register %q: %d partitions; want 1 to 1024", name, parts)
		}
	}
	proto := &worker{proj: p, detached: d, match: projector.NewMatcher(f), policy: o.policy, replay: o.replayHistory}
	for part := 0; part < parts; part++ {
		w := r.newWorker(proto, checkpoint.Key{Projection: name, Version: version, Partitions: parts, Partition: part})
		r.workers = append(r.workers, w)
		r.byName[name] = append(r.byName[name], w)
	}
	return nil
}

// Run checks the events table, sets up the projections and runs them until ctx ends. Then it lets
// the batches in flight finish (for at most ShutdownTimeout, after which they are rolled back),
// waits for every goroutine it started, and returns nil. It returns an error when the start-up
// checks fail (missing trigger, sequence cache) or a projection's Setup fails.
func (r *Runner) Run(ctx context.Context) error {
	r.mu.Lock()
	if r.started {
		r.mu.Unlock()
		return ErrAlreadyRunning
	}
	r.started = true
	workers := append([]*worker(nil), r.workers...)
	r.mu.Unlock()

	tracker, err := r.start(ctx, workers)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while starting
		}
		return err
	}

	// hardCtx outlives ctx by the shutdown timeout: batches in flight use it.
	hardCtx, cancelHard := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelHard()
	stopTimer := context.AfterFunc(ctx, func() {
		t := time.NewTimer(r.cfg.ShutdownTimeout)
		defer t.Stop()
		select {
		case <-t.C:
			cancelHard()
		case <-hardCtx.Done():
		}
	})
	defer stopTimer()

	g, gctx := errgroup.WithContext(ctx)
	r.pages.start(gctx)
	defer r.pages.wait()
	g.Go(func() error {
		return tracker.Run(gctx, r.cfg.HorizonInterval, r.cfg.HorizonMinGap, func(err error) {
			r.log.Warn("horizon refresh failed", zap.Error(err))
		})
	})
	// Any horizon move may release a projection held at a hole.
	g.Go(func() error {
		for {
			select {
			case <-gctx.Done():
				return nil
			case <-tracker.Changed():
				r.wake.Signal()
			}
		}
	})
	g.Go(func() error { return r.listen(gctx) })
	// Polling: a notification is only a hint, and without a channel the only wake-up.
	g.Go(func() error {
		t := time.NewTicker(r.cfg.PollInterval)
		defer t.Stop()
		for {
			select {
			case <-gctx.Done():
				return nil
			case <-t.C:
				r.wake.Signal()
			}
		}
	})
	c := &coordinator{r: r, hardCtx: hardCtx, wake: r.control}
	g.Go(func() error { return c.coordinate(gctx) })
	err = g.Wait()
	tracker.Close(context.Background())
	cancelHard()
	r.log.Info("runner stopped")
	return err
}

// addDrainWorkers adds workers for an old set of partitions of w's projection, so that this
// process can drain them to their barrier while the partition count changes. Called during start.
func (r *Runner) addDrainWorkers(w *worker, parts int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, o := range r.workers {
		if o.key.Projection == w.key.Projection && o.key.Version == w.key.Version && o.parts == parts {
			return // added already
		}
	}
	for part := 0; part < parts; part++ {
		key := w.key
		key.Partitions, key.Partition = parts, part
		r.workers = append(r.workers, r.newWorker(w, key))
	}
}

// newWorker returns a worker for key that runs proto's projection with proto's options.
func (r *Runner) newWorker(proto *worker, key checkpoint.Key) *worker {
	log := r.log.With(zap.String("projection", key.Projection), zap.Int("partition", key.Partition))
	if key.Partitions > 1 {
		log = log.With(zap.Int("partitions", key.Partitions))
	}
	return &worker{
		r: r, key: key, parts: key.Partitions,
		proj: proto.proj, detached: proto.detached, match: proto.match, policy: proto.policy, replay: proto.replay,
		log:    log,
		state:  checkpoint.Running,
		stopAt: -1,
		reload: make(chan struct{}, 1),
	}
}

// reloadAll makes every worker of a projection (all partitions, also those draining) re-read its
// checkpoint, and wakes them.
func (r *Runner) reloadAll(projection string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, w := range r.workers {
		if w.key.Projection == projection {
			w.requestReload()
		}
	}
	r.wake.Signal()
}

// start runs the start-up checks, the first horizon tick and the projections' setup.
func (r *Runner) start(ctx context.Context, workers []*worker) (*horizon.Tracker, error) {
	seq, err := horizon.Check(ctx, r.pool, r.store.EventsTable())
	if err != nil {
		return nil, fmt.Errorf("runner: %w", err)
	}
	connCfg := r.pool.Config().ConnConfig.Copy()
	tracker := horizon.New(r.store.EventsTable(), seq, 0, func(ctx context.Context) (*pgx.Conn, error) {
		return pgx.ConnectConfig(ctx, connCfg)
	})
	if _, err := tracker.Tick(ctx); err != nil {
		tracker.Close(context.Background())
		return nil, fmt.Errorf("runner: %w", err)
	}
	r.mu.Lock()
	r.tracker = tracker
	r.mu.Unlock()
	for _, w := range workers {
		if err := w.setup(ctx); err != nil {
			return nil, err
		}
	}
	return tracker, nil
}

// listen wakes the projections on every notification and after every (re)connect.
func (r *Runner) listen(ctx context.Context) error {
	connCfg := r.pool.Config().ConnConfig.Copy()
	l := &pgxlisten.Listener{
		Connect: func(ctx context.Context) (*pgx.Conn, error) {
			return pgx.ConnectConfig(ctx, connCfg)
		},
		LogError: func(ctx context.Context, err error) {
			if ctx.Err() == nil {
				r.log.Warn("listener", zap.Error(err))
			}
		},
		ReconnectDelay: r.cfg.ReconnectDelay,
	}
	if r.cfg.NotifyChannel != "" {
		l.Handle(r.cfg.NotifyChannel, wakeHandler{r})
	}
	l.Handle(r.cfg.ControlChannel, controlHandler{r})
	if err := l.Listen(ctx); err != nil && ctx.Err() == nil {
		return fmt.Errorf("runner: listen: %w", err)
	}
	return nil
}

// controlHandler wakes the coordinator when another process joins or leaves, and after the
// listener (re)connects.
type controlHandler struct{ r *Runner }

func (h controlHandler) HandleNotification(_ context.Context, n *pgconn.Notification, _ *pgx.Conn) error {
	if n.Payload != h.r.nodeID {
		h.r.wakeCoordinator()
	}
	return nil
}

func (h controlHandler) HandleBacklog(_ context.Context, _ string, conn *pgx.Conn) error {
	if h.r.cfg.NotifyChannel == "" {
		if f := h.r.cfg.Hooks.ListenerConnected; f != nil {
			f(conn.PgConn().PID())
		}
		h.r.wake.Signal()
	}
	h.r.wakeCoordinator()
	return nil
}

func (r *Runner) wakeCoordinator() {
	select {
	case r.control <- struct{}{}:
	default:
	}
}

type wakeHandler struct{ r *Runner }

func (h wakeHandler) HandleNotification(context.Context, *pgconn.Notification, *pgx.Conn) error {
	h.r.wake.Signal()
	return nil
}

// HandleBacklog runs after each (re)connect, once LISTEN is in place: whatever was committed
// while the listener was away is picked up now.
func (h wakeHandler) HandleBacklog(_ context.Context, _ string, conn *pgx.Conn) error {
	if f := h.r.cfg.Hooks.ListenerConnected; f != nil {
		f(conn.PgConn().PID())
	}
	h.r.wake.Signal()
	return nil
}

// Wake makes every projection look for new events now. Appenders in the same process may call it
// after committing, instead of (or besides) a notify channel.
func (r *Runner) Wake() { r.wake.Signal() }

// Rebuild empties a projection's read model (its Reset, if it has one) and moves its checkpoint
// back to 0, in one transaction; the runner then replays it from the start. It also clears a
// stopped state.
func (r *Runner) Rebuild(ctx context.Context, name string) error {
	r.mu.Lock()
	ws, ok := r.byName[name]
	r.mu.Unlock()
	if !ok {
		return fmt.Errorf("rebuild %q: %w", name, ErrUnknownProjection)
	}
	if ws[0].detached != nil {
		return fmt.Errorf("rebuild %q: %w", name, ErrDetachedRebuild)
	}
	err := pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		for _, w := range ws {
			if err := r.cps.Ensure(ctx, tx, w.key, 0, checkpoint.Running); err != nil {
				return err
			}
			if _, err := r.cps.Load(ctx, tx, w.key); err != nil {
				return err
			}
		}
		if rs, ok := ws[0].proj.(projector.Resetter); ok {
			if err := rs.Reset(ctx, tx); err != nil {
				return fmt.Errorf("reset read model: %w", err)
			}
		}
		for _, w := range ws {
			if err := r.cps.Reset(ctx, tx, w.key, 0); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("rebuild %q: %w", name, err)
	}
	r.reloadAll(name)
	return nil
}

// Resume clears a stopped or paused projection's state so that it runs again from its
// checkpoint (the failing event is retried).
func (r *Runner) Resume(ctx context.Context, name string) error {
	r.mu.Lock()
	_, ok := r.byName[name]
	r.mu.Unlock()
	if !ok {
		return fmt.Errorf("resume %q: %w", name, ErrUnknownProjection)
	}
	if _, err := r.cps.SetState(ctx, r.pool, name, checkpoint.Running); err != nil {
		return fmt.Errorf("resume %q: %w", name, err)
	}
	r.reloadAll(name)
	return nil
}
