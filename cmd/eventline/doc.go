// Command eventline is the operator CLI of eventline: it migrates the schema, shows what every
// projection is doing, asks the runner processes to pause, resume or rebuild projections and
// to retry or discard parked events, and serves the same as a web console (ui). It talks to PostgreSQL only: pause, resume and rebuild are
// transitions of the projection's lifecycle record (one row per projection in the projections
// table), taken in one transaction under the record's lock; the runners follow the record.
//
// Usage:
//
//	eventline [global flags] <command> [flags] [arguments]
//
// Commands:
//
//	migrate [--print]                         create or upgrade the tables
//	status [--watch] [--interval 2s] [--json] projections, lag and live runner processes
//	status --check [--max-lag 30s]            exit 4 when a projection is stopped, has dead
//	                                          letters, lags or has no live owner
//	rebuild NAME                              empty a projection's read model and replay it from 0
//	pause NAME                                stop applying events to a projection
//	resume NAME                               apply events again (also clears failures)
//	reset --to POSITION NAME                  move a paused or stopped projection to a position
//	dead-letters list [--projection NAME] [--json]
//	dead-letters retry ID                     run the handler on a parked event again
//	dead-letters discard ID                   delete a parked event
//	ui [--listen ADDR] [--allow-actions] [--token TOKEN] [--poll-interval 2s]
//	                                          serve the web console
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
//	--projections-table NAME  defaults to "eventline_projections" (the lifecycle records)
//
// Table names are plain identifiers, optionally schema-qualified ("app.events"). migrate also
// takes --aggregate-heads-table and --migrations-table, which only it uses. Each --X-table flag
// sets the field XTable of eventline.Names, the value the application gives its store: give the
// CLI the names the application uses. Invalid names, or two flags naming one table, are usage
// errors (exit 2) before anything connects. Flags may be written with one dash or two.
//
// # Pause, resume, rebuild
//
// pause sets the projection's pause: no version or partition of it applies anything until
// resume. The pause survives version cut-overs, partition changes and rebuilds. A batch whose
// checkpoint compare-and-set ran before the pause may still commit, so pause then waits, up to
// 10s, until no batch of the projection is in flight; if one still is, it prints "paused NAME,
// but a batch is still in flight ..." and exits 0 all the same.
//
// resume clears the pause and the failure of every checkpoint a handler failure stopped (those
// retry the event that failed), and the record's last error.
//
// rebuild records a rebuild request; a runner process with the code of the active version
// carries it out once (however many requests are pending): it empties the read model with the
// projection's Reset and replays the active version from position 0, clearing that version's
// failures and dead letters. A partition change in progress completes at once; a build of a
// newer version beside it goes on. rebuild refuses, with exit code 1, a detached handler (it
// would repeat its side effects) and a projection without Reset (it would apply every event a
// second time); a runner that cannot carry a request out clears it and says why in the record's
// last error, which status shows.
//
// reset --to POSITION moves every unit of the active version to POSITION without touching the read
// model: forwards to skip events, backwards to apply some again. It is refused while the
// projection runs (pause it first, or it must be stopped by a failure), while a version or
// partition change is in progress, and for a position beyond the head of the events table (it
// would skip the events appended up to it later); it clears failures and keeps the pause.
//
// # Status
//
// status prints one row per checkpoint (each version and partition of each projection):
//
//	PROJECTION  VERSION  PARTITION  OWNER   POSITION  HEAD  LAG  LAG(S)  ROLE      STATE     LAST ERROR
//	orders      1        -          node-a  4         10    6    60.0    active    running   -
//	search      3        -          -       3         10    7    70.0    building  building  -
//
// HEAD is the highest global position in the events table, LAG is HEAD-POSITION (positions, so
// holes left by rolled-back appends count), LAG(S) the age in seconds of the oldest event the
// projection has not applied yet (0 when caught up). PARTITION is k/P for partition k of a
// projection split in P, "-" when it is not partitioned. OWNER is the runner process holding a
// live lease on it, "-" when none does. ROLE is what the checkpoint's layout (version and
// partition count) is to its projection: active (it serves), building (a newer version
// replaying from 0 beside the active one, which it replaces once caught up) or waiting (a new
// layout waiting for the active one to drain to the barrier). STATE is paused (the operator's
// pause, for every row of the projection), stopped (a handler failed on this checkpoint), else
// running for the active layout and the role for the others. LAST ERROR is cut to 60
// characters; for a stopped checkpoint it starts with the position of the event that failed.
// Ages are measured with the database's clock, so the machine running the CLI need not agree
// with it. Everything is read in one snapshot (a read-only repeatable-read transaction).
//
// Then comes a line for each projection with something to say about its lifecycle record:
//
//	search: paused; building v3/1 beside v2/2 (v2/2 stops at 10 for the cut-over); rebuild pending
//	orders: switching from v1/1 to v1/4 at 4
//	totals: last error: rebuild request refused: ...
//
// Then, for each unit, what its owner published with its last heartbeat (runners publish their
// live status in the nodes table every heartbeat):
//
//	orders: waiting at position 5: appender pid 4242 (transaction 7/31) open for 2.5s
//	orders: retrying after: connection reset by peer
//
// EVENTS/S in the table is the events its owner applied per second lately.
//
// After that comes the list of live runner processes (those that sent a heartbeat within
// the last 10s): node id, host, pid, heartbeat age, its horizon (every position at or below
// it is settled), how many units it owns, their events per second, and the projections it has
// registered.
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
//	                   "role", "state", "last_error", "failed_position", "updated_at",
//	                   "events_per_second", "waiting_on" (null, or {"position",
//	                   "appender_pid", "transaction", "age_seconds"}), "owner_error"}, ...],
//	  "lifecycle": [{"projection", "active_version", "active_partitions",
//	                 "target_version", "target_partitions", "target_mode" ("build" or
//	                 "switch"; 0, 0 and "" when no change is in progress),
//	                 "barrier" (null when none), "paused", "rebuild_pending",
//	                 "rebuild_requests", "rebuilds", "detached", "resettable",
//	                 "last_error", "updated_at", "dead_letters"}, ...],
//	  "dead_letters": 4,        every dead letter, of every projection (with a lifecycle record or not)
//	  "nodes": [{"id", "hostname", "pid", "projections", "started_at", "heartbeat_at",
//	             "heartbeat_age_seconds", "horizon", "owned", "events_per_second"}, ...]
//	}
//
// With --watch, status redraws every --interval (default 2s) until interrupted (Ctrl-C, which
// then exits 0). On a terminal it clears the screen before each redraw; otherwise it prints the
// successive tables separated by a blank line, or with --json one compact object per line. An
// error after the first snapshot is printed to stderr and the next interval tries again.
//
// With --check, status judges instead of showing, for cron and CI: it prints one line per
// problem and exits 4 when a unit the projection runs (active, building or waiting) was stopped
// by a handler failure or has no live owner (not counted for a paused projection), when a
// projection has dead letters, or when an active unit, neither paused nor stopped, lags beyond
// --max-lag (a duration: the age of its oldest event not applied) or --max-lag-events
// (positions); lag is not checked without them. Otherwise it prints "ok: ..." and exits 0.
//
//	$ eventline status --check --max-lag 30s
//	orders: 2 dead letters (eventline dead-letters list)
//	orders: lags 60.0s behind (bound 30s): at 4, head 10
//	search@2#1/2: no live owner (the lease of node-gone ran out)
//	totals: stopped at position 7: apply Placed to totals: ...
//
// --check --json prints {"ok", "problems": [{"projection", "unit", "kind", "reason"}]}, kind
// being stopped, dead_letters, lag or no_owner.
//
// # Dead letters
//
// dead-letters list prints the events that projections with the park policy set aside, oldest
// position first per projection and version, with --projection to show one projection's. Dead
// letters belong to a version of a projection, not to a partition, and carry the event's
// aggregate; BLOCKED BY is the position of the earlier parked event of the same aggregate an
// event was parked behind (its handler was not run), "-" for one that failed itself. --json
// prints an array of objects ("id", "projection", "version", "global_position", "event_id",
// "aggregate_type", "aggregate_id", "blocked_by" (0 when none), "error", "attempts",
// "retry_requested", "created_at"). retry asks the runner that owns the event's aggregate to run
// the handler on it again, then on the events parked behind it (it deletes the dead letter when
// that works); discard deletes it. An unknown ID prints "dead letter N not found" (exit code 3).
//
// # Web console
//
// ui serves the web console of package console until interrupted (Ctrl-C exits 0): the status
// above (with a chart of each checkpoint's lag in events and seconds over the last 5 minutes,
// drawn from what the page polled), the lifecycle records, the dead letters and the live runner
// processes. It listens on 127.0.0.1:7070 unless --listen says otherwise, and prints its
// address.
//
// It is read-only unless started with --allow-actions; then the page can pause, resume and
// rebuild projections and retry and discard dead letters, through the same code as the commands
// above (same refusals). Every action is a POST carrying the token in the X-Eventline-Token
// header: --token, else $EVENTLINE_UI_TOKEN. On a loopback address, --allow-actions without a
// token makes one up and prints it in the address, after "#token=" (browsers do not send the
// fragment); on any other address, a token is required (exit 2 without one). On a loopback
// address the console answers only requests addressed to localhost or a loopback IP (421
// otherwise), which defeats DNS rebinding. Every action is logged to stderr with its outcome.
//
// # Exit codes
//
// Scripts can rely on these:
//
//	0  success (also --help, and status --watch ended by Ctrl-C)
//	1  operational error: database unreachable, SQL error (for example tables not migrated);
//	   or a refused request: rebuild of a detached handler or of a projection without Reset
//	2  usage error: unknown command, bad flag, missing or extra argument, invalid table name,
//	   no database URL
//	3  not found: no such projection (rebuild, pause, resume: no runner has registered it yet)
//	   or dead letter (retry, discard)
//	4  status --check found a problem
//
// Errors go to stderr as "eventline: <message>".
package main
