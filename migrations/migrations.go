package migrations

import (
	"bytes"
	"context"
	"embed"
	"fmt"
	"hash/fnv"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
	"text/template"

	"github.com/jackc/pgx/v5"

	"github.com/eventline/eventline"
	"github.com/eventline/eventline/internal/sqlname"
)

//go:embed sql/*.sql
var sqlFiles embed.FS

// names is a Names validated and parsed.
type names struct {
	events, heads, checkpoints, deadLetters, nodes, projections, migrations sqlname.Name
}

func parse(n eventline.Names) (names, error) {
	if err := n.Validate(); err != nil {
		return names{}, fmt.Errorf("migrations: %w", err)
	}
	n = n.WithDefaults()
	return names{
		events:      sqlname.MustParse(n.EventsTable),
		heads:       sqlname.MustParse(n.AggregateHeadsTable),
		checkpoints: sqlname.MustParse(n.CheckpointsTable),
		deadLetters: sqlname.MustParse(n.DeadLettersTable),
		nodes:       sqlname.MustParse(n.NodesTable),
		projections: sqlname.MustParse(n.ProjectionsTable),
		migrations:  sqlname.MustParse(n.MigrationsTable),
	}, nil
}

// Migration is one numbered SQL file, rendered for a Names.
type Migration struct {
	Version int
	Name    string // file name, e.g. "0001_events.sql"
	SQL     string
}

// Files returns every migration rendered for names, in order. Use it to feed your own migration
// tool; Apply does the same work itself.
func Files(names eventline.Names) ([]Migration, error) {
	n, err := parse(names)
	if err != nil {
		return nil, err
	}
	data := map[string]any{
		"Events":         n.events.Quoted(),
		"AggregateHeads": n.heads.Quoted(),
		"Checkpoints":    n.checkpoints.Quoted(),
		"DeadLetters":    n.deadLetters.Quoted(),
		"Nodes":          n.nodes.Quoted(),
		"Projections":    n.projections.Quoted(),
		"AppendLockFunc": n.events.Sibling("eventline_append_lock"),
		"AppendLockKey":  strconv.FormatInt(sqlname.AppendLockKey(n.events), 10),
		// Migration 0005: the append function of this events table, and the position lock
		// class it takes like Append.
		"AppendFunc":        appendFunc(n.events),
		"UUIDv7Func":        n.events.Sibling("eventline_uuid_v7"),
		"PositionLockClass": strconv.FormatInt(int64(sqlname.PositionLockClass(n.events)), 10),
		// Migration 0007: projector.PartitionOf in SQL.
		"PartitionFunc": sqlname.PartitionFunc(n.events),
	}
	entries, err := fs.ReadDir(sqlFiles, "sql")
	if err != nil {
		return nil, fmt.Errorf("read embedded migrations: %w", err)
	}
	var out []Migration
	for _, e := range entries {
		name := e.Name()
		num, _, ok := strings.Cut(name, "_")
		version, err := strconv.Atoi(num)
		if !ok || err != nil {
			return nil, fmt.Errorf("migration file %q: name must start with a number and an underscore", name)
		}
		raw, err := sqlFiles.ReadFile(path.Join("sql", name))
		if err != nil {
			return nil, fmt.Errorf("read migration %s: %w", name, err)
		}
		tmpl, err := template.New(name).Option("missingkey=error").Parse(string(raw))
		if err != nil {
			return nil, fmt.Errorf("parse migration %s: %w", name, err)
		}
		var buf bytes.Buffer
		if err := tmpl.Execute(&buf, data); err != nil {
			return nil, fmt.Errorf("render migration %s: %w", name, err)
		}
		out = append(out, Migration{Version: version, Name: name, SQL: buf.String()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out, nil
}

// AppendFunc returns the name of the SQL function through which writers that are not Go append to
// names' events table with Store.Append's guarantees (migration 0005; docs/design.md, "Raw SQL
// writers"), quoted and in the events table's schema: eventline_append_<events table>, e.g.
// eventline_append_events. Each events table has its own, since it writes to that table and its
// heads table; a name beyond PostgreSQL's 63 bytes is shortened, with a hash of the table's name.
func AppendFunc(names eventline.Names) (string, error) {
	n, err := parse(names)
	if err != nil {
		return "", err
	}
	return appendFunc(n.events), nil
}

func appendFunc(events sqlname.Name) string {
	const prefix, maxLen = "eventline_append_", 63
	name := prefix + events.Table
	if len(name) > maxLen {
		h := fnv.New32a()
		h.Write([]byte(events.String()))
		name = fmt.Sprintf("%s%s_%08x", prefix, events.Table[:maxLen-len(prefix)-9], h.Sum32())
	}
	return events.Sibling(name)
}

// SQL returns all migrations for names as one script, each preceded by a comment with its name.
// The script does not record what it applied; a database migrated this way should not also be
// migrated with Apply.
func SQL(names eventline.Names) (string, error) {
	files, err := Files(names)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for _, m := range files {
		fmt.Fprintf(&b, "-- eventline migration %s\n%s\n", m.Name, m.SQL)
	}
	return b.String(), nil
}

// Beginner starts transactions. *pgxpool.Pool, *pgx.Conn and pgx.Tx satisfy it.
type Beginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// migrationLockKey serializes Apply across processes (pg_advisory_xact_lock).
const migrationLockKey int64 = 0x6576_6e74_6c6d_6967 // "evntlmig"

// Apply runs the migrations that names' events table has not had yet, in one transaction, holding an
// advisory lock so that concurrent calls (from several processes starting at once) run them
// once. It returns the versions it applied (none when the schema is current).
func Apply(ctx context.Context, db Beginner, names eventline.Names) ([]int, error) {
	n, err := parse(names)
	if err != nil {
		return nil, err
	}
	files, err := Files(names)
	if err != nil {
		return nil, err
	}
	tx, err := db.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("migrate: begin: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()

	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrationLockKey); err != nil {
		return nil, fmt.Errorf("migrate: take lock: %w", err)
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+n.migrations.Quoted()+` (
		events_table text        NOT NULL,
		version      integer     NOT NULL,
		name         text        NOT NULL,
		applied_at   timestamptz NOT NULL DEFAULT now(),
		PRIMARY KEY (events_table, version))`); err != nil {
		return nil, fmt.Errorf("migrate: create %s: %w", n.migrations, err)
	}
	rows, err := tx.Query(ctx, `SELECT version FROM `+n.migrations.Quoted()+` WHERE events_table = $1`, n.events.String())
	if err != nil {
		return nil, fmt.Errorf("migrate: read applied versions: %w", err)
	}
	done, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return nil, fmt.Errorf("migrate: read applied versions: %w", err)
	}
	have := make(map[int]bool, len(done))
	for _, v := range done {
		have[int(v)] = true
	}
	var applied []int
	for _, m := range files {
		if have[m.Version] {
			continue
		}
		if _, err := tx.Exec(ctx, m.SQL); err != nil {
			return nil, fmt.Errorf("migrate: apply %s: %w", m.Name, err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO `+n.migrations.Quoted()+` (events_table, version, name) VALUES ($1, $2, $3)`,
			n.events.String(), m.Version, m.Name); err != nil {
			return nil, fmt.Errorf("migrate: record %s: %w", m.Name, err)
		}
		applied = append(applied, m.Version)
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("migrate: commit: %w", err)
	}
	return applied, nil
}
