package rooms

import (
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// TestFastBuildMatches checks that the one-pass builder produces exactly the
// event gomatrixserverlib's EventBuilder.Build produces (same bytes, so the
// same content hash, signature and event id) in every room version it
// handles, for contents that exercise canonical JSON.
func TestFastBuildMatches(t *testing.T) {
	key := &SigningKey{ID: "ed25519:a_Bc1", PrivateKey: ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))}
	now := time.UnixMilli(1_700_000_000_123)
	contents := []string{
		`{"msgtype":"m.text","body":"hello"}`,
		`{"body":"hello","msgtype":"m.text"}`,
		` { "z" : 1, "a" : [ 3, 2, {"y":true,"b":null} ], "m": {"k": "v"} } `,
		`{"body":"<b>&amp;</b> \u003cscript\u003e \u2028 \u2029 é 😀 \ud83d\ude00"}`,
		`{"body":"quote \" backslash \\ slash \/ tab \t nl \n nul \u0000 bell \u0007 del \u007f"}`,
		`{"body":"` + "raw é ü 中文 \u2028" + `"}`,
		`{"m.relates_to":{"rel_type":"m.thread","event_id":"$abc"},"body":"x"}`,
		`{"n":-1,"big":9007199254740991,"zero":0}`,
		`{}`,
	}
	types := []string{"m.room.message", "m.room.encrypted", "m.reaction", "m.sticker", "org.example.<agent>&\"type\""}
	var versions []string
	for id := range gomatrixserverlib.RoomVersions() {
		versions = append(versions, string(id))
	}
	sort.Strings(versions)
	checked := 0
	for _, vid := range versions {
		v := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(vid))
		if !fastBuildFor(v).ok {
			if v.EventFormat() == gomatrixserverlib.EventFormatV2 {
				t.Errorf("room version %s: one-pass builder unexpectedly unavailable", vid)
			}
			continue
		}
		roomID := "!room:example.org"
		if v.DomainlessRoomIDs() {
			roomID = "!Abc_def-123"
		}
		for _, typ := range types {
			for i, c := range contents {
				t.Run(fmt.Sprintf("v%s/%s/%d", vid, typ, i), func(t *testing.T) {
					newBuilder := func() *gomatrixserverlib.EventBuilder {
						return v.NewEventBuilderFromProtoEvent(&gomatrixserverlib.ProtoEvent{
							SenderID: "@agent:example.org", RoomID: roomID, Type: typ,
							Content: spec.RawJSON(c), Depth: 42,
							PrevEvents: []string{"$prev_event+/id"},
							AuthEvents: []string{"$create", "$power", "$member"},
						})
					}
					want, wantErr := newBuilder().Build(now, "example.org", key.ID, key.PrivateKey)
					got, gotErr := buildFast(newBuilder(), v, now, "example.org", key)
					if (wantErr != nil) != (gotErr != nil) {
						t.Fatalf("errors differ: Build %v, buildFast %v", wantErr, gotErr)
					}
					if wantErr != nil {
						return
					}
					if string(got.JSON()) != string(want.JSON()) {
						t.Fatalf("JSON differs\nBuild:     %s\nbuildFast: %s", want.JSON(), got.JSON())
					}
					if got.EventID() != want.EventID() {
						t.Fatalf("event id %s, Build computes %s", got.EventID(), want.EventID())
					}
					checked++
				})
			}
		}
	}
	if checked == 0 {
		t.Fatal("no event compared")
	}
}

// TestFastBuildRejectsWhatBuildRejects covers contents Build refuses in the
// room versions with strict canonical JSON.
func TestFastBuildRejectsWhatBuildRejects(t *testing.T) {
	key := &SigningKey{ID: "ed25519:k", PrivateKey: ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))}
	v := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersionV10)
	for _, c := range []string{`{"n":9007199254740992}`, `{"f":1.5}`, `{"e":1e3}`} {
		eb := v.NewEventBuilderFromProtoEvent(&gomatrixserverlib.ProtoEvent{
			SenderID: "@a:example.org", RoomID: "!r:example.org", Type: "m.room.message",
			Content: spec.RawJSON(c), Depth: 2, PrevEvents: []string{"$p"}, AuthEvents: []string{"$c"},
		})
		if _, err := buildFast(eb, v, time.Now(), "example.org", key); err == nil {
			t.Errorf("content %s: buildFast accepted what Build rejects", c)
		}
		if _, err := eb.Build(time.Now(), "example.org", key.ID, key.PrivateKey); err == nil {
			t.Errorf("content %s: Build accepted it (test assumption wrong)", c)
		}
	}
}

// TestFastBuildable keeps state events and the event types whose redaction
// keeps content on gomatrixserverlib's builder.
func TestFastBuildable(t *testing.T) {
	v := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersionV10)
	for typ, want := range map[string]bool{
		"m.room.message": true, "m.room.encrypted": true, "m.reaction": true, "org.example.agent": true,
		"m.room.member": false, "m.room.redaction": false, "m.room.power_levels": false,
		"m.room.create": false, "m.room.join_rules": false, "m.room.history_visibility": false,
		"m.room.aliases": false, "m.room.name": false,
	} {
		if got := fastBuildable(v, EventRequest{Type: typ, Content: json.RawMessage(`{}`)}); got != want {
			t.Errorf("fastBuildable(%s) = %v, want %v", typ, got, want)
		}
	}
	if fastBuildable(v, EventRequest{Type: "m.room.message", StateKey: StrPtr("")}) {
		t.Error("a state event must not take the one-pass builder")
	}
	v1 := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersionV1)
	if fastBuildable(v1, EventRequest{Type: "m.room.message"}) {
		t.Error("room version 1 (event ids not hashes) must not take the one-pass builder")
	}
}
