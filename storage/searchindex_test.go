package storage

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/agentspace/agentspace/internal/testdb"
)

// TestSearchIndexCatchesUp: on SQLite bodies are indexed in batches; a
// search always sees every stored message, and messages stored but not
// yet indexed when the server stopped are indexed after a restart, once.
func TestSearchIndexCatchesUp(t *testing.T) {
	if testdb.Postgres() {
		t.Skip("the batched FTS4 index is SQLite's; PostgreSQL indexes bodies with a GIN expression index")
	}
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "agentspace.db")
	ftsRows := func(db *DB) int {
		t.Helper()
		var n int
		if err := db.QueryRow(ctx, `SELECT COUNT(*) FROM events_fts`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	matches := func(db *DB) int {
		t.Helper()
		n, err := db.CountSearch(ctx, SearchQuery{Term: "message", Rooms: map[string]StreamPos{"!aaa:x": 0, "!bbb:x": 0}})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}

	db, err := Open(ctx, Options{SQLitePath: path})
	if err != nil {
		t.Fatal(err)
	}
	adminTestRoom(t, db, "!aaa:x", "", 3)
	if got := ftsRows(db); got != 0 {
		t.Fatalf("%d rows indexed in the storing transaction; want them deferred", got)
	}
	if got := matches(db); got != 3 {
		t.Fatalf("search found %d of 3 stored messages", got)
	}
	adminTestRoom(t, db, "!bbb:x", "", 2) // stored, not yet indexed, when the server stops
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	db, err = Open(ctx, Options{SQLitePath: path})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if got := ftsRows(db); got != 3 {
		t.Fatalf("%d rows indexed before the restart, want 3", got)
	}
	if got := matches(db); got != 5 {
		t.Fatalf("after a restart, search found %d of 5 messages", got)
	}
	if err := db.FlushSearchIndex(ctx); err != nil {
		t.Fatal(err)
	}
	if got := ftsRows(db); got != 5 {
		t.Fatalf("%d index rows after catching up, want 5 (each message once)", got)
	}
}
