package runner_test

import (
	"context"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/projector"
	"github.com/eventline/eventline/runner"
)

// swallowingRouter is a Router whose OnTx handler records each event in the applied table; for
// the bad event it runs a failing statement and swallows its error, leaving the transaction
// aborted.
func swallowingRouter(name string, bad *atomic.Int64) *projector.Router {
	r := projector.NewRouter(name, projector.WithSetup(func(ctx context.Context, tx pgx.Tx) error { return createApplied(ctx, tx) }))
	projector.OnTx(r, "Happened", func(ctx context.Context, tx pgx.Tx, ev eventstore.PersistedEvent, _ struct{}) error {
		if ev.GlobalPosition == bad.Load() {
			_, _ = tx.Exec(ctx, `SELECT 1 / 0`) // the error is lost; the transaction is aborted
			return nil
		}
		return insertApplied(ctx, tx, name, ev)
	})
	return r
}

// A handler that swallows the error of a failed statement returns nil with its transaction
// aborted. That is the event's failure: the projection stops just before it (it is not retried
// forever as a database error of the runner's, nor blamed on the next event).
func TestHandlerLeavingTransactionAbortedFailsItsEvent(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	positions := h.appendMany(ctx, 20)
	var bad atomic.Int64
	bad.Store(positions[13])
	cfg := h.config()
	cfg.BatchSize = 8
	r, _ := h.start(cfg, swallowingRouter("swallow", &bad))

	h.waitFor("the projection to stop", func() bool { return stateOf(t, r, "swallow").State == "stopped" })
	st := stateOf(t, r, "swallow")
	require.Equal(t, positions[13], st.FailedPosition)
	require.Equal(t, positions[13]-1, st.Position)
	require.Contains(t, st.LastError, "aborted")
	require.Equal(t, positions[:13], appliedPositions(t, h.db.Pool, "swallow"))

	bad.Store(0)
	require.NoError(t, r.Resume(ctx, "swallow"))
	h.waitFor("the resumed projection", func() bool { return len(appliedPositions(t, h.db.Pool, "swallow")) == 20 })
	require.Equal(t, positions, appliedPositions(t, h.db.Pool, "swallow"))
}

// The same in a dead letter's retry: the retry fails, the event stays parked, and the unit goes
// on (the retry's transaction is not left aborted, which would fail every reload).
func TestDeadLetterRetryLeavingSavepointAborted(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	positions := h.appendMany(ctx, 6)
	var bad atomic.Int64
	bad.Store(positions[2])
	rn, err := runner.New(h.db.Pool, h.store, h.config())
	require.NoError(t, err)
	require.NoError(t, rn.Register(swallowingRouter("swallow_dl", &bad), runner.WithFailurePolicy(runner.DeadLetter)))
	h.run(rn)
	cps := rn.CheckpointsForTest()
	h.waitFor("all but the parked event", func() bool {
		return len(appliedPositions(t, h.db.Pool, "swallow_dl")) == 5 && stateOf(t, rn, "swallow_dl").Position >= positions[5]
	})
	dead, err := cps.DeadLetters(ctx, h.db.Pool, "swallow_dl")
	require.NoError(t, err)
	require.Len(t, dead, 1)
	require.Equal(t, positions[2], dead[0].GlobalPosition)

	// A retry that fails the same way keeps it parked, with one more attempt; the unit goes on.
	require.NoError(t, cps.RequestRetry(ctx, h.db.Pool, dead[0].ID))
	h.waitFor("the failed retry", func() bool {
		d, err := cps.DeadLetters(ctx, h.db.Pool, "swallow_dl")
		require.NoError(t, err)
		return len(d) == 1 && !d[0].RetryRequested
	})
	more := h.appendMany(ctx, 2)
	h.waitFor("the events appended after the retry", func() bool {
		return len(appliedPositions(t, h.db.Pool, "swallow_dl")) == 7
	})
	_ = more
}

// panickyReset is a recorder whose Reset panics while panics is set.
type panickyReset struct {
	*recorder
	panics atomic.Bool
}

func (p *panickyReset) Reset(ctx context.Context, tx pgx.Tx) error {
	if p.panics.Load() {
		panic("reset: nil map")
	}
	return p.recorder.Reset(ctx, tx)
}

// A Reset that panics during a rebuild fails that lifecycle step, as an error would: the panic
// does not escape into the runner's goroutine (which would crash the process, every projection
// with it), the step is shown in Status and retried, and it succeeds once Reset is fixed.
func TestResetPanicFailsTheRebuild(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	positions := h.appendMany(ctx, 4)
	p := &panickyReset{recorder: &recorder{name: "resetpanic"}}
	p.panics.Store(true)
	r, _ := h.start(h.config(), p)
	h.waitFor("the projection", func() bool { return len(appliedPositions(t, h.db.Pool, "resetpanic")) == 4 })

	h.inTx(func(tx pgx.Tx) error { return h.lc().RequestRebuild(ctx, tx, "resetpanic") })
	h.waitFor("the failed rebuild step in Status", func() bool {
		return strings.Contains(stateOf(t, r, "resetpanic").LastError, "panicked: reset: nil map")
	})
	more := h.appendMany(ctx, 1)
	h.waitFor("the projection to go on", func() bool { return len(appliedPositions(t, h.db.Pool, "resetpanic")) == 5 })

	p.panics.Store(false)
	want := append(append([]int64(nil), positions...), more...)
	h.waitFor("the rebuild", func() bool {
		return !h.record("resetpanic").RebuildPending() && slices.Equal(appliedPositions(t, h.db.Pool, "resetpanic"), want)
	})
}

type panickySetup struct{ *recorder }

func (panickySetup) Setup(context.Context, pgx.Tx) error { panic("setup: nil pointer") }

// A Setup that panics makes Run return an error naming the projection, as an error would.
func TestSetupPanicIsAnError(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	r, err := runner.New(h.db.Pool, h.store, h.config())
	require.NoError(t, err)
	require.NoError(t, r.Register(panickySetup{&recorder{name: "setuppanic"}}))
	err = r.Run(ctx)
	require.Error(t, err)
	require.Contains(t, err.Error(), `projection "setuppanic": setup: panicked: setup: nil pointer`)
}

// failThenHang fails its bad event (to park it) until hang is set; then it blocks on the bad
// event, ignoring its context, until released.
type failThenHang struct {
	*recorder
	bad     int64
	hang    atomic.Bool
	release chan struct{}
	entered chan struct{}
	once    sync.Once
}

func (p *failThenHang) Handle(ctx context.Context, tx pgx.Tx, events []eventstore.PersistedEvent) error {
	for _, ev := range events {
		if ev.GlobalPosition != p.bad {
			continue
		}
		if !p.hang.Load() {
			return errBoom
		}
		p.once.Do(func() { close(p.entered) })
		<-p.release // ignores ctx on purpose
	}
	return p.recorder.Handle(ctx, tx, events)
}

// BatchTimeout bounds a dead letter's retry too, which runs the handler while it holds the
// unit's checkpoint row: a retried handler that ignores its context does not keep the row locked
// (a pause, which waits for the row, gets through).
func TestBatchTimeoutBoundsDeadLetterRetry(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	positions := h.appendMany(ctx, 3)
	p := &failThenHang{recorder: &recorder{name: "dlhang"}, bad: positions[1], release: make(chan struct{}), entered: make(chan struct{})}
	var released sync.Once
	release := func() { released.Do(func() { close(p.release) }) }
	t.Cleanup(release)
	cfg := h.fastConfig()
	cfg.BatchTimeout = 300 * time.Millisecond
	r, err := runner.New(h.db.Pool, h.store, cfg)
	require.NoError(t, err)
	require.NoError(t, r.Register(p, runner.WithFailurePolicy(runner.DeadLetter)))
	h.run(r)
	cps := r.CheckpointsForTest()
	h.waitFor("the parked event", func() bool {
		return len(appliedPositions(t, h.db.Pool, "dlhang")) == 2 && stateOf(t, r, "dlhang").Position >= positions[2]
	})
	dead, err := cps.DeadLetters(ctx, h.db.Pool, "dlhang")
	require.NoError(t, err)
	require.Len(t, dead, 1)

	p.hang.Store(true)
	require.NoError(t, cps.RequestRetry(ctx, h.db.Pool, dead[0].ID))
	waitClosed(t, p.entered, "the retried handler to hang")
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err = r.Pause(pctx, "dlhang")
	release()
	require.NoError(t, err, "the pause got the row once the server ended the hung retry")
	require.True(t, h.record("dlhang").Paused)
}
