package runner_test

// One focused test per lifecycle problem found in review (issue 7's numbered list): each
// reproduced a lost, duplicated or stalled event on the old single-state design.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/internal/checkpoint"
	"github.com/eventline/eventline/internal/lifecycle"
	"github.com/eventline/eventline/runner"
)

// vproj is a versioned, partitioned projection that records what it applies in table applied
// under the name "<name>@v<version>", and counts its resets in table resets.
type vproj struct {
	name           string
	version, parts int
	fail           atomic.Pointer[func(eventstore.PersistedEvent) error]
	activations    atomic.Int32
	blockActivate  atomic.Bool
}

func newVProj(name string, version, parts int) *vproj {
	return &vproj{name: name, version: version, parts: parts}
}

func (p *vproj) Name() string    { return p.name }
func (p *vproj) Version() int    { return p.version }
func (p *vproj) Partitions() int { return p.parts }
func (p *vproj) label() string   { return fmt.Sprintf("%s@v%d", p.name, p.version) }

func (p *vproj) failWith(f func(eventstore.PersistedEvent) error) { p.fail.Store(&f) }

func (p *vproj) Setup(ctx context.Context, tx pgx.Tx) error {
	if err := createApplied(ctx, tx); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS resets (projection text NOT NULL)`)
	return err
}

func (p *vproj) Handle(ctx context.Context, tx pgx.Tx, events []eventstore.PersistedEvent) error {
	for _, ev := range events {
		if f := p.fail.Load(); f != nil && *f != nil {
			if err := (*f)(ev); err != nil {
				return err
			}
		}
		if err := insertApplied(ctx, tx, p.label(), ev); err != nil {
			return err
		}
	}
	return nil
}

func (p *vproj) Reset(ctx context.Context, tx pgx.Tx) error {
	if _, err := tx.Exec(ctx, `DELETE FROM applied WHERE projection = $1`, p.label()); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, `INSERT INTO resets VALUES ($1)`, p.label())
	return err
}

func (p *vproj) Activate(context.Context, pgx.Tx) error {
	if p.blockActivate.Load() {
		return errors.New("activation blocked by the test")
	}
	p.activations.Add(1)
	return nil
}

// noResetProj is a projection without Reset.
type noResetProj struct{ name string }

func (p noResetProj) Name() string { return p.name }
func (p noResetProj) Setup(ctx context.Context, tx pgx.Tx) error {
	return createApplied(ctx, tx)
}
func (p noResetProj) Handle(ctx context.Context, tx pgx.Tx, events []eventstore.PersistedEvent) error {
	return (&recorder{name: p.name}).Handle(ctx, tx, events)
}

// startProc starts an in-process runner (a "process") with the given registrations.
func (h *harness) startProc(cfg runner.Config, ps ...any) (*runner.Runner, func()) {
	h.t.Helper()
	r, err := runner.New(h.db.Pool, h.store, cfg)
	require.NoError(h.t, err)
	for _, p := range ps {
		switch p := p.(type) {
		case projector2:
			require.NoError(h.t, r.Register(p))
		case detached2:
			require.NoError(h.t, r.RegisterDetached(p))
		default:
			h.t.Fatalf("not a projection: %T", p)
		}
	}
	return r, h.run(r)
}

type projector2 interface {
	Name() string
	Handle(context.Context, pgx.Tx, []eventstore.PersistedEvent) error
}

type detached2 interface {
	Name() string
	HandleEvent(context.Context, eventstore.PersistedEvent) error
}

// resets returns how often a projection version's read model was emptied.
func (h *harness) resets(label string) int {
	h.t.Helper()
	var n int
	require.NoError(h.t, h.db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM resets WHERE projection = $1`, label).Scan(&n))
	return n
}

// requireExactlyOnce checks that label applied every committed event exactly once, each
// aggregate in version order.
func (h *harness) requireExactlyOnce(label string) {
	h.t.Helper()
	want := committedPositions(h.t, h.db.Pool, "")
	h.waitFor(label+" to apply everything", func() bool { return len(appliedPositions(h.t, h.db.Pool, label)) >= len(want) })
	got := appliedPositions(h.t, h.db.Pool, label)
	sorted := slices.Clone(got)
	slices.Sort(sorted)
	require.Equal(h.t, want, sorted, "%s: every event exactly once", label)
	rows, err := h.db.Pool.Query(context.Background(), `SELECT aggregate_id, aggregate_version FROM applied WHERE projection = $1 ORDER BY seq`, label)
	require.NoError(h.t, err)
	last := map[string]int64{}
	for rows.Next() {
		var id string
		var v int64
		require.NoError(h.t, rows.Scan(&id, &v))
		require.Greater(h.t, v, last[id], "%s: aggregate %s in version order", label, id)
		last[id] = v
	}
	require.NoError(h.t, rows.Err())
}

func (h *harness) fastConfig() runner.Config {
	cfg := h.config()
	cfg.PollInterval = 100 * time.Millisecond
	cfg.HeartbeatInterval, cfg.Lease, cfg.NodeTimeout = 100*time.Millisecond, 2*time.Second, 2*time.Second
	return cfg
}

// pendingSwitch brings projection "ps" (v1, 2 partitions) to a pending switch to 4 partitions
// that cannot complete: one old partition was stopped by a failing handler below the barrier.
// The 4-partition process (a healthy handler) is running and returned.
func pendingSwitch(t *testing.T, h *harness) (p4 *vproj, r4 *runner.Runner, stop4 func()) {
	ctx := testCtx(t)
	positions := h.appendMany(ctx, 20)
	p2 := newVProj("ps", 1, 2)
	p2.failWith(func(ev eventstore.PersistedEvent) error {
		if ev.GlobalPosition == positions[10] {
			return errBoom
		}
		return nil
	})
	r2, stop2 := h.startProc(h.fastConfig(), p2)
	h.waitFor("one old partition to stop", func() bool {
		for _, st := range statusOf(t, r2, "ps") {
			if st.State == "stopped" {
				return true
			}
		}
		return false
	})
	stop2()
	p4 = newVProj("ps", 1, 4)
	r4, stop4 = h.startProc(h.fastConfig(), p4)
	h.waitFor("the switch to 4 partitions to be pending", func() bool {
		rec := h.record("ps")
		return rec.Target == lifecycle.Layout{Version: 1, Partitions: 4} && rec.Mode == lifecycle.Switch
	})
	return p4, r4, stop4
}

// Item 4: after a completed change 2 -> 4, a process with the old count starts (an old replica):
// it runs the recorded layout; nothing stalls. Once only old-count processes are left (a full
// rollback), the count switches back, and nothing is lost or applied twice.
func TestPartitionChangeThenOldCountStarts(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	_, stop2 := h.startProc(h.fastConfig(), newVProj("pc", 1, 2))
	h.appendMany(ctx, 10)
	stop2()
	p4 := newVProj("pc", 1, 4)
	_, stop4 := h.startProc(h.fastConfig(), p4)
	h.waitFor("the change to 4 partitions", func() bool {
		rec := h.record("pc")
		return rec.Active.Partitions == 4 && !rec.HasTarget()
	})
	_, stopOld := h.startProc(h.fastConfig(), newVProj("pc", 1, 2))
	h.appendMany(ctx, 10)
	h.requireExactlyOnce(p4.label())
	require.Equal(t, 4, h.record("pc").Active.Partitions, "an old replica does not change the count back")
	stop4() // a full rollback: only the old count is left
	h.waitFor("the switch back to 2 partitions", func() bool {
		rec := h.record("pc")
		return rec.Active.Partitions == 2 && !rec.HasTarget()
	})
	h.appendMany(ctx, 10)
	h.requireExactlyOnce(p4.label())
	stopOld()
}

// Item 5: the old count restarts while a change is pending (the deploy rolled back): the change
// is cancelled and the old partitions go on past the barrier of the cancelled change.
func TestPendingPartitionChangeCancelledByRollback(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	p4, _, stop4 := pendingSwitch(t, h)
	barrier := h.record("ps").Barrier
	stop4()
	r2, _ := h.startProc(h.fastConfig(), newVProj("ps", 1, 2))
	h.waitFor("the change to be cancelled", func() bool { return !h.record("ps").HasTarget() })
	require.Equal(t, lifecycle.Layout{Version: 1, Partitions: 2}, h.record("ps").Active)
	require.NoError(t, r2.Resume(ctx, "ps"))
	more := h.appendMany(ctx, 5)
	require.Greater(t, more[0], barrier, "the old partitions go past the cancelled barrier")
	h.appendMany(ctx, 5)
	h.requireExactlyOnce(p4.label())
}

// Item 6: Runner.Rebuild during a pending partition change completes the change at once and
// replays once: nothing applied twice.
func TestRebuildDuringPartitionChange(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	p4, r4, _ := pendingSwitch(t, h)
	require.NoError(t, r4.Rebuild(ctx, "ps"))
	rec := h.record("ps")
	require.Equal(t, lifecycle.Layout{Version: 1, Partitions: 4}, rec.Active)
	require.False(t, rec.HasTarget())
	h.requireExactlyOnce(p4.label())
	require.Equal(t, 1, h.resets(p4.label()))
}

// Item 7: a rebuild request (the CLI's) during a pending partition change empties the read
// model once and is cleared.
func TestRebuildRequestDuringPartitionChange(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	p4, _, _ := pendingSwitch(t, h)
	h.inTx(func(tx pgx.Tx) error { return h.lc().RequestRebuild(ctx, tx, "ps") })
	h.waitFor("the request to be carried out", func() bool { return !h.record("ps").RebuildPending() })
	h.requireExactlyOnce(p4.label())
	h.appendMany(ctx, 3)
	h.requireExactlyOnce(p4.label())
	require.Equal(t, 1, h.resets(p4.label()), "emptied once for one request")
}

// Items 8 and 9: a building version stopped by a failing handler, then redeployed with another
// partition count (the target is replaced) or resumed, still cuts over properly: Activate runs
// once, v1 is retired, v2 applies everything exactly once.
func TestStoppedBuildingVersion(t *testing.T) {
	t.Parallel()
	for _, how := range []string{"resumed", "repartitioned"} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t)
			h := newHarness(t, true)
			positions := h.appendMany(ctx, 20)
			v1 := newVProj("bv", 1, 1)
			h.startProc(h.fastConfig(), v1)
			h.waitFor("v1", func() bool { return len(appliedPositions(t, h.db.Pool, v1.label())) == 20 })
			v2 := newVProj("bv", 2, 2)
			v2.failWith(func(ev eventstore.PersistedEvent) error {
				if ev.GlobalPosition == positions[7] {
					return errBoom
				}
				return nil
			})
			r2, stop2 := h.startProc(h.fastConfig(), v2)
			h.waitFor("the build to stop", func() bool {
				for _, st := range statusOf(t, r2, "bv") {
					if st.State == "stopped" {
						return true
					}
				}
				return false
			})
			require.Equal(t, lifecycle.Layout{Version: 1, Partitions: 1}, h.record("bv").Active)
			final := v2
			if how == "resumed" {
				v2.failWith(nil)
				require.NoError(t, r2.Resume(ctx, "bv"))
			} else {
				stop2()
				final = newVProj("bv", 2, 3)
				h.startProc(h.fastConfig(), final)
			}
			h.waitFor("v2 to take over", func() bool { return h.record("bv").Active.Version == 2 })
			rec := h.record("bv")
			require.False(t, rec.HasTarget())
			require.EqualValues(t, 1, final.activations.Load(), "Activate ran once")
			if final != v2 {
				require.Zero(t, v2.activations.Load())
			}
			h.appendMany(ctx, 5)
			h.requireExactlyOnce(final.label())
			if how == "repartitioned" {
				require.Equal(t, 3, rec.Active.Partitions)
			}
			cps, err := r2.CheckpointsForTest().Projection(ctx, h.db.Pool, "bv", false)
			require.NoError(t, err)
			for _, cp := range cps {
				require.Equal(t, 2, cp.Version, "v1's rows are gone: it is retired")
			}
		})
	}
}

func statusOf(t *testing.T, r *runner.Runner, name string) []runner.ProjectionStatus {
	t.Helper()
	sts, err := r.Status(context.Background())
	require.NoError(t, err)
	var out []runner.ProjectionStatus
	for _, st := range sts {
		if st.Name == name {
			out = append(out, st)
		}
	}
	return out
}

// Item 10: a pause holds every version, and survives the cut-over: v2 catches up while its
// Activate fails, the projection is paused, Activate then succeeds and v2 takes over paused.
func TestPauseSurvivesCutOver(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	v1 := newVProj("pz", 1, 1)
	h.startProc(h.fastConfig(), v1)
	h.appendMany(ctx, 10)
	h.waitFor("v1", func() bool { return len(appliedPositions(t, h.db.Pool, v1.label())) == 10 })
	v2 := newVProj("pz", 2, 1)
	v2.blockActivate.Store(true)
	r2, _ := h.startProc(h.fastConfig(), v2)
	h.waitFor("v2 to catch up", func() bool { return len(appliedPositions(t, h.db.Pool, v2.label())) == 10 })
	require.NoError(t, r2.Pause(ctx, "pz"))
	v2.blockActivate.Store(false)
	h.waitFor("v2 to take over", func() bool { return h.record("pz").Active.Version == 2 })
	require.True(t, h.record("pz").Paused, "the pause survived the cut-over")
	h.appendMany(ctx, 5)
	h.waitFor("v2's status to say paused", func() bool {
		sts := statusOf(t, r2, "pz")
		return len(sts) == 1 && sts[0].State == "paused"
	})
	r2.Wake()
	require.Len(t, appliedPositions(t, h.db.Pool, v2.label()), 10, "paused: nothing applied")
	require.Len(t, appliedPositions(t, h.db.Pool, v1.label()), 10, "retired: nothing applied")
	require.NoError(t, r2.Resume(ctx, "pz"))
	h.requireExactlyOnce(v2.label())
}

// Item 11: a process still running a retired version cannot bring it back: Rebuild is refused,
// its status says it idles, and a rebuild request is carried out by the active version's process.
func TestRetiredVersionNeverComesBack(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	h.appendMany(ctx, 10)
	v1 := newVProj("rv", 1, 1)
	r1, _ := h.startProc(h.fastConfig(), v1)
	v2 := newVProj("rv", 2, 1)
	h.startProc(h.fastConfig(), v2)
	h.waitFor("v2 to take over", func() bool { return h.record("rv").Active.Version == 2 })
	frozen := appliedPositions(t, h.db.Pool, v1.label())
	require.ErrorIs(t, r1.Rebuild(ctx, "rv"), runner.ErrWrongVersion)
	sts := statusOf(t, r1, "rv")
	require.Len(t, sts, 1)
	require.Equal(t, "retired", sts[0].State)
	require.Contains(t, sts[0].LastError, "retired")
	h.inTx(func(tx pgx.Tx) error { return h.lc().RequestRebuild(ctx, tx, "rv") })
	h.waitFor("the request to be carried out", func() bool { return !h.record("rv").RebuildPending() })
	h.appendMany(ctx, 3)
	h.requireExactlyOnce(v2.label())
	require.Equal(t, 1, h.resets(v2.label()))
	require.Zero(t, h.resets(v1.label()))
	require.Equal(t, frozen, appliedPositions(t, h.db.Pool, v1.label()), "the retired version applied nothing more")
	require.Equal(t, 2, h.record("rv").Active.Version)
}

// pmailer is a partitioned, versioned detached handler that can be made to fail.
type pmailer struct {
	version, parts int
	mu             sync.Mutex
	sent           map[int64]int
	failAt         atomic.Int64
}

func (m *pmailer) Name() string    { return "pm" }
func (m *pmailer) Version() int    { return m.version }
func (m *pmailer) Partitions() int { return m.parts }
func (m *pmailer) HandleEvent(_ context.Context, ev eventstore.PersistedEvent) error {
	if ev.GlobalPosition == m.failAt.Load() {
		return errBoom
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sent[ev.GlobalPosition]++
	return nil
}

// Item 12: a new version of a partitioned detached handler whose old partitions are at
// different positions: the old ones drain to the barrier before the new ones start, so every
// event is delivered at least once by one version or the other. When the old version's processes
// are all gone first (a "recreate" deploy), nobody can drain them: the new version takes over from
// the lowest old position instead of waiting for ever (TakeOverSwitch).
func TestDetachedNewVersionAtLeastOnce(t *testing.T) {
	t.Parallel()
	for _, oldGone := range []bool{false, true} {
		t.Run(fmt.Sprintf("old processes gone=%v", oldGone), func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t)
			h := newHarness(t, true)
			positions := h.appendMany(ctx, 40)
			v1 := &pmailer{version: 1, parts: 2, sent: map[int64]int{}}
			v1.failAt.Store(positions[5]) // one partition stops early: it is far behind the other
			r1, stop1 := h.startProc(h.fastConfig(), v1)
			h.waitFor("one v1 partition to stop", func() bool {
				for _, st := range statusOf(t, r1, "pm") {
					if st.State == "stopped" {
						return true
					}
				}
				return false
			})
			if oldGone {
				stop1()
			}
			v2 := &pmailer{version: 2, parts: 2, sent: map[int64]int{}}
			r2, _ := h.startProc(h.fastConfig(), v2)
			h.waitFor("the switch to v2 to be pending", func() bool { return h.record("pm").Target.Version == 2 })
			if oldGone {
				require.NoError(t, r2.Resume(ctx, "pm"))
			} else {
				v1.failAt.Store(0)
				require.NoError(t, r1.Resume(ctx, "pm"))
			}
			h.waitFor("v2 to take over", func() bool { return h.record("pm").Active.Version == 2 })
			stop1()
			more := h.appendMany(ctx, 5)
			all := append(slices.Clone(positions), more...)
			h.waitFor("every event delivered", func() bool {
				v1.mu.Lock()
				defer v1.mu.Unlock()
				v2.mu.Lock()
				defer v2.mu.Unlock()
				for _, p := range all {
					if v1.sent[p]+v2.sent[p] == 0 {
						return false
					}
				}
				return true
			})
		})
	}
}

// Item 13: dead letters are cleared by a rebuild of their version, in the same transaction: the
// replay applies the once-parked event, and it is not applied a second time by a retry.
func TestRebuildClearsDeadLetters(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	positions := h.appendMany(ctx, 8)
	p := newVProj("dlr", 1, 1)
	p.failWith(func(ev eventstore.PersistedEvent) error {
		if ev.GlobalPosition == positions[2] {
			return errBoom
		}
		return nil
	})
	r, err := runner.New(h.db.Pool, h.store, h.fastConfig())
	require.NoError(t, err)
	require.NoError(t, r.Register(p, runner.WithFailurePolicy(runner.DeadLetter)))
	h.run(r)
	h.waitFor("the dead letter", func() bool {
		dls, err := r.CheckpointsForTest().DeadLetters(ctx, h.db.Pool, "dlr")
		require.NoError(t, err)
		return len(dls) > 0
	})
	dls, err := r.CheckpointsForTest().DeadLetters(ctx, h.db.Pool, "dlr")
	require.NoError(t, err)
	p.failWith(nil)
	require.NoError(t, r.Rebuild(ctx, "dlr"))
	left, err := r.CheckpointsForTest().DeadLetters(ctx, h.db.Pool, "dlr")
	require.NoError(t, err)
	require.Empty(t, left, "the rebuild cleared the dead letters")
	require.ErrorIs(t, r.CheckpointsForTest().RequestRetry(ctx, h.db.Pool, dls[0].ID), checkpoint.ErrNotFound)
	h.requireExactlyOnce(p.label())
}

// Item 14: sequenced dead letters: once an event of an aggregate is parked, its later events are
// parked behind it; a retry applies them in order; other aggregates go on.
func TestSequencedDeadLetters(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	positions := h.appendMany(ctx, 16) // aggregates a0..a3 in turn
	poison := positions[5]             // a1's second event
	p := newVProj("seq", 1, 1)
	p.failWith(func(ev eventstore.PersistedEvent) error {
		if ev.GlobalPosition == poison {
			return errBoom
		}
		return nil
	})
	r, err := runner.New(h.db.Pool, h.store, h.fastConfig())
	require.NoError(t, err)
	require.NoError(t, r.Register(p, runner.WithFailurePolicy(runner.DeadLetter)))
	h.run(r)
	h.waitFor("the other events", func() bool { return len(appliedPositions(t, h.db.Pool, p.label())) == 13 })
	dls, err := r.CheckpointsForTest().DeadLetters(ctx, h.db.Pool, "seq")
	require.NoError(t, err)
	require.Len(t, dls, 3, "a1's events from the poison one on are parked")
	require.Equal(t, []int64{positions[5], positions[9], positions[13]}, []int64{dls[0].GlobalPosition, dls[1].GlobalPosition, dls[2].GlobalPosition})
	require.Zero(t, dls[0].BlockedBy)
	require.Equal(t, poison, dls[1].BlockedBy)
	// A later event of a1 is parked too, while the poison one waits.
	more := h.appendOne(ctx, "acct", "a1", 1).GlobalPositions()
	h.appendOne(ctx, "acct", "a2", 1)
	h.waitFor("a2's new event", func() bool { return len(appliedPositions(t, h.db.Pool, p.label())) == 14 })
	dls, err = r.CheckpointsForTest().DeadLetters(ctx, h.db.Pool, "seq")
	require.NoError(t, err)
	require.Len(t, dls, 4)
	require.Equal(t, more[0], dls[3].GlobalPosition)
	// Fixed: a retry of the first applies the four in order.
	p.failWith(nil)
	require.NoError(t, r.CheckpointsForTest().RequestRetry(ctx, h.db.Pool, dls[0].ID))
	r.Wake()
	h.waitFor("the retried chain", func() bool { return len(appliedPositions(t, h.db.Pool, p.label())) == 18 })
	h.requireExactlyOnce(p.label())
	left, err := r.CheckpointsForTest().DeadLetters(ctx, h.db.Pool, "seq")
	require.NoError(t, err)
	require.Empty(t, left)
	// And a1 flows normally again.
	h.appendOne(ctx, "acct", "a1", 1)
	h.requireExactlyOnce(p.label())
}

// Item 15: a projection that cannot reset refuses a rebuild, from the API and for the CLI's
// request, and nothing is replayed.
func TestRebuildWithoutResetIsRefused(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	h.appendMany(ctx, 3)
	r, _ := h.startProc(h.fastConfig(), noResetProj{name: "nr"})
	h.waitFor("applied", func() bool { return len(appliedPositions(t, h.db.Pool, "nr")) == 3 })
	require.ErrorIs(t, r.Rebuild(ctx, "nr"), runner.ErrNotResettable)
	err := pgx.BeginFunc(ctx, h.db.Pool, func(tx pgx.Tx) error { return h.lc().RequestRebuild(ctx, tx, "nr") })
	require.ErrorIs(t, err, lifecycle.ErrNotResettable)
	h.appendMany(ctx, 1)
	h.waitFor("the new event", func() bool { return len(appliedPositions(t, h.db.Pool, "nr")) == 4 })
	require.Equal(t, committedPositions(t, h.db.Pool, ""), appliedPositions(t, h.db.Pool, "nr"))
}

// Item 16: a rebuild of a detached handler is refused by the CLI's path; a request that reaches a
// runner anyway (an older CLI) is cleared with the reason in the record, and delivery goes on.
func TestRebuildOfDetachedIsRefused(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	m := &mailer{version: 1}
	h.startProc(h.fastConfig(), m)
	h.appendMany(ctx, 2)
	h.waitFor("sent", func() bool { return len(m.positions()) == 2 })
	err := pgx.BeginFunc(ctx, h.db.Pool, func(tx pgx.Tx) error { return h.lc().RequestRebuild(ctx, tx, "mailer") })
	require.ErrorIs(t, err, lifecycle.ErrDetachedRebuild)
	_, err = h.db.Pool.Exec(ctx, `UPDATE eventline_projections SET rebuild_requested = rebuild_requested + 1 WHERE projection = 'mailer'`)
	require.NoError(t, err)
	h.waitFor("the request to be refused", func() bool { return !h.record("mailer").RebuildPending() })
	require.Contains(t, h.record("mailer").LastError, "detached")
	h.appendMany(ctx, 2)
	h.waitFor("delivery to go on", func() bool { return len(m.positions()) == 4 })
}

// hangingProj's handler ignores its context and blocks until released.
type hangingProj struct {
	name    string
	hang    atomic.Bool
	release chan struct{}
	entered chan struct{}
	once    sync.Once
}

func (p *hangingProj) Name() string { return p.name }
func (p *hangingProj) Setup(ctx context.Context, tx pgx.Tx) error {
	return createApplied(ctx, tx)
}
func (p *hangingProj) Handle(ctx context.Context, tx pgx.Tx, events []eventstore.PersistedEvent) error {
	if p.hang.Load() {
		p.once.Do(func() { close(p.entered) })
		<-p.release // ignores ctx on purpose
	}
	return (&recorder{name: p.name}).Handle(ctx, tx, events)
}

// Item 17: a handler that ignores its context. The second process keeps heartbeating while the
// first is stuck; Run returns after ShutdownTimeout + ShutdownGrace with ErrStuck naming the unit;
// the stuck session is terminated, so its row lock dies, and the second process takes over.
func TestHungHandler(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	stuck := &hangingProj{name: "hung", release: make(chan struct{}), entered: make(chan struct{})}
	t.Cleanup(func() { close(stuck.release) }) // let the abandoned goroutine finish
	cfgA := h.fastConfig()
	cfgA.ShutdownTimeout, cfgA.ShutdownGrace = 200*time.Millisecond, 300*time.Millisecond
	rA, err := runner.New(h.db.Pool, h.store, cfgA)
	require.NoError(t, err)
	require.NoError(t, rA.Register(stuck))
	ctxA, cancelA := context.WithCancel(ctx)
	doneA := make(chan error, 1)
	go func() { doneA <- rA.Run(ctxA) }()
	h.appendMany(ctx, 2)
	h.waitFor("applied", func() bool { return len(appliedPositions(t, h.db.Pool, "hung")) == 2 })
	stuck.hang.Store(true)
	h.appendMany(ctx, 1)
	waitClosed(t, stuck.entered, "the handler to hang")

	other := &hangingProj{name: "hung", release: make(chan struct{}), entered: make(chan struct{})}
	rB, _ := h.startProc(h.fastConfig(), other)
	beat := func() time.Time {
		var at time.Time
		require.NoError(t, h.db.Pool.QueryRow(ctx, `SELECT heartbeat_at FROM eventline_nodes WHERE node_id = $1`, rB.NodeID()).Scan(&at))
		return at
	}
	h.waitFor("B's heartbeat", func() bool {
		var n int
		_ = h.db.Pool.QueryRow(ctx, `SELECT count(*) FROM eventline_nodes WHERE node_id = $1`, rB.NodeID()).Scan(&n)
		return n == 1
	})
	first := beat()
	h.waitFor("B to keep heartbeating while A is stuck", func() bool { return beat().After(first.Add(300 * time.Millisecond)) })

	stopAsked := time.Now()
	cancelA()
	select {
	case err := <-doneA:
		require.ErrorIs(t, err, runner.ErrStuck)
		require.Contains(t, err.Error(), "hung")
		took := time.Since(stopAsked)
		require.Less(t, took, 5*time.Second)
		t.Logf("Run returned after %s: %v", took.Round(time.Millisecond), err)
	case <-time.After(waitTimeout):
		t.Fatal("Run did not return")
	}
	h.waitFor("B to take over and apply the rest", func() bool { return len(appliedPositions(t, h.db.Pool, "hung")) == 3 })
	require.Equal(t, committedPositions(t, h.db.Pool, ""), appliedPositions(t, h.db.Pool, "hung"))
	h.waitFor("B still heartbeating", func() bool { return beat().After(first.Add(time.Second)) })
}

// BatchTimeout: the server ends a batch whose handler outlives it, so the checkpoint row is not
// held: a pause (which waits for batches in flight) gets through.
func TestBatchTimeoutReleasesTheRowLock(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	p := &hangingProj{name: "slow", release: make(chan struct{}), entered: make(chan struct{})}
	cfg := h.fastConfig()
	cfg.BatchTimeout = 300 * time.Millisecond
	r, _ := h.startProc(cfg, p)
	p.hang.Store(true)
	h.appendMany(ctx, 1)
	waitClosed(t, p.entered, "the handler to hang")
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err := r.Pause(pctx, "slow")
	close(p.release)
	require.NoError(t, err, "the pause got the row once the server ended the hung batch")
	require.True(t, h.record("slow").Paused)
}

func waitClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(waitTimeout):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// A build rolled back after it set its cut-over barrier (its processes are gone) does not hold
// the active version at the barrier: the barrier is lifted and the active version goes on.
func TestRolledBackBuildReleasesTheBarrier(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	h.appendMany(ctx, 10)
	v1 := newVProj("rb", 1, 1)
	h.startProc(h.fastConfig(), v1)
	h.waitFor("v1", func() bool { return len(appliedPositions(t, h.db.Pool, v1.label())) == 10 })
	v2 := newVProj("rb", 2, 1)
	// It stops one event short of v1: close enough to set the barrier, never at it (a build that
	// catches up at once cuts over without one).
	v2.failWith(func(ev eventstore.PersistedEvent) error {
		if ev.GlobalPosition == 10 {
			return errors.New("v2 stops before the end")
		}
		return nil
	})
	_, stop2 := h.startProc(h.fastConfig(), v2)
	h.waitFor("the cut-over barrier", func() bool { return h.record("rb").Barrier >= 0 })
	stop2()
	h.waitFor("the barrier to be lifted", func() bool { return h.record("rb").Barrier < 0 })
	require.Equal(t, 2, h.record("rb").Target.Version, "the build stays the target")
	h.appendMany(ctx, 5)
	h.requireExactlyOnce(v1.label())
}

// A trigger disabled while runners run stops the horizon (a writer then takes no append lock, so
// its open transaction would be invisible to the tracker) with a clear error in Status; a hole
// left by such a writer is waited for, not passed; and all is well once the trigger fires always
// again.
func TestDisabledTriggerStopsDeliveryVisibly(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	r, _ := h.startProc(h.fastConfig(), &recorder{name: "trig"})
	h.appendMany(ctx, 2)
	h.waitFor("applied", func() bool { return len(appliedPositions(t, h.db.Pool, "trig")) == 2 })
	_, err := h.db.Pool.Exec(ctx, `ALTER TABLE events DISABLE TRIGGER eventline_append_lock`)
	require.NoError(t, err)
	h.waitFor("Status to say delivery stopped", func() bool {
		sts := statusOf(t, r, "trig")
		return len(sts) == 1 && strings.Contains(sts[0].LastError, "delivery stopped")
	})
	open, res := h.openAppend(ctx, "acct", "slow", 1) // takes no append lock now
	h.appendMany(ctx, 1)
	h.waitHeld(res.GlobalPositions()[0])
	require.Len(t, appliedPositions(t, h.db.Pool, "trig"), 2, "the hole is not passed")
	require.NoError(t, open.Commit(ctx))
	h.waitFor("the late event and the one after it", func() bool { return len(appliedPositions(t, h.db.Pool, "trig")) == 4 })
	require.Equal(t, committedPositions(t, h.db.Pool, ""), appliedPositions(t, h.db.Pool, "trig"))
	_, err = h.db.Pool.Exec(ctx, `ALTER TABLE events ENABLE ALWAYS TRIGGER eventline_append_lock`)
	require.NoError(t, err)
	h.waitFor("the error to clear", func() bool { return statusOf(t, r, "trig")[0].LastError == "" })
}

// Where a projection starts the first time: the beginning (default), the end, or a position; a
// later start keeps the checkpoint.
func TestStartPositions(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	history := h.appendMany(ctx, 5)
	for _, c := range []struct {
		name string
		opt  []runner.Option
		want func(later []int64) []int64
	}{
		{"begin", nil, func(later []int64) []int64 { return append(slices.Clone(history), later...) }},
		{"end", []runner.Option{runner.WithStartAtEnd()}, func(later []int64) []int64 { return later }},
		{"after2", []runner.Option{runner.WithStartAt(history[1])}, func(later []int64) []int64 { return append(slices.Clone(history[2:]), later...) }},
	} {
		r, err := runner.New(h.db.Pool, h.store, h.fastConfig())
		require.NoError(t, err)
		require.NoError(t, r.Register(&recorder{name: c.name}, c.opt...))
		stop := h.run(r)
		h.waitFor(c.name+" deployed", func() bool { return h.record(c.name).Active.Version == 1 })
		later := h.appendMany(ctx, 2)
		h.waitFor(c.name+" caught up", func() bool { return len(appliedPositions(t, h.db.Pool, c.name)) == len(c.want(later)) })
		require.Equal(t, c.want(later), appliedPositions(t, h.db.Pool, c.name), c.name)
		stop()
		history = append(history, later...)
	}
	// A restart with another start option keeps the checkpoint.
	r, err := runner.New(h.db.Pool, h.store, h.fastConfig())
	require.NoError(t, err)
	require.NoError(t, r.Register(&recorder{name: "end"}, runner.WithStartAt(0)))
	h.run(r)
	more := h.appendMany(ctx, 1)
	h.waitFor("end caught up", func() bool { return slices.Contains(appliedPositions(t, h.db.Pool, "end"), more[0]) })
	require.NotContains(t, appliedPositions(t, h.db.Pool, "end"), history[0])
}

// Read-your-writes: a Waiter in a process that runs no runner returns once the projection (the
// partition of the aggregate) has applied the appended position, woken by the progress
// notification; it times out with the context while the projection is paused.
func TestReadYourWrites(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	p := newVProj("ryw", 1, 3)
	r, _ := h.startProc(h.fastConfig(), p)
	w, err := runner.NewWaiter(h.db.Pool, h.store, runner.WaiterConfig{})
	require.NoError(t, err)
	wctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = w.Run(wctx) }()
	t.Cleanup(func() { cancel(); wg.Wait() })
	h.waitFor("the waiter to run", func() bool {
		err := w.Wait(ctx, "ryw", 0, "")
		return !errors.Is(err, runner.ErrWaiterNotRunning)
	})
	for i := 0; i < 20; i++ {
		id := fmt.Sprint("acct-", i)
		res := h.appendOne(ctx, "acct", id, 1)
		start := time.Now()
		dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
		require.NoError(t, w.Wait(dctx, "ryw", res.GlobalPositions()[0], id))
		dcancel()
		var n int
		require.NoError(t, h.db.Pool.QueryRow(ctx, `SELECT count(*) FROM applied WHERE projection = $1 AND global_position = $2`,
			p.label(), res.GlobalPositions()[0]).Scan(&n))
		require.Equal(t, 1, n, "the read model has the write when Wait returns")
		require.Less(t, time.Since(start), time.Second, "woken by notification, not by the once-a-second re-check")
	}
	require.NoError(t, r.Pause(ctx, "ryw"))
	res := h.appendOne(ctx, "acct", "paused", 1)
	dctx, dcancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer dcancel()
	require.ErrorIs(t, w.Wait(dctx, "ryw", res.GlobalPositions()[0], "paused"), context.DeadlineExceeded)
	require.NoError(t, r.Resume(ctx, "ryw"))
	require.NoError(t, r.WaitApplied(ctx, "ryw", res.GlobalPositions()[0], "paused"))
}
