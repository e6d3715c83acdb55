package clientapi

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/agentspace/agentspace/rooms"
)

func TestProfileReadWrite(t *testing.T) {
	ts := newTestServer(t)
	uid, tok, _ := ts.signUp("alice", testPassword)
	_, bobTok := ts.createUser("bob") // no display name set
	base := "/_matrix/client/v3/profile/"

	out := ts.mustDo(http.StatusOK, "GET", base+uid, "", nil)
	if out["displayname"] != "alice" {
		t.Fatalf("profile: %v", out)
	}
	if out := ts.mustDo(http.StatusOK, "GET", base+"@bob:localhost", tok, nil); len(out) != 0 {
		t.Fatalf("bob's empty profile: %v", out)
	}
	if out := ts.mustDo(http.StatusOK, "GET", base+"@bob:localhost/displayname", "", nil); len(out) != 0 {
		t.Fatalf("bob's displayname: %v", out)
	}
	ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", base+"@nobody:localhost", "", nil)
	ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", base+"@nobody:localhost/avatar_url", "", nil)
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "GET", base+"notauser", "", nil)

	ts.mustDo(http.StatusOK, "PUT", base+uid+"/displayname", tok, map[string]any{"displayname": "Alice A."})
	ts.mustDo(http.StatusOK, "PUT", base+uid+"/avatar_url", tok, map[string]any{"avatar_url": "mxc://localhost/abc"})
	out = ts.mustDo(http.StatusOK, "GET", base+uid, "", nil)
	if out["displayname"] != "Alice A." || out["avatar_url"] != "mxc://localhost/abc" {
		t.Fatalf("profile after update: %v", out)
	}
	if out := ts.mustDo(http.StatusOK, "GET", base+uid+"/avatar_url", "", nil); out["avatar_url"] != "mxc://localhost/abc" || len(out) != 1 {
		t.Fatalf("avatar_url: %v", out)
	}
	// "" removes a field.
	ts.mustDo(http.StatusOK, "PUT", base+uid+"/avatar_url", tok, map[string]any{"avatar_url": ""})
	if out := ts.mustDo(http.StatusOK, "GET", base+uid, "", nil); out["avatar_url"] != nil || out["displayname"] != "Alice A." {
		t.Fatalf("after removing avatar: %v", out)
	}

	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "PUT", base+uid+"/displayname", bobTok, map[string]any{"displayname": "hacked"})
	ts.wantErr(http.StatusUnauthorized, "M_MISSING_TOKEN", "PUT", base+uid+"/displayname", "", map[string]any{"displayname": "x"})
	ts.wantErr(http.StatusBadRequest, "M_MISSING_PARAM", "PUT", base+uid+"/displayname", tok, map[string]any{"name": "x"})
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "PUT", base+uid+"/displayname", tok, map[string]any{"displayname": 5})
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "PUT", base+uid+"/displayname", tok, map[string]any{"displayname": strings.Repeat("x", 257)})
	ts.wantErr(http.StatusBadRequest, "M_NOT_JSON", "PUT", base+uid+"/displayname", tok, "{{")
	ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "PUT", base+"@nobody:localhost/displayname", tok, map[string]any{"displayname": "x"})
}

func TestProfilePropagatesToRooms(t *testing.T) {
	ts := newTestServer(t)
	uid, tok, _ := ts.signUp("alice", testPassword)
	ctx := context.Background()
	name := "alice"
	roomID, err := ts.Rooms().CreateRoom(ctx, rooms.CreateRoomRequest{Creator: uid, Preset: rooms.PresetPrivateChat, CreatorDisplayName: &name})
	if err != nil {
		t.Fatal(err)
	}
	// Left rooms are not touched.
	leftRoom, err := ts.Rooms().CreateRoom(ctx, rooms.CreateRoomRequest{Creator: uid})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ts.Rooms().ChangeMembership(ctx, leftRoom, rooms.MembershipRequest{Sender: uid, Target: uid, Membership: "leave"}); err != nil {
		t.Fatal(err)
	}

	// Other member content survives a profile change.
	tmp := "tmp"
	if _, err := ts.Rooms().ChangeMembership(ctx, roomID, rooms.MembershipRequest{Sender: uid, Target: uid, Membership: "join",
		DisplayName: &tmp, Extra: map[string]json.RawMessage{"org.example.flag": json.RawMessage(`true`)}}); err != nil {
		t.Fatal(err)
	}

	ts.mustDo(http.StatusOK, "PUT", "/_matrix/client/v3/profile/"+uid+"/displayname", tok, map[string]any{"displayname": "Alice Liddell"})
	ts.mustDo(http.StatusOK, "PUT", "/_matrix/client/v3/profile/"+uid+"/avatar_url", tok, map[string]any{"avatar_url": "mxc://localhost/rabbit"})

	ev, err := ts.Rooms().CurrentStateEvent(ctx, roomID, "m.room.member", uid)
	if err != nil || ev == nil {
		t.Fatalf("member event: %v", err)
	}
	var content map[string]any
	if err := json.Unmarshal(ev.Content(), &content); err != nil {
		t.Fatal(err)
	}
	if content["membership"] != "join" || content["displayname"] != "Alice Liddell" || content["avatar_url"] != "mxc://localhost/rabbit" ||
		content["org.example.flag"] != true {
		t.Fatalf("member content: %v", content)
	}
	m, err := ts.db.MembershipOf(ctx, leftRoom, uid)
	if err != nil || m.Membership != "leave" {
		t.Fatalf("left room membership: %+v %v", m, err)
	}
}
