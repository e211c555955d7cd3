// Package checkpoint stores how far each projection (each version, each partition) has got in
// the global log, which runner process owns it, which runner processes are alive, and the events
// projections parked.
//
// A batch is applied as: Load (row locked FOR UPDATE), handle, Save as a compare-and-set from the
// position the batch was read from and on the owner, commit. A worker whose position is stale
// (another worker got there first) or that lost ownership (it was paused, or cut off, and its
// lease was taken over) fails Save with ErrConflict and its transaction rolls back, so no batch is
// ever applied twice (DESIGN.md G3, G6).
package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/internal/sqlname"
	"github.com/eventline/eventline/migrations"
)

// State is a checkpoint's run state.
type State string

const (
	// Running: the projection is applied as events arrive.
	Running State = "running"
	// Stopped: a handler failed under the stop policy; LastError and FailedPosition say why.
	Stopped State = "stopped"
	// Paused: an operator paused it.
	Paused State = "paused"
	// Building: a new version catching up beside the active one.
	Building State = "building"
	// Waiting: a new set of partitions waiting for the old set to drain to its stop position.
	Waiting State = "waiting"
	// Retired: replaced by a newer version; never run again.
	Retired State = "retired"
)

// Applies reports whether a checkpoint in state s takes batches.
func (s State) Applies() bool { return s == Running || s == Building }

// Errors.
var (
	// ErrConflict: Save found a position other than the batch's starting position, another owner,
	// or a state that does not take batches.
	ErrConflict = errors.New("checkpoint: moved, owned by another process, or not running (compare-and-set failed)")
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

// Checkpoint is one row.
type Checkpoint struct {
	Key
	Position         int64
	State            State
	LastError        string
	FailedPosition   int64 // position of the event that stopped it; 0 when running
	Owner            string
	LeaseUntil       time.Time
	RebuildRequested bool
	// StopAt is where this partition stops while the partition count changes (-1: no limit).
	StopAt    int64
	UpdatedAt time.Time
}

// Config names the tables; empty names take the migrations defaults.
type Config struct {
	// Table defaults to "eventline_checkpoints".
	Table string
	// DeadLettersTable defaults to "eventline_dead_letters".
	DeadLettersTable string
	// NodesTable defaults to "eventline_nodes".
	NodesTable string
}

// Store reads and writes checkpoints. It holds no connection and is safe for concurrent use.
type Store struct {
	table, dead, nodes string
}

// New validates cfg's names and returns a Store.
func New(cfg Config) (*Store, error) {
	def := func(s *string, d string) {
		if *s == "" {
			*s = d
		}
	}
	def(&cfg.Table, migrations.CheckpointsTableDefault)
	def(&cfg.DeadLettersTable, migrations.DeadLettersTableDefault)
	def(&cfg.NodesTable, migrations.NodesTableDefault)
	var s Store
	for _, f := range []struct {
		what, val string
		dst       *string
	}{
		{"checkpoints table", cfg.Table, &s.table},
		{"dead letters table", cfg.DeadLettersTable, &s.dead},
		{"nodes table", cfg.NodesTable, &s.nodes},
	} {
		n, err := sqlname.Parse(f.what, f.val)
		if err != nil {
			return nil, fmt.Errorf("checkpoint config: %w", err)
		}
		*f.dst = n.Quoted()
	}
	return &s, nil
}

const columns = `projection, version, partition, partitions, position, state, coalesce(last_error, ''),
	coalesce(failed_position, 0), coalesce(owner, ''), coalesce(lease_until, 'epoch'), rebuild_requested,
	coalesce(stop_at, -1), updated_at`

// where selects one checkpoint by its key: parameters $1 to $4 (Key.args).
const where = ` WHERE projection = $1 AND version = $2 AND partitions = $3 AND partition = $4`

func scan(row pgx.Row) (Checkpoint, error) {
	var c Checkpoint
	var state string
	var version, part, parts int32
	err := row.Scan(&c.Projection, &version, &part, &parts, &c.Position, &state, &c.LastError, &c.FailedPosition,
		&c.Owner, &c.LeaseUntil, &c.RebuildRequested, &c.StopAt, &c.UpdatedAt)
	c.Version, c.Partition, c.Partitions = int(version), int(part), int(parts)
	c.State = State(state)
	return c, err
}

// Ensure creates the checkpoint, at position and in state, if it does not exist.
func (s *Store) Ensure(ctx context.Context, db eventstore.DBTX, key Key, position int64, state State) error {
	if _, err := db.Exec(ctx, `INSERT INTO `+s.table+` (projection, version, partitions, partition, position, state)
		VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING`, key.argsWith(position, string(state))...); err != nil {
		return fmt.Errorf("create checkpoint %s: %w", key, err)
	}
	return nil
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

// Save moves the checkpoint from from to to, only if it is still at from, takes batches, is not
// asked to stop before to, and (when owner is not empty) is owned by owner; otherwise it returns
// ErrConflict and the caller must roll back.
func (s *Store) Save(ctx context.Context, tx pgx.Tx, key Key, owner string, from, to int64) error {
	tag, err := tx.Exec(ctx, `UPDATE `+s.table+` SET position = $6, updated_at = now()`+where+`
		AND position = $5 AND state IN ('running', 'building') AND ($7 = '' OR owner = $7)
		AND (stop_at IS NULL OR $6 <= stop_at)`, key.argsWith(from, to, owner)...)
	if err != nil {
		return fmt.Errorf("save checkpoint %s: %w", key, err)
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("save checkpoint %s from %d to %d: %w", key, from, to, ErrConflict)
	}
	return nil
}

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

// SetVersionState sets the state of every partition of one version of a projection; with
// partitions > 0, only of that set of partitions. Retired checkpoints are left alone.
func (s *Store) SetVersionState(ctx context.Context, db eventstore.DBTX, projection string, version, partitions int, state State) error {
	if _, err := db.Exec(ctx, `UPDATE `+s.table+` SET state = $4, updated_at = now()
		WHERE projection = $1 AND version = $2 AND ($3 = 0 OR partitions = $3) AND state <> 'retired'`,
		projection, max(1, version), partitions, string(state)); err != nil {
		return fmt.Errorf("set %s@%d %s: %w", projection, version, state, err)
	}
	return nil
}

// SetStopAt makes one set of partitions of a projection version stop at position.
func (s *Store) SetStopAt(ctx context.Context, db eventstore.DBTX, projection string, version, partitions int, position int64) error {
	if _, err := db.Exec(ctx, `UPDATE `+s.table+` SET stop_at = $4, updated_at = now()
		WHERE projection = $1 AND version = $2 AND partitions = $3`, projection, max(1, version), partitions, position); err != nil {
		return fmt.Errorf("set stop position of %s@%d/%d: %w", projection, version, partitions, err)
	}
	return nil
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

// Reset sets the checkpoint to position, clearing any error, stop or rebuild request (a building
// version stays building, others become running). Use it in the transaction that empties the
// read model.
func (s *Store) Reset(ctx context.Context, db eventstore.DBTX, key Key, position int64) error {
	tag, err := db.Exec(ctx, `UPDATE `+s.table+` SET position = $5,
		state = CASE WHEN state IN ('building', 'waiting') THEN state ELSE 'running' END,
		last_error = NULL, failed_position = NULL, rebuild_requested = false, updated_at = now()`+where,
		key.argsWith(position)...)
	if err != nil {
		return fmt.Errorf("reset checkpoint %s: %w", key, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("reset checkpoint %s: %w", key, ErrNotFound)
	}
	return nil
}

// Stop moves the checkpoint from from to to (the position before the failing event) and marks it
// stopped, because the event at failedPosition failed with errText. Like Save it is a
// compare-and-set on from.
func (s *Store) Stop(ctx context.Context, tx pgx.Tx, key Key, from, to, failedPosition int64, errText string) error {
	tag, err := tx.Exec(ctx, `UPDATE `+s.table+` SET state = 'stopped', position = $8, last_error = $6,
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

// SetState sets the state of every version and partition of projection that is running, stopped
// or paused (building and retired versions are left alone); resuming also clears the error. It
// returns how many checkpoints changed.
func (s *Store) SetState(ctx context.Context, db eventstore.DBTX, projection string, state State) (int, error) {
	tag, err := db.Exec(ctx, `UPDATE `+s.table+` SET state = $2,
		last_error = CASE WHEN $2 = 'running' THEN NULL ELSE last_error END,
		failed_position = CASE WHEN $2 = 'running' THEN NULL ELSE failed_position END,
		updated_at = now() WHERE projection = $1 AND state IN ('running', 'stopped', 'paused')`, projection, string(state))
	if err != nil {
		return 0, fmt.Errorf("set %s %s: %w", projection, state, err)
	}
	if tag.RowsAffected() == 0 {
		return 0, fmt.Errorf("set %s %s: %w", projection, state, ErrNotFound)
	}
	return int(tag.RowsAffected()), nil
}

// RequestRebuild asks the owners of projection's active checkpoints to reset the read model and
// replay it from 0. It returns how many checkpoints were marked.
func (s *Store) RequestRebuild(ctx context.Context, db eventstore.DBTX, projection string) (int, error) {
	tag, err := db.Exec(ctx, `UPDATE `+s.table+` SET rebuild_requested = true, updated_at = now()
		WHERE projection = $1 AND state IN ('running', 'stopped', 'paused')`, projection)
	if err != nil {
		return 0, fmt.Errorf("request rebuild of %s: %w", projection, err)
	}
	if tag.RowsAffected() == 0 {
		return 0, fmt.Errorf("request rebuild of %s: %w", projection, ErrNotFound)
	}
	return int(tag.RowsAffected()), nil
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
	if _, err := db.Exec(ctx, `UPDATE `+s.table+` SET owner = NULL, lease_until = NULL`+where+` AND owner = $5`,
		key.argsWith(owner)...); err != nil {
		return fmt.Errorf("release %s: %w", key, err)
	}
	return nil
}

// DeadLetter is a parked event.
type DeadLetter struct {
	ID             int64
	Key            Key
	GlobalPosition int64
	EventID        uuid.UUID
	Error          string
	Attempts       int
	RetryRequested bool
	CreatedAt      time.Time
}

// Park records that the event ev failed for key with errText (attempts counts repeats).
func (s *Store) Park(ctx context.Context, tx pgx.Tx, key Key, ev eventstore.PersistedEvent, errText string) error {
	if _, err := tx.Exec(ctx, `INSERT INTO `+s.dead+` (projection, version, partitions, partition, global_position, event_id, error)
		VALUES ($1, $2, $3, $4, $5, $6, $7)
		ON CONFLICT (projection, version, partitions, partition, global_position)
		DO UPDATE SET error = EXCLUDED.error, attempts = `+s.dead+`.attempts + 1, retry_requested = false`,
		key.argsWith(ev.GlobalPosition, ev.EventID, errText)...); err != nil {
		return fmt.Errorf("park event %d for %s: %w", ev.GlobalPosition, key, err)
	}
	return nil
}

const deadColumns = `id, projection, version, partitions, partition, global_position, event_id, error, attempts, retry_requested, created_at`

func scanDead(r pgx.CollectableRow) (DeadLetter, error) {
	var d DeadLetter
	var version, parts, part, attempts int32
	err := r.Scan(&d.ID, &d.Key.Projection, &version, &parts, &part, &d.GlobalPosition, &d.EventID, &d.Error, &attempts, &d.RetryRequested, &d.CreatedAt)
	d.Key.Version, d.Key.Partitions, d.Key.Partition, d.Attempts = int(version), int(parts), int(part), int(attempts)
	return d, err
}

// DeadLetters lists parked events, of one projection or (with "") of all, in position order.
func (s *Store) DeadLetters(ctx context.Context, db eventstore.DBTX, projection string) ([]DeadLetter, error) {
	rows, err := db.Query(ctx, `SELECT `+deadColumns+` FROM `+s.dead+`
		WHERE $1 = '' OR projection = $1 ORDER BY projection, version, partitions, partition, global_position`, projection)
	if err != nil {
		return nil, fmt.Errorf("list dead letters: %w", err)
	}
	out, err := pgx.CollectRows(rows, scanDead)
	if err != nil {
		return nil, fmt.Errorf("list dead letters: %w", err)
	}
	return out, nil
}

// RetryRequested lists the dead letters of key that an operator asked to retry.
func (s *Store) RetryRequested(ctx context.Context, db eventstore.DBTX, key Key) ([]DeadLetter, error) {
	rows, err := db.Query(ctx, `SELECT `+deadColumns+` FROM `+s.dead+`
		WHERE projection = $1 AND version = $2 AND partitions = $3 AND partition = $4 AND retry_requested
		ORDER BY global_position`, key.args()...)
	if err != nil {
		return nil, fmt.Errorf("list dead letters to retry: %w", err)
	}
	out, err := pgx.CollectRows(rows, scanDead)
	if err != nil {
		return nil, fmt.Errorf("list dead letters to retry: %w", err)
	}
	return out, nil
}

// RequestRetry asks the owner to run the handler on dead letter id again.
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
}

// Heartbeat records that node is alive (and what it runs).
func (s *Store) Heartbeat(ctx context.Context, db eventstore.DBTX, n Node) error {
	if _, err := db.Exec(ctx, `INSERT INTO `+s.nodes+` (node_id, hostname, pid, projections) VALUES ($1, $2, $3, $4)
		ON CONFLICT (node_id) DO UPDATE SET heartbeat_at = now(), projections = EXCLUDED.projections`,
		n.ID, n.Hostname, n.PID, n.Projections); err != nil {
		return fmt.Errorf("heartbeat of %s: %w", n.ID, err)
	}
	return nil
}

// Nodes lists the nodes that sent a heartbeat within alive, ordered by ID. It only reads.
func (s *Store) Nodes(ctx context.Context, db eventstore.DBTX, alive time.Duration) ([]Node, error) {
	rows, err := db.Query(ctx, `SELECT node_id, hostname, pid, projections, started_at, heartbeat_at FROM `+s.nodes+`
		WHERE heartbeat_at >= now() - $1 * interval '1 millisecond' ORDER BY node_id`, alive.Milliseconds())
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Node, error) {
		var n Node
		var pid int32
		err := r.Scan(&n.ID, &n.Hostname, &pid, &n.Projections, &n.StartedAt, &n.HeartbeatAt)
		n.PID = int(pid)
		return n, err
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
