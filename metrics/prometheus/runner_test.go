package prometheus_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	prom "github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/eventstore/postgres"
	"github.com/eventline/eventline/internal/pgtest"
	"github.com/eventline/eventline/metrics/prometheus"
	"github.com/eventline/eventline/runner"
)

// versioned is projection "p" at a version; it fails on the events of aggregate "poison".
type versioned struct{ version int }

func (v versioned) Name() string { return "p" }
func (v versioned) Version() int { return v.version }
func (v versioned) Handle(_ context.Context, _ pgx.Tx, evs []eventstore.PersistedEvent) error {
	for _, ev := range evs {
		if ev.AggregateID == "poison" {
			return errors.New("poison")
		}
	}
	return nil
}

// startRunner runs a runner with m's hooks and the projections until the test ends.
func startRunner(t *testing.T, db *pgtest.Database, m *prometheus.Metrics, projections ...versioned) {
	t.Helper()
	r, err := runner.New(db.Pool, postgres.NewStore(nil), runner.Config{Logger: zaptest.NewLogger(t), Hooks: m.Hooks(),
		PollInterval: 50 * time.Millisecond, HeartbeatInterval: 50 * time.Millisecond, Lease: 2 * time.Second,
		NodeTimeout: time.Second})
	require.NoError(t, err)
	for _, p := range projections {
		require.NoError(t, r.Register(p))
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
}

// gauge returns the value of the series of family name with all of labels, and whether there is one.
func gauge(t *testing.T, reg prom.Gatherer, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	families, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range families {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for k, v := range labels {
				found := false
				for _, l := range m.GetLabel() {
					found = found || (l.GetName() == k && l.GetValue() == v)
				}
				if !found {
					continue metrics
				}
			}
			return m.GetGauge().GetValue(), true
		}
	}
	return 0, false
}

// eventually waits, up to 10s, until cond holds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	require.Eventually(t, cond, 10*time.Second, 10*time.Millisecond, "waiting for %s", what)
}

func appendEvent(t *testing.T, db *pgtest.Database, id string, created time.Time) {
	t.Helper()
	_, err := postgres.NewStore(nil).Append(t.Context(), db.Pool, eventstore.Any(), []eventstore.Event{
		{AggregateType: "a", AggregateID: id, EventType: "Happened", Payload: []byte(`{}`), CreatedAt: created}})
	require.NoError(t, err)
}

// A stopped projection commits nothing more, yet its lag keeps growing and its state says
// stopped: the heartbeat refreshes them from the horizon.
func TestGaugesMoveWhileNothingCommits(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDatabase(t)
	reg := prom.NewPedanticRegistry()
	m, err := prometheus.New(reg, prometheus.Config{})
	require.NoError(t, err)
	startRunner(t, db, m, versioned{version: 1})
	for _, id := range []string{"a-1", "a-2"} {
		appendEvent(t, db, id, time.Time{})
	}
	p := map[string]string{"projection": "p", "version": "1", "partition": "0"}
	eventually(t, "p running at 2", func() bool {
		pos, _ := gauge(t, reg, "eventline_position", p)
		running, _ := gauge(t, reg, "eventline_unit_state", map[string]string{"projection": "p", "state": "running"})
		head, _ := gauge(t, reg, "eventline_head_position", nil)
		return pos == 2 && running == 1 && head == 2
	})

	appendEvent(t, db, "poison", time.Now().Add(-time.Hour))
	appendEvent(t, db, "a-3", time.Time{})
	eventually(t, "p stopped, lagging an hour behind a head of 4", func() bool {
		stopped, _ := gauge(t, reg, "eventline_unit_state", map[string]string{"projection": "p", "state": "stopped"})
		running, _ := gauge(t, reg, "eventline_unit_state", map[string]string{"projection": "p", "state": "running"})
		lag, _ := gauge(t, reg, "eventline_lag_seconds", p)
		head, _ := gauge(t, reg, "eventline_head_position", nil)
		return stopped == 1 && running == 0 && lag >= 3600 && head == 4
	})
	lag, _ := gauge(t, reg, "eventline_lag_seconds", p)
	eventually(t, "the lag to grow", func() bool {
		now, _ := gauge(t, reg, "eventline_lag_seconds", p)
		return now > lag
	})
	pos, _ := gauge(t, reg, "eventline_position", p)
	require.Equal(t, 2.0, pos)
	owned, _ := gauge(t, reg, "eventline_owned", p)
	require.Equal(t, 1.0, owned, "a stopped unit stays owned")
}

// After a cut-over, the process that runs only the retired version reports no ownership (nor
// any gauge) of it any more; the new version's process does.
func TestRetiredVersionStopsReportingOwnership(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDatabase(t)
	reg1, reg2 := prom.NewPedanticRegistry(), prom.NewPedanticRegistry()
	m1, err := prometheus.New(reg1, prometheus.Config{})
	require.NoError(t, err)
	m2, err := prometheus.New(reg2, prometheus.Config{})
	require.NoError(t, err)
	appendEvent(t, db, "a-1", time.Time{})
	v1 := map[string]string{"projection": "p", "version": "1"}
	v2 := map[string]string{"projection": "p", "version": "2"}

	startRunner(t, db, m1, versioned{version: 1})
	eventually(t, "v1 owned", func() bool {
		owned, _ := gauge(t, reg1, "eventline_owned", v1)
		return owned == 1
	})
	startRunner(t, db, m2, versioned{version: 2})
	eventually(t, "v2 active and owned, v1 no longer reported", func() bool {
		var active int
		if err := db.Pool.QueryRow(t.Context(), `SELECT active_version FROM eventline_projections WHERE projection = 'p'`).Scan(&active); err != nil {
			return false
		}
		owned2, _ := gauge(t, reg2, "eventline_owned", v2)
		_, owned1 := gauge(t, reg1, "eventline_owned", v1)
		_, state1 := gauge(t, reg1, "eventline_unit_state", v1)
		return active == 2 && owned2 == 1 && !owned1 && !state1
	})
	_, ok := gauge(t, reg1, "eventline_owned", nil)
	require.False(t, ok, "the retired version's process owns nothing")
}
