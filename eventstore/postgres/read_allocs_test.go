package postgres_test

import (
	"unsafe"

	"testing"

	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/eventstore/postgres"
	"github.com/eventline/eventline/internal/pgtest"
)

// Reading events costs what the events need (the aggregate ID and the payload of each), not
// allocations per row for scanning: the types are shared, the event ID is not formatted as text.
func TestReadEventsAllocationsPerEvent(t *testing.T) {
	ctx := ctxT(t)
	db := pgtest.NewDatabase(t)
	store := postgres.NewStore(nil)
	const n = 500
	_, err := store.Append(ctx, db.Pool, eventstore.Any(), newEvents("account", "a-1", n))
	require.NoError(t, err)
	conn := db.Conn(t)
	var evs []eventstore.PersistedEvent
	read := func() {
		evs, err = store.ReadEvents(ctx, conn, 0, n)
		require.NoError(t, err)
		require.Len(t, evs, n)
	}
	read() // prepares the statement
	perEvent := testing.AllocsPerRun(5, read) / n
	t.Logf("%.2f allocations per event read", perEvent)
	require.LessOrEqual(t, perEvent, 2.2, "the aggregate ID and the payload, and a little per read")
	require.Same(t, unsafeStringData(evs[0].EventType), unsafeStringData(evs[n-1].EventType), "event types are shared")
}

func unsafeStringData(s string) *byte { return unsafe.StringData(s) }
