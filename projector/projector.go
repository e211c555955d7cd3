// Package projector is what users of eventline write: projections that turn events into read
// models, inside the transaction that advances their checkpoint, and detached handlers for side
// effects outside the database.
//
// Most projections are a Router with one typed function per event type, registered with On. A
// handler registered with On writes through a *Writes: Exec queues a statement, and the Router
// sends the statements of a whole batch of events to the server together (one round trip, not one
// per event), in order, in the transaction that moves the checkpoint:
//
//	balances := projector.NewRouter("balances", projector.WithAggregateTypes("account"))
//	projector.On(balances, "Deposited", func(ctx context.Context, w *projector.Writes, ev eventstore.PersistedEvent, p Deposited) error {
//		w.Exec(`INSERT INTO balances (id, balance) VALUES ($1, $2)
//			ON CONFLICT (id) DO UPDATE SET balance = balances.balance + $2`, ev.AggregateID, p.Amount)
//		return nil
//	})
//
// Exec returns nothing, because nothing has run yet. A handler that needs a result (rows
// affected, RETURNING, a read) is registered with OnTx and gets the transaction itself; the writes
// queued for earlier events are sent before it runs, so it sees them. An error, of a handler or of
// a statement it queued, is attributed to its event (an EventError), to which the runner applies
// the projection's failure policy.
//
// Any type with a Name and a Handle method is a projection too (for set-based writes of a whole
// batch, say). It may also implement Filter (only some aggregate or event types), Setup (create
// its tables), Resetter (empty them for a rebuild) and Validator (runner.Register refuses it when
// Validate fails). A Router without any handler is refused.
//
// # Contracts
//
// Handle runs inside the transaction that moves the projection's checkpoint: write through it,
// leave it open (the runner commits or rolls it back), honour ctx, and return an error to fail the
// event; projector.Transient marks an error worth trying again. The events of a batch that was
// rolled back (an error, a crash, a lost lease) are handed over again; those of a committed batch
// never are, so writes need not be idempotent. Name keys the checkpoint: unique in a runner and
// stable across deploys. A projection with Reset can be rebuilt (Reset, then every event again
// from position 0), so its read model should follow from the events alone. A Detached handler
// runs outside any transaction and may see an event again after a crash: make it idempotent
// (ev.EventID identifies an event).
//
// # Options
//
// NewRouter takes RouterOptions (WithAggregateTypes, WithSetup, WithReset, WithDecoder): they
// describe that one router, and most routers set one or two, so options read better here than a
// config struct. What builds a long-lived service in eventline (postgres.New, runner.New,
// prometheus.New, console.New) takes a config struct whose zero value is valid instead.
//
// More in docs/design.md: "Guarantees", "Reading and dispatch" (one transaction per batch, the
// per-event handlers' single round trip), "Projection lifecycle" (versions, partitions, rebuilds)
// and "Dead letters".
package projector

import (
	"context"

	"github.com/jackc/pgx/v5"

	"github.com/eventline/eventline/eventstore"
)

// Projection applies events to a read model.
//
// Handle is called with events in global-position order (hence each aggregate's events in
// version order) and with tx, the transaction that will advance the projection's checkpoint past
// them: write the read model through tx and the writes and the checkpoint commit together, or not
// at all. Handle must not commit or roll back tx. Returning an error (or panicking, or returning
// nil after a statement failed in tx, which leaves it aborted: ErrAborted) rolls the batch back; the runner retries transient database errors and otherwise finds the failing event,
// retries it if the error is marked with Transient, and applies the projection's failure policy.
// Handle is never called concurrently for one projection (or partition).
type Projection interface {
	// Name identifies the projection and its checkpoint. It must be unique in a runner and stable
	// across deploys.
	Name() string
	Handle(ctx context.Context, tx pgx.Tx, events []eventstore.PersistedEvent) error
}

// Filter is an optional interface of a Projection: only events whose aggregate type and event
// type are listed are handed to Handle (an empty list allows all). The checkpoint still moves
// past the events it skips. The runner evaluates the filter in SQL when it reads for one
// projection alone.
type Filter interface {
	AggregateTypes() []string
	EventTypes() []string
}

// Setup is an optional interface: Setup runs once each time a runner starts, before any event is
// handled, in a transaction of its own. Create the read model's tables here (idempotently).
type Setup interface {
	Setup(ctx context.Context, tx pgx.Tx) error
}

// Resetter is an optional interface: Reset empties the read model for a rebuild from position 0.
// It runs in the transaction that moves the checkpoint back to 0.
type Resetter interface {
	Reset(ctx context.Context, tx pgx.Tx) error
}

// Validator is an optional interface of a Projection or Detached handler: runner.Register and
// RegisterDetached call Validate and refuse it when it returns an error (a Router with no
// handlers, say), instead of running a handler that could never do anything.
type Validator interface {
	Validate() error
}

// Detached handles events outside the database: e-mail, HTTP calls, queues. Delivery is
// at-least-once: the checkpoint advances after HandleEvent returns nil, so an event may be
// handled again after a crash; use the event's EventID to make the effect idempotent. An error
// marked with Transient, or a network error, is retried with a backoff before the failure policy
// applies (runner.WithRetry).
// HandleEvent is called for one event at a time, in global-position order.
type Detached interface {
	Name() string
	HandleEvent(ctx context.Context, event eventstore.PersistedEvent) error
}

// Partitioned is an optional interface of a Projection (or Detached handler): it is split into
// Partitions() parts, each with its own checkpoint and owner, so that several runner processes
// share it. An event goes to partition PartitionOf(aggregate ID, n): one aggregate's events stay
// in one partition, in order. The count may change: the old partitions then drain to one barrier
// position and the new ones start from it (see package runner).
type Partitioned interface {
	Partitions() int
}

// Versioned is an optional interface: the projection's version (1 without it). Registering a
// higher version builds it from position 0 beside the active one, which keeps serving; once it has
// caught up it takes over in one transaction and the old version is retired. Give each version its
// own tables, and switch readers over in Activate.
type Versioned interface {
	Version() int
}

// Activator is an optional interface of a versioned projection: Activate runs in the
// transaction in which this version takes over from the previous one (switch a view, rename
// tables). The read model is complete at that moment.
type Activator interface {
	Activate(ctx context.Context, tx pgx.Tx) error
}

// FilterSpec is a ready-made Filter to embed in a projection.
type FilterSpec struct {
	Aggregates []string
	Events     []string
}

// AggregateTypes implements Filter.
func (f FilterSpec) AggregateTypes() []string { return f.Aggregates }

// EventTypes implements Filter.
func (f FilterSpec) EventTypes() []string { return f.Events }

var _ Filter = FilterSpec{}
