package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/eventline/eventline"
	"github.com/eventline/eventline/eventlinetest"
	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/eventstore/postgres"
	"github.com/eventline/eventline/runner"
)

func TestMain(m *testing.M) {
	code := eventlinetest.Run(m)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "the example leaked goroutines:", err)
			code = 1
		}
	}
	os.Exit(code)
}

type sseEvent struct {
	id   int64
	data message
}

// sseClient is one connection to /events.
type sseClient struct {
	events chan sseEvent
	cancel context.CancelFunc
	done   chan struct{}
}

// connect opens /events, with Last-Event-ID when lastID >= 0, and parses the stream.
func connect(t *testing.T, url string, lastID int64) *sseClient {
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/events", nil)
	require.NoError(t, err)
	if lastID >= 0 {
		req.Header.Set("Last-Event-ID", strconv.FormatInt(lastID, 10))
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
	c := &sseClient{events: make(chan sseEvent, 1000), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		var ev sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "id: "):
				ev.id, _ = strconv.ParseInt(strings.TrimPrefix(line, "id: "), 10, 64)
			case strings.HasPrefix(line, "data: "):
				if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &ev.data); err != nil {
					t.Errorf("data %q: %v", line, err)
				}
			case line == "" && ev.id != 0:
				c.events <- ev
				ev = sseEvent{}
			}
		}
	}()
	t.Cleanup(c.close)
	return c
}

func (c *sseClient) close() {
	c.cancel()
	<-c.done
}

func (c *sseClient) next(t *testing.T) sseEvent {
	t.Helper()
	select {
	case ev := <-c.events:
		return ev
	case <-time.After(30 * time.Second):
		t.Fatal("no event")
		return sseEvent{}
	}
}

func tick(n int) []eventstore.Event {
	return []eventstore.Event{{AggregateType: "clock", AggregateID: "test", EventType: "Ticked", Payload: []byte(fmt.Sprintf(`{"n":%d}`, n))}}
}

func appendTick(t *testing.T, ctx context.Context, store *postgres.Store, db *eventlinetest.Database, n int) {
	t.Helper()
	_, err := store.Append(ctx, db.Pool, eventstore.Any(), tick(n))
	require.NoError(t, err)
}

func committed(t *testing.T, db *eventlinetest.Database, after int64) []int64 {
	t.Helper()
	rows, err := db.Pool.Query(context.Background(), `SELECT global_position FROM events WHERE global_position > $1 ORDER BY 1`, after)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	require.NoError(t, err)
	return out
}

// A browser connects (from the end), reads a few events, goes away while events keep coming,
// reconnects with Last-Event-ID and gets exactly the events that followed, in order.
func TestStreamResumesAfterLastEventID(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db := eventlinetest.NewDatabase(t)
	store := postgres.NewStore(&postgres.StoreConfig{Names: eventline.Names{NotifyChannel: "sse_events"}})
	r, err := runner.New(db.Pool, store, runner.Config{})
	require.NoError(t, err)
	runCtx, stopRun := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- r.Run(runCtx) }()
	t.Cleanup(func() {
		stopRun()
		require.NoError(t, <-ran)
	})
	srv := httptest.NewServer(newMux(r))
	t.Cleanup(srv.Close)

	// First connection, without Last-Event-ID: new events only. A writer keeps appending until
	// the client has read three.
	first := connect(t, srv.URL, -1)
	var wg sync.WaitGroup
	writing, stopWriting := context.WithCancel(ctx)
	n := 0
	wg.Go(func() {
		for writing.Err() == nil {
			n++
			if _, err := store.Append(ctx, db.Pool, eventstore.Any(), tick(n)); err != nil {
				t.Error(err)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	var got []sseEvent
	for len(got) < 3 {
		got = append(got, first.next(t))
	}
	first.close()
	stopWriting()
	wg.Wait()
	for i := 1; i < len(got); i++ {
		require.Equal(t, committed(t, db, got[i-1].id)[0], got[i].id, "consecutive events")
	}
	for _, ev := range got {
		require.Equal(t, ev.id, ev.data.Position)
		require.Equal(t, "Ticked", ev.data.Type)
	}

	// More events while the client is away, then it reconnects.
	for i := 0; i < 5; i++ {
		n++
		appendTick(t, ctx, store, db, n)
	}
	last := got[len(got)-1].id
	want := committed(t, db, last)
	require.GreaterOrEqual(t, len(want), 5)
	second := connect(t, srv.URL, last)
	for _, pos := range want {
		ev := second.next(t)
		require.Equal(t, pos, ev.id)
		require.Equal(t, pos, ev.data.Position)
	}
	// And it goes on live.
	n++
	appendTick(t, ctx, store, db, n)
	ev := second.next(t)
	require.Equal(t, committed(t, db, want[len(want)-1]), []int64{ev.id})
	require.JSONEq(t, fmt.Sprintf(`{"n":%d}`, n), string(mustJSON(t, ev.data.Payload)))

	// A bad Last-Event-ID is refused.
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/events", nil)
	require.NoError(t, err)
	req.Header.Set("Last-Event-ID", "nope")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
}

func mustJSON(t *testing.T, v any) []byte {
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return b
}
