package clientapi

import (
	"context"
	"log/slog"

	"github.com/agentspace/agentspace/rooms"
	"github.com/agentspace/agentspace/storage"
)

// joinCluster puts the engine in multi-instance mode when the database is
// PostgreSQL: any number of processes with the same DATABASE_URL then form
// one homeserver (see rooms/cluster.go). On SQLite it does nothing.
func joinCluster(ctx context.Context, url string, db *storage.DB, rs *rooms.Service, log *slog.Logger) (*storage.Feed, *rooms.Cluster, error) {
	if db.Dialect() != storage.Postgres {
		return nil, nil, nil
	}
	feed, err := storage.OpenFeed(ctx, db, url, log)
	if err != nil {
		return nil, nil, err
	}
	c := rs.EnableCluster(feed, log)
	log.Info("multi-instance mode: following the change feed", "instance", c.ID())
	return feed, c, nil
}
