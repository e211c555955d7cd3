package postgres_test

import (
	"context"

	"github.com/eventline/eventline/eventstore/postgres"
	"github.com/eventline/eventline/migrations"
)

func migrationsApply(ctx context.Context, db migrations.Beginner, cfg *postgres.StoreConfig) ([]int, error) {
	return migrations.Apply(ctx, db, cfg.Names)
}
