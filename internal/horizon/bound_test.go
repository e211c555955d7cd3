package horizon

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// appendLock is holder vxid's append lock K as pg_locks shows it (pid 0: prepared).
func appendLock(vxid string, pid int) lockRow { return lockRow{vxid: vxid, pid: pid} }

// positionLock is holder vxid's position lock on position p.
func positionLock(vxid string, pid int, p int64) lockRow {
	return lockRow{vxid: vxid, pid: pid, position: true, low32: uint32(p)}
}

// trusted is the state a successful tick with L l left, with the given holders' bounds.
func trusted(l int64, bounds map[string]int64) state {
	s := state{trusted: true, l: l, holders: map[string]Holder{}}
	for vxid, b := range bounds {
		s.holders[vxid] = Holder{VirtualXID: vxid, PID: 7, Bound: b, Since: earlier}
	}
	return s
}

// untrusted is s after a reconnect, a failed tick or an unsafe spell: what it holds must not be used.
func untrusted(s state) state {
	s.trusted = false
	return s
}

var (
	earlier = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	now     = earlier.Add(time.Minute)
)

func TestAdvance(t *testing.T) {
	const wrap = int64(1) << 32
	for _, tc := range []struct {
		name    string
		prev    state
		h, l    int64
		locks   []lockRow
		horizon int64
		bounds  map[string]int64 // every holder of the next state and its bound
		blocker string           // "" for none
	}{
		{
			name: "no holders: the horizon is L",
			prev: trusted(8, nil), h: 8, l: 12,
			horizon: 12, bounds: map[string]int64{},
		},
		{
			name: "first tick: a holder may own anything above H",
			prev: state{}, h: 5, l: 10,
			locks:   []lockRow{appendLock("3/1", 7)},
			horizon: 5, bounds: map[string]int64{"3/1": 5}, blocker: "3/1",
		},
		{
			name: "first tick: a position lock above H bounds the holder below it",
			prev: state{}, h: 5, l: 10,
			locks:   []lockRow{appendLock("3/1", 7), positionLock("3/1", 7, 8)},
			horizon: 7, bounds: map[string]int64{"3/1": 7}, blocker: "3/1",
		},
		{
			name: "first tick: a position lock cannot take a bound below H",
			prev: state{}, h: 5, l: 10,
			locks:   []lockRow{appendLock("3/1", 7), positionLock("3/1", 7, 3)},
			horizon: 5, bounds: map[string]int64{"3/1": 5}, blocker: "3/1",
		},
		{
			name: "new holder: it took K after the previous tick read L",
			prev: trusted(8, nil), h: 5, l: 12,
			locks:   []lockRow{appendLock("3/2", 7)},
			horizon: 8, bounds: map[string]int64{"3/2": 8}, blocker: "3/2",
		},
		{
			name: "new holder with a position lock above the previous L",
			prev: trusted(8, nil), h: 5, l: 12,
			locks:   []lockRow{appendLock("3/2", 7), positionLock("3/2", 7, 11)},
			horizon: 10, bounds: map[string]int64{"3/2": 10}, blocker: "3/2",
		},
		{
			name: "new holder: both facts hold, the position lock does not lower the bound",
			prev: trusted(8, nil), h: 5, l: 12,
			locks:   []lockRow{appendLock("3/2", 7), positionLock("3/2", 7, 6)},
			horizon: 8, bounds: map[string]int64{"3/2": 8}, blocker: "3/2",
		},
		{
			name: "new holder: the lowest of its position locks counts",
			prev: trusted(8, nil), h: 5, l: 20,
			locks:   []lockRow{appendLock("3/2", 7), positionLock("3/2", 7, 15), positionLock("3/2", 7, 12)},
			horizon: 11, bounds: map[string]int64{"3/2": 11}, blocker: "3/2",
		},
		{
			name: "seen holder keeps its bound while L moves on",
			prev: trusted(12, map[string]int64{"3/1": 8}), h: 8, l: 20,
			locks:   []lockRow{appendLock("3/1", 7)},
			horizon: 8, bounds: map[string]int64{"3/1": 8}, blocker: "3/1",
		},
		{
			name: "a position lock appearing later raises the bound (seen between its K and its lock)",
			prev: trusted(12, map[string]int64{"3/1": 8}), h: 8, l: 20,
			locks:   []lockRow{appendLock("3/1", 7), positionLock("3/1", 7, 15)},
			horizon: 14, bounds: map[string]int64{"3/1": 14}, blocker: "3/1",
		},
		{
			name: "a position lock never lowers a bound",
			prev: trusted(12, map[string]int64{"3/1": 10}), h: 8, l: 20,
			locks:   []lockRow{appendLock("3/1", 7), positionLock("3/1", 7, 10)},
			horizon: 10, bounds: map[string]int64{"3/1": 10}, blocker: "3/1",
		},
		{
			name: "a position lock gone (savepoint rolled back) does not raise the bound either",
			prev: trusted(12, map[string]int64{"3/1": 9}), h: 8, l: 20,
			locks:   []lockRow{appendLock("3/1", 7)},
			horizon: 9, bounds: map[string]int64{"3/1": 9}, blocker: "3/1",
		},
		{
			name: "holder ending releases the horizon up to L",
			prev: trusted(12, map[string]int64{"3/1": 8}), h: 8, l: 20,
			horizon: 20, bounds: map[string]int64{},
		},
		{
			name: "the lowest bound holds the horizon, and its holder is the blocker",
			prev: trusted(12, map[string]int64{"3/1": 8, "4/1": 6}), h: 6, l: 20,
			locks:   []lockRow{appendLock("3/1", 7), appendLock("4/1", 8), appendLock("5/1", 9)},
			horizon: 6, bounds: map[string]int64{"3/1": 8, "4/1": 6, "5/1": 12}, blocker: "4/1",
		},
		{
			name: "reconnect: a holder seen before may own anything above H, not only above the old bound or L",
			prev: untrusted(trusted(18, map[string]int64{"3/1": 15})), h: 10, l: 25,
			locks:   []lockRow{appendLock("3/1", 7), appendLock("3/2", 7)},
			horizon: 10, bounds: map[string]int64{"3/1": 10, "3/2": 10}, blocker: "3/1",
		},
		{
			name: "reconnect: a position lock still bounds its holder",
			prev: untrusted(trusted(18, map[string]int64{"3/1": 15})), h: 10, l: 25,
			locks:   []lockRow{appendLock("3/1", 7), positionLock("3/1", 7, 14)},
			horizon: 13, bounds: map[string]int64{"3/1": 13}, blocker: "3/1",
		},
		{
			name: "prepared transaction under a new ID (server restart): bounded by H, not by the previous L",
			prev: trusted(18, map[string]int64{"3/9": 10}), h: 10, l: 25,
			locks:   []lockRow{appendLock("-1/725", 0)},
			horizon: 10, bounds: map[string]int64{"-1/725": 10}, blocker: "-1/725",
		},
		{
			name: "prepared transaction under a new ID, with its position lock",
			prev: trusted(18, map[string]int64{"3/9": 10}), h: 10, l: 25,
			locks:   []lockRow{appendLock("-1/725", 0), positionLock("-1/725", 0, 12)},
			horizon: 11, bounds: map[string]int64{"-1/725": 11}, blocker: "-1/725",
		},
		{
			name: "prepared transaction seen before under the same ID keeps its bound",
			prev: trusted(18, map[string]int64{"3/9": 12}), h: 12, l: 25,
			locks:   []lockRow{appendLock("3/9", 0)},
			horizon: 12, bounds: map[string]int64{"3/9": 12}, blocker: "3/9",
		},
		{
			name: "a position lock without the append lock is no holder",
			prev: trusted(18, nil), h: 10, l: 25,
			locks:   []lockRow{positionLock("3/1", 7, 12)},
			horizon: 25, bounds: map[string]int64{},
		},
		{
			name: "the horizon never moves backwards",
			prev: trusted(8, nil), h: 10, l: 9,
			locks:   []lockRow{appendLock("3/2", 7)},
			horizon: 10, bounds: map[string]int64{"3/2": 10},
		},
		{
			name: "a position lock's 32 low bits are read as the position nearest to L",
			prev: trusted(wrap-10, nil), h: wrap - 10, l: wrap + 5,
			locks:   []lockRow{appendLock("3/2", 7), positionLock("3/2", 7, wrap-3)},
			horizon: wrap - 4, bounds: map[string]int64{"3/2": wrap - 4}, blocker: "3/2",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			next, horizon, blocker := advance(tc.prev, tc.h, tc.l, tc.locks, now)
			require.Equal(t, tc.horizon, horizon, "horizon")
			require.True(t, next.trusted, "the next tick may trust this one")
			require.Equal(t, tc.l, next.l)
			bounds := map[string]int64{}
			for vxid, hd := range next.holders {
				require.Equal(t, vxid, hd.VirtualXID)
				bounds[vxid] = hd.Bound
				_, wasSeen := tc.prev.holders[vxid]
				if tc.prev.trusted && wasSeen {
					require.Equal(t, earlier, hd.Since, "%s: first seen earlier", vxid)
				} else {
					require.Equal(t, now, hd.Since, "%s: first seen now", vxid)
				}
			}
			require.Equal(t, tc.bounds, bounds, "bounds")
			if tc.blocker == "" {
				require.Nil(t, blocker, "blocker")
			} else {
				require.NotNil(t, blocker, "blocker")
				require.Equal(t, tc.blocker, blocker.VirtualXID, "blocker")
				require.Equal(t, tc.horizon, blocker.Bound, "the blocker's bound is the horizon")
			}
		})
	}
}

// Each tick's result is the next tick's input: an appender seen between its K and its position
// lock is held at the previous L until its lock appears, then at its first position, and a
// transaction that inserted raw is held at its raw row until it ends (its Append takes no lock).
func TestAdvanceSequence(t *testing.T) {
	var s state
	h := int64(0)
	// Tick 1 (first): nobody appends; L = 2.
	s, h, _ = advance(s, h, 2, nil, now)
	require.EqualValues(t, 2, h)
	// Tick 2: A's Append statement has taken K, no position yet; B inserted position 3 raw and is
	// open. L = 3.
	s, h, _ = advance(s, h, 3, []lockRow{appendLock("3/1", 7), appendLock("4/1", 8)}, now)
	require.EqualValues(t, 2, h, "either may own position 3")
	// Tick 3: C committed 4; A's statement allocated 5 and 6 and took its position lock on 5; B
	// appended 7 (no position lock: its Append was not its first insert). L = 7.
	s, h, _ = advance(s, h, 7, []lockRow{appendLock("3/1", 7), positionLock("3/1", 7, 5), appendLock("4/1", 8)}, now)
	require.EqualValues(t, 2, h, "B's raw row 3 is still in flight")
	require.EqualValues(t, 4, s.holders["3/1"].Bound, "A owns nothing below its position lock")
	// Tick 4: B committed; A is still open.
	s, h, _ = advance(s, h, 7, []lockRow{appendLock("3/1", 7), positionLock("3/1", 7, 5)}, now)
	require.EqualValues(t, 4, h, "4 waits for nobody")
	// Tick 5: A committed.
	_, h, _ = advance(s, h, 7, nil, now)
	require.EqualValues(t, 7, h)
}
