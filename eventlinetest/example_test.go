package eventlinetest_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/eventline/eventline/eventlinetest"
	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/eventstore/postgres"
	"github.com/eventline/eventline/projector"
	"github.com/eventline/eventline/runner"
)

type Deposited struct {
	Amount int64 `json:"amount"`
}

// balances is the projection under test: in your code, the one your service registers.
func balances() *projector.Router {
	r := projector.NewRouter("balances", projector.WithAggregateTypes("account"),
		projector.WithSetup(func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS balances (id text PRIMARY KEY, balance bigint NOT NULL)`)
			return err
		}),
		projector.WithReset(func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `TRUNCATE balances`)
			return err
		}))
	projector.On(r, "Deposited", func(ctx context.Context, w *projector.Writes, ev eventstore.PersistedEvent, p Deposited) error {
		w.Exec(`INSERT INTO balances (id, balance) VALUES ($1, $2)
			ON CONFLICT (id) DO UPDATE SET balance = balances.balance + $2`, ev.AggregateID, p.Amount)
		return nil
	})
	return r
}

// testBalances is a test of your own: in your package, func TestBalances(t *testing.T) in a
// _test.go file that also has func TestMain(m *testing.M) { eventlinetest.Main(m) }.
func testBalances(t testing.TB) {
	deposit := func(account string, amount int64) eventstore.Event {
		return eventlinetest.Event("account", account, "Deposited", Deposited{Amount: amount})
	}
	balance := func(db *eventlinetest.Database, account string) (n int64) {
		if err := db.Pool.QueryRow(t.Context(), `SELECT balance FROM balances WHERE id = $1`, account).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	// The projection alone: the events are appended, and Setup and Handle run, in one transaction.
	db := eventlinetest.NewDatabase(t)
	eventlinetest.Apply(t, db.Pool, balances(), deposit("a-1", 5), deposit("a-1", 7))
	fmt.Println("a-1 after Apply:", balance(db, "a-1"))

	// Through a runner, as in production: append events, then run until everything has caught up.
	db = eventlinetest.NewDatabase(t)
	eventlinetest.Append(t, db.Pool, deposit("a-1", 5), deposit("a-2", 1), deposit("a-1", 7))
	r, err := runner.New(db.Pool, postgres.NewStore(nil), runner.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Register(balances()); err != nil {
		t.Fatal(err)
	}
	eventlinetest.RunUntilCaughtUp(t, r)
	fmt.Println("a-1 and a-2 after the runner:", balance(db, "a-1"), balance(db, "a-2"))
}

// Test a projection in a few lines: each test gets a migrated database of its own.
func Example() {
	// Examples have no *testing.T: runAsTest (in eventlinetest_test.go) lends testBalances one.
	runAsTest(testBalances)
	// Output:
	// a-1 after Apply: 12
	// a-1 and a-2 after the runner: 12 1
}
