package runner

import (
	"context"
	"sync"
	"unsafe"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/eventstore/postgres"
)

// page is what a projection at position from may apply: every event in (from, safe], in order.
type page struct {
	from, safe int64
	events     []eventstore.PersistedEvent
	// final: the page was full and had no hole, so its content can never change.
	final bool
	// held: a visible event lies beyond a hole that is not settled yet.
	held bool
	// horizon and gen are the horizon and wake generation it was read under.
	horizon int64
	gen     uint64
	// bytes is what its events take in memory (pageBytes), for the cache's bound.
	bytes int
}

// pageBytes estimates the memory the events read from the database take: the array that holds
// them (to its capacity) and their bytes and strings.
func pageBytes(evs []eventstore.PersistedEvent) int {
	n := cap(evs) * int(unsafe.Sizeof(eventstore.PersistedEvent{}))
	for i := range evs {
		ev := &evs[i]
		n += len(ev.Payload) + len(ev.Metadata) + len(ev.AggregateType) + len(ev.AggregateID) +
			len(ev.EventType) + len(ev.CausationID) + len(ev.CorrelationID) + len(ev.TraceID)
	}
	return n
}

// pageReader reads pages once and shares them between projections at the same position
// (docs/design.md, "Reading and dispatch"). A page holds at most limit events and, but for a
// single event, at most pageBytes bytes of payload and metadata; reads ask for fewer events after
// pages that pageBytes cut (adapt). The cache keeps at most max pages and at most maxBytes of
// memory (pageBytes), and so do the filtered pages.
type pageReader struct {
	onRead    func(from int64, events int)
	pool      *pgxpool.Pool
	store     *postgres.Store
	limit     int
	pageBytes int
	max       int
	maxBytes  int

	mu       sync.Mutex
	shared   *pageSet[int64]       // pages of every event, by position
	filtered *pageSet[filteredKey] // pages read with a selection in SQL (filtered.go)
	next     int                   // the limit of the next read: see adapt
	// partitionSQL: the database selects partitions as projector.PartitionOf does (filtered.go).
	partitionSQL bool
	bg           context.Context // prefetches run under it; nil before start
	wg           sync.WaitGroup
}

type pageCall struct {
	done chan struct{}
	p    *page
	err  error
}

func newPageReader(pool *pgxpool.Pool, store *postgres.Store, limit, pageBytes, max, maxBytes int) *pageReader {
	return &pageReader{
		pool:      pool,
		store:     store,
		limit:     limit,
		pageBytes: pageBytes,
		max:       max,
		maxBytes:  maxBytes,
		next:      limit,
		shared:    newPageSet[int64](),
		filtered:  newPageSet[filteredKey](),
	}
}

// pageSet keeps pages by key K: each read once and shared with every reader that asks for it
// while it is read or kept. The pageReader's mu guards it; it keeps at most the reader's max pages
// and maxBytes of them, evicting the page furthest behind first (during a catch-up the readers move
// forwards).
type pageSet[K comparable] struct {
	calls map[K]*pageCall // reads in flight, and the pages kept (done, without error)
	bytes int             // of the pages kept
}

func newPageSet[K comparable]() *pageSet[K] { return &pageSet[K]{calls: map[K]*pageCall{}} }

// loadPage returns the page s keeps at k if it is good for a reader under horizon h and wake
// generation gen; otherwise it joins the read of it in flight, or reads it with read (without
// mu). A page is good when it can never change (final), or when it was read under a horizon at
// least h and, for a page kept, the same wake generation (a notification since may have made
// events above the horizon visible).
func loadPage[K comparable](ctx context.Context, r *pageReader, s *pageSet[K], k K, h int64, gen uint64,
	read func(context.Context) (*page, error)) (*page, error) {
	r.mu.Lock()
	for {
		c, ok := s.calls[k]
		if !ok {
			break
		}
		if isDone(c) {
			if c.p.final || (c.p.gen == gen && c.p.horizon >= h) {
				r.mu.Unlock()
				return c.p, nil
			}
			s.remove(k) // stale: read it again
			break
		}
		r.mu.Unlock()
		select {
		case <-c.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if c.err == nil && (c.p.final || c.p.horizon >= h) {
			return c.p, nil
		}
		r.mu.Lock()
	}
	c := &pageCall{done: make(chan struct{})}
	s.calls[k] = c
	r.mu.Unlock()

	c.p, c.err = read(ctx)

	r.mu.Lock()
	defer r.mu.Unlock()
	if c.err != nil {
		delete(s.calls, k) // its waiters read again
		close(c.done)
		return nil, c.err
	}
	s.bytes += c.p.bytes
	close(c.done)
	s.evict(r.max, r.maxBytes) // maybe the page just read: its readers have it all the same
	return c.p, nil
}

// remove forgets the page kept at k.
func (s *pageSet[K]) remove(k K) {
	s.bytes -= s.calls[k].p.bytes
	delete(s.calls, k)
}

// evict removes the pages furthest behind while s holds more than max pages or maxBytes.
func (s *pageSet[K]) evict(max, maxBytes int) {
	for len(s.calls) > max || s.bytes > maxBytes {
		var victim K
		var from int64 = -1
		for k, c := range s.calls {
			if isDone(c) && (from < 0 || c.p.from < from) {
				victim, from = k, c.p.from
			}
		}
		if from < 0 {
			return // all in flight
		}
		s.remove(victim)
	}
}

func isDone(c *pageCall) bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// get returns the page at from, under horizon h and wake generation gen: from the cache when a
// page read there is still good, joining a read in flight, or reading it. After a full page it
// starts reading the next one in the background, so the database reads while the projection
// writes.
func (r *pageReader) get(ctx context.Context, from, h int64, gen uint64) (*page, error) {
	p, err := r.load(ctx, from, h, gen)
	if err == nil && p.final {
		r.prefetch(p.safe, h, gen)
	}
	return p, err
}

func (r *pageReader) load(ctx context.Context, from, h int64, gen uint64) (*page, error) {
	return loadPage(ctx, r, r.shared, from, h, gen, func(ctx context.Context) (*page, error) {
		return r.read(ctx, from, h, gen)
	})
}

// prefetch reads the page at from in the background unless it is cached or being read. The
// goroutine belongs to the reader: wait for it with wait. It does nothing after stop.
func (r *pageReader) prefetch(from, h int64, gen uint64) {
	prefetchPage(r, r.shared, from, func(bg context.Context) error {
		_, err := r.load(bg, from, h, gen)
		return err
	})
}

// prefetchPage runs load in the background, in a goroutine of the reader, unless k is in s
// already or the reader is stopped. An error is met again by the unit that needs the page.
func prefetchPage[K comparable](r *pageReader, s *pageSet[K], k K, load func(context.Context) error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.bg == nil || r.bg.Err() != nil {
		return
	}
	if _, ok := s.calls[k]; ok {
		return
	}
	bg := r.bg
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		_ = load(bg)
	}()
}

// start enables prefetching until ctx ends, with the cache bounded by maxBytes
// (Config.PageCacheBytes); wait then waits for the prefetches in flight.
func (r *pageReader) start(ctx context.Context, maxBytes int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.bg, r.maxBytes = ctx, maxBytes
}

// wait disables prefetching and waits for the prefetches in flight. Clearing bg under mu orders
// every prefetch's wg.Add (made under mu after checking bg) before Wait: subscriptions may ask for
// a prefetch while Run stops.
func (r *pageReader) wait() {
	r.mu.Lock()
	r.bg = nil
	r.mu.Unlock()
	r.wg.Wait()
}

// read reads the visible events after from and keeps the prefix that is safe to apply: every
// event at or below the horizon h, then only the contiguous run above max(from, h)
// (docs/design.md, "The gap problem"). h must have been obtained before this call: the query's
// snapshot then sees every committed position <= h.
func (r *pageReader) read(ctx context.Context, from, h int64, gen uint64) (*page, error) {
	evs, full, err := r.readPage(ctx, postgres.PageQuery{From: from})
	if err != nil {
		return nil, err
	}
	p := cut(evs, from, h, full, gen)
	p.bytes = pageBytes(evs) // p.events shares evs' array, events cut off included
	return p, nil
}

// readPage reads the page q asks for (From, and any filter, To and partition) under the limit in
// events of the moment and the bound in bytes, and reports whether it is full: more events may
// follow its last one.
func (r *pageReader) readPage(ctx context.Context, q postgres.PageQuery) (evs []eventstore.PersistedEvent, full bool, err error) {
	r.mu.Lock()
	q.Limit = r.next
	r.mu.Unlock()
	q.MaxBytes = r.pageBytes
	evs, short, err := r.store.ReadPage(ctx, r.pool, q)
	if err != nil {
		return nil, false, err
	}
	r.adapt(q.Limit, len(evs), short)
	if r.onRead != nil {
		r.onRead(q.From, len(evs))
	}
	return clip(evs), short || len(evs) == q.Limit, nil
}

// adapt sets the limit of the next reads from a read of limit events that returned n, short if
// PageBytes cut it. The store applies the byte bound as the rows arrive and drops the rows after
// it, so after a cut the next reads ask for as many events as fitted, and ask for more again, a
// quarter at a time up to BatchSize, after reads that were full without a cut: events of a steady
// large size cost one row dropped every other page, small events none.
func (r *pageReader) adapt(limit, n int, short bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case short:
		r.next = max(1, n)
	case n == limit:
		r.next = min(r.limit, max(r.next, limit+max(1, limit/4)))
	}
}

// clip returns evs in an array of its length when the read left most of its array unused (a few
// events in a live tail), so that a cached page does not hold memory for BatchSize events.
func clip(evs []eventstore.PersistedEvent) []eventstore.PersistedEvent {
	if cap(evs) <= 2*len(evs) {
		return evs
	}
	return append([]eventstore.PersistedEvent(nil), evs...)
}

// cut makes the page of the visible events evs read after from under horizon h. full says that
// more events may follow evs' last one: the read returned as many as it could (its limit in
// events or in bytes).
func cut(evs []eventstore.PersistedEvent, from, h int64, full bool, gen uint64) *page {
	p := &page{from: from, safe: from, horizon: h, gen: gen}
	n := len(evs)
	for i := range evs {
		pos := evs[i].GlobalPosition
		if pos <= h || pos == max(p.safe, h)+1 {
			p.safe = pos
			continue
		}
		n = i
		p.held = true
		break
	}
	if p.held || !full {
		// Every visible event at or below h was read, and the holes below h are settled.
		p.safe = max(p.safe, h)
	}
	p.events = evs[:n:n]
	p.final = !p.held && full
	return p
}
