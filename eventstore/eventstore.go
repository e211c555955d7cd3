// Package eventstore holds the types shared by the append side and the read side of eventline:
// events, expected versions, append results, aggregate streams, errors and the small interfaces
// that the PostgreSQL store in package eventstore/postgres implements.
//
// Nothing in this package touches a database.
package eventstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// DBTX is what every store method runs its SQL on. It is satisfied by pgx.Tx, *pgx.Conn,
// *pgxpool.Pool and *pgxpool.Conn. Pass a pgx.Tx to make an append part of your own transaction.
type DBTX interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Event is an event to append.
type Event struct {
	// AggregateType and AggregateID name the aggregate (the stream) the event belongs to.
	// Both are required, and all events of one append must share them.
	AggregateType string
	AggregateID   string
	// EventID identifies the event across the whole store. A zero ID is filled in with a
	// time-ordered UUID (version 7) when the event is appended.
	EventID uuid.UUID
	// EventType names the event, e.g. "Deposited". Required.
	EventType string
	// EventVersion is the version of the event's payload schema (not of the aggregate).
	// Zero is stored as 1. It must be at most MaxEventVersion.
	EventVersion int
	// Payload is the encoded event, usually JSON. It is stored as bytes, unchanged.
	Payload []byte
	// Metadata is optional JSON. When set it must be valid JSON.
	Metadata json.RawMessage
	// CausationID, CorrelationID and TraceID are optional tracing identifiers.
	CausationID   string
	CorrelationID string
	TraceID       string
	// CreatedAt is when the event happened. A zero value is filled with the current time.
	CreatedAt time.Time
}

// MaxEventVersion is the largest Event.EventVersion a store accepts: it is stored as a 32-bit
// integer.
const MaxEventVersion = math.MaxInt32

// PersistedEvent is an event as stored: the Event plus the positions the store gave it.
type PersistedEvent struct {
	Event
	// GlobalPosition is the event's position in the whole log. Positions grow with insertion
	// but may have holes (rolled-back appends).
	GlobalPosition int64
	// AggregateVersion is the event's version within its aggregate: 1, 2, 3, ... without holes.
	AggregateVersion int64
}

// ExpectedVersion states what an append expects the aggregate's current version to be.
// Build one with Any, NoStream or Exact.
type ExpectedVersion struct {
	kind    versionKind
	version int64
}

type versionKind uint8

const (
	kindAny versionKind = iota
	kindNoStream
	kindExact
)

// Any appends whatever the aggregate's current version is. Concurrent Any appends to one
// aggregate are serialized and all succeed, with contiguous versions.
func Any() ExpectedVersion { return ExpectedVersion{kind: kindAny} }

// NoStream appends only if the aggregate has no events yet. Of concurrent NoStream appends to one
// aggregate exactly one succeeds.
func NoStream() ExpectedVersion { return ExpectedVersion{kind: kindNoStream} }

// Exact appends only if the aggregate's current version is n. Exact(0) is the same as NoStream.
func Exact(n int64) ExpectedVersion {
	if n == 0 {
		return NoStream()
	}
	return ExpectedVersion{kind: kindExact, version: n}
}

// IsAny reports whether v is Any().
func (v ExpectedVersion) IsAny() bool { return v.kind == kindAny }

// IsNoStream reports whether v is NoStream() (or Exact(0)).
func (v ExpectedVersion) IsNoStream() bool { return v.kind == kindNoStream }

// Exact returns the version of an Exact expectation and whether v is one.
func (v ExpectedVersion) Exact() (int64, bool) { return v.version, v.kind == kindExact }

// String describes the expectation, for errors and logs.
func (v ExpectedVersion) String() string {
	switch v.kind {
	case kindNoStream:
		return "no stream"
	case kindExact:
		return fmt.Sprintf("version %d", v.version)
	default:
		return "any"
	}
}

// AppendResult describes a successful append.
type AppendResult struct {
	fromVersion, toVersion int64
	positions              []int64
}

// NewAppendResult is for implementations of EventStore: versions from..to were written at the
// given global positions (one per event, in version order).
func NewAppendResult(fromVersion, toVersion int64, positions []int64) AppendResult {
	return AppendResult{fromVersion: fromVersion, toVersion: toVersion, positions: positions}
}

// FromVersion is the aggregate version of the first appended event.
func (r AppendResult) FromVersion() int64 { return r.fromVersion }

// ToVersion is the aggregate version of the last appended event: the aggregate's new version.
func (r AppendResult) ToVersion() int64 { return r.toVersion }

// GlobalPositions returns the global position of each appended event, in version order.
func (r AppendResult) GlobalPositions() []int64 { return r.positions }

// LastPosition is the highest global position written by the append.
func (r AppendResult) LastPosition() int64 {
	if len(r.positions) == 0 {
		return 0
	}
	return r.positions[len(r.positions)-1]
}

// Stream is the events of one aggregate, in version order.
type Stream struct {
	AggregateType string
	AggregateID   string
	Events        []PersistedEvent
}

// Version is the aggregate version of the stream's last event, or 0 when it is empty.
func (s Stream) Version() int64 {
	if len(s.Events) == 0 {
		return 0
	}
	return s.Events[len(s.Events)-1].AggregateVersion
}

// IsEmpty reports whether the stream has no events.
func (s Stream) IsEmpty() bool { return len(s.Events) == 0 }

// Len is the number of events in the stream.
func (s Stream) Len() int { return len(s.Events) }

// Errors returned by stores. Match them with errors.Is.
var (
	// ErrOptimisticConcurrency: the aggregate's version was not what the append expected.
	// The error is a *ConcurrencyError.
	ErrOptimisticConcurrency = errors.New("eventstore: optimistic concurrency conflict")
	// ErrNoEvents: an append was given no events.
	ErrNoEvents = errors.New("eventstore: no events to append")
	// ErrDuplicateEventID: an event with the same event ID is already stored.
	ErrDuplicateEventID = errors.New("eventstore: duplicate event ID")
	// ErrInvalidEvent: an event was rejected before any SQL ran (missing aggregate, type,
	// mixed aggregates, invalid metadata). The error text says which event and why.
	ErrInvalidEvent = errors.New("eventstore: invalid event")
	// ErrEventTooLarge: an event's payload and metadata together are larger than the store
	// accepts (postgres.StoreConfig.MaxEventSize). The error text names the event, its
	// aggregate, its size and the limit.
	ErrEventTooLarge = errors.New("eventstore: event too large")
)

// ConcurrencyError is the error of an append whose expected version did not match.
// errors.Is(err, ErrOptimisticConcurrency) is true for it.
type ConcurrencyError struct {
	AggregateType string
	AggregateID   string
	Expected      ExpectedVersion
	// Actual is the aggregate's version when the append looked (0: no stream).
	Actual int64
}

func (e *ConcurrencyError) Error() string {
	return fmt.Sprintf("eventstore: optimistic concurrency conflict on %s %q: expected %s, actual version %d",
		e.AggregateType, e.AggregateID, e.Expected, e.Actual)
}

// Is makes errors.Is(err, ErrOptimisticConcurrency) true.
func (e *ConcurrencyError) Is(target error) bool { return target == ErrOptimisticConcurrency }

// ValidateBatch checks events for an append and fills in what may be filled (event IDs, creation
// times, event versions). It returns ErrNoEvents for an empty batch and an error matching
// ErrInvalidEvent for anything else it rejects. The slice is modified in place.
func ValidateBatch(events []Event, now time.Time) error {
	if len(events) == 0 {
		return ErrNoEvents
	}
	first := events[0]
	for i := range events {
		ev := &events[i]
		switch {
		case ev.AggregateType == "":
			return fmt.Errorf("%w: event %d: empty aggregate type", ErrInvalidEvent, i)
		case ev.AggregateID == "":
			return fmt.Errorf("%w: event %d: empty aggregate ID", ErrInvalidEvent, i)
		case ev.EventType == "":
			return fmt.Errorf("%w: event %d: empty event type", ErrInvalidEvent, i)
		case ev.AggregateType != first.AggregateType || ev.AggregateID != first.AggregateID:
			return fmt.Errorf("%w: event %d: aggregate %s %q differs from the batch's %s %q",
				ErrInvalidEvent, i, ev.AggregateType, ev.AggregateID, first.AggregateType, first.AggregateID)
		case len(ev.Metadata) > 0 && !json.Valid(ev.Metadata):
			return fmt.Errorf("%w: event %d: metadata is not valid JSON", ErrInvalidEvent, i)
		case ev.EventVersion < 0:
			return fmt.Errorf("%w: event %d: negative event version %d", ErrInvalidEvent, i, ev.EventVersion)
		case ev.EventVersion > MaxEventVersion:
			return fmt.Errorf("%w: event %d: event version %d is larger than %d", ErrInvalidEvent, i, ev.EventVersion, MaxEventVersion)
		}
	}
	if err := checkDuplicateIDs(events); err != nil {
		return err
	}
	for i := range events {
		ev := &events[i]
		if ev.EventID == uuid.Nil {
			id, err := uuid.NewV7()
			if err != nil {
				return fmt.Errorf("generate event ID: %w", err)
			}
			ev.EventID = id
		}
		if ev.CreatedAt.IsZero() {
			ev.CreatedAt = now
		}
		if ev.EventVersion == 0 {
			ev.EventVersion = 1
		}
	}
	return nil
}

// checkDuplicateIDs returns ErrDuplicateEventID when two events share a non-zero event ID: by
// pairs for small batches, with a map for large ones (pairs would be quadratic in the batch).
func checkDuplicateIDs(events []Event) error {
	const pairsMax = 16
	if len(events) <= pairsMax {
		for i := range events {
			for j := 0; j < i; j++ {
				if events[i].EventID != uuid.Nil && events[j].EventID == events[i].EventID {
					return fmt.Errorf("%w: events %d and %d share event ID %s", ErrDuplicateEventID, j, i, events[i].EventID)
				}
			}
		}
		return nil
	}
	seen := make(map[uuid.UUID]int, len(events))
	for i := range events {
		id := events[i].EventID
		if id == uuid.Nil {
			continue
		}
		if j, dup := seen[id]; dup {
			return fmt.Errorf("%w: events %d and %d share event ID %s", ErrDuplicateEventID, j, i, id)
		}
		seen[id] = i
	}
	return nil
}

// EventStore appends events.
type EventStore interface {
	// Append writes events, all of one aggregate, in the transaction tx, after checking the
	// aggregate's version against expected. It returns ErrNoEvents, an ErrInvalidEvent,
	// ErrDuplicateEventID or a *ConcurrencyError without writing anything.
	Append(ctx context.Context, tx DBTX, expected ExpectedVersion, events []Event) (AppendResult, error)
}

// EventReader reads the global log.
type EventReader interface {
	// ReadEvents returns up to limit events with a global position above fromPosition, in
	// position order. It reads what tx can see: a position missing from the result may still
	// be committed later (see package runner for safe reading).
	ReadEvents(ctx context.Context, tx DBTX, fromPosition int64, limit int) ([]PersistedEvent, error)
}

// GlobalPositionReader reads the head of the log.
type GlobalPositionReader interface {
	// GetLatestGlobalPosition returns the highest visible global position, or 0 for an empty store.
	GetLatestGlobalPosition(ctx context.Context, tx DBTX) (int64, error)
}

// AggregateStreamReader reads one aggregate.
type AggregateStreamReader interface {
	// ReadAggregateStream returns the aggregate's events with fromVersion <= version <= toVersion,
	// in version order; a nil bound is open.
	ReadAggregateStream(ctx context.Context, tx DBTX, aggregateType, aggregateID string, fromVersion, toVersion *int64) (Stream, error)
}
