// Package eventline names the PostgreSQL tables and channels that eventline's packages share.
//
// eventline is a projection and subscription runtime for an event store in PostgreSQL: append
// events with package eventstore/postgres (or raw SQL, through the append function that package
// migrations creates), keep read models up to date with package runner running the projections you
// write against package projector, and test them with package eventlinetest. docs/design.md in the
// repository is the design contract; README.md starts with a complete program.
//
// Every part of an installation must agree on the names of its tables and channels, so one value
// of type Names carries them: migrations.Apply creates the tables it names, and the Store is built
// with it (postgres.StoreConfig.Names); runner.New and runner.NewWaiter take the names from the
// Store, so they cannot disagree with it. The zero value names the defaults:
//
//	names := eventline.Names{EventsTable: "app.events"} // the rest: defaults
//	if _, err := migrations.Apply(ctx, pool, names); err != nil { ... }
//	store, err := postgres.New(postgres.StoreConfig{Names: names})
//	r, err := runner.New(pool, store, runner.Config{})
//
// Invalid names fail at construction (postgres.New, migrations.Apply), with an error that names
// the field (a *NameError) and matches ErrInvalidName, never later at run time. The operator CLI (cmd/eventline)
// maps its --*-table flags onto the same fields, and the web console takes a Names too
// (console.Config.Names). docs/design.md, "Names and configuration", says more.
package eventline
