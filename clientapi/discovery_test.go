package clientapi

import (
	"encoding/json"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/agentspace/agentspace/config"
)

func TestWellKnownClient(t *testing.T) {
	t.Run("unset", func(t *testing.T) {
		ts := newTestServer(t)
		ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", "/.well-known/matrix/client", "", nil)
	})
	t.Run("set", func(t *testing.T) {
		ts := newTestServer(t, func(c *config.Config) { c.PublicBaseURL = "https://matrix.example.com" })
		out := ts.mustDo(http.StatusOK, "GET", "/.well-known/matrix/client", "", nil)
		hs, _ := out["m.homeserver"].(map[string]any)
		if hs["base_url"] != "https://matrix.example.com" {
			t.Fatalf("well-known: %v", out)
		}
		// Public: an invalid token does not matter.
		ts.mustDo(http.StatusOK, "GET", "/.well-known/matrix/client", "bogus", nil)
	})
}

func TestVersions(t *testing.T) {
	ts := newTestServer(t)
	for _, token := range []string{"", "not-a-valid-token"} {
		out := ts.mustDo(http.StatusOK, "GET", "/_matrix/client/versions", token, nil)
		var versions []string
		for _, v := range out["versions"].([]any) {
			versions = append(versions, v.(string))
		}
		for _, want := range []string{"r0.0.1", "r0.5.0", "r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6",
			"v1.7", "v1.8", "v1.9", "v1.10", "v1.11", "v1.12"} {
			if !slices.Contains(versions, want) {
				t.Errorf("versions lacks %s: %v", want, versions)
			}
		}
		feats, ok := out["unstable_features"].(map[string]any)
		if !ok || feats["org.matrix.msc2285.stable"] != true || feats["org.matrix.msc3440.stable"] != true {
			t.Fatalf("unstable_features: %v", out["unstable_features"])
		}
		for k, v := range feats {
			if v != true {
				t.Errorf("feature %s advertised as %v: only implemented features belong here", k, v)
			}
		}
	}
}

func TestCapabilities(t *testing.T) {
	ts := newTestServer(t)
	_, token := ts.createUser("alice")
	ts.wantErr(http.StatusUnauthorized, "M_MISSING_TOKEN", "GET", "/_matrix/client/v3/capabilities", "", nil)
	ts.wantErr(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "GET", "/_matrix/client/v3/capabilities", "nope", nil)
	out := ts.mustDo(http.StatusOK, "GET", "/_matrix/client/v3/capabilities", token, nil)
	caps := out["capabilities"].(map[string]any)
	enabled := func(name string) any { return caps[name].(map[string]any)["enabled"] }
	for name, want := range map[string]bool{"m.change_password": true, "m.set_displayname": true, "m.set_avatar_url": true,
		"m.3pid_changes": false, "m.get_login_token": false} {
		if enabled(name) != want {
			t.Errorf("%s.enabled = %v, want %v", name, enabled(name), want)
		}
	}
	rv := caps["m.room_versions"].(map[string]any)
	if rv["default"] != "10" {
		t.Errorf("default room version %v", rv["default"])
	}
	avail := rv["available"].(map[string]any)
	for _, v := range []string{"1", "6", "10", "11"} {
		if avail[v] != "stable" {
			t.Errorf("room version %s: %v", v, avail[v])
		}
	}
	// r0 prefix works too (older Element).
	ts.mustDo(http.StatusOK, "GET", "/_matrix/client/r0/capabilities", token, nil)
}

func TestTurnServer(t *testing.T) {
	t.Run("unconfigured", func(t *testing.T) {
		ts := newTestServer(t)
		_, token := ts.createUser("alice")
		ts.wantErr(http.StatusUnauthorized, "M_MISSING_TOKEN", "GET", "/_matrix/client/v3/voip/turnServer", "", nil)
		out := ts.mustDo(http.StatusOK, "GET", "/_matrix/client/v3/voip/turnServer", token, nil)
		if len(out) != 0 {
			t.Fatalf("want {}, got %v", out)
		}
	})
	t.Run("configured", func(t *testing.T) {
		ts := newTestServer(t, func(c *config.Config) {
			c.TURN.URIs = []string{"turn:turn.example.com:3478?transport=udp", "turns:turn.example.com:5349"}
			c.TURN.Username = "user"
			c.TURN.Password = "secret"
			c.TURN.TTL = config.Duration{Duration: time.Hour}
		})
		_, token := ts.createUser("alice")
		status, raw := ts.doRaw("GET", "/_matrix/client/v3/voip/turnServer", token, nil)
		var out struct {
			URIs     []string `json:"uris"`
			Username string   `json:"username"`
			Password string   `json:"password"`
			TTL      int      `json:"ttl"`
		}
		if status != http.StatusOK || json.Unmarshal(raw, &out) != nil {
			t.Fatalf("turnServer: %d %s", status, raw)
		}
		if len(out.URIs) != 2 || out.URIs[0] != "turn:turn.example.com:3478?transport=udp" || out.Username != "user" ||
			out.Password != "secret" || out.TTL != 3600 {
			t.Fatalf("turnServer: %s", raw)
		}
	})
}

func TestThirdPartyProtocols(t *testing.T) {
	ts := newTestServer(t)
	_, token := ts.createUser("alice")
	ts.wantErr(http.StatusUnauthorized, "M_MISSING_TOKEN", "GET", "/_matrix/client/v3/thirdparty/protocols", "", nil)
	if out := ts.mustDo(http.StatusOK, "GET", "/_matrix/client/v3/thirdparty/protocols", token, nil); len(out) != 0 {
		t.Fatalf("want {}, got %v", out)
	}
}
