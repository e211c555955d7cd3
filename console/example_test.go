package console_test

import (
	"context"
	"log"
	"net/http"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/eventline/eventline/console"
)

// A service mounts the console under a prefix of its own mux, beside its other endpoints. This
// one allows actions, with a token from the environment; put the service's own authentication
// in front of it too when it is reachable from outside.
func Example() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()

	ui, err := console.New(console.Config{
		Pool:         pool,
		AllowActions: true,
		Token:        os.Getenv("EVENTLINE_UI_TOKEN"), // the page asks for it, or takes it from #token=...
	})
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/eventline/", http.StripPrefix("/eventline", ui)) // the page at /eventline/
	srv := &http.Server{Addr: "127.0.0.1:8080", Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(srv.ListenAndServe())
}
