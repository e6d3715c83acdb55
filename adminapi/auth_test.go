package adminapi_test

import (
	"fmt"
	"net/http"
	"reflect"
	"testing"

	"github.com/agentspace/agentspace/config"
)

// endpoint is one admin route with a request body that would be valid.
type endpoint struct {
	method, path string
	body         any
}

// adminEndpoints lists every /_synapse/admin endpoint (but server_version)
// for the given user and room.
func adminEndpoints(user, room, device string) []endpoint {
	u, r := esc(user), esc(room)
	return []endpoint{
		{"GET", v2 + "/users", nil},
		{"GET", "/_synapse/admin/v3/users", nil},
		{"GET", v2 + "/users/" + u, nil},
		{"PUT", v2 + "/users/" + u, map[string]any{"displayname": "x"}},
		{"POST", v1 + "/reset_password/" + u, map[string]any{"new_password": "pw"}},
		{"POST", v1 + "/deactivate/" + u, map[string]any{}},
		{"GET", v1 + "/users/" + u + "/admin", nil},
		{"PUT", v1 + "/users/" + u + "/admin", map[string]any{"admin": true}},
		{"GET", v1 + "/whois/" + u, nil},
		{"GET", v1 + "/users/" + u + "/joined_rooms", nil},
		{"GET", v1 + "/users/" + u + "/memberships", nil},
		{"POST", v1 + "/users/" + u + "/login", map[string]any{}},
		{"GET", v1 + "/username_available?username=someone", nil},
		{"GET", v2 + "/users/" + u + "/devices", nil},
		{"POST", v2 + "/users/" + u + "/devices", map[string]any{"device_id": "NEWDEV"}},
		{"POST", v2 + "/users/" + u + "/delete_devices", map[string]any{"devices": []string{device}}},
		{"GET", v2 + "/users/" + u + "/devices/" + device, nil},
		{"PUT", v2 + "/users/" + u + "/devices/" + device, map[string]any{"display_name": "x"}},
		{"DELETE", v2 + "/users/" + u + "/devices/" + device, nil},
		{"GET", v1 + "/rooms", nil},
		{"GET", v1 + "/rooms/" + r, nil},
		{"GET", v1 + "/rooms/" + r + "/members", nil},
		{"GET", v1 + "/rooms/" + r + "/state", nil},
		{"GET", v1 + "/rooms/" + r + "/messages", nil},
		{"GET", v1 + "/rooms/" + r + "/block", nil},
		{"PUT", v1 + "/rooms/" + r + "/block", map[string]any{"block": true}},
		{"POST", v1 + "/rooms/" + r + "/make_room_admin", map[string]any{}},
		{"POST", v1 + "/join/" + r, map[string]any{"user_id": user}},
		{"DELETE", v1 + "/rooms/" + r, map[string]any{}},
		{"DELETE", v2 + "/rooms/" + r, map[string]any{}},
		{"GET", v2 + "/rooms/" + r + "/delete_status", nil},
		{"GET", v2 + "/rooms/delete_status/someid", nil},
		{"POST", v1 + "/purge_history/" + r, map[string]any{"purge_up_to_ts": 1}},
		{"POST", v1 + "/purge_history/" + r + "/$event", map[string]any{}},
		{"GET", v1 + "/purge_history_status/someid", nil},
		{"GET", v1 + "/registration_tokens", nil},
		{"POST", v1 + "/registration_tokens/new", map[string]any{}},
		{"GET", v1 + "/registration_tokens/abcd", nil},
		{"PUT", v1 + "/registration_tokens/abcd", map[string]any{"uses_allowed": 1}},
		{"DELETE", v1 + "/registration_tokens/abcd", nil},
	}
}

// TestAdminRefusals: every endpoint answers 401 without a valid token and
// 403 to a non-admin, whether or not the target exists and whatever the
// body (bad JSON included), and nothing changes.
func TestAdminRefusals(t *testing.T) {
	s := newServer(t)
	_, adminToken := s.admin("boss")
	alice, aliceToken := s.register("alice")
	_, malloryToken := s.register("mallory")
	room := s.createRoom(aliceToken, map[string]any{"name": "secret"})
	devices := s.mustDo(http.StatusOK, "GET", v2+"/users/"+esc(alice)+"/devices", adminToken, nil)
	device := objs(devices["devices"])[0]["device_id"].(string)

	existing := adminEndpoints(alice, room, device)
	missing := adminEndpoints(s.uid("nobody"), "!nosuchroom:"+s.cfg.ServerName, "NODEVICE")
	for i, ep := range existing {
		t.Run(fmt.Sprintf("%s %s", ep.method, ep.path), func(t *testing.T) {
			s.t = t
			s.wantErr(http.StatusUnauthorized, "M_MISSING_TOKEN", ep.method, ep.path, "", ep.body)
			s.wantErr(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", ep.method, ep.path, "syt_not_a_token", ep.body)
			got := s.wantErr(http.StatusForbidden, "M_FORBIDDEN", ep.method, ep.path, malloryToken, ep.body)
			other := s.wantErr(http.StatusForbidden, "M_FORBIDDEN", missing[i].method, missing[i].path, malloryToken, missing[i].body)
			if !reflect.DeepEqual(got, other) {
				t.Errorf("refusal reveals whether the target exists: %v vs %v", got, other)
			}
			if ep.body != nil {
				s.wantErr(http.StatusForbidden, "M_FORBIDDEN", ep.method, ep.path, malloryToken, "{not json")
			}
		})
	}
	s.t = t
	// Nothing happened to alice, her room or her device.
	s.mustDo(http.StatusOK, "GET", client+"/account/whoami", aliceToken, nil)
	info := s.mustDo(http.StatusOK, "GET", v2+"/users/"+esc(alice), adminToken, nil)
	if info["admin"] != false || info["deactivated"] != false || info["displayname"] != "alice" {
		t.Errorf("alice changed: %v", info)
	}
	if got := s.mustDo(http.StatusOK, "GET", v1+"/rooms/"+esc(room)+"/block", adminToken, nil); got["block"] != false {
		t.Errorf("room got blocked: %v", got)
	}
	if n := s.count(`SELECT COUNT(*) FROM registration_tokens`); n != 0 {
		t.Errorf("%d registration tokens created", n)
	}
}

// TestServerVersion: public, like Synapse's (admin UIs show it before login).
func TestServerVersion(t *testing.T) {
	s := newServer(t)
	out := s.mustDo(http.StatusOK, "GET", v1+"/server_version", "", nil)
	if v, _ := out["server_version"].(string); v == "" {
		t.Fatalf("server_version: %v", out)
	}
}

// TestConfigAdmins: users listed in admin_users are admins without the flag,
// and losing the flag takes effect on the very next request.
func TestConfigAdmins(t *testing.T) {
	s := newServer(t, func(c *config.Config) { c.AdminUsers = []string{"root"} })
	root, rootToken := s.register("root")
	bob, bobToken := s.register("bob")
	if got := s.mustDo(http.StatusOK, "GET", v1+"/users/"+esc(root)+"/admin", rootToken, nil); got["admin"] != true {
		t.Fatalf("root is not admin: %v", got)
	}
	s.wantErr(http.StatusForbidden, "M_FORBIDDEN", "GET", v2+"/users", bobToken, nil)
	s.mustDo(http.StatusOK, "PUT", v1+"/users/"+esc(bob)+"/admin", rootToken, map[string]any{"admin": true})
	s.mustDo(http.StatusOK, "GET", v2+"/users", bobToken, nil) // at once: no stale session
	if got := s.mustDo(http.StatusOK, "GET", v1+"/users/"+esc(bob)+"/admin", bobToken, nil); got["admin"] != true {
		t.Fatalf("bob: %v", got)
	}
	s.wantErr(http.StatusBadRequest, "M_UNKNOWN", "PUT", v1+"/users/"+esc(bob)+"/admin", bobToken, map[string]any{"admin": false})
	s.mustDo(http.StatusOK, "PUT", v1+"/users/"+esc(bob)+"/admin", rootToken, map[string]any{"admin": false})
	s.wantErr(http.StatusForbidden, "M_FORBIDDEN", "GET", v2+"/users", bobToken, nil)
	// root stays an admin through the configuration whatever the flag says.
	_, carolToken := s.admin("carol")
	s.mustDo(http.StatusOK, "PUT", v1+"/users/"+esc(root)+"/admin", carolToken, map[string]any{"admin": false})
	if got := s.mustDo(http.StatusOK, "GET", v1+"/users/"+esc(root)+"/admin", carolToken, nil); got["admin"] != true {
		t.Fatalf("root lost admin: %v", got)
	}
	s.mustDo(http.StatusOK, "GET", v2+"/users", rootToken, nil)
}

// TestAdminBadJSON: every endpoint taking a body refuses one that is not
// JSON (M_NOT_JSON) and one that is not an object (M_BAD_JSON), changing nothing.
func TestAdminBadJSON(t *testing.T) {
	s := newServer(t)
	_, token := s.admin("boss")
	alice, aliceToken := s.register("alice")
	room := s.createRoom(aliceToken, map[string]any{"name": "kept"})
	devices := s.mustDo(http.StatusOK, "GET", v2+"/users/"+esc(alice)+"/devices", token, nil)
	device := objs(devices["devices"])[0]["device_id"].(string)
	s.mustDo(http.StatusOK, "POST", v1+"/registration_tokens/new", token, map[string]any{"token": "abcd"})
	for _, ep := range adminEndpoints(alice, room, device) {
		if ep.body == nil {
			continue
		}
		t.Run(ep.method+" "+ep.path, func(t *testing.T) {
			s.t = t
			s.wantErr(http.StatusBadRequest, "M_NOT_JSON", ep.method, ep.path, token, "{not json")
			s.wantErr(http.StatusBadRequest, "M_BAD_JSON", ep.method, ep.path, token, `["a list"]`)
		})
	}
	s.t = t
	s.mustDo(http.StatusOK, "GET", client+"/account/whoami", aliceToken, nil)
	if got := s.mustDo(http.StatusOK, "GET", v1+"/rooms/"+esc(room), token, nil); got["joined_members"] != float64(1) {
		t.Errorf("room changed: %v", got)
	}
}
