package clientapi

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agentspace/agentspace/appservice"
	"github.com/agentspace/agentspace/config"
)

// builtinToken reads the built-in agents appservice's as_token from the
// data directory, as the CLI does.
func (ts *testServer) builtinToken() string {
	ts.t.Helper()
	reg, err := appservice.ReadBuiltin(appservice.BuiltinPath(ts.cfg))
	if err != nil {
		ts.t.Fatal(err)
	}
	return reg.AppToken
}

// agentToken registers (if needed) and logs in an agent of the built-in
// appservice, as "agentspace openclaw link" does, and returns its token.
func (ts *testServer) agentToken(as, localpart string) string {
	ts.t.Helper()
	status, out := ts.do("POST", "/_matrix/client/v3/register", as, map[string]any{
		"type": "m.login.application_service", "username": localpart, "inhibit_login": true})
	if status != 200 && out["errcode"] != "M_USER_IN_USE" {
		ts.t.Fatalf("register %s: %d %v", localpart, status, out)
	}
	login := ts.mustDo(200, "POST", "/_matrix/client/v3/login", as, map[string]any{
		"type": "m.login.application_service", "identifier": map[string]any{"type": "m.id.user", "user": localpart}})
	return login["access_token"].(string)
}

func esc(s string) string { return url.PathEscape(s) }

// The built-in agents appservice is generated next to the database (mode
// 0600, url null, not rate limited, namespace @agent_.*), loaded, and kept
// across restarts; its token acts as its sender.
func TestBuiltinAgentsAppservice(t *testing.T) {
	ts := newTestServer(t)
	path := appservice.BuiltinPath(ts.cfg)
	if filepath.Dir(path) != filepath.Dir(ts.cfg.Database.Path) {
		t.Fatalf("registration at %s, not next to the database", path)
	}
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", info.Mode().Perm())
	}
	raw, _ := os.ReadFile(path)
	for _, want := range []string{"id: agentspace-agents", "url: null", "rate_limited: false", "sender_localpart: _agentspace",
		`regex: '@agent_.*:localhost'`, "exclusive: true"} {
		if !bytes.Contains(raw, []byte(want)) {
			t.Errorf("registration lacks %q:\n%s", want, raw)
		}
	}
	as := ts.builtinToken()
	who := ts.mustDo(200, "GET", "/_matrix/client/v3/account/whoami", as, nil)
	if who["user_id"] != "@_agentspace:localhost" {
		t.Fatalf("whoami %v", who)
	}
	prof := ts.mustDo(200, "GET", "/_matrix/client/v3/profile/@_agentspace:localhost", "", nil)
	if prof["displayname"] != "AgentSpace" {
		t.Errorf("sender profile %v", prof)
	}
	// People cannot take agent names.
	ts.wantErr(400, "M_EXCLUSIVE", "POST", "/_matrix/client/v3/register", "", map[string]any{
		"username": "agent_fake", "password": "pw-0123456789", "auth": map[string]any{"type": "m.login.dummy"}})

	// A restart keeps the tokens; a new prefix moves the namespace.
	ts = ts.restart()
	if ts.builtinToken() != as {
		t.Fatal("the as_token changed across a restart")
	}
	ctx := t.Context()
	if err := ts.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	cfg := *ts.cfg
	cfg.Agents.UserPrefix = "bot."
	reg, err := appservice.LoadOrCreateBuiltin(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	if reg.AppToken != as || !reg.OwnsUser("@bot.x:localhost") || reg.OwnsUser("@agent_x:localhost") {
		t.Fatalf("prefix change: token kept %v, namespace %v", reg.AppToken == as, reg.Namespaces.UserIDs)
	}
}

// A configured appservice that claims @agent_.* wins: the server starts
// without the built-in one.
func TestBuiltinAgentsAppserviceYieldsToConfigured(t *testing.T) {
	ts := newASServer(t, nil, "")
	st := ts.mustDo(200, "GET", "/_agentspace/admin/v1/appservices", adminToken(t, ts), nil)
	list := st["appservices"].([]any)
	if len(list) != 1 || list[0].(map[string]any)["id"] != "agents" {
		t.Fatalf("appservices %v", list)
	}
	// The admin API still works for admins (the creator is the admin).
	out := ts.mustDo(200, "POST", "/_agentspace/admin/v1/rooms", adminToken(t, ts), map[string]any{"name": "plain"})
	if out["room_id"] == "" {
		t.Fatal(out)
	}
}

// An observer room: agents post, people join, read and peek as guests but
// cannot post; it is in the directory; creating it again changes nothing.
func TestObserverRoomOverHTTP(t *testing.T) {
	ts := newTestServer(t, func(c *config.Config) { c.Registration.AllowGuests = true })
	as := ts.builtinToken()
	_, aliceTok := ts.createUser("alice")
	ts.wantErr(403, "M_FORBIDDEN", "POST", "/_agentspace/admin/v1/rooms", aliceTok, map[string]any{"name": "lobby", "agents": []string{"a"}})

	out := ts.mustDo(200, "POST", "/_agentspace/admin/v1/rooms", as, map[string]any{
		"name": "lobby", "agents": []string{"alex", "mia"}, "topic": "two agents"})
	roomID := out["room_id"].(string)
	if out["alias"] != "#lobby:localhost" || out["created"] != true {
		t.Fatalf("create: %v", out)
	}
	again := ts.mustDo(200, "POST", "/_agentspace/admin/v1/rooms", adminToken(t, ts), map[string]any{"name": "lobby", "agents": []string{"alex"}})
	if again["room_id"] != roomID || again["created"] != false {
		t.Fatalf("second create: %v", again)
	}
	ts.wantErr(400, "M_INVALID_PARAM", "POST", "/_agentspace/admin/v1/rooms", as, map[string]any{"name": "bad name"})

	alexTok := ts.agentToken(as, "agent_alex")
	agentMsg := ts.send(alexTok, roomID, "hello from alex")

	// A person joins and reads, but may not post.
	ts.mustDo(200, "POST", "/_matrix/client/v3/join/"+esc("#lobby:localhost"), aliceTok, map[string]any{})
	ts.wantErr(403, "M_FORBIDDEN", "PUT", "/_matrix/client/v3/rooms/"+esc(roomID)+"/send/m.room.message/x1", aliceTok,
		map[string]any{"msgtype": "m.text", "body": "may I?"})
	msgs := ts.mustDo(200, "GET", "/_matrix/client/v3/rooms/"+esc(roomID)+"/messages?dir=b&limit=50", aliceTok, nil)
	if !strings.Contains(fmt.Sprint(msgs["chunk"]), agentMsg) {
		t.Fatalf("alice cannot read the agent's message: %v", msgs)
	}
	// A guest peeks without joining (world readable), and may join.
	guest := ts.mustDo(200, "POST", "/_matrix/client/v3/register?kind=guest", "", map[string]any{})["access_token"].(string)
	peek := ts.mustDo(200, "GET", "/_matrix/client/v3/rooms/"+esc(roomID)+"/messages?dir=b&limit=50", guest, nil)
	if !strings.Contains(fmt.Sprint(peek["chunk"]), "hello from alex") {
		t.Fatalf("guest peek: %v", peek)
	}
	ts.mustDo(200, "POST", "/_matrix/client/v3/rooms/"+esc(roomID)+"/join", guest, map[string]any{})
	// Published in the room directory.
	pub := ts.mustDo(200, "GET", "/_matrix/client/v3/publicRooms", "", nil)
	if !strings.Contains(fmt.Sprint(pub["chunk"]), roomID) {
		t.Fatalf("not in the directory: %v", pub)
	}
	// An agent added later can post too.
	ts.mustDo(200, "POST", "/_agentspace/admin/v1/rooms", as, map[string]any{"name": "lobby", "agents": []string{"zoe"}})
	ts.send(ts.agentToken(as, "agent_zoe"), roomID, "zoe is here")

	// Private: invite only, not in the directory.
	priv := ts.mustDo(200, "POST", "/_agentspace/admin/v1/rooms", as, map[string]any{
		"name": "backroom", "agents": []string{"alex"}, "private": true, "invite": []string{"@bob:localhost"}})["room_id"].(string)
	ts.wantErr(403, "M_FORBIDDEN", "POST", "/_matrix/client/v3/rooms/"+esc(priv)+"/join", aliceTok, map[string]any{})
	if strings.Contains(fmt.Sprint(ts.mustDo(200, "GET", "/_matrix/client/v3/publicRooms", "", nil)["chunk"]), priv) {
		t.Fatal("private room in the directory")
	}
	ts.send(alexTok, priv, "private hello")
}

// Two bots echoing each other stop after the budget (429 with
// retry_after_ms, one notice); a human message resumes them; the admin
// API shows and changes the budget.
func TestLoopBreakerOverHTTP(t *testing.T) {
	ts := newTestServer(t)
	as := ts.builtinToken()
	_, aliceTok := ts.createUser("alice")
	roomID := ts.mustDo(200, "POST", "/_agentspace/admin/v1/rooms", as, map[string]any{
		"name": "echo", "agents": []string{"ping", "pong"}, "moderators": []string{"@alice:localhost"}})["room_id"].(string)
	ts.mustDo(200, "POST", "/_matrix/client/v3/rooms/"+esc(roomID)+"/join", aliceTok, map[string]any{})
	lbPath := "/_agentspace/admin/v1/rooms/" + esc("#echo:localhost") + "/loop_breaker"
	st := ts.mustDo(200, "PUT", lbPath, as, map[string]any{"max_consecutive": 4})
	if st["enabled"] != true || st["max_consecutive"].(float64) != 4 || st["max_per_minute"].(float64) != 30 {
		t.Fatalf("observer room loop breaker: %v", st)
	}
	bots := []string{ts.agentToken(as, "agent_ping"), ts.agentToken(as, "agent_pong")}
	sendAs := func(tok string, i int) (int, map[string]any) {
		return ts.do("PUT", fmt.Sprintf("/_matrix/client/v3/rooms/%s/send/m.room.message/e%d", esc(roomID), i), tok,
			map[string]any{"msgtype": "m.text", "body": fmt.Sprintf("echo %d", i)})
	}
	for i := range 4 {
		if status, out := sendAs(bots[i%2], i); status != 200 {
			t.Fatalf("bot message %d: %d %v", i, status, out)
		}
	}
	for i := 4; i < 8; i++ {
		status, out := sendAs(bots[i%2], i)
		if status != 429 || out["errcode"] != "M_LIMIT_EXCEEDED" || out["retry_after_ms"] == nil {
			t.Fatalf("bot message %d over the budget: %d %v", i, status, out)
		}
	}
	notices := func() int {
		n := 0
		msgs := ts.mustDo(200, "GET", "/_matrix/client/v3/rooms/"+esc(roomID)+"/messages?dir=b&limit=100", aliceTok, nil)
		for _, e := range msgs["chunk"].([]any) {
			ev := e.(map[string]any)
			if c, _ := ev["content"].(map[string]any); c["msgtype"] == "m.notice" && ev["sender"] == "@_agentspace:localhost" {
				n++
			}
		}
		return n
	}
	if n := notices(); n != 1 {
		t.Fatalf("%d notices, want 1", n)
	}
	if st := ts.mustDo(200, "GET", lbPath, as, nil); st["paused"] != "consecutive" {
		t.Fatalf("status %v", st)
	}
	// Reactions still pass; a person speaking resumes the bots.
	ts.mustDo(200, "PUT", "/_matrix/client/v3/rooms/"+esc(roomID)+"/send/m.reaction/r1", bots[0], map[string]any{})
	ts.send(aliceTok, roomID, "carry on")
	for i := 10; i < 14; i++ {
		if status, out := sendAs(bots[i%2], i); status != 200 {
			t.Fatalf("after the human: %d %v", status, out)
		}
	}
	if status, _ := sendAs(bots[0], 14); status != 429 {
		t.Fatalf("second pause: %d", status)
	}
	// The admin reset resumes them too; off means no limit.
	ts.wantErr(403, "M_FORBIDDEN", "POST", lbPath+"/reset", aliceTok, nil)
	ts.mustDo(200, "POST", lbPath+"/reset", adminToken(t, ts), nil)
	if status, _ := sendAs(bots[1], 15); status != 200 {
		t.Fatalf("after reset: %d", status)
	}
	ts.mustDo(200, "PUT", lbPath, as, map[string]any{"enabled": false})
	for i := 16; i < 24; i++ {
		if status, out := sendAs(bots[i%2], i); status != 200 {
			t.Fatalf("breaker off: %d %v", status, out)
		}
	}
	// Ordinary rooms have no loop breaker by default.
	plain := ts.createRoom(aliceTok, map[string]any{"preset": "public_chat"})
	ts.mustDo(200, "POST", "/_matrix/client/v3/rooms/"+esc(plain)+"/join", bots[0], map[string]any{})
	for i := range 30 {
		ts.send(bots[0], plain, fmt.Sprint("plain ", i))
	}
}

// The transcript lists every message with sender, display name, time,
// body, reply/thread/edit relations and deletions, in JSON lines and
// Markdown; stats count per sender with the median response time.
func TestTranscriptAndStats(t *testing.T) {
	ts := newTestServer(t)
	as := ts.builtinToken()
	roomID := ts.mustDo(200, "POST", "/_agentspace/admin/v1/rooms", as, map[string]any{"name": "talk", "agents": []string{"alex", "mia"}})["room_id"].(string)
	alex, mia := ts.agentToken(as, "agent_alex"), ts.agentToken(as, "agent_mia")
	ts.mustDo(200, "PUT", "/_matrix/client/v3/profile/@agent_alex:localhost/displayname", alex, map[string]any{"displayname": "Alex"})
	put := func(tok, txn string, content map[string]any) string {
		return ts.mustDo(200, "PUT", "/_matrix/client/v3/rooms/"+esc(roomID)+"/send/m.room.message/"+txn, tok, content)["event_id"].(string)
	}
	first := put(alex, "1", map[string]any{"msgtype": "m.text", "body": "one two three"})
	reply := put(mia, "2", map[string]any{"msgtype": "m.text", "body": "four five",
		"m.relates_to": map[string]any{"m.in_reply_to": map[string]any{"event_id": first}}})
	put(alex, "3", map[string]any{"msgtype": "m.text", "body": "in a thread",
		"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": first}})
	put(alex, "4", map[string]any{"msgtype": "m.text", "body": "* fixed", "m.new_content": map[string]any{"msgtype": "m.text", "body": "fixed"},
		"m.relates_to": map[string]any{"rel_type": "m.replace", "event_id": first}})
	gone := put(mia, "5", map[string]any{"msgtype": "m.text", "body": "oops"})
	ts.mustDo(200, "PUT", "/_matrix/client/v3/rooms/"+esc(roomID)+"/redact/"+esc(gone)+"/r1", mia, map[string]any{})

	status, raw := ts.doRaw("GET", "/_agentspace/admin/v1/rooms/"+esc(roomID)+"/transcript?format=jsonl", as, nil)
	if status != 200 {
		t.Fatalf("transcript: %d %s", status, raw)
	}
	var lines []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		lines = append(lines, m)
	}
	if len(lines) != 5 {
		t.Fatalf("%d lines, want 5:\n%s", len(lines), raw)
	}
	if l := lines[0]; l["sender"] != "@agent_alex:localhost" || l["display_name"] != "Alex" || l["body"] != "one two three" || l["time"] == "" {
		t.Errorf("first line %v", l)
	}
	if lines[1]["reply_to"] != first || lines[1]["display_name"] != "mia" {
		t.Errorf("reply line %v", lines[1])
	}
	if lines[2]["thread_root"] != first || lines[3]["replaces"] != first || lines[3]["body"] != "fixed" {
		t.Errorf("thread/edit lines %v %v", lines[2], lines[3])
	}
	if lines[4]["redacted"] != true || lines[4]["body"] != "" {
		t.Errorf("redacted line %v", lines[4])
	}
	status, md := ts.doRaw("GET", "/_agentspace/admin/v1/rooms/"+esc("#talk:localhost")+"/transcript?format=markdown", as, nil)
	if status != 200 {
		t.Fatalf("markdown: %d", status)
	}
	for _, want := range []string{"# talk", "### Alex · ", "> one two three", "reply to `" + first + "`", "_(message deleted)_", "edit of `" + first + "`"} {
		if !bytes.Contains(md, []byte(want)) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	ts.wantErr(400, "M_INVALID_PARAM", "GET", "/_agentspace/admin/v1/rooms/"+esc(roomID)+"/transcript?format=pdf", as, nil)
	ts.wantErr(404, "M_NOT_FOUND", "GET", "/_agentspace/admin/v1/rooms/"+esc("!nope:localhost")+"/transcript", as, nil)

	st := ts.mustDo(200, "GET", "/_agentspace/admin/v1/rooms/"+esc(roomID)+"/stats", as, nil)
	if st["messages"].(float64) != 3 || st["edits"].(float64) != 1 || st["redacted"].(float64) != 1 {
		t.Fatalf("stats %v", st)
	}
	senders := st["senders"].([]any)
	alexStats, miaStats := senders[0].(map[string]any), senders[1].(map[string]any)
	if alexStats["user_id"] != "@agent_alex:localhost" || alexStats["messages"].(float64) != 2 || alexStats["words"].(float64) != 6 ||
		alexStats["responses"].(float64) != 1 || alexStats["median_response_ms"] == nil {
		t.Errorf("alex %v", alexStats)
	}
	if miaStats["messages"].(float64) != 1 || miaStats["words"].(float64) != 2 || miaStats["responses"].(float64) != 1 {
		t.Errorf("mia %v", miaStats)
	}
	_ = reply
	status, _ = ts.doRaw("GET", "/_agentspace/admin/v1/rooms/"+esc(roomID)+"/stats", alex, nil)
	if status != http.StatusForbidden {
		t.Fatalf("an agent read stats: %d", status)
	}
}
