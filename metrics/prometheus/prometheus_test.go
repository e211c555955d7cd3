package prometheus

import (
	"errors"
	"io"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	prom "github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/internal/pgtest"
	"github.com/eventline/eventline/runner"
)

// TestMain provides the database of the tests that run a real runner (and checks for leaked
// goroutines, as goleak.VerifyTestMain did).
func TestMain(m *testing.M) { pgtest.Main(m) }

func newMetrics(t *testing.T, cfg Config) (*Metrics, *prom.Registry) {
	t.Helper()
	reg := prom.NewPedanticRegistry()
	m, err := New(reg, cfg)
	require.NoError(t, err)
	return m, reg
}

var (
	orders   = runner.Unit{Projection: "orders"}                           // version 0 means 1
	ordersV2 = runner.Unit{Projection: "orders", Version: 2, Partition: 3} // another series
)

func TestHooksSetEveryFunction(t *testing.T) {
	t.Parallel()
	m, _ := newMetrics(t, Config{})
	h := reflect.ValueOf(m.Hooks())
	for i := range h.NumField() {
		if h.Type().Field(i).Name == "Handling" {
			continue // wraps handler calls for tracing (package tracing/otel): nothing to count
		}
		// A hook added to runner.Hooks and not handled here fails this test.
		require.False(t, h.Field(i).IsNil(), "Hooks().%s is nil", h.Type().Field(i).Name)
	}
}

func TestBatchCommitted(t *testing.T) {
	t.Parallel()
	m, reg := newMetrics(t, Config{Buckets: []float64{0.1, 1}})
	h := m.Hooks()
	h.BatchCommitted(runner.BatchInfo{Unit: orders, Events: 10, From: 0, To: 12, Took: 50 * time.Millisecond, Lag: 2 * time.Second})
	h.BatchCommitted(runner.BatchInfo{Unit: orders, Events: 5, From: 12, To: 20, Took: 500 * time.Millisecond, Lag: 250 * time.Millisecond})
	h.BatchCommitted(runner.BatchInfo{Unit: ordersV2, Events: 1, From: 0, To: 1, Took: 3 * time.Second, Lag: time.Second})

	require.Equal(t, 2.0, testutil.ToFloat64(m.batches.WithLabelValues("orders", "1", "0")))
	require.Equal(t, 15.0, testutil.ToFloat64(m.events.WithLabelValues("orders", "1", "0")))
	require.Equal(t, 0.25, testutil.ToFloat64(m.lag.WithLabelValues("orders", "1", "0")))
	require.Equal(t, 20.0, testutil.ToFloat64(m.position.WithLabelValues("orders", "1", "0")))
	require.Equal(t, 1.0, testutil.ToFloat64(m.batches.WithLabelValues("orders", "2", "3")))
	require.Equal(t, 1.0, testutil.ToFloat64(m.position.WithLabelValues("orders", "2", "3")))

	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP eventline_batch_duration_seconds Time from handing a batch to the handler to its commit.
# TYPE eventline_batch_duration_seconds histogram
eventline_batch_duration_seconds_bucket{partition="0",projection="orders",version="1",le="0.1"} 1
eventline_batch_duration_seconds_bucket{partition="0",projection="orders",version="1",le="1"} 2
eventline_batch_duration_seconds_bucket{partition="0",projection="orders",version="1",le="+Inf"} 2
eventline_batch_duration_seconds_sum{partition="0",projection="orders",version="1"} 0.55
eventline_batch_duration_seconds_count{partition="0",projection="orders",version="1"} 2
eventline_batch_duration_seconds_bucket{partition="3",projection="orders",version="2",le="0.1"} 0
eventline_batch_duration_seconds_bucket{partition="3",projection="orders",version="2",le="1"} 0
eventline_batch_duration_seconds_bucket{partition="3",projection="orders",version="2",le="+Inf"} 1
eventline_batch_duration_seconds_sum{partition="3",projection="orders",version="2"} 3
eventline_batch_duration_seconds_count{partition="3",projection="orders",version="2"} 1
`), "eventline_batch_duration_seconds"))
}

func TestProgressedAndGaps(t *testing.T) {
	t.Parallel()
	m, _ := newMetrics(t, Config{})
	h := m.Hooks()
	h.HeldAtGap(orders, 7)
	// The first report created the counters at zero, but no gauge: nothing set them yet.
	require.Equal(t, 0, testutil.CollectAndCount(m.position))
	require.Equal(t, 0, testutil.CollectAndCount(m.lag))
	require.Equal(t, 0, testutil.CollectAndCount(m.owned))
	require.Equal(t, 1, testutil.CollectAndCount(m.retries))

	h.HeldAtGap(orders, 7)
	h.Progressed(orders, 9)
	h.Progressed(orders, 11)
	require.Equal(t, 2.0, testutil.ToFloat64(m.gaps.WithLabelValues("orders", "1", "0")))
	require.Equal(t, 11.0, testutil.ToFloat64(m.position.WithLabelValues("orders", "1", "0")))
	require.Equal(t, 0, testutil.CollectAndCount(m.lag), "Progressed sets no lag")
}

func TestFailuresAndRetries(t *testing.T) {
	t.Parallel()
	m, reg := newMetrics(t, Config{})
	h := m.Hooks()
	boom := errors.New("boom")
	h.Retrying(orders, boom, time.Second)
	h.Retrying(orders, boom, 2*time.Second)
	h.HandlerFailed(orders, 5, boom, runner.Stop)
	h.HandlerFailed(ordersV2, 6, boom, runner.DeadLetter)
	h.HandlerFailed(ordersV2, 8, boom, runner.DeadLetter)

	require.Equal(t, 2.0, testutil.ToFloat64(m.retries.WithLabelValues("orders", "1", "0")))
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP eventline_handler_failures_total Events the handler failed on for good, by failure policy applied.
# TYPE eventline_handler_failures_total counter
eventline_handler_failures_total{partition="0",policy="stop",projection="orders",version="1"} 1
eventline_handler_failures_total{partition="3",policy="dead-letter",projection="orders",version="2"} 2
# HELP eventline_dead_letters_total Events parked in the dead-letter table.
# TYPE eventline_dead_letters_total counter
eventline_dead_letters_total{partition="0",projection="orders",version="1"} 0
eventline_dead_letters_total{partition="3",projection="orders",version="2"} 2
`), "eventline_handler_failures_total", "eventline_dead_letters_total"))
}

func TestOwnershipListenerPages(t *testing.T) {
	t.Parallel()
	m, reg := newMetrics(t, Config{})
	h := m.Hooks()
	h.OwnershipChanged(orders, true)
	require.Equal(t, 1.0, testutil.ToFloat64(m.owned.WithLabelValues("orders", "1", "0")))
	h.OwnershipChanged(orders, false)
	h.OwnershipChanged(orders, true)
	h.OwnershipChanged(orders, false)
	h.ListenerConnected(42)
	h.ListenerConnected(43)
	h.PageRead(0, 500)
	h.PageRead(500, 500)
	h.PageRead(1000, 3)

	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP eventline_owned 1 while this process owns the checkpoint, else 0.
# TYPE eventline_owned gauge
eventline_owned{partition="0",projection="orders",version="1"} 0
# HELP eventline_ownership_changes_total Times this process acquired or released the checkpoint.
# TYPE eventline_ownership_changes_total counter
eventline_ownership_changes_total{change="acquired",partition="0",projection="orders",version="1"} 2
eventline_ownership_changes_total{change="released",partition="0",projection="orders",version="1"} 2
# HELP eventline_listener_connects_total Times the listener connected or reconnected.
# TYPE eventline_listener_connects_total counter
eventline_listener_connects_total 2
# HELP eventline_pages_read_total Pages of events read from the database.
# TYPE eventline_pages_read_total counter
eventline_pages_read_total 3
`), "eventline_owned", "eventline_ownership_changes_total", "eventline_listener_connects_total", "eventline_pages_read_total"))
}

func TestNamespace(t *testing.T) {
	t.Parallel()
	m, reg := newMetrics(t, Config{Namespace: "shop"})
	m.Hooks().PageRead(0, 1)
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP shop_pages_read_total Pages of events read from the database.
# TYPE shop_pages_read_total counter
shop_pages_read_total 1
`), "shop_pages_read_total"))
	n, err := testutil.GatherAndCount(reg, "eventline_pages_read_total")
	require.NoError(t, err)
	require.Zero(t, n)

	// Two namespaces share one registry.
	_, err = New(reg, Config{})
	require.NoError(t, err)
}

func TestRegisterTwice(t *testing.T) {
	t.Parallel()
	_, reg := newMetrics(t, Config{})
	_, err := New(reg, Config{})
	require.ErrorContains(t, err, "eventline_batches_total")
	var already prom.AlreadyRegisteredError
	require.ErrorAs(t, err, &already)
}

func TestRegisterFailureUnregisters(t *testing.T) {
	t.Parallel()
	reg := prom.NewPedanticRegistry()
	// Same name, other labels: registering eventline_owned fails after the collectors before it.
	reg.MustRegister(prom.NewGauge(prom.GaugeOpts{Name: "eventline_owned", Help: "In the way."}))
	_, err := New(reg, Config{})
	require.ErrorContains(t, err, "register eventline_owned")

	mfs, err := reg.Gather()
	require.NoError(t, err)
	require.Len(t, mfs, 1, "New left collectors registered")
	require.Equal(t, "eventline_owned", mfs[0].GetName())
}

func TestInvalidBuckets(t *testing.T) {
	t.Parallel()
	reg := prom.NewPedanticRegistry()
	_, err := New(reg, Config{Buckets: []float64{1, 0.5}})
	require.ErrorContains(t, err, "Buckets")
	mfs, err := reg.Gather()
	require.NoError(t, err)
	require.Empty(t, mfs)
}

func TestNilRegistererIsDefault(t *testing.T) {
	// Not parallel: it uses the global default registry and cleans it up.
	m, err := New(nil, Config{})
	require.NoError(t, err)
	t.Cleanup(func() {
		for _, c := range m.collectors {
			prom.DefaultRegisterer.Unregister(c)
		}
	})
	m.Hooks().PageRead(0, 1)
	n, err := testutil.GatherAndCount(prom.DefaultGatherer, "eventline_pages_read_total")
	require.NoError(t, err)
	require.Equal(t, 1, n)
}

func TestHandler(t *testing.T) {
	t.Parallel()
	scrape := func(t *testing.T, m *Metrics) string {
		t.Helper()
		rec := httptest.NewRecorder()
		m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		require.Equal(t, 200, rec.Code)
		body, err := io.ReadAll(rec.Body)
		require.NoError(t, err)
		return string(body)
	}

	t.Run("Registry", func(t *testing.T) {
		t.Parallel()
		m, reg := newMetrics(t, Config{})
		reg.MustRegister(prom.NewCounter(prom.CounterOpts{Name: "other_total", Help: "Not ours."}))
		m.Hooks().ListenerConnected(1)
		body := scrape(t, m)
		require.Contains(t, body, "eventline_listener_connects_total 1\n")
		require.Contains(t, body, "other_total 0\n", "serves the whole registry")
	})

	t.Run("Wrapped", func(t *testing.T) {
		t.Parallel()
		reg := prom.NewPedanticRegistry()
		m, err := New(prom.WrapRegistererWith(prom.Labels{"runner": "a"}, reg), Config{})
		require.NoError(t, err)
		m.Hooks().ListenerConnected(1)
		require.Contains(t, scrape(t, m), "eventline_listener_connects_total 1\n", "serves its own metrics")
		n, err := testutil.GatherAndCount(reg, "eventline_listener_connects_total")
		require.NoError(t, err)
		require.Equal(t, 1, n)
	})
}

func TestHooksAllocateNothing(t *testing.T) {
	// Not parallel: AllocsPerRun refuses to run in parallel tests.
	m, _ := newMetrics(t, Config{})
	h := m.Hooks()
	b := runner.BatchInfo{Unit: ordersV2, Events: 3, From: 1, To: 4, Took: time.Millisecond, Lag: time.Millisecond}
	h.BatchCommitted(b) // creates the series
	h.OwnershipChanged(ordersV2, true)
	allocs := testing.AllocsPerRun(100, func() {
		h.BatchCommitted(b)
		h.Progressed(ordersV2, 5)
		h.HeldAtGap(ordersV2, 6)
		h.OwnershipChanged(ordersV2, true)
		h.PageRead(1, 3)
	})
	require.Zero(t, allocs)
}

func TestConcurrentHooks(t *testing.T) {
	t.Parallel()
	m, reg := newMetrics(t, Config{})
	h := m.Hooks()
	const goroutines, rounds = 16, 200
	keys := []runner.Unit{orders, ordersV2, {Projection: "audit", Partition: 1}}
	gatherErrs := make(chan error, goroutines)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range rounds {
				k := keys[(g+i)%len(keys)]
				h.BatchCommitted(runner.BatchInfo{Unit: k, Events: 2, From: int64(i), To: int64(i + 2), Took: time.Millisecond, Lag: time.Millisecond})
				h.Progressed(k, int64(i))
				h.HeldAtGap(k, int64(i))
				h.Retrying(k, errors.New("transient"), time.Millisecond)
				h.HandlerFailed(k, int64(i), errors.New("bad"), runner.DeadLetter)
				h.OwnershipChanged(k, i%2 == 0)
				h.ListenerConnected(uint32(g))
				h.PageRead(int64(i), 2)
			}
		})
		// Gathering while hooks run must be safe too.
		wg.Go(func() {
			_, err := reg.Gather()
			gatherErrs <- err
		})
	}
	wg.Wait()
	close(gatherErrs)
	for err := range gatherErrs {
		require.NoError(t, err)
	}

	sum := func(v *prom.CounterVec, extra ...string) float64 {
		var total float64
		for _, k := range keys {
			s := m.seriesOf(k)
			total += testutil.ToFloat64(v.WithLabelValues(append(s.labels[:], extra...)...))
		}
		return total
	}
	const calls = goroutines * rounds
	require.Equal(t, float64(calls), sum(m.batches))
	require.Equal(t, float64(2*calls), sum(m.events))
	require.Equal(t, float64(calls), sum(m.gaps))
	require.Equal(t, float64(calls), sum(m.retries))
	require.Equal(t, float64(calls), sum(m.dead))
	require.Equal(t, float64(calls), sum(m.failures, "dead-letter"))
	require.Equal(t, float64(calls), sum(m.ownershipChanges, "acquired")+sum(m.ownershipChanges, "released"))
	require.Equal(t, float64(calls), testutil.ToFloat64(m.listenerConnects))
	require.Equal(t, float64(calls), testutil.ToFloat64(m.pagesRead))
	require.Equal(t, len(keys), testutil.CollectAndCount(m.batches))
}

// Heartbeats refresh the gauges of the units the process has, and delete those of the units it
// no longer has; counters stay.
func TestHeartbeat(t *testing.T) {
	t.Parallel()
	m, reg := newMetrics(t, Config{})
	h := m.Hooks()
	h.OwnershipChanged(orders, true)
	h.BatchCommitted(runner.BatchInfo{Unit: runner.Unit{Projection: "orders", Version: 1, Partitions: 1}, Events: 1, To: 5})
	h.Heartbeat(runner.HeartbeatInfo{Horizon: 42, Units: []runner.UnitInfo{
		{Unit: runner.Unit{Projection: "orders", Version: 1, Partitions: 1}, Owned: true, State: "stopped", Position: 5, Lag: 90 * time.Second},
		{Unit: ordersV2, Owned: false, State: "building", Position: 3},
	}})
	require.Equal(t, 42.0, testutil.ToFloat64(m.head))
	require.Equal(t, 90.0, testutil.ToFloat64(m.lag.WithLabelValues("orders", "1", "0")))
	require.Equal(t, 5.0, testutil.ToFloat64(m.position.WithLabelValues("orders", "1", "0")))
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP eventline_owned 1 while this process owns the checkpoint, else 0.
# TYPE eventline_owned gauge
eventline_owned{partition="0",projection="orders",version="1"} 1
eventline_owned{partition="3",projection="orders",version="2"} 0
`), "eventline_owned"))
	state := func(p, v, n, st string) float64 { return testutil.ToFloat64(m.state.WithLabelValues(p, v, n, st)) }
	require.Equal(t, 1.0, state("orders", "1", "0", "stopped"))
	require.Equal(t, 0.0, state("orders", "1", "0", "running"))
	require.Equal(t, 1.0, state("orders", "2", "3", "building"))
	require.Equal(t, 2*len(runner.UnitStates()), testutil.CollectAndCount(m.state))

	// orders@2 is gone (retired, or handed over): its gauges go, its counters stay; orders@1
	// comes back with new gauges after it was gone too.
	h.Heartbeat(runner.HeartbeatInfo{Horizon: 43, Units: []runner.UnitInfo{
		{Unit: runner.Unit{Projection: "orders", Version: 1, Partitions: 1}, Owned: true, State: "running", Position: 43},
	}})
	require.Equal(t, len(runner.UnitStates()), testutil.CollectAndCount(m.state))
	require.Equal(t, 1, testutil.CollectAndCount(m.owned))
	require.Equal(t, 1, testutil.CollectAndCount(m.position))
	require.Equal(t, 2, testutil.CollectAndCount(m.batches), "counters stay")
	require.Equal(t, 0.0, testutil.ToFloat64(m.lag.WithLabelValues("orders", "1", "0")), "caught up")
	h.Heartbeat(runner.HeartbeatInfo{Horizon: 43})
	require.Equal(t, 0, testutil.CollectAndCount(m.owned))
	require.Equal(t, 0, testutil.CollectAndCount(m.lag))
	h.Heartbeat(runner.HeartbeatInfo{Horizon: 44, Units: []runner.UnitInfo{
		{Unit: runner.Unit{Projection: "orders", Version: 1, Partitions: 1}, Owned: true, State: "running", Position: 44},
	}})
	require.Equal(t, 44.0, testutil.ToFloat64(m.position.WithLabelValues("orders", "1", "0")))
	require.Equal(t, 1, testutil.CollectAndCount(m.owned))
}

// A partition change runs both layouts of a version for a while, and partition 0 of each has the
// same labels: when the old layout's unit goes (the switch is done), the gauges of the new
// layout's partition 0 stay reported.
func TestHeartbeatAfterPartitionChange(t *testing.T) {
	t.Parallel()
	m, _ := newMetrics(t, Config{})
	h := m.Hooks()
	old := runner.Unit{Projection: "orders", Version: 1, Partitions: 1}
	p0 := runner.Unit{Projection: "orders", Version: 1, Partitions: 2, Partition: 0}
	p1 := runner.Unit{Projection: "orders", Version: 1, Partitions: 2, Partition: 1}
	h.Heartbeat(runner.HeartbeatInfo{Horizon: 10, Units: []runner.UnitInfo{
		{Unit: old, Owned: true, State: "running", Position: 10},
		{Unit: p0, Owned: true, State: "waiting", Position: 10},
		{Unit: p1, Owned: true, State: "waiting", Position: 10},
	}})
	for i, pos := range []int64{12, 13} {
		h.Heartbeat(runner.HeartbeatInfo{Horizon: pos, Units: []runner.UnitInfo{
			{Unit: p0, Owned: true, State: "running", Position: pos, Lag: time.Second},
			{Unit: p1, Owned: true, State: "running", Position: pos, Lag: time.Second},
		}})
		require.Equal(t, 2, testutil.CollectAndCount(m.position), "heartbeat %d after the switch", i+1)
		require.Equal(t, 2, testutil.CollectAndCount(m.owned), "heartbeat %d after the switch", i+1)
		require.Equal(t, 2, testutil.CollectAndCount(m.lag), "heartbeat %d after the switch", i+1)
		require.Equal(t, float64(pos), testutil.ToFloat64(m.position.WithLabelValues("orders", "1", "0")))
		require.Equal(t, 1.0, testutil.ToFloat64(m.state.WithLabelValues("orders", "1", "0", "running")))
	}
}
