package clientapi

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/agentspace/agentspace/rooms"
)

// rmMessages calls /messages with the given query and returns the response.
func rmMessages(t *testing.T, ts *testServer, token, roomID string, q url.Values) map[string]any {
	t.Helper()
	return ts.mustDo(http.StatusOK, "GET", rmRoomPath(roomID, "/messages?"+q.Encode()), token, nil)
}

// rmBodies pages through /messages backwards from the latest event and
// returns the bodies of every m.room.message the user sees, oldest first.
func rmBodies(t *testing.T, ts *testServer, token, roomID string) []string {
	t.Helper()
	var bodies []string
	q := url.Values{"dir": {"b"}, "limit": {"50"}}
	for i := 0; i < 100; i++ {
		out := rmMessages(t, ts, token, roomID, q)
		for _, ev := range rmChunk(t, out, "chunk") {
			if ev["type"] == "m.room.message" {
				bodies = append([]string{ev["content"].(map[string]any)["body"].(string)}, bodies...)
			}
		}
		end, _ := out["end"].(string)
		if end == "" {
			return bodies
		}
		q.Set("from", end)
	}
	t.Fatal("pagination did not end")
	return nil
}

func TestMessagesPaginationIsExact(t *testing.T) {
	ts := rmNewServer(t)
	_, aliceTok := ts.createUser("alice")
	roomID := rmCreate(t, ts, aliceTok, nil)
	const n = 500
	for i := 0; i < n; i++ {
		rmSend(t, ts, aliceTok, roomID, fmt.Sprintf("m%03d", i))
	}
	msgFilter := `{"types":["m.room.message"]}`

	// Backwards from the latest position (no from), 37 at a time.
	var got []string
	seen := map[string]bool{}
	q := url.Values{"dir": {"b"}, "limit": {"37"}, "filter": {msgFilter}}
	pages := 0
	for {
		out := rmMessages(t, ts, aliceTok, roomID, q)
		pages++
		if out["start"] == nil {
			t.Fatalf("no start: %v", out)
		}
		chunk := rmChunk(t, out, "chunk")
		for _, ev := range chunk {
			id := ev["event_id"].(string)
			if seen[id] {
				t.Fatalf("duplicate event %s", id)
			}
			seen[id] = true
			got = append(got, ev["content"].(map[string]any)["body"].(string))
		}
		end, _ := out["end"].(string)
		if end == "" {
			break
		}
		if len(chunk) != 37 && end != "" {
			t.Fatalf("short page of %d with an end token", len(chunk))
		}
		q.Set("from", end)
		if pages > 100 {
			t.Fatal("too many pages")
		}
	}
	if len(got) != n {
		t.Fatalf("got %d messages, want %d", len(got), n)
	}
	for i, b := range got {
		if want := fmt.Sprintf("m%03d", n-1-i); b != want {
			t.Fatalf("backwards message %d = %s, want %s", i, b, want)
		}
	}

	// Forwards from the room start (no from).
	got = got[:0]
	q = url.Values{"dir": {"f"}, "limit": {"37"}, "filter": {msgFilter}}
	for pages = 0; pages < 100; pages++ {
		out := rmMessages(t, ts, aliceTok, roomID, q)
		for _, ev := range rmChunk(t, out, "chunk") {
			got = append(got, ev["content"].(map[string]any)["body"].(string))
		}
		end, _ := out["end"].(string)
		if end == "" {
			break
		}
		q.Set("from", end)
	}
	if len(got) != n {
		t.Fatalf("forwards: got %d messages, want %d", len(got), n)
	}
	for i, b := range got {
		if want := fmt.Sprintf("m%03d", i); b != want {
			t.Fatalf("forwards message %d = %s, want %s", i, b, want)
		}
	}

	// A sync-style token s<pos> round-trips: backwards from it excludes later events.
	latest := ts.Rooms().Notifier().Latest()
	rmSend(t, ts, aliceTok, roomID, "after token")
	out := rmMessages(t, ts, aliceTok, roomID, url.Values{"dir": {"b"}, "limit": {"1"}, "from": {rooms.StreamToken(latest)}})
	if c := rmChunk(t, out, "chunk"); len(c) != 1 || c[0]["content"].(map[string]any)["body"] != "m499" {
		t.Fatalf("from s<latest>: %v", c)
	}
	// Synapse-style tokens use their stream part.
	out = rmMessages(t, ts, aliceTok, roomID, url.Values{"dir": {"f"}, "limit": {"5"}, "from": {fmt.Sprintf("t1-%d", latest)}})
	if c := rmChunk(t, out, "chunk"); len(c) != 1 || c[0]["content"].(map[string]any)["body"] != "after token" {
		t.Fatalf("from t-token: %v", c)
	}
	if out["end"] != nil {
		t.Fatalf("end present at the end of history: %v", out["end"])
	}
	// to bounds the page.
	out = rmMessages(t, ts, aliceTok, roomID, url.Values{"dir": {"b"}, "limit": {"100"}, "to": {rooms.StreamToken(latest - 3)}})
	if c := rmChunk(t, out, "chunk"); len(c) != 4 {
		t.Fatalf("with to: %d events, want 4", len(c))
	}
}

func TestMessagesFiltersAndErrors(t *testing.T) {
	ts := rmNewServer(t)
	alice, aliceTok := ts.createUser("alice")
	bob, bobTok := ts.createUser("bob")
	_, carolTok := ts.createUser("carol")
	rmSetProfile(t, ts, bob, "Bob")
	roomID := rmCreate(t, ts, aliceTok, map[string]any{"preset": "public_chat"})
	rmJoin(t, ts, bobTok, roomID)
	rmSend(t, ts, aliceTok, roomID, "from alice")
	rmSend(t, ts, bobTok, roomID, "from bob")
	rmSendContent(t, ts, bobTok, roomID, "m.room.message", map[string]any{"msgtype": "m.image", "body": "pic", "url": "mxc://x/y"})
	rmSendContent(t, ts, aliceTok, roomID, "org.example.thing", map[string]any{"x": 1})

	page := func(filter string) []map[string]any {
		t.Helper()
		return rmChunk(t, rmMessages(t, ts, aliceTok, roomID, url.Values{"dir": {"b"}, "limit": {"100"}, "filter": {filter}}), "chunk")
	}
	bodies := func(evs []map[string]any) string {
		var out []string
		for _, e := range evs {
			if b, ok := e["content"].(map[string]any)["body"].(string); ok {
				out = append(out, b)
			} else {
				out = append(out, e["type"].(string))
			}
		}
		return strings.Join(out, ",")
	}
	if got := bodies(page(`{"types":["m.room.message"],"senders":["` + bob + `"]}`)); got != "pic,from bob" {
		t.Fatalf("senders filter: %s", got)
	}
	if got := bodies(page(`{"types":["m.room.message"],"not_senders":["` + bob + `"]}`)); got != "from alice" {
		t.Fatalf("not_senders filter: %s", got)
	}
	if got := bodies(page(`{"types":["org.example.*"]}`)); got != "org.example.thing" {
		t.Fatalf("wildcard types: %s", got)
	}
	if got := bodies(page(`{"types":["m.room.message"],"contains_url":true}`)); got != "pic" {
		t.Fatalf("contains_url: %s", got)
	}
	if got := bodies(page(`{"types":[]}`)); got != "" {
		t.Fatalf("empty types list should match nothing: %s", got)
	}
	for _, ev := range page(`{"not_types":["m.room.message","m.room.member","org.example.thing"]}`) {
		if ev["type"] == "m.room.message" || ev["type"] == "m.room.member" {
			t.Fatalf("not_types let through %v", ev["type"])
		}
	}
	// Lazy-loaded members of the chunk's senders.
	out := rmMessages(t, ts, aliceTok, roomID, url.Values{"dir": {"b"}, "limit": {"2"},
		"filter": {`{"lazy_load_members":true,"types":["m.room.message"]}`}})
	state := rmChunk(t, out, "state")
	if len(state) != 1 || state[0]["state_key"] != bob || state[0]["content"].(map[string]any)["displayname"] != "Bob" {
		t.Fatalf("lazy members state = %v", state)
	}
	if _, ok := rmMessages(t, ts, aliceTok, roomID, url.Values{"dir": {"b"}})["state"]; ok {
		t.Fatal("state present without lazy loading")
	}
	// The filter's limit applies when the limit parameter is absent.
	if c := rmChunk(t, rmMessages(t, ts, aliceTok, roomID, url.Values{"dir": {"b"}, "filter": {`{"limit":2}`}}), "chunk"); len(c) != 2 {
		t.Fatalf("filter limit: %d events", len(c))
	}

	base := rmRoomPath(roomID, "/messages")
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "GET", base+"?dir=x", aliceTok, nil)
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "GET", base+"?dir=b&from=garbage", aliceTok, nil)
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "GET", base+"?dir=b&to=s-1", aliceTok, nil)
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "GET", base+"?dir=b&limit=ten", aliceTok, nil)
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "GET", base+"?dir=b&filter="+url.QueryEscape("{nope"), aliceTok, nil)
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "GET", base+"?dir=b&filter="+url.QueryEscape(`{"types":"m.room.message"}`), aliceTok, nil)
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "GET", base+"?dir=b", carolTok, nil)
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "GET", rmRoomPath("!nope:"+ts.cfg.ServerName, "/messages?dir=b"), aliceTok, nil)
	ts.wantErr(http.StatusUnauthorized, "M_MISSING_TOKEN", "GET", base+"?dir=b", "", nil)
	_ = alice
}

func TestHistoryVisibility(t *testing.T) {
	cases := []struct {
		visibility string
		want       string // what bob sees after joining
		outsider   bool   // whether a non-member can read
	}{
		{"joined", "after join", false},
		{"invited", "after invite,after join", false},
		{"shared", "before invite,after invite,after join", false},
		{"world_readable", "before invite,after invite,after join", true},
	}
	for _, tc := range cases {
		t.Run(tc.visibility, func(t *testing.T) {
			ts := rmNewServer(t)
			_, aliceTok := ts.createUser("alice")
			bob, bobTok := ts.createUser("bob")
			_, carolTok := ts.createUser("carol")
			roomID := rmCreate(t, ts, aliceTok, map[string]any{"initial_state": []map[string]any{
				{"type": "m.room.history_visibility", "state_key": "", "content": map[string]any{"history_visibility": tc.visibility}},
			}})
			rmSend(t, ts, aliceTok, roomID, "before invite")
			rmInvite(t, ts, aliceTok, roomID, bob)
			rmSend(t, ts, aliceTok, roomID, "after invite")
			rmJoin(t, ts, bobTok, roomID)
			rmSend(t, ts, aliceTok, roomID, "after join")

			if got := strings.Join(rmBodies(t, ts, bobTok, roomID), ","); got != tc.want {
				t.Fatalf("bob sees %q, want %q", got, tc.want)
			}
			if got := strings.Join(rmBodies(t, ts, aliceTok, roomID), ","); got != "before invite,after invite,after join" {
				t.Fatalf("alice sees %q", got)
			}
			status, _ := ts.do("GET", rmRoomPath(roomID, "/messages?dir=b"), carolTok, nil)
			if (status == http.StatusOK) != tc.outsider {
				t.Fatalf("outsider got %d", status)
			}

			// After leaving, bob no longer sees new messages (unless world_readable).
			ts.mustDo(http.StatusOK, "POST", rmRoomPath(roomID, "/leave"), bobTok, map[string]any{})
			rmSend(t, ts, aliceTok, roomID, "after leave")
			want := tc.want
			if tc.visibility == "world_readable" {
				want += ",after leave"
			}
			if got := strings.Join(rmBodies(t, ts, bobTok, roomID), ","); got != want {
				t.Fatalf("bob after leaving sees %q, want %q", got, want)
			}
			// Forwards paging from the start shows the same.
			out := rmMessages(t, ts, bobTok, roomID, url.Values{"dir": {"f"}, "limit": {"100"}, "filter": {`{"types":["m.room.message"]}`}})
			var fwd []string
			for _, ev := range rmChunk(t, out, "chunk") {
				fwd = append(fwd, ev["content"].(map[string]any)["body"].(string))
			}
			if got := strings.Join(fwd, ","); got != want {
				t.Fatalf("bob forwards sees %q, want %q", got, want)
			}
		})
	}
}

func TestEventContext(t *testing.T) {
	ts := rmNewServer(t)
	_, aliceTok := ts.createUser("alice")
	_, bobTok := ts.createUser("bob")
	roomID := rmCreate(t, ts, aliceTok, nil)
	var ids []string
	for i := 0; i < 10; i++ {
		ids = append(ids, rmSend(t, ts, aliceTok, roomID, fmt.Sprintf("c%d", i)))
	}
	out := ts.mustDo(http.StatusOK, "GET", rmRoomPath(roomID, "/context/"+url.PathEscape(ids[5])+"?limit=4"), aliceTok, nil)
	if out["event"].(map[string]any)["event_id"] != ids[5] {
		t.Fatalf("event = %v", out["event"])
	}
	before, after := rmChunk(t, out, "events_before"), rmChunk(t, out, "events_after")
	if len(before) != 2 || before[0]["event_id"] != ids[4] || before[1]["event_id"] != ids[3] {
		t.Fatalf("events_before = %v", before)
	}
	if len(after) != 2 || after[0]["event_id"] != ids[6] || after[1]["event_id"] != ids[7] {
		t.Fatalf("events_after = %v", after)
	}
	if len(rmChunk(t, out, "state")) == 0 {
		t.Fatal("no state")
	}
	// start/end continue with /messages.
	back := rmMessages(t, ts, aliceTok, roomID, url.Values{"dir": {"b"}, "limit": {"1"}, "from": {out["start"].(string)}})
	if c := rmChunk(t, back, "chunk"); len(c) != 1 || c[0]["event_id"] != ids[2] {
		t.Fatalf("paging back from start: %v", c)
	}
	fwd := rmMessages(t, ts, aliceTok, roomID, url.Values{"dir": {"f"}, "limit": {"1"}, "from": {out["end"].(string)}})
	if c := rmChunk(t, fwd, "chunk"); len(c) != 1 || c[0]["event_id"] != ids[8] {
		t.Fatalf("paging forward from end: %v", c)
	}
	// Lazy-loading limits state to the senders' members.
	out = ts.mustDo(http.StatusOK, "GET", rmRoomPath(roomID, "/context/"+url.PathEscape(ids[5])+"?limit=2&filter="+
		url.QueryEscape(`{"lazy_load_members":true}`)), aliceTok, nil)
	if st := rmChunk(t, out, "state"); len(st) != 1 || st[0]["type"] != "m.room.member" {
		t.Fatalf("lazy state = %v", st)
	}
	// limit=0 still returns the event.
	out = ts.mustDo(http.StatusOK, "GET", rmRoomPath(roomID, "/context/"+url.PathEscape(ids[0])+"?limit=0"), aliceTok, nil)
	if out["event"].(map[string]any)["event_id"] != ids[0] || len(rmChunk(t, out, "events_before")) != 0 {
		t.Fatalf("limit=0: %v", out)
	}
	ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", rmRoomPath(roomID, "/context/"+url.PathEscape(ids[5])), bobTok, nil)
	ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", rmRoomPath(roomID, "/context/"+url.PathEscape("$nope")), aliceTok, nil)
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "GET", rmRoomPath(roomID, "/context/"+url.PathEscape(ids[5])+"?limit=-1"), aliceTok, nil)
}

func TestRelationsAndThreads(t *testing.T) {
	ts := rmNewServer(t)
	alice, aliceTok := ts.createUser("alice")
	_, bobTok := ts.createUser("bob")
	_, carolTok := ts.createUser("carol")
	_, daveTok := ts.createUser("dave")
	roomID := rmCreate(t, ts, aliceTok, map[string]any{"preset": "public_chat"})
	rmJoin(t, ts, bobTok, roomID)
	rmJoin(t, ts, carolTok, roomID)

	root := rmSend(t, ts, aliceTok, roomID, "root")
	thread := func(token, body string) string {
		return rmSendContent(t, ts, token, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": body,
			"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": root}})
	}
	t1 := thread(aliceTok, "t1")
	t2 := thread(bobTok, "t2")
	reaction := rmSendContent(t, ts, bobTok, roomID, "m.reaction", map[string]any{
		"m.relates_to": map[string]any{"rel_type": "m.annotation", "event_id": root, "key": "👍"}})
	edit := rmSendContent(t, ts, aliceTok, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": "* root!",
		"m.new_content": map[string]any{"msgtype": "m.text", "body": "root!"},
		"m.relates_to":  map[string]any{"rel_type": "m.replace", "event_id": root}})
	// A reaction to a thread reply relates to the root only indirectly.
	nested := rmSendContent(t, ts, carolTok, roomID, "m.reaction", map[string]any{
		"m.relates_to": map[string]any{"rel_type": "m.annotation", "event_id": t1, "key": "🎉"}})
	// A plain reply is not a relation.
	rmSendContent(t, ts, carolTok, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": "reply",
		"m.relates_to": map[string]any{"m.in_reply_to": map[string]any{"event_id": root}}})

	v1 := "/_matrix/client/v1/rooms/" + url.PathEscape(roomID) + "/relations/" + url.PathEscape(root)
	ids := func(out map[string]any) []string {
		var res []string
		for _, ev := range rmChunk(t, out, "chunk") {
			res = append(res, ev["event_id"].(string))
		}
		return res
	}
	eq := func(got []string, want ...string) bool { return strings.Join(got, ",") == strings.Join(want, ",") }

	all := ts.mustDo(http.StatusOK, "GET", v1+"?limit=10", aliceTok, nil)
	if got := ids(all); !eq(got, edit, reaction, t2, t1) {
		t.Fatalf("all relations = %v", got)
	}
	if _, ok := all["recursion_depth"]; ok {
		t.Fatal("recursion_depth without recurse")
	}
	if got := ids(ts.mustDo(http.StatusOK, "GET", v1+"/m.thread?limit=10&dir=f", aliceTok, nil)); !eq(got, t1, t2) {
		t.Fatalf("m.thread forwards = %v", got)
	}
	if got := ids(ts.mustDo(http.StatusOK, "GET", v1+"/m.annotation/m.reaction", aliceTok, nil)); !eq(got, reaction) {
		t.Fatalf("annotations = %v", got)
	}
	rec := ts.mustDo(http.StatusOK, "GET", v1+"/m.annotation?recurse=true", aliceTok, nil)
	if got := ids(rec); !eq(got, nested, reaction) || rec["recursion_depth"] != float64(3) {
		t.Fatalf("recursive annotations = %v (%v)", got, rec["recursion_depth"])
	}
	// Paging one at a time.
	var paged []string
	q := "?limit=1"
	for i := 0; i < 10; i++ {
		out := ts.mustDo(http.StatusOK, "GET", v1+q, aliceTok, nil)
		paged = append(paged, ids(out)...)
		next, _ := out["next_batch"].(string)
		if next == "" {
			break
		}
		q = "?limit=1&from=" + url.QueryEscape(next)
	}
	if !eq(paged, edit, reaction, t2, t1) {
		t.Fatalf("paged relations = %v", paged)
	}
	ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", v1, daveTok, nil)
	ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", "/_matrix/client/v1/rooms/"+url.PathEscape(roomID)+"/relations/"+url.PathEscape("$nope"), aliceTok, nil)
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "GET", v1+"?recurse=maybe", aliceTok, nil)
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "GET", v1+"?from=zzz", aliceTok, nil)
	ts.wantErr(http.StatusUnauthorized, "M_MISSING_TOKEN", "GET", v1, "", nil)

	// The root carries bundled aggregations.
	ev := ts.mustDo(http.StatusOK, "GET", rmRoomPath(roomID, "/event/"+url.PathEscape(root)), carolTok, nil)
	rels, _ := ev["unsigned"].(map[string]any)["m.relations"].(map[string]any)
	th, _ := rels["m.thread"].(map[string]any)
	if th == nil || th["count"] != float64(2) || th["current_user_participated"] != false ||
		th["latest_event"].(map[string]any)["event_id"] != t2 {
		t.Fatalf("bundled m.thread for carol = %v", rels)
	}
	if rep, _ := rels["m.replace"].(map[string]any); rep == nil || rep["event_id"] != edit {
		t.Fatalf("bundled m.replace = %v", rels)
	}

	// Threads list: newest activity first, with the summary.
	other := rmSend(t, ts, bobTok, roomID, "other root")
	rmSendContent(t, ts, bobTok, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": "o1",
		"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": other}})
	threads := "/_matrix/client/v1/rooms/" + url.PathEscape(roomID) + "/threads"
	out := ts.mustDo(http.StatusOK, "GET", threads, aliceTok, nil)
	if got := ids(out); !eq(got, other, root) {
		t.Fatalf("threads = %v", got)
	}
	first := rmChunk(t, out, "chunk")[1]
	sum := first["unsigned"].(map[string]any)["m.relations"].(map[string]any)["m.thread"].(map[string]any)
	if sum["count"] != float64(2) || sum["current_user_participated"] != true {
		t.Fatalf("thread summary = %v", sum)
	}
	out = ts.mustDo(http.StatusOK, "GET", threads+"?limit=1", aliceTok, nil)
	if got := ids(out); !eq(got, other) || out["next_batch"] == nil {
		t.Fatalf("threads page 1 = %v %v", got, out["next_batch"])
	}
	out = ts.mustDo(http.StatusOK, "GET", threads+"?limit=1&from="+url.QueryEscape(out["next_batch"].(string)), aliceTok, nil)
	if got := ids(out); !eq(got, root) || out["next_batch"] != nil {
		t.Fatalf("threads page 2 = %v %v", got, out["next_batch"])
	}
	if got := ids(ts.mustDo(http.StatusOK, "GET", threads+"?include=participated", aliceTok, nil)); !eq(got, root) {
		t.Fatalf("alice's participated threads = %v", got)
	}
	if got := ids(ts.mustDo(http.StatusOK, "GET", threads+"?include=participated", carolTok, nil)); len(got) != 0 {
		t.Fatalf("carol's participated threads = %v", got)
	}
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "GET", threads+"?include=some", aliceTok, nil)
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "GET", threads, daveTok, nil)
	_ = alice
}
