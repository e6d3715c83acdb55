package storage

import (
	"context"
	"fmt"
	"testing"
)

// Storage tests of the admin queries (admin.go, admin_rooms.go,
// admin_regtokens.go), on both engines. The HTTP behaviour is tested in
// package adminapi; these make sure every SQL variant runs on each engine.

func adminTestUsers(t *testing.T, db *DB) {
	t.Helper()
	ctx := context.Background()
	bot, support := "bot", "support"
	name := "Zed Zulu"
	err := db.Write(ctx, func(tx *Tx) error {
		for i, u := range []*User{
			{UserID: "@alice:x", Localpart: "alice", CreatedTS: 3},
			{UserID: "@bob:x", Localpart: "bob", CreatedTS: 1, IsAdmin: true},
			{UserID: "@robot:x", Localpart: "robot", CreatedTS: 2, UserType: &bot},
			{UserID: "@help:x", Localpart: "help", CreatedTS: 4, UserType: &support, DisplayName: &name},
			{UserID: "@gone:x", Localpart: "gone", CreatedTS: 5, Deactivated: true},
			{UserID: "@123:x", Localpart: "123", CreatedTS: 6, IsGuest: true},
		} {
			if err := tx.InsertUser(ctx, u); err != nil {
				return err
			}
			if err := tx.UpsertDevice(ctx, &Device{UserID: u.UserID, DeviceID: "D", CreatedTS: 1, LastSeenTS: int64(10 + i)}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestListUsersEveryOrder(t *testing.T) {
	db := openTestDB(t)
	adminTestUsers(t, db)
	ctx := context.Background()
	for order := range UserOrderColumns {
		for _, back := range []bool{false, true} {
			users, total, err := db.ListUsers(ctx, UserListQuery{Limit: 10, OrderBy: order, Backwards: back, AdminLocalparts: []string{"alice"}})
			if err != nil {
				t.Fatalf("order_by %s backwards %v: %v", order, back, err)
			}
			if total != 6 || len(users) != 6 {
				t.Fatalf("order_by %s: %d of %d", order, len(users), total)
			}
		}
	}
	f := false
	tr := true
	for _, c := range []struct {
		q    UserListQuery
		want []string
	}{
		{UserListQuery{OrderBy: "creation_ts"}, []string{"@bob:x", "@robot:x", "@alice:x", "@help:x", "@gone:x", "@123:x"}},
		{UserListQuery{OrderBy: "last_seen_ts", Backwards: true}, []string{"@123:x", "@gone:x", "@help:x", "@robot:x", "@bob:x", "@alice:x"}},
		{UserListQuery{OrderBy: "displayname"}, []string{"@help:x", "@123:x", "@alice:x", "@bob:x", "@gone:x", "@robot:x"}},
		{UserListQuery{Deactivated: &f, ExcludeGuests: true}, []string{"@alice:x", "@bob:x", "@help:x", "@robot:x"}},
		{UserListQuery{Admins: &tr, AdminLocalparts: []string{"alice"}}, []string{"@alice:x", "@bob:x"}},
		{UserListQuery{Admins: &f, AdminLocalparts: []string{"alice"}, Deactivated: &f}, []string{"@123:x", "@help:x", "@robot:x"}},
		{UserListQuery{NotUserTypes: []string{"bot", ""}}, []string{"@help:x"}},
		{UserListQuery{UserTypes: []string{"bot", ""}, Deactivated: &f, ExcludeGuests: true}, []string{"@alice:x", "@bob:x", "@robot:x"}},
		{UserListQuery{Name: "ZULU"}, []string{"@help:x"}},
		{UserListQuery{Name: "o", From: 1, Limit: 2}, []string{"@gone:x", "@robot:x"}},
		{UserListQuery{UserID: "%"}, nil}, // LIKE metacharacters are literal
	} {
		if c.q.Limit == 0 {
			c.q.Limit = 100
		}
		users, _, err := db.ListUsers(ctx, c.q)
		if err != nil {
			t.Fatalf("%+v: %v", c.q, err)
		}
		var got []string
		for _, u := range users {
			got = append(got, u.UserID)
		}
		if fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("%+v:\n got %v\nwant %v", c.q, got, c.want)
		}
	}
	u, err := db.AdminUserByID(ctx, "@help:x")
	if err != nil || u.LastSeenTS == nil || *u.LastSeenTS != 13 || u.Erased {
		t.Fatalf("AdminUserByID: %+v %v", u, err)
	}
	if err := db.Write(ctx, func(tx *Tx) error { return tx.SetErased(ctx, "@help:x", true) }); err != nil {
		t.Fatal(err)
	}
	if u, _ := db.AdminUserByID(ctx, "@help:x"); !u.Erased {
		t.Error("erased flag not stored")
	}
}

// adminTestRoom stores a room with a few state events and messages
// (rows only: the room engine is not involved).
func adminTestRoom(t *testing.T, db *DB, roomID, name string, messages int) {
	t.Helper()
	ctx := context.Background()
	err := db.Write(ctx, func(tx *Tx) error {
		if err := tx.InsertRoom(ctx, Room{RoomID: roomID, RoomVersion: "10", Creator: "@alice:x", CreatedTS: 1}); err != nil {
			return err
		}
		add := func(typ string, stateKey *string, content string, membership *string, body *string) error {
			pos, err := tx.NextPos(ctx)
			if err != nil {
				return err
			}
			return tx.InsertEvent(ctx, &Event{Pos: pos, EventID: fmt.Sprintf("$%s%d", roomID[1:3], pos), RoomID: roomID, Type: typ,
				StateKey: stateKey, Sender: "@alice:x", OriginTS: int64(pos), Depth: int64(pos), Membership: membership, Body: body,
				PDUJSON: []byte(`{"content":` + content + `}`), Unsigned: []byte("{}")})
		}
		empty, alice, join := "", "@alice:x", "join"
		if err := add("m.room.create", &empty, `{"room_version":"10","m.federate":false}`, nil, nil); err != nil {
			return err
		}
		if err := add("m.room.member", &alice, `{"membership":"join"}`, &join, nil); err != nil {
			return err
		}
		if name != "" {
			if err := add("m.room.name", &empty, `{"name":"`+name+`"}`, nil, nil); err != nil {
				return err
			}
		}
		for i := range messages {
			body := fmt.Sprintf("message %d of %s", i, roomID)
			if err := add("m.room.message", nil, `{"body":"`+body+`"}`, nil, &body); err != nil {
				return err
			}
		}
		return tx.InsertAlias(ctx, "#"+roomID[1:4]+":x", roomID, "@alice:x")
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestListRoomsEveryOrder(t *testing.T) {
	db := openTestDB(t)
	ctx := context.Background()
	adminTestRoom(t, db, "!aaa:x", "beta", 1)
	adminTestRoom(t, db, "!bbb:x", "Alpha", 2)
	adminTestRoom(t, db, "!ccc:x", "", 0)
	for order := range RoomOrderColumns {
		for _, back := range []bool{false, true} {
			rooms, total, err := db.ListRooms(ctx, RoomListQuery{Limit: 10, OrderBy: order, Backwards: back})
			if err != nil || total != 3 || len(rooms) != 3 {
				t.Fatalf("order_by %s: %d of %d, %v", order, len(rooms), total, err)
			}
		}
	}
	rooms, _, err := db.ListRooms(ctx, RoomListQuery{Limit: 10, OrderBy: "name"})
	if err != nil {
		t.Fatal(err)
	}
	if got := []string{rooms[0].RoomID, rooms[1].RoomID, rooms[2].RoomID}; fmt.Sprint(got) != "[!bbb:x !aaa:x !ccc:x]" {
		t.Errorf("by name (case-insensitive, nameless last): %v", got)
	}
	r := rooms[0]
	if r.Name == nil || *r.Name != "Alpha" || r.JoinedMembers != 1 || r.StateEvents != 3 || r.Federatable() || r.Version != "10" {
		t.Errorf("room: %+v", r)
	}
	rooms, total, err := db.ListRooms(ctx, RoomListQuery{Limit: 10, SearchTerm: "ALP"})
	if err != nil || total != 1 || rooms[0].RoomID != "!bbb:x" {
		t.Errorf("search: %v %d %v", rooms, total, err)
	}
	if _, total, _ := db.ListRooms(ctx, RoomListQuery{Limit: 10, SearchTerm: "ccc"}); total != 1 {
		t.Errorf("search by room id and alias: %d", total)
	}
}

func TestPurgeRoomAndHistoryRows(t *testing.T) {
	db := openTestDB(t)
	ctx := context.Background()
	adminTestRoom(t, db, "!doomed:x", "doomed", 5)
	adminTestRoom(t, db, "!kept:x", "kept", 3)
	count := func(q string, args ...any) int {
		t.Helper()
		var n int
		if err := db.QueryRow(ctx, q, args...).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	search := func(term string) int {
		t.Helper()
		n, err := db.CountSearch(ctx, SearchQuery{Term: term, Rooms: map[string]StreamPos{"!doomed:x": 0, "!kept:x": 0}})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if search("doomed") != 5 {
		t.Fatalf("search before purge: %d", search("doomed"))
	}
	// History: non-state events before the 4th message go, state stays.
	var cutoff StreamPos
	if err := db.QueryRow(ctx, `SELECT pos FROM events WHERE room_id = $1 AND type = 'm.room.message' ORDER BY pos LIMIT 1 OFFSET 3`, "!doomed:x").Scan(&cutoff); err != nil {
		t.Fatal(err)
	}
	var n int64
	err := db.Write(ctx, func(tx *Tx) error {
		var err error
		n, err = tx.PurgeHistory(ctx, "!doomed:x", cutoff)
		return err
	})
	if err != nil || n != 3 {
		t.Fatalf("PurgeHistory: %d %v", n, err)
	}
	if got := count(`SELECT COUNT(*) FROM events WHERE room_id = $1`, "!doomed:x"); got != 3+2 {
		t.Errorf("events after history purge: %d", got)
	}
	if search("doomed") != 2 {
		t.Errorf("search after history purge: %d", search("doomed"))
	}
	// The whole room.
	err = db.Write(ctx, func(tx *Tx) error {
		var err error
		n, err = tx.PurgeRoom(ctx, "!doomed:x")
		return err
	})
	if err != nil || n != 5 {
		t.Fatalf("PurgeRoom: %d %v", n, err)
	}
	for _, table := range []string{"events", "room_state", "memberships", "room_aliases", "rooms"} {
		if got := count(`SELECT COUNT(*) FROM `+table+` WHERE room_id = $1`, "!doomed:x"); got != 0 {
			t.Errorf("%d rows left in %s", got, table)
		}
		if got := count(`SELECT COUNT(*) FROM `+table+` WHERE room_id = $1`, "!kept:x"); got == 0 {
			t.Errorf("the other room lost its rows in %s", table)
		}
	}
	if search("doomed") != 0 || search("kept") != 3 {
		t.Errorf("search after purge: %d, %d", search("doomed"), search("kept"))
	}
	if db.Dialect() == SQLite {
		if got := count(`SELECT COUNT(*) FROM events_fts`); got != 3 {
			t.Errorf("%d search index rows, want the other room's 3", got)
		}
	}

	// Blocking outlives the room.
	if err := db.BlockRoom(ctx, "!doomed:x", "@admin:x"); err != nil {
		t.Fatal(err)
	}
	if err := db.BlockRoom(ctx, "!doomed:x", "@other:x"); err != nil {
		t.Fatal(err)
	}
	if by, err := db.RoomBlockedBy(ctx, "!doomed:x"); err != nil || by != "@admin:x" {
		t.Errorf("blocked by %q, %v (the first blocker stays)", by, err)
	}
	if err := db.UnblockRoom(ctx, "!doomed:x"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.RoomBlockedBy(ctx, "!doomed:x"); err != ErrNotFound {
		t.Errorf("after unblock: %v", err)
	}
}

func TestRegistrationTokenReservations(t *testing.T) {
	db := openTestDB(t)
	ctx := context.Background()
	two, past := int64(2), int64(500)
	if err := db.InsertRegistrationToken(ctx, RegistrationToken{Token: "two", UsesAllowed: &two}); err != nil {
		t.Fatal(err)
	}
	if err := db.InsertRegistrationToken(ctx, RegistrationToken{Token: "two"}); err == nil {
		t.Fatal("duplicate token accepted")
	}
	if err := db.InsertRegistrationToken(ctx, RegistrationToken{Token: "old", ExpiryTime: &past}); err != nil {
		t.Fatal(err)
	}
	const now = 1000
	reserve := func(session, token string, at, expires int64) bool {
		t.Helper()
		ok, err := db.ReserveRegistrationToken(ctx, session, token, at, expires)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	pending := func(at int64) int64 {
		t.Helper()
		tok, err := db.RegistrationTokenByName(ctx, "two", at)
		if err != nil {
			t.Fatal(err)
		}
		return tok.Pending
	}
	if reserve("s0", "old", now, now+100) || reserve("s0", "nope", now, now+100) {
		t.Fatal("expired or unknown token reserved")
	}
	if !reserve("s1", "two", now, now+100) || !reserve("s1", "two", now, now+100) || pending(now) != 1 {
		t.Fatalf("one session holds one use: pending %d", pending(now))
	}
	if !reserve("s2", "two", now, now+200) || pending(now) != 2 {
		t.Fatal("second session")
	}
	if reserve("s3", "two", now, now+100) {
		t.Fatal("third reservation of a two-use token")
	}
	// s1's hold expires: its use is free again.
	if pending(now+150) != 1 || !reserve("s3", "two", now+150, now+300) {
		t.Fatal("expired hold not released")
	}
	if err := db.CompleteRegistrationToken(ctx, "s3"); err != nil {
		t.Fatal(err)
	}
	if err := db.CompleteRegistrationToken(ctx, "no-such-session"); err != nil {
		t.Fatal(err)
	}
	tok, err := db.RegistrationTokenByName(ctx, "two", now+150)
	if err != nil || tok.Completed != 1 || tok.Pending != 1 || tok.Valid(now+150) {
		t.Fatalf("after completion: %+v %v", tok, err)
	}
	valid, invalid := true, false
	if ts, err := db.RegistrationTokens(ctx, &valid, now+150); err != nil || len(ts) != 0 {
		t.Errorf("valid tokens: %v %v", ts, err)
	}
	if ts, err := db.RegistrationTokens(ctx, &invalid, now+150); err != nil || len(ts) != 2 {
		t.Errorf("invalid tokens: %v %v", ts, err)
	}
	none := (*int64)(nil)
	tok, err = db.UpdateRegistrationToken(ctx, "two", RegistrationTokenUpdate{SetUsesAllowed: true, UsesAllowed: none}, now+150)
	if err != nil || tok.UsesAllowed != nil || !tok.Valid(now+150) {
		t.Errorf("unlimited: %+v %v", tok, err)
	}
	if _, err := db.UpdateRegistrationToken(ctx, "nope", RegistrationTokenUpdate{}, now); err != ErrNotFound {
		t.Errorf("update unknown: %v", err)
	}
	if has, err := db.HasRegistrationTokens(ctx); err != nil || !has {
		t.Errorf("HasRegistrationTokens: %v %v", has, err)
	}
	for _, tk := range []string{"two", "old"} {
		if err := db.DeleteRegistrationToken(ctx, tk); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.DeleteRegistrationToken(ctx, "two"); err != ErrNotFound {
		t.Errorf("delete twice: %v", err)
	}
	if has, _ := db.HasRegistrationTokens(ctx); has {
		t.Error("tokens left")
	}
}
