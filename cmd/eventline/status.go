package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/eventline/eventline/checkpoint"
	"github.com/eventline/eventline/internal/lifecycle"
	"github.com/eventline/eventline/internal/sqlname"
)

// nodeAlive is how recent a runner's heartbeat must be for status to list it.
const nodeAlive = 10 * time.Second

// dbConn is what the database commands work with.
type dbConn struct {
	pool   *pgxpool.Pool
	cps    *checkpoint.Store
	lc     *lifecycle.Store
	events sqlname.Name
}

// snapshot is what status shows, and the shape of status --json.
type snapshot struct {
	// Time is the database's clock when the snapshot was taken; ages are measured from it.
	Time time.Time `json:"time"`
	Head int64     `json:"head"`
	// Projections has one entry per checkpoint: each version and partition of each projection.
	Projections []projectionStatus `json:"projections"`
	// Lifecycle has one entry per projection: its lifecycle record.
	Lifecycle []lifecycleStatus `json:"lifecycle"`
	Nodes     []nodeStatus      `json:"nodes"`
}

type projectionStatus struct {
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

// lifecycleStatus is a projection's lifecycle record.
type lifecycleStatus struct {
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

type nodeStatus struct {
	ID                  string    `json:"id"`
	Hostname            string    `json:"hostname"`
	PID                 int       `json:"pid"`
	Projections         []string  `json:"projections"`
	StartedAt           time.Time `json:"started_at"`
	HeartbeatAt         time.Time `json:"heartbeat_at"`
	HeartbeatAgeSeconds float64   `json:"heartbeat_age_seconds"`
}

func (a *app) cmdStatus(ctx context.Context, args []string) error {
	c := a.newCommand("status", "[--watch] [--interval 2s] [--json]",
		`Shows every checkpoint (each version and partition of each projection): its owner, position,
the head of the events table, the lag in events and in seconds (the age of the oldest event not
applied yet), its role, state and last error; then a line for each projection that is paused,
changing layout, waiting for a rebuild or whose last request failed; then the live runner
processes (heartbeat within 10s). OWNER is "-" when no runner holds a live lease on it. LAST
ERROR is cut to 60 characters.

ROLE is what the layout (version and partition count) is to its projection: active, building (a
newer version replaying beside it), waiting (a new layout waiting for the active one to reach
its barrier). STATE is paused (by an operator), stopped (a handler failed), else running for
the active layout and the role for the others.

--json prints {"time", "head", "projections": [...], "lifecycle": [...], "nodes": [...]} with
snake_case keys and full errors: "projections" has one object per checkpoint, "lifecycle" one
per projection.

--watch redraws every --interval until interrupted (Ctrl-C exits 0): on a terminal it clears the
screen first; otherwise it separates the tables with a blank line, or prints one JSON object per
line.`)
	watch := c.Bool("watch", false, "redraw every --interval until interrupted")
	interval := c.Duration("interval", 2*time.Second, "time between redraws with --watch")
	asJSON := c.Bool("json", false, "print JSON")
	if err := a.parse(c, args); err != nil {
		return err
	}
	if *interval <= 0 {
		return usageErrorf(c.name, "status: --interval must be positive, not %s", *interval)
	}
	return a.withStore(ctx, c.name, func(db *dbConn) error {
		if !*watch {
			s, err := a.snapshot(ctx, db)
			if err != nil {
				return err
			}
			if *asJSON {
				return writeJSON(a.stdout, s, true)
			}
			var b bytes.Buffer
			renderStatus(&b, s)
			_, err = a.stdout.Write(b.Bytes())
			return err
		}
		return a.watchStatus(ctx, db, *interval, *asJSON)
	})
}

// watchStatus prints a snapshot every interval until ctx ends. An error after the first
// snapshot is reported and the next interval tries again.
func (a *app) watchStatus(ctx context.Context, db *dbConn, interval time.Duration, asJSON bool) error {
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for frame := 0; ; {
		s, err := a.snapshot(ctx, db)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil && frame == 0:
			return err
		case err != nil:
			fmt.Fprintf(a.stderr, "eventline: %v\n", err)
		default:
			// Each frame is one Write, so that it is never torn.
			var b bytes.Buffer
			switch {
			case asJSON:
				if err := writeJSON(&b, s, false); err != nil {
					return err
				}
			case a.terminal:
				b.WriteString("\033[H\033[2J")
				fmt.Fprintf(&b, "eventline status, every %s (Ctrl-C to stop)   %s\n\n",
					interval, s.Time.Local().Format(time.DateTime))
				renderStatus(&b, s)
			default:
				if frame > 0 {
					b.WriteByte('\n')
				}
				renderStatus(&b, s)
			}
			if _, err := a.stdout.Write(b.Bytes()); err != nil {
				return err
			}
			frame++
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
	}
}

// snapshot reads the checkpoints, the lifecycle records, the head, each checkpoint's lag and the
// live nodes, in one read-only transaction, so that they agree with one another.
func (a *app) snapshot(ctx context.Context, db *dbConn) (snapshot, error) {
	var s snapshot
	err := pgx.BeginTxFunc(ctx, db.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly},
		func(tx pgx.Tx) error {
			var err error
			s, err = a.readSnapshot(ctx, db, tx)
			return err
		})
	if err != nil {
		return snapshot{}, err
	}
	return s, nil
}

func (a *app) readSnapshot(ctx context.Context, db *dbConn, tx pgx.Tx) (snapshot, error) {
	cps, err := db.cps.List(ctx, tx)
	if err != nil {
		return snapshot{}, err
	}
	// An empty, non-nil list: List(ctx, tx) with no names sends NULL, which matches nothing.
	records, err := db.lc.List(ctx, tx, []string{}...)
	if err != nil {
		return snapshot{}, err
	}
	byName := make(map[string]lifecycle.Record, len(records))
	s := snapshot{Projections: make([]projectionStatus, 0, len(cps)), Lifecycle: make([]lifecycleStatus, 0, len(records)),
		Nodes: []nodeStatus{}}
	for _, r := range records {
		byName[r.Projection] = r
		s.Lifecycle = append(s.Lifecycle, recordStatus(r))
	}
	events := db.events.Quoted()
	if err := tx.QueryRow(ctx, `SELECT now(), coalesce(max(global_position), 0) FROM `+events).
		Scan(&s.Time, &s.Head); err != nil {
		return snapshot{}, fmt.Errorf("read head of %s: %w", db.events, err)
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
		p := projectionStatus{
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
				return snapshot{}, fmt.Errorf("read lag of %s: %w", cp.Key, err)
			}
		}
		s.Projections = append(s.Projections, p)
	}
	nodes, err := db.cps.Nodes(ctx, tx, nodeAlive)
	if err != nil {
		return snapshot{}, err
	}
	for _, n := range nodes {
		projections := n.Projections
		if projections == nil {
			projections = []string{}
		}
		s.Nodes = append(s.Nodes, nodeStatus{
			ID: n.ID, Hostname: n.Hostname, PID: n.PID, Projections: projections,
			StartedAt: n.StartedAt.UTC(), HeartbeatAt: n.HeartbeatAt.UTC(),
			HeartbeatAgeSeconds: roundTo(max(0, s.Time.Sub(n.HeartbeatAt).Seconds()), 3),
		})
	}
	return s, nil
}

func recordStatus(r lifecycle.Record) lifecycleStatus {
	l := lifecycleStatus{
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

// notes is the short line status prints for a projection, "" when there is nothing to say: its
// pause, the layout change in progress, a pending rebuild, the last error.
func (l lifecycleStatus) notes() string {
	var parts []string
	if l.Paused {
		parts = append(parts, "paused")
	}
	active := lifecycle.Layout{Version: l.ActiveVersion, Partitions: l.ActivePartitions}
	target := lifecycle.Layout{Version: l.TargetVersion, Partitions: l.TargetPartitions}
	switch lifecycle.Mode(l.TargetMode) {
	case lifecycle.Build:
		n := fmt.Sprintf("building %s beside %s", target, active)
		if l.Barrier != nil {
			n += fmt.Sprintf(" (%s stops at %d for the cut-over)", active, *l.Barrier)
		}
		parts = append(parts, n)
	case lifecycle.Switch:
		barrier := "?"
		if l.Barrier != nil {
			barrier = strconv.FormatInt(*l.Barrier, 10)
		}
		parts = append(parts, fmt.Sprintf("switching from %s to %s at %s", active, target, barrier))
	}
	if l.RebuildPending {
		parts = append(parts, "rebuild pending")
	}
	if l.LastError != "" {
		parts = append(parts, "last error: "+truncate(l.LastError, errorWidth))
	}
	return strings.Join(parts, "; ")
}

func roundTo(x float64, decimals int) float64 {
	p := math.Pow10(decimals)
	return math.Round(x*p) / p
}

// renderStatus writes s as the projections table and the nodes table.
func renderStatus(w io.Writer, s snapshot) {
	if len(s.Projections) == 0 {
		fmt.Fprintln(w, "no projections (no checkpoints yet)")
	} else {
		tw := newTable(w)
		row(tw, "PROJECTION", "VERSION", "PARTITION", "OWNER", "POSITION", "HEAD", "LAG", "LAG(S)", "ROLE", "STATE", "LAST ERROR")
		for _, p := range s.Projections {
			partition := "-"
			if p.Partitions > 1 {
				partition = fmt.Sprintf("%d/%d", p.Partition, p.Partitions)
			}
			lastErr := p.LastError
			if lastErr != "" && p.FailedPosition > 0 {
				lastErr = fmt.Sprintf("at %d: %s", p.FailedPosition, lastErr)
			}
			row(tw, p.Projection, strconv.Itoa(p.Version), partition, cell(p.Owner),
				strconv.FormatInt(p.Position, 10), strconv.FormatInt(p.Head, 10), strconv.FormatInt(p.Lag, 10),
				strconv.FormatFloat(p.LagSeconds, 'f', 1, 64), p.Role, p.State, cell(truncate(lastErr, errorWidth)))
		}
		_ = tw.Flush() // w is a buffer
	}
	notes := false
	for _, l := range s.Lifecycle {
		if n := l.notes(); n != "" {
			if !notes {
				fmt.Fprintln(w)
				notes = true
			}
			fmt.Fprintf(w, "%s: %s\n", l.Projection, n)
		}
	}
	fmt.Fprintln(w)
	if len(s.Nodes) == 0 {
		fmt.Fprintln(w, "no live runner processes")
		return
	}
	tw := newTable(w)
	row(tw, "NODE", "HOST", "PID", "HEARTBEAT", "PROJECTIONS")
	for _, n := range s.Nodes {
		row(tw, n.ID, n.Hostname, strconv.Itoa(n.PID), strconv.FormatFloat(n.HeartbeatAgeSeconds, 'f', 1, 64)+"s ago",
			cell(strings.Join(n.Projections, ",")))
	}
	_ = tw.Flush()
}
