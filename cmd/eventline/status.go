package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/eventline/eventline/internal/admin"
	"github.com/eventline/eventline/internal/lifecycle"
)

// dbConn is what the database commands work with: the operator's reads and actions on the
// tables of the global flags, and the pool they run on.
type dbConn struct {
	pool *pgxpool.Pool
	adm  *admin.Admin
}

// snapshot is what status shows, and the shape of status --json.
type snapshot = admin.Snapshot

func (a *app) cmdStatus(ctx context.Context, args []string) error {
	c := a.newCommand("status", "[--watch] [--interval 2s] [--json] | --check [--max-lag 30s] [--max-lag-events N] [--json]",
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

--json prints {"time", "head", "projections": [...], "lifecycle": [...], "dead_letters",
"nodes": [...]} with snake_case keys and full errors: "projections" has one object per
checkpoint, "lifecycle" one per projection, "dead_letters" counts every dead letter.

EVENTS/S and the "waiting at" and "retrying after" lines are what each unit's owner published
with its last heartbeat: the events it applied per second, the open appender transaction that
holds it at a position, the transient error it retries after. The nodes table shows each
process's horizon (every position at or below it is settled), the units it owns and their
events per second.

--watch redraws every --interval until interrupted (Ctrl-C exits 0): on a terminal it clears the
screen first; otherwise it separates the tables with a blank line, or prints one JSON object per
line.

--check is for cron and CI: it prints one line per problem and exits 4 when a unit the projection
runs (active, building or waiting) is stopped by a handler failure or has no live owner, when a
projection has dead letters, or when an active unit that is neither paused nor stopped lags
beyond --max-lag (the age of its oldest event not applied) or --max-lag-events (positions);
otherwise it prints "ok: ..." and exits 0. With --json it prints {"ok", "problems": [{"projection",
"unit", "kind", "reason"}]}, kind being stopped, dead_letters, lag or no_owner.`)
	check := c.Bool("check", false, "exit 4 when a projection is stopped, has dead letters, lags beyond --max-lag or has no live owner; print why")
	maxLag := c.Duration("max-lag", 0, "with --check: the most an active projection may lag, as the age of its oldest event not applied (0: no bound)")
	maxLagEvents := c.Int64("max-lag-events", 0, "with --check: the most an active projection may lag in positions (0: no bound)")
	watch := c.Bool("watch", false, "redraw every --interval until interrupted")
	interval := c.Duration("interval", 2*time.Second, "time between redraws with --watch")
	asJSON := c.Bool("json", false, "print JSON")
	if err := a.parse(c, args); err != nil {
		return err
	}
	if *interval <= 0 {
		return usageErrorf(c.name, "status: --interval must be positive, not %s", *interval)
	}
	switch {
	case *maxLag < 0 || *maxLagEvents < 0:
		return usageErrorf(c.name, "status: --max-lag and --max-lag-events must not be negative")
	case *check && *watch:
		return usageErrorf(c.name, "status: --check and --watch do not go together")
	case !*check && (*maxLag != 0 || *maxLagEvents != 0):
		return usageErrorf(c.name, "status: --max-lag and --max-lag-events go with --check")
	}
	return a.withStore(ctx, c.name, func(db *dbConn) error {
		if *check {
			s, err := a.snapshot(ctx, db)
			if err != nil {
				return err
			}
			return a.checkStatus(s, admin.Bounds{MaxLag: *maxLag, MaxLagEvents: *maxLagEvents}, *asJSON)
		}
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

// checkFailed is the error of a status --check that found problems: exit code 4.
type checkFailed struct{ problems int }

func (e *checkFailed) Error() string {
	return fmt.Sprintf("status --check: %s", plural(e.problems, "problem"))
}

// checkStatus prints what Snapshot.Check finds (one line per problem, or a line saying all is
// well) and returns checkFailed when it finds anything.
func (a *app) checkStatus(s snapshot, b admin.Bounds, asJSON bool) error {
	problems := s.Check(b)
	if asJSON {
		out := struct {
			OK       bool            `json:"ok"`
			Problems []admin.Problem `json:"problems"`
		}{OK: len(problems) == 0, Problems: problems}
		if out.Problems == nil {
			out.Problems = []admin.Problem{}
		}
		if err := writeJSON(a.stdout, out, true); err != nil {
			return err
		}
	} else {
		var buf bytes.Buffer
		for _, p := range problems {
			fmt.Fprintln(&buf, p)
		}
		if len(problems) == 0 {
			fmt.Fprintf(&buf, "ok: %s of %s, %s\n", plural(len(s.Projections), "checkpoint"),
				plural(len(s.Lifecycle), "projection"), plural(len(s.Nodes), "live runner"))
		}
		if _, err := a.stdout.Write(buf.Bytes()); err != nil {
			return err
		}
	}
	if len(problems) > 0 {
		return &checkFailed{problems: len(problems)}
	}
	return nil
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

// snapshot reads the state of every projection (admin.Admin.Snapshot).
func (a *app) snapshot(ctx context.Context, db *dbConn) (snapshot, error) {
	return db.adm.Snapshot(ctx, db.pool)
}

// lifecycleNotes is the short line status prints for a projection, "" when there is nothing to say: its
// pause, the layout change in progress, a pending rebuild, the last error.
func lifecycleNotes(l admin.LifecycleStatus) string {
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

// renderStatus writes s as the projections table, notes on projections and units, and the
// nodes table.
func renderStatus(w io.Writer, s snapshot) {
	if len(s.Projections) == 0 {
		fmt.Fprintln(w, "no projections (no checkpoints yet)")
	} else {
		tw := newTable(w)
		row(tw, "PROJECTION", "VERSION", "PARTITION", "OWNER", "POSITION", "HEAD", "LAG", "LAG(S)", "EVENTS/S", "ROLE", "STATE", "LAST ERROR")
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
				strconv.FormatFloat(p.LagSeconds, 'f', 1, 64), strconv.FormatFloat(p.EventsPerSecond, 'f', 1, 64),
				p.Role, p.State, cell(truncate(lastErr, errorWidth)))
		}
		_ = tw.Flush() // w is a buffer
	}
	var notes []string
	for _, l := range s.Lifecycle {
		if n := lifecycleNotes(l); n != "" {
			notes = append(notes, l.Projection+": "+n)
		}
	}
	// What the owners published with their heartbeats: the appender a unit waits on, the error
	// it retries after.
	for _, p := range s.Projections {
		if p.WaitingOn != nil {
			notes = append(notes, fmt.Sprintf("%s: waiting at %s", p.Key(), p.WaitingOn))
		}
		if p.OwnerError != "" {
			notes = append(notes, fmt.Sprintf("%s: retrying after: %s", p.Key(), truncate(p.OwnerError, errorWidth)))
		}
	}
	if len(notes) > 0 {
		fmt.Fprintln(w)
		for _, n := range notes {
			fmt.Fprintln(w, n)
		}
	}
	fmt.Fprintln(w)
	if len(s.Nodes) == 0 {
		fmt.Fprintln(w, "no live runner processes")
		return
	}
	tw := newTable(w)
	row(tw, "NODE", "HOST", "PID", "HEARTBEAT", "HORIZON", "OWNED", "EVENTS/S", "PROJECTIONS")
	for _, n := range s.Nodes {
		row(tw, n.ID, n.Hostname, strconv.Itoa(n.PID), strconv.FormatFloat(n.HeartbeatAgeSeconds, 'f', 1, 64)+"s ago",
			cell(horizon(n)), strconv.Itoa(n.Owned), strconv.FormatFloat(n.EventsPerSecond, 'f', 1, 64),
			cell(strings.Join(n.Projections, ",")))
	}
	_ = tw.Flush()
}

// horizon is a node's published horizon, "" when it published none.
func horizon(n admin.NodeStatus) string {
	if n.Horizon == 0 {
		return ""
	}
	return strconv.FormatInt(n.Horizon, 10)
}
