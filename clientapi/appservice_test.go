package clientapi

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentspace/agentspace/config"
	"github.com/agentspace/agentspace/storage"
)

// asReceiver is a real HTTP appservice on 127.0.0.1 that records every
// transaction; failFirst makes its first N transaction answers 500.
type asReceiver struct {
	*httptest.Server
	hsToken string

	mu        sync.Mutex
	failFirst int
	attempts  []string         // txnIds in arrival order, failures included
	delivered map[string]bool  // txnIds answered 200
	events    []map[string]any // events of accepted transactions, in order
	ephemeral []map[string]any // ephemeral events of accepted transactions
	toDevice  []map[string]any // to-device events of accepted transactions
	onUser    func(userID string) int
	pings     []string
	badAuth   int
	notify    chan struct{}
}

func newASReceiver(t *testing.T, hsToken string) *asReceiver {
	rc := &asReceiver{hsToken: hsToken, delivered: map[string]bool{}, notify: make(chan struct{}, 1)}
	rc.Server = httptest.NewServer(http.HandlerFunc(rc.serve))
	t.Cleanup(rc.Close)
	return rc
}

func (rc *asReceiver) serve(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer "+rc.hsToken {
		rc.mu.Lock()
		rc.badAuth++
		rc.mu.Unlock()
		w.WriteHeader(http.StatusForbidden)
		_, _ = w.Write([]byte(`{"errcode":"M_FORBIDDEN"}`))
		return
	}
	body, _ := io.ReadAll(r.Body)
	switch {
	case r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, "/_matrix/app/v1/transactions/"):
		txnID := strings.TrimPrefix(r.URL.Path, "/_matrix/app/v1/transactions/")
		rc.mu.Lock()
		rc.attempts = append(rc.attempts, txnID)
		if rc.failFirst > 0 {
			rc.failFirst--
			rc.mu.Unlock()
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = w.Write([]byte(`{"errcode":"M_UNKNOWN","error":"not today"}`))
			return
		}
		if !rc.delivered[txnID] { // a resent transaction is processed once, as real appservices do
			var txn struct {
				Events    []map[string]any `json:"events"`
				Ephemeral []map[string]any `json:"ephemeral"`
				ToDevice  []map[string]any `json:"to_device"`
			}
			if err := json.Unmarshal(body, &txn); err != nil {
				rc.mu.Unlock()
				w.WriteHeader(http.StatusBadRequest)
				return
			}
			rc.delivered[txnID] = true
			rc.events = append(rc.events, txn.Events...)
			rc.ephemeral = append(rc.ephemeral, txn.Ephemeral...)
			rc.toDevice = append(rc.toDevice, txn.ToDevice...)
		}
		rc.mu.Unlock()
		select {
		case rc.notify <- struct{}{}:
		default:
		}
		_, _ = w.Write([]byte(`{}`))
	case r.Method == http.MethodPost && r.URL.Path == "/_matrix/app/v1/ping":
		var p struct {
			TransactionID string `json:"transaction_id"`
		}
		_ = json.Unmarshal(body, &p)
		rc.mu.Lock()
		rc.pings = append(rc.pings, p.TransactionID)
		rc.mu.Unlock()
		_, _ = w.Write([]byte(`{}`))
	case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/_matrix/app/v1/users/"):
		userID, _ := url.PathUnescape(strings.TrimPrefix(r.URL.EscapedPath(), "/_matrix/app/v1/users/"))
		status := http.StatusNotFound
		if rc.onUser != nil {
			status = rc.onUser(userID)
		}
		w.WriteHeader(status)
		_, _ = w.Write([]byte(`{}`))
	default:
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"errcode":"M_UNRECOGNIZED"}`))
	}
}

// waitEvents waits until pred holds for the delivered events.
func (rc *asReceiver) waitFor(t *testing.T, what string, pred func(events, ephemeral, toDevice []map[string]any) bool) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		rc.mu.Lock()
		ok := pred(rc.events, rc.ephemeral, rc.toDevice)
		rc.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-rc.notify:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			rc.mu.Lock()
			defer rc.mu.Unlock()
			t.Fatalf("timed out waiting for %s; got %d events, attempts %v", what, len(rc.events), rc.attempts)
		}
	}
}

// bodiesIn returns the bodies of delivered m.room.message events in a room.
func bodiesIn(events []map[string]any, roomID string) []string {
	var out []string
	for _, e := range events {
		if e["type"] == "m.room.message" && e["room_id"] == roomID {
			c, _ := e["content"].(map[string]any)
			b, _ := c["body"].(string)
			out = append(out, b)
		}
	}
	return out
}

const testASToken, testHSToken = "as_test_token_0123456789", "hs_test_token_0123456789"

// writeRegistration writes a registration file and returns its path.
func writeRegistration(t *testing.T, dir, id, asToken, hsToken, url, sender, extra string) string {
	t.Helper()
	if url == "" {
		url = "null"
	}
	body := fmt.Sprintf(`id: %s
url: %s
as_token: %s
hs_token: %s
sender_localpart: %s
namespaces:
  users:
    - regex: '@agent_.*:localhost'
      exclusive: true
  aliases:
    - regex: '#agents_.*:localhost'
      exclusive: true
%s`, id, url, asToken, hsToken, sender, extra)
	path := filepath.Join(dir, id+".yaml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// newASServer starts a homeserver with one appservice registered whose
// transactions go to rc (rc may be nil: the appservice has no URL).
func newASServer(t *testing.T, rc *asReceiver, extra string, mutate ...func(*config.Config)) *testServer {
	t.Helper()
	u := ""
	if rc != nil {
		u = rc.URL
	}
	path := writeRegistration(t, t.TempDir(), "agents", testASToken, testHSToken, u, "agentbot", extra)
	return newTestServer(t, append([]func(*config.Config){func(c *config.Config) {
		c.AppServiceConfigFiles = []string{path}
		c.AppServiceRetry = config.RetryConfig{Min: config.Duration{Duration: 20 * time.Millisecond}, Max: config.Duration{Duration: 200 * time.Millisecond}}
	}}, mutate...)...)
}

// restart stops ts and starts a new server on the same configuration and data.
func (ts *testServer) restart() *testServer {
	ts.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ts.Shutdown(ctx); err != nil {
		ts.t.Fatalf("shutdown: %v", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	srv, err := NewServer(ctx, ts.cfg, log)
	if err != nil {
		ts.t.Fatalf("restart: %v", err)
	}
	if err := srv.Start(); err != nil {
		ts.t.Fatalf("restart: %v", err)
	}
	ts.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return &testServer{Server: srv, URL: srv.BaseURL(), t: ts.t}
}

func TestAppserviceAuthAndMasquerade(t *testing.T) {
	ts := newASServer(t, nil, "")
	who := ts.mustDo(200, "GET", "/_matrix/client/v3/account/whoami", testASToken, nil)
	if who["user_id"] != "@agentbot:localhost" {
		t.Fatalf("as_token acts as %v, want the sender", who["user_id"])
	}
	// The legacy query parameter works too.
	who = ts.mustDo(200, "GET", "/_matrix/client/v3/account/whoami?access_token="+testASToken, "", nil)
	if who["user_id"] != "@agentbot:localhost" {
		t.Fatalf("access_token query: %v", who)
	}
	// Not yet registered user in the namespace.
	ts.wantErr(403, "M_FORBIDDEN", "GET", "/_matrix/client/v3/account/whoami?user_id=@agent_alice:localhost", testASToken, nil)
	ts.mustDo(200, "POST", "/_matrix/client/v3/register", testASToken, map[string]any{
		"type": "m.login.application_service", "username": "agent_alice", "inhibit_login": true})
	who = ts.mustDo(200, "GET", "/_matrix/client/v3/account/whoami?user_id=@agent_alice:localhost", testASToken, nil)
	if who["user_id"] != "@agent_alice:localhost" {
		t.Fatalf("masquerade: %v", who)
	}
	// Outside the namespace, even for a user that exists.
	ts.createUser("bob")
	ts.wantErr(403, "M_FORBIDDEN", "GET", "/_matrix/client/v3/account/whoami?user_id=@bob:localhost", testASToken, nil)
	// A wrong token is an unknown token.
	ts.wantErr(401, "M_UNKNOWN_TOKEN", "GET", "/_matrix/client/v3/account/whoami", "as_wrong", nil)
	// The hs_token is not an access token.
	ts.wantErr(401, "M_UNKNOWN_TOKEN", "GET", "/_matrix/client/v3/account/whoami", testHSToken, nil)
}

func TestAppserviceRegisterLoginAndNamespaces(t *testing.T) {
	ts := newASServer(t, nil, "")
	reg := func(token string, body map[string]any) (int, map[string]any) {
		return ts.do("POST", "/_matrix/client/v3/register", token, body)
	}
	// Registration creates a bot user and (without inhibit_login) a token.
	status, out := reg(testASToken, map[string]any{"type": "m.login.application_service", "username": "agent_bob"})
	if status != 200 || out["user_id"] != "@agent_bob:localhost" || out["access_token"] == nil || out["device_id"] == nil {
		t.Fatalf("appservice registration: %d %v", status, out)
	}
	u, err := ts.DB().UserByID(context.Background(), "@agent_bob:localhost")
	if err != nil || u.UserType == nil || *u.UserType != "bot" || u.AppserviceID == nil || *u.AppserviceID != "agents" {
		t.Fatalf("user not marked as the appservice's bot: %+v %v", u, err)
	}
	ts.mustDo(200, "GET", "/_matrix/client/v3/account/whoami", out["access_token"].(string), nil)
	// The sender exists from start-up and is a bot too.
	sender, err := ts.DB().UserByID(context.Background(), "@agentbot:localhost")
	if err != nil || sender.UserType == nil || *sender.UserType != "bot" {
		t.Fatalf("sender user: %+v %v", sender, err)
	}

	ts.wantErr(400, "M_USER_IN_USE", "POST", "/_matrix/client/v3/register", testASToken, map[string]any{"type": "m.login.application_service", "username": "agent_bob"})
	ts.wantErr(400, "M_EXCLUSIVE", "POST", "/_matrix/client/v3/register", testASToken, map[string]any{"type": "m.login.application_service", "username": "carol"})
	ts.wantErr(401, "M_MISSING_TOKEN", "POST", "/_matrix/client/v3/register", "", map[string]any{"type": "m.login.application_service", "username": "agent_x"})
	ts.wantErr(401, "M_UNKNOWN_TOKEN", "POST", "/_matrix/client/v3/register", "as_nope", map[string]any{"type": "m.login.application_service", "username": "agent_x"})
	ts.wantErr(400, "M_MISSING_PARAM", "POST", "/_matrix/client/v3/register", testASToken, map[string]any{"type": "m.login.application_service"})

	// Ordinary users cannot take names in the exclusive namespace.
	ts.wantErr(400, "M_EXCLUSIVE", "POST", "/_matrix/client/v3/register", "", map[string]any{
		"username": "agent_mallory", "password": "pw-123456789", "auth": map[string]any{"type": "m.login.dummy"}})
	ts.wantErr(400, "M_EXCLUSIVE", "GET", "/_matrix/client/v3/register/available?username=agent_mallory", "", nil)
	ts.mustDo(200, "GET", "/_matrix/client/v3/register/available?username=mallory", "", nil)

	// Login as a namespace user gives a fresh device and token.
	flows := ts.mustDo(200, "GET", "/_matrix/client/v3/login", "", nil)
	if !strings.Contains(fmt.Sprint(flows["flows"]), "m.login.application_service") {
		t.Fatalf("login flows do not offer m.login.application_service: %v", flows)
	}
	login := ts.mustDo(200, "POST", "/_matrix/client/v3/login", testASToken, map[string]any{
		"type": "m.login.application_service", "identifier": map[string]any{"type": "m.id.user", "user": "agent_bob"}})
	tok, _ := login["access_token"].(string)
	if login["user_id"] != "@agent_bob:localhost" || tok == "" || login["device_id"] == "" {
		t.Fatalf("appservice login: %v", login)
	}
	who := ts.mustDo(200, "GET", "/_matrix/client/v3/account/whoami", tok, nil)
	if who["device_id"] != login["device_id"] {
		t.Fatalf("whoami with the agent's token: %v", who)
	}
	ts.wantErr(403, "M_FORBIDDEN", "POST", "/_matrix/client/v3/login", testASToken, map[string]any{
		"type": "m.login.application_service", "identifier": map[string]any{"type": "m.id.user", "user": "bob"}})
	ts.wantErr(403, "M_FORBIDDEN", "POST", "/_matrix/client/v3/login", testASToken, map[string]any{
		"type": "m.login.application_service", "identifier": map[string]any{"type": "m.id.user", "user": "agent_nobody"}})
	ts.wantErr(401, "M_MISSING_TOKEN", "POST", "/_matrix/client/v3/login", "", map[string]any{
		"type": "m.login.application_service", "identifier": map[string]any{"type": "m.id.user", "user": "agent_bob"}})
	ts.wantErr(401, "M_UNKNOWN_TOKEN", "POST", "/_matrix/client/v3/login", tok, map[string]any{
		"type": "m.login.application_service", "identifier": map[string]any{"type": "m.id.user", "user": "agent_bob"}})

	// Aliases in the exclusive alias namespace belong to the appservice.
	_, userTok := ts.createUser("dave")
	room := ts.createRoom(userTok, map[string]any{})
	ts.wantErr(400, "M_EXCLUSIVE", "PUT", "/_matrix/client/v3/directory/room/%23agents_lab:localhost", userTok, map[string]any{"room_id": room})
	ts.wantErr(400, "M_EXCLUSIVE", "POST", "/_matrix/client/v3/createRoom", userTok, map[string]any{"room_alias_name": "agents_lab"})
	ts.mustDo(200, "PUT", "/_matrix/client/v3/directory/room/%23lab:localhost", userTok, map[string]any{"room_id": room})
	asRoom := ts.createRoom(testASToken, map[string]any{"room_alias_name": "agents_lab"})
	got := ts.mustDo(200, "GET", "/_matrix/client/v3/directory/room/%23agents_lab:localhost", "", nil)
	if got["room_id"] != asRoom {
		t.Fatalf("alias created by the appservice: %v", got)
	}
}

func TestAppserviceDeliversInOrderAfterFailures(t *testing.T) {
	rc := newASReceiver(t, testHSToken)
	rc.failFirst = 3
	ts := newASServer(t, rc, "")
	_, aliceTok := ts.createUser("alice")
	room := ts.createRoom(aliceTok, map[string]any{"preset": "public_chat"})
	ts.mustDo(200, "POST", "/_matrix/client/v3/register", testASToken, map[string]any{
		"type": "m.login.application_service", "username": "agent_echo", "inhibit_login": true})
	ts.mustDo(200, "POST", "/_matrix/client/v3/rooms/"+room+"/join?user_id=@agent_echo:localhost", testASToken, map[string]any{})

	var want []string
	for i := range 30 {
		body := fmt.Sprintf("message %d", i)
		ts.send(aliceTok, room, body)
		want = append(want, body)
	}
	// The agent answers as itself through the appservice token.
	ts.mustDo(200, "PUT", "/_matrix/client/v3/rooms/"+room+"/send/m.room.message/t1?user_id=@agent_echo:localhost", testASToken,
		map[string]any{"msgtype": "m.text", "body": "echo"})
	want = append(want, "echo")

	rc.waitFor(t, "every message", func(evs, _, _ []map[string]any) bool { return len(bodiesIn(evs, room)) >= len(want) })
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if got := bodiesIn(rc.events, room); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("delivered out of order or with duplicates:\n got %v\nwant %v", got, want)
	}
	// The failed transaction was retried with the same id until accepted.
	if len(rc.attempts) < 4 || rc.attempts[0] != rc.attempts[1] || rc.attempts[1] != rc.attempts[2] || rc.attempts[2] != rc.attempts[3] {
		t.Fatalf("retries must reuse the txnId: %v", rc.attempts)
	}
	seen := map[string]bool{}
	for _, e := range rc.events {
		id := e["event_id"].(string)
		if seen[id] {
			t.Fatalf("event %s delivered twice", id)
		}
		seen[id] = true
	}
	// The agent's own join is among the events (its state_key is in the namespace).
	found := false
	for _, e := range rc.events {
		if e["type"] == "m.room.member" && e["state_key"] == "@agent_echo:localhost" {
			found = true
		}
	}
	if !found {
		t.Fatal("the namespace user's join was not delivered")
	}
	if rc.badAuth != 0 {
		t.Fatalf("%d requests without the hs_token", rc.badAuth)
	}
}

func TestAppserviceIgnoresUninterestingRooms(t *testing.T) {
	rc := newASReceiver(t, testHSToken)
	ts := newASServer(t, rc, "")
	_, aliceTok := ts.createUser("alice")
	private := ts.createRoom(aliceTok, map[string]any{})
	ts.send(aliceTok, private, "not for bots")
	watched := ts.createRoom(aliceTok, map[string]any{"preset": "public_chat"})
	ts.mustDo(200, "POST", "/_matrix/client/v3/rooms/"+watched+"/join", testASToken, map[string]any{})
	ts.send(aliceTok, watched, "for bots")
	rc.waitFor(t, "the watched room's message", func(evs, _, _ []map[string]any) bool { return len(bodiesIn(evs, watched)) == 1 })
	rc.mu.Lock()
	defer rc.mu.Unlock()
	for _, e := range rc.events {
		if e["room_id"] == private {
			t.Fatalf("event of a room without appservice users delivered: %v", e)
		}
	}
}

func TestAppserviceResumesAfterRestart(t *testing.T) {
	rc := newASReceiver(t, testHSToken)
	ts := newASServer(t, rc, "")
	_, aliceTok := ts.createUser("alice")
	room := ts.createRoom(aliceTok, map[string]any{"preset": "public_chat"})
	ts.mustDo(200, "POST", "/_matrix/client/v3/rooms/"+room+"/join", testASToken, map[string]any{})
	ts.send(aliceTok, room, "before")
	rc.waitFor(t, "first message", func(evs, _, _ []map[string]any) bool { return len(bodiesIn(evs, room)) == 1 })

	// The appservice goes down; messages pile up; the homeserver restarts.
	rc.mu.Lock()
	rc.failFirst = 1 << 30
	rc.mu.Unlock()
	for i := range 10 {
		ts.send(aliceTok, room, fmt.Sprintf("while down %d", i))
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		rc.mu.Lock()
		n := len(rc.attempts)
		rc.mu.Unlock()
		if n >= 3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	status := ts.mustDo(200, "GET", "/_agentspace/admin/v1/appservices", adminToken(t, ts), nil)
	list := status["appservices"].([]any)
	st := list[0].(map[string]any)
	if st["last_error"] == "" || st["pending_txn_id"] == nil || st["backlog_events"].(float64) < 1 {
		t.Fatalf("admin status does not show the failure: %v", st)
	}
	metrics := string(ts.mustDoRaw(200, "GET", "/metrics"))
	for _, m := range []string{`agentspace_appservice_queue_depth{appservice="agents"}`, `agentspace_appservice_failures_total{appservice="agents"}`,
		`agentspace_appservice_oldest_undelivered_age_seconds{appservice="agents"}`} {
		if !strings.Contains(metrics, m) {
			t.Fatalf("metrics lack %s", m)
		}
	}

	ts = ts.restart()
	for i := range 5 {
		ts.send(aliceTok, room, fmt.Sprintf("after restart %d", i))
	}
	rc.mu.Lock()
	rc.failFirst = 0
	rc.mu.Unlock()
	rc.waitFor(t, "everything", func(evs, _, _ []map[string]any) bool { return len(bodiesIn(evs, room)) == 16 })
	rc.mu.Lock()
	defer rc.mu.Unlock()
	got := bodiesIn(rc.events, room)
	want := []string{"before"}
	for i := range 10 {
		want = append(want, fmt.Sprintf("while down %d", i))
	}
	for i := range 5 {
		want = append(want, fmt.Sprintf("after restart %d", i))
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after restart:\n got %v\nwant %v", got, want)
	}
}

// adminToken creates an admin user on ts.
func adminToken(t *testing.T, ts *testServer) string {
	t.Helper()
	userID, tok := ts.createUser("admin" + fmt.Sprint(time.Now().UnixNano()%100000))
	err := ts.DB().Write(context.Background(), func(tx *storage.Tx) error {
		_, err := tx.Exec(context.Background(), `UPDATE users SET is_admin = TRUE WHERE user_id = $1`, userID)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func (ts *testServer) mustDoRaw(want int, method, path string) []byte {
	ts.t.Helper()
	status, raw := ts.doRaw(method, path, "", nil)
	if status != want {
		ts.t.Fatalf("%s %s: %d %s", method, path, status, raw)
	}
	return raw
}

func TestAppservicePing(t *testing.T) {
	rc := newASReceiver(t, testHSToken)
	ts := newASServer(t, rc, "")
	out := ts.mustDo(200, "POST", "/_matrix/client/v1/appservice/agents/ping", testASToken, map[string]any{"transaction_id": "ping-1"})
	if _, ok := out["duration_ms"].(float64); !ok {
		t.Fatalf("ping: %v", out)
	}
	rc.mu.Lock()
	if len(rc.pings) != 1 || rc.pings[0] != "ping-1" {
		t.Fatalf("appservice saw pings %v", rc.pings)
	}
	rc.mu.Unlock()
	ts.wantErr(403, "M_FORBIDDEN", "POST", "/_matrix/client/v1/appservice/other/ping", testASToken, map[string]any{})
	_, userTok := ts.createUser("alice")
	ts.wantErr(403, "M_FORBIDDEN", "POST", "/_matrix/client/v1/appservice/agents/ping", userTok, map[string]any{})
	ts.wantErr(401, "M_MISSING_TOKEN", "POST", "/_matrix/client/v1/appservice/agents/ping", "", map[string]any{})

	// The appservice answers with an error.
	rc.hsToken = "something else" // it now refuses our hs_token with 403
	out = ts.wantErr(502, "M_BAD_STATUS", "POST", "/_matrix/client/v1/appservice/agents/ping", testASToken, map[string]any{})
	if out["status"] != float64(403) || !strings.Contains(fmt.Sprint(out["body"]), "M_FORBIDDEN") {
		t.Fatalf("M_BAD_STATUS must carry the status and body: %v", out)
	}
	// The appservice is gone.
	rc.Close()
	ts.wantErr(502, "M_CONNECTION_FAILED", "POST", "/_matrix/client/v1/appservice/agents/ping", testASToken, map[string]any{})

	// No URL at all.
	ts2 := newASServer(t, nil, "")
	ts2.wantErr(400, "M_URL_NOT_SET", "POST", "/_matrix/client/v1/appservice/agents/ping", testASToken, map[string]any{})
}

func TestAppserviceRateLimitExemption(t *testing.T) {
	limited := func(c *config.Config) {
		c.RateLimit = config.RateLimitConfig{Enabled: true, PerSecond: 0.1, Burst: 3}
	}
	for _, tc := range []struct {
		extra  string
		exempt bool
	}{{"rate_limited: false\n", true}, {"", false}} {
		ts := newASServer(t, nil, tc.extra, limited)
		room := ts.createRoom(testASToken, map[string]any{})
		got429 := false
		for i := range 10 {
			status, out := ts.do("PUT", fmt.Sprintf("/_matrix/client/v3/rooms/%s/send/m.room.message/r%d", room, i), testASToken, map[string]any{"msgtype": "m.text", "body": "x"})
			if status == 429 {
				if out["errcode"] != "M_LIMIT_EXCEEDED" || out["retry_after_ms"] == nil {
					t.Fatalf("429 body: %v", out)
				}
				got429 = true
				break
			}
		}
		if got429 == tc.exempt {
			t.Fatalf("registration %q: got429=%v", tc.extra, got429)
		}
	}
}

func TestAppserviceEphemeralAndToDevice(t *testing.T) {
	rc := newASReceiver(t, testHSToken)
	ts := newASServer(t, rc, "receive_ephemeral: true\n")
	_, aliceTok := ts.createUser("alice")
	room := ts.createRoom(aliceTok, map[string]any{"preset": "public_chat"})
	ts.mustDo(200, "POST", "/_matrix/client/v3/register", testASToken, map[string]any{
		"type": "m.login.application_service", "username": "agent_eph"})
	login := ts.mustDo(200, "POST", "/_matrix/client/v3/login", testASToken, map[string]any{
		"type": "m.login.application_service", "identifier": map[string]any{"type": "m.id.user", "user": "agent_eph"}, "device_id": "AGENTDEV"})
	ts.mustDo(200, "POST", "/_matrix/client/v3/rooms/"+room+"/join?user_id=@agent_eph:localhost", testASToken, map[string]any{})
	ts.mustDo(200, "PUT", "/_matrix/client/v3/rooms/"+room+"/typing/@alice:localhost", aliceTok, map[string]any{"typing": true, "timeout": 10000})
	evID := ts.send(aliceTok, room, "read me")
	ts.mustDo(200, "POST", "/_matrix/client/v3/rooms/"+room+"/receipt/m.read/"+evID, aliceTok, map[string]any{})
	ts.mustDo(200, "PUT", "/_matrix/client/v3/sendToDevice/m.test/td1", aliceTok, map[string]any{
		"messages": map[string]any{"@agent_eph:localhost": map[string]any{"AGENTDEV": map[string]any{"hello": "agent"}}}})
	rc.waitFor(t, "typing, receipt and to-device", func(_, eph, td []map[string]any) bool {
		var typing, receipt bool
		for _, e := range eph {
			if e["type"] == "m.typing" && e["room_id"] == room && strings.Contains(fmt.Sprint(e["content"]), "@alice:localhost") {
				typing = true
			}
			if e["type"] == "m.receipt" && e["room_id"] == room && strings.Contains(fmt.Sprint(e["content"]), evID) {
				receipt = true
			}
		}
		return typing && receipt && len(td) == 1 && td[0]["to_device_id"] == "AGENTDEV" && td[0]["sender"] == "@alice:localhost"
	})
	_ = login
}

func TestAppserviceUserQuery(t *testing.T) {
	rc := newASReceiver(t, testHSToken)
	ts := newASServer(t, rc, "")
	// The appservice creates users on demand when asked about them.
	rc.onUser = func(userID string) int {
		if userID != "@agent_lazy:localhost" {
			return http.StatusNotFound
		}
		status, _ := ts.do("POST", "/_matrix/client/v3/register", testASToken, map[string]any{
			"type": "m.login.application_service", "username": "agent_lazy", "inhibit_login": true})
		if status != 200 {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	}
	_, aliceTok := ts.createUser("alice")
	prof := ts.mustDo(200, "GET", "/_matrix/client/v3/profile/@agent_lazy:localhost", aliceTok, nil)
	if prof["displayname"] != "agent_lazy" {
		t.Fatalf("profile of a user created on query: %v", prof)
	}
	ts.wantErr(404, "M_NOT_FOUND", "GET", "/_matrix/client/v3/profile/@agent_none:localhost", aliceTok, nil)
}

func TestAppserviceStartupValidation(t *testing.T) {
	dir := t.TempDir()
	a := writeRegistration(t, dir, "a", "as_a_tok", "hs_a_tok", "", "abot", "")
	b := writeRegistration(t, dir, "b", "as_b_tok", "hs_b_tok", "", "bbot", "") // same exclusive namespaces as a
	newCfg := func(files ...string) *config.Config {
		cfg := config.Default()
		cfg.Database.Path = filepath.Join(t.TempDir(), "db.sqlite")
		cfg.AppServiceConfigFiles = files
		return cfg
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx := context.Background()
	if _, err := NewServer(ctx, newCfg(a, b), log); err == nil || !strings.Contains(err.Error(), b) || !strings.Contains(err.Error(), "namespaces.users") {
		t.Fatalf("overlapping exclusive namespaces: %v", err)
	}
	if _, err := NewServer(ctx, newCfg(a, a), log); err == nil || !strings.Contains(err.Error(), "id:") {
		t.Fatalf("duplicate ids: %v", err)
	}
	if _, err := NewServer(ctx, newCfg(filepath.Join(dir, "missing.yaml")), log); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Fatalf("missing file: %v", err)
	}
	// An as_token that is also a user's access token.
	ts := newTestServer(t)
	_, userTok := ts.createUser("alice")
	clash := writeRegistration(t, t.TempDir(), "clash", userTok, "hs_clash", "", "clashbot", "")
	cfg := *ts.cfg
	cfg.AppServiceConfigFiles = []string{clash}
	if err := ts.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := NewServer(ctx, &cfg, log); err == nil || !strings.Contains(err.Error(), "as_token") || !strings.Contains(err.Error(), clash) {
		t.Fatalf("as_token equal to a user token: %v", err)
	}
}
