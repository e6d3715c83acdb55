package clientapi

import (
	"context"
	"net/http"
	"testing"

	"github.com/agentspace/agentspace/storage"
)

func TestAccountData(t *testing.T) {
	ts := newTestServer(t)
	ctx := context.Background()
	alice, aliceTok := ts.createUser("alice")
	bob, bobTok := ts.createUser("bob")
	roomID := ephRoom(t, ts, alice)
	global := "/_matrix/client/v3/user/" + ephEsc(alice) + "/account_data/org.example.config"
	inRoom := "/_matrix/client/v3/user/" + ephEsc(alice) + "/rooms/" + ephEsc(roomID) + "/account_data/m.tag"

	ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", global, aliceTok, nil)
	ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", inRoom, aliceTok, nil)

	start := ts.Rooms().Notifier().Latest()
	ts.mustDo(http.StatusOK, "PUT", global, aliceTok, map[string]any{"theme": "dark"})
	ephAdvanced(t, ts, start)
	if out := ts.mustDo(http.StatusOK, "GET", global, aliceTok, nil); out["theme"] != "dark" {
		t.Fatalf("global account data: %v", out)
	}
	mid := ts.Rooms().Notifier().Latest()
	ts.mustDo(http.StatusOK, "PUT", inRoom, aliceTok, map[string]any{"tags": map[string]any{"m.favourite": map[string]any{"order": 0.5}}})
	ephAdvanced(t, ts, mid)
	if out := ts.mustDo(http.StatusOK, "GET", inRoom, aliceTok, nil); out["tags"] == nil {
		t.Fatalf("room account data: %v", out)
	}
	// The global and the room entry of the same type are distinct.
	ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", "/_matrix/client/v3/user/"+ephEsc(alice)+"/account_data/m.tag", aliceTok, nil)
	// Overwrite.
	ts.mustDo(http.StatusOK, "PUT", global, aliceTok, map[string]any{"theme": "light"})
	if out := ts.mustDo(http.StatusOK, "GET", global, aliceTok, nil); out["theme"] != "light" {
		t.Fatalf("overwritten account data: %v", out)
	}

	// What /sync reads.
	latest := ts.Rooms().Notifier().Latest()
	all, err := ts.DB().AccountDataSince(ctx, alice, 0, latest)
	if err != nil || len(all) != 2 {
		t.Fatalf("AccountDataSince(0): %+v %v", all, err)
	}
	if all[0].RoomID != roomID || all[0].Type != "m.tag" || all[1].RoomID != "" || all[1].Type != "org.example.config" ||
		string(all[1].Content) != `{"theme":"light"}` || all[1].Pos != latest {
		t.Fatalf("AccountDataSince order/content: %+v", all)
	}
	if since, err := ts.DB().AccountDataSince(ctx, alice, mid, latest); err != nil || len(since) != 2 {
		t.Fatalf("AccountDataSince(mid): %+v %v", since, err)
	}
	if since, err := ts.DB().AccountDataSince(ctx, alice, latest, latest); err != nil || len(since) != 0 {
		t.Fatalf("AccountDataSince(latest): %+v %v", since, err)
	}
	if none, err := ts.DB().AccountDataSince(ctx, bob, 0, latest); err != nil || len(none) != 0 {
		t.Fatalf("bob's account data: %+v %v", none, err)
	}
	if _, err := ts.DB().AccountData(ctx, bob, "", "org.example.config"); err != storage.ErrNotFound {
		t.Fatalf("AccountData of bob: %v", err)
	}

	// Another user's account data.
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "GET", global, bobTok, nil)
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "PUT", global, bobTok, map[string]any{"x": 1})
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "GET", inRoom, bobTok, nil)
	ts.wantErr(http.StatusForbidden, "M_FORBIDDEN", "PUT", inRoom, bobTok, map[string]any{"x": 1})
	// Server-controlled types.
	ts.wantErr(http.StatusMethodNotAllowed, "M_BAD_JSON", "PUT", "/_matrix/client/v3/user/"+ephEsc(alice)+"/rooms/"+ephEsc(roomID)+"/account_data/m.fully_read", aliceTok, map[string]any{"event_id": "$x"})
	ts.wantErr(http.StatusMethodNotAllowed, "M_BAD_JSON", "PUT", "/_matrix/client/v3/user/"+ephEsc(alice)+"/account_data/m.push_rules", aliceTok, map[string]any{"global": map[string]any{}})
	// Bad room ID and bad bodies.
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "PUT", "/_matrix/client/v3/user/"+ephEsc(alice)+"/rooms/notaroom/account_data/m.tag", aliceTok, map[string]any{})
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "GET", "/_matrix/client/v3/user/"+ephEsc(alice)+"/rooms/"+ephEsc("@alice:localhost")+"/account_data/m.tag", aliceTok, nil)
	ts.wantErr(http.StatusBadRequest, "M_BAD_JSON", "PUT", global, aliceTok, `["not", "an", "object"]`)
	ts.wantErr(http.StatusBadRequest, "M_NOT_JSON", "PUT", global, aliceTok, `{"broken":`)
	ts.wantErr(http.StatusUnauthorized, "M_MISSING_TOKEN", "GET", global, "", nil)

	// m.push_rules reads as the full rule set even though never stored.
	out := ts.mustDo(http.StatusOK, "GET", "/_matrix/client/v3/user/"+ephEsc(alice)+"/account_data/m.push_rules", aliceTok, nil)
	if g, ok := out["global"].(map[string]any); !ok || len(g["override"].([]any)) == 0 {
		t.Fatalf("m.push_rules: %v", out)
	}
}
