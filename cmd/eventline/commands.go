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

	"github.com/google/uuid"

	"github.com/eventline/eventline/checkpoint"
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
	heads := c.String("aggregate-heads-table", migrations.AggregateHeadsTableDefault, "aggregate heads table `name`")
	migs := c.String("migrations-table", migrations.MigrationsTableDefault, "table recording the applied migrations (`name`)")
	if err := a.parse(c, args); err != nil {
		return err
	}
	cfg := migrations.Config{
		EventsTable:         a.g.events,
		AggregateHeadsTable: *heads,
		CheckpointsTable:    a.g.checkpoints,
		DeadLettersTable:    a.g.deadLetters,
		NodesTable:          a.g.nodes,
		MigrationsTable:     *migs,
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

// withStore connects and runs f with the checkpoint store of the global flags.
func (a *app) withStore(ctx context.Context, cmd string, f func(db *dbConn) error) error {
	events, cps, err := a.tables()
	if err != nil {
		return err
	}
	pool, err := a.connect(ctx, cmd)
	if err != nil {
		return err
	}
	defer pool.Close()
	return f(&dbConn{pool: pool, cps: cps, events: events})
}

func (a *app) cmdRebuild(ctx context.Context, args []string) error {
	c := a.newCommand("rebuild", "NAME",
		`Asks for projection NAME to be rebuilt: the runner process that owns it resets its read model
and replays it from position 0. Every version and partition of NAME that is running, stopped or
paused is marked; a version being built beside it, and retired versions, are left alone. The
request waits in the checkpoints table until a runner with the projection picks it up.`)
	if err := a.parse(c, args, "projection name"); err != nil {
		return err
	}
	name := c.Arg(0)
	if name == "" {
		return usageErrorf(c.name, "%s: empty projection name", c.name)
	}
	return a.withStore(ctx, c.name, func(db *dbConn) error {
		n, err := db.cps.RequestRebuild(ctx, db.pool, name)
		if err != nil {
			return err
		}
		fmt.Fprintf(a.stdout, "rebuild of %s requested (%s marked)\n", name, plural(n, "checkpoint"))
		fmt.Fprintln(a.stdout, "the runner that owns it will reset its read model and replay it from position 0")
		return nil
	})
}

func (a *app) cmdSetState(ctx context.Context, name string, state checkpoint.State, args []string) error {
	desc := `Pauses projection NAME: its runner stops applying events to every version and partition of it
that is running or stopped, until 'eventline resume NAME'. Building and retired versions are
left alone.`
	done := "paused"
	if state == checkpoint.Running {
		desc = `Resumes projection NAME: every version and partition of it that is paused or stopped runs
again. A stopped one forgets its error and retries the event that stopped it. Building and
retired versions are left alone.`
		done = "resumed"
	}
	c := a.newCommand(name, "NAME", desc)
	if err := a.parse(c, args, "projection name"); err != nil {
		return err
	}
	proj := c.Arg(0)
	if proj == "" {
		return usageErrorf(c.name, "%s: empty projection name", c.name)
	}
	return a.withStore(ctx, c.name, func(db *dbConn) error {
		n, err := db.cps.SetState(ctx, db.pool, proj, state)
		if err != nil {
			return err
		}
		fmt.Fprintf(a.stdout, "%s %s (%s)\n", done, proj, plural(n, "checkpoint"))
		return nil
	})
}

const deadLettersUsage = `Usage:
  eventline dead-letters list [--projection NAME] [--json]
  eventline dead-letters retry ID
  eventline dead-letters discard ID

Dead letters are the events that projections with the park policy set aside because their
handler failed. list shows them; retry asks the runner that owns the projection to run the
handler on the event again (the dead letter goes away when that works); discard deletes one.

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

// deadLetterJSON is a dead letter in --json output.
type deadLetterJSON struct {
	ID             int64     `json:"id"`
	Projection     string    `json:"projection"`
	Version        int       `json:"version"`
	Partition      int       `json:"partition"`
	GlobalPosition int64     `json:"global_position"`
	EventID        uuid.UUID `json:"event_id"`
	Error          string    `json:"error"`
	Attempts       int       `json:"attempts"`
	RetryRequested bool      `json:"retry_requested"`
	CreatedAt      time.Time `json:"created_at"`
}

func (a *app) cmdDeadLettersList(ctx context.Context, args []string) error {
	c := a.newCommand("dead-letters list", "[--projection NAME] [--json]",
		`Lists the parked events, by projection, version, partition and position. ERROR is cut to 60
characters; --json prints them in full, as an array of objects.`)
	proj := c.String("projection", "", "show only this projection's dead letters (`NAME`)")
	asJSON := c.Bool("json", false, "print JSON")
	if err := a.parse(c, args); err != nil {
		return err
	}
	return a.withStore(ctx, c.name, func(db *dbConn) error {
		dls, err := db.cps.DeadLetters(ctx, db.pool, *proj)
		if err != nil {
			return err
		}
		if *asJSON {
			out := make([]deadLetterJSON, 0, len(dls))
			for _, d := range dls {
				out = append(out, deadLetterJSON{
					ID: d.ID, Projection: d.Key.Projection, Version: d.Key.Version, Partition: d.Key.Partition,
					GlobalPosition: d.GlobalPosition, EventID: d.EventID, Error: d.Error, Attempts: d.Attempts,
					RetryRequested: d.RetryRequested, CreatedAt: d.CreatedAt.UTC(),
				})
			}
			return writeJSON(a.stdout, out, true)
		}
		if len(dls) == 0 {
			fmt.Fprintln(a.stdout, "no dead letters")
			return nil
		}
		tw := newTable(a.stdout)
		row(tw, "ID", "PROJECTION", "VERSION", "PARTITION", "POSITION", "EVENT ID", "ATTEMPTS", "RETRY", "CREATED", "ERROR")
		for _, d := range dls {
			retry := "-"
			if d.RetryRequested {
				retry = "requested"
			}
			row(tw, strconv.FormatInt(d.ID, 10), d.Key.Projection, strconv.Itoa(d.Key.Version), strconv.Itoa(d.Key.Partition),
				strconv.FormatInt(d.GlobalPosition, 10), d.EventID.String(), strconv.Itoa(d.Attempts), retry,
				d.CreatedAt.UTC().Format(time.RFC3339), cell(truncate(d.Error, errorWidth)))
		}
		return tw.Flush()
	})
}

func (a *app) cmdDeadLetterAct(ctx context.Context, verb string, args []string) error {
	desc := `Asks the runner that owns the dead letter's projection to run the handler on its event again.
When that works, the dead letter is deleted; when it fails again, it stays parked with its
attempts counted. ID is the ID that 'eventline dead-letters list' shows.`
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
			if err := db.cps.DeleteDeadLetter(ctx, db.pool, id); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "dead letter %d discarded\n", id)
			return nil
		}
		if err := db.cps.RequestRetry(ctx, db.pool, id); err != nil {
			return err
		}
		fmt.Fprintf(a.stdout, "retry of dead letter %d requested; the runner that owns its projection will run the handler on it again\n", id)
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
