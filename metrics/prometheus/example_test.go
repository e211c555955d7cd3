package prometheus_test

import (
	"errors"
	"fmt"
	"strings"
	"time"

	prom "github.com/prometheus/client_golang/prometheus"

	"github.com/eventline/eventline/metrics/prometheus"
	"github.com/eventline/eventline/runner"
)

func Example() {
	reg := prom.NewRegistry()
	m, err := prometheus.New(reg, prometheus.Config{})
	if err != nil {
		fmt.Println(err)
		return
	}
	// In a program: runner.New(pool, store, runner.Config{Hooks: m.Hooks()}), and serve
	// m.Handler() on /metrics. Here the hooks are called by hand, as the runner would.
	hooks := m.Hooks()
	balances := runner.Unit{Projection: "balances"}
	hooks.OwnershipChanged(balances, true)
	hooks.BatchCommitted(runner.BatchInfo{Unit: balances, Events: 500, From: 0, To: 512, Took: 40 * time.Millisecond, Lag: 3 * time.Second})
	hooks.BatchCommitted(runner.BatchInfo{Unit: balances, Events: 20, From: 512, To: 540, Took: 5 * time.Millisecond, Lag: 1500 * time.Millisecond})
	hooks.Progressed(balances, 545) // events its filter skipped
	hooks.HandlerFailed(runner.Unit{Projection: "audit", Version: 2}, 77, errors.New("bad payload"), runner.DeadLetter)

	// Again, exactly once: registration fails and names the collector.
	if _, err := prometheus.New(reg, prometheus.Config{}); err != nil {
		fmt.Println(err)
	}

	families, err := reg.Gather()
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, mf := range families {
		switch mf.GetName() {
		case "eventline_batches_total", "eventline_events_applied_total", "eventline_lag_seconds",
			"eventline_position", "eventline_owned", "eventline_handler_failures_total":
		default:
			continue
		}
		for _, metric := range mf.GetMetric() {
			var labels []string
			for _, l := range metric.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			value := metric.GetCounter().GetValue() + metric.GetGauge().GetValue()
			fmt.Printf("%s{%s} %g\n", mf.GetName(), strings.Join(labels, ","), value)
		}
	}
	// The counters of audit@2 start at zero on its first report.

	// Output:
	// metrics: register eventline_batches_total: duplicate metrics collector registration attempted
	// eventline_batches_total{partition=0,projection=audit,version=2} 0
	// eventline_batches_total{partition=0,projection=balances,version=1} 2
	// eventline_events_applied_total{partition=0,projection=audit,version=2} 0
	// eventline_events_applied_total{partition=0,projection=balances,version=1} 520
	// eventline_handler_failures_total{partition=0,policy=dead-letter,projection=audit,version=2} 1
	// eventline_lag_seconds{partition=0,projection=balances,version=1} 1.5
	// eventline_owned{partition=0,projection=balances,version=1} 1
	// eventline_position{partition=0,projection=balances,version=1} 545
}
