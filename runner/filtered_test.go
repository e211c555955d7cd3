package runner

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/internal/filter"
	"github.com/eventline/eventline/projector"
)

// Units share a filtered read only when they select the same events: the key tells every
// selection apart, however its type names are spelled.
func TestSelectionKey(t *testing.T) {
	sel := func(aggs, evs []string, parts, part int) selection {
		return newSelection(filter.Compile(projector.FilterSpec{Aggregates: aggs, Events: evs}), parts, part)
	}
	distinct := []selection{
		sel(nil, nil, 1, 0),
		sel(nil, nil, 4, 0),
		sel(nil, nil, 4, 1),
		sel(nil, nil, 8, 1),
		sel([]string{"a,b"}, nil, 1, 0),
		sel([]string{"a", "b"}, nil, 1, 0),
		sel(nil, []string{"a", "b"}, 1, 0),
		sel([]string{"a"}, []string{"b"}, 1, 0),
		sel([]string{`a" "b`}, nil, 1, 0),
		sel([]string{"a"}, []string{"b"}, 2, 1),
	}
	seen := map[string]int{}
	for i, s := range distinct {
		j, dup := seen[s.key]
		require.False(t, dup, "selections %d and %d share the key %s", i, j, s.key)
		seen[s.key] = i
	}
	require.Equal(t, sel(nil, nil, 0, 0).key, sel(nil, nil, 1, 0).key, "0 partitions is 1")
	require.True(t, sel(nil, nil, 1, 0).all())
	require.False(t, sel(nil, nil, 2, 0).all())
	require.False(t, sel([]string{"a"}, nil, 1, 0).all())
}
