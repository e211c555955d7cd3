package runner

import (
	"context"
	"sync"

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
}

// pageReader reads pages once and shares them between projections at the same position
// (docs/design.md, "Reading and dispatch"). It keeps at most max pages.
type pageReader struct {
	onRead func(from int64, events int)
	pool   *pgxpool.Pool
	store  *postgres.Store
	limit  int
	max    int

	mu       sync.Mutex
	inflight map[int64]*pageCall
	cache    map[int64]*page
	filtered map[filteredKey]*pageCall // filtered pages read or being read (filtered.go)
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

func newPageReader(pool *pgxpool.Pool, store *postgres.Store, limit, max int) *pageReader {
	return &pageReader{
		pool:     pool,
		store:    store,
		limit:    limit,
		max:      max,
		inflight: map[int64]*pageCall{},
		cache:    map[int64]*page{},
		filtered: map[filteredKey]*pageCall{},
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
	r.mu.Lock()
	if p, ok := r.cache[from]; ok && (p.final || (p.gen == gen && p.horizon >= h)) {
		r.mu.Unlock()
		return p, nil
	}
	if c, ok := r.inflight[from]; ok {
		r.mu.Unlock()
		select {
		case <-c.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if c.err == nil && (c.p.final || c.p.horizon >= h) {
			return c.p, nil
		}
		return r.load(ctx, from, h, gen)
	}
	c := &pageCall{done: make(chan struct{})}
	r.inflight[from] = c
	r.mu.Unlock()

	c.p, c.err = r.read(ctx, from, h, gen)

	r.mu.Lock()
	delete(r.inflight, from)
	if c.err == nil {
		r.cache[from] = c.p
		for len(r.cache) > r.max {
			// Evict the page furthest behind: during a catch-up the projections move forwards.
			oldest := int64(-1)
			for k := range r.cache {
				if oldest < 0 || k < oldest {
					oldest = k
				}
			}
			delete(r.cache, oldest)
		}
	}
	r.mu.Unlock()
	close(c.done)
	return c.p, c.err
}

// prefetch reads the page at from in the background unless it is cached or being read. The
// goroutine belongs to the reader: wait for it with wait. It does nothing after stop.
func (r *pageReader) prefetch(from, h int64, gen uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.bg == nil || r.bg.Err() != nil {
		return
	}
	if _, ok := r.cache[from]; ok {
		return
	}
	if _, ok := r.inflight[from]; ok {
		return
	}
	bg := r.bg
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		_, _ = r.load(bg, from, h, gen) // an error is met again by the projection that needs the page
	}()
}

// start enables prefetching until ctx ends; wait then waits for the prefetches in flight.
func (r *pageReader) start(ctx context.Context) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.bg = ctx
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
	evs, err := r.store.ReadEvents(ctx, r.pool, from, r.limit)
	if err != nil {
		return nil, err
	}
	if r.onRead != nil {
		r.onRead(from, len(evs))
	}
	return cut(evs, from, h, r.limit, gen), nil
}

func cut(evs []eventstore.PersistedEvent, from, h int64, limit int, gen uint64) *page {
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
	if p.held || len(evs) < limit {
		// Every visible event at or below h was read, and the holes below h are settled.
		p.safe = max(p.safe, h)
	}
	p.events = evs[:n:n]
	p.final = !p.held && len(evs) == limit
	return p
}
