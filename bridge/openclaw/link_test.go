package openclaw_test

import (
	"context"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/agentspace/agentspace/appservice"
	"github.com/agentspace/agentspace/bridge/openclaw"
	"github.com/agentspace/agentspace/clientapi"
	"github.com/agentspace/agentspace/config"
)

// server starts AgentSpace on 127.0.0.1 with a fresh SQLite database and
// returns a client acting as the built-in agents appservice.
func server(t *testing.T) *openclaw.Client {
	t.Helper()
	cfg := config.Default()
	cfg.BindAddress, cfg.Port = "127.0.0.1", 0
	cfg.Database.Path = filepath.Join(t.TempDir(), "agentspace.db")
	cfg.BcryptCost = 4
	cfg.RateLimit.Enabled = false
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := clientapi.NewServer(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	reg, err := appservice.ReadBuiltin(appservice.BuiltinPath(cfg))
	if err != nil {
		t.Fatal(err)
	}
	return &openclaw.Client{BaseURL: srv.BaseURL(), ASToken: reg.AppToken}
}

// copyFixture copies a fixture config into a temp dir and loads it.
func copyFixture(t *testing.T, name string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "testdata", "openclaw", name))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "openclaw.json")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func load(t *testing.T, path string) *openclaw.Config {
	t.Helper()
	cfg, err := openclaw.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// link runs Link and writes the result into the file.
func link(t *testing.T, c *openclaw.Client, path string, opts openclaw.LinkOptions) (*openclaw.LinkResult, openclaw.WriteResult) {
	t.Helper()
	cfg := load(t, path)
	opts.Client, opts.UserPrefix = c, "agent_"
	res, err := openclaw.Link(t.Context(), cfg, opts)
	if err != nil {
		t.Fatalf("Link: %v", err)
	}
	merged, _ := res.Merge(cfg.Raw)
	wr, err := openclaw.WriteMerged(cfg, merged)
	if err != nil {
		t.Fatalf("WriteMerged: %v", err)
	}
	return res, wr
}

type whoami struct {
	UserID   string `json:"user_id"`
	DeviceID string `json:"device_id"`
}

func joinedRooms(t *testing.T, c *openclaw.Client, token string) []string {
	t.Helper()
	var out struct {
		JoinedRooms []string `json:"joined_rooms"`
	}
	if err := c.Do(t.Context(), "GET", "/_matrix/client/v3/joined_rooms", nil, token, nil, &out); err != nil {
		t.Fatal(err)
	}
	return out.JoinedRooms
}

// Provisioning from the current format: users with names, working tokens,
// observer rooms with the agents in them, the config written; a second run
// changes nothing; --rotate replaces every token and revokes the old ones.
func TestLinkEntriesIdempotentAndRotate(t *testing.T) {
	c := server(t)
	path := copyFixture(t, "entries.json5")
	rooms := []openclaw.RoomSpec{{Name: "lobby"}, {Name: "studio", Agents: []string{"alex", "mia"}}}
	res, wr := link(t, c, path, openclaw.LinkOptions{Rooms: rooms})
	if !wr.Changed || !wr.InPlace {
		t.Fatalf("first write %+v", wr)
	}
	if len(res.Accounts) != 3 || len(res.Rooms) != 2 || !res.PrivateNetwork || res.ServerName != "localhost" {
		t.Fatalf("result %+v", res)
	}
	tokens := map[string]string{}
	for _, a := range res.Accounts {
		if !a.UserCreated || !a.TokenIssued || a.AccessToken == "" {
			t.Errorf("%s: %+v", a.AgentID, a)
		}
		var w whoami
		if err := c.Do(t.Context(), "GET", "/_matrix/client/v3/account/whoami", nil, a.AccessToken, nil, &w); err != nil || w.UserID != a.UserID || w.DeviceID != a.DeviceID {
			t.Errorf("%s token: %+v %v", a.AgentID, w, err)
		}
		var prof struct {
			DisplayName string `json:"displayname"`
		}
		_ = c.Do(t.Context(), "GET", "/_matrix/client/v3/profile/"+url.PathEscape(a.UserID), nil, "", nil, &prof)
		if prof.DisplayName != a.Name {
			t.Errorf("%s display name %q, want %q", a.UserID, prof.DisplayName, a.Name)
		}
		tokens[a.AgentID] = a.AccessToken
		joined := joinedRooms(t, c, a.AccessToken)
		wantRooms := 1
		if a.AgentID != "deep-work" {
			wantRooms = 2
		}
		if len(joined) != wantRooms {
			t.Errorf("%s joined %v", a.AgentID, joined)
		}
	}
	if res.Accounts[1].Name != "Mia the Critic" || res.Accounts[2].UserID != "@agent_deep-work:localhost" {
		t.Errorf("names/ids %+v", res.Accounts)
	}
	written := load(t, path)
	if !written.HasComments {
		t.Error("the in-place write dropped the comments")
	}
	if n := len(written.Bindings); n != 1+5 {
		t.Errorf("%d bindings, want the old one plus 5", n)
	}
	lobby := res.Rooms[0].RoomID
	if r := written.Resolve(openclaw.RouteInput{Channel: "matrix", AccountID: "mia", Peer: &openclaw.Peer{Kind: "channel", ID: lobby}}); r.AgentID != "mia" || r.MatchedBy != "binding.peer" {
		t.Errorf("route of mia's account in the lobby: %+v", r)
	}

	// bindings, asking the server: aliases, joined bots, who answers.
	exs, err := written.ExplainRooms(t.Context(), openclaw.ExplainOptions{Client: c})
	if err != nil {
		t.Fatal(err)
	}
	reach := map[string][]string{}
	for _, ex := range exs {
		reach[ex.Alias] = ex.Agents
		for _, rr := range ex.Routes {
			if rr.Joined == nil {
				t.Errorf("%s: joined unknown for %s", ex.Room, rr.AccountID)
			}
		}
	}
	if !slices.Equal(reach["#lobby:localhost"], []string{"alex", "deep-work", "mia"}) || !slices.Equal(reach["#studio:localhost"], []string{"alex", "mia"}) {
		t.Errorf("explained %v", reach)
	}

	// Again: same users, same tokens, nothing written.
	res2, wr2 := link(t, c, path, openclaw.LinkOptions{Rooms: rooms})
	if wr2.Changed {
		t.Fatal("a second link changed the config")
	}
	for _, a := range res2.Accounts {
		if a.UserCreated || a.TokenIssued || a.NameSet || a.AccessToken != tokens[a.AgentID] {
			t.Errorf("second run %s: %+v", a.AgentID, a)
		}
	}
	for _, r := range res2.Rooms {
		if r.Created {
			t.Errorf("room %s created again", r.Name)
		}
	}

	// Rotate: new tokens on new devices; the old tokens and devices are gone.
	res3, wr3 := link(t, c, path, openclaw.LinkOptions{Rooms: rooms, Rotate: true})
	if !wr3.Changed {
		t.Fatal("rotation did not change the config")
	}
	for _, a := range res3.Accounts {
		if !a.Rotated || a.AccessToken == tokens[a.AgentID] {
			t.Errorf("rotate %s: %+v", a.AgentID, a)
		}
		err := c.Do(t.Context(), "GET", "/_matrix/client/v3/account/whoami", nil, tokens[a.AgentID], nil, nil)
		if !openclaw.IsCode(err, "M_UNKNOWN_TOKEN") {
			t.Errorf("%s: old token still answers: %v", a.AgentID, err)
		}
		var devs struct {
			Devices []struct {
				DeviceID string `json:"device_id"`
			} `json:"devices"`
		}
		if err := c.Do(t.Context(), "GET", "/_matrix/client/v3/devices", nil, a.AccessToken, nil, &devs); err != nil {
			t.Fatal(err)
		}
		if len(devs.Devices) != 1 || devs.Devices[0].DeviceID != a.DeviceID {
			t.Errorf("%s devices after rotation: %+v", a.AgentID, devs.Devices)
		}
	}
	if got := load(t, path); !strings.Contains(string(mustRead(t, path)), res3.Accounts[0].AccessToken) || got.HasComments == false {
		t.Error("the rotated token was not written in place")
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The legacy list format; a Matrix binding naming #lobby makes that
// observer room with only the bound agent; a token lost from the config is
// replaced on the same device.
func TestLinkLegacyListAndAliasBinding(t *testing.T) {
	c := server(t)
	path := copyFixture(t, "list.json5")
	res, _ := link(t, c, path, openclaw.LinkOptions{})
	if len(res.Accounts) != 2 || res.Accounts[0].UserID != "@agent_home:localhost" || res.Accounts[1].Name != "Work Bot" {
		t.Fatalf("accounts %+v", res.Accounts)
	}
	if len(res.Rooms) != 1 || res.Rooms[0].Alias != "#lobby:localhost" || !slices.Equal(res.Rooms[0].Agents, []string{"work"}) {
		t.Fatalf("rooms %+v", res.Rooms)
	}
	if j := joinedRooms(t, c, res.Accounts[0].AccessToken); len(j) != 0 {
		t.Errorf("home joined %v", j)
	}
	if j := joinedRooms(t, c, res.Accounts[1].AccessToken); len(j) != 1 || j[0] != res.Rooms[0].RoomID {
		t.Errorf("work joined %v", j)
	}
	// Break home's token in the file: the next link logs in on the same device.
	data := strings.Replace(string(mustRead(t, path)), res.Accounts[0].AccessToken, "syt_broken", 1)
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	res2, wr := link(t, c, path, openclaw.LinkOptions{})
	if !wr.Changed || !res2.Accounts[0].TokenIssued || res2.Accounts[0].DeviceID != res.Accounts[0].DeviceID || res2.Accounts[1].TokenIssued {
		t.Fatalf("relink: %+v %+v", wr, res2.Accounts)
	}
}
