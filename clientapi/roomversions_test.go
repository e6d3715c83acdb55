package clientapi

import (
	"net/url"
	"sort"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
)

// TestEveryStableRoomVersion creates a room of each stable version and runs
// the basic life of a room in it: join, message, redaction, state, sync.
func TestEveryStableRoomVersion(t *testing.T) {
	ts := newTestServer(t)
	_, aliceTok := ts.createUser("alice")
	_, bobTok := ts.createUser("bob")
	var versions []string
	for v := range gomatrixserverlib.StableRoomVersions() {
		versions = append(versions, string(v))
	}
	sort.Strings(versions)
	if len(versions) < 11 {
		t.Fatalf("expected at least versions 1..11 to be stable, got %v", versions)
	}
	for _, v := range versions {
		t.Run("v"+v, func(t *testing.T) {
			roomID := ts.createRoom(aliceTok, map[string]any{"room_version": v, "preset": "public_chat", "name": "v" + v})
			path := "/_matrix/client/v3/rooms/" + url.PathEscape(roomID)
			create := ts.mustDo(200, "GET", path+"/state/m.room.create", aliceTok, nil)
			if create["room_version"] != v {
				t.Fatalf("create content %v", create)
			}
			ts.mustDo(200, "POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID), bobTok, map[string]any{})
			eventID := ts.send(bobTok, roomID, "hello v"+v)
			ts.mustDo(200, "PUT", path+"/redact/"+url.PathEscape(eventID)+"/r1", bobTok, map[string]any{"reason": "test"})
			ev := ts.mustDo(200, "GET", path+"/event/"+url.PathEscape(eventID), aliceTok, nil)
			if content := ev["content"].(map[string]any); len(content) != 0 {
				t.Fatalf("redacted content %v", content)
			}
			if _, ok := ev["unsigned"].(map[string]any)["redacted_because"]; !ok {
				t.Fatalf("no redacted_because: %v", ev["unsigned"])
			}
			// A PL-0 member may not rename the room.
			ts.wantErr(403, "M_FORBIDDEN", "PUT", path+"/state/m.room.name", bobTok, map[string]any{"name": "nope"})
			r := ts.sync(bobTok, "", 0, "")
			if _, ok := r.Rooms.Join[roomID]; !ok {
				t.Fatalf("room missing from bob's sync")
			}
		})
	}
}
