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
