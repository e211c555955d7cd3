package postgres_test

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/eventstore/postgres"
	"github.com/eventline/eventline/internal/pgtest"
)

// Append refuses an event whose payload and metadata together pass MaxEventSize, before any SQL,
// naming the event, its aggregate and the sizes; an event of exactly the maximum is stored.
func TestAppendRefusesEventsLargerThanMaxEventSize(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewDatabase(t)
	store := postgres.NewStore(&postgres.StoreConfig{MaxEventSize: 100})

	meta := []byte(`{"k": "0123456789"}`) // 19 bytes, as stored (jsonb text)
	fits := newEvents("order", "o-1", 2)
	fits[1].Payload, fits[1].Metadata = bytes.Repeat([]byte("x"), 100-len(meta)), meta
	_, err := store.Append(ctx, db.Pool, eventstore.Any(), fits)
	require.NoError(t, err, "payload plus metadata equal to the maximum")

	big := newEvents("order", "o-1", 3)
	big[2].EventType = "Bulky"
	big[2].Payload, big[2].Metadata = bytes.Repeat([]byte("x"), 101-len(meta)), meta
	_, err = store.Append(ctx, db.Pool, eventstore.Any(), big)
	require.ErrorIs(t, err, eventstore.ErrEventTooLarge)
	require.NotErrorIs(t, err, eventstore.ErrOptimisticConcurrency)
	require.ErrorContains(t, err, `append to order "o-1": event 2 (Bulky)`)
	require.ErrorContains(t, err, "101 bytes of payload and metadata, more than the maximum of 100")
	require.EqualValues(t, 2, count(t, db.Pool, `SELECT count(*) FROM events WHERE aggregate_id = 'o-1'`), "nothing of the refused batch is written")

	// The zero config has the default maximum.
	huge := newEvents("order", "o-2", 1)
	huge[0].Payload = make([]byte, postgres.MaxEventSizeDefault+1)
	_, err = postgres.NewStore(nil).Append(ctx, db.Pool, eventstore.Any(), huge)
	require.ErrorIs(t, err, eventstore.ErrEventTooLarge)
	huge[0].Payload = huge[0].Payload[:postgres.MaxEventSizeDefault]
	_, err = postgres.NewStore(nil).Append(ctx, db.Pool, eventstore.Any(), huge)
	require.NoError(t, err)

	require.Error(t, postgres.StoreConfig{MaxEventSize: -1}.Validate())
}

// ReadPage ends a page before the event that would pass MaxBytes, but always returns the first
// event, and says when the byte bound (not the end of the log or the limit) ended it.
func TestReadPageBoundedInBytes(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewDatabase(t)
	store := postgres.NewStore(nil)
	sizes := []int{100, 300, 50, 1000, 10, 10, 10}
	var all []int64
	for i, size := range sizes {
		ev := newEvents("order", fmt.Sprint(i%2), 1)
		ev[0].Payload = bytes.Repeat([]byte("p"), size)
		if i == 2 {
			ev[0].AggregateType = "account"
		}
		res, err := store.Append(ctx, db.Pool, eventstore.Any(), ev)
		require.NoError(t, err)
		all = append(all, res.GlobalPositions()...)
	}
	positions := func(evs []eventstore.PersistedEvent) []int64 {
		out := []int64{}
		for _, e := range evs {
			out = append(out, e.GlobalPosition)
		}
		return out
	}
	for _, tc := range []struct {
		name string
		q    postgres.PageQuery
		want []int64
		cut  bool
	}{
		{"no byte bound", postgres.PageQuery{Limit: 10}, all, false},
		{"limit first", postgres.PageQuery{Limit: 2, MaxBytes: 1000}, all[:2], false},
		{"bytes first: 100+300 fit in 450, 50 more does not", postgres.PageQuery{Limit: 10, MaxBytes: 449}, all[:2], true},
		{"exactly the bound", postgres.PageQuery{Limit: 10, MaxBytes: 450}, all[:3], true},
		{"a first event larger than the bound comes alone", postgres.PageQuery{From: all[2], Limit: 10, MaxBytes: 500}, all[3:4], true},
		{"the end of the log is not a cut", postgres.PageQuery{From: all[3], Limit: 10, MaxBytes: 30}, all[4:], false},
		{"the last event read reaches the bound: not cut", postgres.PageQuery{From: all[3], Limit: 2, MaxBytes: 20}, all[4:6], false},
		{"filters and an upper bound", postgres.PageQuery{To: all[4], Limit: 10, MaxBytes: 1100, AggregateTypes: []string{"order"}},
			[]int64{all[0], all[1]}, true},
		{"filters: the bound counts only matching events", postgres.PageQuery{To: all[4], Limit: 10, MaxBytes: 1500,
			AggregateTypes: []string{"order"}}, []int64{all[0], all[1], all[3], all[4]}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, cut, err := store.ReadPage(ctx, db.Pool, tc.q)
			require.NoError(t, err)
			require.Equal(t, tc.want, positions(got))
			require.Equal(t, tc.cut, cut, "cut")
		})
	}
	_, _, err := store.ReadPage(ctx, db.Pool, postgres.PageQuery{})
	require.Error(t, err, "a limit is required")
}

// The append function refuses an event larger than the setting eventline.max_event_size (1 MiB
// when unset, as Append's default) with SQLSTATE 54000, which MapAppendFuncError turns into
// eventstore.ErrEventTooLarge; nothing is written.
func TestAppendFuncRefusesEventsLargerThanMaxEventSize(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewDatabase(t)
	big := fmt.Sprintf(`[{"event_type": "Big", "payload_base64": %q}]`,
		base64.StdEncoding.EncodeToString(make([]byte, postgres.MaxEventSizeDefault+1)))
	_, err := callAppendFunc(ctx, db.Pool, "doc", "d-1", nil, big, "")
	require.ErrorIs(t, postgres.MapAppendFuncError(err), eventstore.ErrEventTooLarge, "the default maximum")
	require.ErrorContains(t, err, `eventline append to doc "d-1": event 0 (Big) is too large: 1048577 bytes`)

	// With a maximum of 30 bytes: payload as stored ("abc" is 5 bytes of jsonb text), plus
	// metadata as jsonb text ({"k": "0123456789"} is 19 bytes).
	tx, err := db.Pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	_, err = tx.Exec(ctx, `SET LOCAL eventline.max_event_size = 30`)
	require.NoError(t, err)
	rows, err := callAppendFunc(ctx, tx, "doc", "d-1", nil, `[
		{"event_type": "Fits", "payload": "abc", "metadata": {"k": "0123456789"}},
		{"event_type": "FitsToo", "payload_base64": "`+base64.StdEncoding.EncodeToString(make([]byte, 30))+`"}]`, "")
	require.NoError(t, err, "exactly the maximum")
	require.Len(t, rows, 2)
	_, err = tx.Exec(ctx, `SAVEPOINT s`)
	require.NoError(t, err)
	_, err = callAppendFunc(ctx, tx, "doc", "d-1", nil, `[
		{"event_type": "Fits", "payload": "abc"},
		{"event_type": "TooBig", "payload": "abcdefghijklmnopqrstuvwxyz", "metadata": {"a": 1}}]`, "")
	require.ErrorIs(t, postgres.MapAppendFuncError(err), eventstore.ErrEventTooLarge)
	require.ErrorContains(t, err, "event 1 (TooBig) is too large: 36 bytes of payload and metadata, more than the maximum of 30")
	_, err = tx.Exec(ctx, `ROLLBACK TO SAVEPOINT s`)
	require.NoError(t, err)
	require.NoError(t, tx.Commit(ctx))
	require.EqualValues(t, 2, count(t, db.Pool, `SELECT count(*) FROM events`))
	require.EqualValues(t, 2, headOf(t, db, "doc", "d-1"))
}
