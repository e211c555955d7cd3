// Package checkpoint stores how far each projection (each version, each partition) has got in
// the global log, which runner process owns it, which runner processes are alive, and the events
// projections parked.
//
// A batch is applied as: Load (row locked FOR UPDATE), handle, Save as a compare-and-set from the
// position the batch was read from and on the owner, commit. A worker whose position is stale
// (another worker got there first) or that lost ownership (it was paused, or cut off, and its
// lease was taken over) fails Save with ErrConflict and its transaction rolls back, so no batch is
// ever applied twice (docs/design.md, guarantees G3 and G6). Which units exist and whether they
// may apply at all is the projection's lifecycle record's to say (internal/lifecycle); Save checks
// it in the same compare-and-set.
package checkpoint

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/eventline/eventline"
	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/internal/lifecycle"
	"github.com/eventline/eventline/internal/sqlname"
)

// Errors.
var (
	// ErrConflict: Save found a position other than the batch's starting position, another owner,
	// a failure, or a lifecycle that does not let the unit apply (paused, retired, at its barrier).
	ErrConflict = errors.New("checkpoint: moved, owned by another process, or not applying (compare-and-set failed)")
	// ErrNotFound: no such checkpoint or dead letter.
	ErrNotFound = errors.New("checkpoint: not found")
)

// Key names a checkpoint.
type Key struct {
	Projection string
	Version    int // 1 unless the projection declares another; 0 means 1
	Partitions int // how many partitions the projection is split into; 0 means 1
	Partition  int // 0 to Partitions-1
}

func (k Key) partitions() int {
	if k.Partitions < 1 {
		return 1
	}
	return k.Partitions
}

func (k Key) version() int {
	if k.Version == 0 {
		return 1
	}
	return k.Version
}

// String is "name", "name@2", "name#3/4" or "name@2#3/4": version 1 and the partition of an
// unpartitioned projection are left out.
func (k Key) String() string {
	s := k.Projection
	if v := k.version(); v != 1 {
		s += fmt.Sprintf("@%d", v)
	}
	if p := k.partitions(); p > 1 {
		s += fmt.Sprintf("#%d/%d", k.Partition, p)
	} else if k.Partition != 0 {
		s += fmt.Sprintf("#%d", k.Partition)
	}
	return s
}

// Normalize fills in the defaults (version 1, one partition).
func (k Key) Normalize() Key {
	k.Version, k.Partitions = k.version(), k.partitions()
	return k
}

func (k Key) args() []any { return []any{k.Projection, k.version(), k.partitions(), k.Partition} }

func (k Key) argsWith(more ...any) []any { return append(k.args(), more...) }

// Checkpoint is one row: the run state of one unit (a partition of a version of a projection).
// Whether the unit may apply events at all is the projection's lifecycle record's to say
// (internal/lifecycle).
type Checkpoint struct {
	Key
	Position       int64
	LastError      string
	FailedPosition int64 // position of the event that stopped it; 0 when not stopped
	Owner          string
	LeaseUntil     time.Time
	UpdatedAt      time.Time
}

// Stopped reports whether a handler failure stopped the unit (until resumed).
func (c Checkpoint) Stopped() bool { return c.FailedPosition > 0 }

// Store reads and writes checkpoints. It holds no connection and is safe for concurrent use.
type Store struct {
	table, dead, nodes, projections string
	saveSQL                         string // the compare-and-set, with the progress notification
}

// New returns a Store for the tables names gives (empty names take their defaults). Every save
// notifies names' progress channel (payload: the projection's name) in the transaction that moves
// the checkpoint, so that waiters for read-your-writes wake on commit.
func New(names eventline.Names) (*Store, error) {
	if err := names.Validate(); err != nil {
		return nil, fmt.Errorf("checkpoint: %w", err)
	}
	n := names.WithDefaults()
	quoted := func(name string) string { return sqlname.MustParse(name).Quoted() }
	s := Store{table: quoted(n.CheckpointsTable), dead: quoted(n.DeadLettersTable), nodes: quoted(n.NodesTable),
		projections: quoted(n.ProjectionsTable)}
	// One statement: the compare-and-set, and the progress notification only if it matched (it
	// is sent when the transaction commits).
	s.saveSQL = `WITH saved AS (UPDATE ` + s.table + ` SET position = $6, updated_at = now()` + where + `
		AND position = $5 AND owner = $7 AND failed_position IS NULL AND ` + lifecycle.ApplyCondition(s.projections, "$6") + `
		RETURNING 1)
		SELECT count(*), count(pg_notify(` + quoteLiteral(n.ProgressChannel) + `, $1)) FROM saved`
	return &s, nil
}

const columns = `projection, version, partition, partitions, position, coalesce(last_error, ''),
	coalesce(failed_position, 0), coalesce(owner, ''), coalesce(lease_until, 'epoch'), updated_at`

// where selects one checkpoint by its key: parameters $1 to $4 (Key.args).
const where = ` WHERE projection = $1 AND version = $2 AND partitions = $3 AND partition = $4`

func scan(row pgx.Row) (Checkpoint, error) {
	var c Checkpoint
	var version, part, parts int32
	err := row.Scan(&c.Projection, &version, &part, &parts, &c.Position, &c.LastError, &c.FailedPosition,
		&c.Owner, &c.LeaseUntil, &c.UpdatedAt)
	c.Version, c.Partition, c.Partitions = int(version), int(part), int(parts)
	return c, err
}

// Load reads the checkpoint and locks its row until tx ends.
func (s *Store) Load(ctx context.Context, tx pgx.Tx, key Key) (Checkpoint, error) {
	c, err := scan(tx.QueryRow(ctx, `SELECT `+columns+` FROM `+s.table+where+` FOR UPDATE`, key.args()...))
	if errors.Is(err, pgx.ErrNoRows) {
		return Checkpoint{}, fmt.Errorf("load checkpoint %s: %w", key, ErrNotFound)
	}
	if err != nil {
		return Checkpoint{}, fmt.Errorf("load checkpoint %s: %w", key, err)
	}
	return c, nil
}

// Get reads the checkpoint without locking it.
func (s *Store) Get(ctx context.Context, db eventstore.DBTX, key Key) (Checkpoint, error) {
	c, err := scan(db.QueryRow(ctx, `SELECT `+columns+` FROM `+s.table+where, key.args()...))
	if errors.Is(err, pgx.ErrNoRows) {
		return Checkpoint{}, fmt.Errorf("get checkpoint %s: %w", key, ErrNotFound)
	}
	if err != nil {
		return Checkpoint{}, fmt.Errorf("get checkpoint %s: %w", key, err)
	}
	return c, nil
}

// Save moves the checkpoint from from to to, only if it is still at from, is owned by owner, is
// not stopped, and the projection's lifecycle lets the unit apply up to to (not paused, an active
// or building layout, not beyond the barrier); otherwise it returns ErrConflict and the caller
// must roll back.
func (s *Store) Save(ctx context.Context, tx pgx.Tx, key Key, owner string, from, to int64) error {
	if owner == "" {
		return fmt.Errorf("save checkpoint %s: no owner", key)
	}
	var n, notified int64
	if err := tx.QueryRow(ctx, s.saveSQL, key.argsWith(from, to, owner)...).Scan(&n, &notified); err != nil {
		return fmt.Errorf("save checkpoint %s: %w", key, err)
	}
	if n != 1 {
		return fmt.Errorf("save checkpoint %s from %d to %d: %w", key, from, to, ErrConflict)
	}
	return nil
}

// Applying reports whether unit key, whose row tx holds locked, may apply now: it is owned by
// owner, not stopped, and the projection's lifecycle lets it apply at its position (Save's
// condition, without a move). A dead-letter retry checks it before it runs the handler.
func (s *Store) Applying(ctx context.Context, tx pgx.Tx, key Key, owner string) (bool, error) {
	var ok bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM `+s.table+` cp`+where+` AND owner = $5 AND failed_position IS NULL
		AND `+lifecycle.ApplyCondition(s.projections, "cp.position")+`)`, key.argsWith(owner)...).Scan(&ok); err != nil {
		return false, fmt.Errorf("check checkpoint %s: %w", key, err)
	}
	return ok, nil
}

// quoteLiteral quotes a validated channel name as an SQL string literal.
func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// Projection returns every checkpoint of a projection (all versions and partitions), ordered by
// version and partition. With lock, the rows are locked until tx ends (db must then be a pgx.Tx).
func (s *Store) Projection(ctx context.Context, db eventstore.DBTX, projection string, lock bool) ([]Checkpoint, error) {
	q := `SELECT ` + columns + ` FROM ` + s.table + ` WHERE projection = $1 ORDER BY version, partitions, partition`
	if lock {
		q += ` FOR UPDATE`
	}
	rows, err := db.Query(ctx, q, projection)
	if err != nil {
		return nil, fmt.Errorf("read checkpoints of %s: %w", projection, err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Checkpoint, error) { return scan(r) })
	if err != nil {
		return nil, fmt.Errorf("read checkpoints of %s: %w", projection, err)
	}
	return out, nil
}

// List returns every checkpoint, ordered by projection, version and partition.
func (s *Store) List(ctx context.Context, db eventstore.DBTX) ([]Checkpoint, error) {
	rows, err := db.Query(ctx, `SELECT `+columns+` FROM `+s.table+` ORDER BY projection, version, partitions, partition`)
	if err != nil {
		return nil, fmt.Errorf("list checkpoints: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Checkpoint, error) { return scan(r) })
	if err != nil {
		return nil, fmt.Errorf("list checkpoints: %w", err)
	}
	return out, nil
}

// Stop moves the checkpoint from from to to (the position before the failing event) and marks it
// stopped, because the event at failedPosition failed with errText. Like Save it is a
// compare-and-set on from.
func (s *Store) Stop(ctx context.Context, tx pgx.Tx, key Key, from, to, failedPosition int64, errText string) error {
	tag, err := tx.Exec(ctx, `UPDATE `+s.table+` SET position = $8, last_error = $6,
		failed_position = $7, updated_at = now()`+where+` AND position = $5`,
		key.argsWith(from, errText, failedPosition, to)...)
	if err != nil {
		return fmt.Errorf("stop checkpoint %s: %w", key, err)
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("stop checkpoint %s at %d: %w", key, from, ErrConflict)
	}
	return nil
}

// Claim makes owner the owner of key for lease, if nobody else holds a live lease on it. It
// reports whether owner now owns it. It never waits: a row locked by a batch in flight (of a
// process that may be paused) is skipped, and the claim can be tried again later.
func (s *Store) Claim(ctx context.Context, db eventstore.DBTX, key Key, owner string, lease time.Duration) (bool, error) {
	tag, err := db.Exec(ctx, `UPDATE `+s.table+` SET owner = $5, lease_until = now() + $6 * interval '1 millisecond'
		WHERE (projection, version, partitions, partition) IN (SELECT projection, version, partitions, partition FROM `+s.table+where+`
			AND (owner IS NULL OR owner = $5 OR lease_until < now()) FOR UPDATE SKIP LOCKED)`,
		key.argsWith(owner, lease.Milliseconds())...)
	if err != nil {
		return false, fmt.Errorf("claim %s: %w", key, err)
	}
	return tag.RowsAffected() == 1, nil
}

// Renew extends owner's leases and returns the keys it owns. Rows locked by a batch in flight
// are not waited for: they are still owned (nobody can take them over while locked) and are
// returned too, with their lease renewed next time.
func (s *Store) Renew(ctx context.Context, db eventstore.DBTX, owner string, lease time.Duration) ([]Key, error) {
	rows, err := db.Query(ctx, `WITH renewed AS (
			UPDATE `+s.table+` SET lease_until = now() + $2 * interval '1 millisecond'
			WHERE (projection, version, partitions, partition) IN (SELECT projection, version, partitions, partition
				FROM `+s.table+` WHERE owner = $1 FOR UPDATE SKIP LOCKED)
			RETURNING projection, version, partitions, partition)
		SELECT projection, version, partitions, partition FROM renewed
		UNION
		SELECT projection, version, partitions, partition FROM `+s.table+` WHERE owner = $1`, owner, lease.Milliseconds())
	if err != nil {
		return nil, fmt.Errorf("renew leases of %s: %w", owner, err)
	}
	keys, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Key, error) {
		var k Key
		var v, ps, p int32
		err := r.Scan(&k.Projection, &v, &ps, &p)
		k.Version, k.Partitions, k.Partition = int(v), int(ps), int(p)
		return k, err
	})
	if err != nil {
		return nil, fmt.Errorf("renew leases of %s: %w", owner, err)
	}
	return keys, nil
}

// Release gives up owner's ownership of key (no-op if it does not own it).
func (s *Store) Release(ctx context.Context, db eventstore.DBTX, key Key, owner string) error {
	// A row locked by a batch in flight is skipped, not waited for: the caller tries again later.
	if _, err := db.Exec(ctx, `UPDATE `+s.table+` SET owner = NULL, lease_until = NULL
		WHERE (projection, version, partitions, partition) IN (SELECT projection, version, partitions, partition FROM `+s.table+where+`
			AND owner = $5 FOR UPDATE SKIP LOCKED)`, key.argsWith(owner)...); err != nil {
		return fmt.Errorf("release %s: %w", key, err)
	}
	return nil
}

// DeadLetter is a parked event. Dead letters belong to a version of a projection, not to a
// partition: the owner of the event's aggregate under the current layout retries them.
type DeadLetter struct {
	// ID is the handle that retry and discard take: unique and increasing in the order events
	// were first parked. It is not a count: parking an event again keeps its ID, but an ID drawn
	// by a transaction that then rolled back (a batch whose checkpoint moved meanwhile) is not
	// reused, so IDs may have gaps.
	ID             int64
	Projection     string
	Version        int
	GlobalPosition int64
	EventID        uuid.UUID
	AggregateType  string
	AggregateID    string
	Error          string
	Attempts       int
	RetryRequested bool
	// BlockedBy is the position of an earlier parked event of the same aggregate that this one
	// was parked behind (sequenced dead letters), or 0.
	BlockedBy int64
	CreatedAt time.Time
}

// Park records that the event ev failed for key with errText (attempts counts repeats).
// blockedBy is the position of the earlier parked event of its aggregate it waits behind, or 0.
func (s *Store) Park(ctx context.Context, tx pgx.Tx, key Key, ev *eventstore.PersistedEvent, errText string, blockedBy int64) error {
	var blocked *int64
	if blockedBy > 0 {
		blocked = &blockedBy
	}
	// Update first: an INSERT ... ON CONFLICT draws an ID from the sequence even when it updates,
	// which would leave a gap in the IDs at every repeated failure. The INSERT's ON CONFLICT
	// still covers a concurrent first park of the same event.
	tag, err := tx.Exec(ctx, `UPDATE `+s.dead+` SET error = $4, attempts = attempts + 1, retry_requested = false
		WHERE projection = $1 AND version = $2 AND global_position = $3`,
		key.Projection, key.version(), ev.GlobalPosition, errText)
	if err != nil {
		return fmt.Errorf("park event %d for %s again: %w", ev.GlobalPosition, key, err)
	}
	if tag.RowsAffected() > 0 {
		return nil
	}
	if _, err := tx.Exec(ctx, `INSERT INTO `+s.dead+` (projection, version, global_position, event_id, aggregate_type, aggregate_id, error, blocked_by)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
		ON CONFLICT (projection, version, global_position)
		DO UPDATE SET error = EXCLUDED.error, attempts = `+s.dead+`.attempts + 1, retry_requested = false`,
		key.Projection, key.version(), ev.GlobalPosition, ev.EventID, ev.AggregateType, ev.AggregateID, errText, blocked); err != nil {
		return fmt.Errorf("park event %d for %s: %w", ev.GlobalPosition, key, err)
	}
	return nil
}

const deadColumns = `id, projection, version, global_position, event_id, aggregate_type, aggregate_id, error, attempts,
	retry_requested, coalesce(blocked_by, 0), created_at`

func scanDead(r pgx.CollectableRow) (DeadLetter, error) {
	var d DeadLetter
	var version, attempts int32
	err := r.Scan(&d.ID, &d.Projection, &version, &d.GlobalPosition, &d.EventID, &d.AggregateType, &d.AggregateID,
		&d.Error, &attempts, &d.RetryRequested, &d.BlockedBy, &d.CreatedAt)
	d.Version, d.Attempts = int(version), int(attempts)
	return d, err
}

// queryDead lists the dead letters that match cond, in order, up to limit (an SQL expression:
// "ALL" for no limit).
func (s *Store) queryDead(ctx context.Context, db eventstore.DBTX, what, cond, limit string, args ...any) ([]DeadLetter, error) {
	rows, err := db.Query(ctx, `SELECT `+deadColumns+` FROM `+s.dead+` WHERE `+cond+`
		ORDER BY projection, version, global_position LIMIT `+limit, args...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	out, err := pgx.CollectRows(rows, scanDead)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return out, nil
}

// DeadLetters lists parked events, of one projection or (with "") of all, in position order.
func (s *Store) DeadLetters(ctx context.Context, db eventstore.DBTX, projection string) ([]DeadLetter, error) {
	return s.queryDead(ctx, db, "list dead letters", `$1 = '' OR projection = $1`, "ALL", projection)
}

// FirstDeadLetters is DeadLetters stopping after limit dead letters (a page that shows some of
// many).
func (s *Store) FirstDeadLetters(ctx context.Context, db eventstore.DBTX, projection string, limit int) ([]DeadLetter, error) {
	return s.queryDead(ctx, db, "list dead letters", `$1 = '' OR projection = $1`, "$2", projection, max(0, limit))
}

// VersionDeadLetters lists the parked events of one version of a projection, in position order.
func (s *Store) VersionDeadLetters(ctx context.Context, db eventstore.DBTX, projection string, version int) ([]DeadLetter, error) {
	return s.queryDead(ctx, db, "list dead letters", `projection = $1 AND version = $2`, "ALL", projection, max(1, version))
}

// DeadLetterCount is how many events one version of a projection has parked.
type DeadLetterCount struct {
	Projection string
	Version    int
	Count      int64
}

// CountDeadLetters counts the parked events of every version of every projection that has any,
// ordered by projection and version.
func (s *Store) CountDeadLetters(ctx context.Context, db eventstore.DBTX) ([]DeadLetterCount, error) {
	rows, err := db.Query(ctx, `SELECT projection, version, count(*) FROM `+s.dead+` GROUP BY 1, 2 ORDER BY 1, 2`)
	if err != nil {
		return nil, fmt.Errorf("count dead letters: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (DeadLetterCount, error) {
		var c DeadLetterCount
		var version int32
		err := r.Scan(&c.Projection, &version, &c.Count)
		c.Version = int(version)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("count dead letters: %w", err)
	}
	return out, nil
}

// LockAggregateDeadLetters locks and returns the parked events of one aggregate for one version,
// in position order.
func (s *Store) LockAggregateDeadLetters(ctx context.Context, tx pgx.Tx, projection string, version int, aggType, aggID string) ([]DeadLetter, error) {
	rows, err := tx.Query(ctx, `SELECT `+deadColumns+` FROM `+s.dead+`
		WHERE projection = $1 AND version = $2 AND aggregate_type = $3 AND aggregate_id = $4
		ORDER BY global_position FOR UPDATE`, projection, max(1, version), aggType, aggID)
	if err != nil {
		return nil, fmt.Errorf("lock dead letters of %s/%s: %w", aggType, aggID, err)
	}
	out, err := pgx.CollectRows(rows, scanDead)
	if err != nil {
		return nil, fmt.Errorf("lock dead letters of %s/%s: %w", aggType, aggID, err)
	}
	return out, nil
}

// RequestRetry asks the owner to run the handler on dead letter id again (and, behind it, on the
// later parked events of its aggregate, in order).
func (s *Store) RequestRetry(ctx context.Context, db eventstore.DBTX, id int64) error {
	tag, err := db.Exec(ctx, `UPDATE `+s.dead+` SET retry_requested = true WHERE id = $1`, id)
	if err != nil {
		return fmt.Errorf("request retry of dead letter %d: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("request retry of dead letter %d: %w", id, ErrNotFound)
	}
	return nil
}

// ClearRetryRequests withdraws the retry requests of one aggregate's parked events (after a retry
// that failed again: they wait for a new request).
func (s *Store) ClearRetryRequests(ctx context.Context, tx pgx.Tx, projection string, version int, aggType, aggID string) error {
	if _, err := tx.Exec(ctx, `UPDATE `+s.dead+` SET retry_requested = false
		WHERE projection = $1 AND version = $2 AND aggregate_type = $3 AND aggregate_id = $4 AND retry_requested`,
		projection, max(1, version), aggType, aggID); err != nil {
		return fmt.Errorf("clear retry requests of %s/%s: %w", aggType, aggID, err)
	}
	return nil
}

// DeleteDeadLetter removes a parked event (after a successful retry, or to discard it).
func (s *Store) DeleteDeadLetter(ctx context.Context, db eventstore.DBTX, id int64) error {
	tag, err := db.Exec(ctx, `DELETE FROM `+s.dead+` WHERE id = $1`, id)
	if err != nil {
		return fmt.Errorf("delete dead letter %d: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("delete dead letter %d: %w", id, ErrNotFound)
	}
	return nil
}

// Node is a live runner process.
type Node struct {
	ID          string
	Hostname    string
	PID         int
	Projections []string // name@version of what it has registered
	StartedAt   time.Time
	HeartbeatAt time.Time
	// Status is what the process published with its last heartbeat; nil when it published
	// nothing (a process older than migration 0006).
	Status *NodeStatus
}

// NodeStatus is a runner process's live view, published with each heartbeat (migration 0006):
// the figures only the process knows. It is stored as JSON with these keys.
type NodeStatus struct {
	// Horizon is the process's horizon: every position at or below it is settled.
	Horizon int64 `json:"horizon"`
	// Units are the units this process has workers for (owned or being handed over).
	Units []UnitStatus `json:"units"`
}

// UnitStatus is one unit as the process running it sees it.
type UnitStatus struct {
	Projection string `json:"projection"`
	Version    int    `json:"version"`
	Partitions int    `json:"partitions"`
	Partition  int    `json:"partition"`
	// Owned: the worker runs (this process holds the lease).
	Owned bool `json:"owned"`
	// State is the one-word state (running, stopped, paused, building, waiting, ...).
	State string `json:"state"`
	// Position is the worker's position in memory (it may be ahead of the checkpoint over
	// events its filter skipped).
	Position int64 `json:"position"`
	// EventsPerSecond applied recently.
	EventsPerSecond float64 `json:"events_per_second"`
	// LastError is the last transient error while the worker retries, "" when none.
	LastError string `json:"last_error,omitempty"`
	// WaitingOn is set while the unit is held at a position not settled yet.
	WaitingOn *Waiting `json:"waiting_on,omitempty"`
}

// Key returns the unit's checkpoint key.
func (u UnitStatus) Key() Key {
	return Key{Projection: u.Projection, Version: u.Version, Partitions: u.Partitions, Partition: u.Partition}
}

// Waiting says what a unit held at a hole waits for.
type Waiting struct {
	// Position is the first position the unit cannot pass yet.
	Position int64 `json:"position"`
	// AppenderPID and Transaction identify the open transaction that holds the horizon back
	// (0 and "" when the process does not know it); Since is when the process first saw it.
	AppenderPID int       `json:"appender_pid,omitempty"`
	Transaction string    `json:"transaction,omitempty"`
	Since       time.Time `json:"since,omitzero"`
}

// Heartbeat records that node is alive, what it runs, and its live status.
func (s *Store) Heartbeat(ctx context.Context, db eventstore.DBTX, n Node) error {
	var status []byte
	if n.Status != nil {
		var err error
		if status, err = json.Marshal(n.Status); err != nil {
			return fmt.Errorf("heartbeat of %s: encode status: %w", n.ID, err)
		}
	}
	projections := n.Projections
	if projections == nil {
		projections = []string{} // a process that only runs subscriptions: an empty list, not NULL
	}
	if _, err := db.Exec(ctx, `INSERT INTO `+s.nodes+` (node_id, hostname, pid, projections, status) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (node_id) DO UPDATE SET heartbeat_at = now(), projections = EXCLUDED.projections, status = EXCLUDED.status`,
		n.ID, n.Hostname, n.PID, projections, status); err != nil {
		return fmt.Errorf("heartbeat of %s: %w", n.ID, err)
	}
	return nil
}

// Nodes lists the nodes that sent a heartbeat within alive, ordered by ID. It only reads.
func (s *Store) Nodes(ctx context.Context, db eventstore.DBTX, alive time.Duration) ([]Node, error) {
	rows, err := db.Query(ctx, `SELECT node_id, hostname, pid, projections, started_at, heartbeat_at, status FROM `+s.nodes+`
		WHERE heartbeat_at >= now() - $1 * interval '1 millisecond' ORDER BY node_id`, alive.Milliseconds())
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Node, error) {
		var n Node
		var pid int32
		var status []byte
		if err := r.Scan(&n.ID, &n.Hostname, &pid, &n.Projections, &n.StartedAt, &n.HeartbeatAt, &status); err != nil {
			return n, err
		}
		n.PID = int(pid)
		if status != nil {
			n.Status = new(NodeStatus)
			if err := json.Unmarshal(status, n.Status); err != nil {
				return n, fmt.Errorf("status of node %s: %w", n.ID, err)
			}
		}
		return n, nil
	})
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	return out, nil
}

// ForgetNodes deletes the rows of nodes without a heartbeat for longer than olderThan.
func (s *Store) ForgetNodes(ctx context.Context, db eventstore.DBTX, olderThan time.Duration) error {
	if _, err := db.Exec(ctx, `DELETE FROM `+s.nodes+` WHERE heartbeat_at < now() - $1 * interval '1 millisecond'`,
		olderThan.Milliseconds()); err != nil {
		return fmt.Errorf("forget dead nodes: %w", err)
	}
	return nil
}

// RemoveNode deletes node's row (on graceful shutdown).
func (s *Store) RemoveNode(ctx context.Context, db eventstore.DBTX, id string) error {
	if _, err := db.Exec(ctx, `DELETE FROM `+s.nodes+` WHERE node_id = $1`, id); err != nil {
		return fmt.Errorf("remove node %s: %w", id, err)
	}
	return nil
}
