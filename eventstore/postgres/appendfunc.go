package postgres

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/eventline/eventline/eventstore"
)

// ConflictSQLState is the SQLSTATE that the append function of migration 0005 (see
// migrations.AppendFunc and docs/design.md, "Raw SQL writers") raises when the aggregate's
// version is not the expected one: VC409, "version conflict".
const ConflictSQLState = "VC409"

// programLimitExceeded is the SQLSTATE of an event larger than eventline.max_event_size.
const programLimitExceeded = "54000"

// MapAppendFuncError maps an error from a call of the append function to the errors Append
// returns: its version conflict becomes a *eventstore.ConcurrencyError (matching
// eventstore.ErrOptimisticConcurrency), a stored event ID an error matching
// eventstore.ErrDuplicateEventID, and an event larger than the setting eventline.max_event_size
// (migration 0005) one matching eventstore.ErrEventTooLarge. Any other error, nil included, is
// returned unchanged.
func MapAppendFuncError(err error) error {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return err
	}
	switch {
	case pgErr.Code == ConflictSQLState:
		// DETAIL is {"aggregate_type", "aggregate_id", "expected_version", "actual_version"}.
		var d struct {
			AggregateType string `json:"aggregate_type"`
			AggregateID   string `json:"aggregate_id"`
			Expected      *int64 `json:"expected_version"`
			Actual        int64  `json:"actual_version"`
		}
		if jerr := json.Unmarshal([]byte(pgErr.Detail), &d); jerr != nil {
			return fmt.Errorf("%w: %s", eventstore.ErrOptimisticConcurrency, pgErr.Message)
		}
		expected := eventstore.Any()
		if d.Expected != nil {
			expected = eventstore.Exact(max(*d.Expected, 0)) // 0 and -1: no stream
		}
		return &eventstore.ConcurrencyError{AggregateType: d.AggregateType, AggregateID: d.AggregateID,
			Expected: expected, Actual: d.Actual}
	case pgErr.Code == programLimitExceeded && strings.HasPrefix(pgErr.Message, "eventline append"):
		return fmt.Errorf("%w: %s", eventstore.ErrEventTooLarge, pgErr.Message)
	case isDuplicateEventID(pgErr):
		return fmt.Errorf("%w: %s", eventstore.ErrDuplicateEventID, pgErr.Detail)
	}
	return err
}

// isDuplicateEventID reports whether pgErr is the events table's unique index on event_id.
func isDuplicateEventID(pgErr *pgconn.PgError) bool {
	return pgErr.Code == uniqueViolation && strings.Contains(pgErr.Detail, "(event_id)")
}
