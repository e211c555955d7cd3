package console_test

import (
	"encoding/json"
	"net/http/httptest"
	"regexp"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline"
	"github.com/eventline/eventline/console"
	"github.com/eventline/eventline/eventlinetest"
	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/internal/lifecycle"
)

// During a partition change, the active unit orders v1/1 and the first unit of the target v1/2
// have the same version and partition number: each row still charts its own lag, not the two
// units' samples mixed.
func TestBrowserChartPerUnitDuringPartitionChange(t *testing.T) {
	ctx := browser(t)
	db := eventlinetest.NewDatabase(t)
	events := make([]eventstore.Event, 0, 10)
	for i := range 10 {
		events = append(events, eventlinetest.Event("clock", "c-1", "Ticked", Ticked{N: i}))
	}
	eventlinetest.Append(t, db.Pool, events...)
	lc := lifecycle.New(eventline.Names{})
	deploy := func(partitions int) {
		require.NoError(t, pgx.BeginFunc(t.Context(), db.Pool, func(tx pgx.Tx) error {
			_, err := lc.Deploy(t.Context(), tx, "orders",
				lifecycle.Code{Layout: lifecycle.Layout{Version: 1, Partitions: partitions}, Resettable: true}, []int{partitions}, nil)
			return err
		}))
	}
	deploy(1)
	_, err := db.Pool.Exec(t.Context(), `UPDATE eventline_checkpoints SET position = 2 WHERE projection = 'orders'`)
	require.NoError(t, err)
	deploy(2) // a switch to v1/2, whose units start at the barrier, 2
	// Give the two layouts different lags: the active unit at 6 (lag 4), the target's units at 2 (lag 8).
	_, err = db.Pool.Exec(t.Context(), `UPDATE eventline_checkpoints SET position = 6 WHERE projection = 'orders' AND partitions = 1`)
	require.NoError(t, err)

	h, err := console.New(console.Config{Pool: db.Pool, PollInterval: 100 * time.Millisecond})
	require.NoError(t, err)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	p := &page{t: t, ctx: ctx}
	p.do("load the console", chromedp.Navigate(srv.URL+"/"))

	type row struct {
		Unit    string `json:"unit"`
		Role    string `json:"role"`
		Lag     string `json:"lag"`
		Title   string `json:"title"`
		Samples int    `json:"samples"`
	}
	read := func() []row {
		var rows []row
		js := eval[string](p, `JSON.stringify([...document.querySelectorAll('#units tbody tr[data-unit]')].map((tr) => ({
			unit: tr.dataset.unit, role: tr.querySelector('td.role').textContent, lag: tr.querySelector('td.lag').textContent,
			title: tr.querySelector('svg title').textContent, samples: tr.querySelector('svg').getAttribute('data-samples') | 0})))`)
		require.NoError(t, json.Unmarshal([]byte(js), &rows))
		return rows
	}
	deadline := time.Now().Add(waitTimeout)
	for {
		rows := read()
		if len(rows) == 3 && rows[0].Samples >= 3 {
			break
		}
		require.True(t, time.Now().Before(deadline), "timed out waiting for the units' charts: %+v", rows)
		time.Sleep(50 * time.Millisecond)
	}
	rows := read()
	units := map[string]bool{}
	upTo := regexp.MustCompile(`up to (\d+) events`)
	for _, r := range rows {
		units[r.Unit] = true
		m := upTo.FindStringSubmatch(r.Title)
		require.NotNil(t, m, r.Title)
		require.Equal(t, r.Lag, m[1], "the chart of %s (%s, lag %s) is another unit's: %q", r.Unit, r.Role, r.Lag, r.Title)
	}
	require.Len(t, units, 3, "each unit has a key of its own: %+v", rows)
}
