// Command eventline is the operator CLI of eventline: it migrates the schema, shows what every
// projection is doing, and asks the runner processes to pause, resume or rebuild projections and
// to retry or discard parked events. It talks to PostgreSQL only; the runners pick the requests up
// from their tables.
//
// Usage:
//
//	eventline [global flags] <command> [flags] [arguments]
//
// Commands:
//
//	migrate [--print]                         create or upgrade the tables
//	status [--watch] [--interval 2s] [--json] projections, lag and live runner processes
//	rebuild NAME                              reset a projection and replay it from position 0
//	pause NAME                                stop applying events to a projection
//	resume NAME                               apply events again (also clears a stop)
//	dead-letters list [--projection NAME] [--json]
//	dead-letters retry ID                     run the handler on a parked event again
//	dead-letters discard ID                   delete a parked event
//	help [COMMAND]                            show help
//
// Every command takes --help, which prints its usage to stdout and exits 0.
//
// Global flags go before the command, or after it before its arguments (the standard flag
// package stops at the first argument that is not a flag, so "eventline rebuild NAME --json"
// is an error):
//
//	--database-url URL        PostgreSQL connection URL or key=value string; defaults to
//	                          $DATABASE_URL. Without connect_timeout, connecting gives up
//	                          after 10s.
//	--events-table NAME       defaults to "events"
//	--checkpoints-table NAME  defaults to "eventline_checkpoints"
//	--dead-letters-table NAME defaults to "eventline_dead_letters"
//	--nodes-table NAME        defaults to "eventline_nodes"
//
// Table names are plain identifiers, optionally schema-qualified ("app.events"). migrate also
// takes --aggregate-heads-table and --migrations-table, which only it uses. Flags may be written
// with one dash or two.
//
// # Status
//
// status prints one row per checkpoint (each version and partition of each projection):
//
//	PROJECTION  VERSION  PARTITION  OWNER   POSITION  HEAD  LAG  LAG(S)  STATE    LAST ERROR
//	orders      1        -          node-a  4         10    6    60.0    running  -
//
// HEAD is the highest global position in the events table, LAG is HEAD-POSITION (positions, so
// holes left by rolled-back appends count), LAG(S) the age in seconds of the oldest event the
// projection has not applied yet (0 when caught up). PARTITION is k/P for partition k of a
// projection split in P, "-" when it is not partitioned. OWNER is the runner process holding a
// live lease on it, "-" when none does. LAST ERROR is cut to 60 characters; for a stopped
// projection it starts with the position of the event that failed. Ages are measured with the
// database's clock, so the machine running the CLI need not agree with it.
//
// After the table comes the list of live runner processes (those that sent a heartbeat within
// the last 10s): node id, host, pid, heartbeat age and the projections it has registered.
//
// With --json, status prints one object instead, with snake_case keys and the full errors:
//
//	{
//	  "time": "...",            the database's clock when the snapshot was taken
//	  "head": 10,
//	  "projections": [{"projection", "version", "partition", "partitions",
//	                   "owner" (holder of a live lease, "" when none),
//	                   "lease_owner", "lease_until" (the last lease, live or expired; "" and
//	                   null when there is none), "position", "head", "lag", "lag_seconds",
//	                   "state", "last_error", "failed_position", "rebuild_requested",
//	                   "updated_at"}, ...],
//	  "nodes": [{"id", "hostname", "pid", "projections", "started_at", "heartbeat_at",
//	             "heartbeat_age_seconds"}, ...]
//	}
//
// With --watch, status redraws every --interval (default 2s) until interrupted (Ctrl-C, which
// then exits 0). On a terminal it clears the screen before each redraw; otherwise it prints the
// successive tables separated by a blank line, or with --json one compact object per line. An
// error after the first snapshot is printed to stderr and the next interval tries again.
//
// # Dead letters
//
// dead-letters list prints the events that projections with the park policy set aside, oldest
// position first per projection, with --projection to show one projection's; --json prints an
// array of objects ("id", "projection", "version", "partition", "global_position", "event_id",
// "error", "attempts", "retry_requested", "created_at"). retry asks the runner owning the
// projection to run the handler on the event again (it deletes the dead letter when that works);
// discard deletes it.
//
// # Exit codes
//
// Scripts can rely on these:
//
//	0  success (also --help, and status --watch ended by Ctrl-C)
//	1  operational error: database unreachable, SQL error (for example tables not migrated)
//	2  usage error: unknown command, bad flag, missing or extra argument, invalid table name,
//	   no database URL
//	3  not found: no such projection (rebuild, pause, resume) or dead letter (retry, discard)
//
// Errors go to stderr as "eventline: <message>".
package main
