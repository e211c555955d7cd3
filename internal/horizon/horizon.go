// Package horizon computes the gap-safe horizon of an events table (DESIGN.md section 4): the
// highest global position H such that every position at or below it is settled, committed and
// visible or gone for good.
//
// Every insert into the events table takes the shared advisory lock K before it allocates
// positions; Append also takes, in the same statement, a second shared lock keyed by the first
// position it took (raw INSERT and COPY do not, and are treated as possibly holding anything
// above the previous tick's L until they end). A tick reads L, the sequence's last_value, and then (pipelined, same round trip) the holders of
// K with their position locks. Positions <= L were allocated by transactions that held K when L
// was read; so a position <= L can only still be in flight if one of those holders is. A holder
// whose first position p is known owns nothing below p; a holder not seen by the previous tick
// took K after that tick and owns nothing at or below the previous L; a holder seen before
// without a position keeps the bound it had. H is then min(L, bounds), never moving backwards.
package horizon

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/internal/sqlname"
)

// ErrNotSafe is matched by the errors of Check: the events table lacks what the tracker needs.
var ErrNotSafe = errors.New("events table is not set up for gap-safe reading")

// Check verifies what the tracker relies on: the append lock trigger with this table's key and a
// position sequence with CACHE 1. It returns the quoted sequence name.
func Check(ctx context.Context, db eventstore.DBTX, events sqlname.Name) (string, error) {
	var seq *string
	if err := db.QueryRow(ctx, `SELECT pg_get_serial_sequence($1, 'global_position')`, events.Quoted()).Scan(&seq); err != nil {
		return "", fmt.Errorf("check events table %s: %w", events, err)
	}
	if seq == nil {
		return "", fmt.Errorf("%w: %s.global_position has no sequence (run the migrations)", ErrNotSafe, events)
	}
	var cache int64
	if err := db.QueryRow(ctx, `SELECT seqcache FROM pg_sequence WHERE seqrelid = $1::regclass`, *seq).Scan(&cache); err != nil {
		return "", fmt.Errorf("check sequence %s: %w", *seq, err)
	}
	if cache != 1 {
		return "", fmt.Errorf("%w: sequence %s has CACHE %d; it must be 1 (ALTER SEQUENCE %s CACHE 1)", ErrNotSafe, *seq, cache, *seq)
	}
	rows, err := db.Query(ctx, `SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger
		WHERE tgrelid = $1::regclass AND NOT tgisinternal AND tgenabled IN ('O', 'A')`, events.Quoted())
	if err != nil {
		return "", fmt.Errorf("check triggers of %s: %w", events, err)
	}
	defs := map[string]string{}
	for rows.Next() {
		var name, def string
		if err := rows.Scan(&name, &def); err != nil {
			return "", fmt.Errorf("check triggers of %s: %w", events, err)
		}
		defs[name] = def
	}
	if err := rows.Err(); err != nil {
		return "", fmt.Errorf("check triggers of %s: %w", events, err)
	}
	k := strconv.FormatInt(sqlname.AppendLockKey(events), 10)
	if d := defs["eventline_append_lock"]; !strings.Contains(d, "BEFORE INSERT") || !strings.Contains(d, "FOR EACH STATEMENT") ||
		!strings.Contains(d, "WHEN") || !strings.Contains(d, "pg_advisory_xact_lock_shared(") || strings.Count(d, k) != 2 ||
		!strings.Contains(d, "eventline_append_lock('"+k+"')") {
		return "", fmt.Errorf("%w: %s lacks the enabled trigger eventline_append_lock (BEFORE INSERT FOR EACH STATEMENT, key %s); run the migrations", ErrNotSafe, events, k)
	}
	return *seq, nil
}

// Holder is an in-flight appender as the last tick saw it.
type Holder struct {
	VirtualXID string
	PID        int // 0 for a prepared transaction
	// FirstPosition is the lowest position it allocated, or 0 while it is still allocating.
	FirstPosition int64
	// Bound: the holder owns no position at or below Bound.
	Bound int64
	// Since is when the tracker first saw it.
	Since time.Time
}

// Tracker publishes the horizon. Ticks are serialized; readers (Horizon, Changed, Blocker) are
// safe for concurrent use.
type Tracker struct {
	lastValueSQL string
	locksSQL     string
	keyHi, keyLo uint32
	class        uint32

	tickMu sync.Mutex // one tick at a time
	lastL  int64
	ticked bool
	seen   map[string]Holder

	mu      sync.Mutex
	h       int64
	blocker *Holder
	changed chan struct{}

	requests chan struct{}

	connect func(context.Context) (*pgx.Conn, error)
	conn    *pgx.Conn // guarded by tickMu
}

// New returns a tracker for the events table whose position sequence is seq (from Check).
// start is a horizon known to be settled (0 is always safe). connect opens the tracker's own
// connection: with a shared pool, ticks would queue behind slow appenders holding its connections,
// just when a projection waits for one.
func New(events sqlname.Name, seq string, start int64, connect func(context.Context) (*pgx.Conn, error)) *Tracker {
	k := uint64(sqlname.AppendLockKey(events))
	return &Tracker{
		lastValueSQL: `SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM ` + seq,
		// Advisory locks are per database: appenders to a same-named table in another database
		// of the cluster are not ours.
		locksSQL: `SELECT virtualtransaction, coalesce(pid, 0), objsubid, objid FROM pg_locks
			WHERE locktype = 'advisory' AND granted
			  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
			  AND ((classid = $1 AND objid = $2 AND objsubid = 1) OR (classid = $3 AND objsubid = 2))`,
		keyHi:    uint32(k >> 32),
		keyLo:    uint32(k),
		class:    uint32(sqlname.PositionLockClass(events)),
		seen:     map[string]Holder{},
		h:        start,
		changed:  make(chan struct{}),
		requests: make(chan struct{}, 1),
		connect:  connect,
	}
}

// Horizon returns the current horizon: every position <= it is settled.
func (t *Tracker) Horizon() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.h
}

// Changed returns a channel that is closed the next time the horizon moves.
func (t *Tracker) Changed() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.changed
}

// Blocker returns the in-flight appender that holds the horizon back, if any.
func (t *Tracker) Blocker() (Holder, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.blocker == nil {
		return Holder{}, false
	}
	return *t.blocker, true
}

// Request asks Run for a tick soon. It never blocks.
func (t *Tracker) Request() {
	select {
	case t.requests <- struct{}{}:
	default:
	}
}

// Close closes the tracker's connection, if open.
func (t *Tracker) Close(ctx context.Context) {
	t.tickMu.Lock()
	defer t.tickMu.Unlock()
	if t.conn != nil {
		_ = t.conn.Close(ctx)
		t.conn = nil
	}
}

// Tick reads L and the holders in one round trip on the tracker's own connection (opened on
// first use, and again after an error) and advances the horizon. It returns the new horizon.
func (t *Tracker) Tick(ctx context.Context) (int64, error) {
	t.tickMu.Lock()
	defer t.tickMu.Unlock()
	if t.conn == nil || t.conn.IsClosed() {
		conn, err := t.connect(ctx)
		if err != nil {
			return 0, fmt.Errorf("horizon: connect: %w", err)
		}
		t.conn = conn
	}
	h, err := t.tick(ctx, t.conn)
	if err != nil {
		// Start afresh on the next tick: the connection may be broken.
		_ = t.conn.Close(ctx)
		t.conn = nil
	}
	return h, err
}

func (t *Tracker) tick(ctx context.Context, conn *pgx.Conn) (int64, error) {
	// The batch runs its statements in order on one connection: L is read before the locks.
	batch := &pgx.Batch{}
	batch.Queue(t.lastValueSQL)
	batch.Queue(t.locksSQL, t.keyHi, t.keyLo, t.class)
	br := conn.SendBatch(ctx, batch)
	var l int64
	if err := br.QueryRow().Scan(&l); err != nil {
		_ = br.Close()
		return 0, fmt.Errorf("horizon: read last position: %w", err)
	}
	rows, err := br.Query()
	if err != nil {
		_ = br.Close()
		return 0, fmt.Errorf("horizon: read appenders: %w", err)
	}
	type lockRow struct {
		vxid  string
		pid   int32
		subid int16
		objid uint32
	}
	var locks []lockRow
	for rows.Next() {
		var r lockRow
		if err := rows.Scan(&r.vxid, &r.pid, &r.subid, &r.objid); err != nil {
			rows.Close()
			_ = br.Close()
			return 0, fmt.Errorf("horizon: read appenders: %w", err)
		}
		locks = append(locks, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		_ = br.Close()
		return 0, fmt.Errorf("horizon: read appenders: %w", err)
	}
	if err := br.Close(); err != nil {
		return 0, fmt.Errorf("horizon: %w", err)
	}

	now := time.Now()
	holders := map[string]*Holder{}
	firstPos := map[string]int64{}
	for _, r := range locks {
		if r.subid == 1 {
			holders[r.vxid] = &Holder{VirtualXID: r.vxid, PID: int(r.pid)}
			continue
		}
		// The nearest position to L with these low 32 bits.
		p := l + int64(int32(r.objid-uint32(l)))
		if cur, ok := firstPos[r.vxid]; !ok || p < cur {
			firstPos[r.vxid] = p
		}
	}
	bound := l
	var blocker *Holder
	seen := make(map[string]Holder, len(holders))
	for vxid, h := range holders {
		prev, wasSeen := t.seen[vxid]
		switch p, ok := firstPos[vxid]; {
		case ok:
			h.FirstPosition, h.Bound = p, p-1
		case wasSeen:
			h.Bound = prev.Bound
		case t.ticked:
			h.Bound = t.lastL
		default:
			h.Bound = t.Horizon()
		}
		h.Since = now
		if wasSeen {
			h.Since = prev.Since
		}
		seen[vxid] = *h
		if h.Bound < bound {
			bound = h.Bound
			blocker = h
		}
	}
	t.seen = seen
	t.lastL = l
	t.ticked = true

	t.mu.Lock()
	defer t.mu.Unlock()
	t.blocker = blocker
	if bound > t.h {
		t.h = bound
		close(t.changed)
		t.changed = make(chan struct{})
	}
	return t.h, nil
}

// Run ticks every interval until ctx ends. After a Request it ticks every minGap instead, until
// the horizon moves (the waiters are then woken through Changed, and ask again if they still
// wait). Failed ticks are reported to onError and retried. It returns nil when ctx ends.
func (t *Tracker) Run(ctx context.Context, interval, minGap time.Duration, onError func(error)) error {
	timer := time.NewTimer(0)
	defer timer.Stop()
	fast := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		case <-t.requests:
			fast = true
		}
		before := t.Horizon()
		h, err := t.Tick(ctx)
		switch {
		case err != nil:
			if ctx.Err() != nil {
				return nil
			}
			onError(err)
		case h != before:
			fast = false
		}
		// Drain a request that arrived during the tick: it is served by the next fast tick.
		select {
		case <-t.requests:
			fast = true
		default:
		}
		wait := interval
		if fast && err == nil {
			// Each tick reads pg_locks, which is not free: at most one per minGap.
			wait = minGap
		}
		timer.Reset(wait)
	}
}
