package admin

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

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
	Nodes     []NodeStatus      `json:"nodes"`
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
	byName := make(map[string]lifecycle.Record, len(records))
	s := Snapshot{Projections: make([]CheckpointStatus, 0, len(cps)), Lifecycle: make([]LifecycleStatus, 0, len(records)),
		Nodes: []NodeStatus{}}
	for _, r := range records {
		byName[r.Projection] = r
		s.Lifecycle = append(s.Lifecycle, recordStatus(r))
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
	firstAfter := `SELECT created_at FROM ` + events + ` WHERE global_position > $1 ORDER BY global_position LIMIT 1`
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
		if p.Lag > 0 {
			var created time.Time
			err := tx.QueryRow(ctx, firstAfter, cp.Position).Scan(&created)
			switch {
			case err == nil:
				p.LagSeconds = roundTo(max(0, s.Time.Sub(created).Seconds()), 3)
			case !errors.Is(err, pgx.ErrNoRows):
				return Snapshot{}, fmt.Errorf("read lag of %s: %w", cp.Key, err)
			}
		}
		s.Projections = append(s.Projections, p)
	}
	nodes, err := a.cps.Nodes(ctx, tx, NodeAliveDefault)
	if err != nil {
		return Snapshot{}, err
	}
	for _, n := range nodes {
		projections := n.Projections
		if projections == nil {
			projections = []string{}
		}
		s.Nodes = append(s.Nodes, NodeStatus{
			ID: n.ID, Hostname: n.Hostname, PID: n.PID, Projections: projections,
			StartedAt: n.StartedAt.UTC(), HeartbeatAt: n.HeartbeatAt.UTC(),
			HeartbeatAgeSeconds: roundTo(max(0, s.Time.Sub(n.HeartbeatAt).Seconds()), 3),
		})
	}
	return s, nil
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
