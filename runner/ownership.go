package runner

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"hash/fnv"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/eventline/eventline/checkpoint"
)

// Ownership (DESIGN.md G6): every runner process is a node that sends a heartbeat listing the
// projections it can run. Every node computes the same assignment of work units (projection,
// version, partition) to the live nodes that have them, evenly, and claims a lease on its units
// in their checkpoint rows; it renews the leases with every heartbeat and gives up units that are
// now assigned elsewhere, after the batch in flight. A node that dies stops renewing; its leases
// expire and the units' new owners claim them. A node that lost a lease but still runs (paused,
// cut off) cannot commit: the checkpoint compare-and-set requires the owner.

func newNodeID() string {
	host, _ := os.Hostname()
	var b [3]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s/%d/%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}

// unitSpec is how a node advertises a projection: "name@version/partitions".
func unitSpec(name string, version, partitions int) string {
	return fmt.Sprintf("%s@%d/%d", name, version, partitions)
}

func parseUnitSpec(s string) (name string, version, partitions int, ok bool) {
	at := strings.LastIndex(s, "@")
	slash := strings.LastIndex(s, "/")
	if at < 0 || slash < at {
		return "", 0, 0, false
	}
	v, err1 := strconv.Atoi(s[at+1 : slash])
	p, err2 := strconv.Atoi(s[slash+1:])
	if err1 != nil || err2 != nil || p < 1 {
		return "", 0, 0, false
	}
	return s[:at], v, p, true
}

// assign computes which node runs each unit: units in key order go to the candidate (a live node
// that advertises the unit's projection, version and partition count) with the fewest units so
// far, ties broken by a hash of unit and node so that equal loads spread. Every node computes the
// same result from the same node list.
func assign(nodes []checkpoint.Node) map[checkpoint.Key]string {
	type unit struct {
		key   checkpoint.Key
		nodes []string
	}
	units := map[checkpoint.Key]*unit{}
	for _, n := range nodes {
		for _, spec := range n.Projections {
			name, version, parts, ok := parseUnitSpec(spec)
			if !ok {
				continue
			}
			for p := 0; p < parts; p++ {
				k := checkpoint.Key{Projection: name, Version: version, Partitions: parts, Partition: p}
				u := units[k]
				if u == nil {
					u = &unit{key: k}
					units[k] = u
				}
				u.nodes = append(u.nodes, n.ID)
			}
		}
	}
	keys := make([]checkpoint.Key, 0, len(units))
	for k := range units {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b checkpoint.Key) int { return strings.Compare(a.String(), b.String()) })
	load := map[string]int{}
	out := make(map[checkpoint.Key]string, len(keys))
	for _, k := range keys {
		best, bestHash := "", uint64(0)
		for _, n := range units[k].nodes {
			h := fnv.New64a()
			h.Write([]byte(k.String() + "|" + n))
			hv := h.Sum64()
			if best == "" || load[n] < load[best] || (load[n] == load[best] && hv > bestHash) {
				best, bestHash = n, hv
			}
		}
		out[k] = best
		load[best]++
	}
	return out
}

// coordinator starts and stops this node's workers as ownership moves.
type coordinator struct {
	r       *Runner
	hardCtx context.Context
	wg      sync.WaitGroup
	wake    chan struct{}
}

func (r *Runner) specs() []string {
	seen := map[string]bool{}
	var out []string
	for _, w := range r.workers {
		s := unitSpec(w.key.Projection, w.key.Version, w.parts)
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// coordinate runs until ctx ends; then it stops every worker (letting its batch finish), waits
// for them, and hands their units over.
func (c *coordinator) coordinate(ctx context.Context) error {
	r := c.r
	host, _ := os.Hostname()
	self := checkpoint.Node{ID: r.nodeID, Hostname: host, PID: os.Getpid(), Projections: r.specs()}
	defer c.shutdown(self)
	tick := time.NewTicker(r.cfg.HeartbeatInterval)
	defer tick.Stop()
	for {
		if err := c.rebalance(ctx, self); err != nil && ctx.Err() == nil {
			r.log.Warn("ownership: rebalance failed", zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		case <-c.wake:
		}
	}
}

func (c *coordinator) rebalance(ctx context.Context, self checkpoint.Node) error {
	r := c.r
	if err := r.cps.Heartbeat(ctx, r.pool, self); err != nil {
		return err
	}
	if err := r.cps.ForgetNodes(ctx, r.pool, 10*r.cfg.NodeTimeout); err != nil {
		return err
	}
	nodes, err := r.cps.Nodes(ctx, r.pool, r.cfg.NodeTimeout)
	if err != nil {
		return err
	}
	assigned := assign(nodes)
	kept, err := r.cps.Renew(ctx, r.pool, r.nodeID, r.cfg.Lease)
	if err != nil {
		return err
	}
	owned := map[checkpoint.Key]bool{}
	for _, k := range kept {
		owned[k.Normalize()] = true
	}
	for _, w := range r.workers {
		want := assigned[w.key] == r.nodeID
		if w.running() && (!want || !owned[w.key]) {
			c.stopWorker(w)
		}
		// Release what is owned but assigned elsewhere, also when an earlier release failed:
		// Renew would otherwise keep extending a lease this process no longer uses.
		if owned[w.key] && !want {
			if err := r.cps.Release(ctx, r.pool, w.key, r.nodeID); err != nil {
				return err
			}
			r.notifyControl(ctx)
		}
		if !w.running() && want {
			ok, err := r.cps.Claim(ctx, r.pool, w.key, r.nodeID, r.cfg.Lease)
			if err != nil {
				return err
			}
			if ok {
				c.startWorker(ctx, w)
			}
		}
	}
	return nil
}

func (c *coordinator) startWorker(ctx context.Context, w *worker) {
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	w.mu.Lock()
	w.stop, w.done = cancel, done
	w.mu.Unlock()
	w.loaded = false
	w.log.Info("ownership acquired")
	if f := c.r.cfg.Hooks.OwnershipChanged; f != nil {
		f(w.key, true)
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer close(done)
		w.run(wctx, c.hardCtx)
	}()
}

// stopWorker stops w after its batch in flight and waits for it.
func (c *coordinator) stopWorker(w *worker) {
	w.mu.Lock()
	stop, done := w.stop, w.done
	w.stop, w.done = nil, nil
	w.mu.Unlock()
	if stop == nil {
		return
	}
	stop()
	<-done
	w.log.Info("ownership given up")
	if f := c.r.cfg.Hooks.OwnershipChanged; f != nil {
		f(w.key, false)
	}
}

func (c *coordinator) shutdown(self checkpoint.Node) {
	r := c.r
	for _, w := range r.workers {
		w.mu.Lock()
		stop := w.stop
		w.mu.Unlock()
		if stop != nil {
			stop()
		}
	}
	c.wg.Wait()
	// Hand over at once: release the leases and leave the node list, then tell the others.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(c.hardCtx), 5*time.Second)
	defer cancel()
	for _, w := range r.workers {
		if w.running() {
			c.stopWorker(w)
		}
		if err := r.cps.Release(ctx, r.pool, w.key, r.nodeID); err != nil {
			r.log.Warn("ownership: release at shutdown failed", zap.Error(err))
		}
	}
	if err := r.cps.RemoveNode(ctx, r.pool, self.ID); err != nil {
		r.log.Warn("ownership: leaving failed", zap.Error(err))
	}
	r.notifyControl(ctx)
}

// notifyControl tells the other nodes to rebalance now.
func (r *Runner) notifyControl(ctx context.Context) {
	if _, err := r.pool.Exec(ctx, `SELECT pg_notify($1, $2)`, r.cfg.ControlChannel, r.nodeID); err != nil && ctx.Err() == nil {
		r.log.Debug("ownership: notify failed", zap.Error(err))
	}
}
