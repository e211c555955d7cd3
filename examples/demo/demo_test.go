package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/eventline/eventline/eventlinetest"
)

// childEnv makes the test binary run the demo's main instead of the tests (TestDemoSignal).
const childEnv = "EVENTLINE_DEMO_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		main()
		os.Exit(0)
	}
	code := eventlinetest.Run(m)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "the demo leaked goroutines:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().String()
}

// The demo runs, stops by itself, and leaves read models that agree with the events: v1 and the
// v2 rebuilt from zero while writers kept going.
func TestDemo(t *testing.T) {
	db := eventlinetest.NewDatabase(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	addr := freeAddr(t)
	scraped, consoleStatus := make(chan string, 1), make(chan string, 1)
	go func() {
		// Scrape the metrics endpoint, then read the console's status, while the demo runs.
		defer func() {
			resp, err := http.Get("http://" + addr + "/console/api/status")
			if err != nil {
				consoleStatus <- err.Error()
				return
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			consoleStatus <- fmt.Sprintf("%d %s", resp.StatusCode, body)
		}()
		for i := 0; i < 100; i++ {
			time.Sleep(50 * time.Millisecond) // polling an HTTP server that is starting up
			resp, err := http.Get("http://" + addr + "/metrics")
			if err != nil {
				continue
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			// Every projection registers its series when it starts: wait for the last one.
			if strings.Contains(string(body), `eventline_events_applied_total{partition="0",projection="daily_totals"`) {
				// The probes answer too, and nothing else does.
				out := string(body)
				for _, path := range []string{"/livez", "/readyz", "/nope"} {
					resp, err := http.Get("http://" + addr + path)
					if err != nil {
						break
					}
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					out += fmt.Sprintf("\n%s %d %s", path, resp.StatusCode, b)
				}
				scraped <- out
				return
			}
		}
		scraped <- ""
	}()
	err := demo(ctx, db.URL, options{duration: 4 * time.Second, writers: 3, rate: 300, v2After: time.Second, metrics: addr, out: io.Discard})
	require.NoError(t, err)
	require.Contains(t, <-consoleStatus, `200 {"console":{"actions":true`)
	got := <-scraped
	require.Contains(t, got, `eventline_events_applied_total{partition="0",projection="daily_totals",version="1"}`)
	require.Contains(t, got, "\n/livez 200 ok\n")
	require.Contains(t, got, "\n/readyz 200 ok\n")
	require.Contains(t, got, "\n/nope 404 ")

	// Version 2 took over: it runs, version 1 is retired (its checkpoint rows are gone), and the
	// view shows version 2, which matches the events up to its checkpoint.
	var active int
	var target *int
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT active_version, target_version FROM eventline_projections WHERE projection = 'balances'`).
		Scan(&active, &target))
	require.Equal(t, 2, active)
	require.Nil(t, target)
	var versions []int32
	rows, err := db.Pool.Query(ctx, `SELECT DISTINCT version FROM eventline_checkpoints WHERE projection = 'balances' ORDER BY 1`)
	require.NoError(t, err)
	for rows.Next() {
		var v int32
		require.NoError(t, rows.Scan(&v))
		versions = append(versions, v)
	}
	require.NoError(t, rows.Err())
	require.Equal(t, []int32{2}, versions)
	var mismatches, accounts int
	require.NoError(t, db.Pool.QueryRow(ctx, `
		WITH cp AS (SELECT position FROM eventline_checkpoints WHERE projection = 'balances' AND version = 2),
		truth AS (
			SELECT aggregate_id AS account_id,
			       sum(CASE event_type WHEN 'Deposited' THEN (convert_from(payload, 'UTF8')::jsonb->>'amount')::bigint
			                           WHEN 'Withdrawn' THEN -(convert_from(payload, 'UTF8')::jsonb->>'amount')::bigint
			                           ELSE 0 END) AS balance
			FROM events, cp WHERE global_position <= cp.position GROUP BY aggregate_id)
		SELECT count(*) FILTER (WHERE b.balance IS DISTINCT FROM truth.balance), count(*)
		FROM truth FULL JOIN demo_balances_v2 b USING (account_id)`).Scan(&mismatches, &accounts))
	require.Zero(t, mismatches, "every account matches the events up to the checkpoint")
	require.Greater(t, accounts, 5)
	var def string
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT definition FROM pg_views WHERE viewname = 'demo_account_balances'`).Scan(&def))
	require.Contains(t, def, "demo_balances_v2")
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Ctrl-C (SIGINT) and SIGTERM stop the demo program cleanly: it says so and exits with status 0.
func TestDemoSignal(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			db := eventlinetest.NewDatabase(t)
			cmd := exec.Command(os.Args[0], "-metrics", "", "-writers", "2", "-rate", "100")
			cmd.Env = append(os.Environ(), childEnv+"=1", "DATABASE_URL="+db.URL)
			var out syncBuffer
			cmd.Stdout, cmd.Stderr = &out, &out
			require.NoError(t, cmd.Start())
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			// Wait for the first progress table: the demo is running.
			deadline := time.After(time.Minute)
			for !strings.Contains(out.String(), "big_deposit_notifier") {
				select {
				case err := <-exited:
					t.Fatalf("the demo exited early (%v):\n%s", err, out.String())
				case <-deadline:
					_ = cmd.Process.Kill()
					<-exited
					t.Fatalf("the demo did not start:\n%s", out.String())
				case <-time.After(50 * time.Millisecond): // polling the demo's output
				}
			}
			require.NoError(t, cmd.Process.Signal(sig))
			select {
			case err := <-exited:
				var ee *exec.ExitError
				if errors.As(err, &ee) {
					t.Fatalf("the demo exited with %v:\n%s", ee, out.String())
				}
				require.NoError(t, err)
			case <-time.After(time.Minute):
				_ = cmd.Process.Kill()
				<-exited
				t.Fatalf("the demo did not stop:\n%s", out.String())
			}
			require.Contains(t, out.String(), "stopped cleanly")
		})
	}
}
