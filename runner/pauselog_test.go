package runner_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/runner"
)

// A pause that lands while a batch is in flight makes the batch's compare-and-set fail: that is
// expected, so it is logged at Debug, not as a warning (with a stack trace in development
// loggers).
func TestPauseDuringBatchIsNotAWarning(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	h.appendMany(ctx, 3)
	inBatch, release := make(chan struct{}), make(chan struct{})
	first := true
	rec := &recorder{name: "paused", fail: func(eventstore.PersistedEvent) error {
		if first {
			first = false
			close(inBatch)
			<-release
		}
		return nil
	}}
	core, logs := observer.New(zapcore.DebugLevel)
	cfg := h.config()
	cfg.Logger = zap.New(core)
	h.start(cfg, rec)
	<-inBatch
	h.inTx(func(tx pgx.Tx) error { return h.lc().Pause(context.Background(), tx, "paused") })
	close(release)
	h.waitFor("the batch to be refused", func() bool {
		return logs.FilterMessageSnippet("batch not saved").Len() > 0
	})
	require.Empty(t, appliedPositions(t, h.db.Pool, "paused"))
	for _, e := range logs.All() {
		require.Less(t, e.Level, zapcore.WarnLevel, "%s: %s %v", e.Level, e.Message, e.ContextMap())
	}
}

// Isolating the failing event of a batch runs the handler again on other events: it is logged
// once, with the batch's range and the error that caused it.
func TestBatchSplitIsLoggedOnce(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	positions := h.appendMany(ctx, 8)
	rec := &recorder{name: "split", fail: func(ev eventstore.PersistedEvent) error {
		if ev.GlobalPosition == positions[5] {
			return errBoom
		}
		return nil
	}}
	core, logs := observer.New(zapcore.DebugLevel)
	cfg := h.config()
	cfg.Logger = zap.New(core)
	r, err := runner.New(h.db.Pool, h.store, cfg)
	require.NoError(t, err)
	require.NoError(t, r.Register(rec, runner.WithFailurePolicy(runner.DeadLetter), runner.WithSequencedDeadLetters(false)))
	h.run(r)
	h.waitFor("the rest applied", func() bool { return len(appliedPositions(t, h.db.Pool, "split")) == 7 })
	splits := logs.FilterMessageSnippet("handler failed on a batch").All()
	require.Len(t, splits, 1)
	fields := splits[0].ContextMap()
	require.Equal(t, zapcore.WarnLevel, splits[0].Level)
	require.Equal(t, positions[0], fields["first"])
	require.Equal(t, positions[7], fields["last"])
	require.Equal(t, int64(8), fields["events"])
	require.Equal(t, "boom", fields["error"])
}
