package adminapi_test

import (
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"testing"
)

// roomIDs pages through GET /v1/rooms with query q and returns the room ids
// in order, checking offset, total_rooms, next_batch and prev_batch.
func roomIDs(t *testing.T, s *server, token string, q url.Values, limit int) []string {
	t.Helper()
	var ids []string
	from := 0
	for page := 0; page < 50; page++ {
		qq := url.Values{}
		for k, v := range q {
			qq[k] = v
		}
		qq.Set("limit", strconv.Itoa(limit))
		qq.Set("from", strconv.Itoa(from))
		out := s.mustDo(http.StatusOK, "GET", v1+"/rooms?"+qq.Encode(), token, nil)
		if out["offset"] != float64(from) {
			t.Fatalf("offset %v, want %d", out["offset"], from)
		}
		prev, hasPrev := out["prev_batch"]
		if (from > 0) != hasPrev || (hasPrev && prev != float64(max(from-limit, 0))) {
			t.Fatalf("from %d: prev_batch %v", from, out["prev_batch"])
		}
		for _, r := range objs(out["rooms"]) {
			ids = append(ids, r["room_id"].(string))
		}
		total := int(out["total_rooms"].(float64))
		next, more := out["next_batch"].(float64)
		if !more {
			if len(ids) != total {
				t.Fatalf("listed %d rooms, total_rooms says %d", len(ids), total)
			}
			return ids
		}
		from = int(next)
	}
	t.Fatal("pagination does not end")
	return nil
}

func TestListAndShowRooms(t *testing.T) {
	s := newServer(t)
	adminID, token := s.admin("admin")
	alice, aliceToken := s.register("alice")
	_, bobToken := s.register("bob")
	_, carolToken := s.register("carol")

	// Three rooms of different sizes, names and settings, one of them empty.
	big := s.createRoom(aliceToken, map[string]any{"name": "Bravo lounge", "preset": "public_chat", "visibility": "public",
		"room_alias_name": "lounge", "topic": "chat here"})
	s.join(bobToken, big)
	s.join(carolToken, big)
	mid := s.createRoom(bobToken, map[string]any{"name": "alpha team", "invite": []string{s.uid("carol")}, "initial_state": []any{
		map[string]any{"type": "m.room.encryption", "state_key": "", "content": map[string]any{"algorithm": "m.megolm.v1.aes-sha2"}}}})
	s.join(carolToken, mid)
	empty := s.createRoom(carolToken, map[string]any{"name": "Charlie"})
	s.mustDo(http.StatusOK, "POST", client+"/rooms/"+esc(empty)+"/leave", carolToken, map[string]any{})
	unnamed := s.createRoom(aliceToken, nil)

	check := func(q url.Values, want ...string) {
		t.Helper()
		for _, limit := range []int{1, 2, 100} {
			if got := roomIDs(t, s, token, q, limit); !slices.Equal(got, want) {
				t.Errorf("%v limit %d:\n got %v\nwant %v", q, limit, got, want)
			}
		}
	}
	check(url.Values{}, mid, big, empty, unnamed) // alphabetically by name, nameless rooms last
	check(url.Values{"order_by": {"joined_members"}}, big, mid, unnamed, empty)
	check(url.Values{"order_by": {"size"}, "dir": {"b"}}, empty, unnamed, mid, big)
	check(url.Values{"search_term": {"BRAVO"}}, big)
	check(url.Values{"search_term": {"loun"}}, big) // alias localpart
	check(url.Values{"search_term": {unnamed}}, unnamed)
	check(url.Values{"public_rooms": {"true"}}, big)
	check(url.Values{"empty_rooms": {"true"}}, empty)
	check(url.Values{"empty_rooms": {"false"}, "order_by": {"state_events"}}, big, mid, unnamed)

	out := s.mustDo(http.StatusOK, "GET", v1+"/rooms?search_term=Bravo", token, nil)
	r := objs(out["rooms"])[0]
	want := map[string]any{"room_id": big, "name": "Bravo lounge", "canonical_alias": "#lounge:localhost", "joined_members": float64(3),
		"joined_local_members": float64(3), "version": "10", "creator": alice, "encryption": nil, "federatable": true,
		"public": true, "join_rules": "public", "guest_access": "forbidden", "history_visibility": "shared", "room_type": nil}
	for k, v := range want {
		if r[k] != v {
			t.Errorf("room %s = %v, want %v", k, r[k], v)
		}
	}
	if r["state_events"].(float64) < 8 {
		t.Errorf("state_events: %v", r["state_events"])
	}

	details := s.mustDo(http.StatusOK, "GET", v1+"/rooms/"+esc(mid), token, nil)
	if details["encryption"] != "m.megolm.v1.aes-sha2" || details["name"] != "alpha team" || details["topic"] != nil ||
		details["joined_local_devices"] != float64(2) || details["forgotten"] != false || details["public"] != false {
		t.Errorf("details: %v", details)
	}
	if details := s.mustDo(http.StatusOK, "GET", v1+"/rooms/"+esc(big), token, nil); details["topic"] != "chat here" {
		t.Errorf("topic: %v", details)
	}

	members := s.mustDo(http.StatusOK, "GET", v1+"/rooms/"+esc(big)+"/members", token, nil)
	if got := strs(members["members"]); len(got) != 3 || members["total"] != float64(3) || !slices.Contains(got, alice) {
		t.Errorf("members: %v", members)
	}
	state := objs(s.mustDo(http.StatusOK, "GET", v1+"/rooms/"+esc(big)+"/state", token, nil)["state"])
	if len(state) != int(r["state_events"].(float64)) {
		t.Errorf("%d state events, room says %v", len(state), r["state_events"])
	}
	names := objs(s.mustDo(http.StatusOK, "GET", v1+"/rooms/"+esc(big)+"/state?type=m.room.member", token, nil)["state"])
	if len(names) != 3 || names[0]["type"] != "m.room.member" || names[0]["event_id"] == nil || names[0]["state_key"] == nil {
		t.Errorf("member state: %v", names)
	}

	// The admin reads messages of a room they are not in, both ways, in pages.
	var sent []string
	for i := range 5 {
		sent = append(sent, s.send(aliceToken, big, "msg "+strconv.Itoa(i)))
	}
	filter := url.QueryEscape(`{"types":["m.room.message"]}`)
	var got []string
	from := ""
	for page := 0; page < 10; page++ {
		out := s.mustDo(http.StatusOK, "GET", v1+"/rooms/"+esc(big)+"/messages?dir=b&limit=2&filter="+filter+from, token, nil)
		for _, e := range objs(out["chunk"]) {
			got = append(got, e["event_id"].(string))
		}
		end, ok := out["end"].(string)
		if !ok {
			break
		}
		from = "&from=" + end
	}
	slices.Reverse(got)
	if !slices.Equal(got, sent) {
		t.Errorf("messages backwards:\n got %v\nwant %v", got, sent)
	}
	fwd := s.mustDo(http.StatusOK, "GET", v1+"/rooms/"+esc(big)+"/messages?limit=100", token, nil)
	chunk := objs(fwd["chunk"])
	if chunk[0]["type"] != "m.room.create" || chunk[len(chunk)-1]["event_id"] != sent[4] || fwd["end"] != nil {
		t.Errorf("messages forwards from the start: %d events, end %v", len(chunk), fwd["end"])
	}

	// Refusals.
	s.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", v1+"/rooms/"+esc("!nope:localhost"), token, nil)
	s.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", v1+"/rooms/"+esc("!nope:localhost")+"/members", token, nil)
	s.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", v1+"/rooms/"+esc("!nope:localhost")+"/state", token, nil)
	s.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", v1+"/rooms/"+esc("!nope:localhost")+"/messages", token, nil)
	s.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "GET", v1+"/rooms/"+esc(big)+"/messages?from=garbage", token, nil)
	s.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "GET", v1+"/rooms/"+esc(big)+"/messages?filter=%5B", token, nil)
	for _, q := range []string{"search_term=", "order_by=size_desc", "limit=-2", "from=x", "dir=up", "public_rooms=yes"} {
		s.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "GET", v1+"/rooms?"+q, token, nil)
	}
	_ = adminID
}

func TestBlockRoom(t *testing.T) {
	s := newServer(t)
	adminID, token := s.admin("admin")
	_, aliceToken := s.register("alice")
	bob, bobToken := s.register("bob")
	room := s.createRoom(aliceToken, map[string]any{"preset": "public_chat"})

	if got := s.mustDo(http.StatusOK, "GET", v1+"/rooms/"+esc(room)+"/block", token, nil); len(got) != 1 || got["block"] != false {
		t.Fatalf("block status: %v", got)
	}
	if got := s.mustDo(http.StatusOK, "PUT", v1+"/rooms/"+esc(room)+"/block", token, map[string]any{"block": true}); got["block"] != true {
		t.Fatalf("block: %v", got)
	}
	if got := s.mustDo(http.StatusOK, "GET", v1+"/rooms/"+esc(room)+"/block", token, nil); got["block"] != true || got["user_id"] != adminID {
		t.Fatalf("block status: %v", got)
	}
	s.wantErr(http.StatusForbidden, "M_FORBIDDEN", "POST", client+"/join/"+esc(room), bobToken, map[string]any{})
	s.wantErr(http.StatusForbidden, "M_FORBIDDEN", "POST", client+"/rooms/"+esc(room)+"/invite", aliceToken, map[string]any{"user_id": bob})
	s.wantErr(http.StatusForbidden, "M_FORBIDDEN", "POST", v1+"/join/"+esc(room), token, map[string]any{"user_id": bob})
	s.send(aliceToken, room, "members already in may still talk") // Synapse blocks joins, not the room's members
	s.mustDo(http.StatusOK, "PUT", v1+"/rooms/"+esc(room)+"/block", token, map[string]any{"block": false})
	s.join(bobToken, room)

	// Rooms unknown here can be blocked ahead of time.
	s.mustDo(http.StatusOK, "PUT", v1+"/rooms/"+esc("!future:elsewhere.org")+"/block", token, map[string]any{"block": true})
	if got := s.mustDo(http.StatusOK, "GET", v1+"/rooms/"+esc("!future:elsewhere.org")+"/block", token, nil); got["block"] != true {
		t.Errorf("pre-emptive block: %v", got)
	}
	s.wantErr(http.StatusBadRequest, "M_UNKNOWN", "GET", v1+"/rooms/notaroom/block", token, nil)
	s.wantErr(http.StatusBadRequest, "M_MISSING_PARAM", "PUT", v1+"/rooms/"+esc(room)+"/block", token, map[string]any{})
	s.wantErr(http.StatusBadRequest, "M_BAD_JSON", "PUT", v1+"/rooms/"+esc(room)+"/block", token, map[string]any{"block": "yes"})
	s.wantErr(http.StatusBadRequest, "M_NOT_JSON", "PUT", v1+"/rooms/"+esc(room)+"/block", token, "")
}

func TestForceJoinAndMakeRoomAdmin(t *testing.T) {
	s := newServer(t)
	_, token := s.admin("admin")
	alice, aliceToken := s.register("alice")
	agent, agentToken := s.register("agent")
	_, bobToken := s.register("bob")

	// A private room the admin is not in: alice (its only member with
	// power) is the one who invites the agent.
	private := s.createRoom(aliceToken, map[string]any{"name": "private", "room_alias_name": "hideout"})
	out := s.mustDo(http.StatusOK, "POST", v1+"/join/"+esc("#hideout:localhost"), token, map[string]any{"user_id": agent})
	if out["room_id"] != private {
		t.Fatalf("join by alias: %v", out)
	}
	member := s.mustDo(http.StatusOK, "GET", client+"/rooms/"+esc(private)+"/state/m.room.member/"+esc(agent), aliceToken, nil)
	if member["membership"] != "join" || member["displayname"] != "agent" {
		t.Errorf("agent membership: %v", member)
	}
	s.send(agentToken, private, "hello from the agent")
	s.mustDo(http.StatusOK, "POST", v1+"/join/"+esc(private), token, map[string]any{"user_id": agent}) // already in: fine

	// A public room: joined directly.
	public := s.createRoom(bobToken, map[string]any{"preset": "public_chat"})
	s.mustDo(http.StatusOK, "POST", v1+"/join/"+esc(public), token, map[string]any{"user_id": agent})

	// make_room_admin: the agent gets alice's power level.
	s.mustDo(http.StatusOK, "POST", v1+"/rooms/"+esc(private)+"/make_room_admin", token, map[string]any{"user_id": agent})
	pl := s.mustDo(http.StatusOK, "GET", client+"/rooms/"+esc(private)+"/state/m.room.power_levels/", aliceToken, nil)
	users := pl["users"].(map[string]any)
	if users[agent] != float64(100) || users[alice] != float64(100) {
		t.Errorf("power levels: %v", users)
	}
	// With no body the caller is made admin, and invited (the room is private).
	s.mustDo(http.StatusOK, "POST", v1+"/rooms/"+esc("#hideout:localhost")+"/make_room_admin", token, nil)
	adminMember := s.mustDo(http.StatusOK, "GET", client+"/rooms/"+esc(private)+"/state/m.room.member/"+esc(s.uid("admin")), aliceToken, nil)
	if adminMember["membership"] != "invite" {
		t.Errorf("admin not invited: %v", adminMember)
	}

	// Refusals.
	nowhere := "!nowhere:localhost"
	s.wantErr(http.StatusNotFound, "M_NOT_FOUND", "POST", v1+"/join/"+esc(nowhere), token, map[string]any{"user_id": agent})
	s.wantErr(http.StatusNotFound, "M_NOT_FOUND", "POST", v1+"/join/"+esc("#nothing:localhost"), token, map[string]any{"user_id": agent})
	s.wantErr(http.StatusNotFound, "M_NOT_FOUND", "POST", v1+"/join/"+esc(private), token, map[string]any{"user_id": s.uid("ghost")})
	s.wantErr(http.StatusBadRequest, "M_UNKNOWN", "POST", v1+"/join/"+esc(private), token, map[string]any{"user_id": "@x:elsewhere.org"})
	s.wantErr(http.StatusBadRequest, "M_MISSING_PARAM", "POST", v1+"/join/"+esc(private), token, map[string]any{})
	s.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "POST", v1+"/join/"+esc(private), token, map[string]any{"user_id": 5})
	s.wantErr(http.StatusBadRequest, "M_NOT_JSON", "POST", v1+"/join/"+esc(private), token, "nope")
	s.wantErr(http.StatusNotFound, "M_NOT_FOUND", "POST", v1+"/rooms/"+esc(nowhere)+"/make_room_admin", token, map[string]any{})
	s.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "POST", v1+"/rooms/"+esc(private)+"/make_room_admin", token, map[string]any{"user_id": "bob"})
	// A room whose only powerful member has left: nobody can grant power.
	lonely := s.createRoom(bobToken, nil)
	s.mustDo(http.StatusOK, "POST", client+"/rooms/"+esc(lonely)+"/leave", bobToken, map[string]any{})
	s.wantErr(http.StatusBadRequest, "M_UNKNOWN", "POST", v1+"/rooms/"+esc(lonely)+"/make_room_admin", token, map[string]any{"user_id": agent})
	s.wantErr(http.StatusForbidden, "M_FORBIDDEN", "POST", v1+"/join/"+esc(lonely), token, map[string]any{"user_id": agent})
}
