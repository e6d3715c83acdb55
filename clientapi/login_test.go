package clientapi

import (
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/agentspace/agentspace/config"
)

func passwordLogin(user, password string) map[string]any {
	return map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": user}, "password": password}
}

func TestLoginFlows(t *testing.T) {
	ts := newTestServer(t)
	out := ts.mustDo(http.StatusOK, "GET", "/_matrix/client/v3/login", "", nil)
	flows, _ := out["flows"].([]any)
	// Synapse offers m.login.application_service too (appservices log in their users with it).
	if len(flows) != 2 || flows[0].(map[string]any)["type"] != "m.login.password" || flows[1].(map[string]any)["type"] != "m.login.application_service" {
		t.Fatalf("flows: %v", out)
	}
}

func TestLoginPassword(t *testing.T) {
	ts := newTestServer(t, func(c *config.Config) { c.PublicBaseURL = "https://matrix.example.org" })
	ts.signUp("alice", testPassword)
	const path = "/_matrix/client/v3/login"

	for _, who := range []string{"alice", "@alice:localhost", "ALICE"} {
		out := ts.mustDo(http.StatusOK, "POST", path, "", passwordLogin(who, testPassword))
		if out["user_id"] != "@alice:localhost" || out["access_token"] == nil || out["device_id"] == nil || out["home_server"] != "localhost" {
			t.Fatalf("login as %q: %v", who, out)
		}
		wk, _ := out["well_known"].(map[string]any)
		if hs, _ := wk["m.homeserver"].(map[string]any); hs["base_url"] != "https://matrix.example.org" {
			t.Fatalf("well_known: %v", out)
		}
	}
	// Legacy top-level "user".
	out := ts.mustDo(http.StatusOK, "POST", path, "", map[string]any{"type": "m.login.password", "user": "alice", "password": testPassword,
		"initial_device_display_name": "Laptop"})
	dev := ts.mustDo(http.StatusOK, "GET", "/_matrix/client/v3/devices/"+out["device_id"].(string), out["access_token"].(string), nil)
	if dev["display_name"] != "Laptop" {
		t.Fatalf("device: %v", dev)
	}

	// Wrong password and unknown user look the same.
	e1 := ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "POST", path, "", passwordLogin("alice", "wrong"))
	e2 := ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "POST", path, "", passwordLogin("nobody", "wrong"))
	if e1["error"] != e2["error"] {
		t.Fatalf("messages differ: %v vs %v", e1, e2)
	}
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "POST", path, "", passwordLogin("@alice:elsewhere.org", testPassword))
	// A user without a password (created directly) cannot log in.
	ts.createUser("nopass")
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "POST", path, "", passwordLogin("nopass", ""))

	ts.wantErr(http.StatusBadRequest, "M_UNKNOWN", "POST", path, "", map[string]any{"type": "m.login.token", "token": "x"})
	ts.wantErr(http.StatusBadRequest, "M_UNKNOWN", "POST", path, "", map[string]any{"password": testPassword, "user": "alice"})
	ts.wantErr(http.StatusBadRequest, "M_MISSING_PARAM", "POST", path, "", map[string]any{"type": "m.login.password", "user": "alice"})
	ts.wantErr(http.StatusBadRequest, "M_MISSING_PARAM", "POST", path, "", map[string]any{"type": "m.login.password", "password": "x"})
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "POST", path, "", map[string]any{"type": "m.login.password",
		"identifier": map[string]any{"type": "m.id.thirdparty", "medium": "email", "address": "a@b.c"}, "password": "x"})
	ts.wantErr(http.StatusBadRequest, "M_NOT_JSON", "POST", path, "", "nope")
	ts.wantErr(http.StatusBadRequest, "M_BAD_JSON", "POST", path, "", `{"type":"m.login.password","password":5}`)
}

func TestLoginReusesDevice(t *testing.T) {
	ts := newTestServer(t)
	ts.signUp("alice", testPassword)
	body := passwordLogin("alice", testPassword)
	body["device_id"] = "KEEPME"
	first := ts.mustDo(http.StatusOK, "POST", "/_matrix/client/v3/login", "", body)
	second := ts.mustDo(http.StatusOK, "POST", "/_matrix/client/v3/login", "", body)
	if first["device_id"] != "KEEPME" || second["device_id"] != "KEEPME" {
		t.Fatalf("device ids: %v %v", first, second)
	}
	ts.wantErr(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "GET", "/_matrix/client/v3/account/whoami", first["access_token"].(string), nil)
	tok := second["access_token"].(string)
	devs := ts.mustDo(http.StatusOK, "GET", "/_matrix/client/v3/devices", tok, nil)["devices"].([]any)
	n := 0
	for _, d := range devs {
		if d.(map[string]any)["device_id"] == "KEEPME" {
			n++
		}
	}
	if n != 1 || len(devs) != 2 { // the registration device plus KEEPME
		t.Fatalf("devices: %v", devs)
	}
}

func TestRefreshTokens(t *testing.T) {
	ts := newTestServer(t)
	ts.signUp("alice", testPassword)
	body := passwordLogin("alice", testPassword)
	body["refresh_token"] = true
	out := ts.mustDo(http.StatusOK, "POST", "/_matrix/client/v3/login", "", body)
	if ms, _ := out["expires_in_ms"].(float64); ms != float64(time.Hour.Milliseconds()) {
		t.Fatalf("expires_in_ms: %v", out)
	}
	access, refresh := out["access_token"].(string), out["refresh_token"].(string)
	ts.mustDo(http.StatusOK, "GET", "/_matrix/client/v3/account/whoami", access, nil)

	const path = "/_matrix/client/v3/refresh"
	next := ts.mustDo(http.StatusOK, "POST", path, "", map[string]any{"refresh_token": refresh})
	if next["access_token"] == nil || next["refresh_token"] == nil || next["expires_in_ms"] == nil || next["refresh_token"] == refresh {
		t.Fatalf("refresh: %v", next)
	}
	// The old pair is revoked; the new access token works on the same device.
	ts.wantErr(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "GET", "/_matrix/client/v3/account/whoami", access, nil)
	e := ts.wantErr(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "POST", path, "", map[string]any{"refresh_token": refresh})
	if e["soft_logout"] != false {
		t.Fatalf("soft_logout: %v", e)
	}
	who := ts.mustDo(http.StatusOK, "GET", "/_matrix/client/v3/account/whoami", next["access_token"].(string), nil)
	if who["device_id"] != out["device_id"] {
		t.Fatalf("device changed: %v vs %v", who, out)
	}
	ts.wantErr(http.StatusBadRequest, "M_MISSING_PARAM", "POST", path, "", map[string]any{})
	ts.wantErr(http.StatusBadRequest, "M_NOT_JSON", "POST", path, "", "{")
	ts.wantErr(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "POST", "/_matrix/client/v1/refresh", "", map[string]any{"refresh_token": "nope"})
}

func TestAccessTokenExpiry(t *testing.T) {
	ts := newTestServer(t, func(c *config.Config) { c.AccessTokenLifetime = config.Duration{Duration: 50 * time.Millisecond} })
	ts.signUp("alice", testPassword)
	body := passwordLogin("alice", testPassword)
	body["refresh_token"] = true
	out := ts.mustDo(http.StatusOK, "POST", "/_matrix/client/v3/login", "", body)
	if out["expires_in_ms"] != float64(50) {
		t.Fatalf("expires_in_ms: %v", out)
	}
	// Poll (bounded) until the token has expired: soft logout.
	deadline := time.Now().Add(5 * time.Second)
	for {
		status, e := ts.do("GET", "/_matrix/client/v3/account/whoami", out["access_token"].(string), nil)
		if status == http.StatusUnauthorized {
			if e["errcode"] != "M_UNKNOWN_TOKEN" || e["soft_logout"] != true {
				t.Fatalf("expired token: %v", e)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("token never expired")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The refresh token still buys a new pair.
	next := ts.mustDo(http.StatusOK, "POST", "/_matrix/client/v3/refresh", "", map[string]any{"refresh_token": out["refresh_token"]})
	if next["access_token"] == nil {
		t.Fatalf("refresh: %v", next)
	}
}

func TestRateLimitLogin(t *testing.T) {
	ts := newTestServer(t, func(c *config.Config) {
		c.RateLimit = config.RateLimitConfig{Enabled: true, PerSecond: 0.01, Burst: 2}
	})
	for i := 0; i < 2; i++ {
		ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "POST", "/_matrix/client/v3/login", "", passwordLogin("nobody", "x"))
	}
	req, _ := http.NewRequest("POST", ts.URL+"/_matrix/client/v3/login", strings.NewReader(`{"type":"m.login.password","user":"nobody","password":"x"}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var e map[string]any
	_ = json.Unmarshal(raw, &e)
	if resp.StatusCode != http.StatusTooManyRequests || e["errcode"] != "M_LIMIT_EXCEEDED" {
		t.Fatalf("want 429: %d %s", resp.StatusCode, raw)
	}
	if ms, _ := e["retry_after_ms"].(float64); ms <= 0 {
		t.Fatalf("retry_after_ms: %s", raw)
	}
	if secs, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || secs < 1 {
		t.Fatalf("Retry-After: %q", resp.Header.Get("Retry-After"))
	}
	// Endpoints that are not rate limited still answer.
	ts.mustDo(http.StatusOK, "GET", "/_matrix/client/v3/login", "", nil)
}

func TestRateLimiterEvictsIdleBuckets(t *testing.T) {
	rl := newRateLimiter(config.RateLimitConfig{Enabled: true, PerSecond: 10, Burst: 5})
	now := time.Now()
	for i := 0; i < 100; i++ {
		if ok, _ := rl.allow("ip:"+strconv.Itoa(i), now); !ok {
			t.Fatal("first request refused")
		}
	}
	if len(rl.buckets) != 100 {
		t.Fatalf("buckets: %d", len(rl.buckets))
	}
	// Long after, one request sweeps the refilled buckets away.
	rl.allow("ip:new", now.Add(time.Minute))
	if len(rl.buckets) != 1 {
		t.Fatalf("after sweep: %d buckets", len(rl.buckets))
	}
	// A refused request does not use up the token it waits for.
	for i := 0; i < 5; i++ {
		rl.allow("ip:burst", now)
	}
	ok, wait := rl.allow("ip:burst", now)
	if ok || wait <= 0 || wait > 150*time.Millisecond {
		t.Fatalf("over the burst: ok=%v wait=%v", ok, wait)
	}
	if ok, _ := rl.allow("ip:burst", now.Add(wait)); !ok {
		t.Fatal("token not available after the advertised wait")
	}
	if off := newRateLimiter(config.RateLimitConfig{Enabled: false}); func() bool { ok, _ := off.allow("x", now); return !ok }() {
		t.Fatal("disabled limiter refused")
	}
}
