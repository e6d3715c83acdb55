package adminapi_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/agentspace/agentspace/config"
)

func TestRegistrationTokensCRUD(t *testing.T) {
	s := newServer(t)
	_, token := s.admin("admin")

	gen := s.mustDo(http.StatusOK, "POST", v1+"/registration_tokens/new", token, map[string]any{})
	if tok, _ := gen["token"].(string); len(tok) != 16 || gen["uses_allowed"] != nil || gen["expiry_time"] != nil ||
		gen["pending"] != float64(0) || gen["completed"] != float64(0) {
		t.Fatalf("generated token: %v", gen)
	}
	if tok := s.mustDo(http.StatusOK, "POST", v1+"/registration_tokens/new", token, map[string]any{"length": 40})["token"].(string); len(tok) != 40 {
		t.Errorf("length 40: %q", tok)
	}
	expiry := time.Now().Add(time.Hour).UnixMilli()
	named := s.mustDo(http.StatusOK, "POST", v1+"/registration_tokens/new", token, map[string]any{"token": "agents-2024", "uses_allowed": 3, "expiry_time": expiry})
	if named["token"] != "agents-2024" || named["uses_allowed"] != float64(3) || named["expiry_time"] != float64(expiry) {
		t.Errorf("named token: %v", named)
	}
	s.mustDo(http.StatusOK, "POST", v1+"/registration_tokens/new", token, map[string]any{"token": "spent", "uses_allowed": 0})

	list := objs(s.mustDo(http.StatusOK, "GET", v1+"/registration_tokens", token, nil)["registration_tokens"])
	if len(list) != 4 {
		t.Fatalf("list: %v", list)
	}
	if valid := objs(s.mustDo(http.StatusOK, "GET", v1+"/registration_tokens?valid=true", token, nil)["registration_tokens"]); len(valid) != 3 {
		t.Errorf("valid tokens: %v", valid)
	}
	if invalid := objs(s.mustDo(http.StatusOK, "GET", v1+"/registration_tokens?valid=false", token, nil)["registration_tokens"]); len(invalid) != 1 || invalid[0]["token"] != "spent" {
		t.Errorf("invalid tokens: %v", invalid)
	}

	got := s.mustDo(http.StatusOK, "GET", v1+"/registration_tokens/agents-2024", token, nil)
	if got["uses_allowed"] != float64(3) {
		t.Errorf("get: %v", got)
	}
	upd := s.mustDo(http.StatusOK, "PUT", v1+"/registration_tokens/agents-2024", token, map[string]any{"uses_allowed": nil, "expiry_time": nil})
	if upd["uses_allowed"] != nil || upd["expiry_time"] != nil || upd["token"] != "agents-2024" {
		t.Errorf("update: %v", upd)
	}
	if same := s.mustDo(http.StatusOK, "PUT", v1+"/registration_tokens/agents-2024", token, map[string]any{}); same["token"] != "agents-2024" {
		t.Errorf("empty update: %v", same)
	}
	s.mustDo(http.StatusOK, "DELETE", v1+"/registration_tokens/agents-2024", token, nil)
	s.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", v1+"/registration_tokens/agents-2024", token, nil)
	s.wantErr(http.StatusNotFound, "M_NOT_FOUND", "PUT", v1+"/registration_tokens/agents-2024", token, map[string]any{"uses_allowed": 1})
	s.wantErr(http.StatusNotFound, "M_NOT_FOUND", "DELETE", v1+"/registration_tokens/agents-2024", token, nil)

	for _, bad := range []map[string]any{
		{"token": "spent"},     // exists
		{"token": ""},          // empty
		{"token": "has space"}, // characters
		{"token": 12},          // type
		{"length": 0}, {"length": 65}, {"length": "8"},
		{"uses_allowed": -1}, {"uses_allowed": 1.5}, {"uses_allowed": "2"},
		{"expiry_time": 1000}, {"expiry_time": "tomorrow"},
	} {
		s.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "POST", v1+"/registration_tokens/new", token, bad)
	}
	s.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "PUT", v1+"/registration_tokens/spent", token, map[string]any{"expiry_time": 5})
	s.wantErr(http.StatusBadRequest, "M_NOT_JSON", "POST", v1+"/registration_tokens/new", token, "")
	s.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "GET", v1+"/registration_tokens?valid=maybe", token, nil)
}

// TestRegistrationTokenStage: with open registration off, a token lets
// exactly uses_allowed people register through the
// m.login.registration_token stage.
func TestRegistrationTokenStage(t *testing.T) {
	s := newServer(t, func(c *config.Config) { c.Registration.Enabled = false })
	// The first admin comes from the database (the CLI's bootstrap uses the shared secret).
	_, token := s.adminInDB("admin")
	register := func(username string, auth map[string]any) (int, map[string]any) {
		body := map[string]any{"username": username, "password": "pw"}
		if auth != nil {
			body["auth"] = auth
		}
		return s.do("POST", client+"/register", "", body)
	}
	validity := func(tok string) any {
		return s.mustDo(http.StatusOK, "GET", "/_matrix/client/v1/register/m.login.registration_token/validity?token="+tok, "", nil)["valid"]
	}

	// No token exists: registration is simply off.
	s.wantErr(http.StatusForbidden, "M_FORBIDDEN", "POST", client+"/register", "", map[string]any{"username": "x", "password": "pw"})
	s.wantErr(http.StatusForbidden, "M_FORBIDDEN", "GET", "/_matrix/client/v1/register/m.login.registration_token/validity?token=abc", "", nil)

	s.mustDo(http.StatusOK, "POST", v1+"/registration_tokens/new", token, map[string]any{"token": "once", "uses_allowed": 1})
	if validity("once") != true || validity("other") != false {
		t.Fatal("validity")
	}
	s.wantErr(http.StatusBadRequest, "M_MISSING_PARAM", "GET", "/_matrix/client/v1/register/m.login.registration_token/validity", "", nil)

	st, ch := register("newbie", nil)
	flows := objs(ch["flows"])
	if st != http.StatusUnauthorized || len(flows) != 1 || strs(flows[0]["stages"])[0] != "m.login.registration_token" {
		t.Fatalf("challenge: %d %v", st, ch)
	}
	session := ch["session"].(string)
	// A wrong token: the stage fails, the session goes on.
	st, ch = register("newbie", map[string]any{"type": "m.login.registration_token", "token": "wrong", "session": session})
	if st != http.StatusUnauthorized || ch["errcode"] != "M_UNAUTHORIZED" {
		t.Fatalf("wrong token: %d %v", st, ch)
	}
	// The right one: the stage is done and the token's one use is held
	// ("pending") until the registration finishes.
	st, ch = register("newbie", map[string]any{"type": "m.login.registration_token", "token": "once", "session": session})
	if st != http.StatusUnauthorized || len(strs(ch["completed"])) != 1 {
		t.Fatalf("after the token stage: %d %v", st, ch)
	}
	if info := s.mustDo(http.StatusOK, "GET", v1+"/registration_tokens/once", token, nil); info["pending"] != float64(1) || info["completed"] != float64(0) {
		t.Errorf("token while pending: %v", info)
	}
	if validity("once") != false {
		t.Error("a token whose only use is held is still valid")
	}
	// Someone else cannot use it meanwhile.
	_, other := register("other", nil)
	st, other = register("other", map[string]any{"type": "m.login.registration_token", "token": "once", "session": other["session"]})
	if st != http.StatusUnauthorized || other["errcode"] != "M_UNAUTHORIZED" {
		t.Fatalf("second user with a held token: %d %v", st, other)
	}
	// The client sends only auth for the last stage (the rest is remembered).
	st, res := s.do("POST", client+"/register", "", map[string]any{"auth": map[string]any{"type": "m.login.dummy", "session": session}})
	if st != http.StatusOK || res["user_id"] != s.uid("newbie") {
		t.Fatalf("registration with the token: %d %v", st, res)
	}
	s.mustDo(http.StatusOK, "GET", client+"/account/whoami", res["access_token"].(string), nil)
	info := s.mustDo(http.StatusOK, "GET", v1+"/registration_tokens/once", token, nil)
	if info["completed"] != float64(1) || info["pending"] != float64(0) {
		t.Errorf("token after use: %v", info)
	}
	if validity("once") != false {
		t.Error("used-up token still valid")
	}

	// An unlimited token lets several people in; deleting it closes registration again.
	s.mustDo(http.StatusOK, "POST", v1+"/registration_tokens/new", token, map[string]any{"token": "open"})
	for _, name := range []string{"agent1", "agent2"} {
		_, ch := register(name, nil)
		register(name, map[string]any{"type": "m.login.registration_token", "token": "open", "session": ch["session"]})
		st, res := register(name, map[string]any{"type": "m.login.dummy", "session": ch["session"]})
		if st != http.StatusOK || res["user_id"] != s.uid(name) {
			t.Fatalf("%s: %d %v", name, st, res)
		}
	}
	if info := s.mustDo(http.StatusOK, "GET", v1+"/registration_tokens/open", token, nil); info["completed"] != float64(2) {
		t.Errorf("open token: %v", info)
	}
	s.mustDo(http.StatusOK, "DELETE", v1+"/registration_tokens/open", token, nil)
	s.mustDo(http.StatusOK, "DELETE", v1+"/registration_tokens/once", token, nil)
	s.wantErr(http.StatusForbidden, "M_FORBIDDEN", "POST", client+"/register", "", map[string]any{"username": "late", "password": "pw"})
}
