// Package migrations creates and upgrades eventline's tables: the events table with its append
// lock trigger and append function, the aggregate heads, and the runner's checkpoints, dead
// letters, nodes and projection lifecycle records.
//
//	// At start-up, in every process: idempotent, and safe when many processes start at once.
//	applied, err := migrations.Apply(ctx, pool, eventline.Names{}) // the default tables
//
// The SQL lives in numbered files embedded in the binary (sql/*.sql). Apply runs, in one
// transaction and under an advisory lock, the ones that the events table of the given names has
// not had yet, and records them in the migrations table (per events table, so that several events
// tables can live in one database). It returns the versions it applied.
//
// Teams with their own migration tool take the SQL from Files (one entry per numbered file) or SQL
// (one script), also from the command line (`eventline migrate --print`). That SQL records nothing:
// do not also run Apply on a database set up from it.
//
// # Names
//
// Every function takes the eventline.Names of the installation: use the same value for the Store
// (postgres.StoreConfig.Names), since the runner takes its names from the store. Names are
// validated before anything touches the database (errors match eventline.ErrInvalidName and name
// the field) and quoted in the SQL; a schema in a name ("app.events") must exist.
//
// # Raw SQL writers
//
// Migration 0005 creates, per events table, an append function for writers that are not Go, with
// Store.Append's guarantees (versions, head row, position lock, notification); AppendFunc gives
// its quoted name, eventline_append_events for the default table. Its comment in
// sql/0005_append_function.sql is the reference, and docs/design.md ("Raw SQL writers") says which
// columns a plain INSERT must give instead.
package migrations
