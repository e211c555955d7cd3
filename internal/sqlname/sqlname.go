// Package sqlname validates and quotes the table and channel names that users configure, and
// derives the advisory lock keys that tie the events table's triggers to the runner's horizon
// tracker. Both sides must compute the same keys, so they live here, once.
package sqlname

import (
	"errors"
	"fmt"
	"hash/fnv"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5"
)

// ErrInvalidName is matched by every error this package returns.
var ErrInvalidName = errors.New("invalid SQL name")

// maxIdentifierLen is PostgreSQL's NAMEDATALEN-1: longer names are silently truncated by the
// server, which would make two configured names collide.
const maxIdentifierLen = 63

var plainIdent = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// Name is a validated, possibly schema-qualified, table name.
type Name struct {
	Schema string // empty: unqualified (search_path decides)
	Table  string
}

// Parse validates a table name: a plain identifier (letters, digits, underscores, not starting
// with a digit, at most 63 bytes), optionally qualified by a schema of the same form ("app.events").
// what names the setting in the error, e.g. "events table".
func Parse(what, s string) (Name, error) {
	parts := strings.Split(s, ".")
	if len(parts) > 2 {
		return Name{}, fmt.Errorf("%w: %s %q: at most one dot (schema.table) is allowed", ErrInvalidName, what, s)
	}
	for _, p := range parts {
		if err := checkIdent(p); err != nil {
			return Name{}, fmt.Errorf("%w: %s %q: %s", ErrInvalidName, what, s, err)
		}
	}
	if len(parts) == 2 {
		return Name{Schema: parts[0], Table: parts[1]}, nil
	}
	return Name{Table: parts[0]}, nil
}

// MustParse is Parse for names known to be valid (defaults); it panics otherwise.
func MustParse(s string) Name {
	n, err := Parse("name", s)
	if err != nil {
		panic(err)
	}
	return n
}

// Channel validates a LISTEN/NOTIFY channel name: a plain identifier, as for tables.
func Channel(s string) error {
	if err := checkIdent(s); err != nil {
		return fmt.Errorf("%w: channel %q: %s", ErrInvalidName, s, err)
	}
	return nil
}

func checkIdent(s string) error {
	switch {
	case s == "":
		return errors.New("empty identifier")
	case len(s) > maxIdentifierLen:
		return fmt.Errorf("longer than %d bytes", maxIdentifierLen)
	case !plainIdent.MatchString(s):
		return errors.New("only letters, digits and underscores are allowed, not starting with a digit")
	}
	return nil
}

// String is the name as configured.
func (n Name) String() string {
	if n.Schema == "" {
		return n.Table
	}
	return n.Schema + "." + n.Table
}

// Quoted is the name quoted for SQL.
func (n Name) Quoted() string {
	if n.Schema == "" {
		return pgx.Identifier{n.Table}.Sanitize()
	}
	return pgx.Identifier{n.Schema, n.Table}.Sanitize()
}

// Sibling is another object in the same schema, e.g. a function or trigger name, quoted.
func (n Name) Sibling(object string) string {
	if n.Schema == "" {
		return pgx.Identifier{object}.Sanitize()
	}
	return pgx.Identifier{n.Schema, object}.Sanitize()
}

// Literal is the name as an SQL string literal (for regclass casts and catalog lookups).
// The name is validated, so it holds no quotes.
func (n Name) Literal() string { return "'" + n.Quoted() + "'" }

// PartitionFunc is the SQL function of migration 0007, created in the events table's schema:
// PartitionFunc(aggregate_id text, partitions integer) is projector.PartitionOf (docs/design.md,
// "Partitions in SQL").
func PartitionFunc(events Name) string { return events.Sibling("eventline_partition_of") }

// AppendLockKey is the key K of the shared advisory lock (bigint form) that every insert into the
// events table takes before positions are allocated (docs/design.md, "The gap problem").
func AppendLockKey(events Name) int64 {
	h := fnv.New64a()
	h.Write([]byte("eventline/append/" + events.String()))
	// Keep it negative so it can never equal a small application lock number.
	return int64(h.Sum64() | 1<<63)
}

// PositionLockClass is the first key of the two-key shared advisory lock that Append takes on the
// low 32 bits of its first position, when its statement is the transaction's first insert into the
// events table (docs/design.md, "The gap problem"). The tracker uses it to ignore appenders whose
// positions all lie above a hole. The "v2" in the derivation makes the tracker ignore the locks of
// older Append code, which took it on every statement, during a rolling upgrade.
func PositionLockClass(events Name) int32 {
	h := fnv.New32a()
	h.Write([]byte("eventline/position/v2/" + events.String()))
	return int32(h.Sum32() | 1<<31)
}
