package clientapi

import (
	"net/http"
	"net/url"
	"sort"
	"strings"
	"testing"
)

// rmSearch runs POST /search with room_events criteria.
func rmSearch(t *testing.T, ts *testServer, token string, criteria map[string]any, nextBatch string) map[string]any {
	t.Helper()
	path := rmV3 + "/search"
	if nextBatch != "" {
		path += "?next_batch=" + url.QueryEscape(nextBatch)
	}
	out := ts.mustDo(http.StatusOK, "POST", path, token, map[string]any{"search_categories": map[string]any{"room_events": criteria}})
	re, _ := out["search_categories"].(map[string]any)["room_events"].(map[string]any)
	if re == nil {
		t.Fatalf("no room_events in %v", out)
	}
	return re
}

// rmResultBodies returns the bodies of search results, in order.
func rmResultBodies(t *testing.T, re map[string]any) []string {
	t.Helper()
	var out []string
	for _, r := range rmChunk(t, re, "results") {
		ev := r["result"].(map[string]any)
		out = append(out, ev["content"].(map[string]any)["body"].(string))
	}
	return out
}

func TestSearchRoomEvents(t *testing.T) {
	ts := rmNewServer(t)
	alice, aliceTok := ts.createUser("alice")
	bob, bobTok := ts.createUser("bob")
	_, carolTok := ts.createUser("carol")
	rmSetProfile(t, ts, bob, "Bob")
	roomID := rmCreate(t, ts, aliceTok, map[string]any{"preset": "public_chat"})
	rmJoin(t, ts, bobTok, roomID)
	rmSend(t, ts, aliceTok, roomID, "deploy the rocket tonight")
	rmSend(t, ts, bobTok, roomID, "rocket fuel is low")
	rmSend(t, ts, aliceTok, roomID, "unrelated chatter")
	rmSend(t, ts, bobTok, roomID, "Rockets are fun")
	// carol's room: alice is not in it.
	carolRoom := rmCreate(t, ts, carolTok, nil)
	rmSend(t, ts, carolTok, carolRoom, "secret rocket plans")

	re := rmSearch(t, ts, aliceTok, map[string]any{"search_term": "rocket", "order_by": "recent"}, "")
	if got := strings.Join(rmResultBodies(t, re), "|"); got != "Rockets are fun|rocket fuel is low|deploy the rocket tonight" {
		t.Fatalf("recent results = %q", got)
	}
	if re["count"] != float64(3) {
		t.Fatalf("count = %v", re["count"])
	}
	if h := re["highlights"].([]any); len(h) != 1 || h[0] != "rocket" {
		t.Fatalf("highlights = %v", h)
	}
	for _, r := range rmChunk(t, re, "results") {
		if r["result"].(map[string]any)["room_id"] != roomID || r["rank"] == nil {
			t.Fatalf("result = %v", r)
		}
	}
	// Filter by sender: only bob's messages.
	re = rmSearch(t, ts, aliceTok, map[string]any{"search_term": "rocket", "filter": map[string]any{"senders": []string{bob}}}, "")
	got := rmResultBodies(t, re)
	sort.Strings(got)
	if strings.Join(got, "|") != "Rockets are fun|rocket fuel is low" {
		t.Fatalf("bob's results = %v", got)
	}
	re = rmSearch(t, ts, aliceTok, map[string]any{"search_term": "rocket", "filter": map[string]any{"not_senders": []string{bob}}}, "")
	if got := rmResultBodies(t, re); len(got) != 1 || got[0] != "deploy the rocket tonight" {
		t.Fatalf("not bob = %v", got)
	}
	// Multiple words must all match; rank order puts matches first.
	re = rmSearch(t, ts, bobTok, map[string]any{"search_term": "rocket fuel"}, "")
	if got := rmResultBodies(t, re); len(got) != 1 || got[0] != "rocket fuel is low" {
		t.Fatalf("rocket fuel = %v", got)
	}
	// Carol sees only her room.
	re = rmSearch(t, ts, carolTok, map[string]any{"search_term": "rocket"}, "")
	if got := rmResultBodies(t, re); len(got) != 1 || got[0] != "secret rocket plans" {
		t.Fatalf("carol's results = %v", got)
	}
	// Restricting to rooms.
	re = rmSearch(t, ts, aliceTok, map[string]any{"search_term": "rocket", "filter": map[string]any{"rooms": []string{carolRoom}}}, "")
	if got := rmResultBodies(t, re); len(got) != 0 {
		t.Fatalf("alice searching carol's room = %v", got)
	}

	// Paging one at a time, both orders.
	for _, order := range []string{"recent", "rank"} {
		var all []string
		next := ""
		for i := 0; i < 10; i++ {
			re = rmSearch(t, ts, aliceTok, map[string]any{"search_term": "rocket", "order_by": order, "filter": map[string]any{"limit": 1}}, next)
			all = append(all, rmResultBodies(t, re)...)
			next, _ = re["next_batch"].(string)
			if next == "" {
				break
			}
		}
		sort.Strings(all)
		if strings.Join(all, "|") != "Rockets are fun|deploy the rocket tonight|rocket fuel is low" {
			t.Fatalf("%s paging = %v", order, all)
		}
	}

	// Context, profile, state and groupings.
	re = rmSearch(t, ts, aliceTok, map[string]any{
		"search_term":   "fuel",
		"event_context": map[string]any{"before_limit": 1, "after_limit": 1, "include_profile": true},
		"include_state": true,
		"groupings":     map[string]any{"group_by": []map[string]any{{"key": "room_id"}, {"key": "sender"}}},
	}, "")
	res := rmChunk(t, re, "results")
	if len(res) != 1 {
		t.Fatalf("fuel = %v", re)
	}
	ctxt := res[0]["context"].(map[string]any)
	before, after := rmChunk(t, ctxt, "events_before"), rmChunk(t, ctxt, "events_after")
	if len(before) != 1 || before[0]["content"].(map[string]any)["body"] != "deploy the rocket tonight" ||
		len(after) != 1 || after[0]["content"].(map[string]any)["body"] != "unrelated chatter" {
		t.Fatalf("context = %v", ctxt)
	}
	if p := ctxt["profile_info"].(map[string]any)[bob].(map[string]any); p["displayname"] != "Bob" {
		t.Fatalf("profile_info = %v", ctxt["profile_info"])
	}
	if st := re["state"].(map[string]any)[roomID].([]any); len(st) == 0 {
		t.Fatalf("state = %v", re["state"])
	}
	groups := re["groups"].(map[string]any)
	if g := groups["room_id"].(map[string]any)[roomID].(map[string]any); len(g["results"].([]any)) != 1 {
		t.Fatalf("room groups = %v", groups)
	}
	if _, ok := groups["sender"].(map[string]any)[bob]; !ok {
		t.Fatalf("sender groups = %v", groups)
	}

	// Query syntax in the term is just text: never a 500.
	for _, term := range []string{`"rocket`, `rocket AND (`, `*`, `NEAR(rocket fuel)`, `-rocket`, `rocket:*`, `'`, `\`} {
		status, out := ts.do("POST", rmV3+"/search", aliceTok, map[string]any{"search_categories": map[string]any{"room_events": map[string]any{"search_term": term}}})
		if status != http.StatusOK {
			t.Fatalf("term %q: %d %v", term, status, out)
		}
	}
	if got := rmResultBodies(t, rmSearch(t, ts, aliceTok, map[string]any{"search_term": `"rocket" (fuel)`}, "")); len(got) != 1 {
		t.Fatalf("punctuated term = %v", got)
	}
	if re := rmSearch(t, ts, aliceTok, map[string]any{"search_term": ""}, ""); re["count"] != float64(0) {
		t.Fatalf("empty term = %v", re)
	}
	// Only content.body is indexed.
	if got := rmResultBodies(t, rmSearch(t, ts, aliceTok, map[string]any{"search_term": "rocket", "keys": []string{"content.name"}}, "")); len(got) != 0 {
		t.Fatalf("keys content.name = %v", got)
	}

	// Redacted events are not found.
	fuel := rmSend(t, ts, aliceTok, roomID, "zeppelin")
	if got := rmResultBodies(t, rmSearch(t, ts, aliceTok, map[string]any{"search_term": "zeppelin"}, "")); len(got) != 1 {
		t.Fatalf("zeppelin before redaction = %v", got)
	}
	ts.mustDo(http.StatusOK, "PUT", rmRoomPath(roomID, "/redact/"+url.PathEscape(fuel)+"/z"), aliceTok, map[string]any{})
	if got := rmResultBodies(t, rmSearch(t, ts, aliceTok, map[string]any{"search_term": "zeppelin"}, "")); len(got) != 0 {
		t.Fatalf("zeppelin after redaction = %v", got)
	}

	// A user who left does not find messages sent after.
	ts.mustDo(http.StatusOK, "POST", rmRoomPath(roomID, "/leave"), bobTok, map[string]any{})
	rmSend(t, ts, aliceTok, roomID, "rocket after bob left")
	got = rmResultBodies(t, rmSearch(t, ts, bobTok, map[string]any{"search_term": "rocket"}, ""))
	for _, b := range got {
		if b == "rocket after bob left" {
			t.Fatalf("bob found a message sent after he left: %v", got)
		}
	}
	if len(got) != 3 {
		t.Fatalf("bob's results after leaving = %v", got)
	}

	// Errors.
	search := rmV3 + "/search"
	ts.wantErr(http.StatusBadRequest, "M_MISSING_PARAM", "POST", search, aliceTok, map[string]any{"search_categories": map[string]any{"room_events": map[string]any{}}})
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "POST", search, aliceTok, map[string]any{"search_categories": map[string]any{"room_events": map[string]any{"search_term": "x", "order_by": "size"}}})
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "POST", search, aliceTok, map[string]any{"search_categories": map[string]any{"room_events": map[string]any{"search_term": "x", "keys": []string{"content.nope"}}}})
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "POST", search+"?next_batch=zz", aliceTok, map[string]any{"search_categories": map[string]any{"room_events": map[string]any{"search_term": "x"}}})
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "POST", search, aliceTok, map[string]any{"search_categories": map[string]any{"room_events": map[string]any{"search_term": "x", "groupings": map[string]any{"group_by": []map[string]any{{"key": "type"}}}}}})
	ts.wantErr(http.StatusBadRequest, "M_BAD_JSON", "POST", search, aliceTok, map[string]any{"search_categories": map[string]any{"room_events": map[string]any{"search_term": 5}}})
	ts.wantErr(http.StatusBadRequest, "M_NOT_JSON", "POST", search, aliceTok, "{")
	ts.wantErr(http.StatusUnauthorized, "M_MISSING_TOKEN", "POST", search, "", map[string]any{})
	_ = alice
}
