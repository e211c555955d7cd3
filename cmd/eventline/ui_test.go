package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/console"
)

// syncBuffer is a bytes.Buffer safe for the console's goroutines to write while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startUI runs 'eventline ui' on the fixture's database until stop is called (as Ctrl-C would
// end it) or the test ends. It returns the address the console printed.
func (f *fixture) startUI(t *testing.T, getenv func(string) string, args ...string) (url string, stop func() result) {
	t.Helper()
	var out, errOut syncBuffer
	a := newApp(&out, &errOut, getenv)
	listening := make(chan string, 1)
	a.uiListening = func(url string) { listening <- url }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- a.main(ctx, append([]string{"--database-url", f.db.URL, "ui", "--listen", "127.0.0.1:0"}, args...))
	}()
	var once sync.Once
	var res result
	stop = func() result {
		once.Do(func() {
			cancel()
			select {
			case code := <-done:
				res = result{stdout: out.String(), stderr: errOut.String(), code: code}
			case <-time.After(time.Minute):
				t.Fatal("eventline ui did not stop")
			}
		})
		return res
	}
	t.Cleanup(func() { stop() })
	select {
	case url = <-listening:
	case code := <-done:
		t.Fatalf("eventline ui exited with %d before listening: %s", code, errOut.String())
	case <-time.After(time.Minute):
		t.Fatal("eventline ui did not listen")
	}
	return url, stop
}

// uiRequest sends a request to the console and returns its status code and body.
func uiRequest(t *testing.T, method, url string, header map[string]string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, nil)
	require.NoError(t, err)
	for k, v := range header {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	return res.StatusCode, string(b)
}

// Read-only by default: the status is served, every action refused; requests addressed to
// another name than localhost are refused (DNS rebinding); Ctrl-C exits 0.
func TestUIReadOnly(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	url, stop := f.startUI(t, noEnv)
	require.NotContains(t, url, "#")

	code, body := uiRequest(t, http.MethodGet, url+"api/status", nil)
	require.Equal(t, http.StatusOK, code, body)
	var s struct {
		Console struct {
			Actions bool `json:"actions"`
		} `json:"console"`
		Status snapshot `json:"status"`
	}
	require.NoError(t, json.Unmarshal([]byte(body), &s))
	require.False(t, s.Console.Actions)
	require.Len(t, s.Status.Lifecycle, 4)
	code, body = uiRequest(t, http.MethodGet, url, nil)
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, body, "eventline console")

	code, body = uiRequest(t, http.MethodPost, url+"api/projections/orders/pause", map[string]string{console.TokenHeader: "anything"})
	require.Equal(t, http.StatusForbidden, code)
	require.Contains(t, body, "read-only")
	require.False(t, f.paused(t, "orders"))

	code, _ = uiRequest(t, http.MethodGet, url+"api/status", map[string]string{"Host": "attacker.example"})
	require.Equal(t, http.StatusMisdirectedRequest, code)
	code, _ = uiRequest(t, http.MethodGet, strings.Replace(url, "127.0.0.1", "localhost", 1)+"api/status", nil)
	require.Equal(t, http.StatusOK, code)

	r := stop()
	require.Equal(t, exitOK, r.code, r.stderr)
	require.Contains(t, r.stdout, "eventline console at "+url+"\nread-only")
}

// --allow-actions on a loopback address without a token makes one up and prints it in the
// address; actions need it.
func TestUIActionsWithGeneratedToken(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	url, stop := f.startUI(t, noEnv, "--allow-actions")
	base, token, ok := strings.Cut(url, "#token=")
	require.True(t, ok, "no token in %s", url)
	require.NotEmpty(t, token)

	pause := base + "api/projections/orders/pause"
	code, _ := uiRequest(t, http.MethodPost, pause, nil)
	require.Equal(t, http.StatusForbidden, code)
	code, _ = uiRequest(t, http.MethodPost, pause, map[string]string{console.TokenHeader: token + "x"})
	require.Equal(t, http.StatusForbidden, code)
	require.False(t, f.paused(t, "orders"))
	code, body := uiRequest(t, http.MethodPost, pause, map[string]string{console.TokenHeader: token})
	require.Equal(t, http.StatusOK, code, body)
	require.True(t, f.paused(t, "orders"))
	// The lifecycle's refusal, as the CLI's rebuild gives it.
	code, body = uiRequest(t, http.MethodPost, base+"api/projections/totals/rebuild", map[string]string{console.TokenHeader: token})
	require.Equal(t, http.StatusConflict, code)
	require.Contains(t, body, "no Reset")

	r := stop()
	require.Equal(t, exitOK, r.code, r.stderr)
	require.Contains(t, r.stderr, "console action refused")
	require.Contains(t, r.stderr, "paused orders")
}

// Off loopback, --allow-actions needs a token, from the flag or the environment.
func TestUITokenRequiredOffLoopback(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	r := cli(t, time.Time{}, "--database-url", f.db.URL, "ui", "--listen", "0.0.0.0:0", "--allow-actions")
	require.Equal(t, exitUsage, r.code)
	require.Contains(t, r.stderr, "needs a token: set EVENTLINE_UI_TOKEN or --token")

	env := func(k string) string {
		if k == uiTokenEnv {
			return "from-env"
		}
		return ""
	}
	var out, errOut syncBuffer
	a := newApp(&out, &errOut, env)
	listening := make(chan string, 1)
	a.uiListening = func(url string) { listening <- url }
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan int, 1)
	go func() {
		done <- a.main(ctx, []string{"--database-url", f.db.URL, "ui", "--listen", "0.0.0.0:0", "--allow-actions"})
	}()
	url := <-listening
	require.NotContains(t, url, "from-env", "a token from the environment is never printed")
	port := url[strings.LastIndex(url, ":"):]
	code, _ := uiRequest(t, http.MethodPost, "http://127.0.0.1"+port+"api/projections/orders/pause",
		map[string]string{console.TokenHeader: "from-env", "Host": "console.internal"})
	require.Equal(t, http.StatusOK, code, "off loopback, any Host is served")
	cancel()
	require.Equal(t, exitOK, <-done, errOut.String())
}
