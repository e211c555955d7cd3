// Package deploy holds example operations assets: Prometheus rules (prometheus/) and a Grafana
// dashboard (grafana/) for the metrics of package metrics/prometheus. Its test checks them
// against the metrics a real runner registers.
package deploy

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	prom "github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"
	"go.yaml.in/yaml/v3"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/eventstore/postgres"
	"github.com/eventline/eventline/internal/pgtest"
	"github.com/eventline/eventline/metrics/prometheus"
	"github.com/eventline/eventline/runner"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

const (
	rulesFile     = "prometheus/eventline-rules.yml"
	dashboardFile = "grafana/eventline-dashboard.json"
)

var (
	metricName    = regexp.MustCompile(`\beventline_[a-zA-Z0-9_]+`)
	recordingName = regexp.MustCompile(`\beventline:[a-zA-Z0-9_:]+`)
)

type rule struct {
	Record      string            `yaml:"record"`
	Alert       string            `yaml:"alert"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

// readRules returns the rules of the rules file, checking their shape.
func readRules(t *testing.T) []rule {
	t.Helper()
	raw, err := os.ReadFile(rulesFile)
	require.NoError(t, err)
	var f struct {
		Groups []struct {
			Name  string `yaml:"name"`
			Rules []rule `yaml:"rules"`
		} `yaml:"groups"`
	}
	dec := yaml.NewDecoder(strings.NewReader(string(raw)))
	dec.KnownFields(true)
	require.NoError(t, dec.Decode(&f))
	var out []rule
	for _, g := range f.Groups {
		require.NotEmpty(t, g.Name)
		for _, r := range g.Rules {
			require.True(t, (r.Alert == "") != (r.Record == ""), "a rule records or alerts: %+v", r)
			require.NotEmpty(t, strings.TrimSpace(r.Expr), "%s%s has no expression", r.Alert, r.Record)
			if r.Alert != "" {
				require.Contains(t, []string{"critical", "warning", "info"}, r.Labels["severity"], r.Alert)
				require.NotEmpty(t, r.Annotations["summary"], r.Alert)
				if r.For != "" {
					_, err := time.ParseDuration(r.For)
					require.NoError(t, err, r.Alert)
				}
			}
			out = append(out, r)
		}
	}
	return out
}

// dashboardExprs returns every query of the dashboard: the panels' targets and the variables'.
func dashboardExprs(t *testing.T) []string {
	t.Helper()
	raw, err := os.ReadFile(dashboardFile)
	require.NoError(t, err)
	var d any
	require.NoError(t, json.Unmarshal(raw, &d))
	var out []string
	var walk func(v any, key string)
	walk = func(v any, key string) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				walk(x, k)
			}
		case []any:
			for _, x := range v {
				walk(x, key)
			}
		case string:
			if key == "expr" || key == "definition" || key == "query" {
				out = append(out, v)
			}
		}
	}
	walk(d, "")
	require.NotEmpty(t, out)
	return out
}

// balanced reports whether the brackets of a PromQL expression match, outside strings.
func balanced(expr string) bool {
	var stack []rune
	pairs := map[rune]rune{')': '(', ']': '[', '}': '{'}
	var quote rune
	for _, c := range expr {
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case c == '"' || c == '\'' || c == '`':
			quote = c
		case c == '(' || c == '[' || c == '{':
			stack = append(stack, c)
		case pairs[c] != 0:
			if len(stack) == 0 || stack[len(stack)-1] != pairs[c] {
				return false
			}
			stack = stack[:len(stack)-1]
		}
	}
	return len(stack) == 0 && quote == 0
}

// used returns the eventline metric families the expressions use (a histogram's _bucket, _sum and
// _count series count as the histogram).
func used(exprs []string, histograms map[string]bool) map[string][]string {
	out := map[string][]string{}
	for _, e := range exprs {
		for _, name := range metricName.FindAllString(e, -1) {
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				if base, ok := strings.CutSuffix(name, suffix); ok && histograms[base] {
					name = base
				}
			}
			out[name] = append(out[name], e)
		}
	}
	return out
}

// poisoned is a projection that fails on the events of aggregate "poison" (dead-lettered).
type poisoned struct{}

func (poisoned) Name() string { return "orders" }
func (poisoned) Handle(_ context.Context, _ pgx.Tx, evs []eventstore.PersistedEvent) error {
	for _, ev := range evs {
		if ev.AggregateID == "poison" {
			return errors.New("poison")
		}
	}
	return nil
}

// registeredMetrics runs a real runner with the Prometheus adapter over a few events, one of
// them dead-lettered, until every hook has reported, and returns the families it registered
// (name -> is a histogram).
func registeredMetrics(t *testing.T, want map[string][]string) map[string]bool {
	t.Helper()
	db := pgtest.NewDatabase(t)
	store := postgres.NewStore(nil)
	reg := prom.NewPedanticRegistry()
	m, err := prometheus.New(reg, prometheus.Config{})
	require.NoError(t, err)
	r, err := runner.New(db.Pool, store, runner.Config{Logger: zaptest.NewLogger(t), Hooks: m.Hooks(),
		PollInterval: 50 * time.Millisecond, HeartbeatInterval: 50 * time.Millisecond, Lease: 2 * time.Second,
		NodeTimeout: time.Second})
	require.NoError(t, err)
	require.NoError(t, r.Register(poisoned{}, runner.WithFailurePolicy(runner.DeadLetter)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() {
		cancel()
		require.NoError(t, <-done)
	}()
	for _, id := range []string{"o-1", "poison", "o-2"} {
		_, err := store.Append(t.Context(), db.Pool, eventstore.Any(), []eventstore.Event{
			{AggregateType: "order", AggregateID: id, EventType: "Placed", Payload: []byte(`{}`)}})
		require.NoError(t, err)
	}
	families := map[string]bool{}
	deadline := time.Now().Add(10 * time.Second)
	for {
		mfs, err := reg.Gather()
		require.NoError(t, err)
		clear(families)
		for _, mf := range mfs {
			families[mf.GetName()] = mf.GetType().String() == "HISTOGRAM"
		}
		missing := 0
		for name := range want {
			if _, ok := families[name]; !ok {
				missing++
			}
		}
		if missing == 0 || time.Now().After(deadline) {
			return families
		}
		time.Sleep(20 * time.Millisecond) // polls the registry until the heartbeats and hooks have reported
	}
}

// Every eventline metric the example rules and the dashboard use is one the adapter registers
// when a real runner runs; every recording rule they use is defined.
func TestRulesAndDashboardUseExistingMetrics(t *testing.T) {
	t.Parallel()
	rules := readRules(t)
	var ruleExprs []string
	recorded := map[string]bool{}
	for _, r := range rules {
		ruleExprs = append(ruleExprs, r.Expr)
		if r.Record != "" {
			require.Regexp(t, `^eventline:[a-z0-9_:]+$`, r.Record)
			recorded[r.Record] = true
		}
	}
	exprs := append(ruleExprs, dashboardExprs(t)...)
	for _, e := range exprs {
		require.True(t, balanced(e), "unbalanced brackets in %q", e)
	}
	for _, e := range ruleExprs {
		for _, name := range recordingName.FindAllString(e, -1) {
			require.True(t, recorded[name], "%s is used but not recorded: %q", name, e)
		}
	}

	// First pass without knowing the histograms, to know what to wait for.
	families := registeredMetrics(t, used(exprs, map[string]bool{"eventline_batch_duration_seconds": true}))
	uses := used(exprs, families)
	require.NotEmpty(t, uses)
	var missing []string
	for name, in := range uses {
		if _, ok := families[name]; !ok {
			missing = append(missing, name+" (in "+strings.Join(in, " | ")+")")
		}
	}
	slices.Sort(missing)
	require.Empty(t, missing, "metrics used by %s or %s that the adapter does not register", rulesFile, dashboardFile)

	// The metrics an operator alerts on are all used by the rules.
	for _, name := range []string{"eventline_unit_state", "eventline_lag_seconds", "eventline_owned", "eventline_head_position",
		"eventline_dead_letters_total"} {
		require.NotEmpty(t, used(ruleExprs, families)[name], "the rules do not use %s", name)
	}
}
