package postgres

import (
	"context"
	"fmt"

	"github.com/eventline/eventline"
)

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
}

// Validate reports the first invalid setting, naming the field (errors match
// eventline.ErrInvalidName). New returns the same error.
func (c StoreConfig) Validate() error {
	if err := c.Names.Validate(); err != nil {
		return fmt.Errorf("postgres store config: %w", err)
	}
	return nil
}
