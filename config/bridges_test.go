package config

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const bridgesYAML = `
bridges:
  webhooks:
    - name: ops-slack
      rooms: ["#experiment-1:localhost"]
      kind: Slack
      url: https://hooks.slack.com/services/T000/B000/XXXX
    - name: archive
      rooms: ["!abcdefghijklmnopqr:localhost", "#log:localhost"]
      kind: http
      url: https://archive.example.com/agentspace?key=k1
      secret: s1
hooks:
  - name: moderation
    on: onMessageReceived
    url: http://127.0.0.1:9000/hook
    secret: s2
  - name: lifecycle
    on: onRoomDeleted
    url: http://127.0.0.1:9000/deleted
    secret: s3
    rooms: ["!abcdefghijklmnopqr:localhost"]
`

func loadYAML(t *testing.T, text string) (*Config, error) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return Load(p, envMap(nil))
}

func TestBridgesConfigLoads(t *testing.T) {
	c, err := loadYAML(t, bridgesYAML)
	if err != nil {
		t.Fatal(err)
	}
	want := BridgesConfig{Webhooks: []WebhookConfig{
		{Name: "ops-slack", Rooms: []string{"#experiment-1:localhost"}, Kind: "slack", URL: "https://hooks.slack.com/services/T000/B000/XXXX"},
		{Name: "archive", Rooms: []string{"!abcdefghijklmnopqr:localhost", "#log:localhost"}, Kind: "http",
			URL: "https://archive.example.com/agentspace?key=k1", Secret: "s1"},
	}}
	if !reflect.DeepEqual(c.Bridges, want) {
		t.Errorf("bridges = %+v", c.Bridges)
	}
	if len(c.Hooks) != 2 || c.Hooks[0].On != HookMessageReceived || c.Hooks[1].Rooms[0] != "!abcdefghijklmnopqr:localhost" {
		t.Errorf("hooks = %+v", c.Hooks)
	}
	if d := Default(); d.Bridges.Webhooks != nil || d.Hooks != nil {
		t.Errorf("defaults: %+v %+v", d.Bridges, d.Hooks)
	}
	c, err = loadYAML(t, "bridges:\n  webhooks: []\nhooks: []\n")
	if err != nil || !reflect.DeepEqual(c, Default()) {
		t.Errorf("empty lists must equal the defaults: %v", err)
	}
}

func TestBridgesConfigInvalid(t *testing.T) {
	tests := []struct {
		name, yaml, want string
	}{
		{"bad name", "bridges:\n  webhooks:\n    - {name: 'Bad Name', rooms: ['#a:x'], kind: slack, url: 'http://h/p'}\n", "bridges.webhooks[0].name"},
		{"duplicate name", "bridges:\n  webhooks:\n    - {name: a, rooms: ['#a:x'], kind: slack, url: 'http://h/p'}\n    - {name: a, rooms: ['#a:x'], kind: slack, url: 'http://h/p'}\n", "bridges.webhooks[1].name: \"a\" is used by another webhook"},
		{"no rooms", "bridges:\n  webhooks:\n    - {name: a, kind: slack, url: 'http://h/p'}\n", "bridges.webhooks[0].rooms: must list"},
		{"bad room", "bridges:\n  webhooks:\n    - {name: a, rooms: ['general'], kind: slack, url: 'http://h/p'}\n", "bridges.webhooks[0].rooms[0]"},
		{"alias without server", "bridges:\n  webhooks:\n    - {name: a, rooms: ['#general'], kind: slack, url: 'http://h/p'}\n", "needs its server name"},
		{"bad kind", "bridges:\n  webhooks:\n    - {name: a, rooms: ['#a:x'], kind: teams, url: 'http://h/p'}\n", "bridges.webhooks[0].kind: must be slack, discord or http"},
		{"no url", "bridges:\n  webhooks:\n    - {name: a, rooms: ['#a:x'], kind: slack}\n", "bridges.webhooks[0].url: is required"},
		{"bad scheme", "bridges:\n  webhooks:\n    - {name: a, rooms: ['#a:x'], kind: slack, url: 'ftp://hooks.slack.com/services/T000/B000/VERYSECRET'}\n", "bridges.webhooks[0].url: must be an absolute http"},
		{"http needs secret", "bridges:\n  webhooks:\n    - {name: a, rooms: ['#a:x'], kind: http, url: 'http://h/p'}\n", "bridges.webhooks[0].secret: is required for kind http"},
		{"hook event", "hooks:\n  - {name: h, on: onMessageSent, url: 'http://h/p', secret: s}\n", "hooks[0].on: must be one of onMessageReceived, onRoomCreated, onRoomDeleted"},
		{"hook secret", "hooks:\n  - {name: h, on: onRoomCreated, url: 'http://h/p'}\n", "hooks[0].secret: is required"},
		{"hook unknown key", "hooks:\n  - {name: h, on: onRoomCreated, url: 'http://h/p', secret: s, colour: red}\n", "unknown configuration key"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadYAML(t, tc.yaml)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "VERYSECRET") {
				t.Errorf("the error quotes the webhook URL: %v", err)
			}
		})
	}

}

func TestBridgesRedacted(t *testing.T) {
	c, err := loadYAML(t, bridgesYAML)
	if err != nil {
		t.Fatal(err)
	}
	r := c.Redacted()
	out, _ := json.Marshal(r)
	for _, secret := range []string{"XXXX", "k1", "s1", "s2", "s3", "9000/hook", "/deleted", "services"} {
		if strings.Contains(string(out), secret) {
			t.Errorf("redacted config leaks %q: %s", secret, out)
		}
	}
	if r.Bridges.Webhooks[0].URL != "https://hooks.slack.com/REDACTED" || r.Hooks[0].URL != "http://127.0.0.1:9000/REDACTED" ||
		r.Bridges.Webhooks[0].Secret != "" || r.Bridges.Webhooks[1].Secret != "REDACTED" {
		t.Errorf("redacted: %+v %+v", r.Bridges, r.Hooks)
	}
	if c.Bridges.Webhooks[0].URL != "https://hooks.slack.com/services/T000/B000/XXXX" || c.Hooks[0].Secret != "s2" {
		t.Error("Redacted changed the original")
	}
	r.Bridges.Webhooks[1].Rooms[0] = "changed"
	if c.Bridges.Webhooks[1].Rooms[0] == "changed" {
		t.Error("Redacted shares room lists with the original")
	}
}

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"":                             "",
		"https://hooks.slack.com":      "https://hooks.slack.com",
		"https://hooks.slack.com/":     "https://hooks.slack.com",
		"https://h.example/a/b":        "https://h.example/REDACTED",
		"https://h.example?token=x":    "https://h.example/REDACTED",
		"https://user:pw@h.example":    "https://h.example/REDACTED",
		"http://127.0.0.1:9000/hook#f": "http://127.0.0.1:9000/REDACTED",
		"not a url":                    "REDACTED",
		"%zz":                          "REDACTED",
	} {
		if got := RedactURL(in); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}
