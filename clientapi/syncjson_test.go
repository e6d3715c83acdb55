package clientapi

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/agentspace/agentspace/rooms"
	"github.com/agentspace/agentspace/storage"
)

// The hand-written /sync encoder must write exactly what encoding/json
// writes for the same value.
func TestSyncResponseJSONMatchesEncodingJSON(t *testing.T) {
	event := func(i int, body string) json.RawMessage {
		pos := storage.StreamPos(i + 1)
		txn, dev := fmt.Sprintf("txn%d", i), "DEV"
		e := &storage.Event{Pos: pos, EventID: fmt.Sprintf("$ev%d", i), RoomID: "!r:localhost", Type: "m.room.message",
			Sender: "@a:localhost", OriginTS: 1700000000000 + int64(i),
			PDUJSON:  []byte(`{"type":"m.room.message","content":{"msgtype":"m.text","body":` + mustMarshalString(body) + `},"sender":"@a:localhost","origin_server_ts":1}`),
			Unsigned: []byte(`{}`), TxnID: &txn, TxnDevice: &dev}
		if i%3 == 1 {
			e.Unsigned = []byte(`{"prev_content":{"membership":"join"}}`)
		}
		return renderSyncEvent(e, rooms.Viewer{UserID: "@a:localhost", DeviceID: "DEV"}, 1700000001000, i%2 == 0)
	}
	bodies := []string{"hello", `<b>&"quoted"</b>`, "naïve ☃ \u2028 line", "tab\tnew\nline", ""}
	rng := rand.New(rand.NewPCG(1, 2))
	var cases []*syncResponse
	cases = append(cases, &syncResponse{}) // every map and slice nil
	cases = append(cases, &syncResponse{Rooms: syncRooms{Join: map[string]*joinedRoom{"!zero:x": {}}, Leave: map[string]*leftRoom{"!zero:x": {}}},
		DeviceLists: deviceLists{Left: []string{}}})
	for n := 0; n < 50; n++ {
		r := &syncResponse{
			NextBatch:              fmt.Sprintf("s%d_%d", rng.IntN(1000), rng.IntN(10)),
			Rooms:                  syncRooms{Join: map[string]*joinedRoom{}, Invite: map[string]*invitedRoom{}, Leave: map[string]*leftRoom{}, Knock: map[string]any{}},
			AccountData:            eventList{Events: []any{}},
			Presence:               eventList{Events: []any{map[string]any{"type": "m.presence", "sender": "@b:localhost", "content": map[string]any{"presence": "online"}}}},
			ToDevice:               eventList{Events: []any{}},
			DeviceOneTimeKeysCount: map[string]int{"signed_curve25519": rng.IntN(50)},
		}
		if n%4 == 0 {
			r.OrgMatrixMSC2732FallbackTypes = []string{"signed_curve25519"}
			r.DeviceUnusedFallbackKeyTypes = []string{"signed_curve25519"}
			r.DeviceLists = deviceLists{Changed: []string{"@c:localhost"}}
		}
		for k := rng.IntN(4); k > 0; k-- {
			jr := &joinedRoom{State: stateList{Events: []json.RawMessage{}}, Ephemeral: eventList{Events: []any{}}, AccountData: eventList{Events: []any{}}}
			for e := rng.IntN(6); e > 0; e-- {
				jr.Timeline.Events = append(jr.Timeline.Events, event(rng.IntN(30), bodies[rng.IntN(len(bodies))]))
			}
			if rng.IntN(3) == 0 {
				jr.State.Events = append(jr.State.Events, event(rng.IntN(30), "state"))
				jr.Timeline.Limited, jr.Timeline.PrevBatch = true, "s12"
				one := 1
				jr.Summary = roomSummary{Heroes: []string{"@h:localhost"}, JoinedMemberCount: &one}
				jr.Ephemeral.Events = append(jr.Ephemeral.Events, map[string]any{"type": "m.typing", "content": map[string]any{"user_ids": []string{"@a:localhost"}}})
			}
			if rng.IntN(5) == 0 {
				jr.Timeline.Events = append(jr.Timeline.Events, nil)
			}
			r.Rooms.Join[fmt.Sprintf("!room%d<&>:localhost", rng.IntN(100))] = jr
		}
		if n%5 == 0 {
			r.Rooms.Leave["!left:localhost"] = &leftRoom{State: stateList{Events: []json.RawMessage{event(3, "bye")}},
				Timeline: timeline{Events: []json.RawMessage{event(4, "gone")}, PrevBatch: "s4"}, AccountData: eventList{Events: []any{}}}
			r.Rooms.Leave["!nil:localhost"] = nil
			ir := &invitedRoom{}
			ir.InviteState.Events = []rooms.StrippedEvent{}
			r.Rooms.Invite["!inv:localhost"] = ir
		}
		cases = append(cases, r)
	}
	for i, r := range cases {
		want, err := json.Marshal(r)
		if err != nil {
			t.Fatalf("case %d: json.Marshal: %v", i, err)
		}
		got, err := r.appendJSON(nil)
		if err != nil {
			t.Fatalf("case %d: appendJSON: %v", i, err)
		}
		if string(got) != string(want) {
			t.Fatalf("case %d differs\n got: %s\nwant: %s", i, got, want)
		}
	}
}

// An unsigned object that is not compact (or not JSON) must not be copied
// into the response as it is.
func TestRenderSyncEventKeepsResponseValid(t *testing.T) {
	for _, unsigned := range []string{`{ "prev_content" : {"a": 1} }`, `{"x":}`, "{\n}"} {
		e := &storage.Event{Pos: 1, EventID: "$e", RoomID: "!r:localhost", Type: "m.room.message", Sender: "@a:localhost",
			PDUJSON: []byte(`{"type":"m.room.message","content":{"body":"x"},"sender":"@a:localhost","origin_server_ts":1}`), Unsigned: []byte(unsigned)}
		r := &syncResponse{Rooms: syncRooms{Join: map[string]*joinedRoom{"!r:localhost": {
			Timeline: timeline{Events: []json.RawMessage{renderSyncEvent(e, rooms.Viewer{}, 2, false)}}}}}}
		got, err := r.appendJSON(nil)
		if err != nil {
			t.Fatalf("unsigned %q: %v", unsigned, err)
		}
		if !isCompactJSON(got) {
			t.Fatalf("unsigned %q: response is not compact valid JSON: %s", unsigned, got)
		}
	}
}

func mustMarshalString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
