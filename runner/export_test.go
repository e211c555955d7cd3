package runner

import "github.com/eventline/eventline/internal/checkpoint"

// Test seams for package runner_test.

// CheckpointsForTest returns the checkpoint store the runner uses.
func (r *Runner) CheckpointsForTest() *checkpoint.Store { return r.cps }
