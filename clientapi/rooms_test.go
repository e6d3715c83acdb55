package clientapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/agentspace/agentspace/rooms"
	"github.com/agentspace/agentspace/storage"
)

const rmV3 = "/_matrix/client/v3"

// rmNewServer starts a test server on this pass's engine (SQLite, or a
// fresh PostgreSQL database in the PostgreSQL pass; see testdb).
func rmNewServer(t *testing.T) *testServer {
	t.Helper()
	return newTestServer(t)
}

var rmTxn atomic.Int64

// rmCreate creates a room and returns its id.
func rmCreate(t *testing.T, ts *testServer, token string, body map[string]any) string {
	t.Helper()
	if body == nil {
		body = map[string]any{}
	}
	out := ts.mustDo(http.StatusOK, "POST", rmV3+"/createRoom", token, body)
	id, _ := out["room_id"].(string)
	if id == "" {
		t.Fatalf("createRoom: no room_id in %v", out)
	}
	return id
}

// rmSendContent sends a message event with the given content and returns its id.
func rmSendContent(t *testing.T, ts *testServer, token, roomID, eventType string, content map[string]any) string {
	t.Helper()
	path := fmt.Sprintf("%s/rooms/%s/send/%s/txn%d", rmV3, url.PathEscape(roomID), url.PathEscape(eventType), rmTxn.Add(1))
	out := ts.mustDo(http.StatusOK, "PUT", path, token, content)
	id, _ := out["event_id"].(string)
	if id == "" {
		t.Fatalf("send: no event_id in %v", out)
	}
	return id
}

// rmSend sends an m.room.message text with body.
func rmSend(t *testing.T, ts *testServer, token, roomID, body string) string {
	t.Helper()
	return rmSendContent(t, ts, token, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": body})
}

func rmJoin(t *testing.T, ts *testServer, token, roomID string) {
	t.Helper()
	ts.mustDo(http.StatusOK, "POST", rmV3+"/join/"+url.PathEscape(roomID), token, map[string]any{})
}

func rmInvite(t *testing.T, ts *testServer, token, roomID, userID string) {
	t.Helper()
	ts.mustDo(http.StatusOK, "POST", rmV3+"/rooms/"+url.PathEscape(roomID)+"/invite", token, map[string]any{"user_id": userID})
}

func rmRoomPath(roomID, rest string) string {
	return rmV3 + "/rooms/" + url.PathEscape(roomID) + rest
}

// rmPos returns an event's stream position.
func rmPos(t *testing.T, ts *testServer, eventID string) storage.StreamPos {
	t.Helper()
	e, err := ts.db.EventByID(context.Background(), eventID)
	if err != nil {
		t.Fatalf("event %s: %v", eventID, err)
	}
	return e.Pos
}

// rmSetProfile sets a user's global profile directly in the database.
func rmSetProfile(t *testing.T, ts *testServer, userID, displayName string) {
	t.Helper()
	ctx := context.Background()
	if err := ts.db.Write(ctx, func(tx *storage.Tx) error {
		return tx.SetProfile(ctx, userID, &displayName, nil)
	}); err != nil {
		t.Fatal(err)
	}
}

// rmMembership returns a user's membership from the room state endpoint.
func rmMembership(t *testing.T, ts *testServer, token, roomID, userID string) string {
	t.Helper()
	status, out := ts.do("GET", rmRoomPath(roomID, "/state/m.room.member/"+url.PathEscape(userID)), token, nil)
	if status == http.StatusNotFound {
		return ""
	}
	if status != http.StatusOK {
		t.Fatalf("membership of %s: %d %v", userID, status, out)
	}
	m, _ := out["membership"].(string)
	return m
}

// rmStateList fetches GET /rooms/{roomId}/state as a list.
func rmStateList(t *testing.T, ts *testServer, token, roomID string) []map[string]any {
	t.Helper()
	status, raw := ts.doRaw("GET", rmRoomPath(roomID, "/state"), token, nil)
	if status != http.StatusOK {
		t.Fatalf("GET state: %d %s", status, raw)
	}
	var out []map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("GET state: %v: %s", err, raw)
	}
	return out
}

func rmChunk(t *testing.T, out map[string]any, key string) []map[string]any {
	t.Helper()
	raw, ok := out[key].([]any)
	if !ok {
		if out[key] == nil {
			return nil
		}
		t.Fatalf("%s is not a list: %v", key, out)
	}
	res := make([]map[string]any, len(raw))
	for i, v := range raw {
		res[i], _ = v.(map[string]any)
	}
	return res
}

func TestCreateRoom(t *testing.T) {
	ts := rmNewServer(t)
	alice, aliceTok := ts.createUser("alice")
	bob, bobTok := ts.createUser("bob")
	rmSetProfile(t, ts, alice, "Alice A")

	out := ts.mustDo(http.StatusOK, "POST", rmV3+"/createRoom", aliceTok, map[string]any{
		"preset":          "public_chat",
		"visibility":      "public",
		"room_alias_name": "lobby",
		"name":            "The Lobby",
		"topic":           "Say hi",
		"invite":          []string{bob},
		"is_direct":       true,
		"initial_state": []map[string]any{
			{"type": "m.room.encryption", "state_key": "", "content": map[string]any{"algorithm": "m.megolm.v1.aes-sha2"}},
		},
		"power_level_content_override": map[string]any{"state_default": 60},
		"creation_content":             map[string]any{"m.federate": false},
	})
	roomID := out["room_id"].(string)
	if out["room_alias"] != "#lobby:"+ts.cfg.ServerName {
		t.Fatalf("room_alias = %v", out["room_alias"])
	}
	get := func(path string) map[string]any {
		return ts.mustDo(http.StatusOK, "GET", rmRoomPath(roomID, path), aliceTok, nil)
	}
	if got := get("/state/m.room.name")["name"]; got != "The Lobby" {
		t.Fatalf("name = %v", got)
	}
	if got := get("/state/m.room.topic/")["topic"]; got != "Say hi" {
		t.Fatalf("topic = %v", got)
	}
	if got := get("/state/m.room.join_rules")["join_rule"]; got != "public" {
		t.Fatalf("join_rule = %v", got)
	}
	if got := get("/state/m.room.encryption")["algorithm"]; got != "m.megolm.v1.aes-sha2" {
		t.Fatalf("encryption = %v", got)
	}
	if got := get("/state/m.room.power_levels")["state_default"]; got != float64(60) {
		t.Fatalf("state_default = %v", got)
	}
	if got := get("/state/m.room.create")["m.federate"]; got != false {
		t.Fatalf("m.federate = %v", got)
	}
	if got := get("/state/m.room.canonical_alias")["alias"]; got != "#lobby:"+ts.cfg.ServerName {
		t.Fatalf("canonical alias = %v", got)
	}
	me := get("/state/m.room.member/" + url.PathEscape(alice))
	if me["membership"] != "join" || me["displayname"] != "Alice A" {
		t.Fatalf("creator member event = %v", me)
	}
	inv := get("/state/m.room.member/" + url.PathEscape(bob))
	if inv["membership"] != "invite" || inv["is_direct"] != true {
		t.Fatalf("invite = %v", inv)
	}
	resolved := ts.mustDo(http.StatusOK, "GET", rmV3+"/directory/room/"+url.PathEscape("#lobby:"+ts.cfg.ServerName), "", nil)
	if resolved["room_id"] != roomID {
		t.Fatalf("alias resolves to %v", resolved)
	}
	vis := ts.mustDo(http.StatusOK, "GET", rmV3+"/directory/list/room/"+url.PathEscape(roomID), "", nil)
	if vis["visibility"] != "public" {
		t.Fatalf("visibility = %v", vis)
	}
	// The invitee can join.
	rmJoin(t, ts, bobTok, roomID)

	// A room with an explicit stable version and defaults.
	v := rmCreate(t, ts, aliceTok, map[string]any{"room_version": "11"})
	if got := ts.mustDo(http.StatusOK, "GET", rmRoomPath(v, "/state/m.room.create"), aliceTok, nil)["room_version"]; got != "11" {
		t.Fatalf("room_version = %v", got)
	}
	if got := ts.mustDo(http.StatusOK, "GET", rmRoomPath(v, "/state/m.room.join_rules"), aliceTok, nil)["join_rule"]; got != "invite" {
		t.Fatalf("private default join_rule = %v", got)
	}

	// Errors.
	ts.wantErr(http.StatusUnauthorized, "M_MISSING_TOKEN", "POST", rmV3+"/createRoom", "", map[string]any{})
	ts.wantErr(http.StatusBadRequest, "M_NOT_JSON", "POST", rmV3+"/createRoom", aliceTok, "{nope")
	ts.wantErr(http.StatusBadRequest, "M_BAD_JSON", "POST", rmV3+"/createRoom", aliceTok, map[string]any{"name": 5})
	ts.wantErr(http.StatusBadRequest, "M_BAD_JSON", "POST", rmV3+"/createRoom", aliceTok, map[string]any{"preset": "party"})
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "POST", rmV3+"/createRoom", aliceTok, map[string]any{"visibility": "secret"})
	ts.wantErr(http.StatusBadRequest, "M_ROOM_IN_USE", "POST", rmV3+"/createRoom", aliceTok, map[string]any{"room_alias_name": "lobby"})
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "POST", rmV3+"/createRoom", aliceTok, map[string]any{"room_alias_name": "a b"})
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "POST", rmV3+"/createRoom", aliceTok, map[string]any{"room_alias_name": "a:b"})
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "POST", rmV3+"/createRoom", aliceTok, map[string]any{"invite": []string{"bob"}})
	ts.wantErr(http.StatusBadRequest, "M_UNSUPPORTED_ROOM_VERSION", "POST", rmV3+"/createRoom", aliceTok, map[string]any{"room_version": "999"})
	ts.wantErr(http.StatusBadRequest, "M_BAD_JSON", "POST", rmV3+"/createRoom", aliceTok, map[string]any{"creation_content": []int{1}})
	ts.wantErr(http.StatusBadRequest, "M_BAD_JSON", "POST", rmV3+"/createRoom", aliceTok,
		map[string]any{"initial_state": []map[string]any{{"type": "m.room.topic", "content": "x"}}})
}

func TestJoinInviteLeaveForget(t *testing.T) {
	ts := rmNewServer(t)
	alice, aliceTok := ts.createUser("alice")
	bob, bobTok := ts.createUser("bob")
	_, carolTok := ts.createUser("carol")
	rmSetProfile(t, ts, bob, "Bobby")
	roomID := rmCreate(t, ts, aliceTok, map[string]any{"room_alias_name": "private"})
	alias := "#private:" + ts.cfg.ServerName

	// Invite-only: bob cannot join uninvited.
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "POST", rmV3+"/join/"+url.PathEscape(alias), bobTok, map[string]any{})
	// Only members may invite.
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "POST", rmRoomPath(roomID, "/invite"), carolTok, map[string]any{"user_id": bob})
	ts.wantErr(http.StatusBadRequest, "M_MISSING_PARAM", "POST", rmRoomPath(roomID, "/invite"), aliceTok, map[string]any{})
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "POST", rmRoomPath(roomID, "/invite"), aliceTok, map[string]any{"user_id": "not-a-user"})
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "POST", rmRoomPath(roomID, "/invite"), aliceTok, map[string]any{"medium": "email", "address": "a@b.c"})
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "POST", rmRoomPath(roomID, "/invite"), aliceTok, map[string]any{"user_id": alice})
	ts.mustDo(http.StatusOK, "POST", rmRoomPath(roomID, "/invite"), aliceTok, map[string]any{"user_id": bob, "reason": "welcome"})
	if m := rmMembership(t, ts, aliceTok, roomID, bob); m != "invite" {
		t.Fatalf("bob membership = %q", m)
	}
	// Joining through the alias, with the global profile in the member event.
	out := ts.mustDo(http.StatusOK, "POST", rmV3+"/join/"+url.PathEscape(alias), bobTok, map[string]any{})
	if out["room_id"] != roomID {
		t.Fatalf("join returned %v", out)
	}
	ev := ts.mustDo(http.StatusOK, "GET", rmRoomPath(roomID, "/state/m.room.member/"+url.PathEscape(bob)), aliceTok, nil)
	if ev["membership"] != "join" || ev["displayname"] != "Bobby" {
		t.Fatalf("bob member event = %v", ev)
	}
	joined := ts.mustDo(http.StatusOK, "GET", rmV3+"/joined_rooms", bobTok, nil)
	if rooms := joined["joined_rooms"].([]any); len(rooms) != 1 || rooms[0] != roomID {
		t.Fatalf("joined_rooms = %v", joined)
	}
	// Forgetting a joined room is refused.
	ts.wantErr(http.StatusBadRequest, "M_UNKNOWN", "POST", rmRoomPath(roomID, "/forget"), bobTok, map[string]any{})
	ts.mustDo(http.StatusOK, "POST", rmRoomPath(roomID, "/leave"), bobTok, map[string]any{"reason": "bye"})
	ev = ts.mustDo(http.StatusOK, "GET", rmRoomPath(roomID, "/state/m.room.member/"+url.PathEscape(bob)), aliceTok, nil)
	if ev["membership"] != "leave" || ev["reason"] != "bye" {
		t.Fatalf("bob member event after leave = %v", ev)
	}
	if joined := ts.mustDo(http.StatusOK, "GET", rmV3+"/joined_rooms", bobTok, nil); len(joined["joined_rooms"].([]any)) != 0 {
		t.Fatalf("joined_rooms after leave = %v", joined)
	}
	// Leaving twice is fine; leaving a room never joined is not.
	ts.mustDo(http.StatusOK, "POST", rmRoomPath(roomID, "/leave"), bobTok, map[string]any{})
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "POST", rmRoomPath(roomID, "/leave"), carolTok, map[string]any{})
	// A left user still reads the room up to their departure, until they forget it.
	if status, _ := ts.doRaw("GET", rmRoomPath(roomID, "/state"), bobTok, nil); status != http.StatusOK {
		t.Fatalf("left user reading state: %d", status)
	}
	ts.mustDo(http.StatusOK, "POST", rmRoomPath(roomID, "/forget"), bobTok, map[string]any{})
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "GET", rmRoomPath(roomID, "/state"), bobTok, nil)
	// Forgetting a room never joined is a no-op.
	ts.mustDo(http.StatusOK, "POST", rmRoomPath(roomID, "/forget"), carolTok, map[string]any{})

	// Unknown rooms and aliases.
	ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "POST", rmV3+"/join/"+url.PathEscape("#nope:"+ts.cfg.ServerName), bobTok, map[string]any{})
	ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "POST", rmV3+"/join/"+url.PathEscape("!nope:"+ts.cfg.ServerName), bobTok, map[string]any{})
	ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "POST", rmRoomPath("!nope:"+ts.cfg.ServerName, "/join"), bobTok, map[string]any{})
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "POST", rmV3+"/join/nonsense", bobTok, map[string]any{})
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "POST", rmRoomPath("!nope:"+ts.cfg.ServerName, "/invite"), aliceTok, map[string]any{"user_id": bob})
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "POST", rmRoomPath("nope", "/leave"), aliceTok, map[string]any{})
	ts.wantErr(http.StatusUnauthorized, "M_MISSING_TOKEN", "POST", rmRoomPath(roomID, "/join"), "", map[string]any{})
	ts.wantErr(http.StatusUnauthorized, "M_MISSING_TOKEN", "GET", rmV3+"/joined_rooms", "", nil)
	ts.wantErr(http.StatusBadRequest, "M_NOT_JSON", "POST", rmRoomPath(roomID, "/invite"), aliceTok, "nope")
}

func TestConcurrentJoinsAreIdempotent(t *testing.T) {
	ts := rmNewServer(t)
	_, aliceTok := ts.createUser("alice")
	bob, bobTok := ts.createUser("bob")
	roomID := rmCreate(t, ts, aliceTok, map[string]any{"preset": "public_chat"})

	var wg sync.WaitGroup
	statuses := make([]int, 10)
	for i := range statuses {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			status, _ := ts.do("POST", rmRoomPath(roomID, "/join"), bobTok, map[string]any{})
			statuses[i] = status
		}(i)
	}
	wg.Wait()
	for i, s := range statuses {
		if s != http.StatusOK {
			t.Fatalf("join %d: status %d", i, s)
		}
	}
	evs, err := ts.db.StateEventsOfType(context.Background(), roomID, "m.room.member", rooms.StrPtr(bob))
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 1 {
		t.Fatalf("bob has %d membership events, want 1", len(evs))
	}
	// A later identical join is still a no-op.
	rmJoin(t, ts, bobTok, roomID)
	if evs, _ := ts.db.StateEventsOfType(context.Background(), roomID, "m.room.member", rooms.StrPtr(bob)); len(evs) != 1 {
		t.Fatalf("bob has %d membership events after rejoin, want 1", len(evs))
	}
}

func TestKickBanUnban(t *testing.T) {
	ts := rmNewServer(t)
	alice, aliceTok := ts.createUser("alice")
	bob, bobTok := ts.createUser("bob")
	carol, carolTok := ts.createUser("carol")
	_, daveTok := ts.createUser("dave")
	roomID := rmCreate(t, ts, aliceTok, map[string]any{"preset": "public_chat"})
	rmJoin(t, ts, bobTok, roomID)
	rmJoin(t, ts, carolTok, roomID)

	// Power level 0 cannot kick or ban (kick/ban need 50).
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "POST", rmRoomPath(roomID, "/kick"), bobTok, map[string]any{"user_id": carol})
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "POST", rmRoomPath(roomID, "/ban"), bobTok, map[string]any{"user_id": carol})
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "POST", rmRoomPath(roomID, "/kick"), bobTok, map[string]any{"user_id": alice})
	ts.wantErr(http.StatusBadRequest, "M_MISSING_PARAM", "POST", rmRoomPath(roomID, "/kick"), aliceTok, map[string]any{})
	// Kicking someone who is not in the room is refused.
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "POST", rmRoomPath(roomID, "/kick"), aliceTok, map[string]any{"user_id": "@dave:" + ts.cfg.ServerName})
	// Outsiders cannot kick.
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "POST", rmRoomPath(roomID, "/kick"), daveTok, map[string]any{"user_id": bob})

	// Kick: bob leaves with the reason, and may rejoin a public room.
	ts.mustDo(http.StatusOK, "POST", rmRoomPath(roomID, "/kick"), aliceTok, map[string]any{"user_id": bob, "reason": "spam"})
	ev := ts.mustDo(http.StatusOK, "GET", rmRoomPath(roomID, "/state/m.room.member/"+url.PathEscape(bob))+"?format=event", aliceTok, nil)
	if ev["sender"] != alice || ev["content"].(map[string]any)["membership"] != "leave" || ev["content"].(map[string]any)["reason"] != "spam" {
		t.Fatalf("kick event = %v", ev)
	}
	rmJoin(t, ts, bobTok, roomID)

	// Ban: bob cannot rejoin.
	ts.mustDo(http.StatusOK, "POST", rmRoomPath(roomID, "/ban"), aliceTok, map[string]any{"user_id": bob, "reason": "again"})
	if m := rmMembership(t, ts, aliceTok, roomID, bob); m != "ban" {
		t.Fatalf("bob membership = %q", m)
	}
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "POST", rmRoomPath(roomID, "/join"), bobTok, map[string]any{})
	// Kicking a banned user does not unban them.
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "POST", rmRoomPath(roomID, "/kick"), aliceTok, map[string]any{"user_id": bob})
	// Banning users who never joined works (pre-emptive ban).
	ts.mustDo(http.StatusOK, "POST", rmRoomPath(roomID, "/ban"), aliceTok, map[string]any{"user_id": "@eve:" + ts.cfg.ServerName})

	// Unban: only banned users, only with the power to.
	ts.wantErr(http.StatusForbidden, "M_BAD_STATE", "POST", rmRoomPath(roomID, "/unban"), aliceTok, map[string]any{"user_id": carol})
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "POST", rmRoomPath(roomID, "/unban"), carolTok, map[string]any{"user_id": bob})
	ts.mustDo(http.StatusOK, "POST", rmRoomPath(roomID, "/unban"), aliceTok, map[string]any{"user_id": bob})
	if m := rmMembership(t, ts, aliceTok, roomID, bob); m != "leave" {
		t.Fatalf("bob membership after unban = %q", m)
	}
	rmJoin(t, ts, bobTok, roomID)
	if m := rmMembership(t, ts, aliceTok, roomID, bob); m != "join" {
		t.Fatalf("bob membership after rejoin = %q", m)
	}
}

func TestMembersAndJoinedMembers(t *testing.T) {
	ts := rmNewServer(t)
	alice, aliceTok := ts.createUser("alice")
	bob, bobTok := ts.createUser("bob")
	carol, carolTok := ts.createUser("carol")
	dave, daveTok := ts.createUser("dave")
	rmSetProfile(t, ts, alice, "Alice")
	roomID := rmCreate(t, ts, aliceTok, map[string]any{"preset": "public_chat"})
	beforeBob := rmSend(t, ts, aliceTok, roomID, "before bob")
	rmJoin(t, ts, bobTok, roomID)
	rmInvite(t, ts, aliceTok, roomID, dave)

	members := func(token, query string) map[string]string {
		t.Helper()
		out := ts.mustDo(http.StatusOK, "GET", rmRoomPath(roomID, "/members")+query, token, nil)
		res := map[string]string{}
		for _, ev := range rmChunk(t, out, "chunk") {
			res[ev["state_key"].(string)] = ev["content"].(map[string]any)["membership"].(string)
		}
		return res
	}
	all := members(aliceTok, "")
	if len(all) != 3 || all[alice] != "join" || all[bob] != "join" || all[dave] != "invite" {
		t.Fatalf("members = %v", all)
	}
	if j := members(aliceTok, "?membership=join"); len(j) != 2 || j[dave] != "" {
		t.Fatalf("membership=join: %v", j)
	}
	if j := members(aliceTok, "?not_membership=join"); len(j) != 1 || j[dave] != "invite" {
		t.Fatalf("not_membership=join: %v", j)
	}
	// At a token from before bob joined, only alice was there.
	at := rooms.StreamToken(rmPos(t, ts, beforeBob))
	if j := members(aliceTok, "?at="+at); len(j) != 1 || j[alice] != "join" {
		t.Fatalf("members at %s: %v", at, j)
	}
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "GET", rmRoomPath(roomID, "/members?at=bogus"), aliceTok, nil)
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "GET", rmRoomPath(roomID, "/members?membership=party"), aliceTok, nil)

	jm := ts.mustDo(http.StatusOK, "GET", rmRoomPath(roomID, "/joined_members"), aliceTok, nil)["joined"].(map[string]any)
	if len(jm) != 2 || jm[alice].(map[string]any)["display_name"] != "Alice" {
		t.Fatalf("joined_members = %v", jm)
	}
	if _, ok := jm[bob]; !ok {
		t.Fatalf("joined_members lacks bob: %v", jm)
	}

	// Outsiders (and invitees) may not read the member list.
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "GET", rmRoomPath(roomID, "/members"), carolTok, nil)
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "GET", rmRoomPath(roomID, "/joined_members"), daveTok, nil)
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "GET", rmRoomPath("!unknown:"+ts.cfg.ServerName, "/members"), aliceTok, nil)
	ts.wantErr(http.StatusUnauthorized, "M_MISSING_TOKEN", "GET", rmRoomPath(roomID, "/members"), "", nil)

	// Bob leaves; carol joins afterwards. Bob sees members as of his leave.
	ts.mustDo(http.StatusOK, "POST", rmRoomPath(roomID, "/leave"), bobTok, map[string]any{})
	rmJoin(t, ts, carolTok, roomID)
	if j := members(bobTok, ""); j[carol] != "" || j[bob] != "leave" {
		t.Fatalf("bob's view after leaving = %v", j)
	}
	if j := members(aliceTok, ""); j[carol] != "join" {
		t.Fatalf("alice's view = %v", j)
	}
	jm = ts.mustDo(http.StatusOK, "GET", rmRoomPath(roomID, "/joined_members"), bobTok, nil)["joined"].(map[string]any)
	if _, ok := jm[carol]; ok || len(jm) != 1 {
		t.Fatalf("bob's joined_members after leaving = %v", jm)
	}
}

func TestGuestJoinNeedsGuestAccess(t *testing.T) {
	ts := rmNewServer(t)
	_, aliceTok := ts.createUser("alice")
	guest, guestTok := ts.createUser("guest")
	ctx := context.Background()
	if err := ts.db.Write(ctx, func(tx *storage.Tx) error {
		_, err := tx.Exec(ctx, `UPDATE users SET is_guest = TRUE WHERE user_id = $1`, guest)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	// public_chat forbids guests; private_chat lets them join (once invited).
	public := rmCreate(t, ts, aliceTok, map[string]any{"preset": "public_chat"})
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "POST", rmRoomPath(public, "/join"), guestTok, map[string]any{})
	private := rmCreate(t, ts, aliceTok, map[string]any{"preset": "private_chat"})
	rmInvite(t, ts, aliceTok, private, guest)
	rmJoin(t, ts, guestTok, private)
	// Guests may not create rooms.
	ts.wantErr(http.StatusForbidden, "M_GUEST_ACCESS_FORBIDDEN", "POST", rmV3+"/createRoom", guestTok, map[string]any{})
}
