package runner

import (
	"slices"
	"strings"

	"github.com/eventline/eventline/internal/checkpoint"
)

// liveStatus is this process's live view, published with each heartbeat (checkpoint.NodeStatus)
// so that `eventline status` shows, for every process, what only the process knows. It reads
// memory only: the workers' fields and the tracker's last tick.
func (r *Runner) liveStatus() *checkpoint.NodeStatus {
	r.mu.Lock()
	tracker := r.tracker
	workers := make([]*worker, 0, len(r.workers))
	for _, w := range r.workers {
		workers = append(workers, w)
	}
	r.mu.Unlock()
	st := &checkpoint.NodeStatus{Units: make([]checkpoint.UnitStatus, 0, len(workers))}
	var blocker *checkpoint.Waiting
	if tracker != nil {
		st.Horizon = tracker.Horizon()
		if h, ok := tracker.Blocker(); ok {
			blocker = &checkpoint.Waiting{AppenderPID: h.PID, Transaction: h.VirtualXID, Since: h.Since.UTC()}
		}
	}
	for _, w := range workers {
		k := w.key.Normalize()
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
	}
	slices.SortFunc(st.Units, func(a, b checkpoint.UnitStatus) int {
		return strings.Compare(a.Key().String(), b.Key().String())
	})
	return st
}

// roundRate keeps two decimals of a rate, so that the published status stays small.
func roundRate(x float64) float64 { return float64(int64(x*100+0.5)) / 100 }
