package openclaw

import (
	"path/filepath"
	"reflect"
	"testing"
)

func fixture(name string) string { return filepath.Join("..", "..", "testdata", "openclaw", name) }

// Both roster formats: agents.entries (keyed, in file order) and the
// legacy agents.list; names from name, identity.name or the id; ids
// normalised as OpenClaw does.
func TestLoadRosterFormats(t *testing.T) {
	cases := []struct {
		file    string
		format  string
		agents  []Agent
		def     string
		comment bool
	}{
		{"entries.json5", "entries", []Agent{
			{ID: "alex", Name: "Alex", Default: true},
			{ID: "mia", Name: "Mia the Critic"},
			{ID: "deep-work", Name: "Deep Work"},
		}, "alex", true},
		{"list.json5", "list", []Agent{
			{ID: "home", Name: "Home", Default: true},
			{ID: "work", Name: "Work Bot"},
		}, "home", true},
	}
	for _, tc := range cases {
		t.Run(tc.file, func(t *testing.T) {
			cfg, err := Load(fixture(tc.file))
			if err != nil {
				t.Fatal(err)
			}
			if cfg.AgentsFormat != tc.format || !reflect.DeepEqual(cfg.Agents, tc.agents) {
				t.Fatalf("format %q agents %+v", cfg.AgentsFormat, cfg.Agents)
			}
			if def, ok := cfg.DefaultAgent(); !ok || def != tc.def {
				t.Fatalf("default %q %v", def, ok)
			}
			if cfg.HasComments != tc.comment {
				t.Fatalf("comments %v", cfg.HasComments)
			}
		})
	}
}

// JSON5 syntax: comments, trailing commas, single quotes, bare keys, hex.
func TestParseJSON5(t *testing.T) {
	cfg, err := Parse([]byte(`{
  // a comment
  agents: { list: [ { id: 'Solo', port: 0x10, }, ], },
  /* block */ bindings: [],
}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Agents) != 1 || cfg.Agents[0].ID != "solo" || cfg.Agents[0].Name != "Solo" {
		t.Fatalf("agents %+v", cfg.Agents)
	}
	if p := dig(cfg.Raw, "agents", "list").([]any)[0].(map[string]any)["port"]; p == nil || p.(interface{ String() string }).String() != "16" {
		t.Fatalf("hex number decoded as %#v", p)
	}
	for _, bad := range []string{`[1]`, `{agents: {entries: []}}`, `{agents: {list: [{name: "x"}]}}`, `{`, `{agents: {entries: {"a b": {}, "a-b": {}}}}`} {
		if _, err := Parse([]byte(bad)); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
	// No roster: the implicit agent main.
	cfg, _ = Parse([]byte(`{}`))
	if def, ok := cfg.DefaultAgent(); !ok || def != "main" {
		t.Fatalf("implicit default %q", def)
	}
	// Several agents and no marker: OpenClaw refuses to guess.
	cfg, _ = Parse([]byte(`{agents: {entries: {a: {}, b: {}}}}`))
	if _, ok := cfg.DefaultAgent(); ok {
		t.Fatal("a default was guessed")
	}
	if r := cfg.Resolve(RouteInput{Channel: "matrix", AccountID: "a", Peer: &Peer{Kind: "channel", ID: "!r:x"}}); r.AgentID != "" {
		t.Fatalf("route %+v", r)
	}
	// ownership explicit: the system agent is the default.
	cfg, _ = Parse([]byte(`{agents: {ownership: "explicit", defaults: {systemAgent: {agentId: "B"}}, entries: {a: {default: true}, b: {}}}}`))
	if def, _ := cfg.DefaultAgent(); def != "b" {
		t.Fatalf("explicit default %q", def)
	}
}

// OpenClaw's precedence: peer > account > channel ("*") > default agent;
// bindings without accountId only apply to the default account; ACP
// bindings are not routes; group and channel peers are the same.
func TestResolvePrecedence(t *testing.T) {
	cfg, err := Load(fixture("routing.json5"))
	if err != nil {
		t.Fatal(err)
	}
	room := func(id string) *Peer { return &Peer{Kind: "channel", ID: id} }
	cases := []struct {
		account, room string
		agent, by     string
		binding       int
	}{
		{"bot1", "!lobby:localhost", "lobbyist", "binding.peer", 2},
		{"bot1", "!elsewhere:localhost", "accountant", "binding.account", 1},
		{"bot2", "!elsewhere:localhost", "fallback", "binding.channel", 0},
		{"bot2", "!lobby:localhost", "fallback", "binding.channel", 0}, // the ACP binding is not a route
		{"bot2", "!other:localhost", "lobbyist", "binding.peer", 3},    // kind group matches a channel peer
		{"default", "!default-only:localhost", "accountant", "binding.peer", 4},
		{"bot1", "!default-only:localhost", "accountant", "binding.account", 1},
		{"BOT1", "!lobby:localhost", "lobbyist", "binding.peer", 2}, // account ids are normalised
	}
	for _, tc := range cases {
		r := cfg.Resolve(RouteInput{Channel: "matrix", AccountID: tc.account, Peer: room(tc.room)})
		if r.AgentID != tc.agent || r.MatchedBy != tc.by || r.Binding != tc.binding {
			t.Errorf("%s in %s: got %+v, want %s by %s (bindings[%d])", tc.account, tc.room, r, tc.agent, tc.by, tc.binding)
		}
	}
	// Another channel: no binding, the default agent.
	if r := cfg.Resolve(RouteInput{Channel: "telegram", AccountID: "x", Peer: room("1")}); r.AgentID != "main" || r.MatchedBy != "default" {
		t.Errorf("telegram: %+v", r)
	}
	// Within a tier the first binding in file order wins.
	two, _ := Parse([]byte(`{agents: {entries: {a: {}, b: {}}}, bindings: [
		{agentId: "b", match: {channel: "matrix", accountId: "x", peer: {kind: "channel", id: "!r"}}},
		{agentId: "a", match: {channel: "matrix", accountId: "x", peer: {kind: "channel", id: "!r"}}},
		{agentId: "ghost", match: {channel: "matrix", accountId: "y"}},
	]}`))
	if r := two.Resolve(RouteInput{Channel: "matrix", AccountID: "x", Peer: room("!r")}); r.AgentID != "b" || r.Binding != 0 {
		t.Errorf("first in order: %+v", r)
	}
	if r := two.Resolve(RouteInput{Channel: "matrix", AccountID: "y", Peer: room("!r")}); !r.UnknownAgent {
		t.Errorf("unknown agent not flagged: %+v", r)
	}
}

// ExplainRooms (offline) combines routing with each account's allowlist.
func TestExplainRoomsOffline(t *testing.T) {
	cfg, err := Load(fixture("routing.json5"))
	if err != nil {
		t.Fatal(err)
	}
	exs, err := cfg.ExplainRooms(t.Context(), ExplainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]string{}
	for _, ex := range exs {
		got[ex.Room] = ex.Agents
	}
	want := map[string][]string{
		"!lobby:localhost":        {"lobbyist"}, // bot2 has its own groups without the lobby
		"!other:localhost":        {"lobbyist"}, // both accounts, one peer binding with accountId "*"
		"!default-only:localhost": {},           // no account allows it
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}
