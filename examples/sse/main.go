// Command sse streams the events of an eventline store to browsers as server-sent events, with a
// runner subscription (runner.Subscribe): no checkpoint table, the browser keeps the position.
//
// GET /events streams the events; each event's SSE id is its global position, so a browser that
// reconnects sends it back as Last-Event-ID and resumes right after the last event it received,
// with none skipped, even one that committed late. Without Last-Event-ID the stream starts at the
// end (new events only). ?aggregate=TYPE (repeatable) filters by aggregate type. GET / is a page
// that shows the stream; a clock appends an event every -every so there is something to see.
//
// It uses DATABASE_URL when set, otherwise a throwaway PostgreSQL it starts (and removes) itself.
//
//	go run ./examples/sse [-addr 127.0.0.1:8080] [-every 1s]
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/eventline/eventline"
	"github.com/eventline/eventline/eventlinetest"
	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/eventstore/postgres"
	"github.com/eventline/eventline/migrations"
	"github.com/eventline/eventline/projector"
	"github.com/eventline/eventline/runner"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "sse:", err)
		os.Exit(1)
	}
}

func run() error {
	addr := flag.String("addr", "127.0.0.1:8080", "listen address")
	every := flag.Duration("every", time.Second, "append a clock event this often (0: never)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	url := os.Getenv("DATABASE_URL")
	if url == "" {
		fmt.Println("starting a throwaway PostgreSQL (set DATABASE_URL to use yours)...")
		var cleanup func() error
		var err error
		if url, cleanup, err = eventlinetest.Throwaway(ctx); err != nil {
			return err
		}
		defer func() { _ = cleanup() }()
	}
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return err
	}
	defer pool.Close()
	names := eventline.Names{NotifyChannel: "sse_events"} // the default tables; Append notifies
	if _, err := migrations.Apply(ctx, pool, names); err != nil {
		return err
	}
	store, err := postgres.New(postgres.StoreConfig{Names: names})
	if err != nil {
		return err
	}
	r, err := runner.New(pool, store, runner.Config{})
	if err != nil {
		return err
	}

	srv := &http.Server{Addr: *addr, Handler: newMux(r)}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return r.Run(ctx) }) // no projections: it serves the subscriptions
	g.Go(func() error {
		fmt.Printf("open http://%s/ (Ctrl-C stops)\n", *addr)
		if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		// The streams end when Run stops (runner.ErrRunnerStopped); Shutdown waits for them.
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return srv.Shutdown(shutdownCtx)
	})
	if *every > 0 {
		g.Go(func() error { return clock(ctx, pool, store, *every) })
	}
	return g.Wait()
}

// clock appends a Ticked event every d.
func clock(ctx context.Context, pool *pgxpool.Pool, store *postgres.Store, d time.Duration) error {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			payload, _ := json.Marshal(map[string]string{"at": now.Format(time.RFC3339Nano)})
			_, err := store.Append(ctx, pool, eventstore.Any(), []eventstore.Event{
				{AggregateType: "clock", AggregateID: "main", EventType: "Ticked", Payload: payload}})
			if err != nil && ctx.Err() == nil {
				return err
			}
		}
	}
}

func newMux(r *runner.Runner) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write([]byte(page))
	})
	mux.HandleFunc("GET /events", func(w http.ResponseWriter, req *http.Request) { stream(w, req, r) })
	return mux
}

const page = `<!doctype html><title>eventline events</title><pre id="log"></pre>
<script>
const log = document.getElementById("log");
const es = new EventSource("/events"); // reconnects by itself, sending Last-Event-ID
es.onmessage = (e) => { log.textContent = e.lastEventId + " " + e.data + "\n" + log.textContent; };
</script>`

// message is the data of one SSE event.
type message struct {
	Position      int64  `json:"position"`
	AggregateType string `json:"aggregate_type"`
	AggregateID   string `json:"aggregate_id"`
	Version       int64  `json:"version"`
	Type          string `json:"type"`
	Payload       any    `json:"payload"`
}

// stream serves one SSE connection: the events after Last-Event-ID (or from the end), until the
// client goes away or the runner stops; the client then reconnects and resumes.
func stream(w http.ResponseWriter, req *http.Request, r *runner.Runner) {
	from := runner.FromEnd()
	if id := req.Header.Get("Last-Event-ID"); id != "" {
		pos, err := strconv.ParseInt(id, 10, 64)
		if err != nil || pos < 0 {
			http.Error(w, "Last-Event-ID: not a position", http.StatusBadRequest)
			return
		}
		from = runner.After(pos)
	}
	var opts []runner.SubscribeOption
	if types := req.URL.Query()["aggregate"]; len(types) > 0 {
		opts = append(opts, runner.WithFilter(projector.FilterSpec{Aggregates: types}))
	}

	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	if _, err := fmt.Fprint(w, ": subscribed\n\n"); err != nil || rc.Flush() != nil {
		return
	}
	for batch, err := range r.Subscribe(req.Context(), from, opts...) {
		if err != nil {
			return // the client left (its context ended), or the runner stopped: it will resume
		}
		for _, ev := range batch {
			m := message{Position: ev.GlobalPosition, AggregateType: ev.AggregateType, AggregateID: ev.AggregateID,
				Version: ev.AggregateVersion, Type: ev.EventType, Payload: string(ev.Payload)}
			if json.Valid(ev.Payload) {
				m.Payload = json.RawMessage(ev.Payload)
			}
			data, err := json.Marshal(m) // one line: SSE data must not contain a newline
			if err != nil {
				return
			}
			if _, err := fmt.Fprintf(w, "id: %d\ndata: %s\n\n", ev.GlobalPosition, data); err != nil {
				return
			}
		}
		if err := rc.Flush(); err != nil {
			return
		}
	}
}
