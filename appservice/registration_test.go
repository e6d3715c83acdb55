package appservice

import (
	"strings"
	"testing"
)

const validReg = `id: agents
url: http://127.0.0.1:29333
as_token: as_secret_1
hs_token: hs_secret_1
sender_localpart: agentbot
rate_limited: false
receive_ephemeral: true
namespaces:
  users:
    - regex: '@agent_.*:localhost'
      exclusive: true
  aliases:
    - regex: '#agents_.*:localhost'
      exclusive: true
  rooms: []
protocols: [openclaw]
`

func TestParseValid(t *testing.T) {
	r, err := Parse("agents.yaml", []byte(validReg))
	if err != nil {
		t.Fatal(err)
	}
	if r.ID != "agents" || r.RateLimited() || !r.ReceivesEphemeral() || r.SenderID("localhost") != "@agentbot:localhost" {
		t.Fatalf("unexpected registration %+v", r.Registration)
	}
	for _, tc := range []struct {
		user string
		in   bool
	}{
		{"@agent_alice:localhost", true},
		{"@agent_:localhost", true},
		{"@alice:localhost", false},
		{"@xagent_alice:localhost", false}, // regexes match from the start, as in Synapse
	} {
		if got := r.IsInterestedInUser(tc.user); got != tc.in {
			t.Errorf("IsInterestedInUser(%q) = %v, want %v", tc.user, got, tc.in)
		}
		if got := r.OwnsUser(tc.user); got != tc.in {
			t.Errorf("OwnsUser(%q) = %v, want %v", tc.user, got, tc.in)
		}
	}
	if !r.OwnsAlias("#agents_lab:localhost") || r.OwnsAlias("#lab:localhost") {
		t.Error("alias namespace not applied")
	}
}

func TestParseErrorsNameFileAndField(t *testing.T) {
	tests := []struct {
		name, edit, from, want string
	}{
		{"no id", "id: agents", "id: ''", "id: is required"},
		{"no as_token", "as_token: as_secret_1", "as_token: ''", "as_token: is required"},
		{"no hs_token", "hs_token: hs_secret_1", "hs_token: ''", "hs_token: is required"},
		{"same tokens", "hs_token: hs_secret_1", "hs_token: as_secret_1", "hs_token: must differ"},
		{"no sender", "sender_localpart: agentbot", "sender_localpart: ''", "sender_localpart: is required"},
		{"bad sender", "sender_localpart: agentbot", "sender_localpart: 'Agent Bot'", "sender_localpart:"},
		{"bad url", "url: http://127.0.0.1:29333", "url: 'ftp://x'", "url:"},
		{"bad user regex", "'@agent_.*:localhost'", "'@agent_(.*:localhost'", "namespaces.users: [0].regex"},
		{"bad alias regex", "'#agents_.*:localhost'", "'#agents_[:localhost'", "namespaces.aliases: [0].regex"},
		{"not yaml", "namespaces:", "namespaces: [", "invalid YAML"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("/etc/as/agents.yaml", []byte(strings.Replace(validReg, tc.edit, tc.from, 1)))
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), "/etc/as/agents.yaml") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not name the file and %q", err, tc.want)
			}
		})
	}
	if r, err := Parse("x.yaml", []byte(strings.Replace(validReg, "url: http://127.0.0.1:29333", "url: null", 1))); err != nil || r.URL != "" {
		t.Fatalf("url: null must mean no URL: %v", err)
	}
}

func reg(t *testing.T, path, id, asTok, hsTok, sender, userRegex string, exclusive bool) *Registration {
	t.Helper()
	ex := "false"
	if exclusive {
		ex = "true"
	}
	r, err := Parse(path, []byte("id: "+id+"\nurl: null\nas_token: "+asTok+"\nhs_token: "+hsTok+"\nsender_localpart: "+sender+
		"\nnamespaces:\n  users:\n    - regex: '"+userRegex+"'\n      exclusive: "+ex+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestRegistryConflicts(t *testing.T) {
	a := reg(t, "a.yaml", "a", "as_a", "hs_a", "abot", `@a_.*:localhost`, true)
	tests := []struct {
		name string
		b    *Registration
		want string // "" means accepted
	}{
		{"disjoint", reg(t, "b.yaml", "b", "as_b", "hs_b", "bbot", `@b_.*:localhost`, true), ""},
		{"same id", reg(t, "b.yaml", "a", "as_b", "hs_b", "bbot", `@b_.*:localhost`, true), "b.yaml: id:"},
		{"same as_token", reg(t, "b.yaml", "b", "as_a", "hs_b", "bbot", `@b_.*:localhost`, true), "b.yaml: as_token:"},
		{"hs_token reused as as_token", reg(t, "b.yaml", "b", "hs_a", "hs_b", "bbot", `@b_.*:localhost`, true), "b.yaml: as_token:"},
		{"same sender", reg(t, "b.yaml", "b", "as_b", "hs_b", "abot", `@b_.*:localhost`, true), "b.yaml: sender_localpart:"},
		{"identical exclusive", reg(t, "b.yaml", "b", "as_b", "hs_b", "bbot", `@a_.*:localhost`, true), "b.yaml: namespaces.users:"},
		{"narrower exclusive", reg(t, "b.yaml", "b", "as_b", "hs_b", "bbot", `@a_bots_.*:localhost`, false), "namespaces.users:"},
		{"wider non-exclusive over exclusive", reg(t, "b.yaml", "b", "as_b", "hs_b", "bbot", `@.*:localhost`, false), "namespaces.users:"},
		{"literal inside", reg(t, "b.yaml", "b", "as_b", "hs_b", "bbot", `@a_alice:localhost`, false), "namespaces.users:"},
		{"alternation", reg(t, "b.yaml", "b", "as_b", "hs_b", "bbot", `@(x|a_)[a-z]+:localhost`, true), "namespaces.users:"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewRegistry([]*Registration{a, tc.b})
			if tc.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
	// Two non-exclusive namespaces may overlap.
	x := reg(t, "x.yaml", "x", "as_x", "hs_x", "xbot", `@shared_.*:localhost`, false)
	y := reg(t, "y.yaml", "y", "as_y", "hs_y", "ybot", `@shared_.*:localhost`, false)
	if _, err := NewRegistry([]*Registration{x, y}); err != nil {
		t.Fatalf("non-exclusive overlap refused: %v", err)
	}
}

func TestRegistryLookups(t *testing.T) {
	a := reg(t, "a.yaml", "a", "as_a", "hs_a", "abot", `@a_.*:localhost`, true)
	b := reg(t, "b.yaml", "b", "as_b", "hs_b", "bbot", `@b_.*:localhost`, false)
	r, err := NewRegistry([]*Registration{a, b})
	if err != nil {
		t.Fatal(err)
	}
	if r.ByToken("as_a") != a || r.ByToken("hs_a") != nil || r.ByID("b") != b {
		t.Fatal("lookup by token/id failed")
	}
	if r.UserOwner("@a_x:localhost") != a || r.UserOwner("@b_x:localhost") != nil {
		t.Fatal("only exclusive namespaces own users")
	}
	var nilReg *Registry
	if nilReg.ByToken("x") != nil || nilReg.UserOwner("@a:b") != nil {
		t.Fatal("nil registry must answer nil")
	}
}
