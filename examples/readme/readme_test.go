package main

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/eventlinetest"
)

func TestMain(m *testing.M) { eventlinetest.Main(m) }

const (
	beginMarker = "// README:begin\n"
	endMarker   = "// README:end\n"
	readmeHead  = "## A short example\n"
)

// The Go block of README.md's "A short example" is this program's code between the markers, byte
// for byte: the README's example compiles and is the one tested below.
func TestReadmeExampleIsThisProgram(t *testing.T) {
	src, err := os.ReadFile("main.go")
	require.NoError(t, err)
	_, code, ok := strings.Cut(string(src), beginMarker)
	require.True(t, ok, "main.go has no line %q", strings.TrimSpace(beginMarker))
	code, _, ok = strings.Cut(code, endMarker)
	require.True(t, ok, "main.go has no line %q after the begin marker", strings.TrimSpace(endMarker))
	code = strings.TrimSpace(code) + "\n"

	readme, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	_, section, ok := strings.Cut(string(readme), readmeHead)
	require.True(t, ok, "README.md has no section %q", strings.TrimSpace(readmeHead))
	_, block, ok := strings.Cut(section, "```go\n")
	require.True(t, ok, "README.md's example section has no ```go block")
	block, _, ok = strings.Cut(block, "\n```\n")
	require.True(t, ok, "README.md's example block is not closed")

	if block += "\n"; block != code {
		got, want := strings.Split(block, "\n"), strings.Split(code, "\n")
		i := 0
		for i < min(len(got), len(want)) && got[i] == want[i] {
			i++
		}
		line := func(l []string) string {
			if i < len(l) {
				return strconv.Quote(l[i])
			}
			return "(end of block)"
		}
		t.Fatalf("README.md's example differs from examples/readme/main.go between the markers, from line %d of the block:\n"+
			"README.md: %s\nmain.go:   %s\ncopy the code into the README", i+1, line(got), line(want))
	}
}

// run appends a deposit, builds the balances table from it, hands it to the mailer, and returns
// nil once its context ends; run again (a restart), it adds the second deposit to the first.
func TestRun(t *testing.T) {
	t.Parallel()
	db := eventlinetest.NewDatabase(t)
	for i, want := range []int64{5, 10} {
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		done := make(chan error, 1)
		go func() { done <- run(ctx, db.URL) }()
		var balance, mailed, head int64
		deadline := time.Now().Add(30 * time.Second)
		for balance != want || head == 0 || mailed < head {
			select {
			case err := <-done:
				t.Fatalf("run %d returned before its context ended: %v", i+1, err)
			case <-time.After(20 * time.Millisecond):
			}
			require.True(t, time.Now().Before(deadline), "run %d: balance %d, mailer at position %d of %d after 30s", i+1, balance, mailed, head)
			// Errors (the tables are not there yet) mean: not yet.
			_ = db.Pool.QueryRow(ctx, `SELECT balance FROM balances WHERE id = 'a-1'`).Scan(&balance)
			_ = db.Pool.QueryRow(ctx, `SELECT position FROM eventline_checkpoints WHERE projection = 'mailer'`).Scan(&mailed)
			_ = db.Pool.QueryRow(ctx, `SELECT max(global_position) FROM events`).Scan(&head)
		}
		cancel()
		select {
		case err := <-done:
			require.NoError(t, err, "run %d: after its context ends, run returns nil", i+1)
		case <-time.After(30 * time.Second):
			t.Fatalf("run %d did not return after its context ended", i+1)
		}
	}
	var events int
	require.NoError(t, db.Pool.QueryRow(t.Context(), `SELECT count(*) FROM events`).Scan(&events))
	require.Equal(t, 2, events)
}
