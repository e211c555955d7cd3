package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/eventline/eventline"
	"github.com/eventline/eventline/internal/admin"
	"github.com/eventline/eventline/internal/checkpoint"
	"github.com/eventline/eventline/internal/lifecycle"
	"github.com/eventline/eventline/internal/sqlname"
)

// Exit codes (see the package doc).
const (
	exitOK       = 0
	exitError    = 1
	exitUsage    = 2
	exitNotFound = 3
	exitCheck    = 4
)

// connectTimeoutDefault bounds connecting when the URL sets no connect_timeout.
const connectTimeoutDefault = 10 * time.Second

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}

// run is the whole program: it runs the command in args and returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	return newApp(stdout, stderr, getenv).main(ctx, args)
}

// app is one invocation of the CLI.
type app struct {
	stdout, stderr io.Writer
	getenv         func(string) string
	// terminal: stdout is a terminal, so status --watch clears the screen between redraws.
	terminal bool
	// now, when set, replaces the database's clock for ages and lease expiry (tests).
	now func() time.Time
	// idleWait bounds how long pause waits for the batches in flight.
	idleWait time.Duration
	// uiListening, when set, is called with the console's address once 'eventline ui' listens
	// (tests).
	uiListening func(url string)

	g globals
}

func newApp(stdout, stderr io.Writer, getenv func(string) string) *app {
	return &app{stdout: stdout, stderr: stderr, getenv: getenv, terminal: isTerminal(stdout), idleWait: admin.IdleWaitDefault,
		g: defaultGlobals()}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// globals are the flags every command takes.
type globals struct {
	databaseURL string
	// names holds the --*-table flags: the table flags map onto the fields of eventline.Names
	// (--checkpoints-table is CheckpointsTable), the same value the store and the runners take.
	names eventline.Names
}

func defaultGlobals() globals {
	return globals{names: eventline.Names{}.WithDefaults()}
}

var globalFlagNames = map[string]bool{
	"database-url": true, "events-table": true, "checkpoints-table": true, "dead-letters-table": true, "nodes-table": true,
	"projections-table": true,
}

// register adds the global flags to fs, starting from their current values, so that they can be
// given before the command and again after it.
func (g *globals) register(fs *flag.FlagSet) {
	fs.StringVar(&g.databaseURL, "database-url", g.databaseURL,
		"PostgreSQL connection `URL` or key=value string (default $DATABASE_URL)")
	n := &g.names
	fs.StringVar(&n.EventsTable, "events-table", n.EventsTable, "events table `name`")
	fs.StringVar(&n.CheckpointsTable, "checkpoints-table", n.CheckpointsTable, "checkpoints table `name`")
	fs.StringVar(&n.DeadLettersTable, "dead-letters-table", n.DeadLettersTable, "dead letters table `name`")
	fs.StringVar(&n.NodesTable, "nodes-table", n.NodesTable, "runner nodes table `name`")
	fs.StringVar(&n.ProjectionsTable, "projections-table", n.ProjectionsTable, "projection lifecycle records table `name`")
}

// usageError is a mistake on the command line: exit code 2.
type usageError struct {
	cmd string // command whose help to point to; "" for the top level
	msg string
}

func (e *usageError) Error() string { return e.msg }

func usageErrorf(cmd, format string, args ...any) error {
	return &usageError{cmd: cmd, msg: fmt.Sprintf(format, args...)}
}

// errHelp: help was printed; exit 0.
var errHelp = errors.New("help printed")

func (a *app) main(ctx context.Context, args []string) int {
	err := a.dispatch(ctx, args)
	return a.report(err)
}

// report prints err and returns its exit code.
func (a *app) report(err error) int {
	if err == nil || errors.Is(err, errHelp) {
		return exitOK
	}
	fmt.Fprintf(a.stderr, "eventline: %v\n", err)
	if _, ok := errors.AsType[*checkFailed](err); ok {
		return exitCheck
	}
	if ue, ok := errors.AsType[*usageError](err); ok {
		if ue.cmd != "" {
			fmt.Fprintf(a.stderr, "Run 'eventline %s --help' for usage.\n", ue.cmd)
		} else {
			fmt.Fprintln(a.stderr, "Run 'eventline --help' for usage.")
		}
		return exitUsage
	}
	switch {
	case errors.Is(err, eventline.ErrInvalidName):
		return exitUsage
	case errors.Is(err, checkpoint.ErrNotFound), errors.Is(err, lifecycle.ErrNotFound):
		return exitNotFound
	}
	if pe, ok := errors.AsType[*pgconn.PgError](err); ok && pe.Code == "42P01" { // undefined_table
		fmt.Fprintln(a.stderr, "eventline: hint: create the tables with 'eventline migrate', or check the --*-table flags")
	}
	return exitError
}

const topUsage = `eventline operates the projections of an eventline event store in PostgreSQL.

Usage:
  eventline [global flags] <command> [flags] [arguments]

Commands:
  migrate [--print]                          create or upgrade the tables
  status [--watch] [--interval 2s] [--json]  projections, lag and live runner processes
  status --check [--max-lag 30s]             exit 4 when a projection is stopped, has dead letters,
                                             lags or has no live owner
  rebuild NAME                               empty a projection's read model and replay it from 0
  pause NAME                                 stop applying events to a projection
  resume NAME                                apply events to a projection again (clears failures)
  reset --to POSITION NAME                   move a paused or stopped projection to a position
  dead-letters list [--projection NAME] [--json]
                                             list parked events
  dead-letters retry ID                      run the handler on a parked event again
  dead-letters discard ID                    delete a parked event
  ui [--listen ADDR] [--allow-actions]       serve the web console (127.0.0.1:7070 by default)
  help [COMMAND]                             show a command's help

Run 'eventline COMMAND --help' for a command's flags.

Global flags (before the command, or after it but before its arguments):
`

const exitCodesHelp = `
Exit codes:
  0  success
  1  operational error (database unreachable, SQL error) or refused request (rebuild of a
     detached handler or of a projection without Reset, reset of a running projection)
  2  usage error (unknown command, bad flag, missing argument, invalid table name, no database URL)
  3  not found (unknown projection or dead letter)
  4  status --check found a problem (a projection stopped, with dead letters, lagging beyond
     the bound or without a live owner)
`

func (a *app) printTopUsage(w io.Writer) {
	fs := flag.NewFlagSet("eventline", flag.ContinueOnError)
	g := defaultGlobals()
	g.register(fs)
	fmt.Fprint(w, topUsage)
	printFlags(w, fs, func(string) bool { return true })
	fmt.Fprint(w, exitCodesHelp)
}

// dispatch parses the global flags and runs the command.
func (a *app) dispatch(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("eventline", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	a.g.register(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			a.printTopUsage(a.stdout)
			return errHelp
		}
		return usageErrorf("", "%v", err)
	}
	args = fs.Args()
	if len(args) == 0 {
		return usageErrorf("", "no command given")
	}
	name, rest := args[0], args[1:]
	switch name {
	case "migrate":
		return a.cmdMigrate(ctx, rest)
	case "status":
		return a.cmdStatus(ctx, rest)
	case "rebuild":
		return a.cmdRebuild(ctx, rest)
	case "pause":
		return a.cmdPause(ctx, rest)
	case "resume":
		return a.cmdResume(ctx, rest)
	case "reset":
		return a.cmdReset(ctx, rest)
	case "dead-letters":
		return a.cmdDeadLetters(ctx, rest)
	case "ui":
		return a.cmdUI(ctx, rest)
	case "help":
		return a.cmdHelp(ctx, rest)
	}
	return usageErrorf("", "unknown command %q", name)
}

func (a *app) cmdHelp(ctx context.Context, args []string) error {
	if len(args) == 0 {
		a.printTopUsage(a.stdout)
		return errHelp
	}
	switch args[0] {
	case "help":
		a.printTopUsage(a.stdout)
		return errHelp
	case "dead-letters":
		if len(args) == 1 {
			return a.cmdDeadLetters(ctx, []string{"--help"})
		}
		return a.cmdDeadLetters(ctx, []string{args[1], "--help"})
	}
	return a.dispatch(ctx, []string{args[0], "--help"})
}

// command is one command's flag set and help.
type command struct {
	*flag.FlagSet
	name     string // as typed: "status", "dead-letters list"
	synopsis string // arguments and flags after the name
	desc     string // what it does, one paragraph or more
}

func (a *app) newCommand(name, synopsis, desc string) *command {
	fs := flag.NewFlagSet("eventline "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	a.g.register(fs)
	return &command{FlagSet: fs, name: name, synopsis: synopsis, desc: desc}
}

// parse parses args and checks that want positional arguments (named by argNames) remain.
func (a *app) parse(c *command, args []string, argNames ...string) error {
	if err := c.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			a.printCommandUsage(a.stdout, c)
			return errHelp
		}
		return usageErrorf(c.name, "%s: %v", c.name, err)
	}
	switch n := c.NArg(); {
	case n < len(argNames):
		return usageErrorf(c.name, "%s: missing %s", c.name, argNames[n])
	case n > len(argNames):
		return usageErrorf(c.name, "%s: unexpected argument %q (flags go before arguments)", c.name, c.Arg(len(argNames)))
	}
	return nil
}

func (a *app) printCommandUsage(w io.Writer, c *command) {
	fmt.Fprintf(w, "Usage: eventline %s %s\n\n%s\n", c.name, c.synopsis, c.desc)
	hasOwn := false
	c.VisitAll(func(f *flag.Flag) { hasOwn = hasOwn || !globalFlagNames[f.Name] })
	if hasOwn {
		fmt.Fprintln(w, "\nFlags:")
		printFlags(w, c.FlagSet, func(name string) bool { return !globalFlagNames[name] })
	}
	fmt.Fprintln(w, "\nGlobal flags (--database-url, --events-table, ...): see 'eventline --help'.")
	fmt.Fprint(w, exitCodesHelp)
}

// printFlags lists fs's flags that keep selects, like flag.PrintDefaults but with two dashes.
func printFlags(w io.Writer, fs *flag.FlagSet, keep func(string) bool) {
	fs.VisitAll(func(f *flag.Flag) {
		if !keep(f.Name) {
			return
		}
		typ, usage := flag.UnquoteUsage(f)
		line := "  --" + f.Name
		if typ != "" {
			line += " " + typ
		}
		line += "\n      " + strings.ReplaceAll(usage, "\n", "\n      ")
		if f.DefValue != "" && f.DefValue != "false" {
			if g, ok := f.Value.(flag.Getter); ok && isString(g.Get()) {
				line += fmt.Sprintf(" (default %q)", f.DefValue)
			} else {
				line += fmt.Sprintf(" (default %s)", f.DefValue)
			}
		}
		fmt.Fprintln(w, line)
	})
}

func isString(v any) bool {
	_, ok := v.(string)
	return ok
}

// databaseURL is --database-url, else $DATABASE_URL.
func (a *app) databaseURL(cmd string) (string, error) {
	if u := a.g.databaseURL; u != "" {
		return u, nil
	}
	if u := a.getenv("DATABASE_URL"); u != "" {
		return u, nil
	}
	return "", usageErrorf(cmd, "no database: set --database-url or DATABASE_URL")
}

// tableFlags maps the fields of eventline.Names to the flags that set them.
var tableFlags = map[string]string{
	"EventsTable": "events-table", "AggregateHeadsTable": "aggregate-heads-table", "CheckpointsTable": "checkpoints-table",
	"DeadLettersTable": "dead-letters-table", "NodesTable": "nodes-table", "ProjectionsTable": "projections-table",
	"MigrationsTable": "migrations-table",
}

// names returns the table flags as eventline.Names, validated; an invalid one is a usage error
// that names its flag.
func (a *app) names() (eventline.Names, error) {
	err := a.g.names.Validate()
	var ne *eventline.NameError
	if err == nil || !errors.As(err, &ne) {
		return a.g.names, err
	}
	// The error names fields of eventline.Names; say it with the flags that set them.
	flag, other := tableFlags[ne.Field], tableFlags[ne.Other]
	switch {
	case flag != "" && ne.Other == "":
		if _, perr := sqlname.Parse("--"+flag, ne.Value); perr != nil {
			err = perr
		}
	case flag != "" && other != "":
		err = fmt.Errorf("%w: --%s and --%s are both %q", eventline.ErrInvalidName, other, flag, ne.Value)
	}
	return eventline.Names{}, usageErrorf("", "%s", strings.TrimPrefix(err.Error(), "eventline names: "))
}

// tables validates the table names of the global flags and returns the operator's reads and
// actions on them (without a connection).
func (a *app) tables() (*dbConn, error) {
	names, err := a.names()
	if err != nil {
		return nil, err
	}
	adm, err := admin.New(admin.Config{Names: names, IdleWait: a.idleWait, Now: a.now})
	if err != nil {
		return nil, err
	}
	return &dbConn{adm: adm}, nil
}

// connect opens a small pool on the database and checks that it answers. The caller closes it.
func (a *app) connect(ctx context.Context, cmd string) (*pgxpool.Pool, error) {
	return a.connectN(ctx, cmd, 2)
}

// connectN is connect with a pool of maxConns connections.
func (a *app) connectN(ctx context.Context, cmd string, maxConns int32) (*pgxpool.Pool, error) {
	url, err := a.databaseURL(cmd)
	if err != nil {
		return nil, err
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, usageErrorf(cmd, "database URL: %v", err)
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = connectTimeoutDefault
	}
	if _, ok := cfg.ConnConfig.RuntimeParams["application_name"]; !ok {
		cfg.ConnConfig.RuntimeParams["application_name"] = "eventline"
	}
	cfg.MaxConns = maxConns
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect: %w", err)
	}
	return pool, nil
}
