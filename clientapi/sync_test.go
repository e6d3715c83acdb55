package clientapi

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"testing"
	"time"
)

type syncResult struct {
	NextBatch string `json:"next_batch"`
	Rooms     struct {
		Join map[string]struct {
			Summary  map[string]any                    `json:"summary"`
			State    struct{ Events []map[string]any } `json:"state"`
			Timeline struct {
				Events    []map[string]any `json:"events"`
				Limited   bool             `json:"limited"`
				PrevBatch string           `json:"prev_batch"`
			} `json:"timeline"`
			Ephemeral           struct{ Events []map[string]any } `json:"ephemeral"`
			AccountData         struct{ Events []map[string]any } `json:"account_data"`
			UnreadNotifications map[string]int                    `json:"unread_notifications"`
		} `json:"join"`
		Invite map[string]struct {
			InviteState struct{ Events []map[string]any } `json:"invite_state"`
		} `json:"invite"`
		Leave map[string]struct {
			Timeline struct{ Events []map[string]any } `json:"timeline"`
		} `json:"leave"`
	} `json:"rooms"`
	AccountData            struct{ Events []map[string]any } `json:"account_data"`
	ToDevice               struct{ Events []map[string]any } `json:"to_device"`
	DeviceLists            map[string][]string               `json:"device_lists"`
	DeviceOneTimeKeysCount map[string]int                    `json:"device_one_time_keys_count"`
}

func (ts *testServer) sync(token, since string, timeoutMS int, filter string) syncResult {
	ts.t.Helper()
	q := url.Values{}
	if since != "" {
		q.Set("since", since)
	}
	q.Set("timeout", fmt.Sprint(timeoutMS))
	if filter != "" {
		q.Set("filter", filter)
	}
	status, raw := ts.doRaw("GET", "/_matrix/client/v3/sync?"+q.Encode(), token, nil)
	if status != http.StatusOK {
		ts.t.Fatalf("sync: %d %s", status, raw)
	}
	var r syncResult
	if err := json.Unmarshal(raw, &r); err != nil {
		ts.t.Fatal(err)
	}
	return r
}

func (ts *testServer) createRoom(token string, body map[string]any) string {
	ts.t.Helper()
	return ts.mustDo(200, "POST", "/_matrix/client/v3/createRoom", token, body)["room_id"].(string)
}

func (ts *testServer) send(token, roomID, body string) string {
	ts.t.Helper()
	txn := fmt.Sprintf("t%d", time.Now().UnixNano())
	return ts.mustDo(200, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/send/m.room.message/"+txn, token,
		map[string]any{"msgtype": "m.text", "body": body})["event_id"].(string)
}

func timelineBodies(evs []map[string]any) []string {
	var out []string
	for _, e := range evs {
		if e["type"] == "m.room.message" {
			out = append(out, e["content"].(map[string]any)["body"].(string))
		}
	}
	return out
}

func TestSyncInitialAndIncremental(t *testing.T) {
	ts := newTestServer(t)
	alice, aliceTok := ts.createUser("alice")
	_, bobTok := ts.createUser("bob")
	roomID := ts.createRoom(aliceTok, map[string]any{"preset": "public_chat", "name": "Agents"})
	ts.send(aliceTok, roomID, "first")

	initial := ts.sync(aliceTok, "", 0, "")
	jr, ok := initial.Rooms.Join[roomID]
	if !ok {
		t.Fatalf("initial sync lacks the room: %+v", initial.Rooms)
	}
	if got := timelineBodies(jr.Timeline.Events); len(got) != 1 || got[0] != "first" {
		t.Fatalf("timeline bodies %v", got)
	}
	// Every state event is either in state or in the timeline.
	types := map[string]bool{}
	for _, e := range append(jr.State.Events, jr.Timeline.Events...) {
		types[e["type"].(string)] = true
	}
	for _, want := range []string{"m.room.create", "m.room.power_levels", "m.room.join_rules", "m.room.name", "m.room.member"} {
		if !types[want] {
			t.Errorf("initial sync lacks %s", want)
		}
	}
	if jr.Summary["m.joined_member_count"] != float64(1) {
		t.Errorf("summary %v", jr.Summary)
	}
	if _, ok := initial.DeviceOneTimeKeysCount["signed_curve25519"]; !ok {
		t.Errorf("device_one_time_keys_count missing signed_curve25519: %v", initial.DeviceOneTimeKeysCount)
	}

	// Nothing new: a zero-timeout incremental sync is empty.
	empty := ts.sync(aliceTok, initial.NextBatch, 0, "")
	if len(empty.Rooms.Join) != 0 {
		t.Fatalf("empty incremental sync has rooms: %+v", empty.Rooms.Join)
	}

	// A long-poll wakes as soon as bob joins and sends.
	done := make(chan syncResult, 1)
	go func() { done <- ts.sync(aliceTok, empty.NextBatch, 20000, "") }()
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	ts.mustDo(200, "POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID), bobTok, map[string]any{})
	var woke syncResult
	select {
	case woke = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("long-poll did not wake")
	}
	if time.Since(start) > 5*time.Second {
		t.Fatalf("long-poll took %v", time.Since(start))
	}
	if len(woke.Rooms.Join[roomID].Timeline.Events) == 0 {
		t.Fatalf("woken sync has no timeline: %+v", woke.Rooms.Join)
	}
	_ = alice

	// Bob's first sync after joining shows the room with its full state.
	bobSync := ts.sync(bobTok, "", 0, "")
	if _, ok := bobSync.Rooms.Join[roomID]; !ok {
		t.Fatal("bob's sync lacks the joined room")
	}
}

func TestSyncLimitedTimelineRoundTripsWithMessages(t *testing.T) {
	ts := newTestServer(t)
	_, tok := ts.createUser("alice")
	roomID := ts.createRoom(tok, map[string]any{})
	first := ts.sync(tok, "", 0, "")
	for i := 0; i < 30; i++ {
		ts.send(tok, roomID, fmt.Sprintf("m%02d", i))
	}
	filter := `{"room":{"timeline":{"limit":5}}}`
	r := ts.sync(tok, first.NextBatch, 0, filter)
	tl := r.Rooms.Join[roomID].Timeline
	if !tl.Limited || len(tl.Events) != 5 {
		t.Fatalf("want limited timeline of 5, got limited=%v len=%d", tl.Limited, len(tl.Events))
	}
	if got := timelineBodies(tl.Events); got[0] != "m25" || got[4] != "m29" {
		t.Fatalf("timeline %v", got)
	}
	// prev_batch continues exactly where the timeline starts.
	msgs := ts.mustDo(200, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/messages?dir=b&limit=3&from="+url.QueryEscape(tl.PrevBatch), tok, nil)
	chunk := msgs["chunk"].([]any)
	if len(chunk) != 3 || chunk[0].(map[string]any)["content"].(map[string]any)["body"] != "m24" {
		t.Fatalf("messages from prev_batch: %v", chunk)
	}
}

func TestSyncInviteLeaveAndFilters(t *testing.T) {
	ts := newTestServer(t)
	_, aliceTok := ts.createUser("alice")
	bob, bobTok := ts.createUser("bob")
	roomID := ts.createRoom(aliceTok, map[string]any{"name": "secret"})
	base := ts.sync(bobTok, "", 0, "")
	ts.mustDo(200, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/invite", aliceTok, map[string]any{"user_id": bob})
	r := ts.sync(bobTok, base.NextBatch, 5000, "")
	inv, ok := r.Rooms.Invite[roomID]
	if !ok {
		t.Fatalf("invite missing: %+v", r.Rooms)
	}
	var sawName, sawMember bool
	for _, e := range inv.InviteState.Events {
		sawName = sawName || e["type"] == "m.room.name"
		sawMember = sawMember || (e["type"] == "m.room.member" && e["state_key"] == bob)
	}
	if !sawName || !sawMember {
		t.Fatalf("invite_state %v", inv.InviteState.Events)
	}
	// Bob joins, then leaves: the room appears under leave.
	ts.mustDo(200, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/join", bobTok, map[string]any{})
	afterJoin := ts.sync(bobTok, r.NextBatch, 5000, "")
	ts.mustDo(200, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/leave", bobTok, map[string]any{})
	afterLeave := ts.sync(bobTok, afterJoin.NextBatch, 5000, "")
	if _, ok := afterLeave.Rooms.Leave[roomID]; !ok {
		t.Fatalf("leave missing: %+v", afterLeave.Rooms)
	}
	// Messages after leaving are not delivered.
	ts.send(aliceTok, roomID, "after bob left")
	later := ts.sync(bobTok, afterLeave.NextBatch, 0, "")
	if len(later.Rooms.Join)+len(later.Rooms.Leave) != 0 {
		t.Fatalf("bob still gets the room: %+v", later.Rooms)
	}

	// Stored filter by id works like the inline one.
	fid := ts.mustDo(200, "POST", "/_matrix/client/v3/user/"+url.PathEscape(bob)+"/filter", bobTok,
		map[string]any{"room": map[string]any{"timeline": map[string]any{"limit": 1}}})["filter_id"].(string)
	byID := ts.sync(aliceTok, "", 0, "")
	_ = byID
	ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", "/_matrix/client/v3/sync?filter=999999", bobTok, nil)
	ts.mustDo(200, "GET", "/_matrix/client/v3/sync?filter="+fid, bobTok, nil)
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "GET", "/_matrix/client/v3/sync?since=garbage", bobTok, nil)
	ts.wantErr(http.StatusUnauthorized, "M_MISSING_TOKEN", "GET", "/_matrix/client/v3/sync", "", nil)
}

func TestSyncEphemeralAccountDataToDevice(t *testing.T) {
	ts := newTestServer(t)
	alice, aliceTok := ts.createUser("alice")
	bob, bobTok := ts.createUser("bob")
	roomID := ts.createRoom(aliceTok, map[string]any{"preset": "public_chat"})
	ts.mustDo(200, "POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID), bobTok, map[string]any{})
	eventID := ts.send(aliceTok, roomID, "read me")
	base := ts.sync(aliceTok, "", 0, "")
	if base.Rooms.Join[roomID].UnreadNotifications["notification_count"] != 0 {
		t.Fatalf("own message counted unread: %v", base.Rooms.Join[roomID].UnreadNotifications)
	}
	bobBase := ts.sync(bobTok, "", 0, "")
	if bobBase.Rooms.Join[roomID].UnreadNotifications["notification_count"] != 1 {
		t.Fatalf("bob unread: %v", bobBase.Rooms.Join[roomID].UnreadNotifications)
	}

	ts.mustDo(200, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/typing/"+url.PathEscape(bob), bobTok, map[string]any{"typing": true, "timeout": 5000})
	ts.mustDo(200, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/receipt/m.read/"+url.PathEscape(eventID), bobTok, map[string]any{})
	ts.mustDo(200, "PUT", "/_matrix/client/v3/user/"+url.PathEscape(alice)+"/account_data/org.example.test", aliceTok, map[string]any{"x": 1})
	ts.mustDo(200, "PUT", "/_matrix/client/v3/sendToDevice/org.example.ping/txn1", bobTok,
		map[string]any{"messages": map[string]any{alice: map[string]any{"*": map[string]any{"hello": "alice"}}}})

	r := ts.sync(aliceTok, base.NextBatch, 5000, "")
	var typing, receipt bool
	for _, e := range r.Rooms.Join[roomID].Ephemeral.Events {
		c := e["content"].(map[string]any)
		switch e["type"] {
		case "m.typing":
			users := c["user_ids"].([]any)
			typing = len(users) == 1 && users[0] == bob
		case "m.receipt":
			_, receipt = c[eventID].(map[string]any)["m.read"].(map[string]any)[bob]
		}
	}
	if !typing || !receipt {
		t.Fatalf("ephemeral typing=%v receipt=%v: %v", typing, receipt, r.Rooms.Join[roomID].Ephemeral.Events)
	}
	var sawData bool
	for _, e := range r.AccountData.Events {
		sawData = sawData || e["type"] == "org.example.test"
	}
	if !sawData {
		t.Fatalf("account data missing: %v", r.AccountData.Events)
	}
	if len(r.ToDevice.Events) != 1 || r.ToDevice.Events[0]["sender"] != bob {
		t.Fatalf("to_device: %v", r.ToDevice.Events)
	}
	// Acknowledged to-device messages are not delivered again.
	again := ts.sync(aliceTok, r.NextBatch, 0, "")
	if len(again.ToDevice.Events) != 0 {
		t.Fatalf("to_device delivered twice: %v", again.ToDevice.Events)
	}
}

func TestSyncLazyLoadMembers(t *testing.T) {
	ts := newTestServer(t)
	_, aliceTok := ts.createUser("alice")
	roomID := ts.createRoom(aliceTok, map[string]any{"preset": "public_chat"})
	var bobTok string
	for i := 0; i < 5; i++ {
		_, tok := ts.createUser(fmt.Sprintf("u%d", i))
		ts.mustDo(200, "POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID), tok, map[string]any{})
		bobTok = tok
	}
	for i := 0; i < 10; i++ {
		ts.send(aliceTok, roomID, fmt.Sprintf("m%d", i))
	}
	_ = bobTok
	r := ts.sync(aliceTok, "", 0, `{"room":{"timeline":{"limit":3},"state":{"lazy_load_members":true}}}`)
	members := 0
	for _, e := range r.Rooms.Join[roomID].State.Events {
		if e["type"] == "m.room.member" {
			members++
		}
	}
	if members != 1 {
		t.Fatalf("lazy loading sent %d member events, want only alice's", members)
	}
}
