package projector_test

import (
	"context"
	"errors"
	"reflect"
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

// The deferred path cannot hand out results: Writes.Exec returns nothing, and Writes has no
// method that could (no Query, no QueryRow, no transaction). A handler that needs a result must
// be registered with OnTx, whose type says so.
func TestWritesGivesNoResults(t *testing.T) {
	typ := reflect.TypeFor[*projector.Writes]()
	var methods []string
	for m := range typ.Methods() {
		methods = append(methods, m.Name)
	}
	require.Equal(t, []string{"Exec", "Len"}, methods)
	exec, _ := typ.MethodByName("Exec")
	require.Zero(t, exec.Type.NumOut(), "Exec returns nothing: the statement has not run yet")
	for _, f := range reflect.VisibleFields(reflect.TypeFor[projector.Writes]()) {
		require.False(t, f.IsExported(), f.Name)
	}
}

// Errors of a handler name the event (an EventError), so that the runner can cut the batch there.
func TestRouterErrorsNameTheEvent(t *testing.T) {
	r := projector.NewRouter("balances")
	projector.On(r, "Deposited", func(_ context.Context, _ *projector.Writes, ev eventstore.PersistedEvent, p deposited) error {
		if p.Amount < 0 {
			return errors.New("negative")
		}
		return nil
	})
	ev := func(pos int64, payload string) eventstore.PersistedEvent {
		return eventstore.PersistedEvent{GlobalPosition: pos, Event: eventstore.Event{EventType: "Deposited", Payload: []byte(payload)}}
	}
	for _, tc := range []struct {
		events []eventstore.PersistedEvent
		pos    int64
		text   string
	}{
		{[]eventstore.PersistedEvent{ev(1, `{"amount":1}`), ev(2, `{"amount":-1}`)}, 2, "negative"},
		{[]eventstore.PersistedEvent{ev(4, `{"amount":1}`), ev(7, `{"amount"`), ev(9, `{"amount":-1}`)}, 7, "decode Deposited payload"},
	} {
		err := r.Handle(context.Background(), nil, tc.events)
		var ee *projector.EventError
		require.ErrorAs(t, err, &ee)
		require.Equal(t, tc.pos, ee.Position)
		require.ErrorContains(t, err, tc.text)
	}
}
