package projector_test

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/projector"
)

type Deposited struct {
	Amount int `json:"amount"`
}

// A Router turns one typed function per event type into a projection. With a runner, tx is the
// transaction that also moves the projection's checkpoint.
func ExampleOn() {
	balances := projector.NewRouter("balances", projector.WithAggregateTypes("account"))
	total := map[string]int{}
	projector.On(balances, "Deposited", func(_ context.Context, _ pgx.Tx, ev eventstore.PersistedEvent, p Deposited) error {
		total[ev.AggregateID] += p.Amount
		return nil
	})

	deposit := func(account, payload string) eventstore.PersistedEvent {
		return eventstore.PersistedEvent{Event: eventstore.Event{
			AggregateType: "account", AggregateID: account, EventType: "Deposited", Payload: []byte(payload)}}
	}
	err := balances.Handle(context.Background(), nil, []eventstore.PersistedEvent{
		deposit("a-1", `{"amount":5}`), deposit("a-1", `{"amount":7}`), deposit("a-2", `{"amount":1}`),
	})
	fmt.Println(err, total["a-1"], total["a-2"], balances.EventTypes())
	// Output: <nil> 12 1 [Deposited]
}

// PartitionOf keeps an aggregate's events in one partition: the same ID always maps to the
// same partition (pinned here: changing the hash would move existing aggregates), and an
// unpartitioned projection has only partition 0.
func ExamplePartitionOf() {
	for _, id := range []string{"order-1", "order-2", "order-4", "order-6"} {
		fmt.Print(projector.PartitionOf(id, 4), " ")
	}
	fmt.Println(projector.PartitionOf("order-1", 1))
	// Output: 3 0 2 1 0
}
