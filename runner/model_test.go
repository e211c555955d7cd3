package runner_test

// TestLifecycleModel: a seeded, model-based randomized test of the projection lifecycle. A random
// sequence of operations (appends, also in the background; runner processes started, stopped
// gracefully, killed; newer versions deployed, rolled back; partition counts changed; pause,
// resume, rebuild through the API and the CLI's requests; handlers made to fail and fixed; dead
// letters retried and discarded) runs against real runner processes (in-process runners, and
// child OS processes for SIGKILL), and after every step the invariants below are checked on one
// consistent snapshot of the database (REPEATABLE READ), after letting things settle where a
// bound is needed.
//
// Replay a failure with EVENTLINE_MODEL_SEED=<seed> (the seed is logged at the start and in every
// failure message; the operations follow from it, the interleavings of the processes do not).
// EVENTLINE_MODEL_STEPS sets the number of steps, EVENTLINE_MODEL_DURATION (e.g. "3m") makes it
// run for that long instead (make soak).

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/eventline/eventline"
	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/eventstore/postgres"
	"github.com/eventline/eventline/internal/checkpoint"
	"github.com/eventline/eventline/internal/lifecycle"
	"github.com/eventline/eventline/projector"
	"github.com/eventline/eventline/runner"
)

const (
	modelSeedEnv     = "EVENTLINE_MODEL_SEED"
	modelStepsEnv    = "EVENTLINE_MODEL_STEPS"
	modelDurationEnv = "EVENTLINE_MODEL_DURATION"
	modelChildEnv    = "EVENTLINE_MODEL_CHILD_DATABASE_URL"
	modelChildCode   = "EVENTLINE_MODEL_CHILD_CODE" // "version/partitions/batch size"

	modelDefaultSteps = 30
	modelMaxVersion   = 8 // deploys stop there (every version replays the whole history)
	modelMaxProcs     = 5
	modelSettle       = 25 * time.Second
)

// The projections under test, registered by every process with the process's version and
// partition count: ms (stop policy), md (dead-letter policy, sequenced), mx (detached).
var (
	modelNames     = []string{"ms", "md", "mx"}
	modelAttached  = []string{"ms", "md"}
	modelAggTypes  = []string{"acct", "order"}
	modelAggIDs    = 8
	errModelPoison = errors.New("poisoned event")
)

// A child process of this test binary runs one model runner process until SIGTERM (or SIGKILL).
func init() {
	if url := os.Getenv(modelChildEnv); url != "" {
		os.Exit(modelChildMain(url))
	}
}

// modelProj is the projection under test. Version N applies into its own table <name>_v<N>
// (global position, aggregate, aggregate version, in the batch's transaction); Reset empties that
// table and logs, in model_resets, in which role of the version it was called; Activate logs in
// model_cutovers, in the cut-over transaction, what the version it retires had applied. A handler
// fails on the events listed in model_poison for its projection.
type modelProj struct {
	name           string
	version, parts int
}

func (p *modelProj) Name() string    { return p.name }
func (p *modelProj) Version() int    { return p.version }
func (p *modelProj) Partitions() int { return p.parts }

func modelTable(name string, version int) string {
	return pgx.Identifier{fmt.Sprintf("%s_v%d", name, version)}.Sanitize()
}

type modelExecer interface {
	Exec(context.Context, string, ...any) (pgconn.CommandTag, error)
}

func createModelTable(ctx context.Context, db modelExecer, name string, version int) error {
	_, err := db.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+modelTable(name, version)+` (
		seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, global_position bigint NOT NULL,
		aggregate_type text NOT NULL, aggregate_id text NOT NULL, aggregate_version bigint NOT NULL)`)
	return err
}

func (p *modelProj) Setup(ctx context.Context, tx pgx.Tx) error {
	// The test creates the tables before it starts a process of the version; this is for form.
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(7231)`); err != nil {
		return err
	}
	return createModelTable(ctx, tx, p.name, p.version)
}

func (p *modelProj) Handle(ctx context.Context, tx pgx.Tx, events []eventstore.PersistedEvent) error {
	positions := make([]int64, len(events))
	for i, ev := range events {
		positions[i] = ev.GlobalPosition
	}
	var bad int64
	if err := tx.QueryRow(ctx, `SELECT coalesce(min(position), 0) FROM model_poison WHERE projection = $1 AND position = ANY($2)`,
		p.name, positions).Scan(&bad); err != nil {
		return err
	}
	if bad > 0 {
		return fmt.Errorf("%s v%d: event %d: %w", p.name, p.version, bad, errModelPoison)
	}
	rows := make([][]any, len(events))
	for i, ev := range events {
		rows[i] = []any{ev.GlobalPosition, ev.AggregateType, ev.AggregateID, ev.AggregateVersion}
	}
	_, err := tx.CopyFrom(ctx, pgx.Identifier{fmt.Sprintf("%s_v%d", p.name, p.version)},
		[]string{"global_position", "aggregate_type", "aggregate_id", "aggregate_version"}, pgx.CopyFromRows(rows))
	return err
}

func (p *modelProj) Reset(ctx context.Context, tx pgx.Tx) error {
	if _, err := tx.Exec(ctx, `DELETE FROM `+modelTable(p.name, p.version)); err != nil {
		return err
	}
	// The record as the transition found it (it saves its changes after Reset).
	_, err := tx.Exec(ctx, `INSERT INTO model_resets (projection, version, active_version, target_version, target_mode)
		SELECT $1, $2, active_version, coalesce(target_version, 0), coalesce(target_mode, '')
		FROM eventline_projections WHERE projection = $1`, p.name, p.version)
	return err
}

func (p *modelProj) Activate(ctx context.Context, tx pgx.Tx) error {
	var old int
	if err := tx.QueryRow(ctx, `SELECT active_version FROM eventline_projections WHERE projection = $1`, p.name).Scan(&old); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, `INSERT INTO model_cutovers (projection, from_version, to_version, old_count, old_max_seq)
		SELECT $1, $2, $3, count(*), coalesce(max(seq), 0) FROM `+modelTable(p.name, old), p.name, old, p.version)
	return err
}

// modelDetached is the detached handler under test: it notes every event it handles (outside the
// batch's transaction, as a side effect would be).
type modelDetached struct {
	version, parts int
	pool           *pgxpool.Pool
}

func (d *modelDetached) Name() string    { return "mx" }
func (d *modelDetached) Version() int    { return d.version }
func (d *modelDetached) Partitions() int { return d.parts }
func (d *modelDetached) HandleEvent(ctx context.Context, ev eventstore.PersistedEvent) error {
	_, err := d.pool.Exec(ctx, `INSERT INTO model_seen (version, global_position) VALUES ($1, $2)`, d.version, ev.GlobalPosition)
	return err
}

func registerModel(r *runner.Runner, pool *pgxpool.Pool, version, parts int) error {
	return errors.Join(
		r.Register(&modelProj{name: "ms", version: version, parts: parts}),
		r.Register(&modelProj{name: "md", version: version, parts: parts}, runner.WithFailurePolicy(runner.DeadLetter)),
		r.RegisterDetached(&modelDetached{version: version, parts: parts, pool: pool}))
}

// tuneModel shortens the timings so that a killed process's work moves within about 2 s.
func tuneModel(cfg runner.Config, batch int) runner.Config {
	cfg.BatchSize = batch
	cfg.PollInterval = 200 * time.Millisecond
	cfg.HeartbeatInterval = 100 * time.Millisecond
	cfg.NodeTimeout = time.Second
	cfg.Lease = 1500 * time.Millisecond
	cfg.PersistIdle = 20 * time.Millisecond
	cfg.RetryMin, cfg.RetryMax = 5*time.Millisecond, 100*time.Millisecond
	cfg.ReconnectDelay = 100 * time.Millisecond
	return cfg
}

func modelChildMain(url string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	var version, parts, batch int
	if _, err := fmt.Sscanf(os.Getenv(modelChildCode), "%d/%d/%d", &version, &parts, &batch); err != nil {
		fmt.Fprintln(os.Stderr, "model child:", err)
		return 2
	}
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		fmt.Fprintln(os.Stderr, "model child:", err)
		return 1
	}
	defer pool.Close()
	store := postgres.NewStore(&postgres.StoreConfig{Names: eventline.Names{NotifyChannel: "eventline_events"}})
	r, err := runner.New(pool, store, tuneModel(runner.Config{Logger: zap.NewNop()}, batch))
	if err == nil {
		err = registerModel(r, pool, version, parts)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "model child:", err)
		return 1
	}
	fmt.Println("node", r.NodeID())
	if err := r.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "model child:", err)
		return 1
	}
	return 0
}

// modelProc is one runner process: in this process (r) or a child OS process (cmd).
type modelProc struct {
	id             int
	version, parts int
	batch          int
	abrupt         bool // in-process: ShutdownTimeout 1ms, so a stop cancels the batch in flight

	r      *runner.Runner
	cancel context.CancelFunc
	done   chan error // Run's result

	cmd    *exec.Cmd
	exited chan error // the child's exit
	node   string
}

func (p *modelProc) String() string {
	kind := "in-process"
	if p.cmd != nil {
		kind = "child"
	}
	return fmt.Sprintf("p%d(v%d/%d, %s, batch %d)", p.id, p.version, p.parts, kind, p.batch)
}

type modelKey struct {
	name    string
	version int
}

type modelTableState struct{ count, maxSeq int64 }

// modelPause is what a projection looked like when a Pause returned.
type modelPause struct {
	maxSeq    map[int]int64 // per version table
	positions map[checkpoint.Key]int64
	resets    map[int]int // resets per version (rebuilds and abandoned builds)
}

type model struct {
	t       *testing.T
	h       *harness
	ctx     context.Context
	seed    uint64
	rng     *rand.Rand
	step    int
	history []string
	cps     *checkpoint.Store
	short   bool
	start   time.Time

	procs      []*modelProc
	nextProc   int
	maxVersion int

	paused       map[string]bool
	pauses       map[string]*modelPause
	poisoned     map[string]map[int64]bool // now
	poisonedEver map[string]map[int64]bool
	discarded    map[int]map[int64]bool // md: version -> positions discarded
	rebuildCalls map[string]int         // Runner.Rebuild calls
	rebuildOK    map[string]int         // ... that returned nil
	rebuildReqs  map[string]int         // CLI RequestRebuild calls that succeeded
	frozen       map[modelKey]modelTableState
	lastActive   map[string]lifecycle.Layout
	cutovers     int

	loadMu     sync.Mutex
	loadCancel context.CancelFunc
	loadDone   chan struct{}
	loadErr    error
	loadTxs    int
}

func modelSeed(t *testing.T) uint64 {
	if s := os.Getenv(modelSeedEnv); s != "" {
		seed, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: %v", modelSeedEnv, s, err)
		}
		return seed
	}
	return uint64(time.Now().UnixNano())
}

func TestLifecycleModel(t *testing.T) {
	t.Parallel()
	seed := modelSeed(t)
	steps, duration := modelDefaultSteps, time.Duration(0)
	if s := os.Getenv(modelStepsEnv); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("%s=%q: want a positive number", modelStepsEnv, s)
		}
		steps = n
	}
	if s := os.Getenv(modelDurationEnv); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			t.Fatalf("%s=%q: want a duration such as 3m", modelDurationEnv, s)
		}
		duration = d
		if os.Getenv(modelStepsEnv) == "" {
			steps = 1 << 30
		}
	}
	t.Logf("lifecycle model: seed %d (replay with %s=%d), steps %d, duration %s", seed, modelSeedEnv, seed, min(steps, 1<<20), duration)

	ctx, cancel := context.WithTimeout(context.Background(), duration+3*time.Minute)
	defer cancel()
	h := newHarness(t, true)
	m := &model{
		t: t, h: h, ctx: ctx, seed: seed, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		short: testing.Short(), start: time.Now(),
		paused: map[string]bool{}, pauses: map[string]*modelPause{},
		poisoned: map[string]map[int64]bool{}, poisonedEver: map[string]map[int64]bool{},
		discarded:    map[int]map[int64]bool{},
		rebuildCalls: map[string]int{}, rebuildOK: map[string]int{}, rebuildReqs: map[string]int{},
		frozen: map[modelKey]modelTableState{}, lastActive: map[string]lifecycle.Layout{},
	}
	cps, err := checkpoint.New(eventline.Names{})
	if err != nil {
		t.Fatal(err)
	}
	m.cps = cps
	t.Cleanup(m.cleanup)
	m.setUp()

	start := time.Now()
	ops := m.ops()
	for m.step = 1; m.step <= steps; m.step++ {
		if duration > 0 && time.Since(start) >= duration {
			break
		}
		op := m.pick(ops)
		m.note("%s", op.name)
		op.run()
		m.checkProcs()
		m.check("after " + op.name)
		m.settle()
		m.check("settled after " + op.name)
	}
	done := m.step - 1
	m.step = -1
	m.finish()
	t.Logf("lifecycle model: seed %d: %d steps (%d notes), %d versions, %d version changes seen, %d background appends, in %s",
		seed, done, len(m.history), m.maxVersion, m.cutovers, m.loadTxs, time.Since(start).Round(time.Millisecond))
}

func (m *model) setUp() {
	m.exec(`CREATE TABLE model_poison (projection text NOT NULL, position bigint NOT NULL, PRIMARY KEY (projection, position));
		CREATE TABLE model_resets (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, projection text NOT NULL,
			version int NOT NULL, active_version int NOT NULL, target_version int NOT NULL, target_mode text NOT NULL);
		CREATE TABLE model_cutovers (projection text NOT NULL, from_version int NOT NULL, to_version int NOT NULL,
			old_count bigint NOT NULL, old_max_seq bigint NOT NULL);
		CREATE TABLE model_seen (version int NOT NULL, global_position bigint NOT NULL)`)
	m.newVersion()
	for i := 0; i < 3; i++ {
		m.appendTx(m.ctx, m.rng, "")
	}
	m.startProc(1, 1+m.rng.IntN(3), false)
	m.waitUntil("the records", 30*time.Second, func() (bool, string) {
		recs, err := m.h.lc().List(m.ctx, m.h.db.Pool, modelNames...)
		if err != nil {
			return false, err.Error()
		}
		return len(recs) == len(modelNames), fmt.Sprintf("%d records", len(recs))
	})
	m.check("start")
}

// --- failure reporting -------------------------------------------------------------------------

func (m *model) note(format string, args ...any) {
	s := fmt.Sprintf("step %d (%.2fs): ", m.step, time.Since(m.start).Seconds()) + fmt.Sprintf(format, args...)
	m.history = append(m.history, s)
	m.t.Log("model " + s)
}

func (m *model) fatalf(format string, args ...any) {
	m.t.Helper()
	msg := fmt.Sprintf(format, args...)
	m.t.Logf("model state at the failure:\n%s", m.dump())
	hist := m.history
	if len(hist) > 40 {
		hist = hist[len(hist)-40:]
	}
	m.t.Fatalf("lifecycle model, seed %d, step %d (replay with %s=%d): %s\nlast operations:\n  %s",
		m.seed, m.step, modelSeedEnv, m.seed, msg, strings.Join(hist, "\n  "))
}

func (m *model) dump() string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var b strings.Builder
	recs, err := m.h.lc().List(ctx, m.h.db.Pool, modelNames...)
	fmt.Fprintf(&b, "records (err %v):\n", err)
	for _, r := range recs {
		fmt.Fprintf(&b, "  %+v\n", r)
	}
	all, err := m.cps.List(ctx, m.h.db.Pool)
	fmt.Fprintf(&b, "checkpoints (err %v):\n", err)
	for _, c := range all {
		fmt.Fprintf(&b, "  %s: position %d, failed %d, owner %q, lease %s, error %q\n", c.Key, c.Position, c.FailedPosition,
			c.Owner, c.LeaseUntil.Format("15:04:05.000"), c.LastError)
	}
	dls, err := m.cps.DeadLetters(ctx, m.h.db.Pool, "")
	fmt.Fprintf(&b, "dead letters (err %v):\n", err)
	for _, d := range dls {
		fmt.Fprintf(&b, "  %d: %s v%d event %d (%s/%s), attempts %d, retry requested %v, blocked by %d: %s\n", d.ID, d.Projection,
			d.Version, d.GlobalPosition, d.AggregateType, d.AggregateID, d.Attempts, d.RetryRequested, d.BlockedBy, d.Error)
	}
	for _, p := range m.inProcess() {
		sts, err := p.r.Status(ctx)
		if err != nil {
			fmt.Fprintf(&b, "%s: status: %v\n", p, err)
		}
		for _, st := range sts {
			if st.LastError != "" || st.State != "running" {
				fmt.Fprintf(&b, "  %s: %s v%d %d/%d: %s at %d: %s\n", p, st.Name, st.Version, st.Partition, st.Partitions, st.State,
					st.Position, st.LastError)
			}
		}
	}
	var head int64
	_ = m.h.db.Pool.QueryRow(ctx, `SELECT coalesce(max(global_position), 0) FROM events`).Scan(&head)
	fmt.Fprintf(&b, "head %d; processes:", head)
	for _, p := range m.procs {
		fmt.Fprintf(&b, " %s", p)
	}
	fmt.Fprintf(&b, "\npoisoned %v; paused %v\n", m.poisoned, m.paused)
	return b.String()
}

func (m *model) exec(sql string, args ...any) {
	m.t.Helper()
	if _, err := m.h.db.Pool.Exec(m.ctx, sql, args...); err != nil {
		m.fatalf("%s: %v", sql, err)
	}
}

// waitUntil polls cond until it holds; on timeout it fails with cond's last explanation.
func (m *model) waitUntil(what string, timeout time.Duration, cond func() (bool, string)) {
	m.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, why := cond()
		if ok {
			return
		}
		m.checkLoad()
		if time.Now().After(deadline) {
			m.fatalf("timed out after %s waiting for %s: %s", timeout, what, why)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// --- processes ---------------------------------------------------------------------------------

// newVersion deploys the code of a new version: its tables exist before any of its processes.
func (m *model) newVersion() int {
	m.maxVersion++
	for _, n := range modelAttached {
		if err := createModelTable(m.ctx, m.h.db.Pool, n, m.maxVersion); err != nil {
			m.fatalf("create table: %v", err)
		}
	}
	return m.maxVersion
}

func (m *model) startProc(version, parts int, child bool) *modelProc {
	m.t.Helper()
	m.nextProc++
	p := &modelProc{id: m.nextProc, version: version, parts: parts, batch: []int{3, 10, 40}[m.rng.IntN(3)]}
	if child && !m.short {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), modelChildEnv+"="+m.h.db.URL, fmt.Sprintf("%s=%d/%d/%d", modelChildCode, version, parts, p.batch))
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			m.fatalf("child: %v", err)
		}
		if err := cmd.Start(); err != nil {
			m.fatalf("child: %v", err)
		}
		p.cmd, p.exited = cmd, make(chan error, 1)
		sc := bufio.NewScanner(out)
		if sc.Scan() {
			p.node = strings.TrimPrefix(sc.Text(), "node ")
		}
		go func() {
			for sc.Scan() { // drain until the child exits
			}
			p.exited <- cmd.Wait()
		}()
		if p.node == "" {
			m.fatalf("child %s printed no node ID: %v", p, <-p.exited)
		}
	} else {
		p.abrupt = m.rng.IntN(3) == 0
		cfg := m.h.config()
		cfg.Logger = cfg.Logger.Named(fmt.Sprintf("p%d", p.id))
		cfg = tuneModel(cfg, p.batch)
		if p.abrupt {
			cfg.ShutdownTimeout = time.Millisecond
		}
		r, err := runner.New(m.h.db.Pool, m.h.store, cfg)
		if err == nil {
			err = registerModel(r, m.h.db.Pool, version, parts)
		}
		if err != nil {
			m.fatalf("runner: %v", err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		p.r, p.cancel, p.done = r, cancel, make(chan error, 1)
		go func() { p.done <- r.Run(ctx) }()
		p.node = r.NodeID()
	}
	m.procs = append(m.procs, p)
	m.note("started %s, node %s", p, p.node)
	return p
}

// stopProc stops p: gracefully (SIGTERM, or cancelling Run), or killed (SIGKILL; an in-process
// runner is cancelled, with its ShutdownTimeout).
func (m *model) stopProc(p *modelProc, kill bool) {
	m.t.Helper()
	m.procs = slices.DeleteFunc(m.procs, func(q *modelProc) bool { return q == p })
	switch {
	case p.cmd != nil && kill:
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		select {
		case <-p.exited:
		case <-time.After(30 * time.Second):
			m.fatalf("%s did not die", p)
		}
		m.note("killed %s (SIGKILL)", p)
	case p.cmd != nil:
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-p.exited:
			if err != nil {
				m.fatalf("%s exited with %v after SIGTERM", p, err)
			}
		case <-time.After(30 * time.Second):
			m.fatalf("%s did not stop after SIGTERM", p)
		}
		m.note("stopped %s (SIGTERM)", p)
	default:
		p.cancel()
		select {
		case err := <-p.done:
			if err != nil {
				m.fatalf("%s: Run returned %v", p, err)
			}
		case <-time.After(30 * time.Second):
			m.fatalf("%s did not stop", p)
		}
		if kill {
			m.note("stopped %s abruptly (shutdown timeout %v)", p, map[bool]string{true: "1ms", false: "default"}[p.abrupt])
		} else {
			m.note("stopped %s", p)
		}
	}
}

// checkProcs fails when a process ended by itself.
func (m *model) checkProcs() {
	m.t.Helper()
	for _, p := range m.procs {
		var ch chan error
		if p.cmd != nil {
			ch = p.exited
		} else {
			ch = p.done
		}
		select {
		case err := <-ch:
			m.fatalf("%s ended by itself: %v", p, err)
		default:
		}
	}
}

func (m *model) cleanup() {
	m.stopLoad()
	for _, p := range m.procs {
		if p.cmd != nil {
			_ = p.cmd.Process.Kill()
			<-p.exited
		} else {
			p.cancel()
			select {
			case <-p.done:
			case <-time.After(30 * time.Second):
				m.t.Errorf("%s did not stop", p)
			}
		}
	}
	m.procs = nil
	if m.t.Failed() {
		m.t.Logf("lifecycle model failed with seed %d: replay with %s=%d", m.seed, modelSeedEnv, m.seed)
	}
}

// live reports whether a live process has the code of version v.
func (m *model) live(v int) bool {
	return slices.ContainsFunc(m.procs, func(p *modelProc) bool { return p.version == v })
}

func (m *model) inProcess() []*modelProc {
	var out []*modelProc
	for _, p := range m.procs {
		if p.r != nil {
			out = append(out, p)
		}
	}
	return out
}

func (m *model) topLive() int {
	top := 0
	for _, p := range m.procs {
		top = max(top, p.version)
	}
	return top
}

// --- appends -----------------------------------------------------------------------------------

// appendTx appends to one or two aggregates in one transaction (sometimes rolled back), and with
// poison set makes one of its events fail that projection's handler. It returns the positions
// committed.
func (m *model) appendTx(ctx context.Context, rng *rand.Rand, poison string) ([]int64, error) {
	var positions []int64
	rollback := poison == "" && rng.IntN(10) == 0
	err := func() error {
		tx, err := m.h.db.Pool.Begin(ctx)
		if err != nil {
			return err
		}
		defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
		for a := 0; a < 1+rng.IntN(2); a++ {
			evs := events(modelAggTypes[rng.IntN(len(modelAggTypes))], fmt.Sprint(rng.IntN(modelAggIDs)), 1+rng.IntN(3))
			res, err := m.h.store.Append(ctx, tx, eventstore.Any(), evs)
			if err != nil {
				return err
			}
			positions = append(positions, res.GlobalPositions()...)
		}
		if poison != "" {
			if _, err := tx.Exec(ctx, `INSERT INTO model_poison (projection, position) VALUES ($1, $2)`,
				poison, positions[rng.IntN(len(positions))]); err != nil {
				return err
			}
		}
		if rollback {
			return tx.Rollback(ctx)
		}
		return tx.Commit(ctx)
	}()
	if err != nil || rollback {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "40P01" {
			err = nil // two appenders locked the same aggregates in opposite orders
		}
		return nil, err
	}
	return positions, nil
}

func (m *model) startLoad() {
	m.loadMu.Lock()
	defer m.loadMu.Unlock()
	if m.loadCancel != nil {
		return
	}
	ctx, cancel := context.WithCancel(m.ctx)
	done := make(chan struct{})
	m.loadCancel, m.loadDone = cancel, done
	rng := rand.New(rand.NewPCG(m.rng.Uint64(), 1))
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			if _, err := m.appendTx(ctx, rng, ""); err != nil {
				if ctx.Err() == nil {
					m.loadMu.Lock()
					m.loadErr = err
					m.loadMu.Unlock()
				}
				return
			}
			m.loadMu.Lock()
			m.loadTxs++
			m.loadMu.Unlock()
			t := time.NewTimer(time.Duration(2+rng.IntN(15)) * time.Millisecond) // pacing, not synchronizing
			select {
			case <-ctx.Done():
			case <-t.C:
			}
			t.Stop()
		}
	}()
}

func (m *model) stopLoad() {
	m.loadMu.Lock()
	cancel, done := m.loadCancel, m.loadDone
	m.loadCancel, m.loadDone = nil, nil
	m.loadMu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

func (m *model) checkLoad() {
	m.t.Helper()
	m.loadMu.Lock()
	err := m.loadErr
	m.loadMu.Unlock()
	if err != nil {
		m.fatalf("background append: %v", err)
	}
}

// --- operations --------------------------------------------------------------------------------

type modelOp struct {
	name   string
	weight func() int
	run    func()
}

func (m *model) pick(ops []modelOp) modelOp {
	total := 0
	ws := make([]int, len(ops))
	for i, op := range ops {
		ws[i] = max(0, op.weight())
		total += ws[i]
	}
	n := m.rng.IntN(total)
	for i, w := range ws {
		if n < w {
			return ops[i]
		}
		n -= w
	}
	panic("unreachable")
}

func (m *model) anyName() string      { return modelNames[m.rng.IntN(len(modelNames))] }
func (m *model) attachedName() string { return modelAttached[m.rng.IntN(len(modelAttached))] }
func (m *model) randomParts() int     { return 1 + m.rng.IntN(3) }
func (m *model) coin(n int) bool      { return m.rng.IntN(n) == 0 }

func (m *model) ops() []modelOp {
	always := func(w int) func() int { return func() int { return w } }
	procsBelow := func(w int) func() int {
		return func() int {
			if len(m.procs) >= modelMaxProcs {
				return 0
			}
			return w
		}
	}
	return []modelOp{
		{"append", always(10), func() {
			for i := 0; i < 1+m.rng.IntN(4); i++ {
				if _, err := m.appendTx(m.ctx, m.rng, ""); err != nil {
					m.fatalf("append: %v", err)
				}
			}
		}},
		{"background load on/off", always(3), func() {
			m.loadMu.Lock()
			on := m.loadCancel != nil
			m.loadMu.Unlock()
			if on {
				m.stopLoad()
				m.note("background load stopped")
			} else {
				m.startLoad()
				m.note("background load started")
			}
		}},
		{"start a process", procsBelow(6), func() {
			v := m.maxVersion
			if m.coin(3) {
				v = 1 + m.rng.IntN(m.maxVersion)
			}
			m.startProc(v, m.randomParts(), m.coin(3))
		}},
		{"deploy a newer version", func() int {
			if m.maxVersion >= modelMaxVersion || len(m.procs) >= modelMaxProcs {
				return 0
			}
			return 3
		}, func() {
			v := m.newVersion()
			m.startProc(v, m.randomParts(), m.coin(3))
			if m.coin(2) { // a rolling deploy that completes: the older processes go
				for _, p := range slices.Clone(m.procs) {
					if p.version < v {
						m.stopProc(p, m.coin(4))
					}
				}
			}
		}},
		{"roll back", func() int {
			if m.topLive() < 2 {
				return 0
			}
			return 2
		}, func() {
			top := m.topLive()
			for _, p := range slices.Clone(m.procs) {
				if p.version == top {
					m.stopProc(p, m.coin(3))
				}
			}
			m.startProc(1+m.rng.IntN(top-1), m.randomParts(), m.coin(3))
		}},
		{"change the partition count", func() int {
			if len(m.procs) == 0 {
				return 0
			}
			return 3
		}, func() {
			v := m.procs[m.rng.IntN(len(m.procs))].version
			parts := m.randomParts()
			old := slices.Clone(m.procs)
			m.startProc(v, parts, m.coin(3))
			if !m.coin(4) { // else: a rolling deploy still in progress, the counts disagree
				for _, p := range old {
					if p.version == v && p.parts != parts {
						m.stopProc(p, m.coin(4))
					}
				}
			}
		}},
		{"stop a process", func() int {
			if len(m.procs) == 0 {
				return 0
			}
			return 3
		}, func() {
			m.stopProc(m.procs[m.rng.IntN(len(m.procs))], false)
		}},
		{"kill a process", func() int {
			if len(m.procs) == 0 {
				return 0
			}
			return 3
		}, func() {
			var children []*modelProc
			for _, p := range m.procs {
				if p.cmd != nil {
					children = append(children, p)
				}
			}
			if len(children) > 0 && !m.coin(4) {
				m.stopProc(children[m.rng.IntN(len(children))], true)
				return
			}
			m.stopProc(m.procs[m.rng.IntN(len(m.procs))], true)
		}},
		{"pause", always(3), func() { m.pause(m.anyName()) }},
		{"resume", always(3), func() { m.resume(m.anyName()) }},
		{"rebuild (Runner.Rebuild)", func() int {
			if len(m.inProcess()) == 0 {
				return 0
			}
			return 2
		}, func() { m.rebuildAPI(m.anyName()) }},
		{"rebuild (CLI request)", always(2), func() { m.rebuildRequest(m.anyName()) }},
		{"make a handler fail", func() int {
			return 3 - len(m.poisoned["ms"]) - len(m.poisoned["md"])
		}, func() {
			n := m.attachedName()
			positions, err := m.appendTx(m.ctx, m.rng, n)
			if err != nil {
				m.fatalf("append: %v", err)
			}
			if positions != nil {
				var pos int64
				if err := m.h.db.Pool.QueryRow(m.ctx, `SELECT max(position) FROM model_poison WHERE projection = $1 AND position = ANY($2)`,
					n, positions).Scan(&pos); err != nil {
					m.fatalf("read poison: %v", err)
				}
				if m.poisoned[n] == nil {
					m.poisoned[n], m.poisonedEver[n] = map[int64]bool{}, map[int64]bool{}
				}
				m.poisoned[n][pos], m.poisonedEver[n][pos] = true, true
				m.note("%s fails on event %d", n, pos)
			}
		}},
		{"fix a handler", func() int {
			return 3 * (len(m.poisoned["ms"]) + len(m.poisoned["md"]))
		}, func() {
			n := m.attachedName()
			if len(m.poisoned[n]) == 0 {
				n = map[string]string{"ms": "md", "md": "ms"}[n]
			}
			m.exec(`DELETE FROM model_poison WHERE projection = $1`, n)
			m.poisoned[n] = map[int64]bool{}
			m.note("%s fixed", n)
			if n == "ms" && !m.coin(4) {
				m.resume(n)
			}
			if n == "md" && !m.coin(4) {
				m.retryAll(false)
			}
		}},
		{"retry a dead letter", always(2), func() { m.deadLetter(false) }},
		{"retry a dead letter and pause at once", always(1), func() {
			if m.deadLetter(false) {
				m.pause("md")
			}
		}},
		{"discard a dead letter", always(1), func() { m.deadLetter(true) }},
	}
}

func (m *model) pause(n string) {
	procs := m.inProcess()
	if len(procs) > 0 && m.coin(2) {
		p := procs[m.rng.IntN(len(procs))]
		if err := p.r.Pause(m.ctx, n); err != nil {
			m.fatalf("%s: Pause %s: %v", p, n, err)
		}
		m.note("paused %s through %s", n, p)
	} else {
		if err := pgx.BeginFunc(m.ctx, m.h.db.Pool, func(tx pgx.Tx) error { return m.h.lc().Pause(m.ctx, tx, n) }); err != nil {
			m.fatalf("CLI pause %s: %v", n, err)
		}
		if err := m.h.lc().WaitIdle(m.ctx, m.h.db.Pool, n); err != nil {
			m.fatalf("CLI pause %s: wait idle: %v", n, err)
		}
		m.note("paused %s (CLI)", n)
	}
	m.paused[n] = true
	if m.pauses[n] == nil {
		m.pauses[n] = m.pauseSnapshot(n)
	}
}

func (m *model) resume(n string) {
	procs := m.inProcess()
	if len(procs) > 0 && m.coin(2) {
		p := procs[m.rng.IntN(len(procs))]
		if err := p.r.Resume(m.ctx, n); err != nil {
			m.fatalf("%s: Resume %s: %v", p, n, err)
		}
		m.note("resumed %s through %s", n, p)
	} else {
		if err := pgx.BeginFunc(m.ctx, m.h.db.Pool, func(tx pgx.Tx) error { return m.h.lc().Resume(m.ctx, tx, n) }); err != nil {
			m.fatalf("CLI resume %s: %v", n, err)
		}
		m.note("resumed %s (CLI)", n)
	}
	m.paused[n] = false
	delete(m.pauses, n)
}

func (m *model) rebuildAPI(n string) {
	procs := m.inProcess()
	p := procs[m.rng.IntN(len(procs))]
	if n != "mx" {
		m.rebuildCalls[n]++
	}
	err := p.r.Rebuild(m.ctx, n)
	switch {
	case n == "mx":
		if !errors.Is(err, runner.ErrDetachedRebuild) {
			m.fatalf("%s: Rebuild of the detached handler: %v; want ErrDetachedRebuild", p, err)
		}
	case err == nil:
		m.rebuildOK[n]++
	case errors.Is(err, runner.ErrWrongVersion):
		// The process does not run the active version (or a cut-over just happened).
	default:
		m.fatalf("%s: Rebuild %s: %v", p, n, err)
	}
	m.note("Rebuild %s through %s: %v", n, p, err)
}

func (m *model) rebuildRequest(n string) {
	err := pgx.BeginFunc(m.ctx, m.h.db.Pool, func(tx pgx.Tx) error { return m.h.lc().RequestRebuild(m.ctx, tx, n) })
	switch {
	case n == "mx":
		if !errors.Is(err, lifecycle.ErrDetachedRebuild) {
			m.fatalf("CLI rebuild of the detached handler: %v; want ErrDetachedRebuild", err)
		}
	case err != nil:
		m.fatalf("CLI rebuild %s: %v", n, err)
	default:
		m.rebuildReqs[n]++
	}
	m.note("CLI rebuild request %s: %v", n, err)
}

// deadLetter asks to retry, or discards, a random dead letter of md; it reports whether there was
// one.
func (m *model) deadLetter(discard bool) bool {
	dls, err := m.cps.DeadLetters(m.ctx, m.h.db.Pool, "md")
	if err != nil {
		m.fatalf("dead letters: %v", err)
	}
	if len(dls) == 0 {
		m.note("no dead letter")
		return false
	}
	d := dls[m.rng.IntN(len(dls))]
	if !discard {
		err := m.cps.RequestRetry(m.ctx, m.h.db.Pool, d.ID)
		if err != nil && !errors.Is(err, checkpoint.ErrNotFound) {
			m.fatalf("retry dead letter %d: %v", d.ID, err)
		}
		m.note("retry dead letter %d (v%d, event %d): %v", d.ID, d.Version, d.GlobalPosition, err)
		return true
	}
	err = m.cps.DeleteDeadLetter(m.ctx, m.h.db.Pool, d.ID)
	switch {
	case err == nil:
		if m.discarded[d.Version] == nil {
			m.discarded[d.Version] = map[int64]bool{}
		}
		m.discarded[d.Version][d.GlobalPosition] = true
	case errors.Is(err, checkpoint.ErrNotFound): // retried or rebuilt meanwhile
	default:
		m.fatalf("discard dead letter %d: %v", d.ID, err)
	}
	m.note("discard dead letter %d (v%d, event %d): %v", d.ID, d.Version, d.GlobalPosition, err)
	return true
}

func (m *model) retryAll(quiet bool) {
	dls, err := m.cps.DeadLetters(m.ctx, m.h.db.Pool, "md")
	if err != nil {
		m.fatalf("dead letters: %v", err)
	}
	for _, d := range dls {
		if err := m.cps.RequestRetry(m.ctx, m.h.db.Pool, d.ID); err != nil && !errors.Is(err, checkpoint.ErrNotFound) {
			m.fatalf("retry dead letter %d: %v", d.ID, err)
		}
	}
	if !quiet {
		m.note("retry all %d dead letters", len(dls))
	}
}

// --- settling ----------------------------------------------------------------------------------

// settle waits until every projection's active layout has applied every event up to the head as
// the step left it, unless it cannot: paused, a unit stopped by a failing handler, no live process
// with the active version's code. With a build barrier and no live process with the target's
// code, the active layout stays at the barrier (docs/design.md, "Version rollback before a
// cut-over"): it must reach it. A pending rebuild request must be carried out.
func (m *model) settle() {
	m.t.Helper()
	head := m.head()
	evs := m.readEvents(head)
	for _, n := range modelNames {
		m.waitUntil(n+" to settle", modelSettle, func() (bool, string) {
			rec, err := m.h.lc().Get(m.ctx, m.h.db.Pool, n)
			if err != nil {
				return false, err.Error()
			}
			cps, err := m.cps.Projection(m.ctx, m.h.db.Pool, n, false)
			if err != nil {
				return false, err.Error()
			}
			switch {
			case rec.Paused:
				return true, ""
			case slices.ContainsFunc(cps, func(c checkpoint.Checkpoint) bool { return c.Stopped() }):
				return true, ""
			case !m.live(rec.Active.Version):
				return true, ""
			case rec.RebuildPending():
				return false, "a rebuild request is pending"
			}
			limit := head
			if rec.Mode == lifecycle.Build && rec.Barrier >= 0 && !m.live(rec.Target.Version) {
				limit = min(limit, rec.Barrier)
			}
			pos := layoutPositions(cps, rec.Active)
			if len(pos) != rec.Active.Partitions {
				return false, fmt.Sprintf("active layout %s has %d checkpoint rows", rec.Active, len(pos))
			}
			for _, e := range evs {
				if e.pos > limit {
					break
				}
				if p := projector.PartitionOf(e.id, rec.Active.Partitions); pos[p] < e.pos {
					return false, fmt.Sprintf("%s partition %d at %d, event %d not applied (limit %d, record %+v)",
						rec.Active, p, pos[p], e.pos, limit, rec)
				}
			}
			return true, ""
		})
	}
}

func layoutPositions(cps []checkpoint.Checkpoint, l lifecycle.Layout) map[int]int64 {
	out := map[int]int64{}
	for _, c := range cps {
		if c.Version == l.Version && c.Partitions == l.Partitions {
			out[c.Partition] = c.Position
		}
	}
	return out
}

func (m *model) head() int64 {
	var head int64
	if err := m.h.db.Pool.QueryRow(m.ctx, `SELECT coalesce(max(global_position), 0) FROM events`).Scan(&head); err != nil {
		m.fatalf("head: %v", err)
	}
	return head
}

type modelEvent struct {
	pos     int64
	typ, id string
	version int64
}

func (m *model) readEvents(upTo int64) []modelEvent {
	evs, err := queryEvents(m.ctx, m.h.db.Pool, upTo)
	if err != nil {
		m.fatalf("read events: %v", err)
	}
	return evs
}

func queryEvents(ctx context.Context, db eventstore.DBTX, upTo int64) ([]modelEvent, error) {
	rows, err := db.Query(ctx, `SELECT global_position, aggregate_type, aggregate_id, aggregate_version FROM events
		WHERE global_position <= $1 ORDER BY global_position`, upTo)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (modelEvent, error) {
		var e modelEvent
		err := r.Scan(&e.pos, &e.typ, &e.id, &e.version)
		return e, err
	})
}

// --- the end -----------------------------------------------------------------------------------

// finish makes everything healthy (no load, no failing handler, no pause, dead letters retried, a
// process with the newest code), waits for the newest version to serve everything, checks that
// every committed event was applied exactly once, and stops every process.
func (m *model) finish() {
	m.t.Helper()
	m.stopLoad()
	m.checkLoad()
	m.exec(`DELETE FROM model_poison`)
	m.poisoned = map[string]map[int64]bool{}
	for _, n := range modelNames {
		m.resume(n)
	}
	m.retryAll(false)
	if !m.live(m.maxVersion) {
		m.startProc(m.maxVersion, m.randomParts(), false)
	}
	for _, n := range modelAttached {
		m.waitUntil(fmt.Sprintf("%s to run version %d", n, m.maxVersion), modelSettle, func() (bool, string) {
			rec, err := m.h.lc().Get(m.ctx, m.h.db.Pool, n)
			if err != nil {
				return false, err.Error()
			}
			return rec.Active.Version == m.maxVersion && !rec.HasTarget(), fmt.Sprintf("record %+v", rec)
		})
	}
	m.waitUntil("the dead letters to be retried", modelSettle, func() (bool, string) {
		dls, err := m.cps.DeadLetters(m.ctx, m.h.db.Pool, "md")
		if err != nil {
			return false, err.Error()
		}
		if len(dls) > 0 {
			m.retryAll(true) // those parked while the earlier retries ran
		}
		return len(dls) == 0, fmt.Sprintf("%d dead letters", len(dls))
	})
	m.settle()
	s := m.check("final")
	// Exactly once: every committed event, by the active version (md: but the discarded ones).
	for _, n := range modelAttached {
		v := s.recs[n].Active.Version
		applied := map[int64]int{}
		for _, a := range s.applied[modelKey{n, v}] {
			applied[a.pos]++
		}
		for _, e := range s.events {
			if applied[e.pos] != 1 && !(n == "md" && applied[e.pos] == 0 && m.discarded[v][e.pos]) {
				m.fatalf("final: %s v%d applied event %d %d times", n, v, e.pos, applied[e.pos])
			}
		}
	}
	for _, p := range slices.Clone(m.procs) {
		m.stopProc(p, false)
	}
	m.check("stopped")
}

// --- invariants --------------------------------------------------------------------------------

type modelApplied struct {
	seq, pos int64
	typ, id  string
	version  int64
}

type modelSnap struct {
	recs     map[string]lifecycle.Record
	cps      map[string][]checkpoint.Checkpoint
	events   []modelEvent
	byPos    map[int64]modelEvent
	applied  map[modelKey][]modelApplied
	dead     map[modelKey][]checkpoint.DeadLetter
	resets   []modelReset
	cutovers []modelCutover
	seen     map[int64]int
}

type modelReset struct {
	name                    string
	version, active, target int
	mode                    string
}

type modelCutover struct {
	name          string
	from, to      int
	count, maxSeq int64
}

// snapshot reads everything the invariants need in one REPEATABLE READ transaction.
func (m *model) snapshot() *modelSnap {
	m.t.Helper()
	s := &modelSnap{recs: map[string]lifecycle.Record{}, cps: map[string][]checkpoint.Checkpoint{},
		byPos: map[int64]modelEvent{}, applied: map[modelKey][]modelApplied{}, dead: map[modelKey][]checkpoint.DeadLetter{},
		seen: map[int64]int{}}
	ctx := m.ctx
	err := pgx.BeginTxFunc(ctx, m.h.db.Pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		recs, err := m.h.lc().List(ctx, tx, modelNames...)
		if err != nil {
			return err
		}
		for _, r := range recs {
			s.recs[r.Projection] = r
		}
		all, err := m.cps.List(ctx, tx)
		if err != nil {
			return err
		}
		for _, c := range all {
			s.cps[c.Projection] = append(s.cps[c.Projection], c)
		}
		if s.events, err = queryEvents(ctx, tx, 1<<62); err != nil {
			return err
		}
		for _, e := range s.events {
			s.byPos[e.pos] = e
		}
		for _, n := range modelAttached {
			for v := 1; v <= m.maxVersion; v++ {
				rows, err := tx.Query(ctx, `SELECT seq, global_position, aggregate_type, aggregate_id, aggregate_version FROM `+
					modelTable(n, v)+` ORDER BY seq`)
				if err != nil {
					return err
				}
				as, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (modelApplied, error) {
					var a modelApplied
					err := r.Scan(&a.seq, &a.pos, &a.typ, &a.id, &a.version)
					return a, err
				})
				if err != nil {
					return err
				}
				s.applied[modelKey{n, v}] = as
			}
		}
		dls, err := m.cps.DeadLetters(ctx, tx, "")
		if err != nil {
			return err
		}
		for _, d := range dls {
			s.dead[modelKey{d.Projection, d.Version}] = append(s.dead[modelKey{d.Projection, d.Version}], d)
		}
		rows, err := tx.Query(ctx, `SELECT projection, version, active_version, target_version, target_mode FROM model_resets ORDER BY id`)
		if err != nil {
			return err
		}
		if s.resets, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (modelReset, error) {
			var x modelReset
			err := r.Scan(&x.name, &x.version, &x.active, &x.target, &x.mode)
			return x, err
		}); err != nil {
			return err
		}
		rows, err = tx.Query(ctx, `SELECT projection, from_version, to_version, old_count, old_max_seq FROM model_cutovers`)
		if err != nil {
			return err
		}
		if s.cutovers, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (modelCutover, error) {
			var x modelCutover
			err := r.Scan(&x.name, &x.from, &x.to, &x.count, &x.maxSeq)
			return x, err
		}); err != nil {
			return err
		}
		rows, err = tx.Query(ctx, `SELECT global_position, count(*) FROM model_seen GROUP BY 1`)
		if err != nil {
			return err
		}
		for rows.Next() {
			var pos, n int64
			if err := rows.Scan(&pos, &n); err != nil {
				rows.Close()
				return err
			}
			s.seen[pos] = int(n)
		}
		return rows.Err()
	})
	if err != nil {
		m.fatalf("snapshot: %v", err)
	}
	return s
}

// check verifies every invariant on one snapshot; it fails the test with every violation found.
func (m *model) check(when string) *modelSnap {
	m.t.Helper()
	m.checkLoad()
	s := m.snapshot()
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	for _, n := range modelNames {
		rec, ok := s.recs[n]
		if !ok {
			bad("%s: no record", n)
			continue
		}
		m.checkRecord(s, rec, bad)
		if n == "mx" {
			m.checkDetached(s, rec, bad)
		} else {
			m.checkApplied(s, rec, bad)
		}
		m.checkPause(s, rec, bad)
	}
	m.checkRetired(s, bad)
	m.checkResets(s, bad)
	if len(problems) > 0 {
		sort.Strings(problems)
		if len(problems) > 20 {
			problems = append(problems[:20], fmt.Sprintf("... and %d more", len(problems)-20))
		}
		m.fatalf("%s: invariants violated:\n  %s", when, strings.Join(problems, "\n  "))
	}
	return s
}

// checkRecord: the record is legal, agrees with the checkpoint rows and with the operator's intent,
// and no unit is stopped but by a failure the operations caused.
func (m *model) checkRecord(s *modelSnap, rec lifecycle.Record, bad func(string, ...any)) {
	n := rec.Projection
	legal := func(ok bool, what string) {
		if !ok {
			bad("%s: illegal record (%s): %+v", n, what, rec)
		}
	}
	legal(rec.Active.Version >= 1 && rec.Active.Version <= m.maxVersion, "active version deployed")
	legal(rec.Active.Partitions >= 1 && rec.Active.Partitions <= 3, "active partitions declared")
	legal(rec.HasTarget() == (rec.Mode != ""), "target and mode together")
	legal(rec.Barrier >= -1, "barrier")
	legal(rec.Barrier < 0 || rec.HasTarget(), "barrier only with a target")
	legal(rec.RebuildRequested >= rec.Rebuilds, "rebuilds <= requests")
	legal(rec.Detached == (n == "mx") && rec.Resettable == (n != "mx"), "facts of the code")
	if rec.HasTarget() {
		legal(rec.Target.Version <= m.maxVersion && rec.Target.Partitions >= 1 && rec.Target.Partitions <= 3, "target deployed")
		switch rec.Mode {
		case lifecycle.Build:
			legal(rec.Target.Version > rec.Active.Version, "a build is of a newer version")
			legal(n != "mx", "a detached handler without replay switches")
		case lifecycle.Switch:
			legal(rec.Barrier >= 0, "a switch has a barrier")
			if n == "mx" {
				legal(rec.Target.Version > rec.Active.Version || rec.Target.Partitions != rec.Active.Partitions, "a switch changes something")
			} else {
				legal(rec.Target.Version == rec.Active.Version && rec.Target.Partitions != rec.Active.Partitions,
					"a projection switches only its partition count")
			}
		default:
			legal(false, "mode")
		}
	}
	if rec.Paused != m.paused[n] {
		bad("%s: paused is %v, the operator's last word was %v", n, rec.Paused, m.paused[n])
	}
	if last, ok := m.lastActive[n]; ok && rec.Active.Version < last.Version {
		bad("%s: active version went back from %d to %d", n, last.Version, rec.Active.Version)
	}
	if last := m.lastActive[n]; last.Version != 0 && rec.Active.Version > last.Version {
		m.cutovers++
	}
	m.lastActive[n] = rec.Active

	// Checkpoint rows: exactly the partitions of the record's layouts.
	byLayout := map[lifecycle.Layout]map[int]checkpoint.Checkpoint{}
	for _, c := range s.cps[n] {
		l := lifecycle.Layout{Version: c.Version, Partitions: c.Partitions}
		if byLayout[l] == nil {
			byLayout[l] = map[int]checkpoint.Checkpoint{}
		}
		byLayout[l][c.Partition] = c
	}
	units := rec.Units()
	for l, rows := range byLayout {
		if !slices.Contains(units, l) {
			bad("%s: checkpoint rows of %s, which the record does not name", n, l)
			continue
		}
		if len(rows) != l.Partitions {
			bad("%s: %s has %d checkpoint rows", n, l, len(rows))
		}
	}
	for _, l := range units {
		if byLayout[l] == nil {
			bad("%s: no checkpoint rows for %s", n, l)
		}
	}
	if rec.Barrier >= 0 {
		for _, c := range byLayout[rec.Active] {
			if c.Position > rec.Barrier {
				bad("%s: active %s partition %d at %d, beyond the barrier %d", n, rec.Active, c.Partition, c.Position, rec.Barrier)
			}
		}
	}
	if rec.Mode == lifecycle.Switch {
		for _, c := range byLayout[rec.Target] {
			if c.Position != rec.Barrier {
				bad("%s: waiting %s partition %d at %d, not at the barrier %d", n, rec.Target, c.Partition, c.Position, rec.Barrier)
			}
		}
	}
	for _, c := range s.cps[n] {
		if !c.Stopped() {
			continue
		}
		if n != "ms" || !m.poisonedEver[n][c.FailedPosition] {
			bad("%s: %s stopped at %d (%s), but the operations made no handler fail there", n, c.Key, c.FailedPosition, c.LastError)
		}
		if c.Position != c.FailedPosition-1 {
			bad("%s: %s stopped at %d but its position is %d", n, c.Key, c.FailedPosition, c.Position)
		}
	}
}

// checkApplied: every version table holds known events, each aggregate in version order; the
// active layout and a building target have applied exactly the events up to their checkpoints,
// once each (md: or parked, or discarded by the operator).
func (m *model) checkApplied(s *modelSnap, rec lifecycle.Record, bad func(string, ...any)) {
	n := rec.Projection
	for v := 1; v <= m.maxVersion; v++ {
		last := map[string]int64{}
		for _, a := range s.applied[modelKey{n, v}] {
			e, ok := s.byPos[a.pos]
			if !ok {
				bad("%s v%d applied event %d, which is not committed", n, v, a.pos)
				continue
			}
			if e.typ != a.typ || e.id != a.id || e.version != a.version {
				bad("%s v%d applied event %d as %s/%s v%d; it is %s/%s v%d", n, v, a.pos, a.typ, a.id, a.version, e.typ, e.id, e.version)
			}
			agg := a.typ + "/" + a.id
			if a.version <= last[agg] {
				bad("%s v%d applied %s version %d after version %d", n, v, agg, a.version, last[agg])
			}
			last[agg] = a.version
		}
	}
	layouts := []lifecycle.Layout{rec.Active}
	if rec.Mode == lifecycle.Build {
		layouts = append(layouts, rec.Target)
	}
	for _, l := range layouts {
		pos := layoutPositions(s.cps[n], l)
		if len(pos) != l.Partitions {
			continue // reported by checkRecord
		}
		applied := map[int64]int{}
		for _, a := range s.applied[modelKey{n, l.Version}] {
			applied[a.pos]++
		}
		parked := map[int64]int{}
		for _, d := range s.dead[modelKey{n, l.Version}] {
			parked[d.GlobalPosition]++
			if _, ok := s.byPos[d.GlobalPosition]; !ok {
				bad("%s v%d parked event %d, which is not committed", n, l.Version, d.GlobalPosition)
			}
		}
		for _, e := range s.events {
			p := projector.PartitionOf(e.id, l.Partitions)
			c := applied[e.pos] + parked[e.pos]
			covered := e.pos <= pos[p]
			switch {
			case covered && c == 1:
			case covered && c == 0 && n == "md" && m.discarded[l.Version][e.pos]:
			case covered:
				bad("%s %s partition %d at %d: event %d applied %d times, parked %d times", n, l, p, pos[p], e.pos, applied[e.pos], parked[e.pos])
			case c != 0:
				bad("%s %s partition %d at %d: event %d beyond it applied %d times, parked %d times", n, l, p, pos[p], e.pos, applied[e.pos], parked[e.pos])
			}
		}
	}
	// Dead letters belong to md's active version or its build target: a cut-over, a superseded
	// or restarted build, a rebuild take theirs with them.
	for k, dls := range s.dead {
		if k.name == n && len(dls) > 0 && (n != "md" || (k.version != rec.Active.Version &&
			!(rec.Mode == lifecycle.Build && k.version == rec.Target.Version))) {
			bad("%s has %d dead letters for v%d (record %+v)", n, len(dls), k.version, rec)
		}
	}
}

// checkDetached: at least once: every event up to the active layout's checkpoints was handled by
// some version.
func (m *model) checkDetached(s *modelSnap, rec lifecycle.Record, bad func(string, ...any)) {
	for k, dls := range s.dead {
		if k.name == "mx" && len(dls) > 0 {
			bad("mx has %d dead letters for v%d", len(dls), k.version)
		}
	}
	pos := layoutPositions(s.cps["mx"], rec.Active)
	if len(pos) != rec.Active.Partitions {
		return
	}
	for _, e := range s.events {
		p := projector.PartitionOf(e.id, rec.Active.Partitions)
		if e.pos <= pos[p] && s.seen[e.pos] == 0 {
			bad("mx %s partition %d at %d: event %d was never handled", rec.Active, p, pos[p], e.pos)
		}
	}
}

func tableState(as []modelApplied) modelTableState {
	st := modelTableState{count: int64(len(as))}
	for _, a := range as {
		st.maxSeq = max(st.maxSeq, a.seq)
	}
	return st
}

// checkRetired: a version retired by a cut-over (Activate logged what it had applied) or
// superseded by a newer target never applies again.
func (m *model) checkRetired(s *modelSnap, bad func(string, ...any)) {
	from := map[modelKey]int{}
	for _, c := range s.cutovers {
		k := modelKey{c.name, c.from}
		from[k]++
		if from[k] > 1 {
			bad("%s v%d retired twice", c.name, c.from)
		}
		if c.to <= c.from {
			bad("%s: cut-over from v%d to v%d", c.name, c.from, c.to)
		}
		if st := tableState(s.applied[k]); st != (modelTableState{c.count, c.maxSeq}) {
			bad("%s v%d applied after its cut-over to v%d: %d rows up to seq %d then, %d up to %d now",
				c.name, c.from, c.to, c.count, c.maxSeq, st.count, st.maxSeq)
		}
	}
	for _, n := range modelAttached {
		rec := s.recs[n]
		for v := 1; v <= m.maxVersion; v++ {
			k := modelKey{n, v}
			out := v < rec.Active.Version || (rec.HasTarget() && v < rec.Target.Version && v != rec.Active.Version)
			if !out {
				if _, was := m.frozen[k]; was {
					bad("%s v%d came back (record %+v)", n, v, rec)
				}
				continue
			}
			st := tableState(s.applied[k])
			if was, ok := m.frozen[k]; !ok {
				m.frozen[k] = st
			} else if st != was {
				bad("%s v%d applied after it was retired or superseded: %+v then, %+v now", n, v, was, st)
			}
		}
	}
}

// checkResets: a read model is emptied only as a rebuild of the active version, at most once per
// request (API calls and CLI requests), at least once per API call that succeeded; or as the
// abandoned build of a target re-declared with another partition count.
func (m *model) checkResets(s *modelSnap, bad func(string, ...any)) {
	rebuilds := map[string]int{}
	for _, r := range s.resets {
		switch {
		case r.active == r.version:
			rebuilds[r.name]++
		case r.target == r.version && r.mode == string(lifecycle.Build):
		default:
			bad("%s v%d emptied while the record had v%d active and target v%d (%s)", r.name, r.version, r.active, r.target, r.mode)
		}
	}
	for _, n := range modelAttached {
		if rebuilds[n] > m.rebuildCalls[n]+m.rebuildReqs[n] {
			bad("%s emptied %d times for %d Rebuild calls and %d CLI requests", n, rebuilds[n], m.rebuildCalls[n], m.rebuildReqs[n])
		}
		if rebuilds[n] < m.rebuildOK[n] {
			bad("%s emptied %d times, but %d Rebuild calls succeeded", n, rebuilds[n], m.rebuildOK[n])
		}
	}
}

func (m *model) pauseSnapshot(n string) *modelPause {
	s := m.snapshot()
	p := &modelPause{maxSeq: map[int]int64{}, positions: map[checkpoint.Key]int64{}, resets: map[int]int{}}
	for v := 1; v <= modelMaxVersion; v++ {
		p.maxSeq[v] = tableState(s.applied[modelKey{n, v}]).maxSeq
	}
	for _, c := range s.cps[n] {
		p.positions[c.Key] = c.Position
	}
	for _, r := range s.resets {
		if r.name == n {
			p.resets[r.version]++
		}
	}
	return p
}

// checkPause: while paused (since Pause returned), nothing is applied and no checkpoint moves,
// but back to 0 by a reset of its version.
func (m *model) checkPause(s *modelSnap, rec lifecycle.Record, bad func(string, ...any)) {
	n := rec.Projection
	p := m.pauses[n]
	if p == nil {
		return
	}
	for v := 1; v <= m.maxVersion; v++ {
		if st := tableState(s.applied[modelKey{n, v}]); st.maxSeq > p.maxSeq[v] {
			bad("%s v%d applied while paused (seq %d, %d when paused)", n, v, st.maxSeq, p.maxSeq[v])
		}
	}
	// Any reset of the version (checkResets says which are legal: a rebuild of the active version,
	// or the abandoned build of a target re-declared with another partition count, which starts
	// again from 0 while paused) lets its checkpoints go back to 0.
	resets := map[int]int{}
	for _, r := range s.resets {
		if r.name == n {
			resets[r.version]++
		}
	}
	for _, c := range s.cps[n] {
		was, ok := p.positions[c.Key]
		if !ok || c.Position == was || (c.Position == 0 && resets[c.Version] > p.resets[c.Version]) {
			continue
		}
		bad("%s: %s moved from %d to %d while paused", n, c.Key, was, c.Position)
	}
}
