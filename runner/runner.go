package runner

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgxlisten"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/eventline/eventline"
	"github.com/eventline/eventline/eventstore/postgres"
	"github.com/eventline/eventline/internal/checkpoint"
	"github.com/eventline/eventline/internal/filter"
	"github.com/eventline/eventline/internal/horizon"
	"github.com/eventline/eventline/internal/lifecycle"
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
	ErrDetachedRebuild = lifecycle.ErrDetachedRebuild
	// ErrNotResettable: a projection without Reset (projector.Resetter) cannot be rebuilt: the
	// replay would apply every event a second time onto its read model.
	ErrNotResettable = lifecycle.ErrNotResettable
	// ErrWrongVersion: the projection runs a version this process does not have (Rebuild on a
	// process still running a retired version).
	ErrWrongVersion = lifecycle.ErrWrongVersion
	// ErrStuck: Run gave up waiting for a handler that ignored its context past ShutdownTimeout
	// plus ShutdownGrace. Its database session was terminated, so its transaction and the
	// checkpoint row lock are gone; its goroutine is left behind.
	ErrStuck = errors.New("runner: a handler did not return after the shutdown timeout")
)

// Runner runs projections. Create it with New, Register projections, then Run.
type Runner struct {
	pool    *pgxpool.Pool
	store   *postgres.Store
	cfg     Config
	log     *zap.Logger
	cps     *checkpoint.Store
	lc      *lifecycle.Store
	applied appliedChecker // WaitApplied's, on the same lifecycle store

	mu      sync.Mutex
	regs    []*registration
	byName  map[string]*registration
	workers map[checkpoint.Key]*worker
	nodes   []checkpoint.Node // the live processes as last read
	started bool
	tracker *horizon.Tracker
	wake    *broadcast
	// progress is signalled on every progress notification (any process's checkpoint moved).
	progress *broadcast
	pages    *pageReader
	life     runLife // Run's lifetime, for subscriptions (subscribe.go) and Health
	beats    heartbeats
	nodeID   string
	control  chan struct{} // wakes the ownership coordinator
	lagSQL   string
	lagsSQL  string          // the lag of many positions at once, in their order (live.go)
	events   sqlname.Name    // the store's events table
	names    eventline.Names // the store's, with defaults
}

// New returns a runner reading store's events table through pool.
func New(pool *pgxpool.Pool, store *postgres.Store, cfg Config) (*Runner, error) {
	if pool == nil || store == nil {
		return nil, errors.New("runner: pool and store are required")
	}
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	names := store.Names() // validated by the store, defaults filled in
	cps, err := checkpoint.New(names)
	if err != nil {
		return nil, fmt.Errorf("runner: %w", err)
	}
	events := sqlname.MustParse(names.EventsTable)
	ev := events.Quoted()
	pages := newPageReader(pool, store, cfg.BatchSize, cfg.PageBytes, cfg.PageCache, 0) // bounded in bytes by Run
	pages.onRead = cfg.Hooks.PageRead
	applied := newAppliedChecker(names)
	return &Runner{
		pool:     pool,
		store:    store,
		events:   events,
		names:    names,
		cfg:      cfg,
		log:      cfg.Logger.Named("runner"),
		cps:      cps,
		lc:       applied.lc,
		applied:  applied,
		byName:   map[string]*registration{},
		workers:  map[checkpoint.Key]*worker{},
		wake:     newBroadcast(),
		progress: newBroadcast(),
		pages:    pages,
		nodeID:   newNodeID(),
		control:  make(chan struct{}, 1),
		lagSQL:   `SELECT created_at FROM ` + ev + ` WHERE global_position > $1 ORDER BY global_position LIMIT 1`,
		lagsSQL: `SELECT extract(epoch FROM now() - (SELECT created_at FROM ` + ev + ` WHERE global_position > p.pos
			ORDER BY global_position LIMIT 1))::float8 FROM unnest($1::bigint[]) WITH ORDINALITY AS p(pos, n) ORDER BY p.n`,
	}, nil
}

// NodeID identifies this runner process among the others ("host/pid/random").
func (r *Runner) NodeID() string { return r.nodeID }

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
	o := options{sequenced: true}
	for _, opt := range opts {
		opt(&o)
	}
	o.retry = o.retry.withDefaults()
	if err := o.retry.validate(); err != nil {
		return fmt.Errorf("register %q: %w", name, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.started {
		return fmt.Errorf("register %q: %w", name, ErrAlreadyRunning)
	}
	if _, dup := r.byName[name]; dup {
		return fmt.Errorf("register %q: %w", name, ErrDuplicateName)
	}
	var impl any = p
	if p == nil {
		impl = d
	}
	if v, ok := impl.(projector.Validator); ok {
		if err := v.Validate(); err != nil {
			return fmt.Errorf("register %q: %w", name, err)
		}
	}
	f, _ := impl.(projector.Filter)
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
	_, resettable := impl.(projector.Resetter)
	g := &registration{
		r:    r,
		name: name,
		code: lifecycle.Code{Layout: lifecycle.Layout{Version: version, Partitions: parts},
			Detached: d != nil, Resettable: resettable && d == nil, Replay: o.replayHistory, Start: o.start},
		proj:       p,
		detached:   d,
		match:      filter.Compile(f),
		policy:     o.policy,
		sequenced:  o.policy == DeadLetter && o.sequenced,
		retry:      o.retry,
		startAtEnd: o.startAtEnd,
		log:        r.log.With(zap.String("projection", name), zap.Int("version", version)),
		wake:       make(chan struct{}, 1),
	}
	r.regs = append(r.regs, g)
	r.byName[name] = g
	return nil
}

// Run checks the events table, sets up the projections and runs them until ctx ends. Then it lets
// the batches in flight finish (for at most ShutdownTimeout, after which they are cancelled and
// rolled back), waits for every goroutine it started, and returns nil. A handler that ignores its
// context is given ShutdownGrace more; then its database session is terminated (so that its
// checkpoint row lock dies with it) and Run returns ErrStuck naming it. Run returns an error when
// the start-up checks fail (missing trigger, sequence cache) or a projection's Setup fails.
func (r *Runner) Run(ctx context.Context) error {
	r.mu.Lock()
	if r.started {
		r.mu.Unlock()
		return ErrAlreadyRunning
	}
	r.started = true
	regs := slices.Clone(r.regs)
	r.mu.Unlock()
	defer r.life.over()

	// Start-up: a database that goes away meanwhile (a restart, a failover) is waited for;
	// anything else (a missing trigger, a failing Setup) is returned.
	var tracker *horizon.Tracker
	for backoff := r.cfg.RetryMin; ; backoff = min(2*backoff, r.cfg.RetryMax) {
		var err error
		tracker, err = r.start(ctx, regs)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil // stopped while starting
		}
		if !isTransient(err) {
			return err
		}
		r.log.Warn("start-up failed, retrying", zap.Error(err), zap.Duration("delay", backoff))
		if !sleep(ctx, backoff) {
			return nil
		}
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
	r.pages.start(gctx, cmp.Or(r.cfg.PageCacheBytes, PageCacheBytesDefault+PageCacheBytesPerProjection*max(0, len(regs)-1)))
	r.life.up(tracker, gctx)
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
	for _, reg := range regs {
		g.Go(func() error {
			reg.manage(gctx)
			return nil
		})
	}
	c := &coordinator{r: r, hardCtx: hardCtx, wake: r.control}
	g.Go(func() error { return c.coordinate(gctx) })

	done := make(chan error, 1)
	go func() {
		err := g.Wait()
		r.pages.wait()
		tracker.Close(context.Background())
		done <- err
	}()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		grace := time.NewTimer(r.cfg.ShutdownTimeout + r.cfg.ShutdownGrace)
		defer grace.Stop()
		select {
		case err = <-done:
		case <-grace.C:
			return r.abandonStuck()
		}
	}
	cancelHard()
	r.log.Info("runner stopped")
	return err
}

// abandonStuck terminates the database sessions of the batches still in flight after the
// shutdown grace period (their transactions roll back and their row locks go) and returns
// ErrStuck naming their units.
func (r *Runner) abandonStuck() error {
	r.mu.Lock()
	var stuck []string
	var pids []uint32
	for _, w := range r.workers {
		w.mu.Lock()
		if w.batchPID != 0 {
			stuck = append(stuck, fmt.Sprintf("%s (batch running for %s)", w.key, time.Since(w.batchAt).Round(time.Millisecond)))
			pids = append(pids, w.batchPID)
		}
		w.mu.Unlock()
	}
	r.mu.Unlock()
	slices.Sort(stuck)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if len(pids) > 0 {
		conn, err := pgx.ConnectConfig(ctx, r.pool.Config().ConnConfig.Copy())
		if err == nil {
			for _, pid := range pids {
				if _, err := conn.Exec(ctx, `SELECT pg_terminate_backend($1)`, int64(pid)); err != nil {
					r.log.Warn("terminating a stuck batch failed", zap.Uint32("pid", pid), zap.Error(err))
				}
			}
			_ = conn.Close(ctx)
		} else {
			r.log.Warn("terminating stuck batches: connect failed", zap.Error(err))
		}
	}
	if len(stuck) == 0 {
		stuck = append(stuck, "no batch in flight; a hook or handler outside a batch")
	}
	err := fmt.Errorf("%w: %s", ErrStuck, strings.Join(stuck, ", "))
	r.log.Error("runner gave up waiting", zap.Error(err))
	return err
}

// start runs the start-up checks, the first horizon tick, and each projection's deploy
// transition and Setup.
func (r *Runner) start(ctx context.Context, regs []*registration) (*horizon.Tracker, error) {
	seq, err := horizon.Check(ctx, r.pool, r.events)
	if err != nil {
		return nil, fmt.Errorf("runner: %w", err)
	}
	inSQL, why, err := partitionsInSQL(ctx, r.pool, r.events)
	if err != nil {
		return nil, fmt.Errorf("runner: %w", err)
	}
	if !inSQL {
		log := r.log.Info
		for _, g := range regs {
			if g.code.Partitions > 1 {
				log = r.log.Warn
			}
		}
		log("partitions are filtered in memory: every partition's owner reads every event", zap.String("reason", why))
	}
	r.pages.partitionSQL = inSQL
	connCfg := r.pool.Config().ConnConfig.Copy()
	tracker := horizon.New(r.events, seq, 0, func(ctx context.Context) (*pgx.Conn, error) {
		return pgx.ConnectConfig(ctx, connCfg)
	})
	if _, err := tracker.Tick(ctx); err != nil {
		tracker.Close(context.Background())
		return nil, fmt.Errorf("runner: %w", err)
	}
	nodes, err := r.cps.Nodes(ctx, r.pool, r.cfg.NodeTimeout)
	if err != nil {
		tracker.Close(context.Background())
		return nil, fmt.Errorf("runner: %w", err)
	}
	r.mu.Lock()
	r.tracker, r.nodes = tracker, nodes
	r.mu.Unlock()
	for _, g := range regs {
		if g.startAtEnd {
			g.code.Start = tracker.Horizon()
		}
		if err := g.setup(ctx, r.declared(g.name, g.code.Version)); err != nil {
			tracker.Close(context.Background())
			return nil, err
		}
	}
	return tracker, nil
}

// declared returns the partition counts that the live processes running version of projection
// declare, this one included.
func (r *Runner) declared(projection string, version int) []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []int
	if g := r.byName[projection]; g != nil && g.code.Version == version {
		out = append(out, g.code.Partitions)
	}
	for _, n := range r.nodes {
		if n.ID == r.nodeID {
			continue
		}
		for _, spec := range n.Projections {
			if name, v, parts, ok := parseUnitSpec(spec); ok && name == projection && v == version {
				out = append(out, parts)
			}
		}
	}
	return out
}

// reloadProjection makes every worker of a projection re-read its checkpoint and record, and
// wakes them.
func (r *Runner) reloadProjection(projection string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, w := range r.workers {
		if k.Projection == projection {
			w.requestReload()
		}
	}
	r.wake.Signal()
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
	if r.names.NotifyChannel != "" {
		l.Handle(r.names.NotifyChannel, wakeHandler{r})
	}
	l.Handle(r.names.ControlChannel, controlHandler{r})
	l.Handle(r.names.ProgressChannel, progressHandler{r.progress})
	if err := l.Listen(ctx); err != nil && ctx.Err() == nil {
		return fmt.Errorf("runner: listen: %w", err)
	}
	return nil
}

// controlHandler wakes the coordinator and the projection managers when another process joins,
// leaves or changes a lifecycle, and after the listener (re)connects.
type controlHandler struct{ r *Runner }

func (h controlHandler) HandleNotification(_ context.Context, n *pgconn.Notification, _ *pgx.Conn) error {
	if n.Payload != h.r.nodeID {
		h.r.wakeCoordinator()
		h.r.wakeManagers()
	}
	return nil
}

func (h controlHandler) HandleBacklog(_ context.Context, _ string, conn *pgx.Conn) error {
	if h.r.names.NotifyChannel == "" {
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

func (r *Runner) wakeManagers() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, g := range r.regs {
		g.wakeManager()
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

func (r *Runner) registration(op, name string) (*registration, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	g, ok := r.byName[name]
	if !ok {
		return nil, fmt.Errorf("%s %q: %w", op, name, ErrUnknownProjection)
	}
	return g, nil
}

// Rebuild empties the active version's read model (its Reset) and moves every unit of it back to
// 0, in one transaction that waits for the batches in flight and also clears failures and the
// version's dead letters; the runner then replays it from the start. It refuses a detached
// handler (ErrDetachedRebuild), a projection without Reset (ErrNotResettable), and a process
// whose version is not the active one (ErrWrongVersion). A pending partition change completes
// at once; a pause stays.
func (r *Runner) Rebuild(ctx context.Context, name string) error {
	g, err := r.registration("rebuild", name)
	if err != nil {
		return err
	}
	if g.code.Detached {
		return fmt.Errorf("rebuild %q: %w", name, ErrDetachedRebuild)
	}
	if g.resetter() == nil {
		return fmt.Errorf("rebuild %q: %w", name, ErrNotResettable)
	}
	if err := g.rebuild(ctx, false); err != nil {
		return err
	}
	r.notifyControl(ctx)
	return nil
}

// Pause stops every unit of the projection (all versions and partitions) from applying events,
// until Resume; it survives cut-overs, partition switches and rebuilds. It returns once no batch
// of the projection is in flight any more.
func (r *Runner) Pause(ctx context.Context, name string) error {
	g, err := r.registration("pause", name)
	if err != nil {
		return err
	}
	if _, err := g.transition(ctx, "pause", func(tx pgx.Tx) (string, error) {
		return "paused", r.lc.Pause(ctx, tx, name)
	}); err != nil {
		return err
	}
	if err := r.lc.WaitIdle(ctx, r.pool, name); err != nil {
		return err
	}
	if err := g.refresh(ctx); err != nil {
		return err
	}
	r.notifyControl(ctx)
	return nil
}

// Resume clears the pause and every unit's failure, so that the projection runs again from its
// checkpoints (a failed event is tried again).
func (r *Runner) Resume(ctx context.Context, name string) error {
	g, err := r.registration("resume", name)
	if err != nil {
		return err
	}
	if _, err := g.transition(ctx, "resume", func(tx pgx.Tx) (string, error) {
		return "resumed", r.lc.Resume(ctx, tx, name)
	}); err != nil {
		return err
	}
	if err := g.refresh(ctx); err != nil {
		return err
	}
	r.reloadProjection(name)
	r.notifyControl(ctx)
	return nil
}
