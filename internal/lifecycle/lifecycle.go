// Package lifecycle is the projection lifecycle of docs/design.md ("Projection lifecycle"): the
// per-projection record and every transition that changes it, each taken in one transaction under
// the record's row lock, with its preconditions checked there.
//
// The record keeps each dimension in its own column:
//   - the deploy role of layouts: the active layout (version, partition count) and at most one
//     target being brought in, by a build (a newer version replays from 0 beside the active one)
//     or a switch (the active layout drains to a barrier, the target starts from it);
//   - the operator's intent: paused, rebuild requests;
//   - facts about the active version's code (detached, resettable), so that the CLI can refuse
//     what cannot be carried out.
//
// The per-unit run state (position, failure, owner, lease) stays in the checkpoint rows. Whether a
// unit may apply events follows from the record alone (Record.Limit), and the checkpoint's
// compare-and-set checks the same condition in SQL (ApplyCondition), so a unit that lost its role
// (retired, paused, beyond the barrier) cannot commit a batch even if its process has not noticed.
//
// Lock order: a transition locks the record, then checkpoint rows; a batch locks only its
// checkpoint row. Nothing locks a record while holding a checkpoint row, so they cannot deadlock.
package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/eventline/eventline"
	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/internal/sqlname"
)

// Errors of refused transitions. The CLI prints them and exits 1.
var (
	ErrNotFound = errors.New("no such projection (no runner has registered it yet)")
	// ErrDetachedRebuild: a detached handler is not rebuilt, since that would repeat its side
	// effects for the whole history.
	ErrDetachedRebuild = errors.New("detached handlers are not rebuilt (it would repeat their side effects)")
	// ErrNotResettable: the projection has no Reset, so a replay would apply every event a second
	// time onto the read model.
	ErrNotResettable = errors.New("the projection cannot be rebuilt: it has no Reset to empty its read model (implement projector.Resetter, or Router.WithReset)")
	// ErrWrongVersion: the operation needs the code of a version this process does not have.
	ErrWrongVersion = errors.New("this process does not run the version the operation needs")
)

// Layout is one version of a projection split into a number of partitions.
type Layout struct {
	Version, Partitions int
}

func (l Layout) String() string { return fmt.Sprintf("v%d/%d", l.Version, l.Partitions) }

// Mode is how a target layout comes in.
type Mode string

const (
	// Build: a newer version replays from position 0 beside the active one and takes over once
	// it has caught up (projections, and detached handlers registered to replay history).
	Build Mode = "build"
	// Switch: the active layout drains to the barrier, then the target starts from it (a new
	// partition count, or a new version of a detached handler).
	Switch Mode = "switch"
)

// Role is what a layout is to its projection.
type Role string

const (
	Active   Role = "active"   // serves
	Building Role = "building" // target of a build: applies beside the active layout
	Waiting  Role = "waiting"  // target of a switch: waits for the active layout to reach the barrier
	Retired  Role = "retired"  // an older version: never applies again
	Standby  Role = "standby"  // a layout the projection does not run (superseded, or not deployed)
)

// Record is the lifecycle record of one projection.
type Record struct {
	Projection string
	Active     Layout
	Target     Layout // zero when no change is in progress
	Mode       Mode   // "" when no change is in progress
	Barrier    int64  // -1 when none: the active layout applies nothing beyond it
	Paused     bool
	// RebuildRequested counts rebuild requests, Rebuilds the rebuilds carried out.
	RebuildRequested, Rebuilds int64
	// Detached and Resettable describe the active version's code.
	Detached, Resettable bool
	// LastError says why the last projection-wide request could not be carried out.
	LastError string
	UpdatedAt time.Time
}

// HasTarget reports whether a change of layout is in progress.
func (r Record) HasTarget() bool { return r.Target.Version > 0 }

// RebuildPending reports whether a rebuild was requested and not yet carried out.
func (r Record) RebuildPending() bool { return r.RebuildRequested > r.Rebuilds }

// Role returns what layout l is to the projection.
func (r Record) Role(l Layout) Role {
	switch {
	case l == r.Active:
		return Active
	case r.HasTarget() && l == r.Target && r.Mode == Build:
		return Building
	case r.HasTarget() && l == r.Target:
		return Waiting
	case l.Version < r.Active.Version:
		return Retired
	default:
		return Standby
	}
}

// Limit reports whether a unit of layout l may apply events now and, if so, up to which position
// (-1: no limit). ApplyCondition is the same rule in SQL.
func (r Record) Limit(l Layout) (limit int64, ok bool) {
	if r.Paused {
		return 0, false
	}
	switch r.Role(l) {
	case Active:
		return r.Barrier, true
	case Building:
		return -1, true
	}
	return 0, false
}

// Units returns the layouts whose checkpoint rows exist: the active one and the target.
func (r Record) Units() []Layout {
	if r.HasTarget() {
		return []Layout{r.Active, r.Target}
	}
	return []Layout{r.Active}
}

// ApplyCondition is Record.Limit in SQL, for the checkpoint's compare-and-set: true when the unit
// of projection $1, version $2, partitions $3 may move to position to (an SQL expression) now.
func ApplyCondition(projections, to string) string {
	return `EXISTS (SELECT 1 FROM ` + projections + ` lc WHERE lc.projection = $1 AND NOT lc.paused AND (
		(lc.active_version = $2 AND lc.active_partitions = $3 AND (lc.barrier IS NULL OR ` + to + ` <= lc.barrier))
		OR (lc.target_mode = 'build' AND lc.target_version = $2 AND lc.target_partitions = $3)))`
}

// Code is what a process's registration says about the code it runs for a projection.
type Code struct {
	Layout // the version, and the partition count the code declares
	// Detached: a detached handler. Resettable: the projection can empty its read model.
	// Replay: a new version of a detached handler replays the history.
	Detached, Resettable, Replay bool
	// Start is where the first deploy of the projection starts (0: the beginning); later versions
	// and partition counts do not use it.
	Start int64
}

// Store reads and changes lifecycle records. It holds no connection and is safe for concurrent
// use.
type Store struct {
	p, cp, dl string // quoted table names
}

// New returns a Store for the tables names gives (empty names take their defaults); names must
// be valid (eventline.Names.Validate), as checkpoint.New checks.
func New(names eventline.Names) *Store {
	n := names.WithDefaults()
	quoted := func(name string) string { return sqlname.MustParse(name).Quoted() }
	return &Store{p: quoted(n.ProjectionsTable), cp: quoted(n.CheckpointsTable), dl: quoted(n.DeadLettersTable)}
}

const recordColumns = `projection, active_version, active_partitions, coalesce(target_version, 0),
	coalesce(target_partitions, 0), coalesce(target_mode, ''), coalesce(barrier, -1), paused, rebuild_requested,
	rebuilds, detached, resettable, coalesce(last_error, ''), updated_at`

func scanRecord(row pgx.Row) (Record, error) {
	var r Record
	var av, ap, tv, tp int32
	var mode string
	err := row.Scan(&r.Projection, &av, &ap, &tv, &tp, &mode, &r.Barrier, &r.Paused, &r.RebuildRequested,
		&r.Rebuilds, &r.Detached, &r.Resettable, &r.LastError, &r.UpdatedAt)
	r.Active, r.Target, r.Mode = Layout{int(av), int(ap)}, Layout{int(tv), int(tp)}, Mode(mode)
	return r, err
}

// Get reads a record without locking it.
func (s *Store) Get(ctx context.Context, db eventstore.DBTX, name string) (Record, error) {
	r, err := scanRecord(db.QueryRow(ctx, `SELECT `+recordColumns+` FROM `+s.p+` WHERE projection = $1`, name))
	if errors.Is(err, pgx.ErrNoRows) {
		return Record{}, fmt.Errorf("projection %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return Record{}, fmt.Errorf("read projection %q: %w", name, err)
	}
	return r, nil
}

// List reads every record (of the named projections; all with none), ordered by name.
func (s *Store) List(ctx context.Context, db eventstore.DBTX, names ...string) ([]Record, error) {
	rows, err := db.Query(ctx, `SELECT `+recordColumns+` FROM `+s.p+`
		WHERE coalesce(cardinality($1::text[]), 0) = 0 OR projection = ANY($1) ORDER BY projection`, names)
	if err != nil {
		return nil, fmt.Errorf("list projections: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Record, error) { return scanRecord(r) })
	if err != nil {
		return nil, fmt.Errorf("list projections: %w", err)
	}
	return out, nil
}

// lock reads the record and locks it until tx ends. ok is false when there is none.
func (s *Store) lock(ctx context.Context, tx pgx.Tx, name string) (r Record, ok bool, err error) {
	r, err = scanRecord(tx.QueryRow(ctx, `SELECT `+recordColumns+` FROM `+s.p+` WHERE projection = $1 FOR UPDATE`, name))
	if errors.Is(err, pgx.ErrNoRows) {
		return Record{}, false, nil
	}
	if err != nil {
		return Record{}, false, fmt.Errorf("lock projection %q: %w", name, err)
	}
	return r, true, nil
}

func (s *Store) mustLock(ctx context.Context, tx pgx.Tx, name string) (Record, error) {
	r, ok, err := s.lock(ctx, tx, name)
	if err == nil && !ok {
		err = fmt.Errorf("projection %q: %w", name, ErrNotFound)
	}
	return r, err
}

// save writes every column of r.
func (s *Store) save(ctx context.Context, tx pgx.Tx, r Record) error {
	var tv, tp *int
	var mode *string
	if r.HasTarget() {
		tv, tp, mode = &r.Target.Version, &r.Target.Partitions, (*string)(&r.Mode)
	}
	var barrier *int64
	if r.Barrier >= 0 {
		barrier = &r.Barrier
	}
	var lastErr *string
	if r.LastError != "" {
		lastErr = &r.LastError
	}
	if _, err := tx.Exec(ctx, `UPDATE `+s.p+` SET active_version = $2, active_partitions = $3, target_version = $4,
		target_partitions = $5, target_mode = $6, barrier = $7, paused = $8, rebuild_requested = $9, rebuilds = $10,
		detached = $11, resettable = $12, last_error = $13, updated_at = now() WHERE projection = $1`,
		r.Projection, r.Active.Version, r.Active.Partitions, tv, tp, mode, barrier, r.Paused, r.RebuildRequested,
		r.Rebuilds, r.Detached, r.Resettable, lastErr); err != nil {
		return fmt.Errorf("save projection %q: %w", r.Projection, err)
	}
	return nil
}

// createRows creates the checkpoint rows of layout l at position.
func (s *Store) createRows(ctx context.Context, tx pgx.Tx, name string, l Layout, position int64) error {
	if _, err := tx.Exec(ctx, `INSERT INTO `+s.cp+` (projection, version, partitions, partition, position)
		SELECT $1, $2, $3, p, $4 FROM generate_series(0, $3 - 1) p ON CONFLICT DO NOTHING`,
		name, l.Version, l.Partitions, position); err != nil {
		return fmt.Errorf("create checkpoints of %s %s: %w", name, l, err)
	}
	return nil
}

// deleteRows deletes the checkpoint rows of layout l.
func (s *Store) deleteRows(ctx context.Context, tx pgx.Tx, name string, l Layout) error {
	if _, err := tx.Exec(ctx, `DELETE FROM `+s.cp+` WHERE projection = $1 AND version = $2 AND partitions = $3`,
		name, l.Version, l.Partitions); err != nil {
		return fmt.Errorf("delete checkpoints of %s %s: %w", name, l, err)
	}
	return nil
}

// deleteDeadLetters deletes the dead letters of a version of a projection; what says whose, for
// the error.
func (s *Store) deleteDeadLetters(ctx context.Context, tx pgx.Tx, name string, version int, what string) error {
	if _, err := tx.Exec(ctx, `DELETE FROM `+s.dl+` WHERE projection = $1 AND version = $2`, name, version); err != nil {
		return fmt.Errorf("delete dead letters of %s %s: %w", name, what, err)
	}
	return nil
}

// lockPositions locks the checkpoint rows of layout l (waiting for batches in flight) and
// returns their positions.
func (s *Store) lockPositions(ctx context.Context, tx pgx.Tx, name string, l Layout) ([]int64, error) {
	rows, err := tx.Query(ctx, `SELECT position FROM `+s.cp+` WHERE projection = $1 AND version = $2 AND partitions = $3
		ORDER BY partition FOR UPDATE`, name, l.Version, l.Partitions)
	if err != nil {
		return nil, fmt.Errorf("lock checkpoints of %s %s: %w", name, l, err)
	}
	pos, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("lock checkpoints of %s %s: %w", name, l, err)
	}
	return pos, nil
}

// clearTarget cancels the change in progress: its rows go, and the barrier with it.
func (s *Store) clearTarget(ctx context.Context, tx pgx.Tx, r *Record) error {
	if !r.HasTarget() {
		return nil
	}
	if err := s.deleteRows(ctx, tx, r.Projection, r.Target); err != nil {
		return err
	}
	if r.Target.Version != r.Active.Version {
		// A superseded version never runs again: nothing would retry its dead letters.
		if err := s.deleteDeadLetters(ctx, tx, r.Projection, r.Target.Version, "superseded "+r.Target.String()); err != nil {
			return err
		}
	}
	r.Target, r.Mode, r.Barrier = Layout{}, "", -1
	return nil
}

// startSwitch makes l the target of a switch: the active layout drains to the highest of its
// positions (its rows are locked first, so no batch can move past it), and l starts from there.
func (s *Store) startSwitch(ctx context.Context, tx pgx.Tx, r *Record, l Layout) error {
	pos, err := s.lockPositions(ctx, tx, r.Projection, r.Active)
	if err != nil {
		return err
	}
	barrier := int64(0)
	for _, p := range pos {
		barrier = max(barrier, p)
	}
	r.Target, r.Mode, r.Barrier = l, Switch, barrier
	return s.createRows(ctx, tx, r.Projection, l, barrier)
}

// unanimous returns the partition count every live process of a version declares, or 0 when
// they disagree.
func unanimous(declared []int) int {
	if len(declared) == 0 {
		return 0
	}
	for _, d := range declared[1:] {
		if d != declared[0] {
			return 0
		}
	}
	return declared[0]
}

// Deploy is the deploy transition, taken by a process that runs code for the projection, at
// start and again whenever the live processes change. declared lists the partition counts that
// the live processes with code's version declare (this one included). It returns a description
// of what changed ("" for nothing). The rules (docs/design.md, "Deploying and rolling back"):
//   - no record: the projection is created with code's layout active, from position 0;
//   - an older version than the active one is retired: nothing changes, the process idles;
//   - the active version: once every live process of it declares the same partition count and
//     it differs from the active one, a switch to it starts (or a pending switch to another count
//     is replaced; a pending switch back to the active count is cancelled);
//   - a newer version: it becomes the target (replacing a target of an older version): a build
//     from 0, or for a detached handler that does not replay history a switch; if it is the
//     target already but its live processes now declare another partition count, the target is
//     replaced by that layout (a build starts again from 0, after reset empties what the
//     abandoned build wrote; without reset the build keeps its partition count);
//   - a version older than the target but newer than the active one is superseded: nothing.
func (s *Store) Deploy(ctx context.Context, tx pgx.Tx, name string, code Code, declared []int,
	reset func(context.Context, pgx.Tx) error) (string, error) {
	// The first deploy creates the record; processes starting together race here, and the
	// losers wait on the winner's row and go on as for an existing record.
	tag, err := tx.Exec(ctx, `INSERT INTO `+s.p+` (projection, active_version, active_partitions, detached, resettable)
		VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING`, name, code.Version, code.Partitions, code.Detached, code.Resettable)
	if err != nil {
		return "", fmt.Errorf("create projection %q: %w", name, err)
	}
	if tag.RowsAffected() == 1 {
		change := "created " + code.Layout.String()
		if code.Start > 0 {
			change += fmt.Sprintf(" from position %d", code.Start)
		}
		return change, s.createRows(ctx, tx, name, code.Layout, max(0, code.Start))
	}
	r, err := s.mustLock(ctx, tx, name)
	if err != nil {
		return "", err
	}
	want := unanimous(declared)
	before := r
	change := ""
	v := code.Version
	switch {
	case v < r.Active.Version:
		return "", nil
	case v == r.Active.Version:
		r.Detached, r.Resettable = code.Detached, code.Resettable
		switch {
		case r.Target.Version > v: // a newer version is coming in: the partition count waits
		case r.HasTarget() && want == r.Active.Partitions:
			change = "partition change to " + r.Target.String() + " cancelled"
			if err := s.clearTarget(ctx, tx, &r); err != nil {
				return "", err
			}
		case want != 0 && want != r.Active.Partitions && (!r.HasTarget() || want != r.Target.Partitions):
			if err := s.clearTarget(ctx, tx, &r); err != nil {
				return "", err
			}
			l := Layout{v, want}
			change = "partition change to " + l.String() + " started"
			if err := s.startSwitch(ctx, tx, &r, l); err != nil {
				return "", err
			}
		}
	default: // a newer version
		parts := want
		if parts == 0 {
			parts = code.Partitions
		}
		l := Layout{v, parts}
		switch {
		case r.Target.Version > v:
			return "", nil
		case r.Target.Version == v:
			if want == 0 || want == r.Target.Partitions || (r.Mode == Build && reset == nil) {
				return "", nil
			}
			mode, barrier := r.Mode, r.Barrier
			if mode == Build {
				// The abandoned build wrote into this version's read model: empty it, in this
				// transaction, after its batches in flight.
				if _, err := s.lockPositions(ctx, tx, name, r.Target); err != nil {
					return "", err
				}
				if err := reset(ctx, tx); err != nil {
					return "", fmt.Errorf("reset the abandoned build of %s: %w", r.Target, err)
				}
				// And its dead letters: the build replays those events from 0 (a stale one would
				// park the aggregate's earlier events behind it, or be applied twice by a retry).
				if err := s.deleteDeadLetters(ctx, tx, name, v, "the abandoned build of "+r.Target.String()); err != nil {
					return "", err
				}
			}
			if err := s.deleteRows(ctx, tx, name, r.Target); err != nil {
				return "", err
			}
			r.Target = l
			start := int64(0)
			if mode == Switch {
				start = barrier
			} else {
				r.Barrier = -1
			}
			change = "target replaced by " + l.String()
			if err := s.createRows(ctx, tx, name, l, start); err != nil {
				return "", err
			}
		default:
			if err := s.clearTarget(ctx, tx, &r); err != nil {
				return "", err
			}
			if code.Detached && !code.Replay {
				change = "switch to " + l.String() + " started"
				if err := s.startSwitch(ctx, tx, &r, l); err != nil {
					return "", err
				}
			} else {
				change = "build of " + l.String() + " started"
				r.Target, r.Mode = l, Build
				if err := s.createRows(ctx, tx, name, l, 0); err != nil {
					return "", err
				}
			}
		}
	}
	if r != before {
		if err := s.save(ctx, tx, r); err != nil {
			return "", err
		}
	}
	return change, nil
}

// Advance moves a change in progress on, when its preconditions hold:
//   - a switch completes once every unit of the active layout has reached the barrier: the
//     target becomes active and the old rows go (any process may do this);
//   - a build sets the barrier once the target is within slack positions of the active layout,
//     so that the active one stops moving away; and it cuts over once every unit of the target is
//     at or past every unit of the active layout: activate runs (the process must run the
//     target's code), the target becomes active, the older version is retired (its rows and dead
//     letters go) in the same transaction.
//
// It returns a description of what changed ("" for nothing).
func (s *Store) Advance(ctx context.Context, tx pgx.Tx, name string, code Code, slack int64,
	activate func(context.Context, pgx.Tx) error) (string, error) {
	r, err := s.mustLock(ctx, tx, name)
	if err != nil || !r.HasTarget() {
		return "", err
	}
	old, err := s.lockPositions(ctx, tx, name, r.Active)
	if err != nil {
		return "", err
	}
	maxOld := int64(0)
	for _, p := range old {
		maxOld = max(maxOld, p)
	}
	if r.Mode == Switch {
		if len(old) != r.Active.Partitions || slices.ContainsFunc(old, func(p int64) bool { return p < r.Barrier }) {
			return "", nil
		}
		if r.Target.Version != r.Active.Version {
			// A new version of a detached handler: it takes over the events parked by the old one.
			if _, err := tx.Exec(ctx, `UPDATE `+s.dl+` SET version = $3 WHERE projection = $1 AND version = $2`,
				name, r.Active.Version, r.Target.Version); err != nil {
				return "", fmt.Errorf("move dead letters of %s to v%d: %w", name, r.Target.Version, err)
			}
		}
		change := fmt.Sprintf("switched from %s to %s at %d", r.Active, r.Target, r.Barrier)
		return change, s.promote(ctx, tx, &r, code)
	}
	if code.Version != r.Target.Version {
		return "", nil
	}
	target, err := s.lockPositions(ctx, tx, name, r.Target)
	if err != nil {
		return "", err
	}
	if len(target) != r.Target.Partitions {
		return "", nil
	}
	minNew := slices.Min(target)
	if minNew < maxOld {
		if r.Barrier < 0 && maxOld-minNew <= slack {
			r.Barrier = maxOld
			return fmt.Sprintf("%s stops at %d for the cut-over", r.Active, maxOld), s.save(ctx, tx, r)
		}
		return "", nil
	}
	if activate != nil {
		if err := activate(ctx, tx); err != nil {
			return "", fmt.Errorf("activate %s: %w", r.Target, err)
		}
	}
	if err := s.deleteDeadLetters(ctx, tx, name, r.Active.Version, "retired "+r.Active.String()); err != nil {
		return "", err
	}
	change := fmt.Sprintf("%s took over from %s", r.Target, r.Active)
	return change, s.promote(ctx, tx, &r, code)
}

// ReleaseBuildBarrier lifts the barrier a build set on the active layout, when no live process
// has the target version's code any more (it was rolled back before the cut-over): the active
// layout must not wait at the barrier for a cut-over nobody can carry out. The build stays the
// target and sets the barrier again when its code returns and catches up.
func (s *Store) ReleaseBuildBarrier(ctx context.Context, tx pgx.Tx, name string, target int) (string, error) {
	r, err := s.mustLock(ctx, tx, name)
	if err != nil || r.Mode != Build || r.Target.Version != target || r.Barrier < 0 {
		return "", err
	}
	r.Barrier = -1
	return fmt.Sprintf("barrier lifted: no live process runs %s", r.Target), s.save(ctx, tx, r)
}

// TakeOverSwitch completes the switch to a new version of a detached handler when no live
// process has the active version's code any more (its processes were all replaced before its
// partitions reached the barrier): nobody can drain them, so the switch would wait for ever. The
// new version starts instead from the lowest position of the old partitions, so that no event is
// skipped; those between it and the barrier that an old partition had delivered are delivered
// again (at-least-once, docs/design.md G4). code must be the target's. The caller checks that no
// live process declares the active version.
func (s *Store) TakeOverSwitch(ctx context.Context, tx pgx.Tx, name string, code Code) (string, error) {
	r, err := s.mustLock(ctx, tx, name)
	if err != nil || r.Mode != Switch || r.Target.Version == r.Active.Version || code.Version != r.Target.Version {
		return "", err
	}
	old, err := s.lockPositions(ctx, tx, name, r.Active)
	if err != nil {
		return "", err
	}
	from := r.Barrier
	for _, p := range old {
		from = min(from, p)
	}
	if _, err := tx.Exec(ctx, `UPDATE `+s.cp+` SET position = $4, updated_at = now()
		WHERE projection = $1 AND version = $2 AND partitions = $3 AND position > $4`,
		name, r.Target.Version, r.Target.Partitions, from); err != nil {
		return "", fmt.Errorf("move checkpoints of %s %s to %d: %w", name, r.Target, from, err)
	}
	if _, err := tx.Exec(ctx, `UPDATE `+s.dl+` SET version = $3 WHERE projection = $1 AND version = $2`,
		name, r.Active.Version, r.Target.Version); err != nil {
		return "", fmt.Errorf("move dead letters of %s to v%d: %w", name, r.Target.Version, err)
	}
	change := fmt.Sprintf("switched from %s to %s at %d (no live process runs %s)", r.Active, r.Target, from, r.Active)
	return change, s.promote(ctx, tx, &r, code)
}

// promote makes the target active and deletes the old active rows.
func (s *Store) promote(ctx context.Context, tx pgx.Tx, r *Record, code Code) error {
	if err := s.deleteRows(ctx, tx, r.Projection, r.Active); err != nil {
		return err
	}
	if code.Version == r.Target.Version {
		r.Detached, r.Resettable = code.Detached, code.Resettable
	}
	r.Active, r.Target, r.Mode, r.Barrier = r.Target, Layout{}, "", -1
	return s.save(ctx, tx, *r)
}

// Pause sets the operator's pause: no unit applies anything until Resume. It survives cut-overs,
// switches and rebuilds. A batch whose compare-and-set ran before the pause may still commit:
// WaitIdle waits for those.
func (s *Store) Pause(ctx context.Context, tx pgx.Tx, name string) error {
	r, err := s.mustLock(ctx, tx, name)
	if err != nil || r.Paused {
		return err
	}
	r.Paused = true
	return s.save(ctx, tx, r)
}

// WaitIdle waits until no batch of the projection is in flight (it locks every checkpoint row of
// the projection in its own transaction and lets go).
func (s *Store) WaitIdle(ctx context.Context, db eventstore.DBTX, name string) error {
	rows, err := db.Query(ctx, `SELECT 1 FROM `+s.cp+` WHERE projection = $1 FOR UPDATE`, name)
	if err != nil {
		return fmt.Errorf("wait for the batches of %q: %w", name, err)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("wait for the batches of %q: %w", name, err)
	}
	return nil
}

// Resume clears the pause and every unit's failure: the units run again from their checkpoints
// (a failed event is tried again).
func (s *Store) Resume(ctx context.Context, tx pgx.Tx, name string) error {
	r, err := s.mustLock(ctx, tx, name)
	if err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `UPDATE `+s.cp+` SET failed_position = NULL, last_error = NULL, updated_at = now()
		WHERE projection = $1 AND failed_position IS NOT NULL`, name); err != nil {
		return fmt.Errorf("resume %q: %w", name, err)
	}
	r.Paused, r.LastError = false, ""
	return s.save(ctx, tx, r)
}

// ErrRunning: the operation needs the projection paused or stopped.
var ErrRunning = errors.New("the projection is running: pause it first (eventline pause NAME)")

// MoveTo moves every unit of the active layout to position, for an operator who skips events
// (forwards) or applies some again (backwards); the read model is not touched. It is refused while
// the projection runs: it must be paused, or every active unit stopped by a failure, and no change
// of layout may be in progress. Unit failures are cleared (a stopped unit runs again from the new
// position unless the projection is paused); the pause stays. It returns the positions before.
func (s *Store) MoveTo(ctx context.Context, tx pgx.Tx, name string, position int64) ([]int64, error) {
	if position < 0 {
		return nil, fmt.Errorf("move %q: position %d is negative", name, position)
	}
	r, err := s.mustLock(ctx, tx, name)
	if err != nil {
		return nil, err
	}
	if r.HasTarget() {
		return nil, fmt.Errorf("move %q: a change to %s is in progress; wait for it or roll it back", name, r.Target)
	}
	old, err := s.lockPositions(ctx, tx, name, r.Active)
	if err != nil {
		return nil, err
	}
	if !r.Paused {
		var stopped int
		if err := tx.QueryRow(ctx, `SELECT count(*) FROM `+s.cp+` WHERE projection = $1 AND version = $2 AND partitions = $3
			AND failed_position IS NOT NULL`, name, r.Active.Version, r.Active.Partitions).Scan(&stopped); err != nil {
			return nil, fmt.Errorf("move %q: %w", name, err)
		}
		if stopped < len(old) {
			return nil, fmt.Errorf("move %q: %w", name, ErrRunning)
		}
	}
	if _, err := tx.Exec(ctx, `UPDATE `+s.cp+` SET position = $4, failed_position = NULL, last_error = NULL, updated_at = now()
		WHERE projection = $1 AND version = $2 AND partitions = $3`, name, r.Active.Version, r.Active.Partitions, position); err != nil {
		return nil, fmt.Errorf("move %q: %w", name, err)
	}
	return old, s.save(ctx, tx, r)
}

// RequestRebuild records an operator's request to rebuild the active version; a runner process
// with that version's code carries it out (Rebuild with fromRequest). It refuses what cannot be
// carried out: a detached handler, a projection without Reset.
func (s *Store) RequestRebuild(ctx context.Context, tx pgx.Tx, name string) error {
	r, err := s.mustLock(ctx, tx, name)
	if err != nil {
		return err
	}
	if r.Detached {
		return fmt.Errorf("rebuild %q: %w", name, ErrDetachedRebuild)
	}
	if !r.Resettable {
		return fmt.Errorf("rebuild %q: %w", name, ErrNotResettable)
	}
	r.RebuildRequested++
	r.LastError = ""
	return s.save(ctx, tx, r)
}

// Rebuild empties the active version's read model (reset) and moves every unit of it back to 0,
// clearing failures and the version's dead letters, in one transaction; it waits for the batches
// in flight. A pending partition switch completes at once (everything restarts from 0 anyway),
// a build of a newer version goes on. With fromRequest it carries out a pending request and does
// nothing when none is pending; without, it counts as a request of its own. code must be the
// active version's.
func (s *Store) Rebuild(ctx context.Context, tx pgx.Tx, name string, code Code, fromRequest bool,
	reset func(context.Context, pgx.Tx) error) (bool, error) {
	r, err := s.mustLock(ctx, tx, name)
	if err != nil {
		return false, err
	}
	if fromRequest && !r.RebuildPending() {
		return false, nil
	}
	switch {
	case code.Version != r.Active.Version:
		return false, fmt.Errorf("rebuild %q: the projection runs version %d, this process has version %d: %w",
			name, r.Active.Version, code.Version, ErrWrongVersion)
	case code.Detached:
		return false, fmt.Errorf("rebuild %q: %w", name, ErrDetachedRebuild)
	case reset == nil:
		return false, fmt.Errorf("rebuild %q: %w", name, ErrNotResettable)
	}
	if r.HasTarget() && r.Mode == Switch {
		if _, err := s.lockPositions(ctx, tx, name, r.Active); err != nil {
			return false, err
		}
		if err := s.deleteRows(ctx, tx, name, r.Active); err != nil {
			return false, err
		}
		r.Active, r.Target, r.Mode = r.Target, Layout{}, ""
	}
	r.Barrier = -1
	if _, err := s.lockPositions(ctx, tx, name, r.Active); err != nil {
		return false, err
	}
	if err := reset(ctx, tx); err != nil {
		return false, fmt.Errorf("rebuild %q: reset read model: %w", name, err)
	}
	if _, err := tx.Exec(ctx, `UPDATE `+s.cp+` SET position = 0, failed_position = NULL, last_error = NULL, updated_at = now()
		WHERE projection = $1 AND version = $2 AND partitions = $3`, name, r.Active.Version, r.Active.Partitions); err != nil {
		return false, fmt.Errorf("rebuild %q: reset checkpoints: %w", name, err)
	}
	if err := s.deleteDeadLetters(ctx, tx, name, r.Active.Version, "rebuilt "+r.Active.String()); err != nil {
		return false, fmt.Errorf("rebuild %q: %w", name, err)
	}
	if !fromRequest {
		r.RebuildRequested++
	}
	r.Rebuilds, r.LastError = r.RebuildRequested, ""
	r.Detached, r.Resettable = code.Detached, code.Resettable
	return true, s.save(ctx, tx, r)
}

// RefuseRebuild clears a pending rebuild request that this process cannot carry out, recording
// why in the record's last error (Status and eventline status show it).
func (s *Store) RefuseRebuild(ctx context.Context, tx pgx.Tx, name, reason string) error {
	r, err := s.mustLock(ctx, tx, name)
	if err != nil || !r.RebuildPending() {
		return err
	}
	r.Rebuilds, r.LastError = r.RebuildRequested, "rebuild request refused: "+reason
	return s.save(ctx, tx, r)
}

// State summarises, for status displays, what a unit of layout l does: "paused" (the operator's
// pause), "stopped" (a handler failed under the stop policy), or its role ("running" for the
// active layout, "building", "waiting", "retired", "standby"). The dimensions stay separate in
// the record and the checkpoint; this is only their one-word reading.
func (r Record) State(l Layout, stopped bool) string {
	role := r.Role(l)
	switch {
	case role == Retired || role == Standby:
		return string(role)
	case r.Paused:
		return "paused"
	case stopped:
		return "stopped"
	case role == Active:
		return "running"
	default:
		return string(role)
	}
}
