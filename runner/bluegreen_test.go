package runner_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/eventstore"
)

// counterVersion counts events into its own table; the view bg_view shows the active version.
type counterVersion struct{ version int }

func (c *counterVersion) Name() string { return "bg" }
func (c *counterVersion) Version() int { return c.version }
func (c *counterVersion) table() string {
	return pgx.Identifier{fmt.Sprintf("bg_v%d", c.version)}.Sanitize()
}

func (c *counterVersion) Setup(ctx context.Context, tx pgx.Tx) error {
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+c.table()+` (n bigint NOT NULL);
		INSERT INTO `+c.table()+` SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM `+c.table()+`)`); err != nil {
		return err
	}
	if c.version == 1 {
		_, err := tx.Exec(ctx, `CREATE OR REPLACE VIEW bg_view AS SELECT n FROM bg_v1`)
		return err
	}
	return nil
}

func (c *counterVersion) Handle(ctx context.Context, tx pgx.Tx, events []eventstore.PersistedEvent) error {
	_, err := tx.Exec(ctx, `UPDATE `+c.table()+` SET n = n + $1`, len(events))
	return err
}

func (c *counterVersion) Activate(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, `CREATE OR REPLACE VIEW bg_view AS SELECT n FROM `+c.table())
	return err
}

// TestBlueGreenCutover: while writers append, version 2 is built beside version 1 (which keeps
// serving), takes over in one transaction, and readers of the view never see an empty or
// half-built read model.
func TestBlueGreenCutover(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	_, _ = h.start(h.config(), &counterVersion{version: 1})
	h.appendMany(ctx, 200)
	h.waitFor("v1 to serve", func() bool {
		var n int64
		_ = h.db.Pool.QueryRow(ctx, `SELECT n FROM bg_view`).Scan(&n)
		return n == 200
	})

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var worst atomic.Int64 // the largest drop a reader saw
	wg.Add(2)
	go func() { // writers
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := h.store.Append(ctx, h.db.Pool, eventstore.Any(), events("acct", fmt.Sprint(i%5), 1)); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	go func() { // a reader of the view
		defer wg.Done()
		var last int64
		for {
			select {
			case <-stop:
				return
			default:
			}
			var n int64
			if err := h.db.Pool.QueryRow(ctx, `SELECT n FROM bg_view`).Scan(&n); err != nil {
				t.Error(err)
				return
			}
			if drop := last - n; drop > worst.Load() {
				worst.Store(drop)
			}
			last = max(last, n)
		}
	}()

	h.start(h.config(), &counterVersion{version: 2})
	h.waitFor("v2 to take over", func() bool {
		rec := h.record("bg")
		return rec.Active.Version == 2 && !rec.HasTarget()
	})
	time.Sleep(50 * time.Millisecond) // let the reader look at the new version for a while
	close(stop)
	wg.Wait()
	require.Zero(t, worst.Load(), "the view never went backwards")

	// The retired version stops where it was: more events reach only version 2.
	var v1Before int64
	require.NoError(t, h.db.Pool.QueryRow(ctx, `SELECT n FROM bg_v1`).Scan(&v1Before))
	h.appendMany(ctx, 10)

	var total int64
	require.NoError(t, h.db.Pool.QueryRow(ctx, `SELECT count(*) FROM events`).Scan(&total))
	h.waitFor("v2 to apply everything", func() bool {
		var n int64
		require.NoError(t, h.db.Pool.QueryRow(ctx, `SELECT n FROM bg_view`).Scan(&n))
		return n == total
	})
	var v1After int64
	require.NoError(t, h.db.Pool.QueryRow(ctx, `SELECT n FROM bg_v1`).Scan(&v1After))
	require.Equal(t, v1Before, v1After, "the retired version applies nothing more")
}
