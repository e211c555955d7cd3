package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/eventline/eventline/internal/lifecycle"
	"github.com/eventline/eventline/migrations"
)

func (a *app) cmdMigrate(ctx context.Context, args []string) error {
	c := a.newCommand("migrate", "[--print] [--aggregate-heads-table NAME] [--migrations-table NAME]",
		`Creates or upgrades eventline's tables: it applies, in one transaction and under an advisory
lock, the migrations the database has not had yet, and prints their versions ("schema is up to
date" when there were none). Running it again, or from several processes at once, is safe.

With --print it writes the SQL of every migration to stdout instead, without connecting, for
teams that run their own migration tool. That script does not record what it applied: do not
also migrate a database set up from it with 'eventline migrate'.`)
	printSQL := c.Bool("print", false, "write the SQL to stdout instead of applying it (needs no database)")
	// Only migrate touches these two tables; they map onto the same eventline.Names as the global
	// table flags.
	n := &a.g.names
	c.StringVar(&n.AggregateHeadsTable, "aggregate-heads-table", n.AggregateHeadsTable, "aggregate heads table `name`")
	c.StringVar(&n.MigrationsTable, "migrations-table", n.MigrationsTable, "table recording the applied migrations (`name`)")
	if err := a.parse(c, args); err != nil {
		return err
	}
	cfg, err := a.names()
	if err != nil {
		return err
	}
	files, err := migrations.Files(cfg) // validates the names before anything else
	if err != nil {
		return err
	}
	if *printSQL {
		sql, err := migrations.SQL(cfg)
		if err != nil {
			return err
		}
		_, err = io.WriteString(a.stdout, sql)
		return err
	}
	pool, err := a.connect(ctx, c.name)
	if err != nil {
		return err
	}
	defer pool.Close()
	applied, err := migrations.Apply(ctx, pool, cfg)
	if err != nil {
		return err
	}
	if len(applied) == 0 {
		fmt.Fprintln(a.stdout, "schema is up to date")
		return nil
	}
	names := make(map[int]string, len(files))
	for _, f := range files {
		names[f.Version] = f.Name
	}
	for _, v := range applied {
		fmt.Fprintf(a.stdout, "applied migration %d (%s)\n", v, names[v])
	}
	return nil
}

// withStore connects and runs f with the stores of the global flags.
func (a *app) withStore(ctx context.Context, cmd string, f func(db *dbConn) error) error {
	db, err := a.tables()
	if err != nil {
		return err
	}
	pool, err := a.connect(ctx, cmd)
	if err != nil {
		return err
	}
	defer pool.Close()
	db.pool = pool
	return f(db)
}

// projectionArg parses c's arguments: one projection name.
func (a *app) projectionArg(c *command, args []string) (string, error) {
	if err := a.parse(c, args, "projection name"); err != nil {
		return "", err
	}
	name := c.Arg(0)
	if name == "" {
		return "", usageErrorf(c.name, "%s: empty projection name", c.name)
	}
	return name, nil
}

func (a *app) cmdRebuild(ctx context.Context, args []string) error {
	c := a.newCommand("rebuild", "NAME",
		`Asks for projection NAME to be rebuilt: a runner process with the code of its active version
empties the read model (the projection's Reset) once and replays every event from position 0.
The request is recorded in the projection's lifecycle record and carried out once, however many
times it is made before a runner picks it up. When it is carried out, the active version is
rebuilt; a pending partition change completes at once (everything starts from 0 anyway); a build
of a newer version beside it goes on; the dead letters of the active version are cleared.

It is refused (exit 1) for a detached handler, which would repeat its side effects for the whole
history, and for a projection without Reset, which would apply every event a second time onto
its read model.`)
	name, err := a.projectionArg(c, args)
	if err != nil {
		return err
	}
	return a.withStore(ctx, c.name, func(db *dbConn) error {
		r, err := db.adm.RequestRebuild(ctx, db.pool, name)
		if err != nil {
			return err
		}
		fmt.Fprintf(a.stdout, "rebuild of %s %s requested\n", name, r.Active)
		if r.RebuildRequested-1 > r.Rebuilds {
			fmt.Fprintln(a.stdout, "a request was already pending: they are carried out once")
		}
		fmt.Fprintf(a.stdout, "a runner with the code of version %d will empty the read model once and replay it from position 0\n",
			r.Active.Version)
		switch {
		case r.HasTarget() && r.Mode == lifecycle.Switch:
			fmt.Fprintf(a.stdout, "the pending change to %s completes at once\n", r.Target)
		case r.HasTarget():
			fmt.Fprintf(a.stdout, "the build of %s goes on\n", r.Target)
		}
		if r.Paused {
			fmt.Fprintf(a.stdout, "%s is paused: it replays nothing until 'eventline resume %s'\n", name, name)
		}
		return nil
	})
}

func (a *app) cmdReset(ctx context.Context, args []string) error {
	c := a.newCommand("reset", "--to POSITION NAME",
		`Moves every unit of projection NAME's active version to POSITION: forwards to skip events
(a poison event, history the read model does not need), backwards to apply events again. The
read model is not touched: what it already holds stays. It is refused (exit 1) while the
projection runs: pause it first, or it must be stopped by a failing handler; while a version or
partition change is in progress; and for a POSITION beyond the head of the events table (it
would skip the events appended up to it later). Failures are cleared; a pause stays, so
'eventline resume NAME' starts it from POSITION.`)
	to := c.Int64("to", -1, "the position to move to (`POSITION`, 0 is the beginning)")
	name, err := a.projectionArg(c, args)
	if err != nil {
		return err
	}
	if *to < 0 {
		return usageErrorf(c.name, "%s: --to POSITION is required (0 or more)", c.name)
	}
	return a.withStore(ctx, c.name, func(db *dbConn) error {
		before, err := db.adm.MoveTo(ctx, db.pool, name, *to)
		if err != nil {
			return err
		}
		fmt.Fprintf(a.stdout, "moved %s to position %d (from %v)\n", name, *to, before)
		return nil
	})
}

func (a *app) cmdPause(ctx context.Context, args []string) error {
	c := a.newCommand("pause", "NAME",
		`Pauses projection NAME: no version or partition of it applies events until 'eventline resume
NAME'. The pause is recorded in the projection's lifecycle record and survives version cut-overs,
partition changes and rebuilds. It then waits (up to 10s) for the batches already in flight,
whose commit the pause cannot stop; if one is still running after that, it says so.`)
	name, err := a.projectionArg(c, args)
	if err != nil {
		return err
	}
	return a.withStore(ctx, c.name, func(db *dbConn) error {
		idle, err := db.adm.Pause(ctx, db.pool, name)
		if err != nil {
			return err
		}
		if !idle {
			fmt.Fprintf(a.stdout, "paused %s, but a batch is still in flight after %s: it may still commit\n", name, db.adm.IdleWait())
			return nil
		}
		fmt.Fprintf(a.stdout, "paused %s\n", name)
		return nil
	})
}

func (a *app) cmdResume(ctx context.Context, args []string) error {
	c := a.newCommand("resume", "NAME",
		`Resumes projection NAME: it clears the operator's pause and the failure of every version and
partition a handler failure stopped; those retry the event that failed. Resuming a projection
that is neither paused nor stopped changes nothing.`)
	name, err := a.projectionArg(c, args)
	if err != nil {
		return err
	}
	return a.withStore(ctx, c.name, func(db *dbConn) error {
		stopped, err := db.adm.Resume(ctx, db.pool, name)
		if err != nil {
			return err
		}
		if stopped > 0 {
			fmt.Fprintf(a.stdout, "resumed %s (failure cleared on %s: the failed event is tried again)\n",
				name, plural(stopped, "checkpoint"))
			return nil
		}
		fmt.Fprintf(a.stdout, "resumed %s\n", name)
		return nil
	})
}

const deadLettersUsage = `Usage:
  eventline dead-letters list [--projection NAME] [--json]
  eventline dead-letters retry ID
  eventline dead-letters discard ID

Dead letters are the events that projections with the park policy set aside because their
handler failed, and the later events of the same aggregate parked behind them. They belong to a
version of a projection, not to a partition. list shows them; retry asks the runner that owns
the event's aggregate to run the handler on it again (the dead letter goes away when that works);
discard deletes one.

Run 'eventline dead-letters COMMAND --help' for a command's flags.
`

func (a *app) cmdDeadLetters(ctx context.Context, args []string) error {
	const group = "dead-letters"
	if len(args) == 0 {
		return usageErrorf(group, "dead-letters: missing command (list, retry or discard)")
	}
	switch args[0] {
	case "-h", "-help", "--help":
		fmt.Fprint(a.stdout, deadLettersUsage)
		fmt.Fprint(a.stdout, exitCodesHelp)
		return errHelp
	case "list":
		return a.cmdDeadLettersList(ctx, args[1:])
	case "retry", "discard":
		return a.cmdDeadLetterAct(ctx, args[0], args[1:])
	}
	return usageErrorf(group, "dead-letters: unknown command %q (want list, retry or discard)", args[0])
}

func (a *app) cmdDeadLettersList(ctx context.Context, args []string) error {
	c := a.newCommand("dead-letters list", "[--projection NAME] [--json]",
		`Lists the parked events, by projection, version and position, with the aggregate each belongs
to. BLOCKED BY is the position of the earlier parked event of the same aggregate that the event
waits behind ("-" when it failed itself). ERROR is cut to 60 characters; --json prints them in
full, as an array of objects.`)
	proj := c.String("projection", "", "show only this projection's dead letters (`NAME`)")
	asJSON := c.Bool("json", false, "print JSON")
	if err := a.parse(c, args); err != nil {
		return err
	}
	return a.withStore(ctx, c.name, func(db *dbConn) error {
		dls, err := db.adm.DeadLetters(ctx, db.pool, *proj, 0)
		if err != nil {
			return err
		}
		if *asJSON {
			return writeJSON(a.stdout, dls, true)
		}
		if len(dls) == 0 {
			fmt.Fprintln(a.stdout, "no dead letters")
			return nil
		}
		tw := newTable(a.stdout)
		row(tw, "ID", "PROJECTION", "VERSION", "POSITION", "AGGREGATE", "EVENT ID", "BLOCKED BY", "ATTEMPTS", "RETRY", "CREATED", "ERROR")
		for _, d := range dls {
			retry, blocked := "-", "-"
			if d.RetryRequested {
				retry = "requested"
			}
			if d.BlockedBy > 0 {
				blocked = strconv.FormatInt(d.BlockedBy, 10)
			}
			row(tw, strconv.FormatInt(d.ID, 10), d.Projection, strconv.Itoa(d.Version), strconv.FormatInt(d.GlobalPosition, 10),
				d.AggregateType+"/"+d.AggregateID, d.EventID.String(), blocked, strconv.Itoa(d.Attempts), retry,
				d.CreatedAt.Format(time.RFC3339), cell(truncate(d.Error, errorWidth)))
		}
		return tw.Flush()
	})
}

func (a *app) cmdDeadLetterAct(ctx context.Context, verb string, args []string) error {
	desc := `Asks the runner that owns the dead letter's aggregate (in the projection's current partition
layout) to run the handler on its event again, and then on the later parked events of the same
aggregate, in order. When that works, the dead letter is deleted; when it fails again, it stays
parked with its attempts counted. ID is the ID that 'eventline dead-letters list' shows.`
	if verb == "discard" {
		desc = `Deletes dead letter ID: its event is never applied to that projection. ID is the ID that
'eventline dead-letters list' shows.`
	}
	c := a.newCommand("dead-letters "+verb, "ID", desc)
	if err := a.parse(c, args, "dead letter ID"); err != nil {
		return err
	}
	id, err := strconv.ParseInt(c.Arg(0), 10, 64)
	if err != nil || id <= 0 {
		return usageErrorf(c.name, "%s: invalid dead letter ID %q (want a positive integer)", c.name, c.Arg(0))
	}
	return a.withStore(ctx, c.name, func(db *dbConn) error {
		if verb == "discard" {
			err = db.adm.DiscardDeadLetter(ctx, db.pool, id)
		} else {
			err = db.adm.RetryDeadLetter(ctx, db.pool, id)
		}
		if err != nil {
			return err
		}
		if verb == "discard" {
			fmt.Fprintf(a.stdout, "dead letter %d discarded\n", id)
			return nil
		}
		fmt.Fprintf(a.stdout, "retry of dead letter %d requested; the runner that owns its aggregate will run the handler on it again\n", id)
		return nil
	})
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return strconv.Itoa(n) + " " + what + "s"
}

// errorWidth is how much of an error a table shows.
const errorWidth = 60

// truncate makes s one line of at most n runes, ending in "..." when it was cut.
func truncate(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-3]) + "..."
}

// cell is s, or "-" when it is empty (so that no table line ends in padding).
func cell(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newTable(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 8, 2, ' ', 0) }

func row(tw *tabwriter.Writer, cells ...string) {
	fmt.Fprintln(tw, strings.Join(cells, "\t"))
}

func writeJSON(w io.Writer, v any, indent bool) error {
	var b []byte
	var err error
	if indent {
		b, err = json.MarshalIndent(v, "", "  ")
	} else {
		b, err = json.Marshal(v)
	}
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}
