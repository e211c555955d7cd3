package postgres

import (
	"hash/maphash"
	"testing"
)

// The set of aggregates with a head row forgets what it is told to, and starts again when full,
// so it stays bounded whatever the number of aggregates a store appends to.
func TestHeadCache(t *testing.T) {
	c := headCache{seed: maphash.MakeSeed()}
	a, b := c.key("order", "1"), c.key("order", "2")
	if a == b || c.key("order", "1") != a || c.key("order1", "") == c.key("order", "1") {
		t.Fatal("keys: equal for different aggregates, or different for one")
	}
	if c.has(a) {
		t.Fatal("empty set has a key")
	}
	c.put(a, true)
	c.put(b, true)
	if !c.has(a) || !c.has(b) {
		t.Fatal("put keys missing")
	}
	c.put(a, false)
	if c.has(a) || !c.has(b) {
		t.Fatal("forgotten key still there, or the other one gone")
	}
	for i := uint64(0); len(c.set) < headCacheMax; i++ {
		c.put(i, true)
	}
	c.put(a, true)
	if len(c.set) != 1 || !c.has(a) {
		t.Fatalf("full set did not start again with the new key: %d keys", len(c.set))
	}
}
