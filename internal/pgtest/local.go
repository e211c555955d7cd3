package pgtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

const (
	// clusterDirPrefix starts the name of every cluster directory in os.TempDir(), so that a later
	// run can find and remove the ones a killed run left behind.
	clusterDirPrefix = "eventline-pgtest-"
	// cacheDirName is the directory, in the user's cache directory, of cached initdb output.
	cacheDirName = "eventline-pgtest"
	// initCachePrefix starts the name of a cached initdb output there.
	initCachePrefix = "initdb-"
	// initBuildPrefix starts the name of a directory where a cache entry is being built.
	initBuildPrefix = "build-"

	ownerFileName = "owner.pid" // in a cluster directory: the owner's pid, flocked while it lives
	keepFileName  = "keep"      // in a cluster directory: never sweep it
	confFileName  = "pgtest.conf"

	pgCtlWait  = "60" // seconds that pg_ctl waits for a start or stop
	startTries = 5    // attempts at a free port
)

// initdbArgs are the arguments that create every cluster (after -D).
var initdbArgs = []string{"-N", "-A", "trust", "-U", "postgres", "--no-locale", "-E", "UTF8"}

// cluster is a throwaway PostgreSQL cluster that this test binary started from local binaries.
//
// Its directory holds owner.pid, which the test binary keeps flocked while it lives, the data
// directory, and postgres.log. A reaper process removes it when the test binary dies before it
// could (a panic in a test, a timeout, a signal); a run that finds it with no owner (both were
// killed) removes it too.
type cluster struct {
	binDir  string
	cred    *syscall.Credential // the user that runs the server when we are root; else nil
	dir     string
	dataDir string
	logFile string
	port    int

	owner       *os.File  // owner.pid, flocked
	reaper      *exec.Cmd // waits for EOF on its stdin, then stops and removes the cluster
	reaperStdin *os.File  // the write end: closed by the kernel if we die

	mu      sync.Mutex // serializes start, stop and restart
	running bool
}

// startLocalCluster starts a cluster from local server binaries; an unavailableError if there are none.
func startLocalCluster(ctx context.Context, keep bool) (*server, error) {
	binDir, err := findBinDir()
	if err != nil {
		return nil, err
	}
	c := &cluster{binDir: binDir}
	if c.cred, err = serverCredential(); err != nil {
		return nil, err
	}
	root := clusterRoot()
	removed := c.sweepStale(root)
	if root != os.TempDir() { // where runs with TMPDIR set, or without /dev/shm, put theirs
		removed = append(removed, c.sweepStale(os.TempDir())...)
	}
	for _, dir := range removed {
		fmt.Fprintf(os.Stderr, "pgtest: removed %s, a cluster left by an earlier run\n", dir)
	}

	began := time.Now()
	if err := c.create(ctx, root, keep); err != nil {
		return nil, errors.Join(err, c.close(false))
	}
	version, _ := os.ReadFile(filepath.Join(c.dataDir, "PG_VERSION"))
	return &server{
		desc: fmt.Sprintf("local cluster %s (PostgreSQL %s) at 127.0.0.1:%d started in %s",
			c.dir, strings.TrimSpace(string(version)), c.port, time.Since(began).Round(time.Millisecond)),
		connString: c.connString("postgres"),
		cluster:    c,
		close:      func() error { return c.close(keep) },
	}, nil
}

// findBinDir returns the first directory that holds initdb, pg_ctl and postgres, of:
// pg_config --bindir, initdb's on PATH, /usr/lib/postgresql/*/bin (newest first).
func findBinDir() (string, error) {
	var candidates []string
	if pgConfig, err := exec.LookPath("pg_config"); err == nil {
		if out, err := exec.Command(pgConfig, "--bindir").Output(); err == nil {
			candidates = append(candidates, strings.TrimSpace(string(out)))
		}
	}
	if initdb, err := exec.LookPath("initdb"); err == nil {
		if resolved, err := filepath.EvalSymlinks(initdb); err == nil {
			candidates = append(candidates, filepath.Dir(resolved))
		}
	}
	installed, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(installed, func(a, b string) int { // newest version first
		va, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(a)), 64)
		vb, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(b)), 64)
		return -cmpFloat(va, vb)
	})
	candidates = append(candidates, installed...)

	for _, dir := range candidates {
		if hasServerBinaries(dir) {
			return dir, nil
		}
	}
	return "", unavailable("no directory with initdb, pg_ctl and postgres (in pg_config --bindir, on PATH, in /usr/lib/postgresql/*/bin)")
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func hasServerBinaries(dir string) bool {
	for _, name := range []string{"initdb", "pg_ctl", "postgres"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
			return false
		}
	}
	return true
}

// clusterRoot returns the directory for cluster directories: $TMPDIR when it is set; else
// /dev/shm when it is a tmpfs with room, where a cluster starts 3-4 times faster than on disk and
// the tests' writes stay in memory; else /tmp.
func clusterRoot() string {
	const tmpfsMagic = 0x01021994
	if os.Getenv("TMPDIR") != "" {
		return os.TempDir()
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs("/dev/shm", &st); err == nil && int64(st.Type) == tmpfsMagic &&
		st.Bavail*uint64(st.Bsize) >= 2<<30 && syscall.Access("/dev/shm", 2 /* W_OK */) == nil {
		return "/dev/shm"
	}
	return os.TempDir()
}

// serverCredential returns the user to run initdb, pg_ctl and postgres as, which refuse to run as
// root: postgres (or nobody) when we are root, else nil (ourselves).
func serverCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err1 != nil || err2 != nil {
			continue
		}
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
	}
	return nil, errors.New("running as root, and PostgreSQL refuses to: there is no postgres (or nobody) user to run it as")
}

// uid is the user that owns the cluster's files.
func (c *cluster) uid() int {
	if c.cred != nil {
		return int(c.cred.Uid)
	}
	return os.Geteuid()
}

// create makes the cluster directory, its data directory and starts the server.
func (c *cluster) create(ctx context.Context, root string, keep bool) error {
	dir, err := os.MkdirTemp(root, clusterDirPrefix)
	if err != nil {
		return fmt.Errorf("create cluster directory: %w", err)
	}
	c.dir = dir
	c.dataDir = filepath.Join(dir, "data")
	c.logFile = filepath.Join(dir, "postgres.log")

	if c.owner, err = takeOwnership(dir); err != nil {
		return err
	}
	if keep {
		if err := os.WriteFile(filepath.Join(dir, keepFileName), nil, 0o644); err != nil {
			return fmt.Errorf("mark cluster directory to keep: %w", err)
		}
	}
	if c.cred != nil {
		if err := os.Chown(dir, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
			return fmt.Errorf("hand cluster directory to uid %d: %w", c.cred.Uid, err)
		}
	}
	if !keep {
		if err := c.startReaper(); err != nil {
			return err
		}
	}
	if err := c.initDataDir(ctx); err != nil {
		return err
	}

	// Another process may take the free port before the server binds it: then try another.
	for try := 1; ; try++ {
		if c.port, err = freePort(); err != nil {
			return err
		}
		if err := c.writeConfig(); err != nil {
			return err
		}
		logSize := fileSize(c.logFile)
		err := c.start(ctx)
		if err == nil {
			return nil
		}
		if try == startTries || !strings.Contains(readFrom(c.logFile, logSize), "already in use") {
			return err
		}
	}
}

// takeOwnership creates dir's owner file, flocks it for as long as this process lives, and writes
// our pid in it.
func takeOwnership(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, ownerFileName), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, fmt.Errorf("create owner file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		return nil, errors.Join(fmt.Errorf("lock owner file: %w", err), f.Close())
	}
	if _, err := fmt.Fprintf(f, "%d\n", os.Getpid()); err != nil {
		return nil, errors.Join(fmt.Errorf("write owner file: %w", err), f.Close())
	}
	return f, nil
}

// reaperScript waits until its stdin reaches EOF, which happens when the test binary exits however
// it exits, then stops the cluster ($2 is the data directory) and removes its directory ($3).
// After a clean exit there is nothing left for it to do.
const reaperScript = `while read -r _; do :; done
if [ -f "$2/postmaster.pid" ]; then "$1" stop -D "$2" -m immediate -w -t 60 >/dev/null 2>&1; fi
rm -rf "$3"
`

func (c *cluster) startReaper() error {
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("start reaper: %w", err)
	}
	cmd := exec.Command("/bin/sh", "-c", reaperScript, "pgtest-reaper", filepath.Join(c.binDir, "pg_ctl"), c.dataDir, c.dir)
	cmd.Stdin = r
	cmd.Dir = "/"
	// Its own session, so that a ^C to the test run does not end it before it has cleaned up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Credential: c.cred}
	err = cmd.Start()
	_ = r.Close() // the child has its copy
	if err != nil {
		_ = w.Close()
		return fmt.Errorf("start reaper: %w", err)
	}
	c.reaper, c.reaperStdin = cmd, w
	return nil
}

// initDataDir fills the data directory. initdb takes most of a second; copying its output takes a
// third of that, so the output is cached in the user's cache directory for the next test
// binaries, keyed by the binaries and the arguments.
func (c *cluster) initDataDir(ctx context.Context) error {
	cache := c.initCacheDir()
	if cache != "" && c.usableCache(cache) {
		err := copyTree(cache, c.dataDir, c.cred)
		if err == nil {
			return c.includeConfig()
		}
		// A damaged cache entry: fall back to initdb, and leave the entry for a human to look at.
		fmt.Fprintf(os.Stderr, "pgtest: warning: copy cached initdb output %s: %v\n", cache, err)
		if err := os.RemoveAll(c.dataDir); err != nil {
			return fmt.Errorf("remove partial copy: %w", err)
		}
		cache = ""
	}

	out, err := c.command(ctx, filepath.Join(c.binDir, "initdb"), append([]string{"-D", c.dataDir}, initdbArgs...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("initdb: %w\n%s", err, out)
	}
	if cache != "" {
		c.fillCache(cache)
	}
	return c.includeConfig()
}

// initCacheDir returns where initdb's output for these binaries and this user is cached, or ""
// when there is no cache directory or the binaries cannot be told apart from other versions.
func (c *cluster) initCacheDir() string {
	userCache, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	fi, err := os.Stat(filepath.Join(c.binDir, "postgres"))
	if err != nil {
		return ""
	}
	h := sha256.New()
	fmt.Fprintf(h, "v1\x00%s\x00%d\x00%d\x00%d\x00%s", c.binDir, fi.Size(), fi.ModTime().UnixNano(), c.uid(), strings.Join(initdbArgs, "\x00"))
	return filepath.Join(userCache, cacheDirName, initCachePrefix+hex.EncodeToString(h.Sum(nil))[:16])
}

// usableCache reports whether dir looks like a complete cache entry made for the cluster's user.
func (c *cluster) usableCache(dir string) bool {
	fi, err := os.Lstat(dir)
	if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		return false
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || int(st.Uid) != c.uid() {
		return false
	}
	_, err = os.Stat(filepath.Join(dir, "PG_VERSION"))
	return err == nil
}

// fillCache copies the fresh data directory to cache atomically, so that entries appear whole or
// not at all, and removes the entries of other binaries and abandoned builds. Failing to is not
// an error: the next run calls initdb again.
func (c *cluster) fillCache(cache string) {
	if _, err := os.Lstat(cache); err == nil {
		return // one that usableCache did not like; leave it be
	}
	root := filepath.Dir(cache)
	if err := os.MkdirAll(root, 0o700); err != nil {
		return
	}
	others, _ := filepath.Glob(filepath.Join(root, initCachePrefix+"*"))
	for _, dir := range others {
		_ = os.RemoveAll(dir) // from binaries that have since changed
	}
	builds, _ := filepath.Glob(filepath.Join(root, initBuildPrefix+"*"))
	for _, dir := range builds {
		if fi, err := os.Lstat(dir); err == nil && time.Since(fi.ModTime()) > time.Hour {
			_ = os.RemoveAll(dir) // a run died while copying
		}
	}

	build, err := os.MkdirTemp(root, initBuildPrefix)
	if err != nil {
		return
	}
	defer os.RemoveAll(build)
	entry := filepath.Join(build, "data")
	if copyTree(c.dataDir, entry, c.cred) == nil {
		_ = os.Rename(entry, cache) // fails if a concurrent run got there first, which is fine
	}
}

// copyTree copies directory src to dst, which must not exist, keeping permissions, and giving the
// copies to cred's user when cred is not nil.
func copyTree(src, dst string, cred *syscall.Credential) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			err = os.Mkdir(target, 0o700)
		case d.Type().IsRegular():
			err = copyFile(path, target)
		default:
			err = fmt.Errorf("copy %s: not a regular file or directory", path)
		}
		if err != nil {
			return err
		}
		if err := os.Chmod(target, info.Mode().Perm()); err != nil {
			return err
		}
		if cred != nil {
			return os.Lchown(target, int(cred.Uid), int(cred.Gid))
		}
		return nil
	})
}

func copyFile(src, dst string) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, out.Close()) }()
	_, err = io.Copy(out, in)
	return err
}

// includeConfig makes postgresql.conf read pgtest.conf, which writeConfig (re)writes.
func (c *cluster) includeConfig() error {
	f, err := os.OpenFile(filepath.Join(c.dataDir, "postgresql.conf"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("configure cluster: %w", err)
	}
	_, err = fmt.Fprintf(f, "\ninclude = '%s'\n", confFileName)
	if err := errors.Join(err, f.Close()); err != nil {
		return fmt.Errorf("configure cluster: %w", err)
	}
	return nil
}

// writeConfig writes the settings: fast and unsafe (fsync off), enough connections for parallel
// tests, prepared transactions for the tests of two-phase commits.
func (c *cluster) writeConfig() error {
	socketDir := c.dataDir
	if len(socketDir)+len("/.s.PGSQL.65535") > 107 { // sockaddr_un's limit: TCP only, then
		socketDir = ""
	}
	conf := fmt.Sprintf(`# written by eventline's internal/pgtest
listen_addresses = '127.0.0.1'
port = %d
unix_socket_directories = '%s'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
max_prepared_transactions = 10
shared_buffers = 128MB
`, c.port, strings.ReplaceAll(socketDir, "'", "''"))
	path := filepath.Join(c.dataDir, confFileName)
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		return fmt.Errorf("configure cluster: %w", err)
	}
	if c.cred != nil {
		if err := os.Chown(path, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
			return fmt.Errorf("configure cluster: %w", err)
		}
	}
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	return port, l.Close()
}

func (c *cluster) connString(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.port, db)
}

// start starts the server and returns once it accepts connections; it does nothing if it runs.
func (c *cluster) start(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.running {
		return nil
	}
	if err := c.pgCtl(ctx, "start", "-l", c.logFile); err != nil {
		return err
	}
	c.running = true
	return c.waitReady(ctx)
}

// stop stops the server in mode fast or immediate; it does nothing if it is stopped.
func (c *cluster) stop(ctx context.Context, mode string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.running {
		return nil
	}
	if err := c.pgCtl(ctx, "stop", "-m", mode); err != nil {
		return err
	}
	c.running = false
	return nil
}

// restart restarts the server (mode fast) and returns once it accepts connections.
func (c *cluster) restart(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.pgCtl(ctx, "restart", "-m", "fast", "-l", c.logFile); err != nil {
		c.running = fileExists(filepath.Join(c.dataDir, "postmaster.pid"))
		return err
	}
	c.running = true
	return c.waitReady(ctx)
}

// pgCtl runs pg_ctl ACTION -D data -w -s ARGS..., and on failure says why, with the server log.
func (c *cluster) pgCtl(ctx context.Context, action string, args ...string) error {
	logSize := fileSize(c.logFile)
	args = append([]string{action, "-D", c.dataDir, "-w", "-t", pgCtlWait, "-s"}, args...)
	out, err := c.command(ctx, filepath.Join(c.binDir, "pg_ctl"), args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("pg_ctl %s: %w\n%s%s", action, err, out, lastLines(readFrom(c.logFile, logSize), 20))
	}
	return nil
}

// command runs a PostgreSQL binary as the cluster's user, in the cluster directory, without the
// PG* variables of the test's environment.
func (c *cluster) command(ctx context.Context, path string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Dir = c.dir
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	// pg_ctl start leaves the server running; its output goes to the log file, but should it
	// hold on to our pipe, do not wait for it forever.
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

// waitReady returns once the server accepts connections, or fails after a minute.
func (c *cluster) waitReady(ctx context.Context) error {
	return waitAccepting(ctx, c.connString("postgres"), time.Minute)
}

// waitAccepting polls until a connection to connString succeeds, for up to timeout.
func waitAccepting(ctx context.Context, connString string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		conn, err := pgx.Connect(ctx, connString)
		if err == nil {
			return conn.Close(ctx)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("server does not accept connections after %s: %w", timeout, err)
		case <-tick.C:
		}
	}
}

// close stops the server and removes the cluster directory, or with keep leaves both and says how
// to reach and remove them. It is safe on a partly created cluster.
func (c *cluster) close(keep bool) error {
	var errs []error
	if keep {
		if c.dir != "" {
			stop := fmt.Sprintf("%s stop -D %s; rm -rf %s", filepath.Join(c.binDir, "pg_ctl"), c.dataDir, c.dir)
			if c.cred != nil {
				stop = fmt.Sprintf("su -s /bin/sh %s -c '%s'", lookupName(c.cred.Uid), stop)
			}
			fmt.Fprintf(os.Stderr, "pgtest: kept the cluster in %s (%s=1): psql '%s'\npgtest: remove it with: %s\n",
				c.dir, EnvKeep, c.connString("postgres"), stop)
		}
	} else if c.dir != "" {
		if fileExists(filepath.Join(c.dataDir, "postmaster.pid")) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			c.running = true // whatever we thought: there is a server to stop
			if err := c.stop(ctx, "immediate"); err != nil {
				errs = append(errs, err)
			}
			cancel()
		}
		if err := os.RemoveAll(c.dir); err != nil {
			errs = append(errs, fmt.Errorf("remove cluster directory: %w", err))
		}
	}
	if c.reaper != nil {
		_ = c.reaperStdin.Close() // the reaper finds nothing left to do, and exits
		if err := c.reaper.Wait(); err != nil {
			errs = append(errs, fmt.Errorf("reaper: %w", err))
		}
	}
	if c.owner != nil {
		_ = c.owner.Close() // releases the flock
	}
	return errors.Join(errs...)
}

// sweepStale stops and removes the cluster directories in root that no live process owns — left
// by test binaries that were killed together with their reapers. It returns the cluster directories it removed.
//
// A directory's owner holds a flock on its owner.pid for as long as it lives, so a lock we can
// take means a dead owner; unlike a pid, a lock cannot be mistaken for a new process's.
func (c *cluster) sweepStale(root string) []string {
	var removed []string
	dirs, _ := filepath.Glob(filepath.Join(root, clusterDirPrefix+"*"))
	for _, dir := range dirs {
		if c.sweepCluster(dir) {
			removed = append(removed, dir)
		}
	}
	return removed
}

// sweepCluster stops and removes dir if it is a cluster directory of ours whose owner is dead.
func (c *cluster) sweepCluster(dir string) bool {
	fi, err := os.Lstat(dir)
	if err != nil || !fi.IsDir() || !c.ownedByUs(fi) || fileExists(filepath.Join(dir, keepFileName)) {
		return false
	}
	f, err := os.Open(filepath.Join(dir, ownerFileName))
	if err != nil {
		// Its owner died before it created owner.pid, or is just creating it.
		if errors.Is(err, fs.ErrNotExist) && time.Since(fi.ModTime()) > time.Hour {
			return os.RemoveAll(dir) == nil
		}
		return false
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return false // its owner lives
	}
	pid, _ := io.ReadAll(f)
	if len(bytes.TrimSpace(pid)) == 0 && time.Since(fi.ModTime()) < time.Hour {
		return false // its owner created owner.pid and is about to lock it
	}
	dataDir := filepath.Join(dir, "data")
	if fileExists(filepath.Join(dataDir, "postmaster.pid")) {
		stale := &cluster{binDir: c.binDir, cred: c.cred, dir: dir, dataDir: dataDir, logFile: filepath.Join(dir, "postgres.log"), running: true}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		_ = stale.stop(ctx, "immediate") // fails when the server is gone already
		cancel()
	}
	return os.RemoveAll(dir) == nil
}

// ownedByUs reports whether a file belongs to us or to the user that runs our servers.
func (c *cluster) ownedByUs(fi fs.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && (int(st.Uid) == os.Geteuid() || int(st.Uid) == c.uid())
}

func lookupName(uid uint32) string {
	if u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10)); err == nil {
		return u.Username
	}
	return "#" + strconv.FormatUint(uint64(uid), 10)
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// readFrom returns the file's contents from offset on, or "" if it cannot be read.
func readFrom(path string, offset int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	b, err := io.ReadAll(io.NewSectionReader(f, offset, 1<<20))
	if err != nil {
		return ""
	}
	return string(b)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	if len(lines) == 1 && lines[0] == "" {
		return ""
	}
	return "server log:\n" + strings.Join(lines, "\n") + "\n"
}
