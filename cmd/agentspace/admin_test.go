package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// adminRun runs "agentspace admin args..." in this process against a
// server and returns the exit code, stdout and stderr.
func adminRun(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(append([]string{"admin"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

// mustAdmin runs an admin command that must succeed.
func mustAdmin(t *testing.T, args ...string) string {
	t.Helper()
	code, out, errOut := adminRun(args...)
	if code != 0 {
		t.Fatalf("agentspace admin %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// jsonOut decodes the --json output of a command.
func jsonOut(t *testing.T, out string) map[string]any {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("output is not a JSON object: %v\n%s", err, out)
	}
	return v
}

// clientCall is a plain client request to the server process.
func clientCall(t *testing.T, base, method, path, token string, body any) (int, map[string]any) {
	t.Helper()
	var rdr io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rdr = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, base+path, rdr)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

// TestAdminCLI drives every "agentspace admin" command against a real
// server process: bootstrap, users, rooms and registration tokens, with
// tables and --json, and the errors of refused requests.
func TestAdminCLI(t *testing.T) {
	t.Setenv("AGENTSPACE_ADMIN_TOKEN", "")
	t.Setenv("AGENTSPACE_SERVER", "")
	t.Setenv("REGISTRATION_SHARED_SECRET", "")
	p := startServerProc(t, t.TempDir(), freePort(t), "REGISTRATION_SHARED_SECRET=s3cret-for-tests")
	srv := "--server=" + p.URL

	// bootstrap: the first admin, through the shared secret.
	if code, _, errOut := adminRun(srv, "bootstrap", "--user", "root", "--shared-secret", "wrong"); code == 0 || !strings.Contains(errOut, "M_FORBIDDEN") {
		t.Fatalf("bootstrap with a wrong secret: exit %d, %s", code, errOut)
	}
	boot := jsonOut(t, mustAdmin(t, srv, "--json", "bootstrap", "--user", "root", "--shared-secret", "s3cret-for-tests"))
	token, _ := boot["access_token"].(string)
	if boot["user_id"] != "@root:localhost" || token == "" || boot["password"] == "" {
		t.Fatalf("bootstrap: %v", boot)
	}
	t.Setenv("REGISTRATION_SHARED_SECRET", "s3cret-for-tests")
	out := mustAdmin(t, srv, "bootstrap", "second", "--password", "pw")
	if !strings.Contains(out, "created admin @second:localhost") || !strings.Contains(out, "export AGENTSPACE_ADMIN_TOKEN=syt_") {
		t.Errorf("bootstrap output:\n%s", out)
	}
	tok := "--token=" + token

	// Without a token, with a wrong one, as a non-admin: errcode and message, non-zero exit.
	if code, _, errOut := adminRun(srv, "users", "list"); code == 0 || !strings.Contains(errOut, "AGENTSPACE_ADMIN_TOKEN") {
		t.Errorf("no token: exit %d, %s", code, errOut)
	}
	if code, _, errOut := adminRun(srv, "--token=syt_bogus", "users", "list"); code != 1 || !strings.Contains(errOut, "M_UNKNOWN_TOKEN") {
		t.Errorf("bad token: exit %d, %s", code, errOut)
	}

	// users create / list / make-admin / reset-password / deactivate
	out = mustAdmin(t, srv, tok, "users", "create", "agent-007", "--password", "pw1", "--displayname", "Agent Seven", "--type", "bot")
	if !strings.Contains(out, "created @agent-007:localhost") {
		t.Errorf("users create:\n%s", out)
	}
	if code, _, errOut := adminRun(srv, tok, "users", "create", "agent-007"); code == 0 || !strings.Contains(errOut, "already exists") {
		t.Errorf("creating twice: exit %d %s", code, errOut)
	}
	if code, _, errOut := adminRun(srv, tok, "users", "create", "Bad Name"); code == 0 || !strings.Contains(errOut, "M_INVALID_USERNAME") {
		t.Errorf("bad name: exit %d %s", code, errOut)
	}
	mustAdmin(t, srv, tok, "users", "create", "@human:localhost", "--password", "pw2")
	out = mustAdmin(t, srv, tok, "users", "list")
	for _, want := range []string{"USER", "DISPLAY NAME", "@agent-007:localhost", "Agent Seven", "bot", "@root:localhost", "@human:localhost"} {
		if !strings.Contains(out, want) {
			t.Errorf("users list lacks %q:\n%s", want, out)
		}
	}
	all := jsonOut(t, mustAdmin(t, srv, tok, "--json", "users", "list"))
	total := len(all["users"].([]any))
	if all["total"] != float64(total) || total < 4 || !strings.Contains(out, fmt.Sprintf("%d of %d users", total, total)) {
		t.Errorf("users list: %d users, total %v\n%s", total, all["total"], out)
	}
	list := jsonOut(t, mustAdmin(t, srv, tok, "--json", "users", "list", "--name", "agent-0"))
	if users := list["users"].([]any); len(users) != 1 || users[0].(map[string]any)["user_type"] != "bot" {
		t.Errorf("users list --name --json: %v", list)
	}
	page := jsonOut(t, mustAdmin(t, srv, tok, "users", "list", "--limit", "1", "--from", "1", "--json"))
	if users := page["users"].([]any); len(users) != 1 || users[0].(map[string]any)["name"] != all["users"].([]any)[1].(map[string]any)["name"] || page["total"] != float64(total) {
		t.Errorf("one page: %v", page)
	}
	if out := mustAdmin(t, srv, tok, "users", "make-admin", "human"); !strings.Contains(out, "@human:localhost admin: yes") {
		t.Errorf("make-admin: %s", out)
	}
	if out := mustAdmin(t, srv, tok, "users", "make-admin", "human", "--revoke", "--json"); jsonOut(t, out)["admin"] != false {
		t.Errorf("make-admin --revoke: %s", out)
	}
	st, login := clientCall(t, p.URL, "POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.password", "user": "human", "password": "pw2"})
	if st != 200 {
		t.Fatalf("login: %d %v", st, login)
	}
	humanToken := login["access_token"].(string)
	if code, _, errOut := adminRun(srv, "--token="+humanToken, "rooms", "list"); code != 1 || !strings.Contains(errOut, "M_FORBIDDEN: You are not a server admin") {
		t.Errorf("non-admin: exit %d, %s", code, errOut)
	}
	mustAdmin(t, srv, tok, "users", "reset-password", "human", "--password", "pw3")
	if st, _ := clientCall(t, p.URL, "GET", "/_matrix/client/v3/account/whoami", "", nil); st != 401 {
		t.Errorf("whoami without token: %d", st)
	}
	if st, _ := clientCall(t, p.URL, "GET", "/_matrix/client/v3/account/whoami", humanToken, nil); st != 401 {
		t.Errorf("token survived the password reset: %d", st)
	}
	if code, _, errOut := adminRun(srv, tok, "users", "reset-password", "human"); code == 0 || !strings.Contains(errOut, "--password") {
		t.Errorf("reset-password without --password: exit %d %s", code, errOut)
	}

	// rooms: an agent's room, joined by another agent, listed, shown, blocked, deleted.
	_, login = clientCall(t, p.URL, "POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.password", "user": "agent-007", "password": "pw1"})
	agentToken := login["access_token"].(string)
	st, created := clientCall(t, p.URL, "POST", "/_matrix/client/v3/createRoom", agentToken, map[string]any{"name": "Mission", "room_alias_name": "mission"})
	if st != 200 {
		t.Fatalf("createRoom: %d %v", st, created)
	}
	roomID := created["room_id"].(string)
	if out := mustAdmin(t, srv, tok, "rooms", "join", "#mission:localhost", "human"); !strings.Contains(out, "@human:localhost joined "+roomID) {
		t.Errorf("rooms join: %s", out)
	}
	out = mustAdmin(t, srv, tok, "rooms", "list")
	nRooms := len(jsonOut(t, mustAdmin(t, srv, tok, "rooms", "list", "--json"))["rooms"].([]any))
	for _, want := range []string{roomID, "Mission", "#mission:localhost", fmt.Sprintf("%d of %d rooms", nRooms, nRooms)} {
		if !strings.Contains(out, want) {
			t.Errorf("rooms list lacks %q:\n%s", want, out)
		}
	}
	if rooms := jsonOut(t, mustAdmin(t, srv, tok, "rooms", "list", "--search", "nothing-like-it", "--json")); len(rooms["rooms"].([]any)) != 0 {
		t.Errorf("rooms list --search: %v", rooms)
	}
	show := jsonOut(t, mustAdmin(t, srv, tok, "--json", "rooms", "show", "#mission:localhost"))
	if show["joined_members"] != float64(2) || show["name"] != "Mission" || len(show["members"].([]any)) != 2 || show["blocked"] != false {
		t.Errorf("rooms show: %v", show)
	}
	if out := mustAdmin(t, srv, tok, "rooms", "show", roomID); !strings.Contains(out, "@human:localhost") || !strings.Contains(out, "joined_members") {
		t.Errorf("rooms show table:\n%s", out)
	}
	if code, _, errOut := adminRun(srv, tok, "rooms", "show", "!unknown:localhost"); code != 1 || !strings.Contains(errOut, "M_NOT_FOUND") {
		t.Errorf("show unknown room: exit %d %s", code, errOut)
	}
	if out := mustAdmin(t, srv, tok, "rooms", "block", roomID); !strings.Contains(out, "blocked: yes") {
		t.Errorf("rooms block: %s", out)
	}
	mustAdmin(t, srv, tok, "rooms", "block", roomID, "--unblock")
	del := jsonOut(t, mustAdmin(t, srv, tok, "rooms", "delete", "#mission:localhost", "--block", "--json"))
	res := del["shutdown_room"].(map[string]any)
	if del["status"] != "complete" || len(res["kicked_users"].([]any)) != 2 {
		t.Errorf("rooms delete: %v", del)
	}
	if st, out := clientCall(t, p.URL, "POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID), agentToken, map[string]any{}); st != 403 {
		t.Errorf("joining the deleted, blocked room: %d %v", st, out)
	}
	if code, _, errOut := adminRun(srv, tok, "rooms", "delete", "!unknown:localhost"); code != 1 || !strings.Contains(errOut, "M_NOT_FOUND") {
		t.Errorf("delete unknown room: exit %d %s", code, errOut)
	}

	// tokens create / list / revoke
	tk := jsonOut(t, mustAdmin(t, srv, tok, "tokens", "create", "--value", "welcome", "--uses", "2", "--expires", "24h", "--json"))
	if tk["token"] != "welcome" || tk["uses_allowed"] != float64(2) || tk["expiry_time"].(float64) < float64(time.Now().Add(23*time.Hour).UnixMilli()) {
		t.Errorf("tokens create: %v", tk)
	}
	if out := mustAdmin(t, srv, tok, "tokens", "create"); !strings.Contains(out, "unlimited") {
		t.Errorf("tokens create table:\n%s", out)
	}
	out = mustAdmin(t, srv, tok, "tokens", "list")
	if !strings.Contains(out, "welcome") || !strings.Contains(out, "TOKEN") || strings.Count(out, "\n") != 3 {
		t.Errorf("tokens list:\n%s", out)
	}
	mustAdmin(t, srv, tok, "tokens", "revoke", "welcome")
	if code, _, errOut := adminRun(srv, tok, "tokens", "revoke", "welcome"); code != 1 || !strings.Contains(errOut, "M_NOT_FOUND") {
		t.Errorf("revoking twice: exit %d %s", code, errOut)
	}
	if list := jsonOut(t, mustAdmin(t, srv, tok, "tokens", "list", "--json")); len(list["registration_tokens"].([]any)) != 1 {
		t.Errorf("tokens after revoke: %v", list)
	}
	if code, _, errOut := adminRun(srv, tok, "tokens", "create", "--uses", "-5", "--expires", "nonsense"); code == 0 || !strings.Contains(errOut, "--expires") {
		t.Errorf("bad --expires: exit %d %s", code, errOut)
	}

	// deactivate last: the agent's token dies with it.
	mustAdmin(t, srv, tok, "users", "deactivate", "agent-007", "--erase")
	if st, _ := clientCall(t, p.URL, "GET", "/_matrix/client/v3/account/whoami", agentToken, nil); st != 401 {
		t.Errorf("deactivated agent's token: %d", st)
	}
	if list := jsonOut(t, mustAdmin(t, srv, tok, "users", "list", "--deactivated", "--name", "agent-0", "--json")); list["users"].([]any)[0].(map[string]any)["deactivated"] != true {
		t.Errorf("deactivated: %v", list)
	}

	// Usage errors.
	if code, _, _ := adminRun(srv, tok, "users", "explode"); code == 0 {
		t.Error("unknown subcommand accepted")
	}
	if code, _, _ := adminRun(srv, tok, "rooms", "join", roomID); code == 0 {
		t.Error("rooms join without USER accepted")
	}
	if code, out, _ := adminRun("help"); code != 0 || !strings.Contains(out, "bootstrap") {
		t.Errorf("admin help: %d\n%s", code, out)
	}
	p.stop()
}
