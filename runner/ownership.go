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

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/eventline/eventline/internal/checkpoint"
	"github.com/eventline/eventline/internal/lifecycle"
)

// Ownership (docs/design.md, guarantee G6): every runner process is a node that sends a heartbeat
// listing the projection versions it has code for. The units are the partitions of the layouts
// the lifecycle records name (the active one, and a target being brought in). Every node computes
// the same assignment of units to the live nodes that have their version, evenly, and claims a
// lease on its units in their checkpoint rows; it renews the leases with every heartbeat and gives
// up units that are now assigned elsewhere, after the batch in flight. A node that dies stops
// renewing; its leases expire and the units' new owners claim them. A node that lost a lease but
// still runs (paused, cut off) cannot commit: the checkpoint compare-and-set requires the owner.
//
// Liveness never depends on handlers: the coordinator works on its own connection (a pool
// exhausted by slow batches cannot starve it), its statements skip rows locked by batches in
// flight, and it never waits for a worker to stop.

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

// assign computes which node runs each unit: the units of every record's layouts, in key order,
// go to the candidate (a live node that advertises the unit's projection and version) with the
// fewest units so far, ties broken by a hash of unit and node so that equal loads spread. Every
// node computes the same result from the same node list and records.
func assign(nodes []checkpoint.Node, records []lifecycle.Record) map[checkpoint.Key]string {
	type pv struct {
		name    string
		version int
	}
	have := map[pv][]string{}
	for _, n := range nodes {
		for _, spec := range n.Projections {
			name, version, _, ok := parseUnitSpec(spec)
			if ok && !slices.Contains(have[pv{name, version}], n.ID) {
				have[pv{name, version}] = append(have[pv{name, version}], n.ID)
			}
		}
	}
	var keys []checkpoint.Key
	for _, rec := range records {
		for _, l := range rec.Units() {
			if len(have[pv{rec.Projection, l.Version}]) == 0 {
				continue
			}
			for p := 0; p < l.Partitions; p++ {
				keys = append(keys, checkpoint.Key{Projection: rec.Projection, Version: l.Version, Partitions: l.Partitions, Partition: p})
			}
		}
	}
	slices.SortFunc(keys, func(a, b checkpoint.Key) int { return strings.Compare(a.String(), b.String()) })
	load := map[string]int{}
	out := make(map[checkpoint.Key]string, len(keys))
	for _, k := range keys {
		best, bestHash := "", uint64(0)
		for _, n := range have[pv{k.Projection, k.Version}] {
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
	conn    *pgx.Conn // its own connection; reopened after an error
}

func (r *Runner) specs() []string {
	var out []string
	for _, g := range r.regs {
		out = append(out, unitSpec(g.name, g.code.Version, g.code.Partitions))
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
			c.closeConn()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		case <-c.wake:
		}
	}
}

func (c *coordinator) db(ctx context.Context) (*pgx.Conn, error) {
	if c.conn != nil && !c.conn.IsClosed() {
		return c.conn, nil
	}
	conn, err := pgx.ConnectConfig(ctx, c.r.pool.Config().ConnConfig.Copy())
	if err != nil {
		return nil, fmt.Errorf("ownership: connect: %w", err)
	}
	c.conn = conn
	return conn, nil
}

func (c *coordinator) closeConn() {
	if c.conn != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = c.conn.Close(ctx)
		c.conn = nil
	}
}

func (c *coordinator) rebalance(ctx context.Context, self checkpoint.Node) error {
	r := c.r
	db, err := c.db(ctx)
	if err != nil {
		r.beats.record(err)
		return err
	}
	var info HeartbeatInfo
	self.Status, info = r.liveStatus()
	err = r.cps.Heartbeat(ctx, db, self)
	r.beats.record(err)
	if err != nil {
		return err
	}
	// After the leases are renewed: reporting to the hook never delays or fails them.
	defer r.reportHeartbeat(ctx, db, info)
	if err := r.cps.ForgetNodes(ctx, db, 10*r.cfg.NodeTimeout); err != nil {
		return err
	}
	nodes, err := r.cps.Nodes(ctx, db, r.cfg.NodeTimeout)
	if err != nil {
		return err
	}
	records, err := r.lc.List(ctx, db)
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.nodes = nodes
	r.mu.Unlock()
	assigned := assign(nodes, records)
	kept, err := r.cps.Renew(ctx, db, r.nodeID, r.cfg.Lease)
	if err != nil {
		return err
	}
	owned := map[checkpoint.Key]bool{}
	for _, k := range kept {
		owned[k.Normalize()] = true
	}
	// Workers for the units assigned here, of the projections registered here.
	r.mu.Lock()
	for k, n := range assigned {
		if g := r.byName[k.Projection]; n == r.nodeID && g != nil && g.code.Version == k.Version && r.workers[k] == nil {
			r.workers[k] = r.newWorker(g, k)
		}
	}
	workers := make([]*worker, 0, len(r.workers))
	for _, w := range r.workers {
		workers = append(workers, w)
	}
	r.mu.Unlock()
	for _, w := range workers {
		want := assigned[w.key] == r.nodeID
		running := w.running()
		if running && (!want || !owned[w.key]) {
			w.cancel() // it stops after its batch in flight; the lease is released once it has
			continue
		}
		// Release what is owned but assigned elsewhere, also when an earlier release failed:
		// Renew would otherwise keep extending a lease this process no longer uses.
		if owned[w.key] && !want && !running {
			if err := r.cps.Release(ctx, db, w.key, r.nodeID); err != nil {
				return err
			}
			r.notifyControlOn(ctx, db)
		}
		if !running && want {
			ok, err := r.cps.Claim(ctx, db, w.key, r.nodeID, r.cfg.Lease)
			if err != nil {
				return err
			}
			if ok {
				c.startWorker(ctx, w)
			}
		}
		if !running && !want && !owned[w.key] {
			r.mu.Lock()
			delete(r.workers, w.key)
			r.mu.Unlock()
		}
	}
	return nil
}

// newWorker returns a worker for unit key of g's projection.
func (r *Runner) newWorker(g *registration, key checkpoint.Key) *worker {
	log := g.log.With(zap.Int("partition", key.Partition))
	if key.Partitions > 1 {
		log = log.With(zap.Int("partitions", key.Partitions))
	}
	return &worker{
		g: g, key: key, unit: unitOf(key), layout: lifecycle.Layout{Version: key.Version, Partitions: key.Partitions},
		log:    log,
		limit:  -1,
		reload: make(chan struct{}, 1),
	}
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
		f(w.unit, true)
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer c.r.wakeCoordinator()
		defer close(done)
		defer func() {
			w.mu.Lock()
			w.stop, w.done = nil, nil
			w.mu.Unlock()
			w.log.Info("ownership given up")
			if f := c.r.cfg.Hooks.OwnershipChanged; f != nil {
				f(w.unit, false)
			}
		}()
		w.run(wctx, c.hardCtx)
	}()
}

// cancel asks w to stop after its batch in flight, without waiting.
func (w *worker) cancel() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stop != nil {
		w.stop()
	}
}

func (c *coordinator) shutdown(self checkpoint.Node) {
	r := c.r
	r.mu.Lock()
	workers := make([]*worker, 0, len(r.workers))
	for _, w := range r.workers {
		workers = append(workers, w)
	}
	r.mu.Unlock()
	for _, w := range workers {
		w.cancel()
	}
	c.wg.Wait()
	// Hand over at once: release the leases and leave the node list, then tell the others.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(c.hardCtx), 5*time.Second)
	defer cancel()
	defer c.closeConn()
	db, err := c.db(ctx)
	if err != nil {
		r.log.Warn("ownership: leaving failed", zap.Error(err))
		return
	}
	for _, w := range workers {
		if err := r.cps.Release(ctx, db, w.key, r.nodeID); err != nil {
			r.log.Warn("ownership: release at shutdown failed", zap.Error(err))
		}
	}
	if err := r.cps.RemoveNode(ctx, db, self.ID); err != nil {
		r.log.Warn("ownership: leaving failed", zap.Error(err))
	}
	r.notifyControlOn(ctx, db)
}

// notifyControl tells the other nodes to rebalance and look at the lifecycles now.
func (r *Runner) notifyControl(ctx context.Context) {
	r.notifyControlOn(ctx, r.pool)
}

func (r *Runner) notifyControlOn(ctx context.Context, db interface {
	Exec(context.Context, string, ...any) (pgconn.CommandTag, error)
}) {
	if _, err := db.Exec(ctx, `SELECT pg_notify($1, $2)`, r.names.ControlChannel, r.nodeID); err != nil && ctx.Err() == nil {
		r.log.Debug("ownership: notify failed", zap.Error(err))
	}
}
