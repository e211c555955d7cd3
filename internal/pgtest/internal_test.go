package pgtest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

func TestWithDatabase(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{"postgres://u:p@h:5433/old?sslmode=disable", "postgres://u:p@h:5433/new_db?sslmode=disable"},
		{"postgresql://h", "postgresql://h/new_db"},
		{"host=h port=5433 dbname=old user=u", "host=h port=5433 dbname=old user=u dbname='new_db'"},
	} {
		got, err := withDatabase(tc.in, "new_db")
		require.NoError(t, err)
		require.Equal(t, tc.want, got)
	}
}

func TestDatabaseName(t *testing.T) {
	t.Parallel()
	h := &harness{runID: "1234_abcdef"}
	require.Equal(t, "eventline_test_1234_abcdef_1_testfoo_bar_baz", h.databaseName("TestFoo/bar-baz"))
	long := h.databaseName("Test" + strings.Repeat("X", 100))
	require.Len(t, long, 63)
	require.True(t, strings.HasPrefix(long, "eventline_test_1234_abcdef_2_testxxx"))
	require.Equal(t, "eventline_test_1234_abcdef_3", h.databaseName("//"))
}

// fakeTB records cleanups to run them when the test says, and can pretend to have failed.
type fakeTB struct {
	testing.TB
	failed   bool
	cleanups []func()
	logs     []string
}

func (f *fakeTB) Helper()                      {}
func (f *fakeTB) Failed() bool                 { return f.failed }
func (f *fakeTB) Cleanup(fn func())            { f.cleanups = append(f.cleanups, fn) }
func (f *fakeTB) Logf(format string, a ...any) { f.logs = append(f.logs, fmt.Sprintf(format, a...)) }

func (f *fakeTB) runCleanups() {
	for i := len(f.cleanups) - 1; i >= 0; i-- {
		f.cleanups[i]()
	}
}

// databaseExists reports whether the server has database name.
func databaseExists(t *testing.T, h *harness, name string) bool {
	t.Helper()
	var ok bool
	require.NoError(t, h.admin.QueryRow(t.Context(), `SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)`, name).Scan(&ok))
	return ok
}

func TestFailedTestKeepsItsDatabase(t *testing.T) {
	t.Parallel()
	h := mustHarness(t)
	exists := func(name string) bool { return databaseExists(t, h, name) }

	passed := &fakeTB{TB: t}
	db := NewDatabase(passed)
	require.True(t, exists(db.Name))
	passed.runCleanups()
	require.False(t, exists(db.Name), "a passed test's database is dropped")
	require.Empty(t, passed.logs)

	failed := &fakeTB{TB: t, failed: true}
	db = NewDatabase(failed)
	failed.runCleanups()
	require.True(t, exists(db.Name), "a failed test's database is kept")
	require.Len(t, failed.logs, 1)
	require.Contains(t, failed.logs[0], db.URL)
	_, err := h.admin.Exec(t.Context(), "DROP DATABASE "+quote(db.Name)+" WITH (FORCE)")
	require.NoError(t, err)
}

// On a DATABASE_URL server nothing removes the databases with the server, so the failed tests'
// databases are dropped at exit (tearDown), unless EVENTLINE_PGTEST_KEEP keeps them.
func TestFailedTestDatabaseOnExternalServerIsDroppedAtExit(t *testing.T) {
	t.Parallel()
	h := mustHarness(t)
	exists := func(name string) bool { return databaseExists(t, h, name) }
	// A harness of its own, on the same server, that takes it for a DATABASE_URL one.
	ext := &harness{srv: &server{connString: h.srv.connString, external: true}, admin: h.admin,
		runID: h.runID + "_ext", template: h.template}

	failed := &fakeTB{TB: t, failed: true}
	db := ext.newDatabase(failed, ext.template)
	failed.runCleanups()
	require.True(t, exists(db.Name), "a failed test's database is kept until the binary exits")
	require.Len(t, failed.logs, 1)
	require.Contains(t, failed.logs[0], "until the test binary exits")
	require.NoError(t, ext.dropKept(t.Context()))
	require.False(t, exists(db.Name), "the failed test's database is dropped at exit")

	ext.keep = true
	failed = &fakeTB{TB: t, failed: true}
	db = ext.newDatabase(failed, ext.template)
	failed.runCleanups()
	require.NoError(t, ext.dropKept(t.Context()))
	require.True(t, exists(db.Name), "EVENTLINE_PGTEST_KEEP keeps it")
	_, err := h.admin.Exec(t.Context(), "DROP DATABASE "+quote(db.Name)+" WITH (FORCE)")
	require.NoError(t, err)
}

func TestSweepStale(t *testing.T) {
	t.Parallel()
	h := mustHarness(t)
	c := h.srv.cluster
	if c == nil {
		t.Skip("no local cluster in this run")
	}
	root := t.TempDir()
	mkdir := func(name, pid string) string {
		dir := filepath.Join(root, clusterDirPrefix+name)
		require.NoError(t, os.MkdirAll(filepath.Join(dir, "data"), 0o700))
		if pid != "" {
			require.NoError(t, os.WriteFile(filepath.Join(dir, ownerFileName), []byte(pid+"\n"), 0o644))
		}
		return dir
	}

	dead := mkdir("dead", "999999999") // no process holds its lock
	starting := mkdir("starting", "")  // owner.pid not there yet
	kept := mkdir("kept", "999999999")
	require.NoError(t, os.WriteFile(filepath.Join(kept, keepFileName), nil, 0o644))
	live := filepath.Join(root, clusterDirPrefix+"live")
	require.NoError(t, os.Mkdir(live, 0o700))
	owner, err := takeOwnership(live)
	require.NoError(t, err)
	t.Cleanup(func() { _ = owner.Close() })

	require.Equal(t, []string{dead}, c.sweepStale(root))
	for _, dir := range []string{starting, kept, live} {
		require.DirExists(t, dir)
	}

	// The run's own cluster directory is alive, and is never swept.
	require.False(t, c.sweepCluster(c.dir))
	require.DirExists(t, c.dataDir)
}

// TestSweepStaleStopsServer starts a second cluster with no reaper, lets its owner die (closes
// owner.pid, as the kernel does for a killed process), and checks that a sweep stops the server
// and removes the directory.
func TestSweepStaleStopsServer(t *testing.T) {
	t.Parallel()
	h := mustHarness(t)
	if h.srv.cluster == nil {
		t.Skip("no local cluster in this run")
	}
	base := h.srv.cluster
	stale := &cluster{binDir: base.binDir, cred: base.cred}
	ctx, cancel := context.WithTimeout(context.Background(), setUpTimeout)
	defer cancel()
	err := stale.create(ctx, clusterRoot(), true) // keep: no reaper; the sweep is what we test
	t.Cleanup(func() { _ = stale.close(false) })
	require.NoError(t, err)
	require.NoError(t, os.Remove(filepath.Join(stale.dir, keepFileName)))

	// Our process owns the lock; closing the file is what the kernel does when an owner dies.
	require.False(t, base.sweepCluster(stale.dir), "a live owner's cluster is not swept")
	require.NoError(t, stale.owner.Close())

	require.True(t, base.sweepCluster(stale.dir))
	require.NoDirExists(t, stale.dir)
	_, err = pgx.Connect(ctx, stale.connString("postgres"))
	require.Error(t, err, "the stale server was stopped")
}
