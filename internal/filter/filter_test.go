package filter_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/internal/filter"
	"github.com/eventline/eventline/projector"
)

func TestCompile(t *testing.T) {
	ev := func(agg, typ string) *eventstore.PersistedEvent {
		return &eventstore.PersistedEvent{Event: eventstore.Event{AggregateType: agg, EventType: typ}}
	}
	all := filter.Compile(nil)
	require.True(t, all.All())
	require.True(t, all.Match(ev("x", "y")))
	require.Nil(t, all.AggregateTypes())
	require.Nil(t, all.EventTypes())

	m := filter.Compile(projector.FilterSpec{Aggregates: []string{"account", "account"}, Events: []string{"Deposited"}})
	require.False(t, m.All())
	require.Equal(t, []string{"account"}, m.AggregateTypes(), "duplicates dropped")
	require.Equal(t, []string{"Deposited"}, m.EventTypes())
	require.True(t, m.Match(ev("account", "Deposited")))
	require.False(t, m.Match(ev("order", "Deposited")))
	require.False(t, m.Match(ev("account", "Opened")))

	onlyEvents := filter.Compile(projector.FilterSpec{Events: []string{"Opened"}})
	require.True(t, onlyEvents.Match(ev("order", "Opened")))
	require.Nil(t, onlyEvents.AggregateTypes())
}
