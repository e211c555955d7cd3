package runner

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/eventline/eventline/eventstore/postgres"
	"github.com/eventline/eventline/internal/filter"
	"github.com/eventline/eventline/internal/sqlname"
	"github.com/eventline/eventline/projector"
)

// This file reads behind the horizon with the selection in SQL (docs/design.md, "Filters and
// partitions in SQL"): a projection's filter and a unit's partition, so that each partition's
// owner is sent its own events only. Above the horizon a filtered read could not tell a hole from
// an event it filtered out, so units read the shared pages there and filter in memory.

// selection is what a unit (or subscription) reads behind the horizon: the events its filter lets
// through, of one partition.
type selection struct {
	match       filter.Matcher
	parts, part int    // parts <= 1: every partition
	key         string // identifies the selection, to share its reads
}

func newSelection(m filter.Matcher, parts, part int) selection {
	if parts <= 1 {
		parts, part = 1, 0
	}
	return selection{match: m, parts: parts, part: part,
		key: fmt.Sprintf("%d/%d %q %q", part, parts, m.AggregateTypes(), m.EventTypes())}
}

// all reports whether the selection is every event.
func (s selection) all() bool { return s.match.All() && s.parts <= 1 }

// filteredKey keys a filtered page: its start and its selection.
type filteredKey struct {
	from int64
	sel  string
}

// pageAfter returns the page after from of a reader (a unit, a subscription) that selects sel: behind
// the horizon read with sel in SQL (getFiltered), otherwise the shared page (get), which holds
// every event and which the reader filters.
func (r *pageReader) pageAfter(ctx context.Context, from, h int64, gen uint64, sel selection) (*page, error) {
	if !sel.all() && h > from {
		return r.getFiltered(ctx, from, h, sel)
	}
	return r.get(ctx, from, h, gen)
}

// getFiltered returns events after from that sel selects, read with the selection in SQL: every
// selected event up to the page's safe position, which is at most h (see readFiltered). Every
// position up to h is settled, so a page read under any horizon is correct to apply later; one
// that is not full is reused only under a horizon at least as high. Units with the same selection
// at the same position share the read. When the page stops short of h, the next one is read in
// the background.
func (r *pageReader) getFiltered(ctx context.Context, from, h int64, sel selection) (*page, error) {
	p, err := r.loadFiltered(ctx, from, h, sel)
	if err == nil && p.safe < h {
		r.prefetchFiltered(p.safe, h, sel)
	}
	return p, err
}

func (r *pageReader) loadFiltered(ctx context.Context, from, h int64, sel selection) (*page, error) {
	k := filteredKey{from, sel.key}
	r.mu.Lock()
	// The units asking for k have moved past their selection's earlier pages.
	for o, c := range r.filtered.calls {
		if o.sel == k.sel && o.from < k.from && isDone(c) {
			r.filtered.remove(o)
		}
	}
	r.mu.Unlock()
	// Generation 0: a filtered page holds settled positions only, which no notification changes.
	return loadPage(ctx, r, r.filtered, k, h, 0, func(ctx context.Context) (*page, error) {
		return r.readFiltered(ctx, from, h, sel)
	})
}

// prefetchFiltered reads the filtered page at from in the background unless it is read already;
// see prefetch.
func (r *pageReader) prefetchFiltered(from, h int64, sel selection) {
	prefetchPage(r, r.filtered, filteredKey{from, sel.key}, func(bg context.Context) error {
		_, err := r.loadFiltered(bg, from, h, sel)
		return err
	})
}

// readFiltered reads the events in (from, h] that sel selects, with the selection in SQL. A
// partition's read looks at a window of positions after from that holds about two pages of the
// partition's events, not at all of (from, h]: the planner cannot estimate how many rows match
// the partition's predicate, guesses very few, and would scan and sort the whole range for every
// page instead of walking the primary key. The page is then safe up to the window's end.
func (r *pageReader) readFiltered(ctx context.Context, from, h int64, sel selection) (*page, error) {
	if h <= from {
		// Nothing to read in (from, h]; the store would take h <= 0 for no upper bound.
		return &page{from: from, safe: from, horizon: h}, nil
	}
	q := postgres.PageQuery{From: from, To: h, AggregateTypes: sel.match.AggregateTypes(), EventTypes: sel.match.EventTypes()}
	if sel.parts > 1 {
		q.To = min(h, from+partitionWindow(r.limit, sel.parts))
		q.Partitions, q.Partition = sel.parts, sel.part
	}
	evs, full, err := r.readPage(ctx, q)
	if err != nil {
		return nil, err
	}
	// Every position up to h is settled: a full page can never change (final).
	p := &page{from: from, safe: q.To, events: evs, horizon: h, final: full, bytes: pageBytes(evs)}
	if full {
		p.safe = evs[len(evs)-1].GlobalPosition
	}
	return p, nil
}

// partitionWindow is how many positions one read of a partition looks at: about two pages of its
// events when aggregates spread evenly.
func partitionWindow(limit, parts int) int64 { return 2 * int64(limit) * int64(parts) }

// partitionProbe holds the aggregate IDs on which the runner checks, at start, that the database
// computes projector.PartitionOf as Go does: ASCII and 2- to 4-byte UTF-8, several tail lengths
// of the hash.
var partitionProbe = []string{"", "a", "abc", "order-1", "account-42", "0123456789ab", "0123456789abc",
	"çé", "日本語", "🎉🎉", "ünïcödé-aggrégate-日本-🎉-Ω", "3f2b8c4e-7d1a-4e5b-9c6d-0a1b2c3d4e5f"}

// partitionsInSQL reports whether the database selects partitions as projector.PartitionOf does:
// its encoding is UTF8 (Go hashes UTF-8 bytes), the function of migration 0007 exists, and it
// agrees with Go on partitionProbe. When it does not, why says so and partitions are filtered in
// memory. err is any other failure.
func partitionsInSQL(ctx context.Context, pool *pgxpool.Pool, events sqlname.Name) (ok bool, why string, err error) {
	var enc string
	if err := pool.QueryRow(ctx, `SELECT current_setting('server_encoding')`).Scan(&enc); err != nil {
		return false, "", fmt.Errorf("read server encoding: %w", err)
	}
	if enc != "UTF8" {
		return false, fmt.Sprintf("the database encoding is %s, not UTF8", enc), nil
	}
	const n = 1<<31 - 1 // a large modulus: the SQL hash must match Go's in (almost) every bit
	var got []int32
	err = pool.QueryRow(ctx, `SELECT array_agg(`+sqlname.PartitionFunc(events)+`(id, $2) ORDER BY ord)
		FROM unnest($1::text[]) WITH ORDINALITY AS t(id, ord)`, partitionProbe, n).Scan(&got)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42883" { // undefined_function
		return false, "the function " + sqlname.PartitionFunc(events) + " is missing (apply migration 0007)", nil
	}
	if err != nil {
		return false, "", fmt.Errorf("check %s: %w", sqlname.PartitionFunc(events), err)
	}
	for i, id := range partitionProbe {
		if want := projector.PartitionOf(id, n); int(got[i]) != want {
			return false, fmt.Sprintf("%s(%q, %d) is %d, projector.PartitionOf gives %d", sqlname.PartitionFunc(events), id, n, got[i], want), nil
		}
	}
	return true, "", nil
}
