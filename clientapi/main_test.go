package clientapi

import (
	"context"
	"testing"

	"github.com/agentspace/agentspace/internal/testdb"
	"github.com/agentspace/agentspace/storage"
)

// TestMain runs every test twice: on SQLite, then on PostgreSQL, each test
// on a database of its own copied from one with the schema migrated (see testdb).
func TestMain(m *testing.M) {
	testdb.Main(m, func(dbURL string) error {
		db, err := storage.Open(context.Background(), storage.Options{PostgresURL: dbURL})
		if err != nil {
			return err
		}
		return db.Close()
	})
}
