package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/agentspace/agentspace/internal/testdb"
)

// seedCopySource fills a SQLite database with rows of many tables: users
// with booleans and NULLs, tokens, a room with state and messages (indexed
// for search), account data, a receipt and a to-device message.
func seedCopySource(t *testing.T, db *DB, messages int) []*Event {
	t.Helper()
	ctx := context.Background()
	var events []*Event
	str := func(s string) *string { return &s }
	err := db.Write(ctx, func(tx *Tx) error {
		users := []*User{
			{UserID: "@alice:test", Localpart: "alice", PasswordHash: "$2a$04$x", CreatedTS: 1, IsAdmin: true, DisplayName: str("Alice ✓")},
			{UserID: "@bob:test", Localpart: "bob", CreatedTS: 2, IsGuest: true, Deactivated: true},
		}
		for _, u := range users {
			if err := tx.InsertUser(ctx, u); err != nil {
				return err
			}
			if err := tx.UpsertDevice(ctx, &Device{UserID: u.UserID, DeviceID: "DEV", CreatedTS: 3}); err != nil {
				return err
			}
		}
		if err := tx.InsertAccessToken(ctx, &AccessToken{TokenHash: HashToken("syt_secret"), UserID: "@alice:test", DeviceID: "DEV", CreatedTS: 4}); err != nil {
			return err
		}
		if err := tx.InsertRoom(ctx, Room{RoomID: "!room:test", RoomVersion: "10", Creator: "@alice:test", CreatedTS: 5, Published: true}); err != nil {
			return err
		}
		add := func(typ string, stateKey *string, content map[string]any) error {
			pos, err := tx.NextPos(ctx)
			if err != nil {
				return err
			}
			c, _ := json.Marshal(content)
			e := &Event{Pos: pos, EventID: fmt.Sprintf("$ev%d", pos), RoomID: "!room:test", Type: typ, StateKey: stateKey,
				Sender: "@alice:test", OriginTS: 1000 + int64(pos), Depth: int64(pos),
				PDUJSON:  []byte(fmt.Sprintf(`{"type":%q,"content":%s,"hashes":{"sha256":"h%d"}}`, typ, c, pos)),
				Unsigned: []byte(`{}`)}
			if m, ok := content["membership"].(string); ok {
				e.Membership = &m
			}
			if b, ok := content["body"].(string); ok {
				e.Body = &b
			}
			events = append(events, e)
			return tx.InsertEvent(ctx, e)
		}
		if err := add("m.room.create", str(""), map[string]any{"creator": "@alice:test"}); err != nil {
			return err
		}
		if err := add("m.room.member", str("@alice:test"), map[string]any{"membership": "join"}); err != nil {
			return err
		}
		for i := 0; i < messages; i++ {
			if err := add("m.room.message", nil, map[string]any{"msgtype": "m.text", "body": fmt.Sprintf("message number %d with 'quotes' and \\ backslash\tand tab", i)}); err != nil {
				return err
			}
		}
		if _, err := tx.SetAccountData(ctx, "@alice:test", "", "m.direct", json.RawMessage(`{"@bob:test":["!room:test"]}`)); err != nil {
			return err
		}
		pos, err := tx.NextPos(ctx)
		if err != nil {
			return err
		}
		return tx.InsertToDevice(ctx, pos, "@bob:test", "DEV", ToDeviceMessage{Sender: "@alice:test", Type: "m.test", Content: json.RawMessage(`{"x":null}`)})
	})
	if err != nil {
		t.Fatalf("seeding: %v", err)
	}
	if _, err := db.SetReceipt(ctx, Receipt{RoomID: "!room:test", UserID: "@alice:test", ReceiptType: "m.read", EventID: events[len(events)-1].EventID, TS: 9}, nil); err != nil {
		t.Fatalf("receipt: %v", err)
	}
	return events
}

// openCopyPair opens a SQLite source and an empty PostgreSQL target.
func openCopyPair(t *testing.T) (src, dst *DB) {
	t.Helper()
	if !testdb.Postgres() {
		t.Skip("copies into PostgreSQL: runs in the PostgreSQL pass")
	}
	src = openTestOptions(t, Options{SQLitePath: filepath.Join(t.TempDir(), "source.db")})
	dst = openTestOptions(t, Options{PostgresURL: testdb.NewPostgres(t)})
	return src, dst
}

func TestCopySQLiteToPostgres(t *testing.T) {
	src, dst := openCopyPair(t)
	ctx := context.Background()
	events := seedCopySource(t, src, 300)
	wantPos, _ := src.CurrentPos(ctx)

	var progressed []string
	rep, err := CopySQLiteToPostgres(ctx, src, dst, CopyOptions{SampleEvents: 50, Progress: func(table string, _ int64) {
		progressed = append(progressed, table)
	}})
	if err != nil {
		t.Fatalf("copy: %v", err)
	}
	if rep.StreamPos != wantPos {
		t.Fatalf("report stream position %d, want %d", rep.StreamPos, wantPos)
	}
	if got, _ := dst.CurrentPos(ctx); got != wantPos {
		t.Fatalf("target stream position %d, want %d", got, wantPos)
	}
	if rep.SampledEvents != 50 {
		t.Fatalf("sampled %d events, want 50", rep.SampledEvents)
	}
	counts := map[string]int64{}
	for _, tc := range rep.Tables {
		if tc.Source != tc.Target {
			t.Errorf("table %s: %d → %d", tc.Table, tc.Source, tc.Target)
		}
		counts[tc.Table] = tc.Source
	}
	for table, want := range map[string]int64{"events": 302, "users": 2, "devices": 2, "access_tokens": 1, "rooms": 1,
		"room_state": 2, "memberships": 1, "account_data": 1, "receipts": 1, "to_device": 1} {
		if counts[table] != want {
			t.Errorf("table %s: copied %d rows, want %d", table, counts[table], want)
		}
	}
	for _, skipped := range []string{"schema_version", "stream_position", "events_fts", "events_fts_content"} {
		if _, ok := counts[skipped]; ok {
			t.Errorf("table %s was copied row by row", skipped)
		}
	}
	if len(progressed) != len(rep.Tables) {
		t.Errorf("progress called for %d tables, report has %d", len(progressed), len(rep.Tables))
	}

	// The copy reads back identically through the normal queries.
	for _, want := range []*Event{events[0], events[1], events[150], events[len(events)-1]} {
		got, err := dst.EventByID(ctx, want.EventID)
		if err != nil {
			t.Fatalf("EventByID(%s) on the target: %v", want.EventID, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("event %s differs:\n got %+v\nwant %+v", want.EventID, got, want)
		}
	}
	for _, id := range []string{"@alice:test", "@bob:test"} {
		s, err1 := src.UserByID(ctx, id)
		d, err2 := dst.UserByID(ctx, id)
		if err1 != nil || err2 != nil || !reflect.DeepEqual(s, d) {
			t.Fatalf("user %s: source %+v (%v), target %+v (%v)", id, s, err1, d, err2)
		}
	}
	if r, err := dst.RoomByID(ctx, "!room:test"); err != nil || !r.Published {
		t.Fatalf("room on the target: %+v, %v", r, err)
	}
	// PostgreSQL's text search index covers the copied bodies.
	hits, err := dst.SearchEvents(ctx, SearchQuery{Term: "number 42", Rooms: map[string]StreamPos{"!room:test": 0}, OrderByRecent: true, Limit: 10})
	if err != nil {
		t.Fatalf("search on the target: %v", err)
	}
	if len(hits) == 0 || !strings.Contains(*hits[0].Event.Body, "number 42") {
		t.Fatalf("search on the target found %d hits", len(hits))
	}
	// The copy goes on where the source stopped.
	if err := dst.Write(ctx, func(tx *Tx) error {
		pos, err := tx.NextPos(ctx)
		if err == nil && pos != wantPos+1 {
			err = fmt.Errorf("next position %d, want %d", pos, wantPos+1)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}

	// A second copy into the now non-empty target is refused.
	if _, err := CopySQLiteToPostgres(ctx, src, dst, CopyOptions{}); !errors.Is(err, ErrTargetNotEmpty) {
		t.Fatalf("copy into a non-empty target: %v, want ErrTargetNotEmpty", err)
	}
}

// A row PostgreSQL cannot store fails the copy and leaves the target empty.
func TestCopyFailureLeavesTargetEmpty(t *testing.T) {
	src, dst := openCopyPair(t)
	ctx := context.Background()
	seedCopySource(t, src, 5)
	if err := src.Write(ctx, func(tx *Tx) error {
		_, err := tx.Exec(ctx, `UPDATE users SET displayname = $1 WHERE user_id = $2`, "nul\x00byte", "@bob:test")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	_, err := CopySQLiteToPostgres(ctx, src, dst, CopyOptions{})
	if err == nil || !strings.Contains(err.Error(), "users") || !strings.Contains(err.Error(), "NUL") {
		t.Fatalf("copy: %v, want an error naming the users table and the NUL byte", err)
	}
	tables, err := postgresColumns(ctx, dst.read)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkEmpty(ctx, dst, tables); err != nil {
		t.Fatalf("after a failed copy the target is not empty: %v", err)
	}
}

// Only SQLite → PostgreSQL is supported, and the source needs the target's schema.
func TestCopyRefusesWrongEngines(t *testing.T) {
	src, dst := openCopyPair(t)
	ctx := context.Background()
	if _, err := CopySQLiteToPostgres(ctx, dst, src, CopyOptions{}); err == nil {
		t.Fatal("PostgreSQL → SQLite copy did not fail")
	}
	if err := src.Write(ctx, func(tx *Tx) error {
		_, err := tx.Exec(ctx, `DELETE FROM schema_version WHERE version = (SELECT MAX(version) FROM schema_version)`)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := CopySQLiteToPostgres(ctx, src, dst, CopyOptions{}); err == nil || !strings.Contains(err.Error(), "schema versions differ") {
		t.Fatalf("copy between schema versions: %v, want a schema version error", err)
	}
}

func TestSampleEvents(t *testing.T) {
	all := make([]StreamPos, 5000)
	for i := range all {
		all[i] = StreamPos(i*2 + 1)
	}
	got := sampleEvents(all, 300)
	if len(got) != 300 {
		t.Fatalf("%d samples, want 300", len(got))
	}
	if got[0] != all[0] || got[len(got)-1] != all[len(all)-1] {
		t.Fatalf("sample must include the oldest and newest events: %d…%d", got[0], got[len(got)-1])
	}
	seen := map[StreamPos]bool{}
	for i, p := range got {
		if seen[p] || p%2 != 1 || (i > 0 && p <= got[i-1]) {
			t.Fatalf("bad sample at %d: %d", i, p)
		}
		seen[p] = true
	}
	if small := sampleEvents(all[:10], 300); len(small) != 10 {
		t.Fatalf("sample of 10 events: %d", len(small))
	}
}
