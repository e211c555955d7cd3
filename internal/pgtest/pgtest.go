// Package pgtest gives each test a real PostgreSQL database of its own.
//
// A test binary calls Main from TestMain:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
// Main gets a server, in this order:
//
//  1. DATABASE_URL, when set: an existing server where the role may CREATE DATABASE. Every
//     database the run creates has a name unique to the test binary, so several packages' test
//     binaries can share the server at once; they are dropped at exit.
//  2. Local PostgreSQL server binaries (pg_config --bindir, then PATH, then
//     /usr/lib/postgresql/*/bin): a throwaway cluster in $TMPDIR/eventline-pgtest-*, tuned for
//     speed (fsync off) and removed at exit, also when the binary panics or is killed.
//  3. A Docker engine: a postgres:15 container, removed at exit.
//
// It then migrates a template database once, and each test calls NewDatabase for a private copy
// of it (CREATE DATABASE ... TEMPLATE, a few milliseconds), or NewEmptyDatabase for one without
// migrations. Tests may run in parallel, each with as many databases as it likes.
//
// A failed test's database is kept until the test binary exits, and the test's log says how to
// connect to it. Set EVENTLINE_PGTEST_KEEP=1 to keep it after the run: the local cluster (removed
// at exit otherwise), or the databases on a DATABASE_URL server.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/eventline/eventline"
	"github.com/eventline/eventline/migrations"
)

const (
	// EnvDatabaseURL names the variable that points the tests at an existing server.
	EnvDatabaseURL = "DATABASE_URL"
	// EnvKeep names the variable that, set to 1, keeps the local cluster, or the databases created
	// on a DATABASE_URL server, after the run.
	EnvKeep = "EVENTLINE_PGTEST_KEEP"

	setUpTimeout    = 3 * time.Minute
	databaseTimeout = time.Minute
)

// current is the harness that Main set up; nil outside Main.
var current atomic.Pointer[harness]

// harness is the state of one test binary's run.
type harness struct {
	srv      *server
	admin    *pgxpool.Pool // maintenance database: CREATE and DROP DATABASE
	runID    string        // <pid>_<random>: makes database names unique per test binary
	template string        // migrated template database
	seq      atomic.Int64  // numbers the test databases
	keep     bool          // EVENTLINE_PGTEST_KEEP

	mu   sync.Mutex
	kept []string // failed tests' databases, dropped at exit from a server pgtest did not start
}

// Main runs the tests of a package that uses pgtest, and exits with their code. Call it from
// TestMain, and nothing else there: func TestMain(m *testing.M) { pgtest.Main(m) }.
//
// It gets a server (see the package doc), creates the migrated template database, runs the
// tests, drops what it created, stops what it started, and, when the tests passed, fails the
// binary if they leaked goroutines (goleak.Find with leakOptions).
func Main(m *testing.M, leakOptions ...goleak.Option) {
	os.Exit(run(m, true, leakOptions))
}

// Run is Main without the goroutine leak check, returning the exit code instead of exiting: for
// package eventlinetest, whose users' goroutines are their own business.
func Run(m *testing.M) int {
	return run(m, false, nil)
}

func run(m *testing.M, checkLeaks bool, leakOptions []goleak.Option) (code int) {
	h, err := setUp()
	if err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: %v\n", err)
		return 1
	}
	current.Store(h)
	defer func() {
		current.Store(nil)
		if err := h.tearDown(); err != nil {
			fmt.Fprintf(os.Stderr, "pgtest: %v\n", err)
			if code == 0 {
				code = 1
			}
		}
		if code == 0 && checkLeaks {
			if err := goleak.Find(leakOptions...); err != nil {
				fmt.Fprintf(os.Stderr, "pgtest: the tests leaked goroutines: %v\n", err)
				code = 1
			}
		}
	}()
	return m.Run()
}

func setUp() (_ *harness, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), setUpTimeout)
	defer cancel()

	began := time.Now()
	keep, _ := strconv.ParseBool(os.Getenv(EnvKeep))
	h := &harness{keep: keep, runID: strconv.Itoa(os.Getpid()) + "_" + randomHex(3)}
	h.template = "eventline_tmpl_" + h.runID

	h.srv, err = obtainServer(ctx, keep)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, h.tearDown())
		}
	}()

	cfg, err := pgxpool.ParseConfig(h.srv.connString)
	if err != nil {
		return nil, fmt.Errorf("parse connection string of %s: %w", h.srv.desc, err)
	}
	cfg.MaxConns = 8
	h.admin, err = pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", h.srv.desc, err)
	}
	if err := h.createTemplate(ctx); err != nil {
		return nil, err
	}
	fmt.Fprintf(os.Stderr, "pgtest: %s, template migrated, ready in %s\n", h.srv.desc, time.Since(began).Round(time.Millisecond))
	if h.srv.external {
		h.warnAboutSettings(ctx)
	}
	return h, nil
}

func (h *harness) createTemplate(ctx context.Context) error {
	if _, err := h.admin.Exec(ctx, "CREATE DATABASE "+quote(h.template)+" TEMPLATE template0"); err != nil {
		return fmt.Errorf("create template database %s: %w", h.template, err)
	}
	connString, err := withDatabase(h.srv.connString, h.template)
	if err != nil {
		return err
	}
	pool, err := pgxpool.New(ctx, connString)
	if err != nil {
		return fmt.Errorf("connect to template database %s: %w", h.template, err)
	}
	// CREATE DATABASE ... TEMPLATE refuses while anyone is connected to the template.
	defer pool.Close()
	if _, err := migrations.Apply(ctx, pool, eventline.Names{}); err != nil {
		return fmt.Errorf("migrate template database %s: %w", h.template, err)
	}
	return nil
}

// warnAboutSettings points out server settings that some tests need and an existing server may
// lack, so that their failures are not a mystery.
func (h *harness) warnAboutSettings(ctx context.Context) {
	var n int
	if err := h.admin.QueryRow(ctx, "SELECT current_setting('max_prepared_transactions')::int").Scan(&n); err == nil && n == 0 {
		fmt.Fprintln(os.Stderr, "pgtest: warning: max_prepared_transactions is 0 on this server; tests of prepared (two-phase) transactions will fail")
	}
}

// tearDown drops the template and, on a DATABASE_URL server, the failed tests' databases (unless
// EVENTLINE_PGTEST_KEEP), closes the admin pool, and stops and removes what
// obtainServer started. It is safe on a partly set up harness.
func (h *harness) tearDown() error {
	var errs []error
	if h.admin != nil && h.srv.external && h.keep {
		fmt.Fprintf(os.Stderr, "pgtest: kept the template database %s (%s=1)\n", h.template, EnvKeep)
	}
	if h.admin != nil {
		if h.srv.external && !h.keep {
			ctx, cancel := context.WithTimeout(context.Background(), databaseTimeout)
			if _, err := h.admin.Exec(ctx, "DROP DATABASE IF EXISTS "+quote(h.template)+" WITH (FORCE)"); err != nil {
				errs = append(errs, fmt.Errorf("drop template database %s: %w", h.template, err))
			}
			if err := h.dropKept(ctx); err != nil {
				errs = append(errs, err)
			}
			cancel()
		}
		h.admin.Close()
	}
	if h.srv != nil && h.srv.close != nil {
		if err := h.srv.close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// dropKept drops the failed tests' databases kept until now. A server that pgtest started goes
// with its databases; on a DATABASE_URL server they would stay for good.
func (h *harness) dropKept(ctx context.Context) error {
	h.mu.Lock()
	kept := h.kept
	h.kept = nil
	h.mu.Unlock()
	var errs []error
	for _, name := range kept {
		if _, err := h.admin.Exec(ctx, "DROP DATABASE IF EXISTS "+quote(name)+" WITH (FORCE)"); err != nil {
			errs = append(errs, fmt.Errorf("drop the failed test's database %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// Database is a database of one test's own, created by NewDatabase or NewEmptyDatabase.
type Database struct {
	// Name is the database's name on the server.
	Name string
	// URL is a full connection string for the database.
	URL string
	// Pool is connected to the database for the test, and closed when the test ends.
	Pool *pgxpool.Pool
}

// NewDatabase returns a new database with the migrations applied: a copy of the template that Main
// migrated. When the test ends, its pool is closed and the database dropped, unless the test failed:
// then the database is kept and the test's log says how to connect to it.
func NewDatabase(t testing.TB) *Database {
	t.Helper()
	h := mustHarness(t)
	return h.newDatabase(t, h.template)
}

// NewEmptyDatabase is NewDatabase without the migrations (a copy of template0), for tests of the
// migrations themselves.
func NewEmptyDatabase(t testing.TB) *Database {
	t.Helper()
	return mustHarness(t).newDatabase(t, "template0")
}

func (h *harness) newDatabase(t testing.TB, template string) *Database {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), databaseTimeout)
	defer cancel()

	name := h.databaseName(t.Name())
	connString, err := withDatabase(h.srv.connString, name)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	if _, err := h.admin.Exec(ctx, "CREATE DATABASE "+quote(name)+" TEMPLATE "+quote(template)); err != nil {
		t.Fatalf("pgtest: create database %s from %s: %v", name, template, err)
	}
	d := &Database{Name: name, URL: connString}
	// Registered before the pool exists, so that a failure below still drops the database.
	t.Cleanup(func() { h.dropDatabase(t, d) })
	d.Pool, err = pgxpool.New(ctx, d.URL)
	if err != nil {
		t.Fatalf("pgtest: connect to database %s: %v", name, err)
	}
	return d
}

func (h *harness) dropDatabase(t testing.TB, d *Database) {
	t.Helper()
	if d.Pool != nil {
		d.Pool.Close()
	}
	if t.Failed() {
		note := ""
		switch {
		case h.keep:
		case h.srv.external:
			note = fmt.Sprintf(" until the test binary exits (set %s=1 to keep it)", EnvKeep)
			h.mu.Lock()
			h.kept = append(h.kept, d.Name)
			h.mu.Unlock()
		case h.srv.cluster != nil:
			note = fmt.Sprintf(" until the test binary exits (set %s=1 to keep the cluster)", EnvKeep)
		}
		t.Logf("pgtest: kept the failed test's database %s%s: psql '%s'", d.Name, note, d.URL)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), databaseTimeout)
	defer cancel()
	if _, err := h.admin.Exec(ctx, "DROP DATABASE IF EXISTS "+quote(d.Name)+" WITH (FORCE)"); err != nil {
		t.Errorf("pgtest: drop database %s: %v", d.Name, err)
	}
}

// Conn returns a new connection of the test's own to the database, closed when the test ends.
func (d *Database) Conn(t testing.TB) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), databaseTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, d.URL)
	if err != nil {
		t.Fatalf("pgtest: connect to database %s: %v", d.Name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = conn.Close(ctx) // the test may have closed it, or had it terminated
	})
	return conn
}

// Config returns a pool configuration for the database, for tests that open pools of their own
// (and close them).
func (d *Database) Config(t testing.TB) *pgxpool.Config {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(d.URL)
	if err != nil {
		t.Fatalf("pgtest: parse connection string of database %s: %v", d.Name, err)
	}
	return cfg
}

// AdminURL returns a connection string for the server's maintenance database: postgres on a
// server that pgtest started, the database DATABASE_URL names otherwise. It panics when Main is
// not running.
func AdminURL() string {
	h := current.Load()
	if h == nil {
		panic(errNoMain)
	}
	return h.srv.connString
}

// CanRestart reports whether the tests may stop and restart the server: only when pgtest started
// a local cluster of its own.
func CanRestart() bool {
	h := current.Load()
	return h != nil && h.srv.cluster != nil
}

// RestartServer restarts the server (pg_ctl restart -m fast, which ends every connection) and
// returns once it accepts connections again. Existing pools reconnect as they find their
// connections broken. It skips the test unless CanRestart.
//
// The server is shared by the whole test binary: a test that calls it must not run in parallel
// with other tests (do not call t.Parallel in it).
func RestartServer(t testing.TB) {
	t.Helper()
	h, c := mustCluster(t)
	if err := c.restart(t.Context()); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	h.admin.Reset()
}

// StopServer stops the server (pg_ctl stop -m fast) until StartServer; if the test does not start
// it again, the test's cleanup does. It skips the test unless CanRestart, and like RestartServer
// must not be called from a parallel test.
func StopServer(t testing.TB) {
	t.Helper()
	h, c := mustCluster(t)
	if err := c.stop(t.Context(), "fast"); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	h.admin.Reset()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), setUpTimeout)
		defer cancel()
		if err := c.start(ctx); err != nil {
			t.Errorf("pgtest: start the server again after the test: %v", err)
		}
	})
}

// StartServer starts the server that StopServer stopped, and returns once it accepts connections.
// It does nothing when the server runs. It skips the test unless CanRestart.
func StartServer(t testing.TB) {
	t.Helper()
	h, c := mustCluster(t)
	if err := c.start(t.Context()); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	h.admin.Reset()
}

var errNoMain = errors.New("pgtest: Main is not running; add func TestMain(m *testing.M) { pgtest.Main(m) } to the package's tests")

// Running reports whether Main (or Run) is running the tests: whether NewDatabase can work.
func Running() bool { return current.Load() != nil }

func mustHarness(t testing.TB) *harness {
	t.Helper()
	h := current.Load()
	if h == nil {
		t.Fatal(errNoMain)
	}
	return h
}

func mustCluster(t testing.TB) (*harness, *cluster) {
	t.Helper()
	h := mustHarness(t)
	if h.srv.cluster == nil {
		t.Skipf("pgtest: the test stops the server, which needs a local cluster that pgtest started; this run uses %s", h.srv.desc)
	}
	return h, h.srv.cluster
}

// databaseName returns a new name, unique per test binary and server, that carries a readable
// part of the test's name for the databases that are kept.
func (h *harness) databaseName(testName string) string {
	name := fmt.Sprintf("eventline_test_%s_%d", h.runID, h.seq.Add(1))
	var b strings.Builder
	for _, r := range strings.ToLower(testName) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			if s := b.String(); s != "" && !strings.HasSuffix(s, "_") {
				b.WriteByte('_')
			}
		}
	}
	const maxLen = 63 // NAMEDATALEN-1
	if suffix := strings.Trim(b.String(), "_"); suffix != "" && len(name)+1 < maxLen {
		name += "_" + suffix[:min(len(suffix), maxLen-len(name)-1)]
	}
	return strings.TrimRight(name, "_")
}

// withDatabase returns connString (a URL or keyword/value string) naming database db instead.
func withDatabase(connString, db string) (string, error) {
	if strings.HasPrefix(connString, "postgres://") || strings.HasPrefix(connString, "postgresql://") {
		u, err := url.Parse(connString)
		if err != nil {
			return "", fmt.Errorf("parse connection URL: %w", err)
		}
		u.Path = "/" + db
		u.RawPath = ""
		return u.String(), nil
	}
	// In a keyword/value string, the last setting of a keyword wins.
	esc := strings.NewReplacer(`\`, `\\`, `'`, `\'`)
	return strings.TrimSpace(connString) + " dbname='" + esc.Replace(db) + "'", nil
}

func quote(name string) string { return pgx.Identifier{name}.Sanitize() }

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return hex.EncodeToString(b)
}
