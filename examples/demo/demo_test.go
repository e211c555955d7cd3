package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/eventline/eventline/eventlinetest"
)

func TestMain(m *testing.M) {
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
	scraped := make(chan string, 1)
	go func() {
		// Scrape the metrics endpoint while the demo runs.
		for i := 0; i < 100; i++ {
			time.Sleep(50 * time.Millisecond) // polling an HTTP server that is starting up
			resp, err := http.Get("http://" + addr + "/metrics")
			if err != nil {
				continue
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.Contains(string(body), "eventline_batches_total") {
				scraped <- string(body)
				return
			}
		}
		scraped <- ""
	}()
	err := demo(ctx, db.URL, options{duration: 4 * time.Second, writers: 3, rate: 300, v2After: time.Second, metrics: addr, out: io.Discard})
	require.NoError(t, err)
	require.Contains(t, <-scraped, `eventline_events_applied_total{partition="0",projection="daily_totals",version="1"}`)

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
