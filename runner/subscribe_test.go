package runner_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/projector"
	"github.com/eventline/eventline/runner"
)

// subCollector records what one subscription delivers, from a goroutine of its own.
type subCollector struct {
	h    *harness
	mu   sync.Mutex
	got  []eventstore.PersistedEvent
	errs []error
	held map[int64]bool
	// start is the position the subscription started after, once resolved (-1 before).
	start atomic.Int64
	stop  func()
	done  chan struct{}
}

// subscribe ranges over r.Subscribe in a goroutine until the subscription ends or the test does.
func (h *harness) subscribe(ctx context.Context, r *runner.Runner, from runner.StartPosition, opts ...runner.SubscribeOption) *subCollector {
	ctx, cancel := context.WithCancel(ctx)
	c := &subCollector{h: h, held: map[int64]bool{}, done: make(chan struct{})}
	c.start.Store(-1)
	opts = append(opts,
		runner.WithStartedHookForTest(func(pos int64) { c.start.Store(pos); h.signal() }),
		runner.WithHeldHookForTest(func(pos int64) {
			c.mu.Lock()
			c.held[pos] = true
			c.mu.Unlock()
			h.signal()
		}))
	go func() {
		defer close(c.done)
		defer h.signal()
		for batch, err := range r.Subscribe(ctx, from, opts...) {
			c.mu.Lock()
			if err != nil {
				c.errs = append(c.errs, err)
			} else {
				c.got = append(c.got, batch...)
			}
			c.mu.Unlock()
			h.signal()
		}
	}()
	c.stop = func() {
		cancel()
		<-c.done
	}
	h.t.Cleanup(c.stop)
	return c
}

func (c *subCollector) positions() []int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]int64, len(c.got))
	for i, ev := range c.got {
		out[i] = ev.GlobalPosition
	}
	return out
}

func (c *subCollector) errors() []error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]error(nil), c.errs...)
}

func (c *subCollector) waitCount(n int) {
	c.h.t.Helper()
	c.h.waitFor(fmt.Sprintf("%d events delivered", n), func() bool { return len(c.positions()) >= n })
}

func (c *subCollector) waitHeld(pos int64) {
	c.h.t.Helper()
	c.h.waitFor(fmt.Sprintf("the subscription held at %d", pos), func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.held[pos]
	})
}

func (c *subCollector) waitStarted() int64 {
	c.h.t.Helper()
	c.h.waitFor("the subscription to start", func() bool { return c.start.Load() >= 0 })
	return c.start.Load()
}

func (c *subCollector) waitDone() {
	c.h.t.Helper()
	c.h.waitFor("the subscription to end", func() bool {
		select {
		case <-c.done:
			return true
		default:
			return false
		}
	})
}

func subConcat(lists ...[]int64) []int64 {
	var out []int64
	for _, l := range lists {
		out = append(out, l...)
	}
	return out
}

// From the beginning, after a position, and from the end: each delivers exactly the events after
// its start, in order, and goes on with the events appended later.
func TestSubscribeStartPositions(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	cfg := h.config()
	cfg.BatchSize = 3 // several pages
	r, _ := h.start(cfg)

	a := h.appendOne(ctx, "acct", "a", 4)
	b := h.appendOne(ctx, "acct", "b", 3)
	all := h.subscribe(ctx, r, runner.FromBeginning())
	after := h.subscribe(ctx, r, runner.After(a.LastPosition()))
	all.waitCount(7)
	after.waitCount(3)
	require.Equal(t, subConcat(a.GlobalPositions(), b.GlobalPositions()), all.positions())
	require.Equal(t, b.GlobalPositions(), after.positions())

	h.waitFor("the horizon past b", func() bool { return r.HorizonForTest() >= b.LastPosition() })
	end := h.subscribe(ctx, r, runner.FromEnd())
	require.Equal(t, b.LastPosition(), end.waitStarted(), "from the end: the horizon")
	c := h.appendOne(ctx, "acct", "c", 2)
	end.waitCount(2)
	all.waitCount(9)
	after.waitCount(5)
	require.Equal(t, c.GlobalPositions(), end.positions())
	require.Equal(t, subConcat(a.GlobalPositions(), b.GlobalPositions(), c.GlobalPositions()), all.positions())
	require.Equal(t, subConcat(b.GlobalPositions(), c.GlobalPositions()), after.positions())
	for _, s := range []*subCollector{all, after, end} {
		require.Empty(t, s.errors())
	}

	// A negative position is an error, yielded once.
	var errs []error
	for batch, err := range r.Subscribe(ctx, runner.After(-1)) {
		require.Nil(t, batch)
		errs = append(errs, err)
	}
	require.Len(t, errs, 1)
	require.ErrorContains(t, errs[0], "negative")
}

// A filter delivers only the listed aggregate and event types, from SQL behind the horizon and in
// memory at it.
func TestSubscribeFilter(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	r, _ := h.start(h.config())
	typed := func(aggType, id string, types ...string) eventstore.AppendResult {
		evs := make([]eventstore.Event, len(types))
		for i, typ := range types {
			evs[i] = eventstore.Event{AggregateType: aggType, AggregateID: id, EventType: typ, Payload: []byte(`{}`)}
		}
		res, err := h.store.Append(ctx, h.db.Pool, eventstore.Any(), evs)
		require.NoError(t, err)
		return res
	}
	acc1 := typed("account", "a", "Opened", "Deposited")
	_ = typed("order", "o", "Placed", "Deposited")
	acc2 := typed("account", "b", "Opened")
	h.waitFor("the horizon past the first events", func() bool { return r.HorizonForTest() >= acc2.LastPosition() })

	accounts := h.subscribe(ctx, r, runner.FromBeginning(), runner.WithFilter(projector.FilterSpec{Aggregates: []string{"account"}}))
	deposits := h.subscribe(ctx, r, runner.FromBeginning(), runner.WithFilter(projector.FilterSpec{Events: []string{"Deposited"}}))
	accounts.waitCount(3)
	deposits.waitCount(2)

	acc3 := typed("account", "a", "Withdrawn", "Deposited")
	ord2 := typed("order", "o", "Deposited", "Shipped")
	accounts.waitCount(5)
	deposits.waitCount(4)
	require.Equal(t, subConcat(acc1.GlobalPositions(), acc2.GlobalPositions(), acc3.GlobalPositions()), accounts.positions())
	require.Equal(t, committedPositions(t, h.db.Pool, "event_type = 'Deposited'"), deposits.positions())
	require.Contains(t, deposits.positions(), ord2.GlobalPositions()[0])
}

// A writer holds its transaction open after Append while later writers commit: the subscription
// stops before the open position, and delivers everything, in order, once it commits (G1, G2).
func TestSubscribeLateCommitIsNotSkipped(t *testing.T) {
	t.Parallel()
	for _, notify := range []bool{true, false} {
		t.Run(fmt.Sprintf("notify=%v", notify), func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t)
			h := newHarness(t, notify)
			r, _ := h.start(h.config())

			first := h.appendOne(ctx, "acct", "a", 2)
			slow, open := h.openAppend(ctx, "acct", "slow", 2)
			later := h.appendOne(ctx, "acct", "b", 3)
			require.Greater(t, later.GlobalPositions()[0], open.LastPosition())

			s := h.subscribe(ctx, r, runner.FromBeginning())
			s.waitHeld(open.GlobalPositions()[0])
			require.Equal(t, first.GlobalPositions(), s.positions(), "delivered up to the open position and no further")

			require.NoError(t, slow.Commit(ctx))
			want := subConcat(first.GlobalPositions(), open.GlobalPositions(), later.GlobalPositions())
			s.waitCount(len(want))
			require.Equal(t, want, s.positions())
			require.Empty(t, s.errors())
		})
	}
}

// Rolled-back appends are never delivered, and their holes are passed once their appenders are
// gone, even while an appender holding a higher position is open (G5).
func TestSubscribeRolledBackAppendIsNotDelivered(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	r, _ := h.start(h.config())

	doomed, gone := h.openAppend(ctx, "acct", "doomed", 1)
	committed := h.appendOne(ctx, "acct", "ok", 2)
	stillOpen, alsoGone := h.openAppend(ctx, "acct", "slow", 1)
	s := h.subscribe(ctx, r, runner.FromBeginning())
	s.waitHeld(gone.LastPosition())
	require.Empty(t, s.positions())

	require.NoError(t, doomed.Rollback(ctx))
	s.waitCount(2)
	require.Equal(t, committed.GlobalPositions(), s.positions())
	after := h.appendOne(ctx, "acct", "after", 1)
	s.waitHeld(alsoGone.LastPosition())
	require.Equal(t, committed.GlobalPositions(), s.positions())

	require.NoError(t, stillOpen.Rollback(ctx))
	s.waitCount(3)
	require.Equal(t, subConcat(committed.GlobalPositions(), after.GlobalPositions()), s.positions())
	require.Empty(t, s.errors())
}

// A subscription at a projection's position reads no page of its own: every page is read once
// for both (the PageRead hook counts database reads).
func TestSubscriptionSharesPagesWithProjections(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, false)
	const batch, pages = 10, 12
	for i := 0; i < pages; i++ {
		h.appendOne(ctx, "acct", fmt.Sprint(i), batch)
	}
	var mu sync.Mutex
	reads := map[int64][]int{}
	cfg := h.config()
	cfg.BatchSize = batch
	cfg.Hooks.PageRead = func(from int64, events int) {
		mu.Lock()
		reads[from] = append(reads[from], events)
		mu.Unlock()
	}
	r, _ := h.start(cfg, &recorder{name: "rec"})
	s1 := h.subscribe(ctx, r, runner.FromBeginning())
	s2 := h.subscribe(ctx, r, runner.FromBeginning())
	s1.waitCount(batch * pages)
	s2.waitCount(batch * pages)
	h.waitFor("the projection caught up", func() bool { return len(appliedPositions(t, h.db.Pool, "rec")) == batch*pages })
	require.Equal(t, committedPositions(t, h.db.Pool, ""), s1.positions())
	require.Equal(t, s1.positions(), s2.positions())

	mu.Lock()
	defer mu.Unlock()
	for from := int64(0); from < batch*pages; from += batch {
		require.Equal(t, []int{batch}, reads[from], "the page after %d is read once for the projection and both subscriptions", from)
	}
}

// Before Run, an iteration waits for it; when Run returns, it ends with ErrRunnerStopped, and an
// iteration started afterwards ends at once with it. A Run that fails to start ends the waiting
// iterations too.
func TestSubscribeFollowsRun(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	r, err := runner.New(h.db.Pool, h.store, h.config())
	require.NoError(t, err)
	early := h.subscribe(ctx, r, runner.FromBeginning())
	first := h.appendOne(ctx, "acct", "a", 2)
	time.Sleep(50 * time.Millisecond) // not delivered without Run
	require.Empty(t, early.positions())
	require.Equal(t, int64(-1), early.start.Load(), "waits for Run")

	stop := h.run(r)
	early.waitCount(2)
	require.Equal(t, first.GlobalPositions(), early.positions())
	stop()
	early.waitDone()
	errs := early.errors()
	require.Len(t, errs, 1)
	require.ErrorIs(t, errs[0], runner.ErrRunnerStopped)

	var got []error
	for batch, err := range r.Subscribe(ctx, runner.FromBeginning()) {
		require.Nil(t, batch)
		got = append(got, err)
	}
	require.Len(t, got, 1)
	require.ErrorIs(t, got[0], runner.ErrRunnerStopped)

	// A Run that fails its start-up checks.
	broken := newHarness(t, false)
	_, err = broken.db.Pool.Exec(ctx, `DROP TRIGGER eventline_append_lock ON events`)
	require.NoError(t, err)
	rb, err := runner.New(broken.db.Pool, broken.store, broken.config())
	require.NoError(t, err)
	waiting := broken.subscribe(ctx, rb, runner.FromBeginning())
	require.Error(t, rb.Run(ctx))
	waiting.waitDone()
	errs = waiting.errors()
	require.Len(t, errs, 1)
	require.ErrorIs(t, errs[0], runner.ErrRunnerStopped)
}

// Breaking out of the loop ends the subscription at once (goleak in TestMain checks that nothing
// is left running); cancelling ctx yields ctx.Err() once; Events flattens the batches.
func TestSubscribeBreakCancelAndEvents(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	cfg := h.config()
	cfg.BatchSize = 4
	r, _ := h.start(cfg)
	var want []int64
	for i := 0; i < 3; i++ {
		want = append(want, h.appendOne(ctx, "acct", fmt.Sprint(i), 5).GlobalPositions()...)
	}

	var first []int64
	for batch, err := range r.Subscribe(ctx, runner.FromBeginning()) {
		require.NoError(t, err)
		first = subPositions(batch)
		break
	}
	require.Equal(t, want[:4], first, "the first batch, then break")

	var one []int64
	for ev, err := range runner.Events(r.Subscribe(ctx, runner.After(want[1]))) {
		require.NoError(t, err)
		one = append(one, ev.GlobalPosition)
		if len(one) == 7 {
			break
		}
	}
	require.Equal(t, want[2:9], one)

	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var got []int64
	var errs []error
	for batch, err := range r.Subscribe(sctx, runner.FromBeginning()) {
		if err != nil {
			errs = append(errs, err)
			continue
		}
		got = append(got, subPositions(batch)...)
		if len(got) == len(want) {
			cancel() // the next step waits, sees ctx end, yields its error and ends
		}
	}
	require.Equal(t, want, got)
	require.Equal(t, []error{context.Canceled}, errs)
}

func subPositions(evs []eventstore.PersistedEvent) []int64 {
	out := make([]int64, len(evs))
	for i := range evs {
		out[i] = evs[i].GlobalPosition
	}
	return out
}

// resumingSub is a subscriber whose position lives outside eventline: it subscribes after the
// last position it received, breaks out every few batches and subscribes again from there, and
// follows its runner across restarts (ErrRunnerStopped: subscribe again on the new one).
type resumingSub struct {
	name         string
	runner       func() *runner.Runner
	opts         []runner.SubscribeOption
	restartEvery int // batches; 0: never breaks
	where        string

	mu      sync.Mutex
	got     []eventstore.PersistedEvent
	err     error
	resumes int
	stopped int
}

func (s *resumingSub) run(ctx context.Context, h *harness, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 1))
	var last int64
	for ctx.Err() == nil {
		batches, limit := 0, 0
		if s.restartEvery > 0 {
			limit = 1 + rng.IntN(s.restartEvery)
		}
		for batch, err := range s.runner().Subscribe(ctx, runner.After(last), s.opts...) {
			if err != nil {
				s.mu.Lock()
				switch {
				case errors.Is(err, runner.ErrRunnerStopped):
					s.stopped++
				case ctx.Err() != nil:
				default:
					s.err = err
				}
				s.mu.Unlock()
				if !errors.Is(err, runner.ErrRunnerStopped) {
					return
				}
				// The new runner is in place before the old one stops; at the very end there is
				// none: do not spin.
				subSleep(ctx, 10*time.Millisecond)
				break
			}
			s.mu.Lock()
			if batch[0].GlobalPosition <= last {
				s.err = fmt.Errorf("%s: batch starts at %d, after %d", s.name, batch[0].GlobalPosition, last)
			}
			s.got = append(s.got, batch...)
			s.mu.Unlock()
			last = batch[len(batch)-1].GlobalPosition
			h.signal()
			if batches++; limit > 0 && batches >= limit {
				s.mu.Lock()
				s.resumes++
				s.mu.Unlock()
				break
			}
		}
	}
}

func subSleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func (s *resumingSub) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.got)
}

// verify: every committed event the subscriber should see, exactly once, in global order, with
// the committed content (no rolled-back event, whose position is not in the table).
func (s *resumingSub) verify(t *testing.T, h *harness) {
	t.Helper()
	where := s.where
	if where == "" {
		where = "true"
	}
	rows, err := h.db.Pool.Query(context.Background(), `SELECT global_position, event_id FROM events WHERE `+where+` ORDER BY global_position`)
	require.NoError(t, err)
	type row struct {
		Pos int64
		ID  uuid.UUID
	}
	want, err := pgx.CollectRows(rows, pgx.RowToStructByPos[row])
	require.NoError(t, err)
	s.mu.Lock()
	defer s.mu.Unlock()
	require.NoError(t, s.err, s.name)
	got := make([]row, len(s.got))
	for i, ev := range s.got {
		got[i] = row{ev.GlobalPosition, ev.EventID}
	}
	require.Equal(t, len(want), len(got), "%s: delivered count", s.name)
	require.Equal(t, want, got, "%s: every committed event once, in global order", s.name)
}

// TestSubscribeRandomizedChecker is the randomized no-loss checker for subscriptions: 8 writers
// with random rollbacks, multi-aggregate transactions and slow commits, plus appenders that hold
// their transactions open for a while and then commit or roll back; subscribers on two runners
// (one of them restarted twice, its subscriber following it), some breaking out every few
// batches and subscribing again after their last position, one filtered; the listener connection
// of the first runner is killed twice; a projection runs beside them. Then each subscriber got
// every committed event it should see exactly once, in order, and nothing else (G1, G2, G5).
func TestSubscribeRandomizedChecker(t *testing.T) {
	t.Parallel()
	for round := 0; round < 2; round++ {
		t.Run(fmt.Sprint("round", round), func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t)
			h := newHarness(t, round == 0)
			wl := newWorkload(t, h, 8, 40)

			var listenerPID atomic.Uint32
			cfgA := h.config()
			cfgA.BatchSize = 7 + round*20
			cfgA.ReconnectDelay = 100 * time.Millisecond
			cfgA.Hooks.ListenerConnected = func(pid uint32) { listenerPID.Store(pid) }
			rA, _ := h.start(cfgA, &recorder{name: "all"})
			cfgB := h.config()
			cfgB.BatchSize = 5 + round*30
			var rB atomic.Pointer[runner.Runner]
			b, stopB := h.start(cfgB)
			rB.Store(b)

			onA := func() *runner.Runner { return rA }
			accounts := runner.WithFilter(projector.FilterSpec{Aggregates: []string{"account"}})
			subs := []*resumingSub{
				{name: "steady", runner: onA},
				{name: "resuming", runner: onA, restartEvery: 3},
				{name: "accounts", runner: onA, restartEvery: 5, opts: []runner.SubscribeOption{accounts}, where: "aggregate_type = 'account'"},
				{name: "on B", runner: rB.Load, restartEvery: 8},
			}
			subCtx, stopSubs := context.WithCancel(ctx)
			var subsDone sync.WaitGroup
			for i, s := range subs {
				subsDone.Go(func() { s.run(subCtx, h, uint64(round*10+i)) })
			}
			t.Cleanup(func() { stopSubs(); subsDone.Wait() })

			done := make(chan error, 1)
			go func() { done <- wl.run(ctx, false) }()
			heldDone := make(chan error, 1)
			go func() { heldDone <- subHeldAppenders(ctx, h, 6, uint64(round)) }()
			var lastKilled uint32
			for restart := 0; restart < 2; restart++ {
				h.waitFor("some progress", func() bool { return wl.commits.Load() > int64(40+restart*80) })
				h.waitFor("a listener to kill", func() bool { pid := listenerPID.Load(); return pid != 0 && pid != lastKilled })
				lastKilled = listenerPID.Load()
				var killed bool
				require.NoError(t, h.db.Pool.QueryRow(ctx, `SELECT pg_terminate_backend($1)`, int64(lastKilled)).Scan(&killed))
				require.True(t, killed)
				// The new runner B is in place before the old one stops.
				nb, nstop := h.start(cfgB)
				rB.Store(nb)
				stopB()
				stopB = nstop
			}
			require.NoError(t, <-done)
			require.NoError(t, <-heldDone)
			for _, s := range subs {
				want := len(committedPositions(t, h.db.Pool, s.where))
				h.waitFor(s.name+" to catch up", func() bool { return s.count() >= want })
			}
			wl.waitCaughtUp("all", "")
			stopSubs()
			subsDone.Wait()
			for _, s := range subs {
				s.verify(t, h)
				t.Logf("%s: %d events, %d resumes, %d runner stops", s.name, len(s.got), s.resumes, s.stopped)
			}
			require.Positive(t, subs[1].resumes)
			require.Positive(t, subs[3].stopped, "the subscriber on B saw its runner stop")
			wl.verify(t, "all", "")
		})
	}
}

// heldAppenders appends n times in transactions held open for 50 to 400 ms, each then committed
// or rolled back at random: late commits that subscribers must wait for, and holes they must
// pass.
func subHeldAppenders(ctx context.Context, h *harness, n int, seed uint64) error {
	rng := rand.New(rand.NewPCG(seed, 2))
	for i := 0; i < n; i++ {
		err := func() error {
			tx, err := h.db.Pool.Begin(ctx)
			if err != nil {
				return err
			}
			defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
			if _, err := h.store.Append(ctx, tx, eventstore.Any(), events("account", fmt.Sprint("held-", i), 1+rng.IntN(3))); err != nil {
				return err
			}
			subSleep(ctx, time.Duration(50+rng.IntN(350))*time.Millisecond)
			if rng.IntN(3) == 0 {
				return tx.Rollback(ctx)
			}
			return tx.Commit(ctx)
		}()
		if err != nil {
			return err
		}
	}
	return nil
}
