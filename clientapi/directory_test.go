package clientapi

import (
	"context"
	"net/http"
	"net/url"
	"testing"

	"github.com/agentspace/agentspace/storage"
)

func TestAliasLifecycle(t *testing.T) {
	ts := rmNewServer(t)
	_, aliceTok := ts.createUser("alice")
	_, bobTok := ts.createUser("bob")
	_, carolTok := ts.createUser("carol")
	roomID := rmCreate(t, ts, aliceTok, map[string]any{"preset": "public_chat"})
	rmJoin(t, ts, bobTok, roomID)
	alias := "#team:" + ts.cfg.ServerName
	path := rmV3 + "/directory/room/" + url.PathEscape(alias)

	ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", path, "", nil)
	// Only members may create aliases for a room.
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "PUT", path, carolTok, map[string]any{"room_id": roomID})
	ts.mustDo(http.StatusOK, "PUT", path, bobTok, map[string]any{"room_id": roomID})
	ts.wantErr(http.StatusConflict, "M_UNKNOWN", "PUT", path, aliceTok, map[string]any{"room_id": roomID})
	got := ts.mustDo(http.StatusOK, "GET", path, "", nil)
	if got["room_id"] != roomID || len(got["servers"].([]any)) != 1 || got["servers"].([]any)[0] != ts.cfg.ServerName {
		t.Fatalf("GET alias = %v", got)
	}
	list := ts.mustDo(http.StatusOK, "GET", rmRoomPath(roomID, "/aliases"), aliceTok, nil)["aliases"].([]any)
	if len(list) != 1 || list[0] != alias {
		t.Fatalf("aliases = %v", list)
	}
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "GET", rmRoomPath(roomID, "/aliases"), carolTok, nil)

	// Bad input.
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "PUT", rmV3+"/directory/room/"+url.PathEscape("#x:elsewhere.org"), aliceTok, map[string]any{"room_id": roomID})
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "PUT", rmV3+"/directory/room/noalias", aliceTok, map[string]any{"room_id": roomID})
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "GET", rmV3+"/directory/room/"+url.PathEscape("#missing-server"), "", nil)
	ts.wantErr(http.StatusBadRequest, "M_MISSING_PARAM", "PUT", rmV3+"/directory/room/"+url.PathEscape("#y:"+ts.cfg.ServerName), aliceTok, map[string]any{})
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "PUT", rmV3+"/directory/room/"+url.PathEscape("#y:"+ts.cfg.ServerName), aliceTok, map[string]any{"room_id": "nope"})
	ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "PUT", rmV3+"/directory/room/"+url.PathEscape("#y:"+ts.cfg.ServerName), aliceTok, map[string]any{"room_id": "!nope:" + ts.cfg.ServerName})
	ts.wantErr(http.StatusBadRequest, "M_NOT_JSON", "PUT", path, aliceTok, "{")
	ts.wantErr(http.StatusUnauthorized, "M_MISSING_TOKEN", "PUT", path, "", map[string]any{"room_id": roomID})
	ts.wantErr(http.StatusUnauthorized, "M_MISSING_TOKEN", "DELETE", path, "", nil)

	// Deleting: not carol (outsider, not the creator); alice as room admin may.
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "DELETE", path, carolTok, nil)
	ts.mustDo(http.StatusOK, "PUT", rmRoomPath(roomID, "/state/m.room.canonical_alias"), aliceTok, map[string]any{"alias": alias, "alt_aliases": []string{alias}})
	ts.mustDo(http.StatusOK, "DELETE", path, aliceTok, nil)
	ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", path, "", nil)
	ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "DELETE", path, aliceTok, nil)
	// The deleted alias left the canonical alias event.
	ca := ts.mustDo(http.StatusOK, "GET", rmRoomPath(roomID, "/state/m.room.canonical_alias"), aliceTok, nil)
	if ca["alias"] != nil || len(ca["alt_aliases"].([]any)) != 0 {
		t.Fatalf("canonical alias after delete = %v", ca)
	}
	// The alias creator may delete their own alias, even without power.
	ts.mustDo(http.StatusOK, "PUT", path, bobTok, map[string]any{"room_id": roomID})
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "DELETE", path, carolTok, nil)
	ts.mustDo(http.StatusOK, "DELETE", path, bobTok, nil)
	if l := ts.mustDo(http.StatusOK, "GET", rmRoomPath(roomID, "/aliases"), aliceTok, nil)["aliases"].([]any); len(l) != 0 {
		t.Fatalf("aliases after delete = %v", l)
	}
}

func TestPublicRoomDirectory(t *testing.T) {
	ts := rmNewServer(t)
	_, aliceTok := ts.createUser("alice")
	_, bobTok := ts.createUser("bob")
	big := rmCreate(t, ts, aliceTok, map[string]any{"preset": "public_chat", "visibility": "public", "name": "Gophers",
		"topic": "All about GO", "room_alias_name": "gophers"})
	rmJoin(t, ts, bobTok, big)
	small := rmCreate(t, ts, aliceTok, map[string]any{"preset": "public_chat", "visibility": "public", "name": "Rustaceans",
		"creation_content": map[string]any{"type": "m.space"}})
	rmCreate(t, ts, aliceTok, map[string]any{"preset": "public_chat", "name": "Unlisted"})
	private := rmCreate(t, ts, aliceTok, map[string]any{"name": "Private"})

	out := ts.mustDo(http.StatusOK, "GET", rmV3+"/publicRooms", "", nil)
	chunk := rmChunk(t, out, "chunk")
	if len(chunk) != 2 || out["total_room_count_estimate"] != float64(2) {
		t.Fatalf("publicRooms = %v", out)
	}
	first := chunk[0]
	if first["room_id"] != big || first["name"] != "Gophers" || first["topic"] != "All about GO" ||
		first["canonical_alias"] != "#gophers:"+ts.cfg.ServerName || first["num_joined_members"] != float64(2) ||
		first["join_rule"] != "public" || first["world_readable"] != false || first["guest_can_join"] != false {
		t.Fatalf("first entry = %v", first)
	}
	if chunk[1]["room_id"] != small || chunk[1]["room_type"] != "m.space" {
		t.Fatalf("second entry = %v", chunk[1])
	}
	// Paging.
	out = ts.mustDo(http.StatusOK, "GET", rmV3+"/publicRooms?limit=1", "", nil)
	if c := rmChunk(t, out, "chunk"); len(c) != 1 || c[0]["room_id"] != big || out["next_batch"] == nil || out["prev_batch"] != nil {
		t.Fatalf("page 1 = %v", out)
	}
	out = ts.mustDo(http.StatusOK, "GET", rmV3+"/publicRooms?limit=1&since="+url.QueryEscape(out["next_batch"].(string)), "", nil)
	if c := rmChunk(t, out, "chunk"); len(c) != 1 || c[0]["room_id"] != small || out["next_batch"] != nil || out["prev_batch"] == nil {
		t.Fatalf("page 2 = %v", out)
	}
	// Searching (POST, authenticated), case-insensitively over name, topic and alias.
	search := func(term string) []map[string]any {
		return rmChunk(t, ts.mustDo(http.StatusOK, "POST", rmV3+"/publicRooms", bobTok,
			map[string]any{"filter": map[string]any{"generic_search_term": term}}), "chunk")
	}
	if c := search("go"); len(c) != 1 || c[0]["room_id"] != big {
		t.Fatalf("search go = %v", c)
	}
	if c := search("RUST"); len(c) != 1 || c[0]["room_id"] != small {
		t.Fatalf("search RUST = %v", c)
	}
	if c := search(small); len(c) != 1 || c[0]["room_id"] != small {
		t.Fatalf("search by room id = %v", c)
	}
	if c := search("nothing-like-this"); len(c) != 0 {
		t.Fatalf("search miss = %v", c)
	}
	types := rmChunk(t, ts.mustDo(http.StatusOK, "POST", rmV3+"/publicRooms", bobTok,
		map[string]any{"filter": map[string]any{"room_types": []any{nil}}}), "chunk")
	if len(types) != 1 || types[0]["room_id"] != big {
		t.Fatalf("room_types [null] = %v", types)
	}
	ts.wantErr(http.StatusUnauthorized, "M_MISSING_TOKEN", "POST", rmV3+"/publicRooms", "", map[string]any{})
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "GET", rmV3+"/publicRooms?since=bogus", "", nil)
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "GET", rmV3+"/publicRooms?limit=x", "", nil)

	// Directory visibility.
	vis := rmV3 + "/directory/list/room/" + url.PathEscape(private)
	if v := ts.mustDo(http.StatusOK, "GET", vis, "", nil); v["visibility"] != "private" {
		t.Fatalf("visibility = %v", v)
	}
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "PUT", rmV3+"/directory/list/room/"+url.PathEscape(big), bobTok, map[string]any{"visibility": "private"})
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "PUT", vis, aliceTok, map[string]any{"visibility": "open"})
	ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", rmV3+"/directory/list/room/"+url.PathEscape("!nope:"+ts.cfg.ServerName), "", nil)
	ts.wantErr(http.StatusUnauthorized, "M_MISSING_TOKEN", "PUT", vis, "", map[string]any{"visibility": "public"})
	// Publishing an invite-only room does not list it (Synapse lists only joinable or world-readable rooms).
	ts.mustDo(http.StatusOK, "PUT", vis, aliceTok, map[string]any{"visibility": "public"})
	if v := ts.mustDo(http.StatusOK, "GET", vis, "", nil); v["visibility"] != "public" {
		t.Fatalf("visibility after PUT = %v", v)
	}
	if c := rmChunk(t, ts.mustDo(http.StatusOK, "GET", rmV3+"/publicRooms", "", nil), "chunk"); len(c) != 2 {
		t.Fatalf("invite-only room listed: %v", c)
	}
	ts.mustDo(http.StatusOK, "PUT", rmV3+"/directory/list/room/"+url.PathEscape(big), aliceTok, map[string]any{"visibility": "private"})
	if c := rmChunk(t, ts.mustDo(http.StatusOK, "GET", rmV3+"/publicRooms", "", nil), "chunk"); len(c) != 1 || c[0]["room_id"] != small {
		t.Fatalf("after unpublishing: %v", c)
	}
}

func TestUserDirectorySearch(t *testing.T) {
	ts := rmNewServer(t)
	_, aliceTok := ts.createUser("alice")
	bob, bobTok := ts.createUser("bob")
	_, _ = ts.createUser("carol")
	dave, daveTok := ts.createUser("dave")
	rmSetProfile(t, ts, bob, "Bobby Tables")
	private := rmCreate(t, ts, aliceTok, nil)
	rmInvite(t, ts, aliceTok, private, bob)
	rmJoin(t, ts, bobTok, private)
	// dave is alone in a public room.
	rmCreate(t, ts, daveTok, map[string]any{"preset": "public_chat"})

	search := func(term string, limit int) map[string]any {
		return ts.mustDo(http.StatusOK, "POST", rmV3+"/user_directory/search", aliceTok, map[string]any{"search_term": term, "limit": limit})
	}
	res := search("tables", 10)
	results := rmChunk(t, res, "results")
	if len(results) != 1 || results[0]["user_id"] != bob || results[0]["display_name"] != "Bobby Tables" || res["limited"] != false {
		t.Fatalf("search tables = %v", res)
	}
	if r := rmChunk(t, search("BOB", 10), "results"); len(r) != 1 {
		t.Fatalf("search BOB = %v", r)
	}
	// carol shares no room and is in no public room.
	if r := rmChunk(t, search("carol", 10), "results"); len(r) != 0 {
		t.Fatalf("search carol = %v", r)
	}
	// dave is in a public room.
	if r := rmChunk(t, search("dave", 10), "results"); len(r) != 1 || r[0]["user_id"] != dave {
		t.Fatalf("search dave = %v", r)
	}
	// Deactivated users disappear.
	ctx := context.Background()
	if err := ts.db.Write(ctx, func(tx *storage.Tx) error { return tx.SetDeactivated(ctx, dave, true) }); err != nil {
		t.Fatal(err)
	}
	if r := rmChunk(t, search("dave", 10), "results"); len(r) != 0 {
		t.Fatalf("deactivated dave = %v", r)
	}
	// limited.
	res = search(ts.cfg.ServerName, 1)
	if len(rmChunk(t, res, "results")) != 1 || res["limited"] != true {
		t.Fatalf("limit 1 = %v", res)
	}
	ts.wantErr(http.StatusBadRequest, "M_MISSING_PARAM", "POST", rmV3+"/user_directory/search", aliceTok, map[string]any{})
	ts.wantErr(http.StatusBadRequest, "M_BAD_JSON", "POST", rmV3+"/user_directory/search", aliceTok, map[string]any{"search_term": 5})
	ts.wantErr(http.StatusBadRequest, "M_NOT_JSON", "POST", rmV3+"/user_directory/search", aliceTok, "x")
	ts.wantErr(http.StatusUnauthorized, "M_MISSING_TOKEN", "POST", rmV3+"/user_directory/search", "", map[string]any{"search_term": "a"})
}
