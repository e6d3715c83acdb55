package clientapi

import (
	"net/http"
	"net/url"
	"testing"
)

func TestRoomStateEndpoints(t *testing.T) {
	ts := rmNewServer(t)
	alice, aliceTok := ts.createUser("alice")
	bob, bobTok := ts.createUser("bob")
	_, carolTok := ts.createUser("carol")
	roomID := rmCreate(t, ts, aliceTok, map[string]any{"preset": "public_chat", "name": "Room"})
	rmJoin(t, ts, bobTok, roomID)

	// Full state.
	state := rmStateList(t, ts, aliceTok, roomID)
	types := map[string]bool{}
	for _, ev := range state {
		types[ev["type"].(string)] = true
		if ev["room_id"] != roomID || ev["event_id"] == nil || ev["sender"] == nil {
			t.Fatalf("state event lacks fields: %v", ev)
		}
	}
	for _, want := range []string{"m.room.create", "m.room.member", "m.room.power_levels", "m.room.join_rules", "m.room.name"} {
		if !types[want] {
			t.Fatalf("state lacks %s: %v", want, types)
		}
	}

	// Content and ?format=event, with and without the trailing slash.
	for _, p := range []string{"/state/m.room.name", "/state/m.room.name/"} {
		if got := ts.mustDo(http.StatusOK, "GET", rmRoomPath(roomID, p), bobTok, nil); got["name"] != "Room" || len(got) != 1 {
			t.Fatalf("GET %s = %v", p, got)
		}
	}
	ev := ts.mustDo(http.StatusOK, "GET", rmRoomPath(roomID, "/state/m.room.name/?format=event"), bobTok, nil)
	if ev["type"] != "m.room.name" || ev["state_key"] != "" || ev["sender"] != alice || ev["content"].(map[string]any)["name"] != "Room" {
		t.Fatalf("format=event = %v", ev)
	}
	ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", rmRoomPath(roomID, "/state/m.room.topic"), aliceTok, nil)
	ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", rmRoomPath(roomID, "/state/m.room.name/nokey"), aliceTok, nil)
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "GET", rmRoomPath(roomID, "/state/m.room.name?format=xml"), aliceTok, nil)

	// Power levels: bob (PL 0) cannot set the name (state_default 50).
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "PUT", rmRoomPath(roomID, "/state/m.room.name"), bobTok, map[string]any{"name": "Bob's"})
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "PUT", rmRoomPath(roomID, "/state/org.example.custom/x"), bobTok, map[string]any{"a": 1})
	// Alice can.
	put := ts.mustDo(http.StatusOK, "PUT", rmRoomPath(roomID, "/state/m.room.name"), aliceTok, map[string]any{"name": "Renamed"})
	first, _ := put["event_id"].(string)
	if first == "" {
		t.Fatalf("PUT state: %v", put)
	}
	// Setting the same content again is deduplicated.
	again := ts.mustDo(http.StatusOK, "PUT", rmRoomPath(roomID, "/state/m.room.name/"), aliceTok, map[string]any{"name": "Renamed"})
	if again["event_id"] != first {
		t.Fatalf("identical state PUT made a new event: %v vs %s", again, first)
	}
	if got := ts.mustDo(http.StatusOK, "GET", rmRoomPath(roomID, "/state/m.room.name"), bobTok, nil); got["name"] != "Renamed" {
		t.Fatalf("name after PUT = %v", got)
	}

	// State keys with slashes travel percent-encoded.
	key := "a/b c"
	path := rmRoomPath(roomID, "/state/org.example.custom/"+url.PathEscape(key))
	if got := url.PathEscape(key); got != "a%2Fb%20c" {
		t.Fatalf("escape = %s", got)
	}
	ts.mustDo(http.StatusOK, "PUT", path, aliceTok, map[string]any{"v": 1})
	ev = ts.mustDo(http.StatusOK, "GET", path+"?format=event", aliceTok, nil)
	if ev["state_key"] != key {
		t.Fatalf("state_key = %v, want %q", ev["state_key"], key)
	}
	ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", rmRoomPath(roomID, "/state/org.example.custom/a"), aliceTok, nil)

	// Membership through the state endpoint obeys the auth rules.
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "PUT", rmRoomPath(roomID, "/state/m.room.member/"+url.PathEscape(alice)), bobTok, map[string]any{"membership": "leave"})
	ts.mustDo(http.StatusOK, "PUT", rmRoomPath(roomID, "/state/m.room.member/"+url.PathEscape(bob)), bobTok, map[string]any{"membership": "join", "displayname": "B"})
	if got := ts.mustDo(http.StatusOK, "GET", rmRoomPath(roomID, "/state/m.room.member/"+url.PathEscape(bob)), aliceTok, nil); got["displayname"] != "B" {
		t.Fatalf("member after state PUT = %v", got)
	}

	// Canonical aliases must point to the room.
	ts.wantErr(http.StatusBadRequest, "M_BAD_ALIAS", "PUT", rmRoomPath(roomID, "/state/m.room.canonical_alias"), aliceTok,
		map[string]any{"alias": "#missing:" + ts.cfg.ServerName})
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "PUT", rmRoomPath(roomID, "/state/m.room.canonical_alias"), aliceTok,
		map[string]any{"alt_aliases": []string{"nope"}})
	ts.mustDo(http.StatusOK, "PUT", rmV3+"/directory/room/"+url.PathEscape("#room:"+ts.cfg.ServerName), aliceTok, map[string]any{"room_id": roomID})
	ts.mustDo(http.StatusOK, "PUT", rmRoomPath(roomID, "/state/m.room.canonical_alias"), aliceTok, map[string]any{"alias": "#room:" + ts.cfg.ServerName})

	// Bad bodies.
	ts.wantErr(http.StatusBadRequest, "M_NOT_JSON", "PUT", rmRoomPath(roomID, "/state/m.room.topic"), aliceTok, "topic")
	ts.wantErr(http.StatusBadRequest, "M_BAD_JSON", "PUT", rmRoomPath(roomID, "/state/m.room.topic"), aliceTok, "[1]")
	ts.wantErr(http.StatusUnauthorized, "M_MISSING_TOKEN", "PUT", rmRoomPath(roomID, "/state/m.room.topic"), "", map[string]any{"topic": "x"})
	ts.wantErr(http.StatusUnauthorized, "M_MISSING_TOKEN", "GET", rmRoomPath(roomID, "/state"), "", nil)

	// Outsiders and unknown rooms: 403 either way.
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "GET", rmRoomPath(roomID, "/state"), carolTok, nil)
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "GET", rmRoomPath(roomID, "/state/m.room.name"), carolTok, nil)
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "PUT", rmRoomPath(roomID, "/state/m.room.topic"), carolTok, map[string]any{"topic": "x"})
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "GET", rmRoomPath("!nope:"+ts.cfg.ServerName, "/state"), aliceTok, nil)
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "PUT", rmRoomPath("!nope:"+ts.cfg.ServerName, "/state/m.room.topic"), aliceTok, map[string]any{"topic": "x"})

	// A user who left sees the state as of their leave.
	ts.mustDo(http.StatusOK, "POST", rmRoomPath(roomID, "/leave"), bobTok, map[string]any{})
	ts.mustDo(http.StatusOK, "PUT", rmRoomPath(roomID, "/state/m.room.name"), aliceTok, map[string]any{"name": "After bob"})
	if got := ts.mustDo(http.StatusOK, "GET", rmRoomPath(roomID, "/state/m.room.name"), bobTok, nil); got["name"] != "Renamed" {
		t.Fatalf("bob sees name %v after leaving, want the name at his leave", got)
	}
	for _, ev := range rmStateList(t, ts, bobTok, roomID) {
		if ev["type"] == "m.room.name" && ev["content"].(map[string]any)["name"] != "Renamed" {
			t.Fatalf("bob's state has name %v", ev)
		}
	}
	// A world_readable room is readable by anyone.
	ts.mustDo(http.StatusOK, "PUT", rmRoomPath(roomID, "/state/m.room.history_visibility"), aliceTok, map[string]any{"history_visibility": "world_readable"})
	if got := ts.mustDo(http.StatusOK, "GET", rmRoomPath(roomID, "/state/m.room.name"), carolTok, nil); got["name"] != "After bob" {
		t.Fatalf("outsider on world_readable room: %v", got)
	}
}
