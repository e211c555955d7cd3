package postgres

import (
	"context"
	"fmt"

	"github.com/eventline/eventline"
)

// MaxEventSizeDefault is the default of StoreConfig.MaxEventSize: 1 MiB.
const MaxEventSizeDefault = 1 << 20

// StoreConfig configures a Store. The zero value is valid: every field has a default.
type StoreConfig struct {
	// Names names the tables (the events and aggregate heads tables the store writes) and the
	// notify channel (NotifyChannel: Append notifies it when set). Runners and waiters built on
	// the store take the rest of the names from here, so that they agree with it. Defaults to the
	// zero Names: every default, and no notification.
	Names eventline.Names
	// TraceID, when set, gives Append its caller's trace: an event appended with an empty TraceID
	// is stored with TraceID(ctx) of the Append call (the tracing/otel adapter's Tracer.TraceID
	// returns the W3C traceparent of the span in ctx, so that the handlers' spans link to it).
	// Defaults to nil: events keep the TraceID they carry.
	TraceID func(ctx context.Context) string
	// MaxEventSize is the most bytes of payload plus metadata (counted as stored and read back:
	// its jsonb text, in which a number has all its digits) one event may have: Append refuses a
	// larger one, before any SQL runs, with an error matching eventstore.ErrEventTooLarge. It
	// bounds what one event costs every reader (a runner's page holds at least one whole event).
	// The append function of the migrations has its own limit, the setting
	// eventline.max_event_size (docs/design.md, "Raw SQL writers"). Defaults to 1 MiB
	// (MaxEventSizeDefault); 0 means the default.
	MaxEventSize int
}

// Validate reports the first invalid setting, naming the field (errors match
// eventline.ErrInvalidName). New returns the same error.
func (c StoreConfig) Validate() error {
	if err := c.Names.Validate(); err != nil {
		return fmt.Errorf("postgres store config: %w", err)
	}
	if c.MaxEventSize < 0 {
		return fmt.Errorf("postgres store config: invalid MaxEventSize %d", c.MaxEventSize)
	}
	return nil
}
