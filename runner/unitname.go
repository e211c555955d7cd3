package runner

import "github.com/eventline/eventline/internal/checkpoint"

// Unit names what the runner schedules, checkpoints and reports on: one partition of one version
// of a projection (or detached handler). Hooks and BatchInfo carry it; it is comparable, so it
// can key a map.
type Unit struct {
	Projection string
	// Version is the projection's version (projector.Versioned); 1 when it declares none.
	Version int
	// Partition of Partitions: 0 of 1 when the projection is not partitioned.
	Partition, Partitions int
}

// String is "name", "name@2", "name#3/4" or "name@2#3/4": version 1 and the partition of an
// unpartitioned projection are left out (checkpoint keys read the same in logs and status).
func (u Unit) String() string {
	return checkpoint.Key{Projection: u.Projection, Version: u.Version, Partition: u.Partition, Partitions: u.Partitions}.String()
}

// unitOf is the public name of a checkpoint key, with its defaults filled in.
func unitOf(k checkpoint.Key) Unit {
	k = k.Normalize()
	return Unit{Projection: k.Projection, Version: k.Version, Partition: k.Partition, Partitions: k.Partitions}
}
