// Command demo is a small bank kept current by eventline: writers append account events while a
// runner keeps two read models (balances and daily totals) and a detached notifier up to date;
// a progress table refreshes in the terminal. After a while version 2 of the balances read model
// is registered on a second runner (as a new deploy would), built from position 0 while version 1
// keeps serving and the writers keep going, and then takes over: the view demo_account_balances
// switches to it in the same transaction that retires version 1.
//
// The runners' metrics are served for Prometheus at http://127.0.0.1:9464/metrics (-metrics), with
// liveness and readiness probes at /livez and /readyz (ready: caught up within 30s), and the web
// console (package console, with actions allowed behind a token it makes up) at
// http://127.0.0.1:9464/console/, an address the progress table prints with the token.
//
// It uses DATABASE_URL when set, otherwise a throwaway PostgreSQL it starts (and removes) itself.
// Ctrl-C stops it cleanly.
//
//	go run ./examples/demo [-duration 30s] [-writers 4] [-rate 400] [-metrics 127.0.0.1:9464]
package main

import (
	"context"
	crand "crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	prom "github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/eventline/eventline"
	"github.com/eventline/eventline/console"
	"github.com/eventline/eventline/eventlinetest"
	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/eventstore/postgres"
	eventlineprom "github.com/eventline/eventline/metrics/prometheus"
	"github.com/eventline/eventline/migrations"
	"github.com/eventline/eventline/projector"
	"github.com/eventline/eventline/runner"
)

// readyLag is how far behind the demo's runner may be and still be ready (its /readyz).
const readyLag = 30 * time.Second

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

type options struct {
	duration time.Duration
	writers  int
	rate     int
	v2After  time.Duration
	metrics  string
	// consoleURL is filled in when the console is served, with its token.
	consoleURL string
	out        io.Writer
	redraw     bool
}

func run() error {
	var o options
	flag.DurationVar(&o.duration, "duration", 0, "stop after this long (0: run until Ctrl-C)")
	flag.IntVar(&o.writers, "writers", 4, "concurrent writers")
	flag.IntVar(&o.rate, "rate", 400, "events per second, all writers together")
	flag.DurationVar(&o.v2After, "v2-after", 8*time.Second, "when to register balances v2")
	flag.StringVar(&o.metrics, "metrics", "127.0.0.1:9464", "serve Prometheus metrics at http://ADDR/metrics and the web console at http://ADDR/console/ (empty: off)")
	flag.Parse()
	o.out, o.redraw = os.Stdout, true

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	url := os.Getenv("DATABASE_URL")
	if url == "" {
		fmt.Println("starting a throwaway PostgreSQL (set DATABASE_URL to use yours)...")
		var cleanup func() error
		var err error
		url, cleanup, err = eventlinetest.Throwaway(ctx)
		if err != nil {
			return err
		}
		defer func() { _ = cleanup() }()
	}
	return demo(ctx, url, o)
}

// The bank's events.
type (
	AccountOpened struct {
		Owner string `json:"owner"`
	}
	Deposited struct {
		Amount int64 `json:"amount"`
	}
	Withdrawn struct {
		Amount int64 `json:"amount"`
	}
)

func demo(ctx context.Context, url string, o options) error {
	if o.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.duration)
		defer cancel()
	}
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer pool.Close()
	names := eventline.Names{NotifyChannel: "bank_events"} // the default tables; Append notifies
	if _, err := migrations.Apply(ctx, pool, names); err != nil {
		return err
	}
	store, err := postgres.New(postgres.StoreConfig{Names: names})
	if err != nil {
		return err
	}

	// Metrics: one call gives the runners' hooks; the registry is served over HTTP below.
	reg := prom.NewRegistry()
	metrics, err := eventlineprom.New(reg, eventlineprom.Config{})
	if err != nil {
		return err
	}
	cfg := runner.Config{Hooks: metrics.Hooks()}

	var notified atomic.Int64
	r1, err := runner.New(pool, store, cfg)
	if err != nil {
		return err
	}
	for _, p := range []projector.Projection{balances(1), dailyTotals()} {
		if err := r1.Register(p); err != nil {
			return err
		}
	}
	if err := r1.RegisterDetached(&bigDepositNotifier{sent: &notified}, runner.WithFailurePolicy(runner.DeadLetter)); err != nil {
		return err
	}
	// Version 2 of the balances read model, in its own table, is started later on a second runner
	// (as a new deploy would): it is built from position 0 while version 1 keeps serving, then it
	// takes over and the view demo_account_balances switches to it.
	r2, err := runner.New(pool, store, cfg)
	if err != nil {
		return err
	}
	if err := r2.Register(balances(2)); err != nil {
		return err
	}

	g, ctx := errgroup.WithContext(ctx)
	if o.metrics != "" {
		// Metrics, and the probes a deployment wires to its liveness and readiness checks (here
		// for the first runner; a service has one runner per process). Any other path is 404.
		mux := http.NewServeMux()
		mux.Handle("/metrics", metrics.Handler())
		mux.Handle("/livez", r1.HealthHandler(readyLag))
		mux.Handle("/readyz", r1.HealthHandler(readyLag))
		// The web console, as a service mounts it: under a prefix, here with actions allowed
		// behind a token made up for this run.
		token := crand.Text()
		ui, err := console.New(console.Config{Pool: pool, AllowActions: true, Token: token})
		if err != nil {
			return err
		}
		mux.Handle("/console/", http.StripPrefix("/console", ui))
		o.consoleURL = "http://" + o.metrics + "/console/#token=" + token
		srv := &http.Server{Addr: o.metrics, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		g.Go(func() error {
			if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("metrics server: %w", err)
			}
			return nil
		})
		g.Go(func() error {
			<-ctx.Done()
			return srv.Shutdown(context.WithoutCancel(ctx))
		})
	}
	g.Go(func() error { return r1.Run(ctx) })
	var appended atomic.Int64
	for w := 0; w < o.writers; w++ {
		g.Go(func() error { return write(ctx, pool, store, w, o.rate/max(1, o.writers), &appended) })
	}
	var v2Started atomic.Bool
	g.Go(func() error {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(o.v2After):
		}
		v2Started.Store(true)
		return r2.Run(ctx)
	})
	g.Go(func() error {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-tick.C:
			}
			rs := []*runner.Runner{r1}
			if v2Started.Load() {
				rs = append(rs, r2)
			}
			if err := progress(ctx, o, rs, appended.Load(), notified.Load()); err != nil && ctx.Err() == nil {
				return err
			}
		}
	})
	if err := g.Wait(); err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	fmt.Fprintf(o.out, "stopped cleanly: %d events appended, %d big-deposit notices sent\n", appended.Load(), notified.Load())
	return nil
}

// balancesVersion is one version of the balances read model, in a table of its own; readers
// use the view demo_account_balances, which Activate points at the version that takes over.
type balancesVersion struct {
	*projector.Router
	version int
	table   string
}

func (b balancesVersion) Version() int { return b.version }

func (b balancesVersion) Activate(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, `CREATE OR REPLACE VIEW demo_account_balances AS SELECT * FROM `+b.table)
	return err
}

// balances keeps one row per account.
func balances(version int) balancesVersion {
	t := pgx.Identifier{fmt.Sprintf("demo_balances_v%d", version)}.Sanitize()
	r := projector.NewRouter("balances",
		projector.WithAggregateTypes("account"),
		projector.WithSetup(func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+t+` (
				account_id text PRIMARY KEY, owner text NOT NULL, balance bigint NOT NULL DEFAULT 0,
				transactions int NOT NULL DEFAULT 0)`)
			if err != nil || version != 1 {
				return err
			}
			// The first version also creates the view readers use.
			var exists bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_views WHERE viewname = 'demo_account_balances')`).Scan(&exists); err != nil || exists {
				return err
			}
			_, err = tx.Exec(ctx, `CREATE VIEW demo_account_balances AS SELECT * FROM `+t)
			return err
		}),
		projector.WithReset(func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `TRUNCATE `+t)
			return err
		}))
	// Handlers that only write queue their statements on w: a batch's writes go to the server
	// together, in order, in the transaction that moves the checkpoint.
	projector.On(r, "AccountOpened", func(ctx context.Context, w *projector.Writes, ev eventstore.PersistedEvent, p AccountOpened) error {
		w.Exec(`INSERT INTO `+t+` (account_id, owner) VALUES ($1, $2)`, ev.AggregateID, p.Owner)
		return nil
	})
	projector.On(r, "Deposited", func(ctx context.Context, w *projector.Writes, ev eventstore.PersistedEvent, p Deposited) error {
		w.Exec(`UPDATE `+t+` SET balance = balance + $2, transactions = transactions + 1 WHERE account_id = $1`, ev.AggregateID, p.Amount)
		return nil
	})
	projector.On(r, "Withdrawn", func(ctx context.Context, w *projector.Writes, ev eventstore.PersistedEvent, p Withdrawn) error {
		w.Exec(`UPDATE `+t+` SET balance = balance - $2, transactions = transactions + 1 WHERE account_id = $1`, ev.AggregateID, p.Amount)
		return nil
	})
	return balancesVersion{Router: r, version: version, table: t}
}

// dailyTotals sums money in and out per day.
func dailyTotals() *projector.Router {
	r := projector.NewRouter("daily_totals",
		projector.WithSetup(func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS demo_daily_totals (
				day date PRIMARY KEY, deposited bigint NOT NULL DEFAULT 0, withdrawn bigint NOT NULL DEFAULT 0)`)
			return err
		}))
	add := func(w *projector.Writes, ev eventstore.PersistedEvent, in, out int64) {
		w.Exec(`INSERT INTO demo_daily_totals (day, deposited, withdrawn) VALUES ($1::timestamptz::date, $2, $3)
			ON CONFLICT (day) DO UPDATE SET deposited = demo_daily_totals.deposited + $2, withdrawn = demo_daily_totals.withdrawn + $3`,
			ev.CreatedAt, in, out)
	}
	projector.On(r, "Deposited", func(ctx context.Context, w *projector.Writes, ev eventstore.PersistedEvent, p Deposited) error {
		add(w, ev, p.Amount, 0)
		return nil
	})
	projector.On(r, "Withdrawn", func(ctx context.Context, w *projector.Writes, ev eventstore.PersistedEvent, p Withdrawn) error {
		add(w, ev, 0, p.Amount)
		return nil
	})
	return r
}

// bigDepositNotifier is a side effect outside the database (here it only counts): at-least-once,
// keyed by event ID for idempotency in a real mailer.
type bigDepositNotifier struct{ sent *atomic.Int64 }

func (n *bigDepositNotifier) Name() string             { return "big_deposit_notifier" }
func (n *bigDepositNotifier) AggregateTypes() []string { return []string{"account"} }
func (n *bigDepositNotifier) EventTypes() []string     { return []string{"Deposited"} }
func (n *bigDepositNotifier) HandleEvent(_ context.Context, ev eventstore.PersistedEvent) error {
	if strings.Contains(string(ev.Payload), `"amount":9`) {
		n.sent.Add(1)
	}
	return nil
}

// write opens accounts and moves money, at about rate events per second.
func write(ctx context.Context, pool *pgxpool.Pool, store *postgres.Store, id, rate int, appended *atomic.Int64) error {
	rng := rand.New(rand.NewPCG(uint64(id), uint64(time.Now().UnixNano())))
	var accounts []string
	tick := time.NewTicker(time.Second / time.Duration(max(1, rate)))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		var evs []eventstore.Event
		if len(accounts) < 5 || rng.IntN(50) == 0 {
			acct := fmt.Sprintf("w%d-%d", id, len(accounts))
			accounts = append(accounts, acct)
			evs = append(evs, event(acct, "AccountOpened", AccountOpened{Owner: fmt.Sprintf("owner %d", rng.IntN(1000))}))
		} else {
			acct := accounts[rng.IntN(len(accounts))]
			if rng.IntN(3) == 0 {
				evs = append(evs, event(acct, "Withdrawn", Withdrawn{Amount: 1 + rng.Int64N(100)}))
			} else {
				evs = append(evs, event(acct, "Deposited", Deposited{Amount: 1 + rng.Int64N(100)}))
			}
		}
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			_, err := store.Append(ctx, tx, eventstore.Any(), evs)
			return err
		})
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("writer %d: %w", id, err)
		}
		appended.Add(int64(len(evs)))
	}
}

func event(account, typ string, payload any) eventstore.Event {
	b, _ := json.Marshal(payload)
	return eventstore.Event{AggregateType: "account", AggregateID: account, EventType: typ, Payload: b}
}

// progress prints one table of every projection's state.
func progress(ctx context.Context, o options, rs []*runner.Runner, appended, notified int64) error {
	var b strings.Builder
	if o.redraw {
		b.WriteString("\033[H\033[2J")
	}
	fmt.Fprintf(&b, "eventline demo — %d events appended, %d big-deposit notices (Ctrl-C to stop)\n", appended, notified)
	if o.metrics != "" {
		fmt.Fprintf(&b, "metrics: http://%s/metrics  probes: /livez /readyz\nconsole: %s\n", o.metrics, o.consoleURL)
	}
	b.WriteString("\n")
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "projection\tversion\tposition\thead\tlag (events)\tlag (s)\tevents/s\tstate\towner\t")
	for _, r := range rs {
		sts, err := r.Status(ctx)
		if err != nil {
			return err
		}
		for _, st := range sts {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%.2f\t%.0f\t%s\t%s\t\n", st.Name, st.Version, st.Position, st.Head,
				st.LagEvents, st.LagSeconds, st.EventsPerSecond, st.State, st.Owner)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := io.WriteString(o.out, b.String())
	return err
}
