package clientapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/agentspace/agentspace/storage"
)

// The HTTP fuzz targets drive the real handler chain (CORS, panic recovery,
// body limit, routing, auth, handlers, rooms, storage on a real database)
// in process, without a socket, so each input costs one request. The
// oracle is the same for every target: no input may produce a 5xx (a panic
// is caught by the recoverer and becomes a 500, so it is covered too), and
// every error is a Matrix error object {"errcode", "error"}.
//
// Seeds are in testdata/fuzz/<Target>/ (checked in) and in the f.Add calls;
// `go test` runs them as ordinary tests, scripts/fuzz-nightly.sh fuzzes.

// fuzzEnv is one server with a user, a second user and a room to aim at.
type fuzzEnv struct {
	ts      *testServer
	h       http.Handler
	user    string
	token   string
	device  string
	other   string // a second user, joined to room
	otherTk string
	room    string
	event   string // an event in room
	victims atomic.Int64
}

const fuzzV3 = "/_matrix/client/v3"

// newFuzzEnv starts the server (on this pass's engine) and creates the
// users and the room the targets aim at.
func newFuzzEnv(f *testing.F) *fuzzEnv {
	f.Helper()
	ts := newTestServer(f)
	env := &fuzzEnv{ts: ts, h: ts.http.Handler}
	env.user, env.token = ts.createUser("fuzzer")
	env.device = "DEVFUZZER"
	env.other, env.otherTk = ts.createUser("other")
	env.newRoom(f)
	return env
}

// newRoom gives the env a fresh room (after an input took the fuzzer's
// power away, for example) with the second user joined and one message.
func (env *fuzzEnv) newRoom(t testing.TB) {
	t.Helper()
	status, out := env.call(t, "POST", fuzzV3+"/createRoom", env.token, []byte(`{"preset":"public_chat","name":"fuzz"}`))
	if status != 200 {
		t.Fatalf("createRoom: %d %s", status, out)
	}
	env.room = jsonField(out, "room_id")
	env.call(t, "POST", fuzzV3+"/join/"+url.PathEscape(env.room), env.otherTk, []byte(`{}`))
	status, out = env.call(t, "PUT", env.roomPath("/send/m.room.message/seed"), env.token, []byte(`{"msgtype":"m.text","body":"seed"}`))
	if status != 200 {
		t.Fatalf("send: %d %s", status, out)
	}
	env.event = jsonField(out, "event_id")
}

// victim creates a throwaway user for inputs that may log out, deactivate
// or otherwise destroy the account they are sent with.
func (env *fuzzEnv) victim(t testing.TB) (userID, token string) {
	t.Helper()
	localpart := fmt.Sprintf("victim%d", env.victims.Add(1))
	userID = "@" + localpart + ":" + env.ts.cfg.ServerName
	token = storage.NewToken("syt_")
	ctx := context.Background()
	err := env.ts.db.Write(ctx, func(tx *storage.Tx) error {
		now := time.Now().UnixMilli()
		if err := tx.InsertUser(ctx, &storage.User{UserID: userID, Localpart: localpart, CreatedTS: now}); err != nil {
			return err
		}
		if err := tx.UpsertDevice(ctx, &storage.Device{UserID: userID, DeviceID: "VICTIM", CreatedTS: now}); err != nil {
			return err
		}
		return tx.InsertAccessToken(ctx, &storage.AccessToken{TokenHash: storage.HashToken(token), UserID: userID, DeviceID: "VICTIM", CreatedTS: now})
	})
	if err != nil {
		t.Fatalf("creating %s: %v", userID, err)
	}
	return userID, token
}

func (env *fuzzEnv) roomPath(rest string) string {
	return fuzzV3 + "/rooms/" + url.PathEscape(env.room) + rest
}

// call runs one request through the handler and checks the oracle.
func (env *fuzzEnv) call(t testing.TB, method, target, token string, body []byte) (int, []byte) {
	t.Helper()
	ctype := ""
	if body != nil {
		ctype = "application/json"
	}
	return env.callWithType(t, method, target, token, ctype, body)
}

// callWithType is call with an explicit Content-Type.
func (env *fuzzEnv) callWithType(t testing.TB, method, target, token, ctype string, body []byte) (int, []byte) {
	t.Helper()
	var rdr io.Reader
	if body != nil {
		rdr = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://fuzz.test"+target, rdr)
	if err != nil {
		return 0, nil // not a request a client can send
	}
	req.RemoteAddr = "192.0.2.1:4242"
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	rec := httptest.NewRecorder()
	env.h.ServeHTTP(rec, req)
	out := rec.Body.Bytes()
	checkResponse(t, method, target, body, rec.Code, rec.Header().Get("Content-Type"), out)
	return rec.Code, out
}

// checkResponse is the oracle: no 5xx, errors are Matrix errors, JSON
// answers are valid JSON.
func checkResponse(t testing.TB, method, target string, body []byte, status int, ctype string, out []byte) {
	t.Helper()
	if status >= 500 {
		t.Fatalf("%s %s with body %s: status %d: %s", method, target, quoteInput(body), status, out)
	}
	if strings.HasPrefix(ctype, "application/json") && !json.Valid(out) {
		t.Fatalf("%s %s with body %s: invalid JSON response %q", method, target, quoteInput(body), out)
	}
	if status >= 400 {
		var e struct {
			ErrCode string          `json:"errcode"`
			Error   string          `json:"error"`
			Flows   json.RawMessage `json:"flows"`
		}
		err := json.Unmarshal(out, &e)
		if err == nil && status == http.StatusUnauthorized && e.ErrCode == "" && len(e.Flows) > 0 {
			return // a user-interactive auth challenge
		}
		if err != nil || !strings.HasPrefix(e.ErrCode, "M_") {
			t.Fatalf("%s %s with body %s: %d without a Matrix error: %q", method, target, quoteInput(body), status, out)
		}
	}
}

// quoteInput shortens an input for a failure message.
func quoteInput(b []byte) string {
	if len(b) > 300 {
		return fmt.Sprintf("%q…(%d bytes)", b[:300], len(b))
	}
	return fmt.Sprintf("%q", b)
}

// jsonField reads a top-level string field.
func jsonField(raw []byte, key string) string {
	var m map[string]any
	_ = json.Unmarshal(raw, &m)
	s, _ := m[key].(string)
	return s
}

// pathSeg percent-encodes a fuzzed path segment. Invalid UTF-8 is kept
// (escaped byte by byte), as a client could send it.
func pathSeg(s string) string {
	if !utf8.ValidString(s) {
		var b strings.Builder
		for i := 0; i < len(s); i++ {
			fmt.Fprintf(&b, "%%%02X", s[i])
		}
		return b.String()
	}
	return url.PathEscape(s)
}

// fuzzRoute is one endpoint a body target can aim at: path is built from
// the env (and a fuzzed path parameter where the route has one).
type fuzzRoute struct {
	method string
	path   func(env *fuzzEnv, param string) string
	// victim: send with a throwaway user (the request may destroy the session).
	victim bool
}

// pick chooses a route by the fuzzed selector.
func pick(routes []fuzzRoute, sel uint8) fuzzRoute { return routes[int(sel)%len(routes)] }

// runBody sends body to the selected route and, when the request may
// have changed what the env relies on, repairs the env.
func (env *fuzzEnv) runBody(t *testing.T, routes []fuzzRoute, sel uint8, param string, body []byte) (int, []byte) {
	param, body = env.expand(param), env.expandBytes(body)
	rt := pick(routes, sel)
	token := env.token
	if rt.victim {
		_, token = env.victim(t)
	}
	target := rt.path(env, param)
	status, out := env.call(t, rt.method, target, token, body)
	env.repair(t, target, status)
	return status, out
}

// repair starts over in a new room when a request in the env's room was
// refused: an earlier input may have made the fuzzer leave it or lose its
// power there, and later inputs should still reach the handlers.
func (env *fuzzEnv) repair(t testing.TB, target string, status int) {
	if status == http.StatusForbidden && strings.Contains(target, url.PathEscape(env.room)) {
		env.newRoom(t)
	}
}

// expand lets seeds say $ROOM and $EVENT for the env's room and event ids.
func (env *fuzzEnv) expand(s string) string {
	if !strings.Contains(s, "$ROOM") && !strings.Contains(s, "$EVENT") {
		return s
	}
	return strings.NewReplacer("$ROOM", env.room, "$EVENT", env.event).Replace(s)
}

func (env *fuzzEnv) expandBytes(b []byte) []byte {
	if !bytes.Contains(b, []byte("$ROOM")) && !bytes.Contains(b, []byte("$EVENT")) {
		return b
	}
	return []byte(env.expand(string(b)))
}
