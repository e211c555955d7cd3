// Package horizon computes the gap-safe horizon of an events table (docs/design.md, "The gap
// problem"): the highest global position H such that every position at or below it is settled,
// committed and visible or gone for good.
//
// What the events table guarantees (package migrations sets it up, Check verifies it). Every
// statement that inserts into the table, INSERT and COPY alike, takes the shared advisory lock K
// before it allocates a position and holds it until its transaction ends: the trigger that takes
// it fires always, also in sessions with session_replication_role = replica. The position
// sequence has CACHE 1, so a position allocated after L was read is above L. The trigger also
// counts the transaction's insert statements, and Append takes its position lock (shared, keyed
// by the low 32 bits of its statement's first position p) only when its statement is the first
// insert of its transaction. A position lock p therefore says, for the whole transaction: it owns
// nothing below p, now or later (a later insert takes higher positions; a savepoint rolled back
// drops its rows, its count and its locks together).
//
// A tick reads, in one round trip and in this order: L, the sequence's last value; the granted K
// and position locks (pg_locks, one consistent view); the trigger's state. A position <= L was
// allocated by a transaction that held K before L was read; while it is in flight it still holds
// K, so it is among the holders. The horizon becomes max(H, min(L, every holder's bound)), where a
// holder's bound is a position at or below which it owns nothing (advance computes it):
//
//   - A holder seen by the previous tick keeps its bound, or raises it to p-1 when its position
//     lock p appears later: a tick that read the locks between the statement's K and its position
//     lock saw it without one. Both are facts about the whole transaction, so the higher one holds.
//     A bound never falls.
//   - A holder first seen now, when the previous tick can be trusted, took K after that tick read
//     the locks, so after it read its L (prevL): it owns nothing at or below prevL. With a position
//     lock p, both facts hold: the bound is max(prevL, p-1). A prepared transaction is the
//     exception: its virtual transaction ID can change while it holds K (after a server restart
//     it shows as -1/xid), so when first seen it is treated as on a fresh tick.
//   - On a fresh tick nothing seen before is trusted: every holder may own anything above H, the
//     one thing still known. Its bound is H, or max(H, p-1) with a position lock; never prevL.
//
// A tick is fresh when it is the first; the first on a new connection; the first after a failed
// tick, or after the table was found unsafe; and when the server restarted behind a connection
// that survived (pg_postmaster_start_time changed). After a restart virtual transaction IDs start
// again: a new transaction can reuse the ID of one seen before, and a prepared transaction that
// was seen shows up under a new one.
//
// The table is unsafe when the trigger is not enabled ALWAYS (disabled, or set back to fire only in
// origin sessions): writers may then insert without taking K. Every tick reads the trigger's state
// after the locks, and Tick runs the whole Check again now and then (SetCheckInterval); while
// either fails, the horizon does not move and Unsafe says why. This is enough: ALTER TABLE ...
// DISABLE or ENABLE TRIGGER waits for every open transaction that inserted into the table. A
// writer can insert without K only after such a change committed; a tick that still saw the
// trigger enabled had read its L before that, so the writer's positions are above that L; and the
// change back to ALWAYS waits for the writer to end, so when a tick sees the trigger enabled again
// no such writer is in flight.
//
// Out of reach: positions given explicitly (OVERRIDING SYSTEM VALUE), a sequence changed by hand,
// and logical replication's apply worker, which fires no statement triggers and takes its
// positions from the publisher.
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

// ErrNotSafe is matched by the errors of Check, and by Unsafe's: the events table lacks what the
// tracker needs.
var ErrNotSafe = errors.New("events table is not set up for gap-safe reading")

// triggerName is the append lock trigger that migrations create on the events table.
const triggerName = "eventline_append_lock"

// insertCounter is the transaction-local setting in which the trigger counts insert statements;
// Append reads it (package eventstore/postgres).
const insertCounter = "eventline.event_inserts"

// CheckIntervalDefault is how often Tick runs Check again while the table is safe.
const CheckIntervalDefault = 5 * time.Second

// Check verifies what the tracker relies on: the append lock trigger with this table's key,
// counting inserts, enabled ALWAYS, and a position sequence with CACHE 1. It returns the quoted
// sequence name.
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
	var enabled, def string
	err := db.QueryRow(ctx, `SELECT tgenabled::text, pg_get_triggerdef(oid) FROM pg_trigger
		WHERE tgrelid = $1::regclass AND NOT tgisinternal AND tgname = $2`, events.Quoted(), triggerName).Scan(&enabled, &def)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", fmt.Errorf("%w: %s lacks the trigger %s; run the migrations", ErrNotSafe, events, triggerName)
	}
	if err != nil {
		return "", fmt.Errorf("check triggers of %s: %w", events, err)
	}
	k := strconv.FormatInt(sqlname.AppendLockKey(events), 10)
	if !strings.Contains(def, "BEFORE INSERT") || !strings.Contains(def, "FOR EACH STATEMENT") ||
		!strings.Contains(def, "WHEN") || !strings.Contains(def, "pg_advisory_xact_lock_shared(") || strings.Count(def, k) != 2 ||
		!strings.Contains(def, "eventline_append_lock('"+k+"')") || !strings.Contains(def, "set_config('"+insertCounter+"'") {
		return "", fmt.Errorf("%w: the trigger %s on %s is not the one the migrations create (BEFORE INSERT FOR EACH STATEMENT, key %s, counting inserts in %s); run the migrations",
			ErrNotSafe, triggerName, events, k, insertCounter)
	}
	if err := triggerState(events, enabled); err != nil {
		return "", err
	}
	return *seq, nil
}

// triggerState returns nil when the trigger's pg_trigger.tgenabled is 'A', else why it is unsafe
// and how to fix it.
func triggerState(events sqlname.Name, enabled string) error {
	var what string
	switch enabled {
	case "A":
		return nil
	case "":
		return fmt.Errorf("%w: %s lacks the trigger %s; run the migrations", ErrNotSafe, events, triggerName)
	case "D":
		what = "disabled"
	case "O":
		what = "enabled only for sessions with session_replication_role = origin or local (ENABLE TRIGGER)"
	case "R":
		what = "enabled only for sessions with session_replication_role = replica (ENABLE REPLICA TRIGGER)"
	default:
		what = "in state " + strconv.Quote(enabled)
	}
	return fmt.Errorf("%w: the trigger %s on %s is %s, so inserts may take no append lock; it must fire always: ALTER TABLE %s ENABLE ALWAYS TRIGGER %s",
		ErrNotSafe, triggerName, events, what, events.Quoted(), triggerName)
}

// Holder is an in-flight appender as the last tick saw it.
type Holder struct {
	VirtualXID string
	PID        int // 0 for a prepared transaction
	// FirstPosition is the position of its position lock (the first position of its first
	// insert, when that insert was an Append), or 0 when it has none.
	FirstPosition int64
	// Bound: the holder owns no position at or below Bound.
	Bound int64
	// Since is when the tracker first saw it (since the last fresh tick).
	Since time.Time
}

// lockRow is a granted advisory lock of the events table, as a tick reads it from pg_locks.
type lockRow struct {
	vxid     string
	pid      int    // 0 for a prepared transaction
	position bool   // false: the append lock K; true: a position lock
	low32    uint32 // a position lock's key: the low 32 bits of the position
}

// state is what a tick leaves to the next one. The zero state makes the next tick fresh.
type state struct {
	trusted bool  // false: fresh, nothing below may be relied on
	l       int64 // the tick's L
	holders map[string]Holder
}

// advance is the pure core of a tick. From the previous tick's state prev (the zero state when
// there is none to trust), the current horizon h, the L the tick read first and the locks it read
// after, it computes the state to hand on, the new horizon, and the holder that holds it back
// below L, if any. The rules are in the package doc.
func advance(prev state, h, l int64, locks []lockRow, now time.Time) (next state, horizon int64, blocker *Holder) {
	var order []string
	holders := map[string]*Holder{}
	for _, r := range locks {
		if !r.position {
			if _, ok := holders[r.vxid]; !ok {
				order = append(order, r.vxid)
			}
			holders[r.vxid] = &Holder{VirtualXID: r.vxid, PID: r.pid}
		}
	}
	firstPos := map[string]int64{}
	for _, r := range locks {
		if !r.position {
			continue
		}
		// The position nearest to L with these low 32 bits.
		p := l + int64(int32(r.low32-uint32(l)))
		if cur, ok := firstPos[r.vxid]; !ok || p < cur {
			firstPos[r.vxid] = p
		}
	}

	next = state{trusted: true, l: l, holders: make(map[string]Holder, len(holders))}
	lowest := l
	for _, vxid := range order {
		hd := holders[vxid]
		p, locked := firstPos[vxid]
		if old, seen := prev.holders[vxid]; prev.trusted && seen {
			hd.Bound, hd.FirstPosition, hd.Since = old.Bound, old.FirstPosition, old.Since
			if locked {
				// Seen before it took its position lock (a tick between its K and the end of its
				// first statement): the lock is a fact about the whole transaction, as on a fresh
				// tick, and the bound is the higher of the two facts.
				hd.Bound = max(hd.Bound, p-1)
				hd.FirstPosition = p
			}
		} else {
			base := h
			if prev.trusted && hd.PID != 0 {
				base = max(h, prev.l)
			}
			hd.Bound, hd.Since = base, now
			if locked {
				hd.Bound = max(base, p-1)
				hd.FirstPosition = p
			}
		}
		next.holders[vxid] = *hd
		if hd.Bound < lowest {
			lowest = hd.Bound
			blocker = hd
		}
	}
	return next, max(h, lowest), blocker
}

// Tracker publishes the horizon. Ticks are serialized; readers (Horizon, Changed, Blocker,
// Unsafe) are safe for concurrent use.
type Tracker struct {
	events       sqlname.Name
	lastValueSQL string
	locksSQL     string
	triggerSQL   string
	keyHi, keyLo uint32
	class        uint32

	tickMu     sync.Mutex // one tick at a time; guards the fields up to mu
	conn       *pgx.Conn
	state      state
	started    time.Time // the server's start time that state was built under
	checkEvery time.Duration
	checked    time.Time // when Check last passed

	mu      sync.Mutex
	h       int64
	blocker *Holder
	unsafe  error
	changed chan struct{}
	ticked  time.Time // when the last tick that succeeded ended
	tickErr error     // the last tick's error, nil when it succeeded

	requests chan struct{}

	connect func(context.Context) (*pgx.Conn, error)
}

// New returns a tracker for the events table whose position sequence is seq (from Check).
// start is a horizon known to be settled (0 is always safe). connect opens the tracker's own
// connection: with a shared pool, ticks would queue behind slow appenders holding its connections,
// just when a projection waits for one.
func New(events sqlname.Name, seq string, start int64, connect func(context.Context) (*pgx.Conn, error)) *Tracker {
	k := uint64(sqlname.AppendLockKey(events))
	return &Tracker{
		events:       events,
		lastValueSQL: `SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END, pg_postmaster_start_time() FROM ` + seq,
		// Advisory locks are per database: appenders to a same-named table in another database
		// of the cluster are not ours.
		locksSQL: `SELECT virtualtransaction, coalesce(pid, 0), objsubid, objid FROM pg_locks
			WHERE locktype = 'advisory' AND granted
			  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
			  AND ((classid = $1 AND objid = $2 AND objsubid = 1) OR (classid = $3 AND objsubid = 2))`,
		triggerSQL: `SELECT coalesce((SELECT tgenabled::text FROM pg_trigger
			WHERE tgrelid = $1::regclass AND NOT tgisinternal AND tgname = '` + triggerName + `'), '')`,
		keyHi:      uint32(k >> 32),
		keyLo:      uint32(k),
		class:      uint32(sqlname.PositionLockClass(events)),
		checkEvery: CheckIntervalDefault,
		checked:    time.Now(), // seq came from Check, which has just passed
		h:          start,
		changed:    make(chan struct{}),
		requests:   make(chan struct{}, 1),
		connect:    connect,
	}
}

// SetCheckInterval sets how often Tick runs Check again while the table is safe (every tick when
// d <= 0; CheckIntervalDefault unless set). Every tick reads the trigger's state regardless.
func (t *Tracker) SetCheckInterval(d time.Duration) {
	t.tickMu.Lock()
	defer t.tickMu.Unlock()
	t.checkEvery = d
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

// LastTick returns when the last successful tick ended (zero before any) and the last tick's
// error (nil when it succeeded), for health checks.
func (t *Tracker) LastTick() (time.Time, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.ticked, t.tickErr
}

// Unsafe returns nil while the events table is safe to read, else why not (an error matching
// ErrNotSafe, which says how to fix it): the horizon is frozen until a tick finds it safe again.
// It is meant for the runner's Status.
func (t *Tracker) Unsafe() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.unsafe
}

// Request asks Run for a tick soon. It never blocks.
func (t *Tracker) Request() {
	select {
	case t.requests <- struct{}{}:
	default:
	}
}

// Close closes the tracker's connection, if open. A later tick opens a new one, and is fresh.
func (t *Tracker) Close(ctx context.Context) {
	t.tickMu.Lock()
	defer t.tickMu.Unlock()
	if t.conn != nil {
		_ = t.conn.Close(ctx)
		t.conn = nil
	}
	t.state = state{}
}

// Tick reads L, the holders and the trigger's state in one round trip on the tracker's own
// connection (opened on first use, and again after an error), runs Check when it is due, and
// advances the horizon. It returns the horizon. While the table is unsafe it returns an error
// matching ErrNotSafe and the horizon does not move. After any error the next tick is fresh.
func (t *Tracker) Tick(ctx context.Context) (int64, error) {
	t.tickMu.Lock()
	defer t.tickMu.Unlock()
	h, err := t.tick(ctx)
	t.mu.Lock()
	t.tickErr = err
	if err == nil {
		t.ticked = time.Now()
	}
	t.mu.Unlock()
	if err != nil {
		t.state = state{}
		if !errors.Is(err, ErrNotSafe) && t.conn != nil {
			// The connection may be broken: start afresh on the next tick.
			_ = t.conn.Close(ctx)
			t.conn = nil
		}
	}
	return h, err
}

// observation is what a tick reads.
type observation struct {
	l       int64
	started time.Time
	locks   []lockRow
	trigger string // pg_trigger.tgenabled, "" when the trigger is missing
}

func (t *Tracker) tick(ctx context.Context) (int64, error) {
	if t.conn == nil || t.conn.IsClosed() {
		t.state = state{}
		conn, err := t.connect(ctx)
		if err != nil {
			return t.Horizon(), fmt.Errorf("horizon: connect: %w", err)
		}
		t.conn = conn
	}
	if t.Unsafe() != nil || time.Since(t.checked) >= t.checkEvery {
		if _, err := Check(ctx, t.conn, t.events); err != nil {
			// Wrapped as the trigger's state below is: the same reason reads the same.
			return t.Horizon(), t.fail(fmt.Errorf("horizon: %w", err))
		}
		t.checked = time.Now()
	}
	obs, err := t.read(ctx, t.conn)
	if err != nil {
		return t.Horizon(), err
	}
	if err := triggerState(t.events, obs.trigger); err != nil {
		return t.Horizon(), t.fail(fmt.Errorf("horizon: %w", err))
	}
	if !obs.started.Equal(t.started) {
		// A restart the connection survived (a pooler in between): nothing seen before holds.
		t.state, t.started = state{}, obs.started
	}
	next, h, blocker := advance(t.state, t.Horizon(), obs.l, obs.locks, time.Now())
	t.state = next

	t.mu.Lock()
	defer t.mu.Unlock()
	t.blocker = blocker
	t.unsafe = nil
	if h > t.h {
		t.h = h
		close(t.changed)
		t.changed = make(chan struct{})
	}
	return t.h, nil
}

// fail records err as the reason the table is unsafe when it matches ErrNotSafe, and returns it.
func (t *Tracker) fail(err error) error {
	if errors.Is(err, ErrNotSafe) {
		t.mu.Lock()
		t.unsafe = err
		t.mu.Unlock()
	}
	return err
}

// read runs the tick's queries in one round trip, in order, each with a snapshot of its own (READ
// COMMITTED whatever the session's default): L first, then the locks, then the trigger's state.
func (t *Tracker) read(ctx context.Context, conn *pgx.Conn) (observation, error) {
	var obs observation
	batch := &pgx.Batch{}
	batch.Queue(`BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY`)
	batch.Queue(t.lastValueSQL)
	batch.Queue(t.locksSQL, t.keyHi, t.keyLo, t.class)
	batch.Queue(t.triggerSQL, t.events.Quoted())
	batch.Queue(`COMMIT`)
	br := conn.SendBatch(ctx, batch)
	bad := func(what string, err error) (observation, error) {
		_ = br.Close()
		return observation{}, fmt.Errorf("horizon: %s: %w", what, err)
	}
	if _, err := br.Exec(); err != nil {
		return bad("begin", err)
	}
	if err := br.QueryRow().Scan(&obs.l, &obs.started); err != nil {
		return bad("read last position", err)
	}
	rows, err := br.Query()
	if err != nil {
		return bad("read appenders", err)
	}
	for rows.Next() {
		var (
			r     lockRow
			pid   int32
			subid int16
		)
		if err := rows.Scan(&r.vxid, &pid, &subid, &r.low32); err != nil {
			rows.Close()
			return bad("read appenders", err)
		}
		r.pid, r.position = int(pid), subid == 2
		obs.locks = append(obs.locks, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return bad("read appenders", err)
	}
	if err := br.QueryRow().Scan(&obs.trigger); err != nil {
		return bad("read the trigger's state", err)
	}
	if _, err := br.Exec(); err != nil {
		return bad("commit", err)
	}
	if err := br.Close(); err != nil {
		return observation{}, fmt.Errorf("horizon: %w", err)
	}
	return obs, nil
}

// Run ticks every interval until ctx ends. After a Request it ticks every minGap instead, until
// the horizon moves (the waiters are then woken through Changed, and ask again if they still
// wait). Failed ticks are reported to onError and retried every interval; while the table stays
// unsafe for the same reason, that reason is reported once (Unsafe has it). It returns nil when
// ctx ends.
func (t *Tracker) Run(ctx context.Context, interval, minGap time.Duration, onError func(error)) error {
	timer := time.NewTimer(0)
	defer timer.Stop()
	fast := false
	reported := ""
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
			if !errors.Is(err, ErrNotSafe) {
				onError(err)
			} else if msg := err.Error(); msg != reported {
				reported = msg
				onError(err)
			}
		case h != before:
			fast = false
		}
		if err == nil {
			reported = ""
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
