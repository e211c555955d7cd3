// Package runner keeps projections up to date from the events table, streams the events to
// subscribers, and tells request handlers when a projection has applied their write.
//
// # Running projections
//
// A Runner reads the events that a postgres.Store appends and hands them, in global order and in
// batches, to the projections registered with it (package projector), each batch inside the
// transaction that moves the projection's checkpoint:
//
//	store, err := postgres.New(postgres.StoreConfig{Names: names}) // the runner takes its tables from here
//	r, err := runner.New(pool, store, runner.Config{Logger: logger})
//	err = r.Register(balances)                                      // a projector.Projection
//	err = r.RegisterDetached(mailer, runner.WithFailurePolicy(runner.DeadLetter))
//	err = r.Run(ctx)                                                // blocks; nil once ctx ends
//
// What the runner guarantees (docs/design.md, "Guarantees"):
//   - No event is skipped, however late its transaction commits, and none is handed over before
//     every position below it is settled (committed or rolled back): the horizon of "The gap
//     problem". No timeout is involved.
//   - A projection's writes and its checkpoint commit together, and a batch is never applied twice,
//     even by two processes that both believe they own the projection: the checkpoint is saved
//     with a compare-and-set that includes the owner ("Reading and dispatch", "Ownership").
//   - A detached handler (side effects outside the database) sees each event at least once, in
//     order; after a crash it may see some again.
//   - A failing event stops its projection just before it (Stop, the default) or is parked
//     (DeadLetter) with the later events of its aggregate; other projections go on ("Dead
//     letters", "Failures and timeouts"). Transient database errors are retried; an event whose
//     handler error is marked projector.Transient is tried again with a backoff (WithRetry)
//     before the policy applies.
//   - Run returns only after every goroutine it started has ended; a handler that ignores its
//     context is cut off after ShutdownTimeout + ShutdownGrace (ErrStuck).
//
// What you must do:
//   - Register every projection before Run; names are unique and stable (the checkpoint is
//     keyed by them).
//   - In Handle, use the transaction you are given and leave it open: the runner commits or rolls
//     it back. Return an error to fail the event; honour ctx.
//   - Make detached handlers idempotent (ev.EventID identifies an event).
//   - Keep Hooks fast and safe for concurrent use: they run on the runner's goroutines.
//   - Create the tables first (package migrations) with the same eventline.Names as the store.
//
// # Many processes, versions and partitions
//
// Run the same runner in every process of a service: the processes share the projections (and
// their partitions) through leases in the checkpoint rows, move the work of a process that dies
// within about Config.Lease, and hand it over at once on a graceful stop. Each projection has a
// lifecycle record ("Projection lifecycle"): deploying a new version builds it beside the active
// one and cuts over once it has caught up; deploying a new partition count drains the old
// partitions to a barrier and starts the new ones from it, once every live process declares the
// new count. Rolling back is normal: a process with an older version idles, and Status says why
// ("Deploying and rolling back"). Pause, Resume and Rebuild act on a projection from any process;
// the eventline CLI does the same for operators.
//
// # Subscriptions
//
// Subscribe serves consumers that keep their position elsewhere (a relay to a broker, a
// websocket, another service), with no checkpoint row: an iterator over batches of events in
// global order, from the beginning, from the end or after a position, optionally filtered, with
// the projections' no-skip guarantee. It shares the process's horizon, wake-ups and page reads
// with the projections, so it needs Run running (with or without projections):
//
//	for batch, err := range r.Subscribe(ctx, runner.After(lastSent)) { ... }
//
// # Read-your-writes
//
// After an Append, a request handler waits until a projection has applied the appended position,
// then reads the read model: Runner.WaitApplied in a process that runs the runner, or a Waiter
// (NewWaiter, on the same Store) in any other, woken by a notification on commit.
//
// # Configuration
//
// New takes a Config whose zero value is valid: every field documents its default (the XxxDefault
// constants), and New returns an error naming an invalid field. The names of the tables and
// channels are not in Config: the runner takes them from its Store (eventline.Names), so that it
// always reads the tables the store writes. What is set per projection (failure policy, retries,
// where a new projection starts) is given to Register as Options, since it belongs to that one
// registration and is usually left out; per subscription, SubscribeOptions.
//
// Observability: Status (also for `eventline status`), Hooks (metrics/prometheus and tracing/otel
// build on them), Health, Ready and HealthHandler for probes ("Observability").
package runner
