package clientapi

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/agentspace/agentspace/config"
	"github.com/agentspace/agentspace/storage"
)

// ---------------------------------------------------------------------------
// Webhook receivers.

// hookRequest is one request a receiver accepted.
type hookRequest struct {
	path   string
	header http.Header
	body   []byte
}

// hookReceiver is a local HTTP endpoint standing in for Slack, Discord or a
// generic webhook. While status is non-zero it refuses every request with it.
type hookReceiver struct {
	srv      *httptest.Server
	status   atomic.Int32
	attempts atomic.Int64
	mu       sync.Mutex
	got      []hookRequest
}

func newHookReceiver(t *testing.T) *hookReceiver {
	h := &hookReceiver{}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.attempts.Add(1)
		body, _ := io.ReadAll(r.Body)
		if s := h.status.Load(); s != 0 {
			http.Error(w, "receiver is down", int(s))
			return
		}
		h.mu.Lock()
		h.got = append(h.got, hookRequest{path: r.URL.Path, header: r.Header.Clone(), body: body})
		h.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(h.srv.Close)
	return h
}

// wait returns the first n accepted requests whose path starts with prefix.
func (h *hookReceiver) wait(t *testing.T, prefix string, n int) []hookRequest {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		h.mu.Lock()
		var out []hookRequest
		for _, r := range h.got {
			if strings.HasPrefix(r.path, prefix) {
				out = append(out, r)
			}
		}
		h.mu.Unlock()
		if len(out) >= n {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("receiver %s: got %d requests, want %d", prefix, len(out), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func decodeObject(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("not a JSON object: %q", b)
	}
	return m
}

// checkSignature verifies X-AgentSpace-Signature independently of the server's code.
func checkSignature(t *testing.T, r hookRequest, secret string) {
	t.Helper()
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(r.body)
	want := "sha256=" + hex.EncodeToString(m.Sum(nil))
	if got := r.header.Get("X-AgentSpace-Signature"); got != want {
		t.Fatalf("signature %q, want %q (body %s)", got, want, r.body)
	}
}

func setDisplayName(ts *testServer, token, userID, name string) {
	ts.t.Helper()
	ts.mustDo(200, "PUT", "/_matrix/client/v3/profile/"+url.PathEscape(userID)+"/displayname", token, map[string]any{"displayname": name})
}

// TestBridgeWebhookFormats: Slack, Discord and generic receivers get the
// messages of their rooms in the exact formats, signed where configured,
// and nothing else.
func TestBridgeWebhookFormats(t *testing.T) {
	recv := newHookReceiver(t)
	ts := newTestServer(t, func(c *config.Config) {
		c.Bridges.Webhooks = []config.WebhookConfig{
			{Name: "slack", Kind: "slack", Rooms: []string{"#bridged:localhost"}, URL: recv.srv.URL + "/slack/T000/B000/SECRETPATH"},
			{Name: "discord", Kind: "discord", Rooms: []string{"#bridged:localhost"}, URL: recv.srv.URL + "/discord/api/webhooks/1/TOKEN"},
			{Name: "generic", Kind: "http", Rooms: []string{"#bridged:localhost", "#other:localhost"}, URL: recv.srv.URL + "/generic", Secret: "s3cret"},
		}
	})
	aliceID, alice := ts.createUser("alice")
	setDisplayName(ts, alice, aliceID, "Alice <A&B>")
	room := ts.createRoom(alice, map[string]any{"room_alias_name": "bridged", "preset": "public_chat"})
	quiet := ts.createRoom(alice, map[string]any{"room_alias_name": "quiet"})
	ts.send(alice, quiet, "not forwarded")
	ev1 := ts.send(alice, room, "hello *world*")
	ts.mustDo(200, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/state/m.room.topic", alice, map[string]any{"topic": "state is not forwarded"})
	long := strings.Repeat("é", 2100)
	ev2 := ts.send(alice, room, long)

	slack := recv.wait(t, "/slack/", 2)
	if got, want := string(slack[0].body), `{"text":"Alice &lt;A&amp;B&gt;: hello *world*"}`; got != want {
		t.Errorf("slack payload %s, want %s", got, want)
	}
	if slack[0].header.Get("Content-Type") != "application/json" || slack[0].header.Get("X-AgentSpace-Signature") != "" {
		t.Errorf("slack headers: %v", slack[0].header)
	}
	discord := recv.wait(t, "/discord/", 2)
	if got, want := string(discord[0].body), `{"content":"hello *world*","username":"Alice <A&B>","allowed_mentions":{"parse":[]}}`; got != want {
		t.Errorf("discord payload %s, want %s", got, want)
	}
	if c := decodeObject(t, discord[1].body)["content"].(string); len([]rune(c)) != 2000 || !strings.HasSuffix(c, "…") {
		t.Errorf("discord content not cut to 2000 characters: %d", len([]rune(c)))
	}
	generic := recv.wait(t, "/generic", 2)
	for i, evID := range []string{ev1, ev2} {
		checkSignature(t, generic[i], "s3cret")
		m := decodeObject(t, generic[i].body)
		if len(m) != 6 || m["room"] != room || m["sender"] != aliceID || m["sender_name"] != "Alice <A&B>" || m["event_id"] != evID {
			t.Errorf("generic envelope %d: %s", i, generic[i].body)
		}
		if ts, ok := m["ts"].(float64); !ok || ts < float64(time.Now().Add(-time.Minute).UnixMilli()) {
			t.Errorf("generic envelope ts: %v", m["ts"])
		}
	}
	if decodeObject(t, generic[0].body)["body"] != "hello *world*" || decodeObject(t, generic[1].body)["body"] != long {
		t.Errorf("generic bodies: %s / %.80s", generic[0].body, generic[1].body)
	}
	// A room that gets one of the aliases later is picked up.
	other := ts.createRoom(alice, map[string]any{"room_alias_name": "other"})
	ev3 := ts.send(alice, other, "late alias")
	if m := decodeObject(t, recv.wait(t, "/generic", 3)[2].body); m["event_id"] != ev3 || m["room"] != other {
		t.Errorf("message of the later room: %v", m)
	}
	time.Sleep(200 * time.Millisecond)
	recv.mu.Lock()
	defer recv.mu.Unlock()
	if len(recv.got) != 7 {
		t.Errorf("receiver got %d requests, want 7 (2 slack, 2 discord, 3 generic)", len(recv.got))
	}
	for _, r := range recv.got {
		if strings.Contains(string(r.body), "not forwarded") {
			t.Errorf("forwarded something it should not: %s", r.body)
		}
	}
}

// TestBridgeWebhookReceiverDown: a receiver that fails for a while (across
// a restart of the server) then gets every message once, in order; the
// status endpoint shows the lag and the last error without the secret URL.
func TestBridgeWebhookReceiverDown(t *testing.T) {
	recv := newHookReceiver(t)
	recv.status.Store(http.StatusServiceUnavailable)
	dir := t.TempDir()
	var dbURL string
	mutate := func(c *config.Config) {
		c.Database.Path = dir + "/agentspace.db"
		if dbURL == "" {
			dbURL = c.Database.URL
		}
		c.Database.URL = dbURL
		c.AdminUsers = []string{"admin"}
		c.AppServiceRetry = config.RetryConfig{Min: config.Duration{Duration: 20 * time.Millisecond}, Max: config.Duration{Duration: 100 * time.Millisecond}}
		c.Bridges.Webhooks = []config.WebhookConfig{{Name: "archive", Kind: "http", Rooms: []string{"#log:localhost"},
			URL: recv.srv.URL + "/archive/SECRET-PATH?key=SECRET-KEY", Secret: "k"}}
	}
	ts := newTestServer(t, mutate)
	_, alice := ts.createUser("alice")
	_, admin := ts.createUser("admin")
	room := ts.createRoom(alice, map[string]any{"room_alias_name": "log"})
	var want []string
	for i := range 10 {
		want = append(want, ts.send(alice, room, fmt.Sprintf("m%d", i)))
	}
	// Failing: the status shows the backlog, the lag and the error.
	deadline := time.Now().Add(10 * time.Second)
	var st map[string]any
	for {
		list := ts.mustDo(200, "GET", "/_agentspace/admin/v1/bridges", admin, nil)["bridges"].([]any)
		st = list[0].(map[string]any)
		if st["consecutive_failures"].(float64) >= 2 && st["backlog"].(float64) == 10 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status never showed the failures: %v", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	raw, _ := json.Marshal(st)
	if !strings.Contains(st["last_error"].(string), "HTTP 503") || strings.Contains(string(raw), "SECRET") {
		t.Errorf("status: %s", raw)
	}
	if st["target"] != recv.srv.URL+"/REDACTED" || st["name"] != "archive" || st["type"] != "webhook" || st["kind"] != "http" {
		t.Errorf("status: %s", raw)
	}
	if st["lag_ms"].(float64) <= 0 || st["pending_txn_id"] == nil {
		t.Errorf("status lag/pending: %s", raw)
	}
	_, bob := ts.createUser("bob")
	ts.wantErr(403, "M_FORBIDDEN", "GET", "/_agentspace/admin/v1/bridges", bob, nil)

	// Restart while the receiver is still down; more messages meanwhile.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ts.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	ts = newTestServer(t, mutate)
	for i := 10; i < 15; i++ {
		want = append(want, ts.send(alice, room, fmt.Sprintf("m%d", i)))
	}
	time.Sleep(100 * time.Millisecond)
	recv.status.Store(0)
	got := recv.wait(t, "/archive/", 15)
	for i, r := range got {
		checkSignature(t, r, "k")
		if m := decodeObject(t, r.body); m["event_id"] != want[i] || m["body"] != fmt.Sprintf("m%d", i) {
			t.Fatalf("delivery %d: %s, want %s", i, r.body, want[i])
		}
	}
	time.Sleep(200 * time.Millisecond)
	recv.mu.Lock()
	n := len(recv.got)
	recv.mu.Unlock()
	if n != 15 {
		t.Errorf("receiver accepted %d requests, want exactly 15", n)
	}
	if recv.attempts.Load() < 17 {
		t.Errorf("only %d attempts: the failures were not retried", recv.attempts.Load())
	}
	var list []any
	for {
		list = ts.mustDo(200, "GET", "/_agentspace/admin/v1/bridges", admin, nil)["bridges"].([]any)
		if list[0].(map[string]any)["backlog"].(float64) == 0 || time.Now().After(deadline.Add(10*time.Second)) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st := list[0].(map[string]any); st["backlog"].(float64) != 0 || st["consecutive_failures"].(float64) != 0 || st["last_success_ts"].(float64) == 0 {
		t.Errorf("status after recovery: %v", st)
	}
}

// TestBridgeHooks: onMessageReceived, onRoomCreated and onRoomDeleted each
// POST a signed JSON body; a room deleted through the gateway (purged)
// still reaches onRoomDeleted.
func TestBridgeHooks(t *testing.T) {
	recv := newHookReceiver(t)
	ts := newTestServer(t, func(c *config.Config) {
		c.AdminUsers = []string{"admin"}
		c.Hooks = []config.HookConfig{
			{Name: "msgs", On: config.HookMessageReceived, URL: recv.srv.URL + "/msg", Secret: "m"},
			{Name: "created", On: config.HookRoomCreated, URL: recv.srv.URL + "/created", Secret: "c"},
			{Name: "deleted", On: config.HookRoomDeleted, URL: recv.srv.URL + "/deleted", Secret: "d"},
		}
	})
	aliceID, alice := ts.createUser("alice")
	adminID, admin := ts.createUser("admin")
	room := ts.createRoom(alice, map[string]any{"room_version": "11"})
	ev := ts.send(alice, room, "hi hooks")

	created := recv.wait(t, "/created", 1)[0]
	checkSignature(t, created, "c")
	if created.header.Get("X-AgentSpace-Hook") != "onRoomCreated" {
		t.Errorf("hook header: %v", created.header)
	}
	c := decodeObject(t, created.body)
	if c["hook"] != "onRoomCreated" || c["room"] != room || c["creator"] != aliceID || c["room_version"] != "11" || c["event_id"] == "" {
		t.Errorf("onRoomCreated: %s", created.body)
	}
	msg := recv.wait(t, "/msg", 1)[0]
	checkSignature(t, msg, "m")
	m := decodeObject(t, msg.body)
	if m["hook"] != "onMessageReceived" || m["room"] != room || m["sender"] != aliceID || m["sender_name"] != "alice" ||
		m["body"] != "hi hooks" || m["msgtype"] != "m.text" || m["event_id"] != ev {
		t.Errorf("onMessageReceived: %s", msg.body)
	}

	ts.wantErr(403, "M_FORBIDDEN", "DELETE", "/api/rooms/"+url.PathEscape(room), alice, nil)
	out := ts.mustDo(200, "DELETE", "/api/rooms/"+url.PathEscape(room), admin, nil)
	if !slices.Contains(toStrings(out["kicked_users"]), aliceID) {
		t.Errorf("delete: %v", out)
	}
	deleted := recv.wait(t, "/deleted", 1)[0]
	checkSignature(t, deleted, "d")
	d := decodeObject(t, deleted.body)
	if d["hook"] != "onRoomDeleted" || d["room"] != room || d["deleted_by"] != adminID || d["ts"].(float64) == 0 {
		t.Errorf("onRoomDeleted: %s", deleted.body)
	}
	if n := len(recv.wait(t, "/created", 1)); n != 1 {
		t.Errorf("onRoomCreated fired %d times", n)
	}
}

func toStrings(v any) []string {
	var out []string
	for _, x := range v.([]any) {
		out = append(out, x.(string))
	}
	return out
}

// ---------------------------------------------------------------------------
// The REST gateway.

func TestBridgeGatewayREST(t *testing.T) {
	ts := newTestServer(t, func(c *config.Config) { c.AdminUsers = []string{"admin"} })
	agentID, agent := ts.createUser("agent")
	bobID, bob := ts.createUser("bob")
	_, carol := ts.createUser("carol")
	_, admin := ts.createUser("admin")

	ts.wantErr(401, "M_MISSING_TOKEN", "POST", "/api/rooms/x/messages", "", map[string]any{"content": "x"})
	ts.wantErr(401, "M_UNKNOWN_TOKEN", "GET", "/api/rooms", "not-a-token", nil)
	ts.wantErr(405, "M_UNRECOGNIZED", "PUT", "/api/rooms", agent, map[string]any{})
	ts.wantErr(404, "M_UNRECOGNIZED", "GET", "/api/nothing", agent, nil)

	// Rooms: a public (observer) room and a private one.
	pub := ts.mustDo(200, "POST", "/api/rooms", agent, map[string]any{"name": "exp-1", "public": true, "topic": "an experiment"})
	pubID := pub["room_id"].(string)
	if pub["alias"] != "#exp-1:localhost" {
		t.Errorf("create public: %v", pub)
	}
	ts.wantErr(400, "M_ROOM_IN_USE", "POST", "/api/rooms", bob, map[string]any{"name": "exp-1", "public": true})
	ts.wantErr(400, "M_INVALID_PARAM", "POST", "/api/rooms", agent, map[string]any{"name": "has space", "public": true})
	ts.wantErr(400, "M_INVALID_PARAM", "POST", "/api/rooms", agent, map[string]any{"name": ""})
	ts.wantErr(400, "M_NOT_JSON", "POST", "/api/rooms", agent, "{nope")
	priv := ts.mustDo(200, "POST", "/api/rooms", agent, map[string]any{"name": "Secret plans", "invite": []string{bobID}})["room_id"].(string)

	find := func(list map[string]any, roomID string) map[string]any {
		for _, r := range list["rooms"].([]any) {
			if r := r.(map[string]any); r["room_id"] == roomID {
				return r
			}
		}
		return nil
	}
	mine := ts.mustDo(200, "GET", "/api/rooms", agent, nil)
	if r := find(mine, pubID); r == nil || r["public"] != true || r["world_readable"] != true || r["membership"] != "join" ||
		r["alias"] != "#exp-1:localhost" || r["name"] != "exp-1" || r["topic"] != "an experiment" {
		t.Errorf("agent's list, public room: %v", r)
	}
	if r := find(mine, priv); r == nil || r["public"] != false || r["name"] != "Secret plans" {
		t.Errorf("agent's list, private room: %v", r)
	}
	if r := find(ts.mustDo(200, "GET", "/api/rooms", bob, nil), priv); r == nil || r["membership"] != "invite" {
		t.Errorf("bob's list: the private room he is invited to: %v", r)
	}
	carols := ts.mustDo(200, "GET", "/api/rooms", carol, nil)
	if find(carols, priv) != nil || find(carols, pubID) == nil || find(carols, pubID)["membership"] != "" {
		t.Errorf("carol's list: %v", carols)
	}

	// Messages, by room id, alias and bare name; idempotent with txn_id.
	var ids []string
	for _, ref := range []string{pubID, "#exp-1:localhost", "exp-1"} {
		out := ts.mustDo(200, "POST", "/api/rooms/"+url.PathEscape(ref)+"/messages", agent, map[string]any{"content": "via " + ref})
		ids = append(ids, out["event_id"].(string))
	}
	a := ts.mustDo(200, "POST", "/api/rooms/exp-1/messages", agent, map[string]any{"content": "once", "txn_id": "t1", "type": "m.notice"})
	b := ts.mustDo(200, "POST", "/api/rooms/exp-1/messages", agent, map[string]any{"content": "once", "txn_id": "t1", "type": "m.notice"})
	if a["event_id"] != b["event_id"] {
		t.Errorf("txn_id did not make the post idempotent: %v %v", a, b)
	}
	msgs := ts.mustDo(200, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(pubID)+"/messages?dir=b&limit=10", agent, nil)
	var bodies []string
	for _, e := range msgs["chunk"].([]any) {
		e := e.(map[string]any)
		if e["type"] == "m.room.message" {
			c := e["content"].(map[string]any)
			bodies = append(bodies, c["msgtype"].(string)+":"+c["body"].(string))
			if e["sender"] != agentID {
				t.Errorf("message sent as %v", e["sender"])
			}
		}
	}
	if want := []string{"m.notice:once", "m.text:via exp-1", "m.text:via #exp-1:localhost", "m.text:via " + pubID}; !slices.Equal(bodies, want) {
		t.Errorf("the room holds %q, want %q", bodies, want)
	}
	ts.wantErr(400, "M_MISSING_PARAM", "POST", "/api/rooms/exp-1/messages", agent, map[string]any{})
	ts.wantErr(400, "M_BAD_JSON", "POST", "/api/rooms/exp-1/messages", agent, map[string]any{"content": 5})
	ts.wantErr(400, "M_INVALID_PARAM", "POST", "/api/rooms/exp-1/messages", agent, map[string]any{"content": "x", "type": "m.image"})
	ts.wantErr(404, "M_NOT_FOUND", "POST", "/api/rooms/no-such-room/messages", agent, map[string]any{"content": "x"})
	ts.wantErr(404, "M_NOT_FOUND", "POST", "/api/rooms/"+url.PathEscape("!nope:localhost")+"/messages", agent, map[string]any{"content": "x"})
	// The same rules as over Matrix: not a member; an observer without power.
	ts.wantErr(403, "M_FORBIDDEN", "POST", "/api/rooms/"+url.PathEscape(priv)+"/messages", carol, map[string]any{"content": "x"})
	ts.mustDo(200, "POST", "/api/rooms/exp-1/join", carol, nil)
	ts.wantErr(403, "M_FORBIDDEN", "POST", "/api/rooms/exp-1/messages", carol, map[string]any{"content": "humans watch"})
	ts.mustDo(200, "POST", "/api/rooms/exp-1/leave", carol, nil)

	// PATCH: the room's admins (and server admins) only.
	ts.wantErr(403, "M_FORBIDDEN", "PATCH", "/api/rooms/exp-1", bob, map[string]any{"name": "hijacked"})
	ts.wantErr(400, "M_MISSING_PARAM", "PATCH", "/api/rooms/exp-1", agent, map[string]any{})
	ts.wantErr(400, "M_INVALID_PARAM", "PATCH", "/api/rooms/exp-1", agent, map[string]any{"public": false})
	up := ts.mustDo(200, "PATCH", "/api/rooms/exp-1", agent, map[string]any{"name": "Experiment 1", "topic": "renamed"})
	if up["name"] != "Experiment 1" || up["topic"] != "renamed" {
		t.Errorf("patch: %v", up)
	}

	// DELETE: server admins only; afterwards the room is gone.
	ts.wantErr(403, "M_FORBIDDEN", "DELETE", "/api/rooms/exp-1", agent, nil)
	del := ts.mustDo(200, "DELETE", "/api/rooms/exp-1", admin, nil)
	if del["room_id"] != pubID || !slices.Contains(toStrings(del["local_aliases"]), "#exp-1:localhost") {
		t.Errorf("delete: %v", del)
	}
	ts.wantErr(404, "M_NOT_FOUND", "POST", "/api/rooms/exp-1/messages", agent, map[string]any{"content": "x"})
	ts.wantErr(404, "M_NOT_FOUND", "POST", "/api/rooms/"+url.PathEscape(pubID)+"/messages", agent, map[string]any{"content": "x"})
	if find(ts.mustDo(200, "GET", "/api/rooms", agent, nil), pubID) != nil {
		t.Error("a deleted room is still listed")
	}

	// Token revocation: one's own token; another user's (admins only).
	ts.wantErr(403, "M_FORBIDDEN", "POST", "/api/tokens/revoke", bob, map[string]any{"user_id": "@carol:localhost"})
	ts.mustDo(200, "POST", "/api/tokens/revoke", bob, nil)
	ts.wantErr(401, "M_UNKNOWN_TOKEN", "GET", "/api/rooms", bob, nil)
	ts.wantErr(401, "M_UNKNOWN_TOKEN", "GET", "/_matrix/client/v3/account/whoami", bob, nil)
	ts.wantErr(404, "M_NOT_FOUND", "POST", "/api/tokens/revoke", admin, map[string]any{"user_id": "@nobody:localhost"})
	ts.mustDo(200, "POST", "/api/tokens/revoke", admin, map[string]any{"user_id": "@carol:localhost"})
	ts.wantErr(401, "M_UNKNOWN_TOKEN", "GET", "/api/rooms", carol, nil)
	ts.mustDo(200, "GET", "/api/rooms", agent, nil) // everyone else still works
}

// ---------------------------------------------------------------------------
// The WebSocket gateway.

// wsClient is a test WebSocket client; a goroutine reads its frames.
type wsClient struct {
	t      *testing.T
	conn   *websocket.Conn
	frames chan map[string]any
	closed chan error
}

func wsURL(ts *testServer) string { return "ws" + strings.TrimPrefix(ts.URL, "http") + "/ws" }

func dialWS(t *testing.T, ts *testServer, header http.Header) *wsClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, wsURL(ts), &websocket.DialOptions{HTTPHeader: header})
	if err != nil {
		t.Fatalf("dial: %v (%v)", err, resp)
	}
	conn.SetReadLimit(4 << 20)
	c := &wsClient{t: t, conn: conn, frames: make(chan map[string]any, 4096), closed: make(chan error, 1)}
	go func() {
		for {
			_, data, err := conn.Read(context.Background())
			if err != nil {
				c.closed <- err
				close(c.frames)
				return
			}
			var m map[string]any
			if err := json.Unmarshal(data, &m); err != nil {
				m = map[string]any{"type": "NOT JSON", "raw": string(data)}
			}
			c.frames <- m
		}
	}()
	t.Cleanup(func() { _ = conn.CloseNow() })
	return c
}

func (c *wsClient) send(v any) {
	c.t.Helper()
	var b []byte
	switch v := v.(type) {
	case string:
		b = []byte(v)
	case []byte:
		b = v
	default:
		b, _ = json.Marshal(v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.conn.Write(ctx, websocket.MessageText, b); err != nil {
		c.t.Fatalf("websocket write: %v", err)
	}
}

// next returns the next frame (failing after 10 s).
func (c *wsClient) next() map[string]any {
	c.t.Helper()
	select {
	case f, ok := <-c.frames:
		if !ok {
			c.t.Fatal("the connection closed")
		}
		return f
	case <-time.After(10 * time.Second):
		c.t.Fatal("no frame within 10s")
	}
	return nil
}

// expect returns the next frame, which must be of type typ.
func (c *wsClient) expect(typ string) map[string]any {
	c.t.Helper()
	f := c.next()
	if f["type"] != typ {
		c.t.Fatalf("got frame %v, want type %s", f, typ)
	}
	return f
}

// expectError returns the next frame, which must be an error with errcode.
func (c *wsClient) expectError(errcode string) map[string]any {
	c.t.Helper()
	f := c.expect("error")
	if f["errcode"] != errcode || f["error"] == "" {
		c.t.Fatalf("got error %v, want %s", f, errcode)
	}
	return f
}

// barrier sends a ping and returns the frames that arrive before its pong.
func (c *wsClient) barrier() []map[string]any {
	c.t.Helper()
	id := fmt.Sprintf("b%d", time.Now().UnixNano())
	c.send(map[string]any{"type": "ping", "id": id})
	var before []map[string]any
	for {
		f := c.next()
		if f["type"] == "pong" && f["id"] == id {
			return before
		}
		before = append(before, f)
	}
}

func mautrixClient(t *testing.T, ts *testServer, userID, token string) *mautrix.Client {
	t.Helper()
	cli, err := mautrix.NewClient(ts.URL, id.UserID(userID), token)
	if err != nil {
		t.Fatal(err)
	}
	return cli
}

// TestBridgeGatewayWebSocket is the scenario: a WebSocket client
// joins two rooms, receives what a Matrix client (mautrix-go) posts, posts
// back, disconnects, and after reconnecting with since misses nothing (more
// than the in-memory window of a room, so the catch-up reads the database).
func TestBridgeGatewayWebSocket(t *testing.T) {
	ts := newTestServer(t)
	ctx := context.Background()
	aliceID, aliceTok := ts.createUser("alice")
	agentID, agentTok := ts.createUser("agent")
	setDisplayName(ts, aliceTok, aliceID, "Alice")
	alice := mautrixClient(t, ts, aliceID, aliceTok)
	ra, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomAliasName: "ws-a"})
	if err != nil {
		t.Fatal(err)
	}
	rb, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{id.UserID(agentID)}})
	if err != nil {
		t.Fatal(err)
	}
	roomA, roomB := string(ra.RoomID), string(rb.RoomID)

	ws := dialWS(t, ts, nil)
	ws.send(map[string]any{"type": "join", "room": "ws-a", "token": agentTok})
	if f := ws.expect("joined"); f["room"] != "ws-a" || f["roomId"] != roomA || f["readOnly"] != false {
		t.Fatalf("joined A: %v", f)
	}
	ws.send(map[string]any{"type": "join", "room": roomB, "token": agentTok, "id": 7})
	if f := ws.expect("joined"); f["room"] != roomB || f["id"] != float64(7) {
		t.Fatalf("joined B: %v", f)
	}
	if m, err := alice.JoinedMembers(ctx, rb.RoomID); err != nil || len(m.Joined) != 2 {
		t.Fatalf("the agent did not join the Matrix room: %v %v", m, err)
	}

	sa, err := alice.SendText(ctx, ra.RoomID, "a1")
	if err != nil {
		t.Fatal(err)
	}
	sb, err := alice.SendText(ctx, rb.RoomID, "b1")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]map[string]any{}
	for len(got) < 2 {
		f := ws.expect("message")
		got[f["content"].(string)] = f
	}
	if f := got["a1"]; f["room"] != "ws-a" || f["roomId"] != roomA || f["senderId"] != aliceID || f["senderName"] != "Alice" ||
		f["eventId"] != string(sa.EventID) || f["msgtype"] != "m.text" || f["timestamp"].(float64) < float64(time.Now().Add(-time.Minute).UnixMilli()) {
		t.Errorf("message a1: %v", f)
	}
	if f := got["b1"]; f["room"] != roomB || f["eventId"] != string(sb.EventID) {
		t.Errorf("message b1: %v", f)
	}

	// Post back; the Matrix client sees it, the socket gets an ack and the echo.
	ws.send(map[string]any{"type": "message", "room": "ws-a", "content": "reply from the agent", "id": "r1"})
	var sentID string
	for _, f := range []map[string]any{ws.next(), ws.next()} {
		switch f["type"] {
		case "sent":
			if f["id"] != "r1" || f["room"] != "ws-a" {
				t.Errorf("ack: %v", f)
			}
			sentID = f["eventId"].(string)
		case "message":
			if f["content"] != "reply from the agent" || f["senderId"] != agentID {
				t.Errorf("echo: %v", f)
			}
		default:
			t.Fatalf("unexpected frame %v", f)
		}
	}
	ev, err := alice.GetEvent(ctx, ra.RoomID, id.EventID(sentID))
	if err != nil || ev.Sender != id.UserID(agentID) || ev.Content.Raw["body"] != "reply from the agent" {
		t.Fatalf("alice does not see the reply: %v %v", ev, err)
	}
	// The same id again is the same event (idempotent).
	ws.send(map[string]any{"type": "message", "room": "ws-a", "content": "reply from the agent", "id": "r1"})
	if f := ws.expect("sent"); f["eventId"] != sentID {
		t.Errorf("resent id made a new event: %v", f)
	}
	if extra := ws.barrier(); len(extra) != 0 {
		t.Errorf("frames before the barrier: %v", extra)
	}
	lastA, lastB := sentID, string(sb.EventID)

	// Disconnect; meanwhile more than a room's in-memory window is posted.
	_ = ws.conn.Close(websocket.StatusNormalClosure, "bye")
	var wantA, wantB []string
	for i := range 70 {
		body := fmt.Sprintf("a-missed-%d", i)
		if _, err := alice.SendMessageEvent(ctx, ra.RoomID, event.EventMessage, map[string]any{"msgtype": "m.text", "body": body}); err != nil {
			t.Fatal(err)
		}
		wantA = append(wantA, body)
	}
	for i := range 3 {
		body := fmt.Sprintf("b-missed-%d", i)
		if _, err := alice.SendText(ctx, rb.RoomID, body); err != nil {
			t.Fatal(err)
		}
		wantB = append(wantB, body)
	}
	ts.mustDo(200, "POST", "/api/rooms/ws-a/messages", agentTok, map[string]any{"content": "posted over REST"})
	wantA = append(wantA, "posted over REST")

	// Reconnect with since: exactly the missed messages, in order, then live.
	ws = dialWS(t, ts, http.Header{"Authorization": []string{"Bearer " + agentTok}}) // token on the upgrade this time
	ws.send(map[string]any{"type": "join", "room": "#ws-a:localhost", "since": lastA})
	ws.expect("joined")
	ws.send(map[string]any{"type": "join", "room": roomB, "since": lastB})
	var gotA, gotB []string
	for len(gotA) < len(wantA) || len(gotB) < len(wantB) {
		f := ws.next()
		switch {
		case f["type"] == "joined":
		case f["type"] == "message" && f["roomId"] == roomA:
			if f["room"] != "#ws-a:localhost" {
				t.Errorf("frame names the room %v", f["room"])
			}
			gotA = append(gotA, f["content"].(string))
		case f["type"] == "message" && f["roomId"] == roomB:
			gotB = append(gotB, f["content"].(string))
		default:
			t.Fatalf("unexpected frame %v", f)
		}
	}
	if !slices.Equal(gotA, wantA) || !slices.Equal(gotB, wantB) {
		t.Fatalf("replay:\n A %q\n want %q\n B %q\n want %q", gotA, wantA, gotB, wantB)
	}
	if extra := ws.barrier(); len(extra) != 0 {
		t.Errorf("duplicates after the replay: %v", extra)
	}
	if _, err := alice.SendText(ctx, ra.RoomID, "live again"); err != nil {
		t.Fatal(err)
	}
	if f := ws.expect("message"); f["content"] != "live again" {
		t.Errorf("live after replay: %v", f)
	}
	// Leave: nothing more from A (the Matrix membership stays).
	ws.send(map[string]any{"type": "leave", "room": "#ws-a:localhost"})
	ws.expect("left")
	if _, err := alice.SendText(ctx, ra.RoomID, "after leave"); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.SendText(ctx, rb.RoomID, "b live"); err != nil {
		t.Fatal(err)
	}
	if f := ws.expect("message"); f["content"] != "b live" {
		t.Errorf("after leaving A: %v", f)
	}
	if m, _ := ts.Rooms().Membership(ctx, roomA, agentID); m != "join" {
		t.Errorf("the WebSocket leave changed the Matrix membership to %q", m)
	}
}

// TestBridgeGatewayWebSocketBadInput: every bad frame gets an error frame,
// and the connection (or at least the server) survives.
func TestBridgeGatewayWebSocketBadInput(t *testing.T) {
	ts := newTestServer(t)
	aliceID, alice := ts.createUser("alice")
	_, agent := ts.createUser("agent")
	room := ts.createRoom(alice, map[string]any{"preset": "public_chat", "room_alias_name": "open"})
	private := ts.createRoom(alice, map[string]any{"preset": "private_chat"})

	// Plain HTTP on /ws, and an upgrade with a bad token.
	ts.wantErr(400, "M_UNRECOGNIZED", "GET", "/ws", "", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, resp, err := websocket.Dial(ctx, wsURL(ts), &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": []string{"Bearer nope"}}})
	if err == nil || resp == nil || resp.StatusCode != 401 {
		t.Fatalf("upgrade with a bad token: %v %v", err, resp)
	}

	ws := dialWS(t, ts, nil)
	for _, c := range []struct {
		frame   any
		errcode string
	}{
		{`{not json`, "M_NOT_JSON"},
		{`[1,2]`, "M_BAD_JSON"},
		{`"join"`, "M_BAD_JSON"},
		{`{"type":"join","room":5}`, "M_BAD_JSON"},
		{`{}`, "M_MISSING_PARAM"},
		{`{"type":"dance"}`, "M_UNRECOGNIZED"},
		{map[string]any{"type": "join", "room": "open"}, "M_MISSING_TOKEN"},
		{map[string]any{"type": "join", "room": "open", "token": "nope"}, "M_UNKNOWN_TOKEN"},
		{map[string]any{"type": "join", "room": "no-such-room", "token": agent}, "M_NOT_FOUND"},
		{map[string]any{"type": "join", "room": "#no-such:localhost", "token": agent}, "M_NOT_FOUND"},
		{map[string]any{"type": "join", "room": "!nope:localhost", "token": agent}, "M_NOT_FOUND"},
		{map[string]any{"type": "join", "room": "", "token": agent}, "M_MISSING_PARAM"},
		{map[string]any{"type": "join", "room": private, "token": agent}, "M_FORBIDDEN"},
		{map[string]any{"type": "join", "room": "open", "token": agent, "since": "$nope"}, "M_NOT_FOUND"},
		{map[string]any{"type": "message", "room": "open", "content": "not joined"}, "M_FORBIDDEN"},
		{map[string]any{"type": "leave", "room": "open"}, "M_FORBIDDEN"},
	} {
		ws.send(c.frame)
		ws.expectError(c.errcode)
	}
	// An oversized frame: an error, and the connection stays.
	ws.send(`{"type":"message","room":"open","content":"` + strings.Repeat("x", 200<<10) + `"}`)
	ws.expectError("M_TOO_LARGE")
	ws.send(map[string]any{"type": "join", "room": "open", "token": agent})
	ws.expect("joined")
	ws.send(map[string]any{"type": "message", "room": "open", "content": ""})
	ws.expectError("M_MISSING_PARAM")
	ws.send(map[string]any{"type": "message", "room": "open", "content": "x", "msgtype": "m.file"})
	ws.expectError("M_INVALID_PARAM")
	if extra := ws.barrier(); len(extra) != 0 {
		t.Fatalf("unexpected frames: %v", extra)
	}

	// A revoked token: its subscriptions end and its messages are refused.
	second := ts.newDeviceToken(aliceID)
	ws2 := dialWS(t, ts, nil)
	ws2.send(map[string]any{"type": "join", "room": room, "token": second})
	ws2.expect("joined")
	ts.mustDo(200, "POST", "/api/tokens/revoke", second, nil)
	ws2.send(map[string]any{"type": "message", "room": room, "content": "with a revoked token"})
	sawRevoked := false
	for _, f := range []map[string]any{ws2.next(), ws2.next()} {
		if f["type"] == "error" && f["errcode"] == "M_UNKNOWN_TOKEN" {
			sawRevoked = true
		} else if f["type"] != "error" {
			t.Fatalf("after revocation: %v", f)
		}
	}
	if !sawRevoked {
		t.Fatal("no M_UNKNOWN_TOKEN after revocation")
	}
	ts.send(alice, room, "not for revoked eyes")
	time.Sleep(100 * time.Millisecond)
	for _, f := range ws2.barrier() {
		if f["type"] == "message" {
			t.Fatalf("a revoked subscription still receives: %v", f)
		}
	}
	// The first connection is unaffected and got the message.
	if f := ws.expect("message"); f["content"] != "not for revoked eyes" {
		t.Fatalf("first connection: %v", f)
	}

	// A frame over the hard limit closes that connection (1009), and only it.
	big := make([]byte, 2<<20)
	for i := range big {
		big[i] = 'x'
	}
	_ = ws.conn.Write(context.Background(), websocket.MessageText, big)
	select {
	case err := <-ws.closed:
		if websocket.CloseStatus(err) != websocket.StatusMessageTooBig {
			var ce websocket.CloseError
			if !errors.As(err, &ce) {
				t.Logf("connection ended with %v", err)
			}
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the connection survived a 2 MiB frame")
	}
	ws3 := dialWS(t, ts, nil)
	ws3.send(map[string]any{"type": "join", "room": "open", "token": agent})
	ws3.expect("joined")
	ts.mustDo(200, "GET", "/api/rooms", agent, nil)
}

// newDeviceToken logs userID in on a new device directly in the database.
func (ts *testServer) newDeviceToken(userID string) string {
	ts.t.Helper()
	ctx := context.Background()
	token := storage.NewToken("syt_")
	device := fmt.Sprintf("DEV%d", time.Now().UnixNano())
	err := ts.db.Write(ctx, func(tx *storage.Tx) error {
		now := time.Now().UnixMilli()
		if err := tx.UpsertDevice(ctx, &storage.Device{UserID: userID, DeviceID: device, CreatedTS: now}); err != nil {
			return err
		}
		return tx.InsertAccessToken(ctx, &storage.AccessToken{TokenHash: storage.HashToken(token), UserID: userID, DeviceID: device, CreatedTS: now})
	})
	if err != nil {
		ts.t.Fatal(err)
	}
	return token
}

// TestBridgeGatewayObserverRoom: in a public room made through the gateway
// people may watch over the WebSocket but not post; a reader without an
// account-level membership (a guest) reads the world-readable room, and a
// kicked user's subscription ends.
func TestBridgeGatewayObserverRoom(t *testing.T) {
	ts := newTestServer(t, func(c *config.Config) { c.Registration.AllowGuests = true })
	_, agent := ts.createUser("agent")
	_, human := ts.createUser("human")
	roomID := ts.mustDo(200, "POST", "/api/rooms", agent, map[string]any{"name": "watch-me", "public": true})["room_id"].(string)

	watcher := dialWS(t, ts, nil)
	watcher.send(map[string]any{"type": "join", "room": "watch-me", "token": human})
	if f := watcher.expect("joined"); f["readOnly"] != false {
		t.Fatalf("joined: %v", f)
	}
	watcher.send(map[string]any{"type": "message", "room": "watch-me", "content": "can I talk?"})
	watcher.expectError("M_FORBIDDEN")

	guest := ts.mustDo(200, "POST", "/_matrix/client/v3/register?kind=guest", "", map[string]any{})["access_token"].(string)
	g := dialWS(t, ts, nil)
	g.send(map[string]any{"type": "join", "room": "watch-me", "token": guest})
	g.expect("joined")

	ts.mustDo(200, "POST", "/api/rooms/watch-me/messages", agent, map[string]any{"content": "agents talk"})
	if f := watcher.expect("message"); f["content"] != "agents talk" {
		t.Fatalf("watcher: %v", f)
	}
	if f := g.expect("message"); f["content"] != "agents talk" {
		t.Fatalf("guest: %v", f)
	}
	g.send(map[string]any{"type": "message", "room": "watch-me", "content": "guest talk"})
	g.expectError("M_FORBIDDEN")

	// Kicked from a room that is not world-readable: the subscription ends.
	priv := ts.createRoom(agent, map[string]any{"preset": "public_chat", "initial_state": []map[string]any{
		{"type": "m.room.history_visibility", "content": map[string]any{"history_visibility": "joined"}}}})
	watcher.send(map[string]any{"type": "join", "room": priv, "token": human})
	watcher.expect("joined")
	ts.mustDo(200, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(priv)+"/kick", agent, map[string]any{"user_id": "@human:localhost"})
	if f := watcher.expectError("M_FORBIDDEN"); f["room"] != priv {
		t.Fatalf("kick: %v", f)
	}
	ts.send(agent, priv, "after the kick")
	for _, f := range watcher.barrier() {
		if f["type"] == "message" {
			t.Fatalf("a kicked user still receives: %v", f)
		}
	}
	_ = roomID
}

// TestBridgeGatewayShutdown: a graceful shutdown closes open WebSockets
// with 1001 (going away) and does not wait for them to time out.
func TestBridgeGatewayShutdown(t *testing.T) {
	ts := newTestServer(t)
	_, agent := ts.createUser("agent")
	ts.createRoom(agent, map[string]any{"room_alias_name": "bye"})
	ws := dialWS(t, ts, nil)
	ws.send(map[string]any{"type": "join", "room": "bye", "token": agent})
	ws.expect("joined")
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	start := time.Now()
	if err := ts.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("shutdown took %s", d)
	}
	select {
	case err := <-ws.closed:
		if websocket.CloseStatus(err) != websocket.StatusGoingAway {
			t.Errorf("closed with %v, want 1001", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the WebSocket stayed open after shutdown")
	}
}

// TestBridgeGatewayRateLimit: gateway posts draw from the same per-user
// bucket as Matrix sends, over REST and over the WebSocket.
func TestBridgeGatewayRateLimit(t *testing.T) {
	ts := newTestServer(t, func(c *config.Config) {
		c.RateLimit = config.RateLimitConfig{Enabled: true, PerSecond: 0.01, Burst: 4} // createRoom takes one
	})
	_, agent := ts.createUser("agent")
	room := ts.createRoom(agent, map[string]any{"room_alias_name": "busy"})
	ws := dialWS(t, ts, nil)
	ws.send(map[string]any{"type": "join", "room": "busy", "token": agent}) // already joined: no Matrix join, no token drawn
	ws.expect("joined")
	ts.mustDo(200, "POST", "/api/rooms/busy/messages", agent, map[string]any{"content": "1"})
	ts.mustDo(200, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/send/m.room.message/rl1", agent, map[string]any{"msgtype": "m.text", "body": "2"})
	ws.send(map[string]any{"type": "message", "room": "busy", "content": "3", "id": "m3"})
	for {
		if f := ws.next(); f["type"] == "sent" {
			break
		}
	}
	out := ts.wantErr(429, "M_LIMIT_EXCEEDED", "POST", "/api/rooms/busy/messages", agent, map[string]any{"content": "4"})
	if out["retry_after_ms"] == nil {
		t.Errorf("no retry_after_ms: %v", out)
	}
	ws.send(map[string]any{"type": "message", "room": "busy", "content": "5", "id": "m5"})
	for {
		f := ws.next()
		if f["type"] == "error" {
			if f["errcode"] != "M_LIMIT_EXCEEDED" || f["id"] != "m5" {
				t.Fatalf("error frame: %v", f)
			}
			break
		}
	}
}
