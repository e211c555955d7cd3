package runner

import "github.com/eventline/eventline/internal/checkpoint"

// Test seams for package runner_test.

// CheckpointsForTest returns the checkpoint store the runner uses.
func (r *Runner) CheckpointsForTest() *checkpoint.Store { return r.cps }

// HorizonLastValueForTest returns the L of the horizon tracker's last tick (0 before Run ticked).
func (r *Runner) HorizonLastValueForTest() int64 {
	r.mu.Lock()
	t := r.tracker
	r.mu.Unlock()
	if t == nil {
		return 0
	}
	return t.LastValue()
}
