package runner

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/eventline/eventline/checkpoint"
)

// ProjectionStatus is one projection as Status sees it.
type ProjectionStatus struct {
	Name    string
	Version int
	// Partition of Partitions (0 of 1 when not partitioned).
	Partition, Partitions int
	// Position is the projection's checkpoint; Head the highest committed global position.
	Position, Head int64
	// LagEvents is Head - Position (positions, so holes count); LagSeconds is the age of the
	// oldest event the projection has not applied yet (0 when caught up).
	LagEvents  int64
	LagSeconds float64
	// State is running, stopped or paused.
	State checkpoint.State
	// LastError is why it stopped, or the last transient error while it retries.
	LastError string
	// FailedPosition is the event that stopped it.
	FailedPosition int64
	// EventsPerSecond applied recently by this process.
	EventsPerSecond float64
	// Owner is the runner process that holds the projection's lease ("host/pid/random"), or "".
	Owner string
	// WaitingOn describes the open appender the projection waits for, if it is held at a hole.
	WaitingOn string
}

// Status reports every registered projection.
func (r *Runner) Status(ctx context.Context) ([]ProjectionStatus, error) {
	r.mu.Lock()
	workers := append([]*worker(nil), r.workers...)
	tracker := r.tracker
	r.mu.Unlock()

	head, err := r.store.GetLatestGlobalPosition(ctx, r.pool)
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	out := make([]ProjectionStatus, 0, len(workers))
	for _, w := range workers {
		cp, err := r.cps.Get(ctx, r.pool, w.key)
		if errors.Is(err, checkpoint.ErrNotFound) {
			cp = checkpoint.Checkpoint{Key: w.key, State: checkpoint.Running}
		} else if err != nil {
			return nil, fmt.Errorf("status: %w", err)
		}
		w.mu.Lock()
		st := ProjectionStatus{
			Name: w.key.Projection, Version: w.key.Version, Partition: w.key.Partition, Partitions: w.parts,
			Position: cp.Position, Head: head,
			State: cp.State, LastError: cp.LastError, FailedPosition: cp.FailedPosition,
			EventsPerSecond: w.rate.perSecond(), Owner: cp.Owner,
		}
		if st.LastError == "" {
			st.LastError = w.lastErr
		}
		heldAt := w.heldAt
		w.mu.Unlock()
		st.LagEvents = max(0, head-st.Position)
		if st.LagEvents > 0 {
			var created time.Time
			err := r.pool.QueryRow(ctx, r.lagSQL, st.Position).Scan(&created)
			if err != nil && !errors.Is(err, pgx.ErrNoRows) {
				return nil, fmt.Errorf("status: read lag: %w", err)
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
		out = append(out, st)
	}
	return out, nil
}
