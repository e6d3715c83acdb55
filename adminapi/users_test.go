package adminapi_test

import (
	"context"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/agentspace/agentspace/config"
	"github.com/agentspace/agentspace/storage"
)

// listNames pages through GET /v2/users with query q (limit per page) and
// returns the names in order, checking total and next_token on each page.
func listNames(t *testing.T, s *server, token string, q url.Values, limit int) []string {
	t.Helper()
	var names []string
	from := "0"
	for page := 0; page < 50; page++ {
		qq := url.Values{}
		for k, v := range q {
			qq[k] = v
		}
		qq.Set("limit", strconv.Itoa(limit))
		qq.Set("from", from)
		out := s.mustDo(http.StatusOK, "GET", v2+"/users?"+qq.Encode(), token, nil)
		users := objs(out["users"])
		if len(users) > limit {
			t.Fatalf("page of %d users with limit %d", len(users), limit)
		}
		for _, u := range users {
			names = append(names, u["name"].(string))
		}
		total := int(out["total"].(float64))
		next, more := out["next_token"].(string)
		if !more {
			if len(names) != total {
				t.Fatalf("listed %d users, total says %d (%v)", len(names), total, names)
			}
			return names
		}
		from = next
	}
	t.Fatal("pagination does not end")
	return nil
}

func TestListUsers(t *testing.T) {
	s := newServer(t, func(c *config.Config) { c.AdminUsers = []string{"zed"}; c.Registration.AllowGuests = true })
	adminID, token := s.admin("admin")
	// Users the server has of its own (e.g. the built-in appservice's
	// sender) are left out of the comparisons below.
	builtin := map[string]bool{}
	for _, u := range listNames(t, s, token, url.Values{"deactivated": {"true"}}, 100) {
		builtin[u] = u != adminID
	}
	ours := func(names []string) []string {
		return slices.DeleteFunc(names, func(n string) bool { return builtin[n] })
	}
	for _, lp := range []string{"carol", "alice", "dave", "bob", "zed"} {
		s.register(lp)
	}
	ctx := context.Background()
	// A bot, a support user, a deactivated user and a guest.
	s.mustDo(http.StatusCreated, "PUT", v2+"/users/"+esc(s.uid("robot")), token, map[string]any{"user_type": "bot", "displayname": "Beep Boop"})
	s.mustDo(http.StatusCreated, "PUT", v2+"/users/"+esc(s.uid("helpdesk")), token, map[string]any{"user_type": "support"})
	s.mustDo(http.StatusOK, "POST", v1+"/deactivate/"+esc(s.uid("dave")), token, map[string]any{})
	guest := s.mustDo(http.StatusOK, "POST", client+"/register?kind=guest", "", map[string]any{})["user_id"].(string)

	all := ours(listNames(t, s, token, url.Values{}, 2))
	want := []string{s.uid("admin"), s.uid("alice"), s.uid("bob"), s.uid("carol"), s.uid("helpdesk"), s.uid("robot"), s.uid("zed")}
	want = append(want, guest)
	slices.Sort(want)
	if !slices.Equal(all, want) {
		t.Fatalf("default list (no deactivated, by name):\n got %v\nwant %v", all, want)
	}

	check := func(q url.Values, want ...string) {
		t.Helper()
		got := ours(listNames(t, s, token, q, 3))
		if !slices.Equal(got, want) {
			t.Errorf("%v:\n got %v\nwant %v", q, got, want)
		}
	}
	check(url.Values{"name": {"BEEP"}}, s.uid("robot"))    // display name, case-insensitive
	check(url.Values{"name": {"rob"}}, s.uid("robot"))     // localpart
	check(url.Values{"user_id": {"@car"}}, s.uid("carol")) // user id substring
	check(url.Values{"deactivated": {"true"}, "name": {"da"}}, s.uid("dave"))
	check(url.Values{"admins": {"true"}}, s.uid("admin"), s.uid("zed")) // flag and configuration
	check(url.Values{"guests": {"false"}, "admins": {"false"}, "not_user_type": {"bot", "support"}},
		s.uid("alice"), s.uid("bob"), s.uid("carol"))
	check(url.Values{"not_user_type": {""}}, s.uid("helpdesk"), s.uid("robot"))
	check(url.Values{"user_types": {"bot,support"}}, s.uid("helpdesk"), s.uid("robot"))
	check(url.Values{"order_by": {"name"}, "dir": {"b"}, "guests": {"false"}},
		s.uid("zed"), s.uid("robot"), s.uid("helpdesk"), s.uid("carol"), s.uid("bob"), s.uid("alice"), s.uid("admin"))
	check(url.Values{"order_by": {"admin"}, "guests": {"false"}, "dir": {"b"}},
		s.uid("admin"), s.uid("zed"), s.uid("alice"), s.uid("bob"), s.uid("carol"), s.uid("helpdesk"), s.uid("robot"))
	check(url.Values{"order_by": {"user_type"}, "guests": {"false"}},
		s.uid("robot"), s.uid("helpdesk"), s.uid("admin"), s.uid("alice"), s.uid("bob"), s.uid("carol"), s.uid("zed"))

	// creation_ts orders by registration time (ties by name).
	if err := s.DB().Write(ctx, func(tx *storage.Tx) error {
		_, err := tx.Exec(ctx, `UPDATE users SET created_ts = $1 WHERE user_id = $2`, time.Now().Add(time.Hour).UnixMilli(), s.uid("alice"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	got := ours(listNames(t, s, token, url.Values{"order_by": {"creation_ts"}, "dir": {"b"}}, 4))
	if got[0] != s.uid("alice") {
		t.Errorf("newest first: %v", got)
	}

	// One entry has Synapse's fields.
	out := s.mustDo(http.StatusOK, "GET", v2+"/users?name=robot", token, nil)
	u := objs(out["users"])[0]
	for _, k := range []string{"name", "user_type", "is_guest", "admin", "deactivated", "shadow_banned", "displayname",
		"avatar_url", "creation_ts", "erased", "last_seen_ts", "locked"} {
		if _, ok := u[k]; !ok {
			t.Errorf("user entry lacks %q: %v", k, u)
		}
	}
	if u["user_type"] != "bot" || u["displayname"] != "Beep Boop" || u["creation_ts"].(float64) < 1e12 {
		t.Errorf("robot: %v", u)
	}
	if _, ok := out["next_token"]; ok || out["total"].(float64) != 1 {
		t.Errorf("single page: %v", out)
	}

	// v3: deactivated is a filter.
	v3 := func(q string) []string {
		var out []string
		for _, u := range objs(s.mustDo(http.StatusOK, "GET", "/_synapse/admin/v3/users?guests=false&"+q, token, nil)["users"]) {
			out = append(out, u["name"].(string))
		}
		return ours(out)
	}
	if got := v3("deactivated=true"); !slices.Equal(got, []string{s.uid("dave")}) {
		t.Errorf("v3 deactivated=true: %v", got)
	}
	if got := v3(""); len(got) != 8 || !slices.Contains(got, s.uid("dave")) {
		t.Errorf("v3 without deactivated: %v", got)
	}
	if got := v3("deactivated=false"); len(got) != 7 || slices.Contains(got, s.uid("dave")) {
		t.Errorf("v3 deactivated=false: %v", got)
	}

	for _, q := range []string{"limit=-1", "from=-3", "from=abc", "order_by=bogus", "dir=x", "guests=maybe", "admins=1", "deactivated=yes"} {
		s.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "GET", v2+"/users?"+q, token, nil)
	}
}

func TestUserCreateAndModify(t *testing.T) {
	s := newServer(t)
	adminID, token := s.admin("admin")
	agent := s.uid("agent")

	s.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", v2+"/users/"+esc(agent), token, nil)
	out := s.mustDo(http.StatusCreated, "PUT", v2+"/users/"+esc(agent), token, map[string]any{
		"password": "s3cret", "displayname": "Agent Smith", "avatar_url": "mxc://localhost/abc", "user_type": "bot", "admin": false,
		"threepids": []any{}, "external_ids": []any{},
	})
	for k, want := range map[string]any{"name": agent, "displayname": "Agent Smith", "avatar_url": "mxc://localhost/abc",
		"user_type": "bot", "admin": false, "deactivated": false, "is_guest": false, "erased": false, "locked": false} {
		if out[k] != want {
			t.Errorf("created user %s = %v, want %v", k, out[k], want)
		}
	}
	if ts := out["creation_ts"].(float64); ts < 1e9 || ts > 1e11 {
		t.Errorf("creation_ts should be in seconds, like Synapse's: %v", ts)
	}
	login := func(password string) (int, map[string]any) {
		return s.do("POST", client+"/login", "", map[string]any{"type": "m.login.password",
			"identifier": map[string]any{"type": "m.id.user", "user": "agent"}, "password": password})
	}
	st, res := login("s3cret")
	if st != http.StatusOK {
		t.Fatalf("login with the admin-set password: %d %v", st, res)
	}
	agentToken := res["access_token"].(string)

	// The agent is in a room: a new display name reaches it.
	room := s.createRoom(token, map[string]any{"preset": "public_chat"})
	s.join(agentToken, room)
	out = s.mustDo(http.StatusOK, "PUT", v2+"/users/"+esc(agent), token, map[string]any{"displayname": "Agent Jones"})
	if out["displayname"] != "Agent Jones" || out["user_type"] != "bot" {
		t.Errorf("modified: %v", out)
	}
	member := s.mustDo(http.StatusOK, "GET", client+"/rooms/"+esc(room)+"/state/m.room.member/"+esc(agent), token, nil)
	if member["displayname"] != "Agent Jones" {
		t.Errorf("room member event not updated: %v", member)
	}

	// A new password logs every device out at once; logout_devices=false keeps them.
	s.mustDo(http.StatusOK, "PUT", v2+"/users/"+esc(agent), token, map[string]any{"password": "n3w", "logout_devices": false})
	s.mustDo(http.StatusOK, "GET", client+"/account/whoami", agentToken, nil)
	s.mustDo(http.StatusOK, "PUT", v2+"/users/"+esc(agent), token, map[string]any{"password": "newer"})
	s.wantErr(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "GET", client+"/account/whoami", agentToken, nil)
	if st, _ := login("newer"); st != http.StatusOK {
		t.Fatalf("login with the new password: %d", st)
	}

	// admin, user_type null, deactivation and reactivation.
	out = s.mustDo(http.StatusOK, "PUT", v2+"/users/"+esc(agent), token, map[string]any{"admin": true, "user_type": nil})
	if out["admin"] != true || out["user_type"] != nil {
		t.Errorf("admin+user_type: %v", out)
	}
	out = s.mustDo(http.StatusOK, "PUT", v2+"/users/"+esc(agent), token, map[string]any{"deactivated": true})
	if out["deactivated"] != true {
		t.Errorf("deactivate: %v", out)
	}
	if st, _ := login("newer"); st != http.StatusForbidden {
		t.Errorf("deactivated user logged in: %d", st)
	}
	if got := s.mustDo(http.StatusOK, "GET", v1+"/rooms/"+esc(room)+"/members", token, nil); slices.Contains(strs(got["members"]), agent) {
		t.Errorf("deactivated user still in room: %v", got)
	}
	out = s.mustDo(http.StatusOK, "PUT", v2+"/users/"+esc(agent), token, map[string]any{"deactivated": false, "password": "back"})
	if out["deactivated"] != false {
		t.Errorf("reactivate: %v", out)
	}
	if st, _ := login("back"); st != http.StatusOK {
		t.Errorf("login after reactivation: %d", st)
	}
	// Removing the display name.
	if out = s.mustDo(http.StatusOK, "PUT", v2+"/users/"+esc(agent), token, map[string]any{"displayname": ""}); out["displayname"] != nil {
		t.Errorf("displayname not removed: %v", out)
	}

	// Refusals.
	s.wantErr(http.StatusBadRequest, "M_UNKNOWN", "PUT", v2+"/users/"+esc(adminID), token, map[string]any{"admin": false})
	s.wantErr(http.StatusBadRequest, "M_NOT_JSON", "PUT", v2+"/users/"+esc(agent), token, "{oops")
	s.wantErr(http.StatusBadRequest, "M_BAD_JSON", "PUT", v2+"/users/"+esc(agent), token, "[1,2]")
	s.wantErr(http.StatusBadRequest, "M_BAD_JSON", "PUT", v2+"/users/"+esc(agent), token, map[string]any{"admin": "yes"})
	s.wantErr(http.StatusBadRequest, "M_UNKNOWN", "PUT", v2+"/users/"+esc(agent), token, map[string]any{"user_type": "wizard"})
	s.wantErr(http.StatusBadRequest, "M_UNKNOWN", "PUT", v2+"/users/"+esc(agent), token, map[string]any{"password": 12})
	s.wantErr(http.StatusBadRequest, "M_UNKNOWN", "PUT", v2+"/users/"+esc("@x:elsewhere.org"), token, map[string]any{})
	s.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "PUT", v2+"/users/notauserid", token, map[string]any{})
	s.wantErr(http.StatusBadRequest, "M_INVALID_USERNAME", "PUT", v2+"/users/"+esc(s.uid("12345")), token, map[string]any{})
	s.wantErr(http.StatusBadRequest, "M_INVALID_USERNAME", "PUT", v2+"/users/"+esc(s.uid("_bridge")), token, map[string]any{})
	s.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "PUT", v2+"/users/"+esc(agent), token, map[string]any{"threepids": []any{map[string]any{"medium": "email", "address": "a@b.c"}}})
	s.wantErr(http.StatusBadRequest, "M_UNKNOWN", "GET", v2+"/users/"+esc("@x:elsewhere.org"), token, nil)
}

func TestResetPasswordAndDeactivate(t *testing.T) {
	s := newServer(t)
	_, token := s.admin("admin")
	bob, bobToken := s.register("bob")
	room := s.createRoom(token, map[string]any{"preset": "public_chat"})
	s.join(bobToken, room)
	invited := s.createRoom(token, map[string]any{"invite": []string{bob}})

	s.wantErr(http.StatusBadRequest, "M_MISSING_PARAM", "POST", v1+"/reset_password/"+esc(bob), token, map[string]any{})
	s.wantErr(http.StatusNotFound, "M_NOT_FOUND", "POST", v1+"/reset_password/"+esc(s.uid("ghost")), token, map[string]any{"new_password": "x"})
	s.mustDo(http.StatusOK, "POST", v1+"/reset_password/"+esc(bob), token, map[string]any{"new_password": "keep", "logout_devices": false})
	s.mustDo(http.StatusOK, "GET", client+"/account/whoami", bobToken, nil)
	s.mustDo(http.StatusOK, "POST", v1+"/reset_password/"+esc(bob), token, map[string]any{"new_password": "fresh"})
	s.wantErr(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "GET", client+"/account/whoami", bobToken, nil)
	res := s.mustDo(http.StatusOK, "POST", client+"/login", "", map[string]any{"type": "m.login.password", "user": "bob", "password": "fresh"})
	bobToken = res["access_token"].(string)

	s.wantErr(http.StatusNotFound, "M_NOT_FOUND", "POST", v1+"/deactivate/"+esc(s.uid("ghost")), token, map[string]any{})
	s.wantErr(http.StatusBadRequest, "M_BAD_JSON", "POST", v1+"/deactivate/"+esc(bob), token, map[string]any{"erase": "yes"})
	out := s.mustDo(http.StatusOK, "POST", v1+"/deactivate/"+esc(bob), token, map[string]any{"erase": true})
	if out["id_server_unbind_result"] != "no-support" {
		t.Errorf("deactivate: %v", out)
	}
	s.wantErr(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "GET", client+"/account/whoami", bobToken, nil)
	info := s.mustDo(http.StatusOK, "GET", v2+"/users/"+esc(bob), token, nil)
	if info["deactivated"] != true || info["erased"] != true || info["displayname"] != nil {
		t.Errorf("deactivated user: %v", info)
	}
	if got := s.mustDo(http.StatusOK, "GET", v1+"/users/"+esc(bob)+"/memberships", token, nil)["memberships"].(map[string]any); got[room] != "leave" || got[invited] != "leave" {
		t.Errorf("memberships after deactivation (join left, invite rejected): %v", got)
	}
	if n := s.count(`SELECT COUNT(*) FROM devices WHERE user_id = $1`, bob); n != 0 {
		t.Errorf("%d devices left", n)
	}
	// An empty body is fine too (Synapse: "for backwards compatibility").
	s.mustDo(http.StatusOK, "POST", v1+"/deactivate/"+esc(bob), token, nil)
}

func TestWhoisRoomsAndDevices(t *testing.T) {
	s := newServer(t)
	_, token := s.admin("admin")
	bob, bobToken := s.register("bob")
	_, eveToken := s.register("eve")
	room := s.createRoom(bobToken, nil)

	who := s.mustDo(http.StatusOK, "GET", v1+"/whois/"+esc(bob), token, nil)
	devs := who["devices"].(map[string]any)
	if who["user_id"] != bob || len(devs) != 1 {
		t.Fatalf("whois: %v", who)
	}
	for _, d := range devs {
		conns := objs(objs(d.(map[string]any)["sessions"])[0]["connections"])
		if len(conns) != 1 || conns[0]["ip"] != "127.0.0.1" || conns[0]["last_seen"].(float64) <= 0 {
			t.Errorf("whois connections: %v", conns)
		}
	}
	// The spec's whois: self yes, others only for admins.
	s.mustDo(http.StatusOK, "GET", client+"/admin/whois/"+esc(bob), bobToken, nil)
	s.wantErr(http.StatusForbidden, "M_FORBIDDEN", "GET", client+"/admin/whois/"+esc(bob), eveToken, nil)
	s.mustDo(http.StatusOK, "GET", "/_matrix/client/r0/admin/whois/"+esc(bob), token, nil)

	jr := s.mustDo(http.StatusOK, "GET", v1+"/users/"+esc(bob)+"/joined_rooms", token, nil)
	if !slices.Equal(strs(jr["joined_rooms"]), []string{room}) || jr["total"] != float64(1) {
		t.Errorf("joined_rooms: %v", jr)
	}
	if jr := s.mustDo(http.StatusOK, "GET", v1+"/users/"+esc(s.uid("ghost"))+"/joined_rooms", token, nil); jr["total"] != float64(0) {
		t.Errorf("joined_rooms of nobody: %v", jr)
	}

	// Devices: list, create, rename, get, delete (tokens die at once), delete_devices.
	list := s.mustDo(http.StatusOK, "GET", v2+"/users/"+esc(bob)+"/devices", token, nil)
	first := objs(list["devices"])[0]
	if list["total"] != float64(1) || first["user_id"] != bob || first["last_seen_ip"] != "127.0.0.1" || first["dehydrated"] != false {
		t.Fatalf("devices: %v", list)
	}
	dev := first["device_id"].(string)
	s.mustDo(http.StatusOK, "POST", v2+"/users/"+esc(bob)+"/devices", token, map[string]any{"device_id": "SPARE"})
	s.mustDo(http.StatusOK, "POST", v2+"/users/"+esc(bob)+"/devices", token, map[string]any{"device_id": "SPARE"}) // exists: nothing happens
	s.wantErr(http.StatusBadRequest, "M_MISSING_PARAM", "POST", v2+"/users/"+esc(bob)+"/devices", token, map[string]any{})
	s.mustDo(http.StatusOK, "PUT", v2+"/users/"+esc(bob)+"/devices/SPARE", token, map[string]any{"display_name": "spare phone"})
	got := s.mustDo(http.StatusOK, "GET", v2+"/users/"+esc(bob)+"/devices/SPARE", token, nil)
	if got["display_name"] != "spare phone" || got["device_id"] != "SPARE" || got["last_seen_ts"] != nil {
		t.Errorf("device: %v", got)
	}
	s.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", v2+"/users/"+esc(bob)+"/devices/NOPE", token, nil)
	s.wantErr(http.StatusNotFound, "M_NOT_FOUND", "PUT", v2+"/users/"+esc(bob)+"/devices/NOPE", token, map[string]any{"display_name": "x"})
	s.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", v2+"/users/"+esc(s.uid("ghost"))+"/devices", token, nil)
	s.wantErr(http.StatusBadRequest, "M_UNKNOWN", "GET", v2+"/users/"+esc("@x:elsewhere.org")+"/devices", token, nil)

	s.mustDo(http.StatusOK, "DELETE", v2+"/users/"+esc(bob)+"/devices/"+dev, token, nil)
	s.wantErr(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "GET", client+"/account/whoami", bobToken, nil)
	s.mustDo(http.StatusOK, "DELETE", v2+"/users/"+esc(bob)+"/devices/"+dev, token, nil) // already gone: fine

	res := s.mustDo(http.StatusOK, "POST", client+"/login", "", map[string]any{"type": "m.login.password", "user": "bob", "password": "pw-bob"})
	bobToken = res["access_token"].(string)
	s.mustDo(http.StatusOK, "POST", v2+"/users/"+esc(bob)+"/delete_devices", token, map[string]any{"devices": []string{res["device_id"].(string), "SPARE", "NOPE"}})
	s.wantErr(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "GET", client+"/account/whoami", bobToken, nil)
	if list := s.mustDo(http.StatusOK, "GET", v2+"/users/"+esc(bob)+"/devices", token, nil); list["total"] != float64(0) {
		t.Errorf("devices left: %v", list)
	}
	s.wantErr(http.StatusBadRequest, "M_BAD_JSON", "POST", v2+"/users/"+esc(bob)+"/delete_devices", token, map[string]any{"devices": "SPARE"})
}

func TestLoginAsUser(t *testing.T) {
	s := newServer(t)
	adminID, token := s.admin("admin")
	bob, bobToken := s.register("bob")

	out := s.mustDo(http.StatusOK, "POST", v1+"/users/"+esc(bob)+"/login", token, map[string]any{})
	puppet := out["access_token"].(string)
	if who := s.mustDo(http.StatusOK, "GET", client+"/account/whoami", puppet, nil); who["user_id"] != bob {
		t.Fatalf("whoami with the new token: %v", who)
	}
	// Not a new device.
	if list := s.mustDo(http.StatusOK, "GET", client+"/devices", bobToken, nil); len(objs(list["devices"])) != 1 {
		t.Errorf("login-as created a device: %v", list)
	}
	// Logging out with it revokes only it.
	s.mustDo(http.StatusOK, "POST", client+"/logout", puppet, map[string]any{})
	s.wantErr(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "GET", client+"/account/whoami", puppet, nil)
	s.mustDo(http.StatusOK, "GET", client+"/account/whoami", bobToken, nil)

	// valid_until_ms: a token that has expired is refused.
	out = s.mustDo(http.StatusOK, "POST", v1+"/users/"+esc(bob)+"/login", token, map[string]any{"valid_until_ms": time.Now().Add(-time.Second).UnixMilli()})
	s.wantErr(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "GET", client+"/account/whoami", out["access_token"].(string), nil)
	out = s.mustDo(http.StatusOK, "POST", v1+"/users/"+esc(bob)+"/login", token, map[string]any{"valid_until_ms": time.Now().Add(time.Hour).UnixMilli()})
	s.mustDo(http.StatusOK, "GET", client+"/account/whoami", out["access_token"].(string), nil)

	s.wantErr(http.StatusBadRequest, "M_UNKNOWN", "POST", v1+"/users/"+esc(bob)+"/login", token, map[string]any{"valid_until_ms": "soon"})
	s.wantErr(http.StatusBadRequest, "M_UNKNOWN", "POST", v1+"/users/"+esc(adminID)+"/login", token, map[string]any{})
	s.wantErr(http.StatusNotFound, "M_NOT_FOUND", "POST", v1+"/users/"+esc(s.uid("ghost"))+"/login", token, map[string]any{})
	s.wantErr(http.StatusBadRequest, "M_UNKNOWN", "POST", v1+"/users/"+esc("@x:elsewhere.org")+"/login", token, map[string]any{})

	// username_available
	if out := s.mustDo(http.StatusOK, "GET", v1+"/username_available?username=newbie", token, nil); out["available"] != true {
		t.Errorf("username_available: %v", out)
	}
	s.wantErr(http.StatusBadRequest, "M_USER_IN_USE", "GET", v1+"/username_available?username=bob", token, nil)
	s.wantErr(http.StatusBadRequest, "M_INVALID_USERNAME", "GET", v1+"/username_available?username=B%20B", token, nil)
}
