package storage

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/agentspace/agentspace/internal/testdb"
)

func TestOpenEngineAndMigrations(t *testing.T) {
	db := openEmptyTestDB(t)
	want := SQLite
	if testdb.Postgres() {
		want = Postgres
	}
	if db.Dialect() != want {
		t.Fatalf("dialect %s, want %s", db.Dialect(), want)
	}
	migs, err := loadMigrations()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var version, count int
	if err := db.QueryRow(ctx, `SELECT MAX(version), COUNT(*) FROM schema_version`).Scan(&version, &count); err != nil {
		t.Fatal(err)
	}
	if last := migs[len(migs)-1].version; version != last || count != len(migs) {
		t.Fatalf("schema_version: max %d over %d rows, want %d over %d", version, count, last, len(migs))
	}
	// Running the migrations again applies nothing.
	if err := db.migrate(ctx); err != nil {
		t.Fatalf("second migrate: %v", err)
	}
	if err := db.QueryRow(ctx, `SELECT COUNT(*) FROM schema_version`).Scan(&count); err != nil {
		t.Fatal(err)
	}
	if count != len(migs) {
		t.Fatalf("after a second migrate: %d schema_version rows, want %d", count, len(migs))
	}
	if err := db.IntegrityCheck(ctx); err != nil {
		t.Fatalf("IntegrityCheck: %v", err)
	}
}

// Concurrent writers get distinct positions, committed in order.
func TestNextPosConcurrent(t *testing.T) {
	db := openTestDB(t)
	ctx := context.Background()
	const writers, each = 8, 25
	var mu sync.Mutex
	var order []StreamPos
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				err := db.Write(ctx, func(tx *Tx) error {
					pos, err := tx.NextPos(ctx)
					if err != nil {
						return err
					}
					tx.OnCommit(func() { mu.Lock(); order = append(order, pos); mu.Unlock() })
					return nil
				})
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if len(order) != writers*each {
		t.Fatalf("%d commits, want %d", len(order), writers*each)
	}
	for i, p := range order {
		if p != StreamPos(i+1) {
			t.Fatalf("commit %d had position %d: positions must commit in order", i, p)
		}
	}
	cur, err := db.CurrentPos(ctx)
	if err != nil || cur != writers*each {
		t.Fatalf("CurrentPos = %d, %v; want %d", cur, err, writers*each)
	}
}

// Positions survive a failed transaction and a reopen, and on SQLite,
// where they are counted in memory, a stream_position row moved behind the
// server's back fails one transaction instead of handing out a position twice.
func TestNextPosAfterRollbackReopenAndForeignWrite(t *testing.T) {
	ctx := context.Background()
	opts := Options{SQLitePath: filepath.Join(t.TempDir(), "agentspace.db")}
	if testdb.Postgres() {
		opts.PostgresURL = testdb.NewPostgres(t)
	}
	db := openTestOptions(t, opts)
	next := func(db *DB, fail bool) (StreamPos, error) {
		var pos StreamPos
		err := db.Write(ctx, func(tx *Tx) error {
			var err error
			if pos, err = tx.NextPos(ctx); err != nil {
				return err
			}
			if _, err = tx.NextPos(ctx); err != nil {
				return err
			}
			if fail {
				return errors.New("rolled back")
			}
			return nil
		})
		return pos, err
	}
	if p, err := next(db, false); err != nil || p != 1 {
		t.Fatalf("first transaction: %d, %v", p, err)
	}
	if _, err := next(db, true); err == nil {
		t.Fatal("a failing transaction committed")
	}
	if p, err := next(db, false); err != nil || p != 3 {
		t.Fatalf("after a rollback: %d, %v; want 3", p, err)
	}
	if db.Dialect() == SQLite {
		other, err := sql.Open("sqlite3", "file:"+opts.SQLitePath+"?_busy_timeout=10000")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := other.Exec(`UPDATE stream_position SET pos = 100 WHERE id = 1`); err != nil {
			t.Fatal(err)
		}
		other.Close()
		if _, err := next(db, false); err == nil || !strings.Contains(err.Error(), "stream position") {
			t.Fatalf("a transaction after a foreign write to stream_position: %v; want a stream position error", err)
		}
		if p, err := next(db, false); err != nil || p != 101 {
			t.Fatalf("after the foreign write: %d, %v; want 101", p, err)
		}
	}
	db.Close()
	db = openTestOptions(t, opts)
	want, err := db.CurrentPos(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if p, err := next(db, false); err != nil || p != want+1 {
		t.Fatalf("after reopening: %d, %v; want %d", p, err, want+1)
	}
}

func TestDuplicateKeyIsErrAlreadyExists(t *testing.T) {
	db := openTestDB(t)
	ctx := context.Background()
	u := &User{UserID: "@a:test", Localpart: "a", CreatedTS: 1}
	if err := db.Write(ctx, func(tx *Tx) error { return tx.InsertUser(ctx, u) }); err != nil {
		t.Fatal(err)
	}
	err := db.Write(ctx, func(tx *Tx) error { return tx.InsertUser(ctx, u) })
	if !errors.Is(err, ErrAlreadyExists) {
		t.Fatalf("second insert: %v, want ErrAlreadyExists", err)
	}
	// The failed transaction rolled back; the database still works.
	got, err := db.UserByID(ctx, u.UserID)
	if err != nil || got.Localpart != "a" {
		t.Fatalf("UserByID = %+v, %v", got, err)
	}
	if _, err := db.UserByID(ctx, "@nobody:test"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing user: %v, want ErrNotFound", err)
	}
}

// Booleans, NULLs and large integers round-trip on both engines.
func TestRoomRowRoundTrip(t *testing.T) {
	db := openTestDB(t)
	ctx := context.Background()
	r := Room{RoomID: "!r:test", RoomVersion: "10", Creator: "@a:test", CreatedTS: 1 << 42, Published: true}
	if err := db.Write(ctx, func(tx *Tx) error { return tx.InsertRoom(ctx, r) }); err != nil {
		t.Fatal(err)
	}
	got, err := db.RoomByID(ctx, r.RoomID)
	if err != nil || *got != r {
		t.Fatalf("RoomByID = %+v, %v; want %+v", got, err, r)
	}
	if err := db.SetRoomPublished(ctx, r.RoomID, false); err != nil {
		t.Fatal(err)
	}
	ids, err := db.PublishedRoomIDs(ctx)
	if err != nil || len(ids) != 0 {
		t.Fatalf("PublishedRoomIDs = %v, %v; want none", ids, err)
	}
	if err := db.SetRoomPublished(ctx, "!missing:test", true); !errors.Is(err, ErrNotFound) {
		t.Fatalf("SetRoomPublished on a missing room: %v, want ErrNotFound", err)
	}
}

// A body holding U+0000 (which PostgreSQL text cannot store) is stored
// without it on both engines, and still found by search.
func TestEventBodyWithNUL(t *testing.T) {
	db := openTestDB(t)
	ctx := context.Background()
	body := "hello\x00world"
	var id string
	if err := db.Write(ctx, func(tx *Tx) error {
		pos, err := tx.NextPos(ctx)
		if err != nil {
			return err
		}
		id = "$nul"
		return tx.InsertEvent(ctx, &Event{Pos: pos, EventID: id, RoomID: "!r:test", Type: "m.room.message", Sender: "@a:test",
			Body: &body, PDUJSON: []byte(`{"content":{"body":"hello\u0000world"}}`), Unsigned: []byte(`{}`)})
	}); err != nil {
		t.Fatalf("InsertEvent: %v", err)
	}
	e, err := db.EventByID(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if e.Body == nil || *e.Body != "helloworld" || string(e.PDUJSON) != `{"content":{"body":"hello\u0000world"}}` {
		t.Fatalf("stored body %q, pdu %s", derefString(e.Body), e.PDUJSON)
	}
	hits, err := db.SearchEvents(ctx, SearchQuery{Term: "helloworld", Rooms: map[string]StreamPos{"!r:test": 0}, OrderByRecent: true, Limit: 5})
	if err != nil || len(hits) != 1 {
		t.Fatalf("search: %d hits, %v", len(hits), err)
	}
}

func derefString(s *string) string {
	if s == nil {
		return "<nil>"
	}
	return *s
}
