package admin

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/internal/checkpoint"
	"github.com/eventline/eventline/internal/lifecycle"
)

// The errors of the actions wrap the lifecycle's refusals (lifecycle.ErrNotFound,
// ErrDetachedRebuild, ErrNotResettable, ErrRunning) and checkpoint.ErrNotFound, for errors.Is;
// Refused and NotFound classify them.

// Pause pauses projection name (lifecycle.Store.Pause), then waits, up to IdleWait, until no batch
// of it is in flight: a batch that had begun before the pause may still commit. idle is false
// when the wait ran out.
func (a *Admin) Pause(ctx context.Context, pool *pgxpool.Pool, name string) (idle bool, err error) {
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return a.lc.Pause(ctx, tx, name) }); err != nil {
		return false, refused("pause", name, err)
	}
	idle, err = a.waitIdle(ctx, pool, name)
	if err != nil {
		return false, fmt.Errorf("paused %s, but %w", name, err)
	}
	return idle, nil
}

// waitIdle waits, up to a.idleWait, until no batch of projection name is in flight. It reports
// false when the wait ran out.
func (a *Admin) waitIdle(ctx context.Context, pool *pgxpool.Pool, name string) (bool, error) {
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT set_config('statement_timeout', $1, true)`,
			strconv.FormatInt(max(1, a.idleWait.Milliseconds()), 10)); err != nil {
			return fmt.Errorf("set the wait for the batches of %q: %w", name, err)
		}
		return a.lc.WaitIdle(ctx, tx, name)
	})
	if pe, ok := errors.AsType[*pgconn.PgError](err); ok && pe.Code == "57014" && ctx.Err() == nil { // query_canceled
		return false, nil
	}
	return err == nil, err
}

// Resume clears projection name's pause and the failure of every unit a handler failure stopped
// (lifecycle.Store.Resume). stopped counts those units.
func (a *Admin) Resume(ctx context.Context, pool *pgxpool.Pool, name string) (stopped int, err error) {
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		stopped = 0
		// Only read (no lock), so as not to lock a checkpoint row before the record.
		cps, err := a.cps.Projection(ctx, tx, name, false)
		if err != nil {
			return err
		}
		for _, cp := range cps {
			if cp.Stopped() {
				stopped++
			}
		}
		return a.lc.Resume(ctx, tx, name)
	})
	if err != nil {
		return 0, refused("resume", name, err)
	}
	return stopped, nil
}

// RequestRebuild records a rebuild request for projection name (lifecycle.Store.RequestRebuild)
// and returns the record as it left it. It is refused for a detached handler and a projection
// without Reset.
func (a *Admin) RequestRebuild(ctx context.Context, pool *pgxpool.Pool, name string) (lifecycle.Record, error) {
	var r lifecycle.Record
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if err := a.lc.RequestRebuild(ctx, tx, name); err != nil {
			return err
		}
		var err error
		r, err = a.lc.Get(ctx, tx, name)
		return err
	})
	if err != nil {
		return lifecycle.Record{}, refused("rebuild", name, err)
	}
	return r, nil
}

// ErrBeyondHead: a reset to a position beyond the head of the events table would skip the events
// appended up to it later, unseen (the lag reads 0 meanwhile).
var ErrBeyondHead = errors.New("the position is beyond the head of the events table")

// MoveTo moves every unit of projection name's active version to position
// (lifecycle.Store.MoveTo) and returns their positions before. It is refused while the
// projection runs, and for a position beyond the head of the events table (ErrBeyondHead).
func (a *Admin) MoveTo(ctx context.Context, pool *pgxpool.Pool, name string, position int64) ([]int64, error) {
	var before []int64
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) (err error) {
		before, err = a.lc.MoveTo(ctx, tx, name, position)
		if err != nil {
			return err
		}
		var head int64
		if err := tx.QueryRow(ctx, `SELECT coalesce(max(global_position), 0) FROM `+a.events.Quoted()).Scan(&head); err != nil {
			return fmt.Errorf("read head of %s: %w", a.events, err)
		}
		if position > head {
			return &messageError{msg: fmt.Sprintf("position %d is beyond the head of the events table (%d)", position, head),
				err: ErrBeyondHead}
		}
		return nil
	})
	if err != nil {
		return nil, refused("reset", name, err)
	}
	return before, nil
}

// DeadLetter is a parked event as the CLI's --json and the console show it.
type DeadLetter struct {
	ID             int64     `json:"id"`
	Projection     string    `json:"projection"`
	Version        int       `json:"version"`
	GlobalPosition int64     `json:"global_position"`
	EventID        uuid.UUID `json:"event_id"`
	AggregateType  string    `json:"aggregate_type"`
	AggregateID    string    `json:"aggregate_id"`
	// BlockedBy is the position of the earlier parked event of the same aggregate this one is
	// parked behind; 0 when none.
	BlockedBy      int64     `json:"blocked_by"`
	Error          string    `json:"error"`
	Attempts       int       `json:"attempts"`
	RetryRequested bool      `json:"retry_requested"`
	CreatedAt      time.Time `json:"created_at"`
}

// DeadLetters lists the parked events of projection (of all projections with ""), by projection,
// version and position: the first limit of them, or all when limit is 0.
func (a *Admin) DeadLetters(ctx context.Context, pool *pgxpool.Pool, projection string, limit int) ([]DeadLetter, error) {
	return a.deadLetters(ctx, pool, projection, limit)
}

func (a *Admin) deadLetters(ctx context.Context, db eventstore.DBTX, projection string, limit int) ([]DeadLetter, error) {
	var dls []checkpoint.DeadLetter
	var err error
	if limit > 0 {
		dls, err = a.cps.FirstDeadLetters(ctx, db, projection, limit)
	} else {
		dls, err = a.cps.DeadLetters(ctx, db, projection)
	}
	if err != nil {
		return nil, err
	}
	out := make([]DeadLetter, 0, len(dls))
	for _, d := range dls {
		out = append(out, DeadLetter{
			ID: d.ID, Projection: d.Projection, Version: d.Version, GlobalPosition: d.GlobalPosition,
			EventID: d.EventID, AggregateType: d.AggregateType, AggregateID: d.AggregateID, BlockedBy: d.BlockedBy,
			Error: d.Error, Attempts: d.Attempts, RetryRequested: d.RetryRequested, CreatedAt: d.CreatedAt.UTC(),
		})
	}
	return out, nil
}

// RetryDeadLetter asks the runner that owns dead letter id's aggregate to run the handler on it
// again.
func (a *Admin) RetryDeadLetter(ctx context.Context, pool *pgxpool.Pool, id int64) error {
	return deadLetterErr(id, a.cps.RequestRetry(ctx, pool, id))
}

// DiscardDeadLetter deletes dead letter id: its event is never applied to that projection.
func (a *Admin) DiscardDeadLetter(ctx context.Context, pool *pgxpool.Pool, id int64) error {
	return deadLetterErr(id, a.cps.DeleteDeadLetter(ctx, pool, id))
}

func deadLetterErr(id int64, err error) error {
	if errors.Is(err, checkpoint.ErrNotFound) {
		return &notFoundError{msg: fmt.Sprintf("dead letter %d not found", id), err: err}
	}
	return err
}

// notFoundError prints as its message alone and is the not-found error it wraps.
type notFoundError struct {
	msg string
	err error
}

func (e *notFoundError) Error() string { return e.msg }
func (e *notFoundError) Unwrap() error { return e.err }

// messageError prints as its message alone and is the error it wraps.
type messageError struct {
	msg string
	err error
}

func (e *messageError) Error() string { return e.msg }
func (e *messageError) Unwrap() error { return e.err }
