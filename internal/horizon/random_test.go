package horizon

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/internal/pgtest"
)

// TestRandomizedHorizon runs writers with every transaction shape the tracker's rules tell apart
// (Append first or after a raw INSERT or COPY, a second Append, savepoints rolled back, commits
// and rollbacks, transactions held open) against a tracker that ticks without pause and now and
// then reconnects (a fresh tick). A row trigger sleeps for some statements, so ticks land between
// a statement's K and its position lock. After every tick it counts the visible events at or
// below the horizon; the invariant (G1) is that no event ever appears there later. The writers'
// choices follow a seed (EVENTLINE_HORIZON_SEED replays one); the interleaving does not.
func TestRandomizedHorizon(t *testing.T) {
	t.Parallel()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("EVENTLINE_HORIZON_SEED"); s != "" {
		var err error
		seed, err = strconv.ParseUint(s, 10, 64)
		require.NoError(t, err)
	}
	t.Logf("seed %d (EVENTLINE_HORIZON_SEED replays it)", seed)
	duration := 3 * time.Second
	if testing.Short() {
		duration = time.Second
	}

	ctx := ctxT(t)
	db := pgtest.NewDatabase(t)
	exec(t, db.Pool, `CREATE FUNCTION slow_rows() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN IF NEW.aggregate_id LIKE 'slow-%' THEN PERFORM pg_sleep(0.002); END IF; RETURN NEW; END $$`)
	exec(t, db.Pool, `CREATE TRIGGER slow_rows BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION slow_rows()`)
	tr := newTracker(t, db)

	type sighting struct{ h, visible int64 }
	var (
		mu        sync.Mutex
		sightings []sighting
	)
	writersDone := make(chan struct{})
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		rng := rand.New(rand.NewPCG(seed, 0))
		last := int64(0)
		for {
			select {
			case <-writersDone:
				return nil
			default:
			}
			if rng.IntN(50) == 0 {
				tr.Close(gctx) // the next tick is fresh
			}
			h, err := tr.Tick(gctx)
			if err != nil {
				return fmt.Errorf("tick: %w", err)
			}
			if h < last {
				return fmt.Errorf("the horizon went back from %d to %d", last, h)
			}
			last = h
			var visible int64
			if err := db.Pool.QueryRow(gctx, `SELECT count(*) FROM events WHERE global_position <= $1`, h).Scan(&visible); err != nil {
				return fmt.Errorf("count: %w", err)
			}
			mu.Lock()
			sightings = append(sightings, sighting{h, visible})
			mu.Unlock()
		}
	})
	var writers sync.WaitGroup
	deadline := time.Now().Add(duration)
	for w := range 6 {
		writers.Add(1)
		g.Go(func() error {
			defer writers.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)+1))
			for time.Now().Before(deadline) {
				if err := randomTx(gctx, db, rng); err != nil {
					return err
				}
			}
			return nil
		})
	}
	g.Go(func() error {
		writers.Wait() // the ticker stops once every writer has returned
		close(writersDone)
		return nil
	})
	require.NoError(t, g.Wait())

	var total int64
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT count(*) FROM events`).Scan(&total))
	require.NotEmpty(t, sightings)
	for _, s := range sightings {
		var now int64
		require.NoError(t, db.Pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE global_position <= $1`, s.h).Scan(&now))
		require.Equal(t, s.visible, now, "an event at or below horizon %d became visible after the tracker passed it (seed %d)", s.h, seed)
	}
	t.Logf("%d ticks, %d events committed, final horizon %d", len(sightings), total, sightings[len(sightings)-1].h)
}

// randomTx runs one writer transaction of a shape rng picks, holds it open a little, and commits
// or rolls it back.
func randomTx(ctx context.Context, db *pgtest.Database, rng *rand.Rand) error {
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	appendSome := func() error {
		id := uuid.NewString()
		if rng.IntN(3) == 0 {
			id = "slow-" + id
		}
		evs := make([]eventstore.Event, 1+rng.IntN(3))
		for i := range evs {
			evs[i] = eventstore.Event{AggregateType: "acct", AggregateID: id, EventType: "Happened", Payload: []byte(`{}`)}
		}
		_, err := store.Append(ctx, tx, eventstore.Any(), evs)
		return err
	}
	raw := func() error {
		_, err := tx.Exec(ctx, `INSERT INTO events (event_id, aggregate_type, aggregate_id, aggregate_version, event_type, payload)
			VALUES (gen_random_uuid(), 'raw', gen_random_uuid()::text, 1, 'RawInserted', '\x7b7d')`)
		return err
	}
	copyRow := func() error {
		_, err := tx.CopyFrom(ctx, pgx.Identifier{"events"},
			[]string{"event_id", "aggregate_type", "aggregate_id", "aggregate_version", "event_type", "payload"},
			pgx.CopyFromRows([][]any{{uuid.New(), "copy", uuid.NewString(), int64(1), "Copied", []byte("{}")}}))
		return err
	}
	savepointed := func(write func() error) error {
		if _, err := tx.Exec(ctx, `SAVEPOINT s`); err != nil {
			return err
		}
		if err := write(); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `ROLLBACK TO SAVEPOINT s`)
		return err
	}
	var steps []func() error
	switch rng.IntN(7) {
	case 0, 1:
		steps = []func() error{appendSome}
	case 2:
		steps = []func() error{appendSome, appendSome}
	case 3:
		steps = []func() error{raw, appendSome}
	case 4:
		steps = []func() error{copyRow, appendSome}
	case 5:
		steps = []func() error{func() error { return savepointed(appendSome) }, appendSome}
	case 6:
		steps = []func() error{func() error { return savepointed(raw) }, appendSome, raw}
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return fmt.Errorf("write: %w", err)
		}
	}
	if rng.IntN(3) == 0 {
		time.Sleep(time.Duration(rng.IntN(3000)) * time.Microsecond)
	}
	if rng.IntN(4) == 0 {
		return tx.Rollback(ctx)
	}
	return tx.Commit(ctx)
}
