package clientapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"testing"

	"github.com/agentspace/agentspace/rooms"
	"github.com/agentspace/agentspace/storage"
)

// ephRoom creates a public room owned by creator and joins the others to it.
func ephRoom(t *testing.T, ts *testServer, creator string, joiners ...string) string {
	t.Helper()
	ctx := context.Background()
	roomID, err := ts.Rooms().CreateRoom(ctx, rooms.CreateRoomRequest{Creator: creator, Preset: rooms.PresetPublicChat})
	if err != nil {
		t.Fatalf("CreateRoom: %v", err)
	}
	for _, u := range joiners {
		if _, err := ts.Rooms().ChangeMembership(ctx, roomID, rooms.MembershipRequest{Sender: u, Target: u, Membership: "join"}); err != nil {
			t.Fatalf("join %s: %v", u, err)
		}
	}
	return roomID
}

// ephSend sends a text message and returns its event ID.
func ephSend(t *testing.T, ts *testServer, roomID, sender, body string) string {
	t.Helper()
	content, _ := json.Marshal(map[string]string{"msgtype": "m.text", "body": body})
	ev, err := ts.Rooms().Send(context.Background(), roomID, rooms.EventRequest{Sender: sender, Type: "m.room.message", Content: content})
	if err != nil {
		t.Fatalf("send: %v", err)
	}
	return ev.EventID
}

// ephAdvanced fails unless the notifier moved past before.
func ephAdvanced(t *testing.T, ts *testServer, before storage.StreamPos) {
	t.Helper()
	if after := ts.Rooms().Notifier().Latest(); after <= before {
		t.Fatalf("notifier did not advance: %d -> %d", before, after)
	}
}

func ephEsc(s string) string { return url.PathEscape(s) }

func TestTyping(t *testing.T) {
	ts := newTestServer(t)
	alice, aliceTok := ts.createUser("alice")
	bob, bobTok := ts.createUser("bob")
	roomID := ephRoom(t, ts, alice)
	path := "/_matrix/client/v3/rooms/" + ephEsc(roomID) + "/typing/" + ephEsc(alice)

	before := ts.Rooms().Notifier().Latest()
	ts.mustDo(http.StatusOK, "PUT", path, aliceTok, map[string]any{"typing": true, "timeout": 30000})
	ephAdvanced(t, ts, before)
	if users, changed := ts.Rooms().Typing().Since(roomID, before); !changed || len(users) != 1 || users[0] != alice {
		t.Fatalf("typing users: %v %v", users, changed)
	}
	before = ts.Rooms().Notifier().Latest()
	ts.mustDo(http.StatusOK, "PUT", path, aliceTok, map[string]any{"typing": false})
	if users, changed := ts.Rooms().Typing().Since(roomID, before); !changed || len(users) != 0 {
		t.Fatalf("typing users after stop: %v %v", users, changed)
	}

	ts.wantErr(http.StatusUnauthorized, "M_MISSING_TOKEN", "PUT", path, "", map[string]any{"typing": true})
	// Someone else's typing state.
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "PUT", path, bobTok, map[string]any{"typing": true})
	// Not in the room, and an unknown room.
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "PUT", "/_matrix/client/v3/rooms/"+ephEsc(roomID)+"/typing/"+ephEsc(bob), bobTok, map[string]any{"typing": true})
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "PUT", "/_matrix/client/v3/rooms/"+ephEsc("!nope:localhost")+"/typing/"+ephEsc(bob), bobTok, map[string]any{"typing": true})
	// Bad bodies.
	ts.wantErr(http.StatusBadRequest, "M_BAD_JSON", "PUT", path, aliceTok, map[string]any{"timeout": 1000})
	ts.wantErr(http.StatusBadRequest, "M_BAD_JSON", "PUT", path, aliceTok, map[string]any{"typing": "yes"})
	ts.wantErr(http.StatusBadRequest, "M_NOT_JSON", "PUT", path, aliceTok, "{not json")
}

func TestReceipts(t *testing.T) {
	ts := newTestServer(t)
	ctx := context.Background()
	alice, _ := ts.createUser("alice")
	bob, bobTok := ts.createUser("bob")
	_, carolTok := ts.createUser("carol")
	roomID := ephRoom(t, ts, alice, bob)
	otherRoom := ephRoom(t, ts, alice)
	ev1 := ephSend(t, ts, roomID, alice, "one")
	ev2 := ephSend(t, ts, roomID, alice, "two")
	ev3 := ephSend(t, ts, roomID, alice, "three")
	foreign := ephSend(t, ts, otherRoom, alice, "elsewhere")
	receipt := func(typ, eventID string) string {
		return "/_matrix/client/v3/rooms/" + ephEsc(roomID) + "/receipt/" + ephEsc(typ) + "/" + ephEsc(eventID)
	}

	before := ts.Rooms().Notifier().Latest()
	ts.mustDo(http.StatusOK, "POST", receipt("m.read", ev2), bobTok, map[string]any{})
	ephAdvanced(t, ts, before)
	rs, err := ts.DB().ReceiptsSince(ctx, []string{roomID}, before, ts.Rooms().Notifier().Latest())
	if err != nil || len(rs) != 1 || rs[0].UserID != bob || rs[0].EventID != ev2 || rs[0].ReceiptType != "m.read" || rs[0].ThreadID != "" || rs[0].TS == 0 {
		t.Fatalf("ReceiptsSince: %+v %v", rs, err)
	}

	// Receipts only move forward: an older event changes nothing.
	before = ts.Rooms().Notifier().Latest()
	ts.mustDo(http.StatusOK, "POST", receipt("m.read", ev1), bobTok, nil)
	if after := ts.Rooms().Notifier().Latest(); after != before {
		t.Fatalf("backwards receipt took a stream position: %d -> %d", before, after)
	}
	if r, err := ts.DB().LatestReceipt(ctx, roomID, bob); err != nil || r.EventID != ev2 {
		t.Fatalf("LatestReceipt after backwards receipt: %+v %v", r, err)
	}

	// A private receipt further ahead becomes the read position.
	ts.mustDo(http.StatusOK, "POST", receipt("m.read.private", ev3), bobTok, nil)
	if r, err := ts.DB().LatestReceipt(ctx, roomID, bob); err != nil || r.EventID != ev3 || r.ReceiptType != "m.read.private" {
		t.Fatalf("LatestReceipt: %+v %v", r, err)
	}
	if _, err := ts.DB().LatestReceipt(ctx, roomID, alice); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("LatestReceipt without receipts: %v", err)
	}

	// Threaded receipts.
	ts.mustDo(http.StatusOK, "POST", receipt("m.read", ev3), bobTok, map[string]any{"thread_id": "main"})
	ts.mustDo(http.StatusOK, "POST", receipt("m.read", ev3), bobTok, map[string]any{"thread_id": ev1})
	all, err := ts.DB().ReceiptsSince(ctx, []string{roomID}, 0, ts.Rooms().Notifier().Latest())
	if err != nil {
		t.Fatal(err)
	}
	threads := map[string]string{}
	for _, r := range all {
		if r.ReceiptType == "m.read" {
			threads[r.ThreadID] = r.EventID
		}
	}
	if threads[""] != ev2 || threads["main"] != ev3 || threads[ev1] != ev3 {
		t.Fatalf("threaded receipts: %v", threads)
	}

	// m.fully_read goes to room account data.
	ts.mustDo(http.StatusOK, "POST", receipt("m.fully_read", ev2), bobTok, nil)
	content, err := ts.DB().AccountData(ctx, bob, roomID, "m.fully_read")
	if err != nil || string(content) != `{"event_id":"`+ev2+`"}` {
		t.Fatalf("fully_read: %s %v", content, err)
	}
	ts.mustDo(http.StatusOK, "POST", receipt("m.fully_read", ev1), bobTok, nil) // backwards: ignored
	if content, _ := ts.DB().AccountData(ctx, bob, roomID, "m.fully_read"); string(content) != `{"event_id":"`+ev2+`"}` {
		t.Fatalf("fully_read moved backwards: %s", content)
	}

	// Errors.
	ts.wantErr(http.StatusUnauthorized, "M_MISSING_TOKEN", "POST", receipt("m.read", ev1), "", nil)
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "POST", receipt("m.bogus", ev1), bobTok, nil)
	ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "POST", receipt("m.read", "$unknown:localhost"), bobTok, nil)
	ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "POST", receipt("m.read", foreign), bobTok, nil)
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "POST", receipt("m.read", ev1), carolTok, nil)
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "POST", receipt("m.read", ev3), bobTok, map[string]any{"thread_id": 5})
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "POST", receipt("m.read", ev3), bobTok, map[string]any{"thread_id": "nope"})
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "POST", receipt("m.fully_read", ev3), bobTok, map[string]any{"thread_id": "main"})
	ts.wantErr(http.StatusBadRequest, "M_BAD_JSON", "POST", receipt("m.read", ev3), bobTok, `[1]`)
	ts.wantErr(http.StatusBadRequest, "M_NOT_JSON", "POST", receipt("m.read", ev3), bobTok, `{`)
}

func TestReadMarkers(t *testing.T) {
	ts := newTestServer(t)
	ctx := context.Background()
	alice, aliceTok := ts.createUser("alice")
	_, bobTok := ts.createUser("bob")
	roomID := ephRoom(t, ts, alice)
	ev1 := ephSend(t, ts, roomID, alice, "one")
	ev2 := ephSend(t, ts, roomID, alice, "two")
	path := "/_matrix/client/v3/rooms/" + ephEsc(roomID) + "/read_markers"

	before := ts.Rooms().Notifier().Latest()
	ts.mustDo(http.StatusOK, "POST", path, aliceTok, map[string]any{"m.fully_read": ev1, "m.read": ev2})
	ephAdvanced(t, ts, before)
	if content, err := ts.DB().AccountData(ctx, alice, roomID, "m.fully_read"); err != nil || string(content) != `{"event_id":"`+ev1+`"}` {
		t.Fatalf("fully_read: %s %v", content, err)
	}
	if r, err := ts.DB().LatestReceipt(ctx, roomID, alice); err != nil || r.EventID != ev2 || r.ReceiptType != "m.read" {
		t.Fatalf("read receipt: %+v %v", r, err)
	}
	ts.mustDo(http.StatusOK, "POST", path, aliceTok, map[string]any{"m.read.private": ev2})

	// One unknown event: nothing changes.
	ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "POST", path, aliceTok, map[string]any{"m.fully_read": ev2, "m.read": "$nope:localhost"})
	if content, _ := ts.DB().AccountData(ctx, alice, roomID, "m.fully_read"); string(content) != `{"event_id":"`+ev1+`"}` {
		t.Fatalf("fully_read changed by a failed request: %s", content)
	}
	ts.wantErr(http.StatusBadRequest, "M_BAD_JSON", "POST", path, aliceTok, map[string]any{"m.read": 12})
	ts.wantErr(http.StatusBadRequest, "M_NOT_JSON", "POST", path, aliceTok, "nope")
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "POST", path, bobTok, map[string]any{"m.read": ev2})
	ts.wantErr(http.StatusUnauthorized, "M_MISSING_TOKEN", "POST", path, "", map[string]any{"m.read": ev2})
}

func TestPresence(t *testing.T) {
	ts := newTestServer(t)
	ctx := context.Background()
	alice, aliceTok := ts.createUser("alice")
	bob, bobTok := ts.createUser("bob")
	path := func(u string) string { return "/_matrix/client/v3/presence/" + ephEsc(u) + "/status" }

	// Never set: offline.
	if out := ts.mustDo(http.StatusOK, "GET", path(bob), aliceTok, nil); out["presence"] != "offline" {
		t.Fatalf("default presence: %v", out)
	}
	before := ts.Rooms().Notifier().Latest()
	ts.mustDo(http.StatusOK, "PUT", path(alice), aliceTok, map[string]any{"presence": "online", "status_msg": "busy coding"})
	ephAdvanced(t, ts, before)
	out := ts.mustDo(http.StatusOK, "GET", path(alice), bobTok, nil)
	if out["presence"] != "online" || out["status_msg"] != "busy coding" || out["currently_active"] != true {
		t.Fatalf("presence: %v", out)
	}
	if ago, ok := out["last_active_ago"].(float64); !ok || ago < 0 || ago > 60000 {
		t.Fatalf("last_active_ago: %v", out["last_active_ago"])
	}
	ps, err := ts.DB().PresenceSince(ctx, []string{alice, bob}, before, ts.Rooms().Notifier().Latest())
	if err != nil || len(ps) != 1 || ps[0].UserID != alice || ps[0].Presence != "online" || ps[0].StatusMsg == nil || *ps[0].StatusMsg != "busy coding" {
		t.Fatalf("PresenceSince: %+v %v", ps, err)
	}

	// setPresence (what /sync calls) does not write an unchanged value, and keeps the status message.
	latest := ts.Rooms().Notifier().Latest()
	for i := 0; i < 3; i++ {
		if err := ts.api.setPresence(ctx, alice, "online", nil); err != nil {
			t.Fatal(err)
		}
	}
	if now := ts.Rooms().Notifier().Latest(); now != latest {
		t.Fatalf("unchanged presence was written: %d -> %d", latest, now)
	}
	if err := ts.api.setPresence(ctx, alice, "unavailable", nil); err != nil {
		t.Fatal(err)
	}
	ephAdvanced(t, ts, latest)
	out = ts.mustDo(http.StatusOK, "GET", path(alice), aliceTok, nil)
	if out["presence"] != "unavailable" || out["status_msg"] != "busy coding" || out["currently_active"] != false {
		t.Fatalf("presence after setPresence: %v", out)
	}
	if err := ts.api.setPresence(ctx, alice, "away", nil); err == nil {
		t.Fatal("setPresence accepted an invalid state")
	}

	// PUT without status_msg clears it.
	ts.mustDo(http.StatusOK, "PUT", path(alice), aliceTok, map[string]any{"presence": "offline"})
	if out := ts.mustDo(http.StatusOK, "GET", path(alice), aliceTok, nil); out["presence"] != "offline" || out["status_msg"] != nil {
		t.Fatalf("presence after clearing: %v", out)
	}

	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "PUT", path(alice), bobTok, map[string]any{"presence": "online"})
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "PUT", path(alice), aliceTok, map[string]any{"presence": "away"})
	ts.wantErr(http.StatusBadRequest, "M_BAD_JSON", "PUT", path(alice), aliceTok, map[string]any{"status_msg": "x"})
	ts.wantErr(http.StatusBadRequest, "M_BAD_JSON", "PUT", path(alice), aliceTok, map[string]any{"presence": 1})
	ts.wantErr(http.StatusBadRequest, "M_NOT_JSON", "PUT", path(alice), aliceTok, "{{")
	ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", path("@ghost:localhost"), aliceTok, nil)
	ts.wantErr(http.StatusUnauthorized, "M_MISSING_TOKEN", "GET", path(alice), "", nil)
}
