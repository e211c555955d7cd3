package migrations_test

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/internal/pgtest"
	"github.com/eventline/eventline/projector"
)

// partitionIDs returns aggregate IDs of every length from 0 to 40 bytes (each tail length of the
// hash, several 12-byte blocks), UUIDs, and random strings of 1- to 4-byte UTF-8 characters.
func partitionIDs() []string {
	rng := rand.New(rand.NewPCG(1, 2))
	ids := []string{"", "a", "account-1", "order-42", "çé", "日本語", "🎉", "a\u0301", "Ωmega-Ø", "\u00a0 spaced \t"}
	for n := 0; n <= 40; n++ {
		ids = append(ids, strings.Repeat("x", n), strings.Repeat("é", n/2)+strings.Repeat("z", n%2))
	}
	alphabets := [][]rune{
		[]rune("abcdefghijklmnopqrstuvwxyz0123456789-_"),
		[]rune("äöüßçéñøΩπж"), // 2 bytes
		[]rune("日本語中文한국어€₿"),  // 3 bytes
		[]rune("🎉😀🚀𝄞𐍈"),       // 4 bytes
		[]rune("a日é🎉-1Ωz"),    // mixed
	}
	for i := 0; i < 2000; i++ {
		alpha := alphabets[i%len(alphabets)]
		var b strings.Builder
		for n := rng.IntN(30); n > 0; n-- {
			b.WriteRune(alpha[rng.IntN(len(alpha))])
		}
		ids = append(ids, b.String(), fmt.Sprintf("%08x-%04x-%04x-%04x-%012x", rng.Uint32(), rng.Uint32()&0xffff,
			rng.Uint32()&0xffff, rng.Uint32()&0xffff, rng.Uint64()&0xffffffffffff))
	}
	return ids
}

// TestPartitionFunctionMatchesGo: the SQL function of migration 0007 gives every ID the partition
// projector.PartitionOf gives it, for several partition counts, and spreads IDs evenly.
func TestPartitionFunctionMatchesGo(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	db := pgtest.NewDatabase(t)
	ids := partitionIDs()
	for _, id := range ids {
		require.True(t, utf8.ValidString(id))
	}
	for _, n := range []int{0, 1, 2, 3, 4, 7, 8, 16, 1000, 1 << 30} {
		rows, err := db.Pool.Query(ctx, `SELECT id, eventline_partition_of(id, $2) FROM unnest($1::text[]) AS id`, ids, n)
		require.NoError(t, err)
		seen := 0
		perPart := map[int]int{}
		for rows.Next() {
			var id string
			var part int
			require.NoError(t, rows.Scan(&id, &part))
			require.Equal(t, projector.PartitionOf(id, n), part, "partition of %q among %d", id, n)
			perPart[part]++
			seen++
		}
		require.NoError(t, rows.Err())
		require.Equal(t, len(ids), seen)
		if n >= 2 && n <= 8 {
			for p := 0; p < n; p++ {
				require.InDelta(t, float64(len(ids))/float64(n), perPart[p], 0.2*float64(len(ids))/float64(n), "partition %d of %d", p, n)
			}
		}
	}
}
