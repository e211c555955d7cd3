package projector

import (
	"encoding/binary"
	"math/bits"
)

// PartitionOf is the partition (0 to n-1) of an aggregate ID: hash(aggregateID) modulo n, where
// hash is the 32-bit hash PostgreSQL computes for text, hashtext (the low 32 bits of
// hashtextextended(id, 0)), over the ID's UTF-8 bytes. The runner asks the database for one
// partition's events with the same computation in SQL, eventline_partition_of(aggregate_id, n)
// (migration 0007), so that each partition's owner reads only its own events.
//
// Earlier versions hashed with FNV-1a: the partition of most aggregates changed (docs/design.md,
// "Partitions in SQL", says how to move a partitioned projection across that upgrade).
func PartitionOf(aggregateID string, n int) int {
	if n <= 1 {
		return 0
	}
	return int(textHash(aggregateID) % uint32(n))
}

// textHash is PostgreSQL's hash_bytes (Bob Jenkins' lookup3, as src/common/hashfn.c has it on a
// little-endian machine) of s's bytes: the value of hashtext(s COLLATE "C") as a uint32.
func textHash(s string) uint32 {
	a := 0x9e3779b9 + uint32(len(s)) + 3923095
	b, c := a, a
	for ; len(s) >= 12; s = s[12:] {
		a += le32(s[0:4])
		b += le32(s[4:8])
		c += le32(s[8:12])
		a, b, c = mix(a, b, c)
	}
	// The last 0 to 11 bytes, little-endian; c's lowest byte is left out (lookup3 reserves it for
	// the length).
	var tail [12]byte
	copy(tail[:], s)
	a += binary.LittleEndian.Uint32(tail[0:4])
	b += binary.LittleEndian.Uint32(tail[4:8])
	c += binary.LittleEndian.Uint32(tail[8:12]) << 8
	return final(a, b, c)
}

func le32(s string) uint32 {
	return uint32(s[0]) | uint32(s[1])<<8 | uint32(s[2])<<16 | uint32(s[3])<<24
}

func mix(a, b, c uint32) (uint32, uint32, uint32) {
	a -= c
	a ^= bits.RotateLeft32(c, 4)
	c += b
	b -= a
	b ^= bits.RotateLeft32(a, 6)
	a += c
	c -= b
	c ^= bits.RotateLeft32(b, 8)
	b += a
	a -= c
	a ^= bits.RotateLeft32(c, 16)
	c += b
	b -= a
	b ^= bits.RotateLeft32(a, 19)
	a += c
	c -= b
	c ^= bits.RotateLeft32(b, 4)
	b += a
	return a, b, c
}

func final(a, b, c uint32) uint32 {
	c ^= b
	c -= bits.RotateLeft32(b, 14)
	a ^= c
	a -= bits.RotateLeft32(c, 11)
	b ^= a
	b -= bits.RotateLeft32(a, 25)
	c ^= b
	c -= bits.RotateLeft32(b, 16)
	a ^= c
	a -= bits.RotateLeft32(c, 4)
	b ^= a
	b -= bits.RotateLeft32(a, 14)
	c ^= b
	c -= bits.RotateLeft32(b, 24)
	return c
}
