package admin

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestCheck(t *testing.T) {
	lease := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	unit := func(name, role, state, owner string, lag int64, lagSeconds float64) CheckpointStatus {
		return CheckpointStatus{Projection: name, Version: 1, Partitions: 1, Role: role, State: state, Owner: owner,
			LeaseOwner: owner, Position: 100 - lag, Head: 100, Lag: lag, LagSeconds: lagSeconds}
	}
	stopped := unit("totals", "active", "stopped", "node-a", 4, 40)
	stopped.FailedPosition, stopped.LastError = 97, "boom:\n\tat x.go:1"
	expired := unit("search", "active", "running", "", 0, 0)
	expired.LeaseOwner, expired.LeaseUntil = "node-gone", &lease
	s := Snapshot{
		Lifecycle: []LifecycleStatus{{Projection: "orders", DeadLetters: 2}, {Projection: "search"}},
		// 3 of the projections without a lifecycle record.
		DeadLetters: 5,
		Projections: []CheckpointStatus{
			unit("mailer", "active", "paused", "node-a", 50, 500),     // paused: lags on purpose
			unit("orders", "active", "running", "node-a", 6, 60),      // lags 60s
			unit("orders", "retired", "retired", "", 90, 900),         // retired: not checked
			unit("search", "building", "building", "node-b", 70, 700), // building: lags while it replays
			expired, // no live owner
			unit("search", "waiting", "waiting", "", 0, 0), // no owner at all
			stopped, // stopped (and within the bound)
			unit("ok", "active", "running", "node-a", 1, 1), // fine
		},
	}
	var got []string
	for _, p := range s.Check(Bounds{MaxLag: 30 * time.Second}) {
		got = append(got, p.Kind+" "+p.String())
	}
	require.Equal(t, []string{
		"dead_letters orders: 2 dead letters (eventline dead-letters list)",
		"dead_letters 3 dead letters of projections without a lifecycle record (eventline dead-letters list)",
		"lag orders: lags 60.0s behind (bound 30s): at 94, head 100",
		"no_owner search: no live owner (the lease of node-gone ran out)",
		"no_owner search: no live owner (no runner process holds a lease on it)",
		"stopped totals: stopped at position 97: boom: at x.go:1",
	}, got)

	// In events: the bound in positions; without bounds, lag is not checked.
	got = nil
	for _, p := range s.Check(Bounds{MaxLagEvents: 5}) {
		if p.Kind == ProblemLag {
			got = append(got, p.String())
		}
	}
	require.Equal(t, []string{"orders: lags 6 positions behind (bound 5): at 94, head 100"}, got)
	for _, p := range s.Check(Bounds{}) {
		require.NotEqual(t, ProblemLag, p.Kind)
	}
	require.Empty(t, Snapshot{Projections: []CheckpointStatus{unit("ok", "active", "running", "node-a", 0, 0)}}.Check(Bounds{MaxLag: time.Second}))
}
