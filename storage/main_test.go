package storage

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/agentspace/agentspace/internal/testdb"
)

// TestMain runs every test twice: on SQLite, then on PostgreSQL, each test
// on a database of its own copied from one with the schema migrated (see testdb).
func TestMain(m *testing.M) {
	testdb.Main(m, func(dbURL string) error {
		db, err := Open(context.Background(), Options{PostgresURL: dbURL})
		if err != nil {
			return err
		}
		return db.Close()
	})
}

// openTestDB opens a fresh, migrated database on this pass's engine.
func openTestDB(t testing.TB) *DB {
	t.Helper()
	opts := Options{SQLitePath: filepath.Join(t.TempDir(), "agentspace.db")}
	if testdb.Postgres() {
		opts.PostgresURL = testdb.NewPostgres(t)
	}
	return openTestOptions(t, opts)
}

// openEmptyTestDB is openTestDB on a database the migrations have not touched.
func openEmptyTestDB(t testing.TB) *DB {
	t.Helper()
	opts := Options{SQLitePath: filepath.Join(t.TempDir(), "agentspace.db")}
	if testdb.Postgres() {
		opts.PostgresURL = testdb.NewEmptyPostgres(t)
	}
	return openTestOptions(t, opts)
}

// openTestOptions opens a database and closes it when the test ends.
func openTestOptions(t testing.TB, opts Options) *DB {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, err := Open(ctx, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}
