package clientapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/mux"

	"github.com/agentspace/agentspace/config"
	"github.com/agentspace/agentspace/storage"
)

// The authorization matrix: every route the server has is tried with every
// kind of caller that must be refused, and the exact status and errcode are
// checked, together with the absence of the target's data in the error.
// A route that is not classified below fails the test, so a new endpoint
// cannot be added without deciding who may call it.

// publicRoutes need no access token (spec: "Requires authentication: No").
var publicRoutes = []string{
	`^/\.well-known/matrix/client$`,
	`^/_matrix/client/versions$`,
	`/login$`,
	`/register$`,
	`/register/available$`,
	`/requestToken$`,
	`/refresh$`,
	`/publicRooms$`, // GET only: POST is listed in authedExceptions
	`/directory/room/\{roomAlias\}$`,
	`/directory/list/room/\{roomId\}$`,
	`/profile/\{userId\}`,
	`^/_matrix/media/(v3|r0)/(download|thumbnail|preview_url)`,
	`^/_matrix/client/v1/media/preview_url$`,
	`/register/m\.login\.registration_token/validity$`,
	`^/_synapse/admin/v1/register$`,
	`^/_synapse/admin/v1/server_version$`,
}

// authedExceptions are routes matching publicRoutes for some methods only.
var authedExceptions = map[string]bool{
	"POST /_matrix/client/v3/publicRooms":                                    true,
	"PUT /_matrix/client/v3/directory/room/{roomAlias}":                      true,
	"DELETE /_matrix/client/v3/directory/room/{roomAlias}":                   true,
	"PUT /_matrix/client/v3/directory/list/room/{roomId}":                    true,
	"PUT /_matrix/client/v3/profile/{userId}/{field:displayname|avatar_url}": true,
}

// adminRoutes are for server admins only (non-admins: 403 M_FORBIDDEN).
var adminRoutes = regexp.MustCompile(`^/_synapse/admin/|^/_agentspace/admin/`)

// guestRoutes are what the spec lets guests call (section "Guest access").
var guestRoutes = []string{
	`/sync$`, `/account/whoami$`, `/logout$`, `/logout/all$`, `/capabilities$`, `/voip/turnServer$`,
	`/account/password$`, `/keys/(upload|query|claim|changes)$`,
	`/pushrules`, `/rooms/\{roomId\}/`, `/join/\{roomIdOrAlias\}$`, `/profile/`, `/presence/`,
	`/sendToDevice/`, `/devices`, `/user/\{userId\}/`,
	// Media: guests see and send images in rooms they may read (as Synapse allows).
	`^/_matrix/media/`, `^/_matrix/client/v1/media/`,
}

func matchesAny(patterns []string, path string) bool {
	for _, p := range patterns {
		if regexp.MustCompile(p).MatchString(path) {
			return true
		}
	}
	return false
}

type matrixRoute struct{ method, template string }

// allRoutes walks the router (v3, v1, media, admin; the r0 and unstable
// copies share their handlers with v3/v1).
func allRoutes(t *testing.T, ts *testServer) []matrixRoute {
	t.Helper()
	var out []matrixRoute
	err := ts.api.router(nil).Walk(func(route *mux.Route, _ *mux.Router, _ []*mux.Route) error {
		tpl, err := route.GetPathTemplate()
		if err != nil {
			return nil
		}
		if strings.HasPrefix(tpl, "/_matrix/client/r0/") || strings.HasPrefix(tpl, "/_matrix/client/unstable/") || tpl == "/metrics" {
			return nil
		}
		methods, _ := route.GetMethods()
		for _, m := range methods {
			if m != http.MethodOptions {
				out = append(out, matrixRoute{m, tpl})
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) < 100 {
		t.Fatalf("walked only %d routes", len(out))
	}
	return out
}

// matrixWorld is the cast of callers and the private data they must not see.
type matrixWorld struct {
	ts                                         *testServer
	room, event, aliceID                       string
	alice, bob, carol, guest, admin            string
	revoked, expired, deactivated, observerTok string
	readOnlyRoom                               string
}

const secretName, secretBody = "SECRET-ROOM-NAME-7f3a", "SECRET-MESSAGE-BODY-91c2"

func newMatrixWorld(t *testing.T) *matrixWorld {
	ts := newASServer(t, nil, "", func(c *config.Config) { c.Registration.AllowGuests = true })
	w := &matrixWorld{ts: ts}
	ctx := context.Background()
	w.aliceID, w.alice = ts.createUser("alice")
	_, w.bob = ts.createUser("bob")
	_, w.carol = ts.createUser("carol")
	_, w.admin = ts.createUser("root")
	if err := ts.db.Write(ctx, func(tx *storage.Tx) error {
		_, err := tx.Exec(ctx, `UPDATE users SET is_admin = TRUE WHERE user_id = '@root:localhost'`)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	w.room = ts.createRoom(w.alice, map[string]any{"preset": "private_chat", "name": secretName, "invite": []string{"@carol:localhost"}})
	ts.mustDo(200, "POST", "/_matrix/client/v3/rooms/"+w.room+"/join", w.carol, map[string]any{})
	w.event = ts.send(w.alice, w.room, secretBody)

	g := ts.mustDo(200, "POST", "/_matrix/client/v3/register?kind=guest", "", map[string]any{})
	w.guest = g["access_token"].(string)

	// A token whose device logged out.
	_, w.revoked = ts.createUser("dave")
	ts.mustDo(200, "POST", "/_matrix/client/v3/logout", w.revoked, map[string]any{})
	// A token past its lifetime.
	w.expired = storage.NewToken("syt_")
	_, _ = ts.createUser("erin")
	if err := ts.db.Write(ctx, func(tx *storage.Tx) error {
		return tx.InsertAccessToken(ctx, &storage.AccessToken{TokenHash: storage.HashToken(w.expired), UserID: "@erin:localhost",
			DeviceID: "DEVERIN", CreatedTS: time.Now().Add(-2 * time.Hour).UnixMilli(), ExpiresTS: time.Now().Add(-time.Hour).UnixMilli()})
	}); err != nil {
		t.Fatal(err)
	}
	// A deactivated user's token.
	_, w.deactivated = ts.createUser("frank")
	if err := ts.db.Write(ctx, func(tx *storage.Tx) error { return tx.SetDeactivated(ctx, "@frank:localhost", true) }); err != nil {
		t.Fatal(err)
	}
	// A read-only room: members may read, only power 50 may post.
	_, w.observerTok = ts.createUser("watcher")
	w.readOnlyRoom = ts.createRoom(w.alice, map[string]any{"preset": "public_chat",
		"power_level_content_override": map[string]any{"events_default": 50}})
	ts.mustDo(200, "POST", "/_matrix/client/v3/rooms/"+w.readOnlyRoom+"/join", w.observerTok, map[string]any{})
	return w
}

// path fills a route template with the private room's ids.
func (w *matrixWorld) path(tpl string) string {
	return strings.NewReplacer(
		"{roomId}", w.room, "{roomIdOrAlias}", w.room, "{eventId}", w.event, "{userId}", w.aliceID,
		"{eventType}", "m.room.topic", "{stateKey:.*}", "", "{txnId}", "matrix-txn", "{receiptType}", "m.read",
		"{relType}", "m.annotation", "{type}", "m.test", "{deviceId}", "DEVALICE", "{roomAlias}", "%23secret:localhost",
		"{scope}", "global", "{kind}", "override", "{ruleId}", ".m.rule.master", "{filterId}", "0",
		"{field:displayname|avatar_url}", "displayname", "{serverName}", "localhost", "{mediaId}", "abc", "{fileName}", "f.txt",
		"{appserviceId}", "agents", "{token}", "tok", "{purgeId}", "p1", "{deleteId}", "d1", "{sessionId}", "s1", "{version}", "1",
	).Replace(tpl)
}

func (w *matrixWorld) call(t *testing.T, method, path, token string) (int, map[string]any, string) {
	t.Helper()
	var body any
	if method == http.MethodPost || method == http.MethodPut {
		body = map[string]any{}
	}
	status, raw := w.ts.doRaw(method, path, token, body)
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	return status, out, string(raw)
}

// refused sends one request (GET without a body) and checks the refusal.
func (w *matrixWorld) refused(t *testing.T, who, method, path, token string, body any, wantStatus int, wantCode string) {
	t.Helper()
	if method == http.MethodGet {
		body = nil
	}
	status, raw := w.ts.doRaw(method, path, token, body)
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	expectRefusal(t, who, matrixRoute{method, path}, status, out, string(raw), wantStatus, wantCode)
}

func expectRefusal(t *testing.T, who string, r matrixRoute, status int, out map[string]any, raw string, wantStatus int, wantCode string) {
	t.Helper()
	if status != wantStatus || out["errcode"] != wantCode {
		t.Errorf("%s: %s %s: got %d %s, want %d %s", who, r.method, r.template, status, strings.TrimSpace(raw), wantStatus, wantCode)
	}
	if strings.Contains(raw, secretName) || strings.Contains(raw, secretBody) {
		t.Errorf("%s: %s %s: the error leaks room data: %s", who, r.method, r.template, raw)
	}
}

func TestAuthorizationMatrix(t *testing.T) {
	w := newMatrixWorld(t)
	routes := allRoutes(t, w.ts)
	counted := 0
	for _, r := range routes {
		key := r.method + " " + r.template
		public := matchesAny(publicRoutes, r.template) && !authedExceptions[key]
		path := w.path(r.template)
		if public {
			// Public routes: bad tokens must never cause a server error.
			for _, tok := range []string{"", "not-a-token", w.revoked} {
				if status, _, raw := w.call(t, r.method, path, tok); status >= 500 {
					t.Errorf("public %s with token %q: %d %s", key, tok, status, raw)
				}
			}
			continue
		}
		counted++
		status, out, raw := w.call(t, r.method, path, "")
		expectRefusal(t, "no token", r, status, out, raw, 401, "M_MISSING_TOKEN")
		for _, c := range []struct{ who, tok string }{
			{"malformed token", "!!not a token!!"}, {"revoked token", w.revoked}, {"expired token", w.expired}, {"deactivated user", w.deactivated},
		} {
			status, out, raw := w.call(t, r.method, path, c.tok)
			expectRefusal(t, c.who, r, status, out, raw, 401, "M_UNKNOWN_TOKEN")
			if c.who == "expired token" && out["soft_logout"] != true {
				t.Errorf("expired token: %s: soft_logout must be true: %s", key, raw)
			}
		}
		// The appservice may not act for users outside its namespace.
		status, out, raw = w.call(t, r.method, path+sep(path)+"user_id=@bob:localhost", testASToken)
		expectRefusal(t, "appservice outside its namespace", r, status, out, raw, 403, "M_FORBIDDEN")

		if adminRoutes.MatchString(r.template) {
			status, out, raw := w.call(t, r.method, path, w.bob)
			expectRefusal(t, "non-admin", r, status, out, raw, 403, "M_FORBIDDEN")
			continue
		}
		if !matchesAny(guestRoutes, r.template) {
			status, out, raw := w.call(t, r.method, path, w.guest)
			expectRefusal(t, "guest", r, status, out, raw, 403, "M_GUEST_ACCESS_FORBIDDEN")
		}
	}
	// The agent gateway is mounted under a path prefix, so it is listed here.
	for _, r := range []matrixRoute{
		{"GET", "/api/rooms"}, {"POST", "/api/rooms"}, {"POST", "/api/rooms/{roomId}/messages"},
		{"PATCH", "/api/rooms/{roomId}"}, {"DELETE", "/api/rooms/{roomId}"}, {"POST", "/api/tokens/revoke"},
	} {
		path := w.path(r.template)
		status, out, raw := w.call(t, r.method, path, "")
		expectRefusal(t, "no token", r, status, out, raw, 401, "M_MISSING_TOKEN")
		for _, tok := range []string{"!!not a token!!", w.revoked, w.expired, w.deactivated} {
			status, out, raw := w.call(t, r.method, path, tok)
			expectRefusal(t, "bad token", r, status, out, raw, 401, "M_UNKNOWN_TOKEN")
		}
		if r.method == "DELETE" || r.method == "PATCH" || r.template == "/api/rooms/{roomId}/messages" {
			// bob is not in the private room (and not an admin).
			w.refused(t, "non-member", r.method, path, w.bob, map[string]any{"content": "hi", "name": "x"}, 403, "M_FORBIDDEN")
		}
	}
	if counted < 80 {
		t.Fatalf("only %d authenticated routes were checked", counted)
	}
}

func sep(path string) string {
	if strings.Contains(path, "?") {
		return "&"
	}
	return "?"
}

// TestAuthorizationRoomAccess covers the room rules: a non-member of a
// private room, a member without the power level, an observer in a
// read-only room. Each answer is exact and carries nothing of the room.
func TestAuthorizationRoomAccess(t *testing.T) {
	w := newMatrixWorld(t)
	ts := w.ts
	room := "/_matrix/client/v3/rooms/" + w.room
	nonMember := []struct {
		method, path string
		status       int
		code         string
	}{
		{"GET", room + "/messages", 403, "M_FORBIDDEN"},
		{"GET", room + "/state", 403, "M_FORBIDDEN"},
		{"GET", room + "/state/m.room.name", 403, "M_FORBIDDEN"},
		{"GET", room + "/members", 403, "M_FORBIDDEN"},
		{"GET", room + "/joined_members", 403, "M_FORBIDDEN"},
		{"GET", room + "/aliases", 403, "M_FORBIDDEN"},
		{"GET", room + "/event/" + w.event, 404, "M_NOT_FOUND"},
		{"GET", room + "/context/" + w.event, 404, "M_NOT_FOUND"},
		{"GET", "/_matrix/client/v1/rooms/" + w.room + "/relations/" + w.event, 404, "M_NOT_FOUND"},
		{"GET", "/_matrix/client/v1/rooms/" + w.room + "/threads", 403, "M_FORBIDDEN"},
		{"PUT", room + "/send/m.room.message/nm1", 403, "M_FORBIDDEN"},
		{"PUT", room + "/state/m.room.topic", 403, "M_FORBIDDEN"},
		{"PUT", room + "/redact/" + w.event + "/nm2", 403, "M_FORBIDDEN"},
		{"PUT", room + "/typing/@bob:localhost", 403, "M_FORBIDDEN"},
		{"POST", room + "/receipt/m.read/" + w.event, 403, "M_FORBIDDEN"},
		{"POST", room + "/read_markers", 403, "M_FORBIDDEN"},
		{"POST", room + "/join", 403, "M_FORBIDDEN"},
		{"POST", room + "/leave", 403, "M_FORBIDDEN"},
		{"POST", room + "/invite", 403, "M_FORBIDDEN"},
		{"POST", room + "/kick", 403, "M_FORBIDDEN"},
		{"POST", room + "/ban", 403, "M_FORBIDDEN"},
		{"POST", room + "/unban", 403, "M_FORBIDDEN"},
	}
	for _, c := range nonMember {
		body := map[string]any{"user_id": w.aliceID, "typing": true, "msgtype": "m.text", "body": "x", "topic": "x", "m.fully_read": w.event}
		w.refused(t, "non-member", c.method, c.path, w.bob, body, c.status, c.code)
	}
	// A search by a non-member finds nothing of the room.
	res := ts.mustDo(200, "POST", "/_matrix/client/v3/search", w.bob, map[string]any{
		"search_categories": map[string]any{"room_events": map[string]any{"search_term": secretBody}}})
	if strings.Contains(fmt.Sprint(res), secretBody) {
		t.Fatalf("search leaks a private room's message: %v", res)
	}

	// carol is a member with power 0: no state changes, kicks, bans or
	// redactions of others.
	for _, c := range []struct{ method, path string }{
		{"PUT", room + "/state/m.room.power_levels"},
		{"PUT", room + "/state/m.room.name"},
		{"POST", room + "/kick"},
		{"POST", room + "/ban"},
		{"PUT", room + "/redact/" + w.event + "/lp1"},
	} {
		body := map[string]any{"user_id": w.aliceID, "name": "x", "users": map[string]any{"@carol:localhost": 100}}
		w.refused(t, "member without power", c.method, c.path, w.carol, body, 403, "M_FORBIDDEN")
	}
	// An observer in a read-only room can read but not post.
	ro := "/_matrix/client/v3/rooms/" + w.readOnlyRoom
	ts.mustDo(200, "GET", ro+"/messages?dir=b", w.observerTok, nil)
	w.refused(t, "observer", "PUT", ro+"/send/m.room.message/ro1", w.observerTok, map[string]any{"msgtype": "m.text", "body": "hi"}, 403, "M_FORBIDDEN")

	// Another user's private data.
	for _, c := range []struct{ method, path string }{
		{"GET", "/_matrix/client/v3/user/" + w.aliceID + "/account_data/m.test"},
		{"PUT", "/_matrix/client/v3/user/" + w.aliceID + "/account_data/m.test"},
		{"GET", "/_matrix/client/v3/user/" + w.aliceID + "/filter/0"},
		{"POST", "/_matrix/client/v3/user/" + w.aliceID + "/filter"},
		{"PUT", "/_matrix/client/v3/profile/" + w.aliceID + "/displayname"},
		{"PUT", "/_matrix/client/v3/presence/" + w.aliceID + "/status"},
		{"GET", "/_matrix/client/v3/admin/whois/" + w.aliceID},
	} {
		w.refused(t, "other user's data", c.method, c.path, w.bob, map[string]any{"displayname": "x", "presence": "online"}, 403, "M_FORBIDDEN")
	}
}

// TestHistoryVisibilityMatrix checks what a user who joins late, and one
// who has left, sees under every history_visibility setting.
func TestHistoryVisibilityMatrix(t *testing.T) {
	ts := newTestServer(t)
	_, alice := ts.createUser("alice")
	_, bob := ts.createUser("bob")
	_, eve := ts.createUser("eve")
	for _, vis := range []string{"joined", "invited", "shared", "world_readable"} {
		t.Run(vis, func(t *testing.T) {
			room := ts.createRoom(alice, map[string]any{"preset": "public_chat", "initial_state": []any{
				map[string]any{"type": "m.room.history_visibility", "state_key": "", "content": map[string]any{"history_visibility": vis}}}})
			ts.send(alice, room, "before-invite")
			ts.mustDo(200, "POST", "/_matrix/client/v3/rooms/"+room+"/invite", alice, map[string]any{"user_id": "@bob:localhost"})
			ts.send(alice, room, "while-invited")
			ts.mustDo(200, "POST", "/_matrix/client/v3/rooms/"+room+"/join", bob, map[string]any{})
			ts.send(alice, room, "while-joined")
			ts.mustDo(200, "POST", "/_matrix/client/v3/rooms/"+room+"/leave", bob, map[string]any{})
			ts.send(alice, room, "after-leave")

			bodies := func(token string) ([]string, int) {
				status, out := ts.do("GET", "/_matrix/client/v3/rooms/"+room+"/messages?dir=b&limit=50", token, nil)
				var got []string
				chunk, _ := out["chunk"].([]any)
				for i := len(chunk) - 1; i >= 0; i-- {
					e := chunk[i].(map[string]any)
					if e["type"] == "m.room.message" {
						got = append(got, e["content"].(map[string]any)["body"].(string))
					}
				}
				return got, status
			}
			want := map[string][]string{
				"joined":         {"while-joined"},
				"invited":        {"while-invited", "while-joined"},
				"shared":         {"before-invite", "while-invited", "while-joined"},
				"world_readable": {"before-invite", "while-invited", "while-joined", "after-leave"},
			}[vis]
			got, status := bodies(bob)
			if status != 200 || fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("bob after leaving (%s): %d %v, want %v", vis, status, got, want)
			}
			// eve was never in the room.
			got, status = bodies(eve)
			if vis == "world_readable" {
				if status != 200 || len(got) != 4 {
					t.Fatalf("world_readable for an outsider: %d %v", status, got)
				}
			} else if status != 403 {
				t.Fatalf("%s room for an outsider: %d %v", vis, status, got)
			}
		})
	}
}
