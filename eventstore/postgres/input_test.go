package postgres_test

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/eventstore/postgres"
	"github.com/eventline/eventline/internal/pgtest"
)

// MaxEventSize bounds an event as readers get it back: metadata counts as its jsonb text, as the
// append function counts it. A JSON number is stored as a numeric and read back with all its
// digits, so a few bytes of metadata can read back as megabytes (or, past 1 GiB, not at all:
// every read of the log fails at that event, for ever).
func TestAppendCountsMetadataAsReadBack(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewDatabase(t)

	// 901 bytes of metadata, 13,107,400 bytes as read back (and a payload of 7).
	bomb := "[" + strings.Repeat("1e131071,", 99) + "1e131071]"
	evs := newEvents("doc", "d-1", 1)
	evs[0].Metadata = []byte(bomb)
	_, err := postgres.NewStore(nil).Append(ctx, db.Pool, eventstore.Any(), evs)
	require.ErrorIs(t, err, eventstore.ErrEventTooLarge)
	require.ErrorContains(t, err, "13107407 bytes of payload and metadata")
	_, err = callAppendFunc(ctx, db.Pool, "doc", "d-1", nil, `[{"event_type": "Happened", "metadata": `+bomb+`}]`, "")
	require.ErrorIs(t, postgres.MapAppendFuncError(err), eventstore.ErrEventTooLarge, "the function refuses it too")
	require.Zero(t, count(t, db.Pool, `SELECT count(*) FROM events`))

	// Append's count is the length read back, for numbers, separators and escapes alike.
	store := postgres.NewStore(&postgres.StoreConfig{MaxEventSize: 1 << 16})
	for _, md := range []string{
		`{"k":"0123456789"}`, ` [ 1 , 2.50 , -0 , -0.0 , 1E2 , 1.5e3 , 1e-2 , 0.001 , 123.456e1 , -7e-1 , 0e99999 , true , null ] `,
		`{"a":{"b":[[],{}]},"c":"\u00e9\/\"\\\n\u0001\u001f\ud83d\ude00\u007f"}`, `"plain"`, `12`, `null`, `1e16383`, `-1e-16383`,
	} {
		evs := newEvents("doc", "d-2", 1)
		evs[0].Metadata = []byte(md)
		res, err := store.Append(ctx, db.Pool, eventstore.Any(), evs)
		require.NoError(t, err, md)
		var stored int
		require.NoError(t, db.Pool.QueryRow(ctx, `SELECT octet_length(metadata::text) FROM events WHERE global_position = $1`,
			res.LastPosition()).Scan(&stored))
		small := postgres.NewStore(&postgres.StoreConfig{MaxEventSize: len(evs[0].Payload) + stored})
		_, err = small.Append(ctx, db.Pool, eventstore.Any(), evs)
		require.NoError(t, err, "%s: %d bytes as stored fit a maximum of exactly that", md, stored)
		smaller := postgres.NewStore(&postgres.StoreConfig{MaxEventSize: len(evs[0].Payload) + stored - 1})
		_, err = smaller.Append(ctx, db.Pool, eventstore.Any(), evs)
		require.ErrorIs(t, err, eventstore.ErrEventTooLarge, "%s: %d bytes as stored", md, stored)
	}
}

// Values that PostgreSQL cannot store are refused before any SQL, as ErrInvalidEvent naming the
// event: the caller's transaction is not aborted, and nothing is written. An event version is a
// 32-bit integer; a larger one is refused, not stored as another.
func TestAppendRefusesWhatPostgresCannotStore(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewDatabase(t)
	store := postgres.NewStore(nil)
	for _, tc := range []struct {
		name string
		edit func(ev *eventstore.Event)
		text string
	}{
		{"NUL in aggregate ID", func(ev *eventstore.Event) { ev.AggregateID = "a\x00b" }, "aggregate ID holds a NUL byte"},
		{"NUL in event type", func(ev *eventstore.Event) { ev.EventType = "x\x00" }, "event type holds a NUL byte"},
		{"NUL in causation ID", func(ev *eventstore.Event) { ev.CausationID = "\x00" }, "causation ID holds a NUL byte"},
		{"invalid UTF-8 in aggregate type", func(ev *eventstore.Event) { ev.AggregateType = "\xff" }, "aggregate type is not valid UTF-8"},
		{"invalid UTF-8 in trace ID", func(ev *eventstore.Event) { ev.TraceID = "t\xc3" }, "trace ID is not valid UTF-8"},
		{"\\u0000 in metadata", func(ev *eventstore.Event) { ev.Metadata = []byte(`{"a":"\u0000"}`) }, `\u0000`},
		{"lone high surrogate in metadata", func(ev *eventstore.Event) { ev.Metadata = []byte(`"\ud800x"`) }, "surrogate"},
		{"lone low surrogate in metadata", func(ev *eventstore.Event) { ev.Metadata = []byte(`["\udc00"]`) }, "surrogate"},
		{"invalid UTF-8 in metadata", func(ev *eventstore.Event) { ev.Metadata = []byte("\"\xff\"") }, "metadata is not valid UTF-8"},
		{"number beyond numeric in metadata", func(ev *eventstore.Event) { ev.Metadata = []byte(`[1e200000]`) }, "numeric"},
		{"scale beyond numeric in metadata", func(ev *eventstore.Event) { ev.Metadata = []byte(`1e-16384`) }, "numeric"},
		{"creation time beyond timestamptz", func(ev *eventstore.Event) { ev.CreatedAt = time.Date(300000, 1, 1, 0, 0, 0, 0, time.UTC) }, "creation time"},
		{"event version beyond int32", func(ev *eventstore.Event) { ev.EventVersion = math.MaxInt32 + 2 }, "event version 2147483649"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tx, err := db.Pool.Begin(ctx)
			require.NoError(t, err)
			defer func() { _ = tx.Rollback(ctx) }()
			evs := newEvents("bad", "b-1", 2)
			tc.edit(&evs[1])
			if strings.Contains(tc.name, "aggregate") {
				tc.edit(&evs[0])
			}
			_, err = store.Append(ctx, tx, eventstore.Any(), evs)
			require.ErrorIs(t, err, eventstore.ErrInvalidEvent)
			require.NotErrorIs(t, err, eventstore.ErrOptimisticConcurrency)
			require.ErrorContains(t, err, tc.text)
			// The transaction goes on.
			_, err = store.Append(ctx, tx, eventstore.Any(), newEvents("good", tc.name, 1))
			require.NoError(t, err)
			require.NoError(t, tx.Commit(ctx))
		})
	}
	require.Zero(t, count(t, db.Pool, `SELECT count(*) FROM events WHERE aggregate_type <> 'good'`))
	require.EqualValues(t, 13, count(t, db.Pool, `SELECT count(*) FROM events WHERE aggregate_type = 'good'`))

	// The largest event version is stored as it is, and a valid surrogate pair is fine.
	evs := newEvents("ok", "o-1", 1)
	evs[0].EventVersion = eventstore.MaxEventVersion
	evs[0].Metadata = []byte(`"\ud83d\ude00"`)
	_, err := store.Append(ctx, db.Pool, eventstore.Any(), evs)
	require.NoError(t, err)
	got, err := store.ReadEvents(ctx, db.Pool, 0, 100)
	require.NoError(t, err)
	require.Equal(t, eventstore.MaxEventVersion, got[len(got)-1].EventVersion)
	require.Equal(t, `"😀"`, string(got[len(got)-1].Metadata))
}

// A limit is the most events a read returns, not what it allocates: a limit that means "all"
// reads what there is.
func TestReadsWithAHugeLimit(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewDatabase(t)
	store := postgres.NewStore(nil)
	_, err := store.Append(ctx, db.Pool, eventstore.Any(), newEvents("a", "1", 3))
	require.NoError(t, err)
	require.NotPanics(t, func() {
		evs, err := store.ReadEvents(ctx, db.Pool, 0, math.MaxInt)
		require.NoError(t, err)
		require.Len(t, evs, 3)
	})
	require.NotPanics(t, func() {
		evs, cut, err := store.ReadPage(ctx, db.Pool, postgres.PageQuery{Limit: math.MaxInt})
		require.NoError(t, err)
		require.False(t, cut)
		require.Len(t, evs, 3)
	})
	require.NotPanics(t, func() {
		evs, err := store.ReadEventsBetween(ctx, db.Pool, 0, 10, math.MaxInt, nil, nil)
		require.NoError(t, err)
		require.Len(t, evs, 3)
	})
	require.NotPanics(t, func() {
		evs, err := store.ReadPartitionBetween(ctx, db.Pool, 0, 10, math.MaxInt, nil, nil, 2, 0)
		require.NoError(t, err)
		require.LessOrEqual(t, len(evs), 3)
	})
}
