// Package filter compiles a projector.Filter into the Matcher that the runner, subscriptions and
// eventlinetest apply to events: in memory (Match) and in SQL (AggregateTypes, EventTypes).
package filter

import (
	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/projector"
)

// Matcher is a compiled projector.Filter; the zero Matcher matches everything.
type Matcher struct {
	aggregates, events       map[string]struct{}
	aggregateList, eventList []string // the same, for SQL; nil: all
}

// Compile compiles f; a nil f matches everything.
func Compile(f projector.Filter) Matcher {
	var m Matcher
	if f == nil {
		return m
	}
	m.aggregates, m.aggregateList = set(f.AggregateTypes())
	m.events, m.eventList = set(f.EventTypes())
	return m
}

// All reports whether the matcher lets every event through.
func (m Matcher) All() bool { return m.aggregates == nil && m.events == nil }

// Match reports whether ev passes the filter.
func (m Matcher) Match(ev *eventstore.PersistedEvent) bool {
	if m.aggregates != nil {
		if _, ok := m.aggregates[ev.AggregateType]; !ok {
			return false
		}
	}
	if m.events != nil {
		if _, ok := m.events[ev.EventType]; !ok {
			return false
		}
	}
	return true
}

// AggregateTypes lists the allowed aggregate types (nil: all).
func (m Matcher) AggregateTypes() []string { return m.aggregateList }

// EventTypes lists the allowed event types (nil: all).
func (m Matcher) EventTypes() []string { return m.eventList }

// set returns the distinct values of list as a set and a slice; both nil for an empty list.
func set(list []string) (map[string]struct{}, []string) {
	if len(list) == 0 {
		return nil, nil
	}
	m := make(map[string]struct{}, len(list))
	out := make([]string, 0, len(list))
	for _, s := range list {
		if _, dup := m[s]; !dup {
			m[s] = struct{}{}
			out = append(out, s)
		}
	}
	return m, out
}
