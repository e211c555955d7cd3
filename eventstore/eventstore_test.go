package eventstore_test

import (
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/eventstore"
)

// ValidateBatch is linear in the batch: a large import batch with its own event IDs is checked
// for duplicates in milliseconds, not minutes (pairwise, 100,000 events are 5e9 comparisons: about 20 s).
func TestValidateBatchLargeBatchWithIDs(t *testing.T) {
	t.Parallel()
	const n = 100_000
	evs := make([]eventstore.Event, n)
	for i := range evs {
		evs[i] = eventstore.Event{AggregateType: "a", AggregateID: "1", EventType: "x", EventID: uuid.New()}
	}
	start := time.Now()
	require.NoError(t, eventstore.ValidateBatch(evs, time.Now()))
	require.Less(t, time.Since(start), 10*time.Second)

	evs[n-1].EventID = evs[n/2].EventID
	err := eventstore.ValidateBatch(evs, time.Now())
	require.ErrorIs(t, err, eventstore.ErrDuplicateEventID)
	require.ErrorContains(t, err, "events 50000 and 99999 share event ID")
}

// An event version is stored as a 32-bit integer: a larger one is refused, not stored as another.
func TestValidateBatchEventVersionRange(t *testing.T) {
	t.Parallel()
	evs := []eventstore.Event{{AggregateType: "a", AggregateID: "1", EventType: "x", EventVersion: 1<<32 + 1}}
	err := eventstore.ValidateBatch(evs, time.Now())
	require.ErrorIs(t, err, eventstore.ErrInvalidEvent)
	require.ErrorContains(t, err, "event version 4294967297 is larger than 2147483647")
	evs[0].EventVersion = eventstore.MaxEventVersion
	require.NoError(t, eventstore.ValidateBatch(evs, time.Now()))
}
