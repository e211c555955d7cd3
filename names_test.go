package eventline_test

import (
	"reflect"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/eventline/eventline"
)

func TestNamesDefaults(t *testing.T) {
	d := eventline.Names{}.WithDefaults()
	require.Equal(t, eventline.Names{
		EventsTable: "events", AggregateHeadsTable: "aggregate_heads", CheckpointsTable: "eventline_checkpoints",
		DeadLettersTable: "eventline_dead_letters", NodesTable: "eventline_nodes", ProjectionsTable: "eventline_projections",
		MigrationsTable: "eventline_migrations", ControlChannel: "eventline_control", ProgressChannel: "eventline_progress",
	}, d, "NotifyChannel stays empty: no notification by default")
	require.NoError(t, eventline.Names{}.Validate())
	require.Equal(t, d, d.WithDefaults(), "idempotent")

	// A field added to Names gets a default (or is NotifyChannel, whose default is none).
	v := reflect.ValueOf(d)
	for i := 0; i < v.NumField(); i++ {
		name := v.Type().Field(i).Name
		if name == "NotifyChannel" {
			continue
		}
		require.NotEmpty(t, v.Field(i).String(), "Names.%s has no default", name)
	}
	// WithDefaults keeps what is set.
	set := eventline.Names{EventsTable: "app.events", NotifyChannel: "new_events"}.WithDefaults()
	require.Equal(t, "app.events", set.EventsTable)
	require.Equal(t, "new_events", set.NotifyChannel)
}

func TestNamesValidateNamesTheField(t *testing.T) {
	for _, c := range []struct {
		names eventline.Names
		msg   string
	}{
		{eventline.Names{EventsTable: "events; DROP TABLE x"}, "EventsTable"},
		{eventline.Names{AggregateHeadsTable: "a b"}, "AggregateHeadsTable"},
		{eventline.Names{CheckpointsTable: `x"y`}, "CheckpointsTable"},
		{eventline.Names{DeadLettersTable: "a.b.c"}, "DeadLettersTable"},
		{eventline.Names{NodesTable: "no-des"}, "NodesTable"},
		{eventline.Names{ProjectionsTable: "0p"}, "ProjectionsTable"},
		{eventline.Names{MigrationsTable: "m m"}, "MigrationsTable"},
		{eventline.Names{NotifyChannel: "a.b"}, "NotifyChannel"},
		{eventline.Names{ControlChannel: "c c"}, "ControlChannel"},
		{eventline.Names{ProgressChannel: "p-p"}, "ProgressChannel"},
		// Two fields on one table or one channel: the runner would mix unrelated rows or messages.
		{eventline.Names{CheckpointsTable: "t", NodesTable: "t"}, `CheckpointsTable and NodesTable are both "t"`},
		{eventline.Names{DeadLettersTable: "events"}, `EventsTable and DeadLettersTable are both "events"`},
		{eventline.Names{NotifyChannel: "eventline_progress"}, `NotifyChannel and ProgressChannel are both "eventline_progress"`},
	} {
		err := c.names.Validate()
		require.ErrorIs(t, err, eventline.ErrInvalidName, c.msg)
		require.ErrorContains(t, err, c.msg)
		var ne *eventline.NameError
		require.ErrorAs(t, err, &ne)
		require.NotEmpty(t, ne.Field)
		require.Contains(t, c.msg, ne.Field, "the error's field")
	}
	err := eventline.Names{CheckpointsTable: "t", NodesTable: "t"}.Validate()
	var ne *eventline.NameError
	require.ErrorAs(t, err, &ne)
	require.Equal(t, eventline.NameError{Field: "NodesTable", Other: "CheckpointsTable", Value: "t", Err: ne.Err}, *ne)
	require.NoError(t, eventline.Names{EventsTable: "app.Events", CheckpointsTable: "app.cps", NotifyChannel: "Events_1"}.Validate())
}
