package postgres

import (
	"context"
	"fmt"

	"github.com/eventline/eventline/internal/sqlname"
	"github.com/eventline/eventline/migrations"
)

// StoreConfig configures a Store. Build it with DefaultStoreConfig or NewStoreConfig; it must
// not be changed after it was passed to NewStore.
type StoreConfig struct {
	// EventsTable is the table events are appended to. Defaults to "events".
	EventsTable string
	// AggregateHeadsTable holds each aggregate's current version. Defaults to "aggregate_heads".
	AggregateHeadsTable string
	// NotifyChannel, when set, makes Append call pg_notify on this channel inside the caller's
	// transaction (so it fires on commit only), with the append's last global position as payload.
	// Defaults to "" (no notification). At high write rates leave it empty and let runners poll:
	// every notifying commit takes a cluster-wide lock.
	NotifyChannel string
	// TraceID, when set, gives Append its caller's trace: an event appended with an empty TraceID
	// is stored with TraceID(ctx) of the Append call (the tracing/otel adapter's Tracer.TraceID
	// returns the W3C traceparent of the span in ctx, so that the handlers' spans link to it).
	// Defaults to nil: events keep the TraceID they carry.
	TraceID func(ctx context.Context) string
}

// StoreOption changes a StoreConfig.
type StoreOption func(*StoreConfig)

// DefaultStoreConfig returns the configuration with every default.
func DefaultStoreConfig() *StoreConfig {
	return &StoreConfig{
		EventsTable:         migrations.EventsTableDefault,
		AggregateHeadsTable: migrations.AggregateHeadsTableDefault,
	}
}

// NewStoreConfig returns the default configuration changed by opts.
func NewStoreConfig(opts ...StoreOption) *StoreConfig {
	cfg := DefaultStoreConfig()
	for _, o := range opts {
		o(cfg)
	}
	return cfg
}

// WithEventsTable sets the events table name (a plain identifier, optionally schema-qualified).
func WithEventsTable(name string) StoreOption {
	return func(c *StoreConfig) { c.EventsTable = name }
}

// WithAggregateHeadsTable sets the aggregate heads table name.
func WithAggregateHeadsTable(name string) StoreOption {
	return func(c *StoreConfig) { c.AggregateHeadsTable = name }
}

// WithNotifyChannel sets the channel Append notifies on ("" for none).
func WithNotifyChannel(channel string) StoreOption {
	return func(c *StoreConfig) { c.NotifyChannel = channel }
}

// Validate reports the first invalid setting: a table or channel name that is not a plain
// identifier. NewStore panics with the same error, so call Validate first when names come
// from user input.
func (c *StoreConfig) Validate() error {
	if c == nil {
		return fmt.Errorf("eventstore config: nil")
	}
	if _, err := sqlname.Parse("events table", c.EventsTable); err != nil {
		return fmt.Errorf("eventstore config: %w", err)
	}
	if _, err := sqlname.Parse("aggregate heads table", c.AggregateHeadsTable); err != nil {
		return fmt.Errorf("eventstore config: %w", err)
	}
	if c.NotifyChannel != "" {
		if err := sqlname.Channel(c.NotifyChannel); err != nil {
			return fmt.Errorf("eventstore config: %w", err)
		}
	}
	return nil
}

// MigrationsConfig returns the migrations configuration with this store's table names, for
// migrations.Apply.
func (c *StoreConfig) MigrationsConfig() migrations.Config {
	return migrations.Config{EventsTable: c.EventsTable, AggregateHeadsTable: c.AggregateHeadsTable}.WithDefaults()
}
