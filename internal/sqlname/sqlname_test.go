package sqlname

import (
	"errors"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, ok := range []string{"events", "app.events", "Events_2", "_x", strings.Repeat("a", 63)} {
		if _, err := Parse("t", ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "1x", "a-b", "a b", `a"b`, "a.b.c", ".a", "a.", "events;drop", strings.Repeat("a", 64)} {
		if _, err := Parse("t", bad); !errors.Is(err, ErrInvalidName) {
			t.Errorf("%q: got %v, want ErrInvalidName", bad, err)
		}
	}
	if got := MustParse("app.Events").Quoted(); got != `"app"."Events"` {
		t.Errorf("quoted: %s", got)
	}
	if err := Channel("new events"); !errors.Is(err, ErrInvalidName) {
		t.Errorf("channel: %v", err)
	}
}

func TestKeysDifferPerTable(t *testing.T) {
	a, b := AppendLockKey(MustParse("events")), AppendLockKey(MustParse("other_events"))
	if a == b || a >= 0 || b >= 0 {
		t.Errorf("keys %d and %d: want distinct and negative", a, b)
	}
	if PositionLockClass(MustParse("events")) >= 0 {
		t.Error("position lock class must be negative")
	}
}
