package checkpoint_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/eventline/eventline"
	"github.com/eventline/eventline/internal/checkpoint"
	"github.com/eventline/eventline/internal/pgtest"
)

// BenchmarkHeartbeat measures what publishing the live status costs each heartbeat: Heartbeat
// with the status of 32 units (each waiting on an appender, the worst case for its size) against
// the heartbeat as it was before migration 0006, hand-written with pgx. Both run interleaved, in
// rounds, on one connection.
func BenchmarkHeartbeat(b *testing.B) {
	ctx := context.Background()
	db := pgtest.NewDatabase(b)
	cps, err := checkpoint.New(eventline.Names{})
	if err != nil {
		b.Fatal(err)
	}
	conn := db.Conn(b)
	status := &checkpoint.NodeStatus{Horizon: 123456789}
	var specs []string
	for i := range 32 {
		specs = append(specs, fmt.Sprintf("projection_%02d@1/1", i))
		status.Units = append(status.Units, checkpoint.UnitStatus{Projection: fmt.Sprintf("projection_%02d", i), Version: 1,
			Partitions: 1, Owned: true, State: "running", Position: 123456000 + int64(i), EventsPerSecond: 1234.56,
			WaitingOn: &checkpoint.Waiting{Position: 123456790, AppenderPID: 4242, Transaction: "7/31", Since: time.Now().UTC()}})
	}
	node := checkpoint.Node{ID: "host/4242/abcdef", Hostname: "host", PID: 4242, Projections: specs, Status: status}
	baseline := func() error {
		_, err := conn.Exec(ctx, `INSERT INTO eventline_nodes (node_id, hostname, pid, projections) VALUES ($1, $2, $3, $4)
			ON CONFLICT (node_id) DO UPDATE SET heartbeat_at = now(), projections = EXCLUDED.projections`,
			"host/4242/base", node.Hostname, node.PID, node.Projections)
		return err
	}
	withStatus := func() error { return cps.Heartbeat(ctx, conn, node) }
	// The usual case: no unit waits on an appender.
	quiet := node
	quiet.ID = "host/4242/quiet"
	quiet.Status = &checkpoint.NodeStatus{Horizon: status.Horizon}
	for _, u := range status.Units {
		u.WaitingOn = nil
		quiet.Status.Units = append(quiet.Status.Units, u)
	}
	withQuietStatus := func() error { return cps.Heartbeat(ctx, conn, quiet) }
	const rounds, perRound = 5, 200
	var took [3]time.Duration
	b.ResetTimer()
	for range b.N {
		took = [3]time.Duration{}
		for range rounds {
			for i, f := range []func() error{baseline, withStatus, withQuietStatus} {
				start := time.Now()
				for range perRound {
					if err := f(); err != nil {
						b.Fatal(err)
					}
				}
				took[i] += time.Since(start)
			}
		}
	}
	b.StopTimer()
	per := func(d time.Duration) time.Duration { return d / (rounds * perRound) }
	b.ReportMetric(float64(per(took[1]).Microseconds()), "µs/heartbeat")
	fmt.Printf("\nHeartbeat, %d each, interleaved on one connection\n", rounds*perRound)
	fmt.Println("| heartbeat | per heartbeat | ratio |\n|---|---|---|")
	fmt.Printf("| hand-written pgx, no status (before migration 0006) | %s | 1.00 |\n", per(took[0]))
	fmt.Printf("| Heartbeat with the live status of 32 units, none waiting | %s | %.2f |\n", per(took[2]), float64(took[2])/float64(took[0]))
	fmt.Printf("| Heartbeat with the live status of 32 units, all waiting on an appender | %s | %.2f |\n", per(took[1]), float64(took[1])/float64(took[0]))
}
