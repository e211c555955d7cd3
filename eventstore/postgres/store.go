package postgres

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/eventline/eventline"
	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/internal/sqlname"
)

// Store appends and reads events. It holds no connection: every method runs on the DBTX it is
// given. It is safe for concurrent use.
type Store struct {
	cfg    StoreConfig
	events sqlname.Name
	heads  sqlname.Name

	appendAny, appendExact                  appendShapes
	appendNoStream                          appendStmt
	appendCache                             sync.Map // appendKey -> string
	withHead                                headCache
	headSQL                                 string
	readSQL, rangeSQL, streamSQL, latestSQL string
	partitionSQL                            string
}

// appendStmt is a template of the append statement: [0] for batches of several events, [1] for
// one event; appendSQL renders it. id tells the rendered statements apart in appendCache.
type appendStmt struct {
	id   int
	tmpl [2]string
}

// appendShapes are the statements of the expectations that move an existing head row (Any and
// Exact(n > 0)). fast only updates the head row: it inserts nothing and returns no row when the
// aggregate has no head row (or, for Exact, another version). full also inserts a missing head
// row. fallback is full after a fast statement that found no row, in the same transaction: its
// position lock rule counts the fast statement's insert statement (which inserted nothing).
//
// Append runs fast for Exact(n > 0) (the aggregate has events, so it almost always has a head row)
// and for Any to an aggregate in withHead, else full. A fast statement that finds no row has taken
// the append lock K without a position lock, for a round trip: a horizon tick that sees it then
// bounds the transaction by that tick's L for as long as it lasts (docs/design.md, "The gap
// problem"), so full, not fast, is the statement of a first append.
type appendShapes struct {
	fast, full, fallback appendStmt
}

// headCache is a set of aggregates, by a hash of their type and ID, that had a head row when this
// Store last appended to them. When it is full it starts again; a hash collision or a head row
// that went away (a rolled-back first append) only costs a fallback.
type headCache struct {
	mu   sync.Mutex
	seed maphash.Seed
	set  map[uint64]struct{}
}

// headCacheMax bounds headCache: 65,536 hashes, about 2 MiB.
const headCacheMax = 1 << 16

func (c *headCache) key(aggType, aggID string) uint64 {
	var h maphash.Hash
	h.SetSeed(c.seed)
	h.WriteString(aggType)
	h.WriteByte(0)
	h.WriteString(aggID)
	return h.Sum64()
}

func (c *headCache) has(k uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.set[k]
	return ok
}

// put records whether the aggregate of k has a head row.
func (c *headCache) put(k uint64, head bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case !head:
		delete(c.set, k)
	case c.set == nil || len(c.set) >= headCacheMax:
		c.set = map[uint64]struct{}{k: {}}
	default:
		c.set[k] = struct{}{}
	}
}

var (
	_ eventstore.EventStore            = (*Store)(nil)
	_ eventstore.EventReader           = (*Store)(nil)
	_ eventstore.GlobalPositionReader  = (*Store)(nil)
	_ eventstore.AggregateStreamReader = (*Store)(nil)
)

// New returns a Store for cfg, or cfg's validation error (which names the bad field).
func New(cfg StoreConfig) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.Names = cfg.Names.WithDefaults()
	if cfg.MaxEventSize == 0 {
		cfg.MaxEventSize = MaxEventSizeDefault
	}
	s := &Store{cfg: cfg}
	s.withHead.seed = maphash.MakeSeed()
	s.events = sqlname.MustParse(cfg.Names.EventsTable)
	s.heads = sqlname.MustParse(cfg.Names.AggregateHeadsTable)
	s.buildSQL()
	return s, nil
}

// NewStore is New for configurations that are part of the program: nil means the zero
// StoreConfig, and an invalid cfg panics (with New's error). Use New when names come from outside
// the program (flags, environment).
func NewStore(cfg *StoreConfig) *Store {
	if cfg == nil {
		cfg = &StoreConfig{}
	}
	s, err := New(*cfg)
	if err != nil {
		panic(err)
	}
	return s
}

// Names returns the store's names with their defaults filled in: pass them to migrations.Apply,
// and to anything else that must find the same tables.
func (s *Store) Names() eventline.Names { return s.cfg.Names }

// eventColumns is the column list every read selects, in the order scanEvent expects.
const eventColumns = `global_position, event_id, aggregate_type, aggregate_id, aggregate_version,
	event_type, event_version, payload, metadata, causation_id, correlation_id, trace_id, created_at`

func (s *Store) buildSQL() {
	ev, hd := s.events.Quoted(), s.heads.Quoted()
	// The head CTE yields the aggregate's new version, or no row when the expectation failed, in
	// which case nothing is inserted and no row comes back.
	insert := `, ins AS (
	INSERT INTO ` + ev + ` (event_id, aggregate_type, aggregate_id, aggregate_version, event_type,
		event_version, payload, metadata, causation_id, correlation_id, trace_id, created_at)
	SELECT e.event_id, $1, $2, head.version - $3 + e.ord, e.event_type,
		e.event_version, e.payload, e.metadata::jsonb, NULLIF(e.causation_id, ''),
		NULLIF(e.correlation_id, ''), NULLIF(e.trace_id, ''), e.created_at
	FROM head, {{source}} AS e(event_id, event_type, event_version, payload, metadata, causation_id,
			correlation_id, trace_id, created_at, ord)
	ORDER BY e.ord
	RETURNING global_position, aggregate_version
)
SELECT array_agg(global_position ORDER BY aggregate_version), min(aggregate_version), max(aggregate_version)`
	// The same statement takes the position lock: a shared advisory lock on the low 32 bits of
	// the first position allocated, so the horizon tracker knows this appender holds nothing
	// below it (docs/design.md, "The gap problem"). That is true only when the statement is the
	// first insert of its transaction: the append lock trigger counts them in
	// eventline.event_inserts (migration 0003). After a raw INSERT or COPY, or another Append, in
	// the same transaction, no position lock is taken, and the tracker bounds the transaction by
	// when it first saw it instead.
	class := strconv.FormatInt(int64(sqlname.PositionLockClass(s.events)), 10)
	// count is the number of insert statements the trigger has counted when this one is the
	// transaction's first: 1, or 2 for the fallback after a fast statement (appendShapes).
	positionLock := func(first string, count int) string {
		return `CASE WHEN current_setting('eventline.event_inserts', true) = '` + strconv.Itoa(count) +
			`' THEN pg_advisory_xact_lock_shared(` + class + `, (` + first + ` & 4294967295)::bit(32)::integer)::text END`
	}
	// One event, the most common append: the insert is the statement itself, not a CTE under a
	// SELECT, and its RETURNING list does the rest: without what only several events need (VALUES
	// rows, the sorts of ORDER BY and array_agg, the aggregate), which is a few microseconds less
	// per append on the server. Same parameters as VALUES with one row; $3 is 1. It returns the
	// position instead of an array of them, and the version once.
	insert1 := `
INSERT INTO ` + ev + ` (event_id, aggregate_type, aggregate_id, aggregate_version, event_type,
	event_version, payload, metadata, causation_id, correlation_id, trace_id, created_at)
SELECT $4::uuid, $1, $2, head.version, $5::text, $6::int, $7::bytea, $8::text::jsonb, NULLIF($9::text, ''),
	NULLIF($10::text, ''), NULLIF($11::text, ''), $12::timestamptz
FROM head
RETURNING global_position, aggregate_version, `
	nextID := 0
	withInsert := func(head string, count int) appendStmt {
		multi := head + insert + `, ` + positionLock(`min(global_position)`, count)
		single := head + insert1 + positionLock(`global_position`, count)
		if s.cfg.Names.NotifyChannel != "" {
			multi += `, pg_notify({{channel}}, max(global_position)::text)::text`
			single += `, pg_notify({{channel}}, global_position::text)::text`
		} else {
			multi += `, NULL::text`
			single += `, NULL::text`
		}
		nextID++
		return appendStmt{id: nextID, tmpl: [2]string{multi + ` FROM ins HAVING count(*) > 0`, single}}
	}
	// shapes makes the statements of an expectation from its head row update and the CTE
	// head_inserted that inserts a missing head row. The fast statement is the update alone: the
	// insert's part of the statement costs the server about a tenth of an append (one event per
	// transaction) even when it inserts nothing.
	shapes := func(update, insertHead string) appendShapes {
		full := `WITH head_updated AS (
	` + update + `
)` + insertHead + `, head AS (
	SELECT version FROM head_updated UNION ALL SELECT version FROM head_inserted
)`
		fast := `WITH head AS (
	` + update + `
)`
		return appendShapes{fast: withInsert(fast, 1), full: withInsert(full, 1), fallback: withInsert(full, 2)}
	}
	// Parameters: $1 aggregate type, $2 aggregate ID, $3 event count, then the events ({{source}}),
	// then for Exact {{expected}} the expected version; the notify channel ({{channel}}) comes last.
	//
	// An aggregate without a head row may still have events, written by a raw INSERT that left
	// the heads table alone (docs/design.md, "Raw SQL writers"): its version is then the highest
	// of its events. The head row is inserted from there; only that path reads the events table.
	lastEvent := `(SELECT max(aggregate_version) FROM ` + ev + ` WHERE aggregate_type = $1 AND aggregate_id = $2)`
	// Any: update the head if it exists (the common case, without the cost of a speculative
	// insertion), else insert it; two first appends racing meet in ON CONFLICT and serialize.
	anyUpdate := `UPDATE ` + hd + ` SET version = version + $3 WHERE aggregate_type = $1 AND aggregate_id = $2
	RETURNING version`
	s.appendAny = shapes(anyUpdate, `, head_inserted AS (
	INSERT INTO `+hd+` AS h (aggregate_type, aggregate_id, version)
	SELECT $1, $2, coalesce(`+lastEvent+`, 0) + $3 WHERE NOT EXISTS (SELECT 1 FROM head_updated)
	ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET version = h.version + $3
	RETURNING version
)`)
	s.appendNoStream = withInsert(`WITH head AS (
	INSERT INTO `+hd+` (aggregate_type, aggregate_id, version)
	SELECT $1, $2, $3 WHERE NOT EXISTS (SELECT 1 FROM `+ev+` WHERE aggregate_type = $1 AND aggregate_id = $2)
	ON CONFLICT (aggregate_type, aggregate_id) DO NOTHING
	RETURNING version
)`, 1)
	// Exact: without a head row, insert it when the events' version is the expected one (a CASE,
	// so that a successful update never reads the events table).
	s.appendExact = shapes(`UPDATE `+hd+` SET version = version + $3
	WHERE aggregate_type = $1 AND aggregate_id = $2 AND version = {{expected}}
	RETURNING version`, `, head_inserted AS (
	INSERT INTO `+hd+` (aggregate_type, aggregate_id, version)
	SELECT $1, $2, {{expected}} + $3
	WHERE CASE WHEN EXISTS (SELECT 1 FROM head_updated) THEN false ELSE `+lastEvent+` = {{expected}} END
	ON CONFLICT (aggregate_type, aggregate_id) DO NOTHING
	RETURNING version
)`)
	s.headSQL = `SELECT coalesce((SELECT version FROM ` + hd + ` WHERE aggregate_type = $1 AND aggregate_id = $2), ` +
		lastEvent + `, 0)`
	s.readSQL = `SELECT ` + eventColumns + ` FROM ` + ev + ` WHERE global_position > $1 ORDER BY global_position LIMIT $2`
	s.rangeSQL = `SELECT ` + eventColumns + ` FROM ` + ev + ` WHERE global_position > $1 AND global_position <= $2
	  AND ($3::text[] IS NULL OR aggregate_type = ANY($3))
	  AND ($4::text[] IS NULL OR event_type = ANY($4))
	ORDER BY global_position LIMIT $5`
	s.partitionSQL = `SELECT ` + eventColumns + ` FROM ` + ev + ` WHERE global_position > $1 AND global_position <= $2
	  AND ($3::text[] IS NULL OR aggregate_type = ANY($3))
	  AND ($4::text[] IS NULL OR event_type = ANY($4))
	  AND ` + sqlname.PartitionFunc(s.events) + `(aggregate_id, $6) = $7
	ORDER BY global_position LIMIT $5`
	s.streamSQL = `SELECT ` + eventColumns + ` FROM ` + ev + `
	WHERE aggregate_type = $1 AND aggregate_id = $2
	  AND ($3::bigint IS NULL OR aggregate_version >= $3)
	  AND ($4::bigint IS NULL OR aggregate_version <= $4)
	ORDER BY aggregate_version`
	s.latestSQL = `SELECT coalesce(max(global_position), 0) FROM ` + ev
}

// Append writes events, all of one aggregate, in tx, after checking the aggregate's current
// version against expected (docs/design.md, "The append side"). All events go in one statement
// (rarely two: when the store took the aggregate for one with a head row and it has none). The
// aggregate's head row is locked for the rest of tx, so concurrent appends to it serialize. An
// aggregate without a head row goes on from its highest stored version (events written by raw
// INSERTs that left the heads table alone: docs/design.md, "Raw SQL writers").
//
// It returns eventstore.ErrNoEvents for an empty batch, an error matching
// eventstore.ErrInvalidEvent for a malformed one and one matching eventstore.ErrEventTooLarge for
// an event larger than StoreConfig.MaxEventSize (both before any SQL runs), a
// *eventstore.ConcurrencyError when the version does not match, and an error matching
// eventstore.ErrDuplicateEventID when an event ID is already stored. After an error from the
// database, tx is aborted and must be rolled back. events is not modified; zero event IDs and
// creation times are filled in on a copy, returned by no method (use ReadEvents to see them).
func (s *Store) Append(ctx context.Context, tx eventstore.DBTX, expected eventstore.ExpectedVersion, events []eventstore.Event) (eventstore.AppendResult, error) {
	batch := make([]eventstore.Event, len(events))
	copy(batch, events)
	if err := eventstore.ValidateBatch(batch, time.Now().UTC()); err != nil {
		return eventstore.AppendResult{}, err
	}
	for i := range batch {
		// What PostgreSQL would refuse is refused here, before any SQL, so that the caller's
		// transaction goes on. The metadata counts as stored and read back (jsonb text): 1e5
		// is 100000.
		why, metadataSize := checkEvent(&batch[i])
		if why != "" {
			return eventstore.AppendResult{}, fmt.Errorf("%w: event %d: %s", eventstore.ErrInvalidEvent, i, why)
		}
		if size := len(batch[i].Payload) + metadataSize; size > s.cfg.MaxEventSize {
			ev := &batch[i]
			return eventstore.AppendResult{}, fmt.Errorf("append to %s %q: event %d (%s): %w: %d bytes of payload and metadata, more than the maximum of %d (StoreConfig.MaxEventSize)",
				ev.AggregateType, ev.AggregateID, i, ev.EventType, eventstore.ErrEventTooLarge, size, s.cfg.MaxEventSize)
		}
	}
	n := len(batch)
	aggType, aggID := batch[0].AggregateType, batch[0].AggregateID
	// shapes nil: NoStream, one statement that inserts the head row.
	shapes, exact := &s.appendAny, false
	var expectedVersion int64
	switch {
	case expected.IsNoStream():
		shapes = nil
	default:
		if v, ok := expected.Exact(); ok {
			if v < 0 {
				return eventstore.AppendResult{}, fmt.Errorf("%w: expected version %d is negative", eventstore.ErrInvalidEvent, v)
			}
			shapes, exact, expectedVersion = &s.appendExact, true, v
		}
	}
	callerTrace := ""
	if f := s.cfg.TraceID; f != nil {
		callerTrace = f(ctx)
	}
	// pgtype values, not uuid.UUID or *string: pgx encodes them without reflection or
	// driver.Valuer round trips through strings (a quarter of Append's CPU otherwise).
	metadata := func(ev *eventstore.Event) pgtype.Text {
		if len(ev.Metadata) == 0 {
			return pgtype.Text{}
		}
		return pgtype.Text{String: string(ev.Metadata), Valid: true}
	}
	payload := func(ev *eventstore.Event) []byte {
		if ev.Payload == nil {
			return []byte{}
		}
		return ev.Payload
	}
	trace := func(ev *eventstore.Event) string {
		if ev.TraceID == "" {
			return callerTrace
		}
		return ev.TraceID
	}
	args := make([]any, 0, 5+9*min(n, valuesMax+1))
	args = append(args, aggType, aggID, int64(n))
	if n <= valuesMax {
		// Small batches: one VALUES row per event, like a hand-written multi-row INSERT.
		for i := range batch {
			ev := &batch[i]
			args = append(args, pgtype.UUID{Bytes: ev.EventID, Valid: true}, ev.EventType, int32(ev.EventVersion), payload(ev),
				metadata(ev), ev.CausationID, ev.CorrelationID, trace(ev), ev.CreatedAt)
		}
	} else {
		ids := make([]pgtype.UUID, n)
		types := make([]string, n)
		versions := make([]int32, n)
		payloads := make([][]byte, n)
		metadatas := make([]pgtype.Text, n)
		causation := make([]string, n)
		correlation := make([]string, n)
		traces := make([]string, n)
		created := make([]time.Time, n)
		for i := range batch {
			ev := &batch[i]
			ids[i] = pgtype.UUID{Bytes: ev.EventID, Valid: true}
			types[i] = ev.EventType
			versions[i] = int32(ev.EventVersion)
			payloads[i] = payload(ev)
			metadatas[i] = metadata(ev)
			causation[i] = ev.CausationID
			correlation[i] = ev.CorrelationID
			traces[i] = trace(ev)
			created[i] = ev.CreatedAt
		}
		args = append(args, pgtype.FlatArray[pgtype.UUID](ids), pgtype.FlatArray[string](types),
			pgtype.FlatArray[int32](versions), pgtype.FlatArray[[]byte](payloads), pgtype.FlatArray[pgtype.Text](metadatas),
			pgtype.FlatArray[string](causation), pgtype.FlatArray[string](correlation), pgtype.FlatArray[string](traces),
			pgtype.FlatArray[time.Time](created))
	}
	if exact {
		args = append(args, expectedVersion)
	}
	if s.cfg.Names.NotifyChannel != "" {
		args = append(args, s.cfg.Names.NotifyChannel)
	}

	var (
		positions        []int64
		from, to         int64
		locked, notified *string
	)
	run := func(stmt *appendStmt) error {
		query := s.appendSQL(stmt, exact, n)
		if n > 1 {
			return tx.QueryRow(ctx, query, args...).Scan(&positions, &from, &to, &locked, &notified)
		}
		var position int64
		err := tx.QueryRow(ctx, query, args...).Scan(&position, &from, &locked, &notified)
		positions, to = []int64{position}, from
		return err
	}
	var err error
	headKey := s.withHead.key(aggType, aggID)
	known := s.withHead.has(headKey)
	// conflict reads the aggregate's version after a statement found no row.
	conflict := func() (*eventstore.ConcurrencyError, error) {
		actual, err := s.headVersion(ctx, tx, aggType, aggID)
		if err != nil {
			return nil, fmt.Errorf("append to %s %q: read version after conflict: %w", aggType, aggID, err)
		}
		return &eventstore.ConcurrencyError{AggregateType: aggType, AggregateID: aggID, Expected: expected, Actual: actual}, nil
	}
	switch {
	case shapes == nil:
		err = run(&s.appendNoStream)
	case !exact && !known:
		err = run(&shapes.full)
	default:
		if err = run(&shapes.fast); errors.Is(err, pgx.ErrNoRows) {
			// No row. For Exact, most often another version: a conflict, answered from the version
			// alone. Else no head row (events written without one, or a head row gone): the
			// fallback inserts it (or, racing another append, finds no row either).
			if exact {
				ce, err := conflict()
				if err != nil {
					return eventstore.AppendResult{}, err
				}
				if ce.Actual != expectedVersion {
					return eventstore.AppendResult{}, ce
				}
			} else if known {
				s.withHead.put(headKey, false)
				known = false
			}
			err = run(&shapes.fallback)
		}
	}
	switch {
	case err == nil:
		if !known {
			s.withHead.put(headKey, true)
		}
		return eventstore.NewAppendResult(from, to, positions), nil
	case errors.Is(err, pgx.ErrNoRows):
		ce, err := conflict()
		if err != nil {
			return eventstore.AppendResult{}, err
		}
		return eventstore.AppendResult{}, ce
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == uniqueViolation {
		if isDuplicateEventID(pgErr) {
			return eventstore.AppendResult{}, fmt.Errorf("append to %s %q: %w: %s", aggType, aggID, eventstore.ErrDuplicateEventID, pgErr.Detail)
		}
		if strings.Contains(pgErr.Detail, "(aggregate_type, aggregate_id, aggregate_version)") {
			// The head row said one thing and the events another: rows were written around Append
			// by a writer that did not move the head row (docs/design.md, "Raw SQL writers").
			return eventstore.AppendResult{}, fmt.Errorf("%w (the aggregate's row in %s is behind its events: they were inserted without moving it)",
				&eventstore.ConcurrencyError{AggregateType: aggType, AggregateID: aggID, Expected: expected, Actual: -1}, s.heads)
		}
	}
	return eventstore.AppendResult{}, fmt.Errorf("append to %s %q: %w", aggType, aggID, err)
}

// valuesMax is the largest batch sent as multi-row VALUES; larger ones go as arrays (unnest).
const valuesMax = 32

type appendKey struct{ id, n int }

// appendSQL renders an append statement for a batch of n events: the events' source (VALUES rows
// or unnest of arrays) and the numbers of the parameters that follow them (exact: the expected
// version comes before the channel).
func (s *Store) appendSQL(stmt *appendStmt, exact bool, n int) string {
	key := appendKey{stmt.id, min(n, valuesMax+1)}
	if q, ok := s.appendCache.Load(key); ok {
		return q.(string)
	}
	tmpl := stmt.tmpl[0]
	if n == 1 {
		tmpl = stmt.tmpl[1] // no {{source}}: its event's parameters are $4 to $12, as below
	}
	var source string
	next := 4
	if n <= valuesMax {
		var b strings.Builder
		b.WriteString("(VALUES ")
		for i := 0; i < n; i++ {
			if i > 0 {
				b.WriteString(", ")
			}
			p := 4 + 9*i
			fmt.Fprintf(&b, "($%d::uuid, $%d::text, $%d::int, $%d::bytea, $%d::text, $%d::text, $%d::text, $%d::text, $%d::timestamptz, %d)",
				p, p+1, p+2, p+3, p+4, p+5, p+6, p+7, p+8, i+1)
		}
		b.WriteString(")")
		source, next = b.String(), 4+9*n
	} else {
		source = `unnest($4::uuid[], $5::text[], $6::int[], $7::bytea[], $8::text[], $9::text[], $10::text[], $11::text[], $12::timestamptz[]) WITH ORDINALITY`
		next = 13
	}
	expected, channel := "", fmt.Sprintf("$%d", next)
	if exact {
		expected, channel = fmt.Sprintf("$%d", next), fmt.Sprintf("$%d", next+1)
	}
	q := strings.NewReplacer("{{source}}", source, "{{expected}}", expected, "{{channel}}", channel).Replace(tmpl)
	s.appendCache.Store(key, q)
	return q
}

func (s *Store) headVersion(ctx context.Context, tx eventstore.DBTX, aggType, aggID string) (int64, error) {
	var v int64
	err := tx.QueryRow(ctx, s.headSQL, aggType, aggID).Scan(&v)
	return v, err
}

// ReadEvents returns up to limit events with a global position above fromPosition, in position
// order, as tx sees them. Positions of transactions still in flight are missing from the result
// and may appear later; package runner reads safely around that.
func (s *Store) ReadEvents(ctx context.Context, tx eventstore.DBTX, fromPosition int64, limit int) ([]eventstore.PersistedEvent, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("read events: limit must be positive, got %d", limit)
	}
	rows, err := tx.Query(ctx, s.readSQL, fromPosition, limit)
	if err != nil {
		return nil, fmt.Errorf("read events after %d: %w", fromPosition, err)
	}
	out, err := scanEvents(rows, limit)
	if err != nil {
		return nil, fmt.Errorf("read events after %d: %w", fromPosition, err)
	}
	return out, nil
}

// PageQuery asks ReadPage for a page of events.
type PageQuery struct {
	// From: events with a global position above it.
	From int64
	// To, when positive: events at or below it.
	To int64
	// Limit is the most events returned; it must be positive.
	Limit int
	// MaxBytes bounds the page's size: the lengths of its events' payloads and metadata. The page
	// ends before the event that would pass it, except that it always holds its first event,
	// whatever that event's size. 0 or less: no bound.
	MaxBytes int
	// AggregateTypes and EventTypes, when not nil, keep only the events of those types (in SQL).
	AggregateTypes, EventTypes []string
	// Partitions, when above 1, keeps only the events of partition Partition: those whose
	// aggregate ID has projector.PartitionOf(aggregateID, Partitions) == Partition (in SQL, as
	// ReadPartitionBetween). It needs To.
	Partitions, Partition int
}

// ReadPage returns the events q asks for, in position order, as tx sees them, and whether
// MaxBytes cut the page short: then more events follow its last one even when it holds fewer
// than q.Limit. The bound is applied as the rows arrive: an event beyond it is not kept, and the
// rest of the query's rows are read and dropped, so ask for a Limit that the bound will seldom
// cut (package runner adapts it to the sizes it sees).
func (s *Store) ReadPage(ctx context.Context, tx eventstore.DBTX, q PageQuery) (events []eventstore.PersistedEvent, cut bool, err error) {
	if q.Limit <= 0 {
		return nil, false, fmt.Errorf("read page: limit must be positive, got %d", q.Limit)
	}
	to := q.To
	if to <= 0 {
		to = math.MaxInt64
	}
	var rows pgx.Rows
	switch {
	case q.Partitions > 1:
		rows, err = tx.Query(ctx, s.partitionSQL, q.From, to, q.AggregateTypes, q.EventTypes, q.Limit, q.Partitions, q.Partition)
	case q.To > 0 || q.AggregateTypes != nil || q.EventTypes != nil:
		rows, err = tx.Query(ctx, s.rangeSQL, q.From, to, q.AggregateTypes, q.EventTypes, q.Limit)
	default:
		rows, err = tx.Query(ctx, s.readSQL, q.From, q.Limit)
	}
	if err != nil {
		return nil, false, fmt.Errorf("read page after %d: %w", q.From, err)
	}
	events, cut, err = scanEventsBounded(rows, q.Limit, q.MaxBytes)
	if err != nil {
		return nil, false, fmt.Errorf("read page after %d: %w", q.From, err)
	}
	return events, cut, nil
}

// ReadAggregateStream returns one aggregate's events with fromVersion <= version <= toVersion
// (nil bounds are open), in version order.
func (s *Store) ReadAggregateStream(ctx context.Context, tx eventstore.DBTX, aggregateType, aggregateID string, fromVersion, toVersion *int64) (eventstore.Stream, error) {
	rows, err := tx.Query(ctx, s.streamSQL, aggregateType, aggregateID, fromVersion, toVersion)
	if err != nil {
		return eventstore.Stream{}, fmt.Errorf("read stream %s %q: %w", aggregateType, aggregateID, err)
	}
	events, err := scanEvents(rows, 0)
	if err != nil {
		return eventstore.Stream{}, fmt.Errorf("read stream %s %q: %w", aggregateType, aggregateID, err)
	}
	return eventstore.Stream{AggregateType: aggregateType, AggregateID: aggregateID, Events: events}, nil
}

// GetLatestGlobalPosition returns the highest global position tx can see, or 0 for an empty store.
func (s *Store) GetLatestGlobalPosition(ctx context.Context, tx eventstore.DBTX) (int64, error) {
	var pos int64
	if err := tx.QueryRow(ctx, s.latestSQL).Scan(&pos); err != nil {
		return 0, fmt.Errorf("read latest global position: %w", err)
	}
	return pos, nil
}

// ReadEventsBetween returns the events with fromPosition < global position <= toPosition, in
// position order, as tx sees them: at most limit (no limit when limit <= 0), and only those of
// the given aggregate and event types (nil: any). The filters run in SQL.
func (s *Store) ReadEventsBetween(ctx context.Context, tx eventstore.DBTX, fromPosition, toPosition int64, limit int,
	aggregateTypes, eventTypes []string) ([]eventstore.PersistedEvent, error) {
	var lim any
	if limit > 0 {
		lim = limit
	}
	rows, err := tx.Query(ctx, s.rangeSQL, fromPosition, toPosition, aggregateTypes, eventTypes, lim)
	if err != nil {
		return nil, fmt.Errorf("read events (%d, %d]: %w", fromPosition, toPosition, err)
	}
	out, err := scanEvents(rows, max(0, limit))
	if err != nil {
		return nil, fmt.Errorf("read events (%d, %d]: %w", fromPosition, toPosition, err)
	}
	return out, nil
}

// ReadPartitionBetween is ReadEventsBetween for the events of one partition: those whose
// aggregate ID has projector.PartitionOf(aggregateID, partitions) == partition, selected in SQL by
// the function of migration 0007 (docs/design.md, "Partitions in SQL"), so that only they are
// sent.
func (s *Store) ReadPartitionBetween(ctx context.Context, tx eventstore.DBTX, fromPosition, toPosition int64, limit int,
	aggregateTypes, eventTypes []string, partitions, partition int) ([]eventstore.PersistedEvent, error) {
	var lim any
	if limit > 0 {
		lim = limit
	}
	rows, err := tx.Query(ctx, s.partitionSQL, fromPosition, toPosition, aggregateTypes, eventTypes, lim, partitions, partition)
	if err != nil {
		return nil, fmt.Errorf("read partition %d/%d (%d, %d]: %w", partition, partitions, fromPosition, toPosition, err)
	}
	out, err := scanEvents(rows, max(0, limit))
	if err != nil {
		return nil, fmt.Errorf("read partition %d/%d (%d, %d]: %w", partition, partitions, fromPosition, toPosition, err)
	}
	return out, nil
}

// scanEvents reads rows selected with eventColumns and closes them. sizeHint preallocates the
// result.
func scanEvents(rows pgx.Rows, sizeHint int) ([]eventstore.PersistedEvent, error) {
	evs, _, err := scanEventsBounded(rows, sizeHint, 0)
	return evs, err
}

// scanEventsBounded is scanEvents that stops before the event whose payload and metadata would
// take the events' total past maxBytes (when positive), but never before the first; cut says
// that it stopped so.
func scanEventsBounded(rows pgx.Rows, sizeHint, maxBytes int) (_ []eventstore.PersistedEvent, cut bool, _ error) {
	defer rows.Close()
	total := 0
	// The hint is the caller's limit, which may be far more than the rows there are (a limit
	// meaning "all"): preallocate for a bounded number of events, append grows the rest.
	out := make([]eventstore.PersistedEvent, 0, min(sizeHint, scanPreallocMax))
	var causation, correlation, trace *string
	var metadata []byte
	// The event ID is scanned as 16 bytes (a uuid.UUID would go through its text form), and the
	// aggregate and event types, which repeat, are read in place and shared between events.
	var id pgtype.UUID
	var aggregateType, eventType pgtype.DriverBytes
	var types interner
	// One event and one list of scan targets for every row: a variable declared in the loop, or
	// a list built per Scan call, would be a heap allocation per row.
	var ev eventstore.PersistedEvent
	var version int32
	targets := []any{&ev.GlobalPosition, &id, &aggregateType, &ev.AggregateID,
		&ev.AggregateVersion, &eventType, &version, &ev.Payload, &metadata,
		&causation, &correlation, &trace, &ev.CreatedAt}
	for rows.Next() {
		ev = eventstore.PersistedEvent{}
		metadata = nil
		if err := rows.Scan(targets...); err != nil {
			return nil, false, err
		}
		if maxBytes > 0 {
			total += len(ev.Payload) + len(metadata)
			if total > maxBytes && len(out) > 0 {
				// Close reads the rest of the rows and drops them.
				return out, true, nil
			}
		}
		ev.EventID = id.Bytes
		ev.AggregateType = types.get(aggregateType)
		ev.EventType = types.get(eventType)
		ev.EventVersion = int(version)
		if metadata != nil {
			ev.Metadata = metadata
		}
		ev.CausationID = deref(causation)
		ev.CorrelationID = deref(correlation)
		ev.TraceID = deref(trace)
		out = append(out, ev)
	}
	return out, false, rows.Err()
}

// scanPreallocMax bounds the events scanEventsBounded preallocates room for (about 200 bytes
// each).
const scanPreallocMax = 1024

// interner returns one string per distinct value, for the few values that repeat across events.
type interner map[string]string

// internMax bounds an interner: beyond it, values are copied as they come.
const internMax = 256

func (m *interner) get(b []byte) string {
	if s, ok := (*m)[string(b)]; ok {
		return s
	}
	s := string(b)
	if *m == nil {
		*m = make(interner)
	}
	if len(*m) < internMax {
		(*m)[s] = s
	}
	return s
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

const uniqueViolation = "23505"
