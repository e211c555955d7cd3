package eventline

import (
	"fmt"

	"github.com/eventline/eventline/internal/sqlname"
)

// Defaults of Names.
const (
	EventsTableDefault         = "events"
	AggregateHeadsTableDefault = "aggregate_heads"
	CheckpointsTableDefault    = "eventline_checkpoints"
	DeadLettersTableDefault    = "eventline_dead_letters"
	NodesTableDefault          = "eventline_nodes"
	ProjectionsTableDefault    = "eventline_projections"
	MigrationsTableDefault     = "eventline_migrations"
	ControlChannelDefault      = "eventline_control"
	ProgressChannelDefault     = "eventline_progress"
)

// ErrInvalidName is matched (errors.Is) by the errors of Names.Validate, and so by those of every
// constructor and function that takes Names: "invalid SQL name".
var ErrInvalidName = sqlname.ErrInvalidName

// Names names the tables and LISTEN/NOTIFY channels of one eventline installation in a database.
// The zero value names the defaults; set only the names you change.
//
// A table name is a plain identifier (letters, digits and underscores, not starting with a digit,
// at most 63 bytes), optionally qualified by a schema of the same form ("app.events"); the schema
// must exist. A channel name is a plain identifier. Names are quoted in SQL, so they are case
// sensitive: "Events" and "events" are two tables.
//
// Each events table is its own installation: several can live in one database, each with its
// own Names (its own heads, checkpoints... tables and channels) or sharing the migrations table.
type Names struct {
	// EventsTable holds the events. Defaults to "events".
	EventsTable string
	// AggregateHeadsTable holds each aggregate's current version. Defaults to "aggregate_heads".
	AggregateHeadsTable string
	// CheckpointsTable holds how far each projection unit has got, and who owns it. Defaults to
	// "eventline_checkpoints".
	CheckpointsTable string
	// DeadLettersTable holds the events parked by the DeadLetter failure policy. Defaults to
	// "eventline_dead_letters".
	DeadLettersTable string
	// NodesTable lists the live runner processes. Defaults to "eventline_nodes".
	NodesTable string
	// ProjectionsTable holds one lifecycle record per projection (active version, partition
	// layout, pause and rebuild requests). Defaults to "eventline_projections".
	ProjectionsTable string
	// MigrationsTable records which migrations ran, per events table. Defaults to
	// "eventline_migrations".
	MigrationsTable string
	// NotifyChannel, when set, is notified by Store.Append (inside the appending transaction, so
	// on commit only) with the append's last position, and runners LISTEN on it to wake at once.
	// Defaults to "": no notification, runners poll (Config.PollInterval) and wake on
	// Runner.Wake. At very high write rates leave it empty: every notifying commit takes a
	// cluster-wide lock.
	NotifyChannel string
	// ControlChannel is where runner processes tell each other to rebalance now (one joined, one
	// left). Defaults to "eventline_control".
	ControlChannel string
	// ProgressChannel is notified, with the projection's name, by every batch transaction that
	// moves a checkpoint, so that read-your-writes waiters wake on commit. Defaults to
	// "eventline_progress".
	ProgressChannel string
}

// WithDefaults returns n with every empty name but NotifyChannel set to its default.
func (n Names) WithDefaults() Names {
	def := func(s *string, d string) {
		if *s == "" {
			*s = d
		}
	}
	def(&n.EventsTable, EventsTableDefault)
	def(&n.AggregateHeadsTable, AggregateHeadsTableDefault)
	def(&n.CheckpointsTable, CheckpointsTableDefault)
	def(&n.DeadLettersTable, DeadLettersTableDefault)
	def(&n.NodesTable, NodesTableDefault)
	def(&n.ProjectionsTable, ProjectionsTableDefault)
	def(&n.MigrationsTable, MigrationsTableDefault)
	def(&n.ControlChannel, ControlChannelDefault)
	def(&n.ProgressChannel, ProgressChannelDefault)
	return n
}

// Validate reports the first invalid name of n with its defaults, naming the field: a table or
// channel name that is not a plain identifier, two fields naming the same table, or two channels
// that are the same. Its errors match ErrInvalidName.
func (n Names) Validate() error {
	n = n.WithDefaults()
	seen := map[string]string{}
	for _, t := range n.tables() {
		name, err := sqlname.Parse(t.field, t.value)
		if err != nil {
			return &NameError{Field: t.field, Value: t.value, Err: err}
		}
		if other, dup := seen[name.String()]; dup {
			return &NameError{Field: t.field, Other: other, Value: t.value,
				Err: fmt.Errorf("%w: %s and %s are both %q", ErrInvalidName, other, t.field, t.value)}
		}
		seen[name.String()] = t.field
	}
	channels := map[string]string{}
	for _, c := range []table{{"NotifyChannel", n.NotifyChannel}, {"ControlChannel", n.ControlChannel},
		{"ProgressChannel", n.ProgressChannel}} {
		if c.value == "" { // only NotifyChannel may be empty
			continue
		}
		if err := sqlname.Channel(c.value); err != nil {
			return &NameError{Field: c.field, Value: c.value, Err: fmt.Errorf("%s: %w", c.field, err)}
		}
		if other, dup := channels[c.value]; dup {
			return &NameError{Field: c.field, Other: other, Value: c.value,
				Err: fmt.Errorf("%w: %s and %s are both %q", ErrInvalidName, other, c.field, c.value)}
		}
		channels[c.value] = c.field
	}
	return nil
}

// NameError is the error of Names.Validate: the field whose name is invalid, or the second of two
// fields that name the same table or channel. It matches ErrInvalidName.
type NameError struct {
	Field string // the field of Names, e.g. "EventsTable"
	Other string // for two fields with the same name, the first of them; "" otherwise
	Value string // the field's name (with its default)
	Err   error  // what is wrong, naming the field
}

func (e *NameError) Error() string { return "eventline names: " + e.Err.Error() }
func (e *NameError) Unwrap() error { return e.Err }

// table is one table field of Names.
type table struct {
	field string
	value string
}

func (n Names) tables() []table {
	return []table{
		{"EventsTable", n.EventsTable},
		{"AggregateHeadsTable", n.AggregateHeadsTable},
		{"CheckpointsTable", n.CheckpointsTable},
		{"DeadLettersTable", n.DeadLettersTable},
		{"NodesTable", n.NodesTable},
		{"ProjectionsTable", n.ProjectionsTable},
		{"MigrationsTable", n.MigrationsTable},
	}
}
