package clientapi

import (
	"context"
	"net/http"
	"testing"

	"github.com/agentspace/agentspace/rooms"
)

// passwordAuth is an m.login.password UIA stage for user.
func passwordAuth(session any, user, password string) map[string]any {
	return map[string]any{"type": "m.login.password", "session": session, "password": password,
		"identifier": map[string]any{"type": "m.id.user", "user": user}}
}

// wantUIAChallenge asserts a 401 UIA answer offering the password stage and
// returns it.
func (ts *testServer) wantUIAChallenge(method, path, token string, body any) map[string]any {
	ts.t.Helper()
	out := ts.mustDo(http.StatusUnauthorized, method, path, token, body)
	flows, _ := out["flows"].([]any)
	if len(flows) != 1 {
		ts.t.Fatalf("%s %s: flows: %v", method, path, out)
	}
	stages, _ := flows[0].(map[string]any)["stages"].([]any)
	if len(stages) != 1 || stages[0] != "m.login.password" || out["session"] == nil {
		ts.t.Fatalf("%s %s: challenge: %v", method, path, out)
	}
	return out
}

func TestWhoamiAndLogout(t *testing.T) {
	ts := newTestServer(t)
	const whoami = "/_matrix/client/v3/account/whoami"
	ts.wantErr(http.StatusUnauthorized, "M_MISSING_TOKEN", "GET", whoami, "", nil)
	ts.wantErr(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "GET", whoami, "garbage", nil)
	uid, tok1, dev1 := ts.signUp("alice", testPassword)
	who := ts.mustDo(http.StatusOK, "GET", whoami, tok1, nil)
	if who["user_id"] != uid || who["device_id"] != dev1 || who["is_guest"] != false {
		t.Fatalf("whoami: %v", who)
	}
	// Old-style r0 path and the access_token query parameter work too.
	ts.mustDo(http.StatusOK, "GET", "/_matrix/client/r0/account/whoami?access_token="+tok1, "", nil)

	tok2 := ts.mustDo(http.StatusOK, "POST", "/_matrix/client/v3/login", "", passwordLogin("alice", testPassword))["access_token"].(string)
	ts.mustDo(http.StatusOK, "POST", "/_matrix/client/v3/logout", tok1, nil)
	ts.wantErr(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "GET", whoami, tok1, nil)
	// The device went with the token.
	devs := ts.mustDo(http.StatusOK, "GET", "/_matrix/client/v3/devices", tok2, nil)["devices"].([]any)
	if len(devs) != 1 || devs[0].(map[string]any)["device_id"] == dev1 {
		t.Fatalf("devices after logout: %v", devs)
	}

	tok3 := ts.mustDo(http.StatusOK, "POST", "/_matrix/client/v3/login", "", passwordLogin("alice", testPassword))["access_token"].(string)
	ts.mustDo(http.StatusOK, "POST", "/_matrix/client/v3/logout/all", tok2, nil)
	ts.wantErr(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "GET", whoami, tok2, nil)
	ts.wantErr(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "GET", whoami, tok3, nil)
	ts.wantErr(http.StatusUnauthorized, "M_MISSING_TOKEN", "POST", "/_matrix/client/v3/logout", "", nil)
	if ds, _ := ts.db.DevicesOfUser(context.Background(), uid); len(ds) != 0 {
		t.Fatalf("devices after logout/all: %d", len(ds))
	}
}

func TestChangePassword(t *testing.T) {
	ts := newTestServer(t)
	const path = "/_matrix/client/v3/account/password"
	_, tok, _ := ts.signUp("alice", testPassword)
	other := ts.mustDo(http.StatusOK, "POST", "/_matrix/client/v3/login", "", passwordLogin("alice", testPassword))["access_token"].(string)

	ch := ts.wantUIAChallenge("POST", path, tok, map[string]any{"new_password": "n3w"})
	// Wrong password: 401 again, with the error and the same session.
	bad := ts.mustDo(http.StatusUnauthorized, "POST", path, tok, map[string]any{"new_password": "n3w",
		"auth": passwordAuth(ch["session"], "alice", "wrong")})
	if bad["errcode"] != "M_FORBIDDEN" || bad["session"] != ch["session"] || bad["flows"] == nil {
		t.Fatalf("wrong password: %v", bad)
	}
	// Someone else's identifier is refused.
	ts.signUp("mallory", "mallorypw")
	bad = ts.mustDo(http.StatusUnauthorized, "POST", path, tok, map[string]any{"new_password": "n3w",
		"auth": passwordAuth(ch["session"], "@mallory:localhost", "mallorypw")})
	if bad["errcode"] != "M_FORBIDDEN" {
		t.Fatalf("other user: %v", bad)
	}
	// A session of another operation is refused.
	dch := ts.wantUIAChallenge("POST", "/_matrix/client/v3/account/deactivate", tok, map[string]any{})
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "POST", path, tok, map[string]any{"new_password": "n3w",
		"auth": passwordAuth(dch["session"], "alice", testPassword)})

	ts.mustDo(http.StatusOK, "POST", path, tok, map[string]any{"new_password": "n3w",
		"auth": passwordAuth(ch["session"], "alice", testPassword)})
	// logout_devices defaults to true: the other session is gone, this one stays.
	ts.mustDo(http.StatusOK, "GET", "/_matrix/client/v3/account/whoami", tok, nil)
	ts.wantErr(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "GET", "/_matrix/client/v3/account/whoami", other, nil)
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "POST", "/_matrix/client/v3/login", "", passwordLogin("alice", testPassword))
	other = ts.mustDo(http.StatusOK, "POST", "/_matrix/client/v3/login", "", passwordLogin("alice", "n3w"))["access_token"].(string)

	// logout_devices: false keeps the others.
	ch = ts.wantUIAChallenge("POST", path, tok, map[string]any{})
	ts.mustDo(http.StatusOK, "POST", path, tok, map[string]any{"new_password": "n3w2", "logout_devices": false,
		"auth": passwordAuth(ch["session"], "alice", "n3w")})
	ts.mustDo(http.StatusOK, "GET", "/_matrix/client/v3/account/whoami", other, nil)

	// new_password is required.
	ch = ts.wantUIAChallenge("POST", path, tok, map[string]any{})
	ts.wantErr(http.StatusBadRequest, "M_MISSING_PARAM", "POST", path, tok, map[string]any{
		"auth": passwordAuth(ch["session"], "alice", "n3w2")})
	ts.wantErr(http.StatusUnauthorized, "M_MISSING_TOKEN", "POST", path, "", map[string]any{})
	ts.wantErr(http.StatusBadRequest, "M_NOT_JSON", "POST", path, tok, "][")
}

func TestDeactivate(t *testing.T) {
	ts := newTestServer(t)
	const path = "/_matrix/client/v3/account/deactivate"
	uid, tok, _ := ts.signUp("alice", testPassword)
	bob, bobTok := ts.createUser("bob")
	ctx := context.Background()
	joined, err := ts.Rooms().CreateRoom(ctx, rooms.CreateRoomRequest{Creator: uid, Preset: rooms.PresetPublicChat})
	if err != nil {
		t.Fatal(err)
	}
	invitedTo, err := ts.Rooms().CreateRoom(ctx, rooms.CreateRoomRequest{Creator: bob, Invite: []string{uid}})
	if err != nil {
		t.Fatal(err)
	}

	ch := ts.wantUIAChallenge("POST", path, tok, map[string]any{})
	out := ts.mustDo(http.StatusOK, "POST", path, tok, map[string]any{"auth": passwordAuth(ch["session"], "alice", testPassword)})
	if out["id_server_unbind_result"] != "no-support" {
		t.Fatalf("deactivate: %v", out)
	}
	ts.wantErr(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "GET", "/_matrix/client/v3/account/whoami", tok, nil)
	ts.wantErr(http.StatusForbidden, "M_USER_DEACTIVATED", "POST", "/_matrix/client/v3/login", "", passwordLogin("alice", testPassword))
	for _, room := range []string{joined, invitedTo} {
		m, err := ts.db.MembershipOf(ctx, room, uid)
		if err != nil || m.Membership != "leave" {
			t.Fatalf("membership in %s: %+v %v", room, m, err)
		}
	}
	// The name stays taken.
	ts.wantErr(http.StatusBadRequest, "M_USER_IN_USE", "POST", "/_matrix/client/v3/register", "", map[string]any{"username": "alice", "password": "x"})
	ts.mustDo(http.StatusOK, "GET", "/_matrix/client/v3/account/whoami", bobTok, nil)
}

func TestThreePIDs(t *testing.T) {
	ts := newTestServer(t)
	_, tok := ts.createUser("alice")
	out := ts.mustDo(http.StatusOK, "GET", "/_matrix/client/v3/account/3pid", tok, nil)
	if tp, ok := out["threepids"].([]any); !ok || len(tp) != 0 {
		t.Fatalf("3pid: %v", out)
	}
	ts.wantErr(http.StatusBadRequest, "M_THREEPID_DENIED", "POST", "/_matrix/client/v3/register/email/requestToken", "",
		map[string]any{"email": "a@b.c", "client_secret": "x", "send_attempt": 1})
}
