// Command readme is the example of README.md ("A short example"), as a complete program: it
// appends a deposit, keeps a balances table up to date from the events, and logs each deposit from
// a detached handler. The code between the README markers is the README's, byte for byte (a test
// checks it).
//
// It uses DATABASE_URL when set, otherwise a throwaway PostgreSQL it starts (and removes) itself.
// It runs until Ctrl-C, or for the time given with -for.
//
//	go run ./examples/readme [-for 3s]
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/eventline/eventline"
	"github.com/eventline/eventline/eventlinetest"
	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/eventstore/postgres"
	"github.com/eventline/eventline/migrations"
	"github.com/eventline/eventline/projector"
	"github.com/eventline/eventline/runner"
)

func main() {
	runFor := flag.Duration("for", 0, "stop after this long (0: run until Ctrl-C)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *runFor > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *runFor)
		defer cancel()
	}
	if err := start(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "readme:", err)
		os.Exit(1)
	}
}

func start(ctx context.Context) error {
	url := os.Getenv("DATABASE_URL")
	if url == "" {
		fmt.Println("starting a throwaway PostgreSQL (set DATABASE_URL to use yours)...")
		var stop func() error
		var err error
		if url, stop, err = eventlinetest.Throwaway(ctx); err != nil {
			return err
		}
		defer func() { _ = stop() }()
	}
	return run(ctx, url)
}

// README:begin
type Deposited struct {
	Amount int64 `json:"amount"`
}

// run returns once ctx ends (nil), or on the first error.
func run(ctx context.Context, databaseURL string) error {
	pool, err := pgxpool.New(ctx, databaseURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	// Every table and channel is named by one value; the zero value names the defaults.
	names := eventline.Names{NotifyChannel: "events"} // Append notifies, runners wake at once
	// Idempotent, safe from many processes; or apply the SQL with your own tool (eventline migrate --print).
	if _, err := migrations.Apply(ctx, pool, names); err != nil {
		return err
	}

	store, err := postgres.New(postgres.StoreConfig{Names: names}) // runners take their names from it
	if err != nil {
		return err
	}
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { // your own transaction: the append commits with it
		_, err := store.Append(ctx, tx, eventstore.Any(), []eventstore.Event{
			{AggregateType: "account", AggregateID: "a-1", EventType: "Deposited", Payload: []byte(`{"amount":5}`)},
		})
		return err
	})
	if err != nil {
		return err
	}

	balances := projector.NewRouter("balances", projector.WithAggregateTypes("account"),
		projector.WithSetup(func(ctx context.Context, tx pgx.Tx) error { // at every start: create the read model
			_, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS balances (id text PRIMARY KEY, balance bigint NOT NULL)`)
			return err
		}),
		projector.WithReset(func(ctx context.Context, tx pgx.Tx) error { // before a rebuild replays from 0
			_, err := tx.Exec(ctx, `TRUNCATE balances`)
			return err
		}))
	projector.On(balances, "Deposited", func(ctx context.Context, w *projector.Writes, ev eventstore.PersistedEvent, p Deposited) error {
		// Queued, then sent with the batch's other writes in one round trip, in the transaction that
		// also moves the checkpoint: all commit, or none. (projector.OnTx gives a handler the
		// transaction itself, when it needs results: rows affected, RETURNING, reads.)
		w.Exec(`INSERT INTO balances (id, balance) VALUES ($1, $2)
			ON CONFLICT (id) DO UPDATE SET balance = balances.balance + $2`, ev.AggregateID, p.Amount)
		return nil
	})

	r, err := runner.New(pool, store, runner.Config{}) // Logger (a *zap.Logger), Hooks, BatchSize...: all optional
	if err != nil {
		return err
	}
	if err := r.Register(balances); err != nil { // stops on a handler error (the default policy)
		return err
	}
	if err := r.RegisterDetached(mailer{}, runner.WithFailurePolicy(runner.DeadLetter)); err != nil { // at-least-once
		return err
	}
	return r.Run(ctx) // blocks; after ctx ends it finishes the batch in flight and returns nil
}

// mailer is a detached handler, for side effects outside the database: it may see an event again
// after a crash, so a real one would use ev.EventID to send each mail once.
type mailer struct{}

func (mailer) Name() string { return "mailer" }

func (mailer) HandleEvent(ctx context.Context, ev eventstore.PersistedEvent) error {
	log.Printf("mail: %s %s: %s (event %s)", ev.AggregateType, ev.AggregateID, ev.EventType, ev.EventID)
	return nil
}

// README:end
