package runner

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/internal/checkpoint"
)

// liveStatus is this process's live view, published with each heartbeat (checkpoint.NodeStatus)
// so that `eventline status` shows, for every process, what only the process knows; and the same
// view for the Heartbeat hook. It reads memory only: the workers' fields and the tracker's last
// tick.
func (r *Runner) liveStatus() (*checkpoint.NodeStatus, HeartbeatInfo) {
	type named struct {
		name string
		w    *worker
	}
	r.mu.Lock()
	tracker := r.tracker
	workers := make([]named, 0, len(r.workers))
	for _, w := range r.workers {
		workers = append(workers, named{w.unit.String(), w})
	}
	r.mu.Unlock()
	// In name order, so that both lists come out sorted.
	slices.SortFunc(workers, func(a, b named) int { return strings.Compare(a.name, b.name) })
	st := &checkpoint.NodeStatus{Units: make([]checkpoint.UnitStatus, 0, len(workers))}
	info := HeartbeatInfo{Units: make([]UnitInfo, 0, len(workers))}
	var blocker *checkpoint.Waiting
	if tracker != nil {
		st.Horizon = tracker.Horizon()
		if h, ok := tracker.Blocker(); ok {
			blocker = &checkpoint.Waiting{AppenderPID: h.PID, Transaction: h.VirtualXID, Since: h.Since.UTC()}
		}
	}
	info.Horizon = st.Horizon
	for _, n := range workers {
		w, k := n.w, n.w.key.Normalize()
		w.mu.Lock()
		u := checkpoint.UnitStatus{
			Projection: k.Projection, Version: k.Version, Partitions: k.Partitions, Partition: k.Partition,
			Owned: w.stop != nil, State: w.state, Position: w.statusPos, EventsPerSecond: roundRate(w.rate.perSecond()),
			LastError: w.lastErr,
		}
		if w.heldAt > 0 {
			wait := checkpoint.Waiting{Position: w.heldAt}
			if blocker != nil {
				wait.AppenderPID, wait.Transaction, wait.Since = blocker.AppenderPID, blocker.Transaction, blocker.Since
			}
			u.WaitingOn = &wait
		}
		w.mu.Unlock()
		st.Units = append(st.Units, u)
		info.Units = append(info.Units, UnitInfo{Unit: w.unit, Owned: u.Owned, State: u.State, Position: u.Position})
	}
	return st, info
}

// reportHeartbeat measures the lags of info and calls the Heartbeat hook with it; it skips the
// call when the lags cannot be read within a heartbeat interval (the next heartbeat tries again),
// rather than report them as 0.
func (r *Runner) reportHeartbeat(ctx context.Context, db *pgx.Conn, info HeartbeatInfo) {
	f := r.cfg.Hooks.Heartbeat
	if f == nil || ctx.Err() != nil {
		return
	}
	mctx, cancel := context.WithTimeout(ctx, r.cfg.HeartbeatInterval)
	defer cancel()
	if err := r.measureLag(mctx, db, &info); err != nil {
		r.log.Debug("heartbeat hook: reading lags failed", zap.Error(err))
		return
	}
	f(info)
}

// measureLag fills in the lag of the owned units of info that are behind its horizon, with one
// query on db: the age of the first event after each one's position.
func (r *Runner) measureLag(ctx context.Context, db eventstore.DBTX, info *HeartbeatInfo) error {
	var idx []int
	var positions []int64
	for i, u := range info.Units {
		if u.Owned && u.Position < info.Horizon {
			idx = append(idx, i)
			positions = append(positions, u.Position)
		}
	}
	if len(positions) == 0 {
		return nil
	}
	rows, err := db.Query(ctx, r.lagsSQL, positions)
	if err != nil {
		return fmt.Errorf("read lags: %w", err)
	}
	ages, err := pgx.CollectRows(rows, pgx.RowTo[*float64])
	if err != nil {
		return fmt.Errorf("read lags: %w", err)
	}
	for j, age := range ages {
		if j < len(idx) && age != nil {
			info.Units[idx[j]].Lag = time.Duration(max(0, *age) * float64(time.Second))
		}
	}
	return nil
}

// roundRate keeps two decimals of a rate, so that the published status stays small.
func roundRate(x float64) float64 { return float64(int64(x*100+0.5)) / 100 }
