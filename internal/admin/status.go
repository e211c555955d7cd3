package admin

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/eventline/eventline/internal/checkpoint"
	"github.com/eventline/eventline/internal/lifecycle"
)

// Snapshot is the state of every projection at one moment: what 'eventline status' shows, the
// shape of status --json and of the console's status endpoint.
type Snapshot struct {
	// Time is the database's clock when the snapshot was taken; ages are measured from it.
	Time time.Time `json:"time"`
	Head int64     `json:"head"`
	// Projections has one entry per checkpoint: each version and partition of each projection.
	Projections []CheckpointStatus `json:"projections"`
	// Lifecycle has one entry per projection: its lifecycle record.
	Lifecycle []LifecycleStatus `json:"lifecycle"`
	// DeadLetters counts every dead letter, those of projections without a lifecycle record
	// included.
	DeadLetters int64        `json:"dead_letters"`
	Nodes       []NodeStatus `json:"nodes"`
}

// CheckpointStatus is one unit: a partition of a version of a projection.
type CheckpointStatus struct {
	Projection string `json:"projection"`
	Version    int    `json:"version"`
	Partition  int    `json:"partition"`
	Partitions int    `json:"partitions"`
	// Owner is the runner process holding a live lease; "" when none does.
	Owner string `json:"owner"`
	// LeaseOwner and LeaseUntil are the last lease taken, live or expired ("" and null: none).
	LeaseOwner string     `json:"lease_owner"`
	LeaseUntil *time.Time `json:"lease_until"`
	Position   int64      `json:"position"`
	Head       int64      `json:"head"`
	Lag        int64      `json:"lag"`
	// LagSeconds is the age of the first event after Position; 0 when caught up.
	LagSeconds float64 `json:"lag_seconds"`
	// Role is what the checkpoint's layout is to its projection: "active", "building" (a newer
	// version replaying beside the active one), "waiting" (a new layout waiting for the active one
	// to reach the barrier), "retired" or "standby".
	Role string `json:"role"`
	// State is the one-word reading of the role, the projection's pause and the checkpoint's
	// failure: "paused", "stopped", "running" (active), "building", "waiting", ...
	State          string    `json:"state"`
	LastError      string    `json:"last_error"`
	FailedPosition int64     `json:"failed_position"`
	UpdatedAt      time.Time `json:"updated_at"`

	// The live figures its owner published with its last heartbeat (checkpoint.NodeStatus): zero
	// when the owner is not a live node or published nothing.

	// EventsPerSecond applied recently by the owner.
	EventsPerSecond float64 `json:"events_per_second"`
	// WaitingOn is set while the unit is held at a position not settled yet.
	WaitingOn *Waiting `json:"waiting_on"`
	// OwnerError is the owner's last error on the unit when it differs from LastError: a
	// transient error it retries after.
	OwnerError string `json:"owner_error"`
}

// Key returns the unit's checkpoint key.
func (c CheckpointStatus) Key() checkpoint.Key {
	return checkpoint.Key{Projection: c.Projection, Version: c.Version, Partitions: c.Partitions, Partition: c.Partition}
}

// Waiting is what a unit held at a hole waits for.
type Waiting struct {
	// Position is the first position the unit cannot pass yet.
	Position int64 `json:"position"`
	// AppenderPID and Transaction identify the open transaction that holds the horizon back (0
	// and "" when unknown); AgeSeconds is how long it has been seen open.
	AppenderPID int     `json:"appender_pid"`
	Transaction string  `json:"transaction"`
	AgeSeconds  float64 `json:"age_seconds"`
}

// String is "position P" or "position P: appender pid X (transaction T) open for 2.5s".
func (w Waiting) String() string {
	s := fmt.Sprintf("position %d", w.Position)
	if w.AppenderPID != 0 || w.Transaction != "" {
		s += fmt.Sprintf(": appender pid %d (transaction %s) open for %.1fs", w.AppenderPID, w.Transaction, w.AgeSeconds)
	}
	return s
}

// LifecycleStatus is a projection's lifecycle record.
type LifecycleStatus struct {
	Projection       string `json:"projection"`
	ActiveVersion    int    `json:"active_version"`
	ActivePartitions int    `json:"active_partitions"`
	// TargetVersion, TargetPartitions and TargetMode ("build" or "switch") describe a layout being
	// brought in: 0, 0 and "" when none is.
	TargetVersion    int    `json:"target_version"`
	TargetPartitions int    `json:"target_partitions"`
	TargetMode       string `json:"target_mode"`
	// Barrier is the position the active layout applies nothing beyond; null when none.
	Barrier *int64 `json:"barrier"`
	Paused  bool   `json:"paused"`
	// RebuildPending: a rebuild was requested and not yet carried out. RebuildRequests and
	// Rebuilds count the requests and the rebuilds carried out.
	RebuildPending  bool  `json:"rebuild_pending"`
	RebuildRequests int64 `json:"rebuild_requests"`
	Rebuilds        int64 `json:"rebuilds"`
	// Detached and Resettable describe the active version's code (rebuild refuses detached
	// handlers and projections without Reset).
	Detached   bool `json:"detached"`
	Resettable bool `json:"resettable"`
	// LastError says why the last projection-wide request could not be carried out.
	LastError string    `json:"last_error"`
	UpdatedAt time.Time `json:"updated_at"`
	// DeadLetters counts the events parked by any version of the projection.
	DeadLetters int64 `json:"dead_letters"`
}

// NodeStatus is a live runner process.
type NodeStatus struct {
	ID                  string    `json:"id"`
	Hostname            string    `json:"hostname"`
	PID                 int       `json:"pid"`
	Projections         []string  `json:"projections"`
	StartedAt           time.Time `json:"started_at"`
	HeartbeatAt         time.Time `json:"heartbeat_at"`
	HeartbeatAgeSeconds float64   `json:"heartbeat_age_seconds"`
	// Horizon is the process's horizon at its last heartbeat (0 when it published none).
	Horizon int64 `json:"horizon"`
	// Owned counts the units it holds the lease of; EventsPerSecond sums their rates.
	Owned           int     `json:"owned"`
	EventsPerSecond float64 `json:"events_per_second"`
}

// Snapshot reads the checkpoints, the lifecycle records, the head, each checkpoint's lag and the
// live nodes, in one read-only transaction, so that they agree with one another.
func (a *Admin) Snapshot(ctx context.Context, pool *pgxpool.Pool) (Snapshot, error) {
	var s Snapshot
	err := pgx.BeginTxFunc(ctx, pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly},
		func(tx pgx.Tx) error {
			var err error
			s, err = a.readSnapshot(ctx, tx)
			return err
		})
	if err != nil {
		return Snapshot{}, err
	}
	return s, nil
}

// SnapshotWithDeadLetters is Snapshot and the first limit dead letters of every projection (all
// of them with 0), by projection, version and position, read in the same transaction: the list
// agrees with the snapshot's DeadLetters.
func (a *Admin) SnapshotWithDeadLetters(ctx context.Context, pool *pgxpool.Pool, limit int) (Snapshot, []DeadLetter, error) {
	var s Snapshot
	var dls []DeadLetter
	err := pgx.BeginTxFunc(ctx, pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly},
		func(tx pgx.Tx) error {
			var err error
			if s, err = a.readSnapshot(ctx, tx); err != nil {
				return err
			}
			dls, err = a.deadLetters(ctx, tx, "", limit)
			return err
		})
	if err != nil {
		return Snapshot{}, nil, err
	}
	return s, dls, nil
}

func (a *Admin) readSnapshot(ctx context.Context, tx pgx.Tx) (Snapshot, error) {
	cps, err := a.cps.List(ctx, tx)
	if err != nil {
		return Snapshot{}, err
	}
	// An empty, non-nil list: List(ctx, tx) with no names sends NULL, which matches nothing.
	records, err := a.lc.List(ctx, tx, []string{}...)
	if err != nil {
		return Snapshot{}, err
	}
	dead, err := a.cps.CountDeadLetters(ctx, tx)
	if err != nil {
		return Snapshot{}, err
	}
	s := Snapshot{Projections: make([]CheckpointStatus, 0, len(cps)), Lifecycle: make([]LifecycleStatus, 0, len(records)),
		Nodes: []NodeStatus{}}
	deadBy := map[string]int64{}
	for _, d := range dead {
		deadBy[d.Projection] += d.Count
		s.DeadLetters += d.Count
	}
	byName := make(map[string]lifecycle.Record, len(records))
	for _, r := range records {
		byName[r.Projection] = r
		l := recordStatus(r)
		l.DeadLetters = deadBy[r.Projection]
		s.Lifecycle = append(s.Lifecycle, l)
	}
	events := a.events.Quoted()
	if err := tx.QueryRow(ctx, `SELECT now(), coalesce(max(global_position), 0) FROM `+events).
		Scan(&s.Time, &s.Head); err != nil {
		return Snapshot{}, fmt.Errorf("read head of %s: %w", a.events, err)
	}
	if a.now != nil {
		s.Time = a.now()
	}
	s.Time = s.Time.UTC()
	live, err := a.readNodes(ctx, tx, &s)
	if err != nil {
		return Snapshot{}, err
	}
	for _, cp := range cps {
		// A checkpoint without a record (which the lifecycle never leaves) reads as standby.
		r := byName[cp.Projection]
		layout := lifecycle.Layout{Version: cp.Version, Partitions: cp.Partitions}
		p := CheckpointStatus{
			Projection: cp.Projection, Version: cp.Version, Partition: cp.Partition, Partitions: cp.Partitions,
			Position: cp.Position, Head: s.Head, Lag: max(0, s.Head-cp.Position),
			Role: string(r.Role(layout)), State: r.State(layout, cp.Stopped()),
			LastError: cp.LastError, FailedPosition: cp.FailedPosition, UpdatedAt: cp.UpdatedAt.UTC(),
		}
		if cp.Owner != "" {
			lease := cp.LeaseUntil.UTC()
			p.LeaseOwner, p.LeaseUntil = cp.Owner, &lease
			if lease.After(s.Time) {
				p.Owner = cp.Owner
			}
		}
		if lu, ok := live[p.Owner][cp.Key.Normalize()]; ok && p.Owner != "" && lu.Owned {
			p.EventsPerSecond = lu.EventsPerSecond
			if lu.LastError != cp.LastError {
				p.OwnerError = lu.LastError
			}
			if w := lu.WaitingOn; w != nil {
				p.WaitingOn = &Waiting{Position: w.Position, AppenderPID: w.AppenderPID, Transaction: w.Transaction}
				if !w.Since.IsZero() {
					p.WaitingOn.AgeSeconds = roundTo(max(0, s.Time.Sub(w.Since).Seconds()), 3)
				}
			}
		}
		s.Projections = append(s.Projections, p)
	}
	// The lag in seconds, the age of the first event after each lagging position: one query.
	var behind []int64
	for _, p := range s.Projections {
		if p.Lag > 0 {
			behind = append(behind, p.Position)
		}
	}
	if len(behind) == 0 {
		return s, nil
	}
	rows, err := tx.Query(ctx, `SELECT p, (SELECT created_at FROM `+events+` WHERE global_position > p
		ORDER BY global_position LIMIT 1) FROM unnest($1::bigint[]) p`, behind)
	if err != nil {
		return Snapshot{}, fmt.Errorf("read lags: %w", err)
	}
	created := map[int64]time.Time{}
	var pos int64
	var at *time.Time
	if _, err := pgx.ForEachRow(rows, []any{&pos, &at}, func() error {
		if at != nil {
			created[pos] = *at
		}
		return nil
	}); err != nil {
		return Snapshot{}, fmt.Errorf("read lags: %w", err)
	}
	for i, p := range s.Projections {
		if at, ok := created[p.Position]; ok && p.Lag > 0 {
			s.Projections[i].LagSeconds = roundTo(max(0, s.Time.Sub(at).Seconds()), 3)
		}
	}
	return s, nil
}

// readNodes appends the live nodes to s.Nodes and returns the units each published, by node ID.
func (a *Admin) readNodes(ctx context.Context, tx pgx.Tx, s *Snapshot) (map[string]map[checkpoint.Key]checkpoint.UnitStatus, error) {
	nodes, err := a.cps.Nodes(ctx, tx, NodeAliveDefault)
	if err != nil {
		return nil, err
	}
	live := map[string]map[checkpoint.Key]checkpoint.UnitStatus{}
	for _, n := range nodes {
		node := NodeStatus{
			ID: n.ID, Hostname: n.Hostname, PID: n.PID, Projections: n.Projections,
			StartedAt: n.StartedAt.UTC(), HeartbeatAt: n.HeartbeatAt.UTC(),
			HeartbeatAgeSeconds: roundTo(max(0, s.Time.Sub(n.HeartbeatAt).Seconds()), 3),
		}
		if node.Projections == nil {
			node.Projections = []string{}
		}
		if n.Status != nil {
			node.Horizon = n.Status.Horizon
			units := make(map[checkpoint.Key]checkpoint.UnitStatus, len(n.Status.Units))
			for _, u := range n.Status.Units {
				units[u.Key().Normalize()] = u
				if u.Owned {
					node.Owned++
					node.EventsPerSecond += u.EventsPerSecond
				}
			}
			node.EventsPerSecond = roundTo(node.EventsPerSecond, 2)
			live[n.ID] = units
		}
		s.Nodes = append(s.Nodes, node)
	}
	return live, nil
}

func recordStatus(r lifecycle.Record) LifecycleStatus {
	l := LifecycleStatus{
		Projection: r.Projection, ActiveVersion: r.Active.Version, ActivePartitions: r.Active.Partitions,
		TargetVersion: r.Target.Version, TargetPartitions: r.Target.Partitions, TargetMode: string(r.Mode),
		Paused: r.Paused, RebuildPending: r.RebuildPending(), RebuildRequests: r.RebuildRequested, Rebuilds: r.Rebuilds,
		Detached: r.Detached, Resettable: r.Resettable, LastError: r.LastError, UpdatedAt: r.UpdatedAt.UTC(),
	}
	if r.Barrier >= 0 {
		barrier := r.Barrier
		l.Barrier = &barrier
	}
	return l
}

func roundTo(x float64, decimals int) float64 {
	p := math.Pow10(decimals)
	return math.Round(x*p) / p
}
