package runner

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/eventstore/postgres"
	"github.com/eventline/eventline/internal/pgtest"
)

// The page cache keeps at most its bound in bytes: pages furthest behind are evicted first, and
// its count of bytes is the sum over the pages it holds.
func TestPageCacheBoundedInBytes(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db := pgtest.NewDatabase(t)
	store := postgres.NewStore(nil)
	for i := 0; i < 40; i++ {
		_, err := store.Append(ctx, db.Pool, eventstore.Any(), []eventstore.Event{{AggregateType: "a", AggregateID: fmt.Sprint(i % 3),
			EventType: "E", Payload: bytes.Repeat([]byte("x"), 500)}})
		require.NoError(t, err)
	}
	const limit = 5
	onePage := 0
	r := newPageReader(db.Pool, store, limit, 1<<20, 64, 1) // measure one page first
	p, err := r.get(ctx, 0, 1000, 0)
	require.NoError(t, err)
	require.Len(t, p.events, limit)
	onePage = p.bytes
	require.Greater(t, onePage, limit*500)

	r = newPageReader(db.Pool, store, limit, 1<<20, 64, 3*onePage)
	from := int64(0)
	for i := 0; i < 8; i++ {
		p, err := r.get(ctx, from, 1000, 0)
		require.NoError(t, err)
		require.Len(t, p.events, limit)
		from = p.safe
		r.mu.Lock()
		sum := 0
		var keys []int64
		for k, c := range r.shared.calls {
			sum += c.p.bytes
			keys = append(keys, k)
		}
		require.Equal(t, sum, r.shared.bytes)
		require.LessOrEqual(t, r.shared.bytes, 3*onePage)
		require.Len(t, r.shared.calls, min(i+1, 3), "the three pages furthest ahead: %v", keys)
		require.Contains(t, r.shared.calls, p.from)
		r.mu.Unlock()
	}
}

// After a page that PageBytes cut, reads ask for as many events as fitted, then for a quarter
// more after each full read without a cut, up to BatchSize; a read that is not full (the end of
// the log) changes nothing.
func TestAdaptLimit(t *testing.T) {
	r := &pageReader{limit: 500, next: 500}
	steps := []struct {
		n     int
		short bool
		next  int
	}{
		{n: 500, next: 500},
		{n: 3, short: true, next: 3},
		{n: 3, next: 4},
		{n: 4, next: 5},
		{n: 2, next: 5},
		{n: 1, short: true, next: 1},
		{n: 1, next: 2},
		{n: 2, next: 3},
		{n: 3, next: 4},
		{n: 4, next: 5},
		{n: 5, next: 6},
		{n: 6, next: 7},
		{n: 7, next: 8},
		{n: 8, next: 10},
	}
	for i, s := range steps {
		r.adapt(r.next, s.n, s.short)
		require.Equal(t, s.next, r.next, "step %d", i)
	}
	for range 40 {
		r.adapt(r.next, r.next, false)
	}
	require.Equal(t, 500, r.next, "back to BatchSize")
}

type nopProjection string

func (p nopProjection) Name() string { return string(p) }
func (nopProjection) Handle(context.Context, pgx.Tx, []eventstore.PersistedEvent) error {
	return nil
}

// With PageCacheBytes left at 0, the cache's bound grows with the projections registered when Run
// starts: more projections, more reads to share.
func TestPageCacheBytesDefaultGrowsWithProjections(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDatabase(t)
	for _, tc := range []struct {
		cfg         Config
		projections int
		want        int
	}{
		{Config{}, 1, PageCacheBytesDefault},
		{Config{}, 10, PageCacheBytesDefault + 9*PageCacheBytesPerProjection},
		{Config{PageCacheBytes: 3 << 20}, 10, 3 << 20},
	} {
		r, err := New(db.Pool, postgres.NewStore(nil), tc.cfg)
		require.NoError(t, err)
		for i := range tc.projections {
			require.NoError(t, r.Register(nopProjection(fmt.Sprintf("p%d", i))))
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- r.Run(ctx) }()
		require.Eventually(t, func() bool {
			r.pages.mu.Lock()
			defer r.pages.mu.Unlock()
			return r.pages.bg != nil
		}, time.Minute, 5*time.Millisecond, "Run starts the page reader")
		r.pages.mu.Lock()
		got := r.pages.maxBytes
		r.pages.mu.Unlock()
		cancel()
		require.NoError(t, <-done)
		require.Equal(t, tc.want, got, "%d projections, %+v", tc.projections, tc.cfg.PageCacheBytes)
	}
	require.Error(t, Config{PageCacheBytes: -1}.withDefaults().validate())
}
