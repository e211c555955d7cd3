// Package checkpoint stores how far each projection (and each partition of a partitioned
// projection) has got in the global log, and the events it parked.
//
// A batch is applied as: Load (row locked FOR UPDATE), handle, Save as a compare-and-set from the
// position the batch was read from, commit. A worker whose position is stale (another worker got
// there first, or it lost ownership) fails Save with ErrConflict and its transaction rolls back,
// so no batch is ever applied twice (DESIGN.md G3).
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
)

// Errors.
var (
	// ErrConflict: Save found a position other than the batch's starting position.
	ErrConflict = errors.New("checkpoint: position moved (compare-and-set failed)")
	// ErrNotFound: no checkpoint row for the key.
	ErrNotFound = errors.New("checkpoint: not found")
)

// Key names a checkpoint.
type Key struct {
	Projection string
	Partition  int
}

func (k Key) String() string {
	if k.Partition == 0 {
		return k.Projection
	}
	return fmt.Sprintf("%s#%d", k.Projection, k.Partition)
}

// Checkpoint is one row.
type Checkpoint struct {
	Key
	Position       int64
	State          State
	LastError      string
	FailedPosition int64 // position of the event that stopped it; 0 when running
	UpdatedAt      time.Time
}

// Config names the tables; empty names take the migrations defaults.
type Config struct {
	// Table defaults to "eventline_checkpoints".
	Table string
	// DeadLettersTable defaults to "eventline_dead_letters".
	DeadLettersTable string
}

// Store reads and writes checkpoints. It holds no connection and is safe for concurrent use.
type Store struct {
	table, dead string
}

// New validates cfg's names and returns a Store.
func New(cfg Config) (*Store, error) {
	if cfg.Table == "" {
		cfg.Table = migrations.CheckpointsTableDefault
	}
	if cfg.DeadLettersTable == "" {
		cfg.DeadLettersTable = migrations.DeadLettersTableDefault
	}
	t, err := sqlname.Parse("checkpoints table", cfg.Table)
	if err != nil {
		return nil, fmt.Errorf("checkpoint config: %w", err)
	}
	d, err := sqlname.Parse("dead letters table", cfg.DeadLettersTable)
	if err != nil {
		return nil, fmt.Errorf("checkpoint config: %w", err)
	}
	return &Store{table: t.Quoted(), dead: d.Quoted()}, nil
}

const columns = `projection, partition, position, state, coalesce(last_error, ''), coalesce(failed_position, 0), updated_at`

func scan(row pgx.Row) (Checkpoint, error) {
	var c Checkpoint
	var state string
	var part int32
	err := row.Scan(&c.Projection, &part, &c.Position, &state, &c.LastError, &c.FailedPosition, &c.UpdatedAt)
	c.Partition = int(part)
	c.State = State(state)
	return c, err
}

// Ensure creates the checkpoint at position 0 if it does not exist.
func (s *Store) Ensure(ctx context.Context, db eventstore.DBTX, key Key) error {
	if _, err := db.Exec(ctx, `INSERT INTO `+s.table+` (projection, partition) VALUES ($1, $2) ON CONFLICT DO NOTHING`,
		key.Projection, key.Partition); err != nil {
		return fmt.Errorf("create checkpoint %s: %w", key, err)
	}
	return nil
}

// Load reads the checkpoint and locks its row until tx ends.
func (s *Store) Load(ctx context.Context, tx pgx.Tx, key Key) (Checkpoint, error) {
	c, err := scan(tx.QueryRow(ctx, `SELECT `+columns+` FROM `+s.table+` WHERE projection = $1 AND partition = $2 FOR UPDATE`,
		key.Projection, key.Partition))
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
	c, err := scan(db.QueryRow(ctx, `SELECT `+columns+` FROM `+s.table+` WHERE projection = $1 AND partition = $2`,
		key.Projection, key.Partition))
	if errors.Is(err, pgx.ErrNoRows) {
		return Checkpoint{}, fmt.Errorf("get checkpoint %s: %w", key, ErrNotFound)
	}
	if err != nil {
		return Checkpoint{}, fmt.Errorf("get checkpoint %s: %w", key, err)
	}
	return c, nil
}

// Save moves the checkpoint from from to to, only if it is still at from and running; otherwise
// it returns ErrConflict and the caller must roll back.
func (s *Store) Save(ctx context.Context, tx pgx.Tx, key Key, from, to int64) error {
	tag, err := tx.Exec(ctx, `UPDATE `+s.table+` SET position = $4, updated_at = now()
		WHERE projection = $1 AND partition = $2 AND position = $3 AND state = 'running'`,
		key.Projection, key.Partition, from, to)
	if err != nil {
		return fmt.Errorf("save checkpoint %s: %w", key, err)
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("save checkpoint %s from %d to %d: %w", key, from, to, ErrConflict)
	}
	return nil
}

// List returns every checkpoint, ordered by projection and partition.
func (s *Store) List(ctx context.Context, db eventstore.DBTX) ([]Checkpoint, error) {
	rows, err := db.Query(ctx, `SELECT `+columns+` FROM `+s.table+` ORDER BY projection, partition`)
	if err != nil {
		return nil, fmt.Errorf("list checkpoints: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Checkpoint, error) { return scan(r) })
	if err != nil {
		return nil, fmt.Errorf("list checkpoints: %w", err)
	}
	return out, nil
}

// Reset sets the checkpoint to position and running, clearing any error. Use it in the
// transaction that empties the read model.
func (s *Store) Reset(ctx context.Context, db eventstore.DBTX, key Key, position int64) error {
	tag, err := db.Exec(ctx, `UPDATE `+s.table+` SET position = $3, state = 'running', last_error = NULL,
		failed_position = NULL, updated_at = now() WHERE projection = $1 AND partition = $2`,
		key.Projection, key.Partition, position)
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
	tag, err := tx.Exec(ctx, `UPDATE `+s.table+` SET state = 'stopped', position = $6, last_error = $4,
		failed_position = $5, updated_at = now() WHERE projection = $1 AND partition = $2 AND position = $3`,
		key.Projection, key.Partition, from, errText, failedPosition, to)
	if err != nil {
		return fmt.Errorf("stop checkpoint %s: %w", key, err)
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("stop checkpoint %s at %d: %w", key, from, ErrConflict)
	}
	return nil
}

// SetState sets the state (pause, resume); resuming also clears the error.
func (s *Store) SetState(ctx context.Context, db eventstore.DBTX, key Key, state State) error {
	tag, err := db.Exec(ctx, `UPDATE `+s.table+` SET state = $3,
		last_error = CASE WHEN $3 = 'running' THEN NULL ELSE last_error END,
		failed_position = CASE WHEN $3 = 'running' THEN NULL ELSE failed_position END,
		updated_at = now() WHERE projection = $1 AND partition = $2`, key.Projection, key.Partition, string(state))
	if err != nil {
		return fmt.Errorf("set checkpoint %s %s: %w", key, state, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("set checkpoint %s %s: %w", key, state, ErrNotFound)
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
	CreatedAt      time.Time
}

// Park records that the event at ev failed for key with errText (attempts counts repeats).
func (s *Store) Park(ctx context.Context, tx pgx.Tx, key Key, ev eventstore.PersistedEvent, errText string) error {
	if _, err := tx.Exec(ctx, `INSERT INTO `+s.dead+` (projection, partition, global_position, event_id, error)
		VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (projection, partition, global_position)
		DO UPDATE SET error = EXCLUDED.error, attempts = `+s.dead+`.attempts + 1`,
		key.Projection, key.Partition, ev.GlobalPosition, ev.EventID, errText); err != nil {
		return fmt.Errorf("park event %d for %s: %w", ev.GlobalPosition, key, err)
	}
	return nil
}

// DeadLetters lists parked events, of one projection or (with "") of all, oldest first.
func (s *Store) DeadLetters(ctx context.Context, db eventstore.DBTX, projection string) ([]DeadLetter, error) {
	rows, err := db.Query(ctx, `SELECT id, projection, partition, global_position, event_id, error, attempts, created_at
		FROM `+s.dead+` WHERE $1 = '' OR projection = $1 ORDER BY projection, partition, global_position`, projection)
	if err != nil {
		return nil, fmt.Errorf("list dead letters: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (DeadLetter, error) {
		var d DeadLetter
		var part, attempts int32
		err := r.Scan(&d.ID, &d.Key.Projection, &part, &d.GlobalPosition, &d.EventID, &d.Error, &attempts, &d.CreatedAt)
		d.Key.Partition, d.Attempts = int(part), int(attempts)
		return d, err
	})
	if err != nil {
		return nil, fmt.Errorf("list dead letters: %w", err)
	}
	return out, nil
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
