package runner

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/eventline/eventline/internal/checkpoint"
	"github.com/eventline/eventline/internal/horizon"
	"github.com/eventline/eventline/internal/lifecycle"
)

// ProjectionStatus is one unit of a projection (a partition of a version) as Status sees it.
type ProjectionStatus struct {
	Name    string
	Version int
	// Partition of Partitions (0 of 1 when not partitioned).
	Partition, Partitions int
	// Position is the unit's checkpoint; Head the highest committed global position.
	Position, Head int64
	// LagEvents is Head - Position (positions, so holes count); LagSeconds is the age of the
	// oldest event the unit has not applied yet (0 when caught up).
	LagEvents  int64
	LagSeconds float64
	// State is one word: running, stopped (a handler failed), paused (by an operator), building
	// (a new version catching up), waiting (new partitions waiting for the barrier), retired (an
	// older version: this process idles) or standby (a version this process has that the
	// projection does not run).
	State string
	// Role is the unit's layout's role in the lifecycle (active, building, waiting, retired,
	// standby); Paused is the operator's pause; Stopped says a handler failure stopped it.
	Role    string
	Paused  bool
	Stopped bool
	// Barrier is the position the active layout drains to while the layout changes (-1: none).
	Barrier int64
	// LastError is why it stopped, the last transient error while it retries, or why this process
	// idles on it.
	LastError string
	// FailedPosition is the event that stopped it.
	FailedPosition int64
	// EventsPerSecond applied recently by this process.
	EventsPerSecond float64
	// Owner is the runner process that holds the unit's lease ("host/pid/random"), or "".
	Owner string
	// WaitingOn describes the open appender the unit waits for, if it is held at a hole.
	WaitingOn string
}

// Status reports the units of every registered projection that this process can run, and one
// row for each projection this process idles on (an older or superseded version), saying why.
func (r *Runner) Status(ctx context.Context) ([]ProjectionStatus, error) {
	r.mu.Lock()
	regs := append([]*registration(nil), r.regs...)
	tracker := r.tracker
	r.mu.Unlock()

	head, err := r.store.GetLatestGlobalPosition(ctx, r.pool)
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	unsafe := ""
	if tracker != nil {
		if err := tracker.Unsafe(); err != nil {
			// The events table lost what gap-safe reading needs (the append lock trigger was
			// disabled, say): the horizon is frozen, so nothing beyond it is delivered.
			unsafe = "delivery stopped: " + err.Error()
		}
	}
	var out []ProjectionStatus
	for _, g := range regs {
		rec, err := r.lc.Get(ctx, r.pool, g.name)
		if err != nil && !errors.Is(err, lifecycle.ErrNotFound) {
			return nil, fmt.Errorf("status: %w", err)
		}
		// The record read here is not the manager's: the manager compares what it reads with
		// what it read last to see a change (and wake the workers), which a read here would hide.
		hasRec := err == nil
		g.mu.Lock()
		mgrErr := g.err
		g.mu.Unlock()
		keys := g.units(rec, hasRec)
		if len(keys) == 0 {
			st := ProjectionStatus{Name: g.name, Version: g.code.Version, Partitions: g.code.Partitions, Head: head,
				State: string(lifecycle.Standby), Role: string(lifecycle.Standby), Barrier: -1, LastError: g.standbyReason(rec, hasRec)}
			if err == nil {
				st.State, st.Role, st.Paused = rec.State(g.code.Layout, false), string(rec.Role(g.code.Layout)), rec.Paused
			}
			out = append(out, st)
			continue
		}
		for _, k := range keys {
			st, err := r.unitStatus(ctx, g, rec, k, head, tracker)
			if err != nil {
				return nil, err
			}
			st.LastError = firstNonEmpty(unsafe, st.LastError, rec.LastError, mgrErr)
			out = append(out, st)
		}
	}
	return out, nil
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

func (r *Runner) unitStatus(ctx context.Context, g *registration, rec lifecycle.Record, k checkpoint.Key, head int64,
	tracker *horizon.Tracker) (ProjectionStatus, error) {
	l := lifecycle.Layout{Version: k.Version, Partitions: k.Partitions}
	cp, err := r.cps.Get(ctx, r.pool, k)
	if errors.Is(err, checkpoint.ErrNotFound) {
		cp = checkpoint.Checkpoint{Key: k}
	} else if err != nil {
		return ProjectionStatus{}, fmt.Errorf("status: %w", err)
	}
	st := ProjectionStatus{
		Name: k.Projection, Version: k.Version, Partition: k.Partition, Partitions: k.Partitions,
		Position: cp.Position, Head: head,
		State: rec.State(l, cp.Stopped()), Role: string(rec.Role(l)), Paused: rec.Paused, Stopped: cp.Stopped(),
		Barrier: -1, LastError: cp.LastError, FailedPosition: cp.FailedPosition, Owner: cp.Owner,
	}
	if st.Role == string(lifecycle.Active) {
		st.Barrier = rec.Barrier
	}
	r.mu.Lock()
	w := r.workers[k]
	r.mu.Unlock()
	heldAt := int64(0)
	if w != nil {
		w.mu.Lock()
		st.EventsPerSecond = w.rate.perSecond()
		if st.LastError == "" {
			st.LastError = w.lastErr
		}
		heldAt = w.heldAt
		w.mu.Unlock()
	}
	st.LagEvents = max(0, head-st.Position)
	if st.LagEvents > 0 {
		var created time.Time
		err := r.pool.QueryRow(ctx, r.lagSQL, st.Position).Scan(&created)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return ProjectionStatus{}, fmt.Errorf("status: read lag: %w", err)
		}
		if err == nil {
			st.LagSeconds = max(0, time.Since(created).Seconds())
		}
	}
	if heldAt > 0 && tracker != nil {
		if h, ok := tracker.Blocker(); ok {
			st.WaitingOn = fmt.Sprintf("position %d: appender pid %d (transaction %s) open for %s",
				heldAt, h.PID, h.VirtualXID, time.Since(h.Since).Round(time.Millisecond))
		} else {
			st.WaitingOn = fmt.Sprintf("position %d", heldAt)
		}
	}
	return st, nil
}
