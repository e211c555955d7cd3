package console_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline"
	"github.com/eventline/eventline/console"
	"github.com/eventline/eventline/eventlinetest"
)

const testToken = "s3cret-token"

// post sends an action, with token in the header when it is not "", and returns the status code
// and the decoded body.
func post(t *testing.T, url, token string, header ...string) (int, map[string]string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, url, nil)
	require.NoError(t, err)
	if token != "" {
		req.Header.Set(console.TokenHeader, token)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	var body map[string]string
	require.NoError(t, json.NewDecoder(res.Body).Decode(&body), "status %d", res.StatusCode)
	return res.StatusCode, body
}

type statusBody struct {
	Console struct {
		Actions        bool  `json:"actions"`
		PollIntervalMS int64 `json:"poll_interval_ms"`
	} `json:"console"`
	Status struct {
		Head        int64 `json:"head"`
		Projections []struct {
			Projection string `json:"projection"`
			Lag        int64  `json:"lag"`
			State      string `json:"state"`
		} `json:"projections"`
		Lifecycle []struct {
			Projection string `json:"projection"`
			Paused     bool   `json:"paused"`
		} `json:"lifecycle"`
		Nodes []struct {
			ID string `json:"id"`
		} `json:"nodes"`
	} `json:"status"`
	DeadLetters []struct {
		ID             int64  `json:"id"`
		Projection     string `json:"projection"`
		Version        int    `json:"version"`
		GlobalPosition int64  `json:"global_position"`
	} `json:"dead_letters"`
	DeadLettersTotal int64 `json:"dead_letters_total"`
}

func getStatus(t *testing.T, base string) statusBody {
	t.Helper()
	res, err := http.Get(base + "/api/status")
	require.NoError(t, err)
	defer res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode)
	require.Equal(t, "application/json", res.Header.Get("Content-Type"))
	var s statusBody
	require.NoError(t, json.NewDecoder(res.Body).Decode(&s))
	return s
}

func TestConfigValidation(t *testing.T) {
	db := eventlinetest.NewDatabase(t)
	for _, tc := range []struct {
		name string
		cfg  console.Config
		want string
	}{
		{"no pool", console.Config{}, "Pool is required"},
		{"actions without token", console.Config{Pool: db.Pool, AllowActions: true}, "AllowActions needs a Token"},
		{"poll too fast", console.Config{Pool: db.Pool, PollInterval: time.Millisecond}, "PollInterval"},
		{"history shorter than a poll", console.Config{Pool: db.Pool, History: time.Second, PollInterval: 2 * time.Second}, "History"},
		{"bad table name", console.Config{Pool: db.Pool, Names: eventline.Names{EventsTable: "a;b"}}, "EventsTable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := console.New(tc.cfg)
			require.ErrorContains(t, err, tc.want)
		})
	}
}

// The page and its assets are served from the binary; the status endpoint shows the runner's
// projections, lag and processes.
func TestServesPageAndStatus(t *testing.T) {
	f := newFixture(t)
	srv := f.serve(console.Config{})

	res, err := http.Get(srv.URL + "/")
	require.NoError(t, err)
	page, err := io.ReadAll(res.Body)
	res.Body.Close()
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, res.StatusCode)
	require.Contains(t, string(page), `<script src="assets/app.js"`)
	require.Contains(t, res.Header.Get("Content-Security-Policy"), "default-src 'self'")
	for _, asset := range []string{"/assets/app.js", "/assets/style.css"} {
		res, err := http.Get(srv.URL + asset)
		require.NoError(t, err)
		res.Body.Close()
		require.Equal(t, http.StatusOK, res.StatusCode, asset)
	}
	res, err = http.Get(srv.URL + "/nothing-here")
	require.NoError(t, err)
	res.Body.Close()
	require.Equal(t, http.StatusNotFound, res.StatusCode)

	f.ticks(3)
	f.waitFor("the projections to catch up", func() bool {
		s := getStatus(t, srv.URL)
		if s.Status.Head != 3 || len(s.Status.Nodes) != 1 || len(s.Status.Projections) != 3 {
			return false
		}
		for _, p := range s.Status.Projections {
			if p.Lag != 0 || p.State != "running" {
				return false
			}
		}
		return true
	})
	s := getStatus(t, srv.URL)
	require.False(t, s.Console.Actions)
	require.Equal(t, int64(2000), s.Console.PollIntervalMS)
	require.Len(t, s.Status.Lifecycle, 3)
}

// A read-only console refuses every action, token or not; one that allows actions refuses those
// without the token or with a wrong one, and cross-origin ones; GET does not act.
func TestActionsNeedPermissionAndToken(t *testing.T) {
	f := newFixture(t)
	readOnly := f.serve(console.Config{Token: testToken})
	code, body := post(t, readOnly.URL+"/api/projections/counter/pause", testToken)
	require.Equal(t, http.StatusForbidden, code)
	require.Contains(t, body["error"], "read-only")

	srv := f.serve(console.Config{AllowActions: true, Token: testToken})
	pause := srv.URL + "/api/projections/counter/pause"
	code, body = post(t, pause, "")
	require.Equal(t, http.StatusForbidden, code)
	require.Contains(t, body["error"], console.TokenHeader)
	code, body = post(t, pause, "wrong")
	require.Equal(t, http.StatusForbidden, code)
	require.Equal(t, "wrong token", body["error"])
	code, _ = post(t, pause, testToken+"x")
	require.Equal(t, http.StatusForbidden, code)
	code, body = post(t, pause, testToken, "Origin", "https://evil.example", "Sec-Fetch-Site", "cross-site")
	require.Equal(t, http.StatusForbidden, code)
	require.Contains(t, body["error"], "cross-origin")
	res, err := http.Get(pause)
	require.NoError(t, err)
	res.Body.Close()
	require.Equal(t, http.StatusMethodNotAllowed, res.StatusCode)
	require.False(t, f.paused("counter"), "a refused action paused the projection")

	code, body = post(t, pause, testToken)
	require.Equal(t, http.StatusOK, code, body)
	require.Equal(t, "paused counter", body["message"])
	require.True(t, f.paused("counter"))
	code, body = post(t, srv.URL+"/api/projections/counter/resume", testToken)
	require.Equal(t, http.StatusOK, code, body)
	require.Equal(t, "resumed counter", body["message"])
	require.False(t, f.paused("counter"))
}

// The actions answer as the CLI does: the lifecycle's refusals are 409, unknown projections and
// dead letters 404, bad requests 400; dead letters are retried and discarded.
func TestActionOutcomes(t *testing.T) {
	f := newFixture(t)
	srv := f.serve(console.Config{AllowActions: true, Token: testToken})
	act := func(path string) (int, map[string]string) { return post(t, srv.URL+path, testToken) }

	code, body := act("/api/projections/audit/rebuild")
	require.Equal(t, http.StatusConflict, code)
	require.Contains(t, body["error"], "no Reset")
	code, body = act("/api/projections/poisoned/rebuild")
	require.Equal(t, http.StatusConflict, code)
	require.Contains(t, body["error"], "detached")
	code, body = act("/api/projections/counter/rebuild")
	require.Equal(t, http.StatusOK, code, body)
	require.Contains(t, body["message"], "rebuild of counter v1/1 requested")
	code, body = act("/api/projections/nope/pause")
	require.Equal(t, http.StatusNotFound, code)
	require.Contains(t, body["error"], "no such projection")
	code, _ = act("/api/projections/counter/explode")
	require.Equal(t, http.StatusBadRequest, code)

	eventlinetest.Append(t, f.db.Pool, eventlinetest.Event("clock", "c-2", "Poison", Ticked{}))
	var id int64
	f.waitFor("a dead letter", func() bool {
		s := getStatus(t, srv.URL)
		if len(s.DeadLetters) == 1 {
			id = s.DeadLetters[0].ID
			require.Equal(t, int64(1), s.DeadLettersTotal)
		}
		return id != 0
	})
	dl := "/api/dead-letters/" + itoa(id)
	code, body = act(dl + "/retry")
	require.Equal(t, http.StatusOK, code, body)
	require.Contains(t, body["message"], "retry of dead letter")
	// The retry fails again (the handler always fails on it) and the dead letter stays: discard it.
	f.waitFor("the dead letter to be discarded", func() bool {
		code, _ := act(dl + "/discard")
		return code == http.StatusOK
	})
	code, body = act(dl + "/discard")
	require.Equal(t, http.StatusNotFound, code)
	require.Equal(t, "dead letter "+itoa(id)+" not found", body["error"])
	code, _ = act("/api/dead-letters/x/retry")
	require.Equal(t, http.StatusBadRequest, code)
	code, _ = act("/api/dead-letters/1/explode")
	require.Equal(t, http.StatusBadRequest, code)
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// The status lists the first 200 dead letters, by projection, version and position, and says how
// many there are: those of a projection without a lifecycle record included.
func TestDeadLettersAreCapped(t *testing.T) {
	db := eventlinetest.NewDatabase(t)
	// p version 2 is inserted first (lower IDs) so that the order is not the order of the IDs; q
	// has no lifecycle record and sorts last, beyond the 200 listed.
	_, err := db.Pool.Exec(t.Context(), `
		INSERT INTO eventline_projections (projection, active_version, active_partitions) VALUES ('p', 1, 1);
		INSERT INTO eventline_dead_letters (projection, version, global_position, event_id, error, aggregate_type, aggregate_id)
		SELECT 'p', 2, n, gen_random_uuid(), 'bad', 'a', 'a-' || n FROM generate_series(1, 100) n;
		INSERT INTO eventline_dead_letters (projection, version, global_position, event_id, error, aggregate_type, aggregate_id)
		SELECT 'p', 1, n, gen_random_uuid(), 'bad', 'a', 'a-' || n FROM generate_series(200, 101, -1) n;
		INSERT INTO eventline_dead_letters (projection, version, global_position, event_id, error, aggregate_type, aggregate_id)
		SELECT 'q', 1, n, gen_random_uuid(), 'bad', 'a', 'a-' || n FROM generate_series(1, 10) n`)
	require.NoError(t, err)
	h, err := console.New(console.Config{Pool: db.Pool})
	require.NoError(t, err)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	s := getStatus(t, srv.URL)
	require.Equal(t, int64(210), s.DeadLettersTotal)
	var want, got []string
	for n := 101; n <= 200; n++ {
		want = append(want, fmt.Sprintf("p/1/%d", n))
	}
	for n := 1; n <= 100; n++ {
		want = append(want, fmt.Sprintf("p/2/%d", n))
	}
	for _, d := range s.DeadLetters {
		got = append(got, fmt.Sprintf("%s/%d/%d", d.Projection, d.Version, d.GlobalPosition))
	}
	require.Equal(t, want, got)
}
