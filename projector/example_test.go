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

// A Router turns one typed function per event type into a projection. A handler that only writes
// queues its statements on w; the runner sends a batch's writes to the server together, in the
// transaction that also moves the projection's checkpoint.
func ExampleOn() {
	balances := projector.NewRouter("balances", projector.WithAggregateTypes("account"))
	projector.On(balances, "Deposited", func(_ context.Context, w *projector.Writes, ev eventstore.PersistedEvent, p Deposited) error {
		w.Exec(`INSERT INTO balances (id, balance) VALUES ($1, $2)
			ON CONFLICT (id) DO UPDATE SET balance = balances.balance + $2`, ev.AggregateID, p.Amount)
		return nil
	})
	fmt.Println(balances.EventTypes())
	// Output: [Deposited]
}

type Withdrawn struct {
	Amount int `json:"amount"`
}

// A handler that needs a statement's result registers with OnTx and gets the transaction itself.
// The writes queued for earlier events of the batch are sent before it runs, so it sees them.
func ExampleOnTx() {
	balances := projector.NewRouter("balances", projector.WithAggregateTypes("account"))
	projector.OnTx(balances, "Withdrawn", func(ctx context.Context, tx pgx.Tx, ev eventstore.PersistedEvent, p Withdrawn) error {
		tag, err := tx.Exec(ctx, `UPDATE balances SET balance = balance - $2 WHERE id = $1`, ev.AggregateID, p.Amount)
		if err != nil {
			return err
		}
		if tag.RowsAffected() != 1 {
			return fmt.Errorf("withdrawal from unknown account %s", ev.AggregateID)
		}
		return nil
	})
	fmt.Println(balances.EventTypes())
	// Output: [Withdrawn]
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

// A handler marks an error that may go away when the event is handled again later; the runner
// retries it (runner.WithRetry) before the failure policy applies.
func ExampleTransient() {
	notify := func() error {
		status := 503 // the answer of a downstream service
		if status >= 500 {
			return projector.Transient(fmt.Errorf("notify: status %d", status))
		}
		return nil
	}
	err := fmt.Errorf("handle event 42: %w", notify())
	fmt.Println(projector.IsTransient(err), err)
	// Output: true handle event 42: transient: notify: status 503
}
