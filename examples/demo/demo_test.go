package main

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// The demo runs, stops by itself, and leaves read models that agree with the events: v1 and the
// v2 rebuilt from zero while writers kept going.
func TestDemo(t *testing.T) {
	db := pgtest.NewDatabase(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := demo(ctx, db.URL, options{duration: 3 * time.Second, writers: 3, rate: 300, v2After: time.Second, out: io.Discard})
	require.NoError(t, err)

	for projection, table := range map[string]string{"balances": "demo_balances", "balances_v2": "demo_balances_v2"} {
		var mismatches, accounts int
		require.NoError(t, db.Pool.QueryRow(ctx, `
		WITH cp AS (SELECT position FROM eventline_checkpoints WHERE projection = $1),
		truth AS (
			SELECT aggregate_id AS account_id,
			       sum(CASE event_type WHEN 'Deposited' THEN (convert_from(payload, 'UTF8')::jsonb->>'amount')::bigint
			                           WHEN 'Withdrawn' THEN -(convert_from(payload, 'UTF8')::jsonb->>'amount')::bigint
			                           ELSE 0 END) AS balance
			FROM events, cp WHERE global_position <= cp.position GROUP BY aggregate_id)
		SELECT count(*) FILTER (WHERE b.balance IS DISTINCT FROM truth.balance), count(*)
		FROM truth FULL JOIN `+table+` b USING (account_id)`, projection).Scan(&mismatches, &accounts))
		require.Zero(t, mismatches, "%s: every account matches the events up to its checkpoint", projection)
		require.Greater(t, accounts, 5, projection)
	}
}
