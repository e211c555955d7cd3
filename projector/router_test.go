package projector_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/internal/filter"
	"github.com/eventline/eventline/projector"
)

type deposited struct {
	Amount int `json:"amount"`
}

func TestRouterDecodesAndRoutes(t *testing.T) {
	r := projector.NewRouter("balances", projector.WithAggregateTypes("account"))
	var got []int
	projector.On(r, "Deposited", func(_ context.Context, _ *projector.Writes, _ eventstore.PersistedEvent, p deposited) error {
		got = append(got, p.Amount)
		return nil
	})
	require.Panics(t, func() {
		projector.On(r, "Deposited", func(context.Context, *projector.Writes, eventstore.PersistedEvent, deposited) error { return nil })
	})
	ev := func(typ, payload string) eventstore.PersistedEvent {
		return eventstore.PersistedEvent{Event: eventstore.Event{AggregateType: "account", EventType: typ, Payload: []byte(payload)}}
	}
	require.NoError(t, r.Handle(context.Background(), nil, []eventstore.PersistedEvent{
		ev("Deposited", `{"amount":5}`), ev("Opened", `{}`), ev("Deposited", `{"amount":7}`),
	}))
	require.Equal(t, []int{5, 7}, got)
	err := r.Handle(context.Background(), nil, []eventstore.PersistedEvent{ev("Deposited", `{"amount":`)})
	require.ErrorContains(t, err, "decode Deposited payload")

	m := filter.Compile(r)
	require.True(t, m.Match(&[]eventstore.PersistedEvent{ev("Deposited", "")}[0]))
	other := ev("Deposited", "")
	other.AggregateType = "order"
	require.False(t, m.Match(&other))
	require.True(t, filter.Compile(nil).All())
}

func TestRouterWithoutHandlersIsInvalid(t *testing.T) {
	r := projector.NewRouter("balances", projector.WithAggregateTypes("account"))
	err := r.Validate()
	require.ErrorIs(t, err, projector.ErrNoHandlers)
	require.ErrorContains(t, err, `router "balances"`)
	projector.On(r, "Deposited", func(context.Context, *projector.Writes, eventstore.PersistedEvent, deposited) error { return nil })
	require.NoError(t, r.Validate())
}
