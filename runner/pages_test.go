package runner

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/eventstore"
)

// cut keeps of the visible events after from what is safe to apply under horizon h: everything
// at or below h (holes there are settled), then only the contiguous run above max(from, h).
func TestCut(t *testing.T) {
	for _, tc := range []struct {
		name     string
		visible  []int64 // positions read, in order
		from, h  int64
		limit    int
		cutShort bool    // the read stopped at its byte bound
		events   []int64 // positions kept
		safe     int64
		held     bool
		final    bool
		describe string
	}{
		{name: "empty page below the horizon", from: 5, h: 10, limit: 3,
			safe: 10, describe: "nothing visible up to h: every position up to h is settled"},
		{name: "empty page, horizon behind from", from: 5, h: 3, limit: 3,
			safe: 5},
		{name: "positions below the horizon", visible: []int64{6, 7}, from: 5, h: 10, limit: 3,
			events: []int64{6, 7}, safe: 10},
		{name: "holes below the horizon are settled", visible: []int64{6, 9}, from: 5, h: 10, limit: 3,
			events: []int64{6, 9}, safe: 10},
		{name: "contiguous run above the horizon", visible: []int64{6, 7, 8}, from: 5, h: 5, limit: 10,
			events: []int64{6, 7, 8}, safe: 8},
		{name: "positions below, then contiguous above the horizon", visible: []int64{6, 7, 11, 12}, from: 5, h: 10, limit: 10,
			events: []int64{6, 7, 11, 12}, safe: 12},
		{name: "hole above the horizon stops the page", visible: []int64{6, 8, 9}, from: 5, h: 5, limit: 10,
			events: []int64{6}, safe: 6, held: true},
		{name: "hole above the horizon right after from", visible: []int64{7, 8}, from: 5, h: 5, limit: 10,
			events: []int64{}, safe: 5, held: true},
		{name: "positions below the horizon, then a hole above it", visible: []int64{6, 8, 12, 14}, from: 5, h: 10, limit: 10,
			events: []int64{6, 8}, safe: 10, held: true, describe: "the hole at 11 is not settled"},
		{name: "full page below the horizon", visible: []int64{6, 7, 8}, from: 5, h: 20, limit: 3,
			events: []int64{6, 7, 8}, safe: 8, final: true, describe: "more events may follow up to h"},
		{name: "full page with holes below the horizon", visible: []int64{6, 9, 12}, from: 5, h: 20, limit: 3,
			events: []int64{6, 9, 12}, safe: 12, final: true},
		{name: "full contiguous page above the horizon", visible: []int64{6, 7, 8}, from: 5, h: 5, limit: 3,
			events: []int64{6, 7, 8}, safe: 8, final: true},
		{name: "full page with a hole above the horizon", visible: []int64{6, 7, 9}, from: 5, h: 5, limit: 3,
			events: []int64{6, 7}, safe: 7, held: true},
		{name: "page cut by its byte bound below the horizon", visible: []int64{6, 9}, from: 5, h: 20, limit: 10, cutShort: true,
			events: []int64{6, 9}, safe: 9, final: true, describe: "events after 9 exist: the page must not move to h"},
		{name: "page cut by its byte bound above the horizon", visible: []int64{6, 7}, from: 5, h: 5, limit: 10, cutShort: true,
			events: []int64{6, 7}, safe: 7, final: true},
		{name: "page cut by its byte bound, then a hole", visible: []int64{6, 8}, from: 5, h: 5, limit: 10, cutShort: true,
			events: []int64{6}, safe: 6, held: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			evs := make([]eventstore.PersistedEvent, len(tc.visible))
			for i, pos := range tc.visible {
				evs[i].GlobalPosition = pos
			}
			p := cut(evs, tc.from, tc.h, tc.cutShort || len(evs) == tc.limit, 7)
			got := make([]int64, 0, len(p.events))
			for _, ev := range p.events {
				got = append(got, ev.GlobalPosition)
			}
			want := tc.events
			if want == nil {
				want = []int64{}
			}
			require.Equal(t, want, got, "events %s", tc.describe)
			require.Equal(t, len(p.events), cap(p.events), "appending to the page's events must not write into the read buffer")
			require.Equal(t, tc.safe, p.safe, "safe %s", tc.describe)
			require.Equal(t, tc.held, p.held, "held")
			require.Equal(t, tc.final, p.final, "final")
			require.Equal(t, tc.from, p.from)
			require.Equal(t, tc.h, p.horizon)
			require.EqualValues(t, 7, p.gen)
		})
	}
}
