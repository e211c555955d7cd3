package console_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/console"
	"github.com/eventline/eventline/eventlinetest"
)

// EnvRequireBrowser, when set, makes the browser test fail instead of skipping when no Chromium
// is found (CI sets it: .ci/run installs Chromium).
const EnvRequireBrowser = "EVENTLINE_REQUIRE_BROWSER"

// EnvScreenshot, when set, names a PNG file the browser test saves the page to before it ends
// (to look at the page, or at why the test failed).
const EnvScreenshot = "EVENTLINE_CONSOLE_SCREENSHOT"

// EnvChromium names a Chromium (or Chrome) binary to use instead of looking one up in PATH.
const EnvChromium = "EVENTLINE_CHROMIUM"

// chromium finds a Chromium binary, or skips the test (fails it under EVENTLINE_REQUIRE_BROWSER).
func chromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv(EnvChromium); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "headless-shell"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	msg := "no Chromium binary found in PATH (apt-get install chromium, or set " + EnvChromium + ")"
	if os.Getenv(EnvRequireBrowser) != "" {
		t.Fatalf("%s, and %s is set", msg, EnvRequireBrowser)
	}
	t.Skipf("%s: skipping the browser test (set %s=1 to fail instead)", msg, EnvRequireBrowser)
	return ""
}

// browser starts a headless Chromium for the test and returns its first tab.
func browser(t *testing.T) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)),
		chromedp.NoSandbox, // tests run as root in CI
		chromedp.Headless,
		chromedp.DisableGPU,
		chromedp.Flag("disable-dev-shm-usage", true),
	)
	opts = append(opts, chromedp.WindowSize(1400, 900))
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(allocCtx, chromedp.WithErrorf(t.Logf))
	t.Cleanup(func() {
		cancelTab()
		cancelAlloc() // waits for the browser to exit and removes its profile
	})
	// The first Run starts the browser, whose lifetime is then ctx's: no timeout on this one.
	require.NoError(t, chromedp.Do(ctx), "start Chromium")
	return ctx
}

// page is a browser tab on the console.
type page struct {
	t   *testing.T
	ctx context.Context
}

func (p *page) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, waitTimeout)
	defer cancel()
	require.NoError(p.t, chromedp.Do(ctx, steps...), what)
}

// click clicks the first element sel matches, as a user does. The page redraws its tables at every
// poll: when a redraw replaces the element between its lookup and the click, the click is tried
// again on the new one.
func (p *page) click(what, sel string) {
	p.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		ctx, cancel := context.WithTimeout(p.ctx, waitTimeout)
		err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(sel)))
		cancel()
		if err == nil {
			return
		}
		gone := strings.Contains(err.Error(), "Could not find node with given id") || strings.Contains(err.Error(), "Node is detached")
		if !gone || time.Now().After(deadline) {
			require.NoError(p.t, err, what)
		}
	}
}

// eval evaluates a JavaScript expression in the page.
func eval[T any](p *page, expr string) T {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, waitTimeout)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	require.NoError(p.t, err, "evaluate %s", expr)
	return v
}

// text is the text of the first element sel matches, and whether there is one. The page redraws
// its tables at every poll, so the element is read in one evaluation rather than looked up
// first and read later.
func (p *page) text(sel string) (string, bool) {
	p.t.Helper()
	out := eval[*string](p, fmt.Sprintf(`(() => { const e = document.querySelector(%q); return e ? e.textContent : null; })()`, sel))
	if out == nil {
		return "", false
	}
	return *out, true
}

func (p *page) attr(sel, name string) string {
	p.t.Helper()
	return eval[string](p, fmt.Sprintf(`(() => { const e = document.querySelector(%q); return e ? (e.getAttribute(%q) || '') : ''; })()`, sel, name))
}

// waitText waits until the text of sel satisfies ok, and returns it.
func (p *page) waitText(what, sel string, ok func(string) bool) string {
	p.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	last := "(no element)"
	for {
		if s, found := p.text(sel); found {
			if last = s; ok(s) {
				return s
			}
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("timed out waiting for %s: %s is %q", what, sel, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// screenshot saves the whole page to path as a PNG.
func (p *page) screenshot(path string) {
	ctx, cancel := context.WithTimeout(p.ctx, waitTimeout)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err == nil {
		err = os.WriteFile(path, png, 0o644)
	}
	if err != nil {
		p.t.Errorf("screenshot to %s: %v", path, err)
		return
	}
	p.t.Logf("saved a screenshot of the page to %s", path)
}

func equals(want string) func(string) bool { return func(s string) bool { return s == want } }

func contains(part string) func(string) bool {
	return func(s string) bool { return strings.Contains(s, part) }
}

// The console in a real browser, against a running runner: the lag of a held projection shows,
// then falls to 0 when it is let go; a click pauses the projection (as its lifecycle record then
// says); a wrong token is refused, from the page and from a plain request.
func TestBrowser(t *testing.T) {
	ctx := browser(t)
	f := newFixture(t)
	srv := f.serve(console.Config{AllowActions: true, Token: testToken, PollInterval: 200 * time.Millisecond, History: time.Minute})
	p := &page{t: t, ctx: ctx}
	if path := os.Getenv(EnvScreenshot); path != "" {
		t.Cleanup(func() { p.screenshot(path) })
	}

	const unit = `tr[data-unit="counter@1#0/1"]`
	p.do("load the console", chromedp.Navigate(srv.URL+"/#token="+testToken))
	p.waitText("the counter's row", unit+" td.lag", equals("0"))
	p.waitText("the mode", "#mode", equals("actions allowed"))
	location := eval[string](p, `location.href`)
	require.NotContains(t, location, testToken, "the token stays in the address bar")

	// Hold the counter's handler and append: the page shows the lag.
	f.gate.hold()
	const n = 50
	f.ticks(n)
	p.waitText("the lag to show", unit+" td.lag", equals(strconv.Itoa(n)))
	p.waitText("the lag in seconds to show", unit+" td.lag-seconds", func(s string) bool {
		v, err := strconv.ParseFloat(s, 64)
		return err == nil && v > 0
	})
	p.waitText("the state", unit+" td.state span.state", equals("running"))
	head, _ := p.text(unit + " td.head")
	require.Equal(t, strconv.Itoa(n), head)

	// Let it go: the lag falls to 0, and the chart has kept the samples from before.
	f.gate.release()
	p.waitText("the lag to fall", unit+" td.lag", equals("0"))
	p.waitText("the chart to keep its history", unit+" svg title", func(s string) bool {
		return strings.Contains(s, fmt.Sprintf("up to %d events", n))
	})
	samples, err := strconv.Atoi(p.attr(unit+" svg", "data-samples"))
	require.NoError(t, err)
	require.GreaterOrEqual(t, samples, 2)
	p.waitText("the counter's position", unit+" td.position", equals(strconv.Itoa(n)))

	// Pause from the page: the lifecycle record says paused, and the page too.
	require.False(t, f.paused("counter"))
	p.click("click Pause", `button[data-action="pause"][data-projection="counter"]`)
	p.waitText("the pause to be confirmed", "#message", equals("paused counter"))
	require.Equal(t, "message ok", p.attr("#message", "class"))
	require.True(t, f.paused("counter"), "the lifecycle record is not paused")
	p.waitText("the state to show paused", unit+" td.state span.state", equals("paused"))
	p.waitText("the Resume button", `tr[data-projection="counter"] button[data-action="resume"]`, equals("Resume"))

	// With a wrong token, the page's Resume is refused and the projection stays paused.
	p.do("enter a wrong token",
		chromedp.SetValue(chromedp.CSS("#token"), "wrong"),
		chromedp.Click(chromedp.CSS(`#token-form button[type="submit"]`)))
	p.waitText("the token state", "#token-state", equals("token set"))
	p.click("click Resume", `tr[data-projection="counter"] button[data-action="resume"]`)
	msg := p.waitText("the refusal", "#message", func(s string) bool { return strings.Contains(s, "refused") })
	require.Equal(t, "Resume refused (HTTP 403): wrong token", msg)
	require.Equal(t, "message error", p.attr("#message", "class"))
	require.True(t, f.paused("counter"), "a refused resume changed the lifecycle record")

	// A plain request without the token is refused too.
	code, body := post(t, srv.URL+"/api/projections/counter/resume", "")
	require.Equal(t, http.StatusForbidden, code, body)
	require.True(t, f.paused("counter"))
}

// In the browser, a read-only console disables every action; one that allows them retries and
// discards dead letters and requests a rebuild (after the page's confirmation), and disables the
// rebuild of a projection without Reset and of a detached handler.
func TestBrowserDeadLettersAndRebuild(t *testing.T) {
	ctx := browser(t)
	f := newFixture(t)
	readOnly := f.serve(console.Config{PollInterval: 200 * time.Millisecond})
	srv := f.serve(console.Config{AllowActions: true, Token: testToken, PollInterval: 200 * time.Millisecond})
	p := &page{t: t, ctx: ctx}
	if path := os.Getenv(EnvScreenshot); path != "" {
		t.Cleanup(func() { p.screenshot(strings.TrimSuffix(path, ".png") + "-dead-letters.png") })
	}
	disabled := func(sel string) bool {
		return eval[bool](p, fmt.Sprintf(`(() => { const e = document.querySelector(%q); return !!e && e.disabled; })()`, sel))
	}

	eventlinetest.Append(t, f.db.Pool, eventlinetest.Event("clock", "c-9", "Poison", Ticked{}))
	var id int64
	f.waitFor("a dead letter", func() bool {
		return f.db.Pool.QueryRow(t.Context(), `SELECT id FROM eventline_dead_letters`).Scan(&id) == nil
	})
	row := fmt.Sprintf(`tr[data-dead-letter="%d"]`, id)

	p.do("load the read-only console", chromedp.Navigate(readOnly.URL+"/"))
	p.waitText("the mode", "#mode", equals("read-only"))
	p.waitText("the dead letter", row+" td.error", contains("poison event"))
	for _, sel := range []string{
		`button[data-action="pause"][data-projection="counter"]`, `button[data-action="rebuild"][data-projection="counter"]`,
		row + ` button[data-action="retry"]`, row + ` button[data-action="discard"]`,
	} {
		require.True(t, disabled(sel), "%s is enabled on a read-only console", sel)
	}
	require.Equal(t, "true", eval[string](p, `String(document.querySelector('#token-form').hidden)`))

	p.do("load the console", chromedp.Navigate(srv.URL+"/#token="+testToken))
	p.waitText("the mode", "#mode", equals("actions allowed"))
	p.waitText("the dead letter", row+" td.error", contains("poison event"))
	require.True(t, disabled(`button[data-action="rebuild"][data-projection="audit"]`), "rebuild of a projection without Reset")
	require.True(t, disabled(`button[data-action="rebuild"][data-projection="poisoned"]`), "rebuild of a detached handler")
	require.False(t, disabled(`button[data-action="rebuild"][data-projection="counter"]`))
	// Accept the page's confirmations (rebuild and discard ask first), and count them.
	eval[bool](p, `(() => { window.confirmed = []; window.confirm = (m) => { window.confirmed.push(m); return true; }; return true; })()`)

	p.click("click Retry", row+` button[data-action="retry"]`)
	p.waitText("the retry to be confirmed", "#message", func(s string) bool { return strings.HasPrefix(s, "retry of dead letter") })
	// The handler fails on it again: it stays parked, with its attempts counted.
	p.waitText("the second attempt", row+" td.attempts", equals("2"))

	p.click("click Discard", row+` button[data-action="discard"]`)
	p.waitText("the discard to be confirmed", "#message", equals(fmt.Sprintf("dead letter %d discarded", id)))
	p.waitText("the dead letters to be empty", "#dead-letters tbody td.empty", equals("no dead letters"))
	var left int
	require.NoError(t, f.db.Pool.QueryRow(t.Context(), `SELECT count(*) FROM eventline_dead_letters`).Scan(&left))
	require.Zero(t, left)

	p.click("click Rebuild", `button[data-action="rebuild"][data-projection="counter"]`)
	p.waitText("the rebuild to be confirmed", "#message", func(s string) bool { return strings.HasPrefix(s, "rebuild of counter v1/1 requested") })
	var requests int64
	require.NoError(t, f.db.Pool.QueryRow(t.Context(), `SELECT rebuild_requested FROM eventline_projections WHERE projection = 'counter'`).
		Scan(&requests))
	require.Equal(t, int64(1), requests)
	require.Equal(t, 2, eval[int](p, `window.confirmed.length`), "discard and rebuild ask for confirmation, retry does not")
}
