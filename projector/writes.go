package projector

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Writes collects the statements that handlers registered with On write for a batch of events.
// Exec only queues a statement: the Router sends the queued statements to the server together,
// in the order they were queued, in the batch's transaction (one round trip instead of one per
// statement), before any handler registered with OnTx runs and before Handle returns. Hence
// Exec returns nothing: a statement's result (rows affected, RETURNING, a read) is not known
// when a handler runs. A handler that needs one is registered with OnTx instead.
//
// A statement's error is the error of the event whose handler queued it: Handle returns it as
// an *EventError naming that event. A Writes belongs to one Handle call; do not keep it.
type Writes struct {
	batch pgx.Batch
	// positions holds, for each queued statement, the global position of the event that queued it.
	positions []int64
	position  int64 // of the event being handled
}

// flushAt is how many queued statements make the Router send them before the next event, which
// bounds what a batch holds in memory.
const flushAt = 4096

// Exec queues a statement with its arguments (as for pgx.Tx.Exec). It is sent, in order with
// the other writes of the batch, before the next OnTx handler runs or Handle returns.
func (w *Writes) Exec(sql string, args ...any) {
	w.batch.Queue(sql, args...)
	w.positions = append(w.positions, w.position)
}

// Len is how many statements are queued and not sent yet.
func (w *Writes) Len() int { return len(w.positions) }

// flush sends the queued statements in tx and reads their results in order. The first failing
// statement's error is attributed to the event that queued it (an *EventError). The server runs
// nothing after a failed statement of a transaction, so the statements after it have no effect.
func (w *Writes) flush(ctx context.Context, tx pgx.Tx) error {
	if len(w.positions) == 0 {
		return nil
	}
	defer w.reset()
	if tx == nil {
		return errors.New("projector: writes queued, but Handle was called without a transaction")
	}
	br := tx.SendBatch(ctx, &w.batch)
	for i, pos := range w.positions {
		if _, err := br.Exec(); err != nil {
			_ = br.Close()
			if isPreprocessing(err) {
				// Raised before any statement ran (preparing the statements, encoding arguments): it
				// may come from any event of the batch, so name none and let the runner search.
				return fmt.Errorf("send %d writes: %w", len(w.positions), err)
			}
			return &EventError{Position: pos, Err: fmt.Errorf("queued write %d of the batch: %w", i+1, err)}
		}
	}
	if err := br.Close(); err != nil {
		return fmt.Errorf("send %d writes: %w", len(w.positions), err)
	}
	return nil
}

// isPreprocessing reports whether err was raised before any statement of a batch ran.
func isPreprocessing(err error) bool {
	var pre pgx.ErrPreprocessingBatch
	return errors.As(err, &pre)
}

func (w *Writes) reset() {
	clear(w.batch.QueuedQueries)
	w.batch.QueuedQueries = w.batch.QueuedQueries[:0]
	w.positions = w.positions[:0]
}

// EventError is a handler's error attributed to one event of the batch. A Projection's Handle may
// return one (wrapped or not) to name the event that failed; the runner then starts its search for
// the failing event there instead of splitting the batch in halves. The runner checks the claim:
// it applies the failure policy to an event only after that event fails alone.
type EventError struct {
	Position int64 // global position of the event
	Err      error
}

func (e *EventError) Error() string {
	return fmt.Sprintf("event at position %d: %v", e.Position, e.Err)
}
func (e *EventError) Unwrap() error { return e.Err }
