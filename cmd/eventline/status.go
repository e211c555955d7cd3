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
	"github.com/eventline/eventline/internal/sqlname"
)

// nodeAlive is how recent a runner's heartbeat must be for status to list it.
const nodeAlive = 10 * time.Second

// dbConn is what the database commands work with.
type dbConn struct {
	pool   *pgxpool.Pool
	cps    *checkpoint.Store
	events sqlname.Name
}

// snapshot is what status shows, and the shape of status --json.
type snapshot struct {
	// Time is the database's clock when the snapshot was taken; ages are measured from it.
	Time        time.Time          `json:"time"`
	Head        int64              `json:"head"`
	Projections []projectionStatus `json:"projections"`
	Nodes       []nodeStatus       `json:"nodes"`
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
	LagSeconds       float64   `json:"lag_seconds"`
	State            string    `json:"state"`
	LastError        string    `json:"last_error"`
	FailedPosition   int64     `json:"failed_position"`
	RebuildRequested bool      `json:"rebuild_requested"`
	UpdatedAt        time.Time `json:"updated_at"`
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
applied yet), its state and last error; then the live runner processes (heartbeat within 10s).
OWNER is "-" when no runner holds a live lease on it. LAST ERROR is cut to 60 characters.

--json prints {"time", "head", "projections": [...], "nodes": [...]} with snake_case keys and
full errors. --watch redraws every --interval until interrupted (Ctrl-C exits 0): on a terminal
it clears the screen first; otherwise it separates the tables with a blank line, or prints one
JSON object per line.`)
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

// snapshot reads the checkpoints, the head, each checkpoint's lag and the live nodes.
func (a *app) snapshot(ctx context.Context, db *dbConn) (snapshot, error) {
	cps, err := db.cps.List(ctx, db.pool)
	if err != nil {
		return snapshot{}, err
	}
	events := db.events.Quoted()
	// The head is read after the checkpoints, so that no position is above it.
	s := snapshot{Projections: make([]projectionStatus, 0, len(cps)), Nodes: []nodeStatus{}}
	if err := db.pool.QueryRow(ctx, `SELECT now(), coalesce(max(global_position), 0) FROM `+events).
		Scan(&s.Time, &s.Head); err != nil {
		return snapshot{}, fmt.Errorf("read head of %s: %w", db.events, err)
	}
	if a.now != nil {
		s.Time = a.now()
	}
	s.Time = s.Time.UTC()
	firstAfter := `SELECT created_at FROM ` + events + ` WHERE global_position > $1 ORDER BY global_position LIMIT 1`
	for _, cp := range cps {
		p := projectionStatus{
			Projection: cp.Projection, Version: cp.Version, Partition: cp.Partition, Partitions: cp.Partitions,
			Position: cp.Position, Head: s.Head, Lag: max(0, s.Head-cp.Position),
			State: string(cp.State), LastError: cp.LastError, FailedPosition: cp.FailedPosition,
			RebuildRequested: cp.RebuildRequested, UpdatedAt: cp.UpdatedAt.UTC(),
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
			err := db.pool.QueryRow(ctx, firstAfter, cp.Position).Scan(&created)
			switch {
			case err == nil:
				p.LagSeconds = roundTo(max(0, s.Time.Sub(created).Seconds()), 3)
			case !errors.Is(err, pgx.ErrNoRows):
				return snapshot{}, fmt.Errorf("read lag of %s: %w", cp.Key, err)
			}
		}
		s.Projections = append(s.Projections, p)
	}
	nodes, err := db.cps.Nodes(ctx, db.pool, nodeAlive)
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
		row(tw, "PROJECTION", "VERSION", "PARTITION", "OWNER", "POSITION", "HEAD", "LAG", "LAG(S)", "STATE", "LAST ERROR")
		for _, p := range s.Projections {
			partition := "-"
			if p.Partitions > 1 {
				partition = fmt.Sprintf("%d/%d", p.Partition, p.Partitions)
			}
			state := p.State
			if p.RebuildRequested {
				state += ", rebuild requested"
			}
			lastErr := p.LastError
			if lastErr != "" && p.FailedPosition > 0 {
				lastErr = fmt.Sprintf("at %d: %s", p.FailedPosition, lastErr)
			}
			row(tw, p.Projection, strconv.Itoa(p.Version), partition, cell(p.Owner),
				strconv.FormatInt(p.Position, 10), strconv.FormatInt(p.Head, 10), strconv.FormatInt(p.Lag, 10),
				strconv.FormatFloat(p.LagSeconds, 'f', 1, 64), state, cell(truncate(lastErr, errorWidth)))
		}
		_ = tw.Flush() // w is a buffer
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
