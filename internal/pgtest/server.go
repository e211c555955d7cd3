package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/jackc/pgx/v5/pgxpool"
)

// server is the PostgreSQL server a run uses.
type server struct {
	desc       string       // for messages: which source, and where
	connString string       // the maintenance database
	external   bool         // from DATABASE_URL: outlives the run, shared with other test binaries
	cluster    *cluster     // the local cluster pgtest started, or nil
	close      func() error // stops and removes what pgtest started; nil for an external server
}

// unavailableError says that a source is not there at all (no binaries, no Docker engine), as
// opposed to there and failing, which ends the search with its error.
type unavailableError struct{ reason string }

func (e *unavailableError) Error() string { return e.reason }

func unavailable(format string, args ...any) error {
	return &unavailableError{reason: fmt.Sprintf(format, args...)}
}

func isUnavailable(err error) bool {
	var u *unavailableError
	return errors.As(err, &u)
}

// obtainServer returns the first source that is there: DATABASE_URL, local server binaries, Docker.
func obtainServer(ctx context.Context, keep bool) (*server, error) {
	if connString := os.Getenv(EnvDatabaseURL); connString != "" {
		cfg, err := pgxpool.ParseConfig(connString)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", EnvDatabaseURL, err)
		}
		cc := cfg.ConnConfig
		return &server{
			desc:       fmt.Sprintf("%s server %s:%d (maintenance database %s)", EnvDatabaseURL, cc.Host, cc.Port, cc.Database),
			connString: connString,
			external:   true,
		}, nil
	}

	srv, err := startLocalCluster(ctx, keep)
	if !isUnavailable(err) {
		return srv, err
	}
	localErr := err

	srv, err = startDocker(ctx)
	if !isUnavailable(err) {
		return srv, err
	}
	return nil, fmt.Errorf(`no PostgreSQL server for the tests. Get one in any of these ways:
  1. set %s to a server where the role may create databases, for example
     %s='postgres://postgres@localhost:5432/postgres?sslmode=disable'
  2. install the PostgreSQL server binaries (initdb, pg_ctl, postgres), for example
     apt-get install -y postgresql; the tests then start a throwaway cluster of their own
  3. run a Docker engine; the tests then start a postgres:15 container
Looked for: local binaries: %v
            Docker: %v`, EnvDatabaseURL, EnvDatabaseURL, localErr, err)
}

// Throwaway gets a server for a program rather than a test (the demo): DATABASE_URL when set,
// else a throwaway local cluster, else a Docker container, like Main. It returns the connection
// string and a function that stops and removes whatever it started (nothing, for DATABASE_URL).
func Throwaway(ctx context.Context) (connString string, stop func() error, err error) {
	srv, err := obtainServer(ctx, false)
	if err != nil {
		return "", nil, err
	}
	stop = func() error { return nil }
	if srv.close != nil {
		stop = srv.close
	}
	return srv.connString, stop, nil
}
