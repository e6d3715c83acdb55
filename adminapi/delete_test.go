package adminapi_test

import (
	"net/http"
	"slices"
	"testing"
	"time"
)

// waitDeleted polls a deletion's status until it is complete and returns it.
func waitDeleted(t *testing.T, s *server, token, deleteID string) map[string]any {
	t.Helper()
	var st map[string]any
	waitFor(t, "room deletion "+deleteID, func() bool {
		st = s.mustDo(http.StatusOK, "GET", v2+"/rooms/delete_status/"+deleteID, token, nil)
		if st["status"] == "failed" {
			t.Fatalf("deletion failed: %v", st)
		}
		return st["status"] == "complete"
	})
	return st
}

// roomRows counts the rows a room has in every table that holds room data.
func roomRows(s *server, roomID string) map[string]int {
	out := map[string]int{}
	for _, table := range []string{"events", "room_state", "memberships", "room_aliases", "receipts", "rooms"} {
		out[table] = s.count(`SELECT COUNT(*) FROM `+table+` WHERE room_id = $1`, roomID)
	}
	out["account_data"] = s.count(`SELECT COUNT(*) FROM account_data WHERE room_id = $1`, roomID)
	out["transactions"] = s.count(`SELECT COUNT(*) FROM transactions WHERE txn_id LIKE $1`, roomID+"%")
	return out
}

func TestDeleteRoomWithPurgeAndBlock(t *testing.T) {
	s := newServer(t)
	adminID, token := s.admin("admin")
	alice, aliceToken := s.register("alice")
	bob, bobToken := s.register("bob")
	carol, carolToken := s.register("carol")
	room := s.createRoom(aliceToken, map[string]any{"name": "doomed", "preset": "public_chat", "room_alias_name": "doomed",
		"visibility": "public", "invite": []string{carol}})
	s.join(bobToken, room)
	for _, text := range []string{"one", "two", "three"} {
		s.send(aliceToken, room, text)
	}
	ev := s.send(bobToken, room, "searchable needle")
	s.mustDo(http.StatusOK, "POST", client+"/rooms/"+esc(room)+"/receipt/m.read/"+esc(ev), aliceToken, map[string]any{})
	s.mustDo(http.StatusOK, "PUT", client+"/user/"+esc(alice)+"/rooms/"+esc(room)+"/account_data/m.tag.x", aliceToken, map[string]any{"a": 1})
	before := roomRows(s, room)
	if before["events"] < 10 || before["room_aliases"] != 1 || before["receipts"] == 0 || before["transactions"] == 0 {
		t.Fatalf("room rows before: %v", before)
	}
	since := s.mustDo(http.StatusOK, "GET", client+"/sync?timeout=0", bobToken, nil)["next_batch"].(string)
	other := s.createRoom(aliceToken, nil) // must survive
	s.send(aliceToken, other, "unrelated")
	otherEvents := s.count(`SELECT COUNT(*) FROM events WHERE room_id = $1`, other)

	out := s.mustDo(http.StatusOK, "DELETE", v2+"/rooms/"+esc(room), token, map[string]any{
		"block": true, "purge": true, "new_room_user_id": adminID, "room_name": "Moved", "message": "This room was shut down."})
	deleteID, _ := out["delete_id"].(string)
	if deleteID == "" {
		t.Fatalf("no delete_id: %v", out)
	}
	st := waitDeleted(t, s, token, deleteID)
	res := st["shutdown_room"].(map[string]any)
	kicked := strs(res["kicked_users"])
	slices.Sort(kicked)
	if st["room_id"] != room || st["delete_id"] != deleteID || !slices.Equal(kicked, []string{alice, bob, carol}) ||
		len(strs(res["failed_to_kick_users"])) != 0 || !slices.Equal(strs(res["local_aliases"]), []string{"#doomed:localhost"}) {
		t.Fatalf("status: %v", st)
	}
	newRoom, _ := res["new_room_id"].(string)
	if newRoom == "" {
		t.Fatalf("no new room: %v", res)
	}

	// No trace of the room is left in the database.
	for table, n := range roomRows(s, room) {
		if n != 0 {
			t.Errorf("%d rows of the purged room left in %s", n, table)
		}
	}
	if n := s.count(`SELECT COUNT(*) FROM events WHERE room_id = $1`, other); n != otherEvents {
		t.Errorf("other room lost events: %d of %d", n, otherEvents)
	}
	search := s.mustDo(http.StatusOK, "POST", client+"/search", aliceToken, map[string]any{
		"search_categories": map[string]any{"room_events": map[string]any{"search_term": "needle"}}})
	if n := search["search_categories"].(map[string]any)["room_events"].(map[string]any)["count"]; n != float64(0) {
		t.Errorf("purged message still found by search: %v", n)
	}

	// Members' clients go on syncing: the room is no longer among their rooms.
	for _, q := range []string{"?timeout=0", "?timeout=0&since=" + since} {
		sync := s.mustDo(http.StatusOK, "GET", client+"/sync"+q, bobToken, nil)
		if join, _ := sync["rooms"].(map[string]any)["join"].(map[string]any); join[room] != nil {
			t.Errorf("sync%s still shows the purged room as joined", q)
		}
	}

	// The members are in the new room, which the alias now names.
	members := strs(s.mustDo(http.StatusOK, "GET", v1+"/rooms/"+esc(newRoom)+"/members", token, nil)["members"])
	slices.Sort(members)
	if !slices.Equal(members, []string{adminID, alice, bob, carol}) {
		t.Errorf("new room members: %v", members)
	}
	if got := s.mustDo(http.StatusOK, "GET", client+"/directory/room/"+esc("#doomed:localhost"), aliceToken, nil); got["room_id"] != newRoom {
		t.Errorf("alias: %v", got)
	}
	details := s.mustDo(http.StatusOK, "GET", v1+"/rooms/"+esc(newRoom), token, nil)
	if details["name"] != "Moved" || details["canonical_alias"] != "#doomed:localhost" {
		t.Errorf("new room: %v", details)
	}
	msgs := objs(s.mustDo(http.StatusOK, "GET", v1+"/rooms/"+esc(newRoom)+"/messages?dir=b&filter=%7B%22types%22%3A%5B%22m.room.message%22%5D%7D", token, nil)["chunk"])
	if len(msgs) != 1 || msgs[0]["content"].(map[string]any)["body"] != "This room was shut down." {
		t.Errorf("new room message: %v", msgs)
	}

	// The old room is gone and blocked: it cannot be joined, nor created
	// again under its alias as the same room.
	s.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", v1+"/rooms/"+esc(room), token, nil)
	s.wantErr(http.StatusForbidden, "M_FORBIDDEN", "POST", client+"/join/"+esc(room), bobToken, map[string]any{})
	s.wantErr(http.StatusForbidden, "M_FORBIDDEN", "POST", client+"/rooms/"+esc(room)+"/join", carolToken, map[string]any{})
	s.wantErr(http.StatusForbidden, "M_FORBIDDEN", "POST", v1+"/join/"+esc(room), token, map[string]any{"user_id": bob})
	if got := s.mustDo(http.StatusOK, "GET", v1+"/rooms/"+esc(room)+"/block", token, nil); got["block"] != true {
		t.Errorf("not blocked: %v", got)
	}
	if got := s.mustDo(http.StatusOK, "GET", client+"/joined_rooms", bobToken, nil); slices.Contains(strs(got["joined_rooms"]), room) {
		t.Errorf("bob still in the room: %v", got)
	}
	recreated := s.createRoom(aliceToken, map[string]any{"room_alias_name": "again"})
	if recreated == room {
		t.Fatal("room id reused")
	}
	// After unblocking, the id is simply unknown.
	s.mustDo(http.StatusOK, "PUT", v1+"/rooms/"+esc(room)+"/block", token, map[string]any{"block": false})
	s.wantErr(http.StatusNotFound, "M_NOT_FOUND", "POST", client+"/join/"+esc(room), bobToken, map[string]any{})

	// Status by room; the room is listed no more.
	byRoom := objs(s.mustDo(http.StatusOK, "GET", v2+"/rooms/"+esc(room)+"/delete_status", token, nil)["results"])
	if len(byRoom) != 1 || byRoom[0]["delete_id"] != deleteID || byRoom[0]["status"] != "complete" {
		t.Errorf("delete_status by room: %v", byRoom)
	}
	for _, r := range objs(s.mustDo(http.StatusOK, "GET", v1+"/rooms", token, nil)["rooms"]) {
		if r["room_id"] == room {
			t.Error("purged room still listed")
		}
	}
}

func TestDeleteRoomVariants(t *testing.T) {
	s := newServer(t)
	_, token := s.admin("admin")
	alice, aliceToken := s.register("alice")

	// Without purge: everyone leaves, the room stays in the database.
	room := s.createRoom(aliceToken, map[string]any{"room_alias_name": "kept"})
	s.send(aliceToken, room, "hello")
	res := s.mustDo(http.StatusOK, "DELETE", v1+"/rooms/"+esc(room), token, map[string]any{"purge": false})
	if !slices.Equal(strs(res["kicked_users"]), []string{alice}) || res["new_room_id"] != nil ||
		!slices.Equal(strs(res["local_aliases"]), []string{"#kept:localhost"}) {
		t.Errorf("v1 delete: %v", res)
	}
	details := s.mustDo(http.StatusOK, "GET", v1+"/rooms/"+esc(room), token, nil)
	if details["joined_members"] != float64(0) || details["forgotten"] != true {
		t.Errorf("kept room: %v", details)
	}
	if n := s.count(`SELECT COUNT(*) FROM events WHERE room_id = $1`, room); n == 0 {
		t.Error("purge=false deleted the events")
	}
	s.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", client+"/directory/room/"+esc("#kept:localhost"), aliceToken, nil)
	// Now purge it for good (v2, default purge).
	id := s.mustDo(http.StatusOK, "DELETE", v2+"/rooms/"+esc(room), token, map[string]any{})["delete_id"].(string)
	st := waitDeleted(t, s, token, id)
	if len(strs(st["shutdown_room"].(map[string]any)["kicked_users"])) != 0 {
		t.Errorf("second deletion kicked someone: %v", st)
	}
	if n := s.count(`SELECT COUNT(*) FROM events WHERE room_id = $1`, room); n != 0 {
		t.Errorf("%d events left", n)
	}

	// Unknown rooms: refused unless only blocking them.
	unknown := "!unknown:localhost"
	s.wantErr(http.StatusNotFound, "M_NOT_FOUND", "DELETE", v2+"/rooms/"+esc(unknown), token, map[string]any{})
	id = s.mustDo(http.StatusOK, "DELETE", v2+"/rooms/"+esc(unknown), token, map[string]any{"block": true})["delete_id"].(string)
	waitDeleted(t, s, token, id)
	if got := s.mustDo(http.StatusOK, "GET", v1+"/rooms/"+esc(unknown)+"/block", token, nil); got["block"] != true {
		t.Errorf("unknown room not blocked: %v", got)
	}

	// Refusals.
	s.wantErr(http.StatusBadRequest, "M_NOT_JSON", "DELETE", v2+"/rooms/"+esc(room), token, nil) // Synapse: the body must be at least {}
	s.wantErr(http.StatusBadRequest, "M_BAD_JSON", "DELETE", v2+"/rooms/"+esc(room), token, map[string]any{"block": "yes"})
	s.wantErr(http.StatusBadRequest, "M_BAD_JSON", "DELETE", v2+"/rooms/"+esc(room), token, map[string]any{"purge": 1})
	s.wantErr(http.StatusBadRequest, "M_UNKNOWN", "DELETE", v2+"/rooms/"+esc(room), token, map[string]any{"new_room_user_id": "@x:elsewhere.org", "block": true})
	s.wantErr(http.StatusBadRequest, "M_UNKNOWN", "DELETE", v2+"/rooms/notaroom", token, map[string]any{})
	s.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", v2+"/rooms/delete_status/nosuchid", token, nil)
	s.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", v2+"/rooms/"+esc("!never:localhost")+"/delete_status", token, nil)
}

func TestPurgeHistory(t *testing.T) {
	s := newServer(t)
	_, token := s.admin("admin")
	_, aliceToken := s.register("alice")
	room := s.createRoom(aliceToken, map[string]any{"name": "chatty"})
	var msgs []string
	for _, text := range []string{"m1", "m2", "m3", "m4", "m5"} {
		msgs = append(msgs, s.send(aliceToken, room, text))
	}
	messages := func() []string {
		var out []string
		for _, e := range objs(s.mustDo(http.StatusOK, "GET", client+"/rooms/"+esc(room)+"/messages?dir=b&limit=100", aliceToken, nil)["chunk"]) {
			if e["type"] == "m.room.message" {
				out = append(out, e["event_id"].(string))
			}
		}
		slices.Reverse(out)
		return out
	}
	stateBefore := s.count(`SELECT COUNT(*) FROM events WHERE room_id = $1 AND state_key IS NOT NULL`, room)
	wait := func(purgeID string) {
		t.Helper()
		waitFor(t, "purge "+purgeID, func() bool {
			st := s.mustDo(http.StatusOK, "GET", v1+"/purge_history_status/"+purgeID, token, nil)
			if st["status"] == "failed" {
				t.Fatalf("purge failed: %v", st)
			}
			return st["status"] == "complete"
		})
	}

	// Without delete_local_events nothing goes: every event here is local.
	id := s.mustDo(http.StatusOK, "POST", v1+"/purge_history/"+esc(room)+"/"+esc(msgs[3]), token, map[string]any{})["purge_id"].(string)
	wait(id)
	if got := messages(); !slices.Equal(got, msgs) {
		t.Fatalf("messages after a purge of no local events: %v", got)
	}
	// With it, everything before m4 goes (m4 stays), state stays.
	id = s.mustDo(http.StatusOK, "POST", v1+"/purge_history/"+esc(room), token, map[string]any{
		"delete_local_events": true, "purge_up_to_event_id": msgs[3]})["purge_id"].(string)
	wait(id)
	if got := messages(); !slices.Equal(got, msgs[3:]) {
		t.Errorf("messages after purge: %v, want %v", got, msgs[3:])
	}
	if n := s.count(`SELECT COUNT(*) FROM events WHERE event_id = $1 OR event_id = $2`, msgs[0], msgs[2]); n != 0 {
		t.Errorf("%d purged events still stored", n)
	}
	if n := s.count(`SELECT COUNT(*) FROM events WHERE room_id = $1 AND state_key IS NOT NULL`, room); n != stateBefore {
		t.Errorf("state events: %d, had %d", n, stateBefore)
	}
	// By time: the newest event sent before the time stays, older ones go.
	id = s.mustDo(http.StatusOK, "POST", v1+"/purge_history/"+esc(room), token, map[string]any{
		"delete_local_events": true, "purge_up_to_ts": time.Now().Add(time.Minute).UnixMilli()})["purge_id"].(string)
	wait(id)
	if got := messages(); !slices.Equal(got, msgs[4:]) {
		t.Errorf("messages after purge by time: %v, want %v", got, msgs[4:])
	}
	s.send(aliceToken, room, "still works")

	// Refusals.
	other := s.createRoom(aliceToken, nil)
	s.wantErr(http.StatusBadRequest, "M_UNKNOWN", "POST", v1+"/purge_history/"+esc(other)+"/"+esc(msgs[4]), token, map[string]any{})
	s.wantErr(http.StatusBadRequest, "M_BAD_JSON", "POST", v1+"/purge_history/"+esc(room), token, map[string]any{})
	s.wantErr(http.StatusBadRequest, "M_BAD_JSON", "POST", v1+"/purge_history/"+esc(room), token, map[string]any{"purge_up_to_ts": "yesterday"})
	s.wantErr(http.StatusNotFound, "M_NOT_FOUND", "POST", v1+"/purge_history/"+esc(room), token, map[string]any{"purge_up_to_ts": 1})
	s.wantErr(http.StatusNotFound, "M_NOT_FOUND", "POST", v1+"/purge_history/"+esc(room)+"/"+esc("$nope"), token, map[string]any{})
	s.wantErr(http.StatusNotFound, "M_NOT_FOUND", "POST", v1+"/purge_history/"+esc("!nope:localhost"), token, map[string]any{"purge_up_to_ts": 1})
	s.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", v1+"/purge_history_status/nosuchid", token, nil)
}
