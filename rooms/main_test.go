package rooms

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

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

// testEnv is a room engine on a fresh database of this pass's engine.
type testEnv struct {
	t    testing.TB
	opts storage.Options
	key  *SigningKey
	db   *storage.DB
	svc  *Service
}

// newTestService opens a fresh database (SQLite file, or a new PostgreSQL
// database in the PostgreSQL pass) and starts a room engine on it for
// server name "test".
func newTestService(t testing.TB) *testEnv {
	t.Helper()
	dir := t.TempDir()
	env := &testEnv{t: t, opts: storage.Options{SQLitePath: filepath.Join(dir, "agentspace.db")}}
	if testdb.Postgres() {
		env.opts.PostgresURL = testdb.NewPostgres(t)
	}
	key, err := LoadOrCreateSigningKey(filepath.Join(dir, "signing.key"))
	if err != nil {
		t.Fatal(err)
	}
	env.key = key
	env.reopen()
	return env
}

// reopen closes the database and starts a new engine on it, as a restart would.
func (env *testEnv) reopen() {
	env.t.Helper()
	if env.db != nil {
		env.db.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, err := storage.Open(ctx, env.opts)
	if err != nil {
		env.t.Fatalf("storage.Open: %v", err)
	}
	env.t.Cleanup(func() { db.Close() })
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	svc, err := New(ctx, db, "test", env.key, log)
	if err != nil {
		env.t.Fatalf("rooms.New: %v", err)
	}
	env.db, env.svc = db, svc
}
