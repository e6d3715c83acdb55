package clientapi

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestDevices(t *testing.T) {
	ts := newTestServer(t)
	uid, tok, dev := ts.signUp("alice", testPassword)
	second := ts.mustDo(http.StatusOK, "POST", "/_matrix/client/v3/login", "", passwordLogin("alice", testPassword))
	dev2, tok2 := second["device_id"].(string), second["access_token"].(string)

	ts.wantErr(http.StatusUnauthorized, "M_MISSING_TOKEN", "GET", "/_matrix/client/v3/devices", "", nil)
	devs := ts.mustDo(http.StatusOK, "GET", "/_matrix/client/v3/devices", tok, nil)["devices"].([]any)
	if len(devs) != 2 {
		t.Fatalf("devices: %v", devs)
	}
	for _, d := range devs {
		d := d.(map[string]any)
		if d["last_seen_ip"] != "127.0.0.1" || d["last_seen_ts"] == nil {
			t.Fatalf("device without last seen: %v", d)
		}
	}

	// Rename, read back, errors.
	ts.mustDo(http.StatusOK, "PUT", "/_matrix/client/v3/devices/"+dev, tok, map[string]any{"display_name": "Work laptop"})
	got := ts.mustDo(http.StatusOK, "GET", "/_matrix/client/v3/devices/"+dev, tok, nil)
	if got["device_id"] != dev || got["display_name"] != "Work laptop" {
		t.Fatalf("device: %v", got)
	}
	ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", "/_matrix/client/v3/devices/NOPE", tok, nil)
	ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "PUT", "/_matrix/client/v3/devices/NOPE", tok, map[string]any{"display_name": "x"})
	ts.wantErr(http.StatusBadRequest, "M_INVALID_PARAM", "PUT", "/_matrix/client/v3/devices/"+dev, tok,
		map[string]any{"display_name": strings.Repeat("x", 101)})
	ts.wantErr(http.StatusBadRequest, "M_BAD_JSON", "PUT", "/_matrix/client/v3/devices/"+dev, tok, map[string]any{"display_name": 7})
	// Another user's device is invisible.
	_, bobTok := ts.createUser("bob")
	ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", "/_matrix/client/v3/devices/"+dev, bobTok, nil)

	// DELETE: UIA first (a body-less DELETE counts as empty), then the
	// device and its token are gone at once.
	ch := ts.wantUIAChallenge("DELETE", "/_matrix/client/v3/devices/"+dev2, tok, nil)
	bad := ts.mustDo(http.StatusUnauthorized, "DELETE", "/_matrix/client/v3/devices/"+dev2, tok,
		map[string]any{"auth": passwordAuth(ch["session"], uid, "wrong")})
	if bad["errcode"] != "M_FORBIDDEN" {
		t.Fatalf("wrong password: %v", bad)
	}
	ts.mustDo(http.StatusOK, "DELETE", "/_matrix/client/v3/devices/"+dev2, tok,
		map[string]any{"auth": passwordAuth(ch["session"], uid, testPassword)})
	ts.wantErr(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "GET", "/_matrix/client/v3/account/whoami", tok2, nil)
	ts.wantErr(http.StatusNotFound, "M_NOT_FOUND", "GET", "/_matrix/client/v3/devices/"+dev2, tok, nil)
}

func TestDeleteDevicesAndDeviceListChanges(t *testing.T) {
	ts := newTestServer(t)
	uid, tok, _ := ts.signUp("alice", testPassword)
	var others []string
	var otherTokens []string
	for i := 0; i < 2; i++ {
		out := ts.mustDo(http.StatusOK, "POST", "/_matrix/client/v3/login", "", passwordLogin("alice", testPassword))
		others = append(others, out["device_id"].(string))
		otherTokens = append(otherTokens, out["access_token"].(string))
	}
	ctx := context.Background()
	before := countDeviceListChanges(t, ts, uid)
	if before != 3 { // one per created device
		t.Fatalf("device list changes after three logins: %d", before)
	}

	const path = "/_matrix/client/v3/delete_devices"
	ts.wantErr(http.StatusBadRequest, "M_MISSING_PARAM", "POST", path, tok, map[string]any{})
	ts.wantErr(http.StatusBadRequest, "M_BAD_JSON", "POST", path, tok, map[string]any{"devices": "ABC"})
	ch := ts.wantUIAChallenge("POST", path, tok, map[string]any{"devices": others})
	ts.mustDo(http.StatusOK, "POST", path, tok, map[string]any{"devices": append(others, "UNKNOWN"),
		"auth": passwordAuth(ch["session"], "alice", testPassword)})
	for _, ot := range otherTokens {
		ts.wantErr(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "GET", "/_matrix/client/v3/account/whoami", ot, nil)
	}
	ds, err := ts.db.DevicesOfUser(ctx, uid)
	if err != nil || len(ds) != 1 {
		t.Fatalf("devices left: %d %v", len(ds), err)
	}
	if after := countDeviceListChanges(t, ts, uid); after != before+1 {
		t.Fatalf("device list changes: %d, want %d", after, before+1)
	}
	// The change is at the head of the stream the notifier knows.
	pos, err := ts.db.CurrentPos(ctx)
	if err != nil || ts.Rooms().Notifier().Latest() != pos {
		t.Fatalf("notifier at %d, stream at %d (%v)", ts.Rooms().Notifier().Latest(), pos, err)
	}
}

func countDeviceListChanges(t *testing.T, ts *testServer, userID string) int {
	t.Helper()
	var n int
	if err := ts.db.QueryRow(context.Background(), `SELECT COUNT(*) FROM device_list_changes WHERE user_id = $1`, userID).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestDeviceLastSeenUpdatedOnUse(t *testing.T) {
	ts := newTestServer(t)
	uid, tok := ts.createUser("alice") // device created with last_seen_ts 0
	ts.mustDo(http.StatusOK, "GET", "/_matrix/client/v3/account/whoami", tok, nil)
	d, err := ts.db.DeviceByID(context.Background(), uid, "DEVALICE")
	if err != nil || d.LastSeenTS == 0 || d.LastSeenIP != "127.0.0.1" {
		t.Fatalf("device: %+v %v", d, err)
	}
	// Within the minute there is no second write.
	if ts.api.accounts.seen.due(uid, "DEVALICE", time.Now()) {
		t.Fatal("seen tracker would write again within a minute")
	}
}
