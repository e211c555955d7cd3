// Package postgres is the append side of eventline: a Store that appends events to a PostgreSQL
// events table and reads them back, in transactions the caller owns.
//
//	store, err := postgres.New(postgres.StoreConfig{}) // the default tables, no notification
//	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
//		// ... your own writes ...
//		res, err := store.Append(ctx, tx, eventstore.NoStream(), []eventstore.Event{
//			{AggregateType: "account", AggregateID: "a-1", EventType: "Opened", Payload: []byte(`{}`)},
//		})
//		return err // res.LastPosition() is what read-your-writes waits for
//	})
//
// # Contracts
//
// A Store holds no connection and is safe for concurrent use: every method runs on the DBTX it is
// given (a pgx.Tx to make the append part of your transaction, or a pool or connection). Append
// writes the events of one aggregate in one statement (rarely two, see Store.Append), checks the
// expected version (eventstore.Any, NoStream, Exact) against the aggregate's head row and keeps
// that row locked until the transaction ends, so concurrent appends to one aggregate serialize;
// versions have no holes. The events become visible, and reach projections and subscriptions, when the transaction
// commits; a rollback leaves a hole in the positions that readers pass safely.
//
// Every statement that inserts into the events table takes a shared advisory lock first (a
// trigger does it, so raw INSERT and COPY are covered too), and Append also locks its first
// position: package runner uses those locks to read without ever skipping an event that commits
// late (docs/design.md, "The append side" and "The gap problem"). Writers that are not Go use the
// append function that package migrations creates (migrations.AppendFunc gives its name), which
// keeps Append's guarantees; MapAppendFuncError maps its errors to Append's (docs/design.md, "Raw
// SQL writers").
//
// You must create the tables first (package migrations, with the same eventline.Names), and read
// from the primary.
//
// # Configuration
//
// StoreConfig's zero value is valid; every field documents its default. StoreConfig.Names names
// the tables and channels of the whole installation: the store writes the events and aggregate
// heads tables and notifies NotifyChannel (when set) on commit, and runner.New and
// runner.NewWaiter take every other name from the store, so that they cannot disagree with it.
// New returns an error naming an invalid field; NewStore is New for configurations written in the
// program, and panics on an invalid one.
package postgres
