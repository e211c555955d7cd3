package runner

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/internal/checkpoint"
	"github.com/eventline/eventline/internal/lifecycle"
)

func TestJoinHooks(t *testing.T) {
	var calls []string
	a := Hooks{BatchCommitted: func(BatchInfo) { calls = append(calls, "a") },
		Retrying: func(Unit, error, time.Duration) { calls = append(calls, "a-retry") }}
	b := Hooks{BatchCommitted: func(BatchInfo) { calls = append(calls, "b") },
		HeldAtGap: func(Unit, int64) { calls = append(calls, "b-held") }}
	j := JoinHooks(a, Hooks{}, b)
	j.BatchCommitted(BatchInfo{})
	j.Retrying(Unit{}, errors.New("x"), 0)
	j.HeldAtGap(Unit{}, 1)
	require.Equal(t, []string{"a", "b", "a-retry", "b-held"}, calls)
	require.Nil(t, j.PageRead)
}

func TestAssignIsEvenAndRespectsWhatNodesHave(t *testing.T) {
	var specs []string
	for i := 0; i < 20; i++ {
		specs = append(specs, unitSpec("p"+string(rune('a'+i)), 1, 1))
	}
	nodes := []checkpoint.Node{{ID: "n1", Projections: specs}, {ID: "n2", Projections: specs}, {ID: "n3", Projections: append(specs, unitSpec("only3", 1, 2))}}
	var records []lifecycle.Record
	for i := 0; i < 20; i++ {
		records = append(records, lifecycle.Record{Projection: "p" + string(rune('a'+i)), Active: lifecycle.Layout{Version: 1, Partitions: 1}})
	}
	records = append(records, lifecycle.Record{Projection: "only3", Active: lifecycle.Layout{Version: 1, Partitions: 2}},
		lifecycle.Record{Projection: "nobody", Active: lifecycle.Layout{Version: 1, Partitions: 1}})
	got := assign(nodes, records)
	load := map[string]int{}
	for k, n := range got {
		load[n]++
		if k.Projection == "only3" {
			require.Equal(t, "n3", n, "assigned only to a process that has it")
		}
	}
	require.Len(t, got, 22)
	for _, n := range []string{"n1", "n2", "n3"} {
		require.LessOrEqual(t, load[n], 8)
		require.GreaterOrEqual(t, load[n], 7)
	}
	require.Equal(t, got, assign(nodes, records), "deterministic")
}

func TestUnitOfFillsDefaultsAndPrints(t *testing.T) {
	for _, c := range []struct {
		key  checkpoint.Key
		unit Unit
		str  string
	}{
		{checkpoint.Key{Projection: "a"}, Unit{Projection: "a", Version: 1, Partitions: 1}, "a"},
		{checkpoint.Key{Projection: "a", Version: 2}, Unit{Projection: "a", Version: 2, Partitions: 1}, "a@2"},
		{checkpoint.Key{Projection: "a", Partitions: 4, Partition: 3}, Unit{Projection: "a", Version: 1, Partitions: 4, Partition: 3}, "a#3/4"},
		{checkpoint.Key{Projection: "a", Version: 2, Partitions: 4, Partition: 3}, Unit{Projection: "a", Version: 2, Partitions: 4, Partition: 3}, "a@2#3/4"},
	} {
		u := unitOf(c.key)
		require.Equal(t, c.unit, u)
		require.Equal(t, c.str, u.String())
		require.Equal(t, c.key.String(), u.String(), "the same spelling as the checkpoint's")
	}
}

// JoinHooks joins every hook: a hook added to Hooks but not to JoinHooks fails here.
func TestJoinHooksJoinsEveryHook(t *testing.T) {
	calls := map[string]int{}
	var h Hooks
	hv := reflect.ValueOf(&h).Elem()
	for i := 0; i < hv.NumField(); i++ {
		name, ft := hv.Type().Field(i).Name, hv.Field(i).Type()
		hv.Field(i).Set(reflect.MakeFunc(ft, func(args []reflect.Value) []reflect.Value {
			calls[name]++
			out := make([]reflect.Value, ft.NumOut())
			for j := range out {
				out[j] = reflect.Zero(ft.Out(j))
			}
			return out
		}))
	}
	jv := reflect.ValueOf(JoinHooks(h, Hooks{}, h))
	for i := 0; i < jv.NumField(); i++ {
		f := jv.Field(i)
		require.False(t, f.IsNil(), "%s is not joined", jv.Type().Field(i).Name)
		args := make([]reflect.Value, f.Type().NumIn())
		for j := range args {
			args[j] = reflect.Zero(f.Type().In(j))
			if f.Type().In(j) == reflect.TypeFor[context.Context]() {
				args[j] = reflect.ValueOf(context.Background())
			}
		}
		f.Call(args)
	}
	for i := 0; i < hv.NumField(); i++ {
		require.Equal(t, 2, calls[hv.Type().Field(i).Name], "%s is called once per joined Hooks", hv.Type().Field(i).Name)
	}
}

// The Handling hooks nest: the second runs in the first's context, and their ends run in reverse.
func TestJoinHandling(t *testing.T) {
	type key struct{}
	var order []string
	mk := func(name string) Hooks {
		return Hooks{Handling: func(ctx context.Context, h Handling) (context.Context, func(HandlingEnd)) {
			order = append(order, fmt.Sprint(name, " in ", ctx.Value(key{})))
			return context.WithValue(ctx, key{}, name), func(e HandlingEnd) { order = append(order, name+" "+string(e.Outcome)) }
		}}
	}
	ctx, end := JoinHooks(mk("a"), mk("b")).Handling(context.Background(), Handling{})
	require.Equal(t, "b", ctx.Value(key{}))
	end(HandlingEnd{Outcome: OutcomeOK})
	require.Equal(t, []string{"a in <nil>", "b in a", "b ok", "a ok"}, order)
}

func TestRetryDelayDoublesUpToMax(t *testing.T) {
	r := Retry{Attempts: 10, Min: 100 * time.Millisecond, Max: time.Second}
	for failed, want := range map[int]time.Duration{1: 100 * time.Millisecond, 2: 200 * time.Millisecond, 3: 400 * time.Millisecond,
		4: 800 * time.Millisecond, 5: time.Second, 9: time.Second} {
		require.Equal(t, want, r.delay(failed), "after failed attempt %d", failed)
	}
	require.Equal(t, Retry{Attempts: RetryAttemptsDefault, Min: RetryBackoffMinDefault, Max: RetryBackoffMaxDefault}, Retry{}.withDefaults())
	require.Equal(t, Retry{Attempts: 1, Min: time.Minute, Max: time.Minute}, Retry{Attempts: 1, Min: time.Minute}.withDefaults(),
		"a Min above the default Max raises Max")
}

// A Config that sets one field leaves the others at their defaults: a RetryMin above the default
// RetryMax raises it (as Retry does with Min and Max), and a field whose default does not fit
// what was set is named with its value and the rule, not just "invalid".
func TestConfigErrorsNameTheRule(t *testing.T) {
	c := Config{RetryMin: 10 * time.Second}.withDefaults()
	require.NoError(t, c.validate(), "a RetryMin above the default RetryMax")
	require.Equal(t, 10*time.Second, c.RetryMax)
	require.Equal(t, RetryMaxDefault, Config{}.withDefaults().RetryMax)

	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{HeartbeatInterval: 3 * time.Second}, "runner config: invalid Lease 5s (want at least twice HeartbeatInterval 3s)"},
		{Config{Lease: 1500 * time.Millisecond}, "runner config: invalid Lease 1.5s (want at least twice HeartbeatInterval 1s)"},
		{Config{NodeTimeout: time.Second}, "runner config: invalid NodeTimeout 1s (want more than HeartbeatInterval 1s)"},
		{Config{RetryMin: time.Second, RetryMax: 100 * time.Millisecond}, "runner config: invalid RetryMax 100ms (below RetryMin 1s)"},
		{Config{BatchSize: -3}, "runner config: invalid BatchSize -3 (want 1 or more)"},
		{Config{PollInterval: -time.Second}, "runner config: invalid PollInterval -1s (want 0 for the default, or more)"},
	} {
		require.EqualError(t, tc.cfg.withDefaults().validate(), tc.want)
	}
}
