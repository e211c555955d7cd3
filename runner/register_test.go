package runner_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline/eventstore"
	"github.com/eventline/eventline/projector"
	"github.com/eventline/eventline/runner"
)

// A Router without handlers would skip every event and project nothing: Register refuses it, also
// when it is embedded in a projection of the user's own; once it has a handler it is accepted.
func TestRegisterRefusesRouterWithoutHandlers(t *testing.T) {
	t.Parallel()
	h := newHarness(t, false)
	r, err := runner.New(h.db.Pool, h.store, h.config())
	require.NoError(t, err)

	empty := projector.NewRouter("balances", projector.WithAggregateTypes("account"))
	err = r.Register(empty)
	require.ErrorIs(t, err, projector.ErrNoHandlers)
	require.ErrorContains(t, err, `register "balances"`)
	embedded := struct{ *projector.Router }{projector.NewRouter("embedded")}
	require.ErrorIs(t, r.Register(embedded), projector.ErrNoHandlers)

	projector.On(empty, "Deposited", func(context.Context, *projector.Writes, eventstore.PersistedEvent, struct{}) error { return nil })
	require.NoError(t, r.Register(empty), "the refused router was not registered, and now has a handler")
}

// invalidDetached is a detached handler whose Validate fails.
type invalidDetached struct{}

func (invalidDetached) Name() string { return "mailer" }
func (invalidDetached) HandleEvent(context.Context, eventstore.PersistedEvent) error {
	return nil
}
func (invalidDetached) Validate() error { return errBoom }

// RegisterDetached refuses a handler that says it is invalid, as Register does a projection.
func TestRegisterDetachedValidates(t *testing.T) {
	t.Parallel()
	h := newHarness(t, false)
	r, err := runner.New(h.db.Pool, h.store, h.config())
	require.NoError(t, err)
	err = r.RegisterDetached(invalidDetached{})
	require.ErrorIs(t, err, errBoom)
	require.ErrorContains(t, err, `register "mailer"`)
}
