package admin

import (
	"fmt"
	"strings"
	"time"

	"github.com/eventline/eventline/internal/lifecycle"
)

// Bounds are what Check holds a snapshot to.
type Bounds struct {
	// MaxLag is the most an active unit may lag, as the age of the first event it has not applied.
	// 0: no bound.
	MaxLag time.Duration
	// MaxLagEvents is the most an active unit may lag in positions. 0: no bound.
	MaxLagEvents int64
}

// Problem is one reason a snapshot fails Check.
type Problem struct {
	// Projection, and Unit when the problem is a unit's ("" for a projection-wide problem).
	// Projection is "" for the dead letters of projections without a lifecycle record.
	Projection string `json:"projection"`
	Unit       string `json:"unit"`
	// Kind is one of "stopped", "dead_letters", "lag", "no_owner".
	Kind   string `json:"kind"`
	Reason string `json:"reason"`
}

// String is the problem on one line: "unit: reason", with the reason's whitespace collapsed.
func (p Problem) String() string {
	what := p.Projection
	if p.Unit != "" {
		what = p.Unit
	}
	reason := strings.Join(strings.Fields(p.Reason), " ")
	if what == "" {
		return reason // not one projection's
	}
	return what + ": " + reason
}

// Problem kinds.
const (
	ProblemStopped     = "stopped"
	ProblemDeadLetters = "dead_letters"
	ProblemLag         = "lag"
	ProblemNoOwner     = "no_owner"
)

// Check returns what is wrong in s, in the order of s.Lifecycle and s.Projections (nil when
// nothing is): a projection with dead letters (then, with Projection "", the dead letters of
// projections without a lifecycle record), a unit stopped by a handler failure, an active unit
// that lags beyond b (not a paused or stopped one: its lag has a reason already given), and a
// unit the projection runs (active, building or waiting) that no live process holds a lease on
// (unless paused: it has nothing to do).
// Retired and standby layouts are not checked.
func (s Snapshot) Check(b Bounds) []Problem {
	var out []Problem
	unrecorded := s.DeadLetters
	for _, p := range s.Lifecycle {
		unrecorded -= p.DeadLetters
		if p.DeadLetters > 0 {
			out = append(out, Problem{Projection: p.Projection, Kind: ProblemDeadLetters,
				Reason: fmt.Sprintf("%d dead %s (eventline dead-letters list)", p.DeadLetters, plural(p.DeadLetters, "letter"))})
		}
	}
	if unrecorded > 0 {
		out = append(out, Problem{Kind: ProblemDeadLetters, Reason: fmt.Sprintf(
			"%d dead %s of projections without a lifecycle record (eventline dead-letters list)",
			unrecorded, plural(unrecorded, "letter"))})
	}
	for _, u := range s.Projections {
		role := lifecycle.Role(u.Role)
		if role != lifecycle.Active && role != lifecycle.Building && role != lifecycle.Waiting {
			continue
		}
		unit := u.Key().String()
		problem := func(kind, format string, args ...any) {
			out = append(out, Problem{Projection: u.Projection, Unit: unit, Kind: kind, Reason: fmt.Sprintf(format, args...)})
		}
		if u.FailedPosition > 0 {
			problem(ProblemStopped, "stopped at position %d: %s", u.FailedPosition, u.LastError)
		}
		if u.Owner == "" && u.State != "paused" {
			if u.LeaseOwner != "" {
				problem(ProblemNoOwner, "no live owner (the lease of %s ran out)", u.LeaseOwner)
			} else {
				problem(ProblemNoOwner, "no live owner (no runner process holds a lease on it)")
			}
		}
		if role != lifecycle.Active || u.State == "paused" || u.FailedPosition > 0 {
			continue // only the active layout serves; a pause or a stop already says why it lags
		}
		if b.MaxLag > 0 && u.LagSeconds > b.MaxLag.Seconds() {
			problem(ProblemLag, "lags %.1fs behind (bound %s): at %d, head %d", u.LagSeconds, b.MaxLag, u.Position, u.Head)
		} else if b.MaxLagEvents > 0 && u.Lag > b.MaxLagEvents {
			problem(ProblemLag, "lags %d positions behind (bound %d): at %d, head %d", u.Lag, b.MaxLagEvents, u.Position, u.Head)
		}
	}
	return out
}

func plural(n int64, what string) string {
	if n == 1 {
		return what
	}
	return what + "s"
}
