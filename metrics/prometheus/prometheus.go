// Package prometheus exports a runner's hooks as Prometheus metrics.
//
//	m, err := prometheus.New(prom.DefaultRegisterer, prometheus.Config{}) // prom is github.com/prometheus/client_golang/prometheus
//	if err != nil {
//		return err
//	}
//	r, err := runner.New(pool, store, runner.Config{Hooks: m.Hooks()})
//	http.Handle("/metrics", m.Handler()) // or promhttp.Handler() for the default registry
//
// The metrics, all prefixed with the namespace ("eventline" unless Config.Namespace says otherwise),
// are labelled with projection, version and partition (of runner.Unit) unless noted:
//
//	eventline_batches_total                counter    batches committed
//	eventline_events_applied_total         counter    events in those batches
//	eventline_batch_duration_seconds       histogram  handler to commit, per batch
//	eventline_lag_seconds                  gauge      how far behind: the age of the first event not applied yet,
//	                                                  every heartbeat (0 when caught up); and at each commit,
//	                                                  the age of the batch's last event
//	eventline_position                     gauge      last position reached (committed or skipped to)
//	eventline_head_position                gauge      this process's horizon: every position at or below it is
//	                                                  settled; no labels. Lag in events: head minus position
//	eventline_unit_state                   gauge      1 for the unit's state, 0 for the others; extra label state
//	                                                  (running|stopped|paused|building|waiting|retired|standby)
//	eventline_gaps_waited_total            counter    waits at a position not yet settled
//	eventline_retries_total                counter    transient errors (batch, or event under WithRetry, tried again)
//	eventline_handler_failures_total       counter    events failed for good; extra label policy (stop|dead-letter)
//	eventline_dead_letters_total           counter    events parked by the dead-letter policy
//	eventline_owned                        gauge      1 while this process owns the checkpoint, else 0
//	eventline_ownership_changes_total      counter    extra label change (acquired|released)
//	eventline_listener_connects_total      counter    listener (re)connections; no labels
//	eventline_pages_read_total             counter    pages of events read; no labels
//
// A checkpoint's counters and histogram appear, at zero, the first time any hook reports on it,
// so that rate() and increase() see the first increment; its gauges appear when first set. The
// gauges (lag, position, state, owned) are refreshed with every heartbeat of the runner
// (runner.Config.HeartbeatInterval), so they keep moving when nothing commits (a projection
// stopped or hung); they are deleted once the process no longer has the unit (released to
// another process, or retired by a cut-over), so a retired version stops reporting ownership.
// Counters are never deleted.
//
// To run several runners in one process against one registry, give each its own namespace, or
// wrap the registerer with constant labels: prom.WrapRegistererWith(prom.Labels{"runner": "a"}, reg).
// To call other hooks besides these, wrap the functions of Hooks in your own.
package prometheus

import (
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	prom "github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/eventline/eventline/runner"
)

// unitStates are the values of eventline_unit_state's state label.
var unitStates = runner.UnitStates()

// NamespaceDefault is the prefix of every metric name unless Config.Namespace sets another.
const NamespaceDefault = "eventline"

// BucketsDefault returns the default buckets of eventline_batch_duration_seconds: 1ms to 10s.
func BucketsDefault() []float64 {
	return []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}
}

// Config configures New. The zero value is valid: every field has a default.
type Config struct {
	// Namespace is the prefix of every metric name. Defaults to "eventline".
	Namespace string
	// Buckets are the upper bounds, in seconds and increasing, of the buckets of
	// eventline_batch_duration_seconds. Defaults to BucketsDefault().
	Buckets []float64
}

func (c Config) withDefaults() Config {
	if c.Namespace == "" {
		c.Namespace = NamespaceDefault
	}
	if len(c.Buckets) == 0 {
		c.Buckets = BucketsDefault()
	} else {
		c.Buckets = append([]float64(nil), c.Buckets...)
	}
	return c
}

func (c Config) validate() error {
	for i := 1; i < len(c.Buckets); i++ {
		if !(c.Buckets[i] > c.Buckets[i-1]) { // also rejects NaN
			return fmt.Errorf("metrics config: invalid Buckets: %v is not increasing", c.Buckets)
		}
	}
	return nil
}

// Metrics holds the collectors that Hooks update. It is safe for concurrent use.
type Metrics struct {
	reg        prom.Registerer
	collectors []prom.Collector // as registered, for Handler

	batches, events  *prom.CounterVec
	duration         *prom.HistogramVec
	lag, position    *prom.GaugeVec
	gaps, retries    *prom.CounterVec
	failures, dead   *prom.CounterVec
	owned            *prom.GaugeVec
	state            *prom.GaugeVec
	head             prom.Gauge
	ownershipChanges *prom.CounterVec
	listenerConnects prom.Counter
	pagesRead        prom.Counter
	series           sync.Map // runner.Unit -> *series
	reportedMu       sync.Mutex
	reported         map[runner.Unit]bool // the units of the last heartbeat
	handlerOnce      sync.Once
	handler          http.Handler
}

// series holds one checkpoint's children of the labelled collectors, so that a hook costs one
// map lookup.
type series struct {
	labels             [3]string // projection, version, partition
	batches, events    prom.Counter
	duration           prom.Observer
	lag, position      lazyGauge
	gaps, retries      prom.Counter
	dead               prom.Counter
	owned              lazyGauge
	acquired, released prom.Counter
}

// New creates the collectors and registers them with reg (prom.DefaultRegisterer when nil). It
// fails, naming the collector, if one cannot be registered, for instance because New already
// registered it with reg; then it unregisters those it had registered.
func New(reg prom.Registerer, cfg Config) (*Metrics, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if reg == nil {
		reg = prom.DefaultRegisterer
	}
	ns := cfg.Namespace
	key := []string{"projection", "version", "partition"}
	counter := func(name, help string, extra ...string) *prom.CounterVec {
		return prom.NewCounterVec(prom.CounterOpts{Namespace: ns, Name: name, Help: help}, append(key[:3:3], extra...))
	}
	gauge := func(name, help string) *prom.GaugeVec {
		return prom.NewGaugeVec(prom.GaugeOpts{Namespace: ns, Name: name, Help: help}, key)
	}
	m := &Metrics{
		reg:              reg,
		reported:         map[runner.Unit]bool{},
		batches:          counter("batches_total", "Batches of events applied and committed."),
		events:           counter("events_applied_total", "Events applied in committed batches."),
		duration:         prom.NewHistogramVec(prom.HistogramOpts{Namespace: ns, Name: "batch_duration_seconds", Help: "Time from handing a batch to the handler to its commit.", Buckets: cfg.Buckets}, key),
		lag:              gauge("lag_seconds", "Age of the first event not applied yet (every heartbeat; 0 when caught up), or of a committed batch's last event (at the commit)."),
		position:         gauge("position", "Last global position the projection reached."),
		gaps:             counter("gaps_waited_total", "Times the projection waited at a position not yet settled."),
		retries:          counter("retries_total", "Transient errors after which a batch, or an event under the retry policy, was tried again."),
		failures:         counter("handler_failures_total", "Events the handler failed on for good, by failure policy applied.", "policy"),
		dead:             counter("dead_letters_total", "Events parked in the dead-letter table."),
		owned:            gauge("owned", "1 while this process owns the checkpoint, else 0."),
		state:            prom.NewGaugeVec(prom.GaugeOpts{Namespace: ns, Name: "unit_state", Help: "1 for the unit's current state, 0 for the others."}, append(key[:3:3], "state")),
		head:             prom.NewGauge(prom.GaugeOpts{Namespace: ns, Name: "head_position", Help: "This process's horizon: every global position at or below it is settled."}),
		ownershipChanges: counter("ownership_changes_total", "Times this process acquired or released the checkpoint.", "change"),
		listenerConnects: prom.NewCounter(prom.CounterOpts{Namespace: ns, Name: "listener_connects_total", Help: "Times the listener connected or reconnected."}),
		pagesRead:        prom.NewCounter(prom.CounterOpts{Namespace: ns, Name: "pages_read_total", Help: "Pages of events read from the database."}),
	}
	for _, c := range []struct {
		name string
		c    prom.Collector
	}{
		{"batches_total", m.batches},
		{"events_applied_total", m.events},
		{"batch_duration_seconds", m.duration},
		{"lag_seconds", m.lag},
		{"position", m.position},
		{"gaps_waited_total", m.gaps},
		{"retries_total", m.retries},
		{"handler_failures_total", m.failures},
		{"dead_letters_total", m.dead},
		{"owned", m.owned},
		{"unit_state", m.state},
		{"head_position", m.head},
		{"ownership_changes_total", m.ownershipChanges},
		{"listener_connects_total", m.listenerConnects},
		{"pages_read_total", m.pagesRead},
	} {
		if err := reg.Register(c.c); err != nil {
			for _, done := range m.collectors {
				reg.Unregister(done)
			}
			return nil, fmt.Errorf("metrics: register %s: %w", prom.BuildFQName(ns, "", c.name), err)
		}
		m.collectors = append(m.collectors, c.c)
	}
	return m, nil
}

// Hooks returns hooks that update the metrics; set them as runner.Config.Hooks. Every function
// is set, cheap (after a checkpoint's first report, a map lookup and atomic updates) and safe
// for concurrent use.
func (m *Metrics) Hooks() runner.Hooks {
	return runner.Hooks{
		BatchCommitted:    m.batchCommitted,
		HandlerFailed:     m.handlerFailed,
		Retrying:          m.retrying,
		HeldAtGap:         m.heldAtGap,
		ListenerConnected: m.listenerConnected,
		Progressed:        m.progressed,
		OwnershipChanged:  m.ownershipChanged,
		PageRead:          m.pageRead,
		Heartbeat:         m.heartbeat,
	}
}

// Handler serves the metrics in the Prometheus exposition format. When the Registerer given to
// New is also a prom.Gatherer (a *prom.Registry, as prom.DefaultRegisterer and prom.NewRegistry()
// are), it serves everything registered there, not just these metrics. Otherwise (a wrapping
// Registerer, say) it serves these metrics alone, without what the wrapper adds; serve the
// registry behind the wrapper with promhttp.HandlerFor instead.
func (m *Metrics) Handler() http.Handler {
	m.handlerOnce.Do(func() {
		g, ok := m.reg.(prom.Gatherer)
		if !ok {
			own := prom.NewRegistry()
			for _, c := range m.collectors {
				own.MustRegister(c) // cannot fail: they registered once with the same descriptors
			}
			g = own
		}
		m.handler = promhttp.HandlerFor(g, promhttp.HandlerOpts{})
	})
	return m.handler
}

// seriesOf returns key's children, creating them on the first report on key.
func (m *Metrics) seriesOf(key runner.Unit) *series {
	if s, ok := m.series.Load(key); ok {
		return s.(*series)
	}
	version := key.Version
	if version == 0 {
		version = 1
	}
	l := [3]string{key.Projection, strconv.Itoa(version), strconv.Itoa(key.Partition)}
	p, v, n := l[0], l[1], l[2]
	s := &series{
		labels:   l,
		lag:      lazyGauge{vec: m.lag},
		position: lazyGauge{vec: m.position},
		owned:    lazyGauge{vec: m.owned},
		batches:  m.batches.WithLabelValues(p, v, n),
		events:   m.events.WithLabelValues(p, v, n),
		duration: m.duration.WithLabelValues(p, v, n),
		gaps:     m.gaps.WithLabelValues(p, v, n),
		retries:  m.retries.WithLabelValues(p, v, n),
		dead:     m.dead.WithLabelValues(p, v, n),
		acquired: m.ownershipChanges.WithLabelValues(p, v, n, "acquired"),
		released: m.ownershipChanges.WithLabelValues(p, v, n, "released"),
	}
	// Two goroutines may both get here: WithLabelValues returned both the same children, and
	// one series is kept.
	got, _ := m.series.LoadOrStore(key, s)
	return got.(*series)
}

func (m *Metrics) batchCommitted(b runner.BatchInfo) {
	s := m.seriesOf(b.Unit)
	s.batches.Inc()
	s.events.Add(float64(b.Events))
	s.duration.Observe(b.Took.Seconds())
	s.lag.get(s).Set(b.Lag.Seconds())
	s.position.get(s).Set(float64(b.To))
}

func (m *Metrics) handlerFailed(key runner.Unit, _ int64, _ error, policy runner.FailurePolicy) {
	s := m.seriesOf(key)
	// Failures are rare: the policy's child is looked up each time rather than kept.
	m.failures.WithLabelValues(s.labels[0], s.labels[1], s.labels[2], policy.String()).Inc()
	if policy == runner.DeadLetter {
		s.dead.Inc()
	}
}

func (m *Metrics) retrying(key runner.Unit, _ error, _ time.Duration) {
	m.seriesOf(key).retries.Inc()
}

func (m *Metrics) heldAtGap(key runner.Unit, _ int64) {
	m.seriesOf(key).gaps.Inc()
}

func (m *Metrics) listenerConnected(uint32) {
	m.listenerConnects.Inc()
}

func (m *Metrics) progressed(key runner.Unit, position int64) {
	s := m.seriesOf(key)
	s.position.get(s).Set(float64(position))
}

func (m *Metrics) ownershipChanged(key runner.Unit, owned bool) {
	s := m.seriesOf(key)
	if owned {
		s.owned.get(s).Set(1)
		s.acquired.Inc()
	} else {
		s.owned.get(s).Set(0)
		s.released.Inc()
	}
}

func (m *Metrics) pageRead(int64, int) {
	m.pagesRead.Inc()
}

// heartbeat refreshes the gauges of the units the process has, and deletes those of the units it
// had at the last heartbeat and no longer has.
func (m *Metrics) heartbeat(h runner.HeartbeatInfo) {
	m.head.Set(float64(h.Horizon))
	m.reportedMu.Lock()
	defer m.reportedMu.Unlock()
	now := make(map[runner.Unit]bool, len(h.Units))
	// The labels of the units reported now: during a partition change, partition k of both
	// layouts of a version has the same labels (and so the same gauges).
	live := make(map[[3]string]bool, len(h.Units))
	for _, u := range h.Units {
		now[u.Unit] = true
		s := m.seriesOf(u.Unit)
		live[s.labels] = true
		s.position.get(s).Set(float64(u.Position))
		if u.Owned {
			s.owned.get(s).Set(1)
			s.lag.get(s).Set(u.Lag.Seconds())
		} else {
			s.owned.get(s).Set(0)
		}
		if u.State != "" {
			for _, st := range unitStates {
				v := 0.0
				if st == u.State {
					v = 1
				}
				m.state.WithLabelValues(s.labels[0], s.labels[1], s.labels[2], st).Set(v)
			}
		}
	}
	for u := range m.reported {
		if !now[u] {
			m.forget(u, live)
		}
	}
	m.reported = now
}

// forget deletes the gauges of a unit the process no longer has, unless a unit it still has
// shares their labels (keep); its counters stay. The next report on it starts new gauges.
func (m *Metrics) forget(u runner.Unit, keep map[[3]string]bool) {
	v, ok := m.series.LoadAndDelete(u)
	if !ok {
		return
	}
	l := v.(*series).labels
	if keep[l] {
		return // deleting them would leave the other unit's series setting gauges nobody collects
	}
	for _, g := range []*prom.GaugeVec{m.lag, m.position, m.owned} {
		g.DeleteLabelValues(l[:]...)
	}
	m.state.DeletePartialMatch(prom.Labels{"projection": l[0], "version": l[1], "partition": l[2]})
}

// lazyGauge is a gauge child created when first set, so that a gauge never reports a value
// nobody set (a lag of 0 before any batch, say).
type lazyGauge struct {
	vec  *prom.GaugeVec
	once sync.Once
	g    prom.Gauge
}

func (l *lazyGauge) get(s *series) prom.Gauge {
	l.once.Do(func() { l.g = l.vec.WithLabelValues(s.labels[:]...) })
	return l.g
}
