package runner_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline"
	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/eventstore/postgres"
	"github.com/eventline/eventline/internal/checkpoint"
	"github.com/eventline/eventline/projector"
	"github.com/eventline/eventline/runner"
)

const childEnv = "EVENTLINE_TEST_CHILD_DATABASE_URL"

const (
	childProjections = 20
	childCounterEnv  = "EVENTLINE_TEST_CHILD_COUNTER"
	childPartsEnv    = "EVENTLINE_TEST_CHILD_PARTITIONS"
)

// partitionedCounter counts events per partition, one UPDATE per batch.
type partitionedCounter struct {
	name  string
	parts int
}

func (c partitionedCounter) Name() string    { return c.name }
func (c partitionedCounter) Partitions() int { return c.parts }
func (c partitionedCounter) Handle(ctx context.Context, tx pgx.Tx, events []eventstore.PersistedEvent) error {
	part := projector.PartitionOf(events[0].AggregateID, c.parts)
	_, err := tx.Exec(ctx, `INSERT INTO bench_counts (name, n) VALUES ($1, $2)
		ON CONFLICT (name) DO UPDATE SET n = bench_counts.n + EXCLUDED.n`, fmt.Sprintf("%s#%d", c.name, part), len(events))
	return err
}

// slowRecorder makes batches take a little while, so that a kill lands mid-batch.
type slowRecorder struct{ *recorder }

func (s slowRecorder) Handle(ctx context.Context, tx pgx.Tx, events []eventstore.PersistedEvent) error {
	if err := s.recorder.Handle(ctx, tx, events); err != nil {
		return err
	}
	select {
	case <-time.After(3 * time.Millisecond):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// childMain is a runner process for the multi-process tests: it runs the 20 projections with
// default ownership settings until SIGTERM, and prints its node ID.
func childMain(url string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer pool.Close()
	store := postgres.NewStore(&postgres.StoreConfig{Names: eventline.Names{NotifyChannel: "eventline_events"}})
	var r *runner.Runner
	if name := os.Getenv(childCounterEnv); name != "" {
		// Benchmark mode: one counting projection in n partitions.
		n, _ := strconv.Atoi(os.Getenv(childPartsEnv))
		r, err = runner.New(pool, store, runner.Config{BatchSize: 1000})
		if err == nil {
			err = r.Register(partitionedCounter{name: name, parts: max(1, n)})
		}
	} else {
		r, err = runner.New(pool, store, runner.Config{BatchSize: 20})
		for i := 0; err == nil && i < childProjections; i++ {
			err = r.Register(slowRecorder{&recorder{name: fmt.Sprintf("p%02d", i)}})
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("node", r.NodeID())
	if err := r.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

type child struct {
	cmd  *exec.Cmd
	node string
}

func startChild(t testing.TB, url string, env ...string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), childEnv+"="+url), env...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	c := &child{cmd: cmd}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	sc := bufio.NewScanner(out)
	require.True(t, sc.Scan(), "child printed nothing")
	c.node = strings.TrimPrefix(sc.Text(), "node ")
	go func() {
		for sc.Scan() { // drain
		}
	}()
	return c
}

// owners returns, per node, how many checkpoints it owns with a live lease.
func owners(t *testing.T, pool *pgxpool.Pool) map[string]int {
	rows, err := pool.Query(context.Background(), `SELECT owner FROM eventline_checkpoints WHERE owner IS NOT NULL AND lease_until > now()`)
	require.NoError(t, err)
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	out := map[string]int{}
	for _, n := range names {
		out[n]++
	}
	return out
}

// TestProcessesShareAndFailOver runs three real runner processes on 20 projections while writers
// append: the work is spread evenly; one process is killed with SIGKILL and its projections move
// to the others within 10 seconds; another is stopped gracefully and hands over at once; in the
// end every event was applied exactly once per projection (G3, G6).
func TestProcessesShareAndFailOver(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	ctx := testCtx(t)
	h := newHarness(t, true)
	children := []*child{startChild(t, h.db.URL), startChild(t, h.db.URL), startChild(t, h.db.URL)}

	h.waitFor("20 projections spread over 3 processes", func() bool {
		o := owners(t, h.db.Pool)
		total := 0
		for _, c := range children {
			if o[c.node] > 7 || o[c.node] < 6 {
				return false
			}
			total += o[c.node]
		}
		return total == childProjections
	})

	// Writers append until told to stop.
	var wg sync.WaitGroup
	stopWriters := make(chan struct{})
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stopWriters:
					return
				default:
				}
				_, err := h.store.Append(ctx, h.db.Pool, eventstore.Any(), events("acct", fmt.Sprintf("w%d-%d", w, i%7), 1+i%3))
				if err != nil {
					t.Error(err)
					return
				}
				time.Sleep(2 * time.Millisecond) // pacing the load, not synchronizing
			}
		}()
	}
	h.waitFor("some progress everywhere", func() bool {
		var n int
		require.NoError(t, h.db.Pool.QueryRow(ctx, `SELECT count(DISTINCT projection) FROM applied`).Scan(&n))
		return n == childProjections
	})

	// SIGKILL one process, mid-batch with high probability (batches take a few ms, all the time).
	victim := children[0]
	require.NoError(t, victim.cmd.Process.Signal(syscall.SIGKILL))
	killed := time.Now()
	h.waitFor("the killed process's projections to move", func() bool {
		o := owners(t, h.db.Pool)
		return o[victim.node] == 0 && o[children[1].node]+o[children[2].node] == childProjections
	})
	failover := time.Since(killed)
	t.Logf("failover after SIGKILL took %s", failover.Round(time.Millisecond))
	require.Less(t, failover, 10*time.Second)

	// Graceful stop: handed over at once.
	require.NoError(t, children[1].cmd.Process.Signal(syscall.SIGTERM))
	stopped := time.Now()
	h.waitFor("the stopped process's projections to move", func() bool {
		return owners(t, h.db.Pool)[children[2].node] == childProjections
	})
	handover := time.Since(stopped)
	t.Logf("handover after SIGTERM took %s", handover.Round(time.Millisecond))
	require.Less(t, handover, 3*time.Second)
	require.NoError(t, children[1].cmd.Wait())

	close(stopWriters)
	wg.Wait()
	want := committedPositions(t, h.db.Pool, "")
	for i := 0; i < childProjections; i++ {
		name := fmt.Sprintf("p%02d", i)
		h.waitFor(name+" caught up", func() bool { return len(appliedPositions(t, h.db.Pool, name)) >= len(want) })
		require.Equal(t, want, appliedPositions(t, h.db.Pool, name), "%s: exactly once, in order", name)
	}
}

// TestSplitBrainOwnerIsFenced: an owner that has not noticed that it lost its lease (a paused or
// cut-off process) tries to apply a batch; the checkpoint compare-and-set rejects it (G6).
func TestSplitBrainOwnerIsFenced(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	h := newHarness(t, true)
	first := h.appendMany(ctx, 3)
	var conflicts sync.Map
	cfg := h.config()
	cfg.HeartbeatInterval, cfg.Lease, cfg.NodeTimeout = time.Hour, 2*time.Hour, 2*time.Hour // it never notices by itself
	cfg.RetryMin, cfg.RetryMax = time.Millisecond, 10*time.Millisecond
	cfg.Hooks.Retrying = func(_ runner.Unit, err error, _ time.Duration) {
		if strings.Contains(err.Error(), `owner "other-node"`) {
			conflicts.Store("seen", true)
			h.signal()
		}
	}
	r, _ := h.start(cfg, &recorder{name: "rec"})
	h.waitFor("the first events", func() bool { return len(appliedPositions(t, h.db.Pool, "rec")) == 3 })

	// Another process takes the projection over; this one does not know yet.
	tag, err := h.db.Pool.Exec(ctx, `UPDATE eventline_checkpoints SET owner = 'other-node', lease_until = now() + interval '1 hour' WHERE projection = 'rec'`)
	require.NoError(t, err)
	require.EqualValues(t, 1, tag.RowsAffected())
	h.appendMany(ctx, 4)
	h.waitFor("the stale owner's batch to be rejected", func() bool { _, ok := conflicts.Load("seen"); return ok })
	require.Equal(t, first, appliedPositions(t, h.db.Pool, "rec"), "nothing applied by the stale owner")
	cp, err := r.CheckpointsForTest().Get(ctx, h.db.Pool, checkpoint.Key{Projection: "rec"})
	require.NoError(t, err)
	require.Equal(t, first[2], cp.Position)

	// The other process goes away: its lease expires and a rebalance hands the projection back.
	_, err = h.db.Pool.Exec(ctx, `UPDATE eventline_checkpoints SET lease_until = now() - interval '1 second' WHERE projection = 'rec'`)
	require.NoError(t, err)
	_, err = h.db.Pool.Exec(ctx, `SELECT pg_notify('eventline_control', 'test')`)
	require.NoError(t, err)
	h.waitFor("takeover and catch-up", func() bool { return len(appliedPositions(t, h.db.Pool, "rec")) == 7 })
	require.Equal(t, committedPositions(t, h.db.Pool, ""), appliedPositions(t, h.db.Pool, "rec"))
}
