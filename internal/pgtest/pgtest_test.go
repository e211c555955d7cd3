package pgtest_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

type queryRower interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// userTables counts the tables outside the system schemas.
func userTables(t *testing.T, db queryRower) int {
	t.Helper()
	var n int
	err := db.QueryRow(t.Context(), `SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')`).Scan(&n)
	require.NoError(t, err)
	return n
}

func TestDatabasesAreMigratedAndIsolated(t *testing.T) {
	t.Parallel()
	a := pgtest.NewDatabase(t)
	b := pgtest.NewDatabase(t)
	require.NotEqual(t, a.Name, b.Name)
	require.Positive(t, userTables(t, a.Pool), "NewDatabase should copy the migrated template")
	require.Equal(t, userTables(t, a.Pool), userTables(t, b.Pool))

	_, err := a.Pool.Exec(t.Context(), `CREATE TABLE only_in_a (id int); INSERT INTO only_in_a VALUES (1)`)
	require.NoError(t, err)
	var inA, inB *string
	require.NoError(t, a.Pool.QueryRow(t.Context(), `SELECT to_regclass('only_in_a')::text`).Scan(&inA))
	require.NoError(t, b.Pool.QueryRow(t.Context(), `SELECT to_regclass('only_in_a')::text`).Scan(&inB))
	require.NotNil(t, inA)
	require.Nil(t, inB, "a table created in one database must not appear in another")

	var name string
	require.NoError(t, a.Pool.QueryRow(t.Context(), `SELECT current_database()`).Scan(&name))
	require.Equal(t, a.Name, name)
}

func TestNewEmptyDatabaseHasNoTables(t *testing.T) {
	t.Parallel()
	db := pgtest.NewEmptyDatabase(t)
	require.Zero(t, userTables(t, db.Pool))
}

func TestManyDatabasesInParallel(t *testing.T) {
	t.Parallel()
	for i := range 12 {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			t.Parallel()
			db := pgtest.NewDatabase(t)
			var one int
			require.NoError(t, db.Pool.QueryRow(t.Context(), `SELECT 1`).Scan(&one))
			require.Equal(t, 1, one)
		})
	}
}

func TestConnAndConfig(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDatabase(t)

	conn := db.Conn(t)
	var name string
	require.NoError(t, conn.QueryRow(t.Context(), `SELECT current_database()`).Scan(&name))
	require.Equal(t, db.Name, name)

	cfg := db.Config(t)
	cfg.MaxConns = 2
	pool, err := pgxpool.NewWithConfig(t.Context(), cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	require.NoError(t, pool.QueryRow(t.Context(), `SELECT current_database()`).Scan(&name))
	require.Equal(t, db.Name, name)
}

func TestAdminURL(t *testing.T) {
	t.Parallel()
	conn, err := pgx.Connect(t.Context(), pgtest.AdminURL())
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	var prepared int
	require.NoError(t, conn.QueryRow(t.Context(), `SELECT current_setting('max_prepared_transactions')::int`).Scan(&prepared))
	if pgtest.CanRestart() {
		require.Equal(t, 10, prepared, "a local cluster allows prepared transactions")
	}
}

// The tests below stop the shared server, so they must not run in parallel with others.

func TestRestartServer(t *testing.T) {
	db := pgtest.NewDatabase(t)
	conn := db.Conn(t)
	warmUp(t, db.Pool)

	pgtest.RestartServer(t)

	_, err := conn.Exec(t.Context(), `SELECT 1`)
	require.Error(t, err, "a connection from before the restart is gone")

	// Each connection from before the restart fails once and is dropped from the pool; after at
	// most that many failures, the pool has connected anew.
	var ok bool
	for range int(db.Pool.Config().MaxConns) + 1 {
		if _, err := db.Pool.Exec(t.Context(), `SELECT 1`); err == nil {
			ok = true
			break
		}
	}
	require.True(t, ok, "the pool reconnects after the restart")

	// The harness itself works after a restart too.
	after := pgtest.NewDatabase(t)
	_, err = after.Pool.Exec(t.Context(), `SELECT 1`)
	require.NoError(t, err)
}

func TestStopAndStartServer(t *testing.T) {
	db := pgtest.NewDatabase(t)

	pgtest.StopServer(t)
	_, err := pgx.Connect(t.Context(), db.URL)
	require.Error(t, err, "no connections while the server is stopped")

	pgtest.StartServer(t)
	conn, err := pgx.Connect(t.Context(), db.URL)
	require.NoError(t, err)
	require.NoError(t, conn.Close(t.Context()))
}

func TestStopServerStartsItAgainAfterTheTest(t *testing.T) {
	t.Run("stop", func(t *testing.T) { pgtest.StopServer(t) })
	db := pgtest.NewDatabase(t)
	_, err := db.Pool.Exec(t.Context(), `SELECT 1`)
	require.NoError(t, err)
}

// warmUp has the pool open all the connections it may.
func warmUp(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	var conns []*pgxpool.Conn
	for range pool.Config().MaxConns {
		c, err := pool.Acquire(t.Context())
		require.NoError(t, err)
		conns = append(conns, c)
	}
	for _, c := range conns {
		c.Release()
	}
}
