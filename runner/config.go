package runner

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"
)

// Defaults of Config.
const (
	BatchSizeDefault       = 500
	PollIntervalDefault    = time.Second
	HorizonIntervalDefault = 250 * time.Millisecond
	HorizonMinGapDefault   = time.Millisecond
	ReconnectDelayDefault  = time.Second
	ShutdownTimeoutDefault = 10 * time.Second
	ShutdownGraceDefault   = 5 * time.Second
	RetryMinDefault        = 50 * time.Millisecond
	RetryMaxDefault        = 5 * time.Second
	PageCacheDefault       = 64
	PageBytesDefault       = 1 << 20
	PageCacheBytesDefault  = 8 << 20
	// PageCacheBytesPerProjection is added to PageCacheBytesDefault for each registered
	// projection or detached handler after the first, when Config.PageCacheBytes is 0.
	PageCacheBytesPerProjection = 2 << 20
	PersistIdleDefault          = time.Second
	HeartbeatDefault            = time.Second
	LeaseDefault                = 5 * time.Second
	NodeTimeoutDefault          = 5 * time.Second
)

// Config configures a Runner. The zero value is valid: every field has a default. The tables and
// channels are not here: the runner takes them from its Store (postgres.StoreConfig.Names), so
// that it works on the tables the store appends to.
type Config struct {
	// Logger receives the runner's logs. Defaults to discarding them (nil).
	Logger *zap.Logger
	// BatchSize is the most events read in one page and handed to one Handle call. Defaults to
	// 500.
	BatchSize int
	// PageBytes bounds a page in bytes too: the payloads and metadata of its events. A page ends
	// before the event that would pass it, but always holds at least one event, which the
	// store's MaxEventSize bounds. Defaults to 1 MiB.
	PageBytes int
	// PageCache is the most pages kept so that projections at the same position share one read
	// (pages furthest behind are evicted first). Defaults to 64.
	PageCache int
	// PageCacheBytes bounds the cached pages by the memory their events take (payloads,
	// metadata, strings and about 200 bytes per event), and so, apart, the pages read with a
	// filter or partition in SQL. With PageBytes it bounds the runner's memory for events: the
	// caches, plus the page each running projection is applying and the pages being read
	// (docs/design.md, G7). Projections catching up together share pages while they are within
	// it of each other, so the default grows with their number: 8 MiB, plus 2 MiB for each
	// registered projection or detached handler after the first (PageCacheBytesDefault,
	// PageCacheBytesPerProjection), counted when Run starts. 0 means that default.
	PageCacheBytes int
	// PollInterval is how often projections look for events without a notification, and re-read
	// their checkpoints, busy or idle (to notice resets, resumes and dead-letter retries and
	// discards by other processes). Defaults to 1s.
	PollInterval time.Duration
	// HorizonInterval is how often the horizon is refreshed when no projection waits on it.
	// Defaults to 250ms.
	HorizonInterval time.Duration
	// HorizonMinGap is the least time between two horizon refreshes asked for by projections
	// waiting at a hole. Defaults to 1ms.
	HorizonMinGap time.Duration
	// ReconnectDelay is how long the listener waits before reconnecting. Defaults to 1s.
	ReconnectDelay time.Duration
	// ShutdownTimeout is how long Run lets the batches in flight finish after its context ends;
	// then they are cancelled (rolled back). Defaults to 10s.
	ShutdownTimeout time.Duration
	// ShutdownGrace is how much longer Run waits for a handler that ignores its cancelled
	// context; then it terminates the handler's database session (its transaction and row locks
	// go) and returns ErrStuck naming the unit, leaving the handler's goroutine behind.
	// Defaults to 5s.
	ShutdownGrace time.Duration
	// BatchTimeout bounds one batch: its context is cancelled after it, and the server ends the
	// batch's transaction too (statement_timeout and idle_in_transaction_session_timeout, set
	// for that transaction only), so that a hung handler cannot keep the checkpoint row locked.
	// The batch is then retried like any transient failure. Defaults to 0: no limit.
	BatchTimeout time.Duration
	// RetryMin and RetryMax bound the exponential backoff after transient errors. Default to
	// 50ms and 5s (RetryMax: RetryMin, when that is above 5s).
	RetryMin, RetryMax time.Duration
	// PersistIdle is how long a projection may keep, in memory only, progress over events its
	// filter skipped before it saves it. Defaults to 1s.
	PersistIdle time.Duration
	// HeartbeatInterval is how often this process announces itself, renews its leases and
	// rebalances work with the other runner processes. Defaults to 1s.
	HeartbeatInterval time.Duration
	// Lease is how long a projection stays owned by a process that stopped renewing (crashed,
	// cut off): its work moves to a live process within about Lease + HeartbeatInterval.
	// Defaults to 5s.
	Lease time.Duration
	// NodeTimeout: a process without a heartbeat for this long gets no new work. Defaults to 5s.
	NodeTimeout time.Duration
	// Hooks observe the runner (metrics, tests). Optional.
	Hooks Hooks
}

// Hooks are called synchronously from the runner's goroutines: keep them fast, and safe for
// concurrent use. Any may be nil.
type Hooks struct {
	// BatchCommitted: a batch of events was applied and its checkpoint committed.
	BatchCommitted func(b BatchInfo)
	// HandlerFailed: the event at position failed for good and policy was applied to it.
	HandlerFailed func(key Unit, position int64, err error, policy FailurePolicy)
	// Retrying: a transient database error, after which the batch is retried after delay; or a
	// handler error marked transient, after which the event is tried again after delay (WithRetry).
	Retrying func(key Unit, err error, delay time.Duration)
	// HeldAtGap: a projection waits at a position not yet settled.
	HeldAtGap func(key Unit, position int64)
	// ListenerConnected: the listener (re)connected; pid is its backend.
	ListenerConnected func(pid uint32)
	// Progressed: the projection's position moved to position (after a commit, or over events
	// its filter skipped or holes that are settled).
	Progressed func(key Unit, position int64)
	// OwnershipChanged: this process acquired (owned true) or gave up (false) a unit's lease.
	OwnershipChanged func(key Unit, owned bool)
	// PageRead: a page of events was read from the database (shared pages are read once).
	PageRead func(from int64, events int)
	// Heartbeat: after each heartbeat (every HeartbeatInterval), the process's view of the units
	// it has workers for, so that gauges keep moving when no batch commits (a stopped or hung
	// projection). Setting it makes each heartbeat also read the lag of the units that are
	// behind: one query.
	Heartbeat func(h HeartbeatInfo)
	// Handling wraps each call of a handler (see Handling): it is called as the call starts and
	// returns the context the call runs with (the handler's context, and the batch's database
	// work) and a function the runner calls once when the call ends, with how. A tracing adapter
	// starts a span here, so that the handler's spans are its children (package tracing/otel).
	// It must return a context derived from ctx.
	Handling func(ctx context.Context, h Handling) (context.Context, func(HandlingEnd))
}

// HeartbeatInfo is what the Heartbeat hook gets: the process's horizon and the units it has
// workers for (a unit it gave up or that was retired is no longer listed).
type HeartbeatInfo struct {
	// Horizon: every position at or below it is settled; the head as far as delivery goes.
	Horizon int64
	Units   []UnitInfo
}

// UnitInfo is one unit as its worker in this process sees it.
type UnitInfo struct {
	Unit Unit
	// Owned: this process holds the unit's lease and its worker runs.
	Owned bool
	// State is running, stopped, paused, building, waiting, retired or standby (as in Status).
	State string
	// Position is the unit's checkpoint as last read or written.
	Position int64
	// Lag is the age of the first event after Position, 0 when there is none; measured for
	// owned units only (0 for the others).
	Lag time.Duration
}

// UnitStates returns the values UnitInfo.State takes (a new slice on each call).
func UnitStates() []string {
	return []string{"running", "stopped", "paused", "building", "waiting", "retired", "standby"}
}

// BatchInfo describes a committed batch.
type BatchInfo struct {
	Unit     Unit
	Events   int
	From, To int64
	// Took is how long the batch took, from handing it to the handler to the commit.
	Took time.Duration
	// Lag is the age of the batch's last event when the batch committed.
	Lag time.Duration
}

func (c Config) withDefaults() Config {
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	setInt := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	setDur := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	setInt(&c.BatchSize, BatchSizeDefault)
	setInt(&c.PageCache, PageCacheDefault)
	setInt(&c.PageBytes, PageBytesDefault)
	setDur(&c.PollInterval, PollIntervalDefault)
	setDur(&c.HorizonInterval, HorizonIntervalDefault)
	setDur(&c.HorizonMinGap, HorizonMinGapDefault)
	setDur(&c.ReconnectDelay, ReconnectDelayDefault)
	setDur(&c.ShutdownTimeout, ShutdownTimeoutDefault)
	setDur(&c.ShutdownGrace, ShutdownGraceDefault)
	setDur(&c.RetryMin, RetryMinDefault)
	setDur(&c.RetryMax, max(c.RetryMin, RetryMaxDefault)) // as Retry does: a RetryMin above the default raises it
	setDur(&c.PersistIdle, PersistIdleDefault)
	setDur(&c.HeartbeatInterval, HeartbeatDefault)
	setDur(&c.Lease, LeaseDefault)
	setDur(&c.NodeTimeout, NodeTimeoutDefault)
	return c
}

func (c Config) validate() error {
	for _, f := range []struct {
		name string
		bad  bool
		why  string // the rule broken, with the values involved
	}{
		{"BatchSize", c.BatchSize < 1, fmt.Sprintf("%d (want 1 or more)", c.BatchSize)},
		{"PageCache", c.PageCache < 1, fmt.Sprintf("%d (want 1 or more)", c.PageCache)},
		{"PageBytes", c.PageBytes < 1, fmt.Sprintf("%d (want 1 or more)", c.PageBytes)},
		{"PageCacheBytes", c.PageCacheBytes < 0, fmt.Sprintf("%d (want 0 or more)", c.PageCacheBytes)},
		{"PollInterval", c.PollInterval < 0, negative(c.PollInterval)},
		{"HorizonInterval", c.HorizonInterval < 0, negative(c.HorizonInterval)},
		{"HorizonMinGap", c.HorizonMinGap < 0, negative(c.HorizonMinGap)},
		{"ReconnectDelay", c.ReconnectDelay < 0, negative(c.ReconnectDelay)},
		{"ShutdownTimeout", c.ShutdownTimeout < 0, negative(c.ShutdownTimeout)},
		{"ShutdownGrace", c.ShutdownGrace < 0, negative(c.ShutdownGrace)},
		{"BatchTimeout", c.BatchTimeout < 0, negative(c.BatchTimeout)},
		{"RetryMin", c.RetryMin < 0, negative(c.RetryMin)},
		{"RetryMax", c.RetryMax < c.RetryMin, fmt.Sprintf("%s (below RetryMin %s)", c.RetryMax, c.RetryMin)},
		{"PersistIdle", c.PersistIdle < 0, negative(c.PersistIdle)},
		{"HeartbeatInterval", c.HeartbeatInterval <= 0, negative(c.HeartbeatInterval)},
		{"Lease", c.Lease < 2*c.HeartbeatInterval,
			fmt.Sprintf("%s (want at least twice HeartbeatInterval %s)", c.Lease, c.HeartbeatInterval)},
		{"NodeTimeout", c.NodeTimeout <= c.HeartbeatInterval,
			fmt.Sprintf("%s (want more than HeartbeatInterval %s)", c.NodeTimeout, c.HeartbeatInterval)},
	} {
		if f.bad {
			return fmt.Errorf("runner config: invalid %s %s", f.name, f.why)
		}
	}
	return nil
}

func negative(d time.Duration) string { return fmt.Sprintf("%s (want 0 for the default, or more)", d) }

// FailurePolicy says what happens when a handler fails on an event for good.
type FailurePolicy int

const (
	// Stop the projection at the event before the failing one; Status shows why. The default.
	Stop FailurePolicy = iota
	// DeadLetter parks the failing event in the dead-letter table and goes on. The later events
	// of the same aggregate are parked behind it (unless WithSequencedDeadLetters(false)), so
	// that a retry applies them in order.
	DeadLetter
)

func (p FailurePolicy) String() string {
	if p == DeadLetter {
		return "dead-letter"
	}
	return "stop"
}

// Option configures one registered projection.
type Option func(*options)

type options struct {
	policy        FailurePolicy
	replayHistory bool
	sequenced     bool
	retry         Retry
	start         int64
	startAtEnd    bool
}

// WithStartAt makes a projection (or detached handler) that was never deployed start after
// position, instead of from the beginning: events at or before it are never handed to it. It only
// matters the first time: a projection that has a lifecycle record keeps its checkpoints, and a
// new version of it is built from the beginning. To move an existing projection, use
// `eventline reset --to POSITION NAME` on a stopped or paused one.
func WithStartAt(position int64) Option {
	return func(o *options) { o.start, o.startAtEnd = max(0, position), false }
}

// WithStartAtEnd makes a projection that was never deployed start at the end of the log as it is
// when the runner starts (the horizon: every position at or below it is settled), so that only
// events appended afterwards are handed to it. Like WithStartAt, only the first deploy uses it.
func WithStartAtEnd() Option {
	return func(o *options) { o.start, o.startAtEnd = 0, true }
}

// WithSequencedDeadLetters sets whether, under the DeadLetter policy, the later events of an
// aggregate with a parked event are parked behind it (true, the default), so that the
// aggregate's events are applied in order even through a poison event; or handled as they come
// (false), in which case a retried dead letter is applied after later events of its aggregate.
func WithSequencedDeadLetters(on bool) Option {
	return func(o *options) { o.sequenced = on }
}

// WithReplayHistory makes a new version of a detached handler start from position 0 like a
// projection, firing its side effects again for the whole history. Without it, a new version of a
// detached handler starts where the previous version is.
func WithReplayHistory() Option {
	return func(o *options) { o.replayHistory = true }
}

// WithFailurePolicy sets what happens when the projection's handler fails on an event.
func WithFailurePolicy(p FailurePolicy) Option {
	return func(o *options) { o.policy = p }
}

// JoinHooks returns Hooks that call each of hs's functions in turn (nil ones are skipped), so that
// metrics, logging and test hooks can be combined.
func JoinHooks(hs ...Hooks) Hooks {
	var out Hooks
	for _, h := range hs {
		h := h
		out.BatchCommitted = join1(out.BatchCommitted, h.BatchCommitted)
		out.Progressed = join2(out.Progressed, h.Progressed)
		out.HeldAtGap = join2(out.HeldAtGap, h.HeldAtGap)
		out.OwnershipChanged = join2(out.OwnershipChanged, h.OwnershipChanged)
		out.ListenerConnected = join1(out.ListenerConnected, h.ListenerConnected)
		out.PageRead = join2(out.PageRead, h.PageRead)
		out.Heartbeat = join1(out.Heartbeat, h.Heartbeat)
		out.Handling = joinHandling(out.Handling, h.Handling)
		if a, b := out.Retrying, h.Retrying; b != nil {
			out.Retrying = func(k Unit, err error, d time.Duration) {
				if a != nil {
					a(k, err, d)
				}
				b(k, err, d)
			}
		}
		if a, b := out.HandlerFailed, h.HandlerFailed; b != nil {
			out.HandlerFailed = func(k Unit, pos int64, err error, p FailurePolicy) {
				if a != nil {
					a(k, pos, err, p)
				}
				b(k, pos, err, p)
			}
		}
	}
	return out
}

func join1[A any](a, b func(A)) func(A) {
	if a == nil || b == nil {
		if a == nil {
			return b
		}
		return a
	}
	return func(x A) { a(x); b(x) }
}

func join2[A, B any](a, b func(A, B)) func(A, B) {
	if a == nil || b == nil {
		if a == nil {
			return b
		}
		return a
	}
	return func(x A, y B) { a(x, y); b(x, y) }
}
