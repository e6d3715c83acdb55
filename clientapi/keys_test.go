package clientapi

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
	"maunium.net/go/mautrix/crypto/canonicaljson"

	"github.com/agentspace/agentspace/rooms"
	"github.com/agentspace/agentspace/storage"
)

// e2eKey is an ed25519 key pair as a client would hold it.
type e2eKey struct {
	pub  string // unpadded base64
	priv ed25519.PrivateKey
}

func newE2EKey(t *testing.T) e2eKey {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return e2eKey{pub: base64.RawStdEncoding.EncodeToString(pub), priv: priv}
}

// e2eSign adds signatures[userID]["ed25519:"+keyName] to obj, signing its
// canonical form without signatures and unsigned, as the spec does.
func e2eSign(t *testing.T, obj map[string]any, k e2eKey, userID, keyName string) map[string]any {
	t.Helper()
	stripped := make(map[string]any, len(obj))
	for key, v := range obj {
		if key != "signatures" && key != "unsigned" {
			stripped[key] = v
		}
	}
	msg, err := canonicaljson.Marshal(stripped)
	if err != nil {
		t.Fatal(err)
	}
	sig := base64.RawStdEncoding.EncodeToString(ed25519.Sign(k.priv, msg))
	sigs, _ := obj["signatures"].(map[string]any)
	if sigs == nil {
		sigs = map[string]any{}
	}
	mine, _ := sigs[userID].(map[string]any)
	if mine == nil {
		mine = map[string]any{}
	}
	mine["ed25519:"+keyName] = sig
	sigs[userID] = mine
	obj["signatures"] = sigs
	return obj
}

// signedDeviceKeys builds device_keys for a device, self-signed with its own
// ed25519 key (returned so tests can sign with it).
func signedDeviceKeys(t *testing.T, userID, deviceID string) (map[string]any, e2eKey) {
	t.Helper()
	k := newE2EKey(t)
	curve := make([]byte, 32)
	_, _ = rand.Read(curve)
	obj := map[string]any{
		"user_id":    userID,
		"device_id":  deviceID,
		"algorithms": []string{"m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"},
		"keys": map[string]any{
			"curve25519:" + deviceID: base64.RawStdEncoding.EncodeToString(curve),
			"ed25519:" + deviceID:    k.pub,
		},
	}
	return e2eSign(t, obj, k, userID, deviceID), k
}

// signedOTKs makes n signed_curve25519 one-time keys with ids prefix+i.
func signedOTKs(t *testing.T, devKey e2eKey, userID, deviceID, prefix string, n int, fallback bool) map[string]any {
	t.Helper()
	out := map[string]any{}
	for i := 0; i < n; i++ {
		b := make([]byte, 32)
		_, _ = rand.Read(b)
		obj := map[string]any{"key": base64.RawStdEncoding.EncodeToString(b)}
		if fallback {
			obj["fallback"] = true
		}
		out[fmt.Sprintf("signed_curve25519:%s%d", prefix, i)] = e2eSign(t, obj, devKey, userID, deviceID)
	}
	return out
}

// keysJSONValue round-trips v through JSON for comparisons.
func keysJSONValue(t *testing.T, v any) any {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var out any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// keysDig walks nested JSON objects; nil when a step is missing.
func keysDig(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

func keysSameJSON(t *testing.T, a, b any) bool {
	t.Helper()
	ja, _ := json.Marshal(keysJSONValue(t, a))
	jb, _ := json.Marshal(keysJSONValue(t, b))
	return bytes.Equal(ja, jb)
}

func TestKeysUploadAndQuery(t *testing.T) {
	ts := newTestServer(t)
	alice, aliceTok := ts.createUser("alice")
	bob, bobTok := ts.createUser("bob")
	ctx := context.Background()
	name := "Alice's laptop"
	if err := ts.db.Write(ctx, func(tx *storage.Tx) error { return tx.SetDeviceDisplayName(ctx, alice, "DEVALICE", &name) }); err != nil {
		t.Fatal(err)
	}

	dk, devKey := signedDeviceKeys(t, alice, "DEVALICE")
	out := ts.mustDo(200, "POST", "/_matrix/client/v3/keys/upload", aliceTok, map[string]any{
		"device_keys":   dk,
		"one_time_keys": signedOTKs(t, devKey, alice, "DEVALICE", "A", 3, false),
	})
	counts := out["one_time_key_counts"].(map[string]any)
	if counts["signed_curve25519"] != float64(3) {
		t.Fatalf("one_time_key_counts = %v, want signed_curve25519: 3", counts)
	}

	// Query by another user: the keys as uploaded, plus the display name.
	out = ts.mustDo(200, "POST", "/_matrix/client/v3/keys/query", bobTok, map[string]any{
		"device_keys": map[string]any{alice: []string{}, "@nobody:" + ts.cfg.ServerName: []string{}},
	})
	got := out["device_keys"].(map[string]any)[alice].(map[string]any)["DEVALICE"].(map[string]any)
	unsigned, _ := got["unsigned"].(map[string]any)
	if unsigned["device_display_name"] != name {
		t.Fatalf("unsigned = %v, want device_display_name %q", unsigned, name)
	}
	delete(got, "unsigned")
	if !keysSameJSON(t, got, dk) {
		t.Fatalf("queried keys %v differ from uploaded %v", got, dk)
	}
	if nobody := out["device_keys"].(map[string]any)["@nobody:"+ts.cfg.ServerName]; !keysSameJSON(t, nobody, map[string]any{}) {
		t.Fatalf("unknown user's devices = %v, want {}", nobody)
	}
	if f, ok := out["failures"].(map[string]any); !ok || len(f) != 0 {
		t.Fatalf("failures = %v", out["failures"])
	}
	// Only named devices are returned.
	out = ts.mustDo(200, "POST", "/_matrix/client/v3/keys/query", bobTok, map[string]any{"device_keys": map[string]any{alice: []string{"OTHER"}}})
	if devs := out["device_keys"].(map[string]any)[alice].(map[string]any); len(devs) != 0 {
		t.Fatalf("query for unknown device returned %v", devs)
	}
	// Remote users fail per server: we do not federate.
	out = ts.mustDo(200, "POST", "/_matrix/client/v3/keys/query", bobTok, map[string]any{"device_keys": map[string]any{"@x:elsewhere.example": []string{}}})
	if _, ok := out["failures"].(map[string]any)["elsewhere.example"]; !ok {
		t.Fatalf("no failure for remote server: %v", out)
	}

	// Re-uploading the same key ids with the same content is fine; with
	// different content it is refused.
	otks := signedOTKs(t, devKey, alice, "DEVALICE", "B", 1, false)
	ts.mustDo(200, "POST", "/_matrix/client/v3/keys/upload", aliceTok, map[string]any{"one_time_keys": otks})
	out = ts.mustDo(200, "POST", "/_matrix/client/v3/keys/upload", aliceTok, map[string]any{"one_time_keys": otks})
	if c := out["one_time_key_counts"].(map[string]any)["signed_curve25519"]; c != float64(4) {
		t.Fatalf("count after idempotent re-upload = %v, want 4", c)
	}
	ts.wantErr(400, "M_INVALID_PARAM", "POST", "/_matrix/client/v3/keys/upload", aliceTok, map[string]any{
		"one_time_keys": signedOTKs(t, devKey, alice, "DEVALICE", "B", 1, false),
	})
	ts.wantErr(400, "M_INVALID_PARAM", "POST", "/_matrix/client/v3/keys/upload", aliceTok, map[string]any{
		"one_time_keys": map[string]any{"nocolon": "abc"},
	})

	// Device keys must be the caller's own device.
	other, _ := signedDeviceKeys(t, alice, "OTHERDEVICE")
	ts.wantErr(400, "M_INVALID_PARAM", "POST", "/_matrix/client/v3/keys/upload", aliceTok, map[string]any{"device_keys": other})
	bobs, _ := signedDeviceKeys(t, bob, "DEVALICE")
	ts.wantErr(400, "M_INVALID_PARAM", "POST", "/_matrix/client/v3/keys/upload", aliceTok, map[string]any{"device_keys": bobs})

	// Shape and auth errors.
	ts.wantErr(401, "M_MISSING_TOKEN", "POST", "/_matrix/client/v3/keys/upload", "", map[string]any{})
	ts.wantErr(401, "M_MISSING_TOKEN", "POST", "/_matrix/client/v3/keys/query", "", map[string]any{})
	ts.wantErr(400, "M_NOT_JSON", "POST", "/_matrix/client/v3/keys/upload", aliceTok, "{nope")
	ts.wantErr(400, "M_BAD_JSON", "POST", "/_matrix/client/v3/keys/upload", aliceTok, map[string]any{"device_keys": "text"})
	ts.wantErr(400, "M_BAD_JSON", "POST", "/_matrix/client/v3/keys/query", aliceTok, map[string]any{"device_keys": []string{"x"}})
	ts.wantErr(400, "M_INVALID_PARAM", "POST", "/_matrix/client/v3/keys/query", aliceTok, map[string]any{"device_keys": map[string]any{"not-a-user": []string{}}})

	// No backup support: GET says there is no backup, POST says unsupported.
	ts.wantErr(404, "M_NOT_FOUND", "GET", "/_matrix/client/v3/room_keys/version", aliceTok, nil)
	ts.wantErr(404, "M_UNRECOGNIZED", "POST", "/_matrix/client/v3/room_keys/version", aliceTok, map[string]any{"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": map[string]any{}})
	ts.wantErr(404, "M_NOT_FOUND", "GET", "/_matrix/client/v3/room_keys/version/1", aliceTok, nil)
}

// keysPostRaw is a goroutine-safe POST (ts.do must not be called off the test goroutine).
func keysPostRaw(base, path, token string, body any) (int, []byte, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return 0, nil, err
	}
	req, err := http.NewRequest("POST", base+path, bytes.NewReader(b))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	return resp.StatusCode, raw, err
}

func TestKeysClaimExactlyOnceWithFallback(t *testing.T) {
	ts := newTestServer(t)
	alice, aliceTok := ts.createUser("alice")
	_, bobTok := ts.createUser("bob")
	ctx := context.Background()

	dk, devKey := signedDeviceKeys(t, alice, "DEVALICE")
	const numOTKs = 10
	fallback := signedOTKs(t, devKey, alice, "DEVALICE", "F", 1, true)
	ts.mustDo(200, "POST", "/_matrix/client/v3/keys/upload", aliceTok, map[string]any{
		"device_keys":   dk,
		"one_time_keys": signedOTKs(t, devKey, alice, "DEVALICE", "K", numOTKs, false),
		"fallback_keys": fallback,
	})
	counts, err := ts.db.OneTimeKeyCounts(ctx, alice, "DEVALICE")
	if err != nil || counts["signed_curve25519"] != numOTKs {
		t.Fatalf("counts = %v, %v; want %d (fallback keys are not counted)", counts, err, numOTKs)
	}
	if types, _ := ts.db.UnusedFallbackKeyTypes(ctx, alice, "DEVALICE"); len(types) != 1 || types[0] != "signed_curve25519" {
		t.Fatalf("unused fallback types = %v", types)
	}

	// 20 concurrent claims for 10 keys: each one-time key goes out exactly
	// once, the other 10 claims get the fallback key.
	const claimers = 20
	results := make([]string, claimers)
	errs := make([]error, claimers)
	var wg sync.WaitGroup
	for i := 0; i < claimers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			status, raw, err := keysPostRaw(ts.URL, "/_matrix/client/v3/keys/claim", bobTok, map[string]any{
				"one_time_keys": map[string]any{alice: map[string]string{"DEVALICE": "signed_curve25519"}},
			})
			if err != nil || status != 200 {
				errs[i] = fmt.Errorf("claim: %d %s %v", status, raw, err)
				return
			}
			var resp struct {
				OneTimeKeys map[string]map[string]map[string]json.RawMessage `json:"one_time_keys"`
			}
			if err := json.Unmarshal(raw, &resp); err != nil {
				errs[i] = err
				return
			}
			for keyID := range resp.OneTimeKeys[alice]["DEVALICE"] {
				results[i] = keyID
			}
		}(i)
	}
	wg.Wait()
	seen := map[string]int{}
	for i := range results {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		seen[results[i]]++
	}
	for keyID, n := range seen {
		switch {
		case keyID == "signed_curve25519:F0":
			if n != claimers-numOTKs {
				t.Errorf("fallback key handed out %d times, want %d", n, claimers-numOTKs)
			}
		case strings.HasPrefix(keyID, "signed_curve25519:K"):
			if n != 1 {
				t.Errorf("one-time key %s handed out %d times", keyID, n)
			}
		default:
			t.Errorf("unexpected claim result %q (%d times)", keyID, n)
		}
	}
	if len(seen) != numOTKs+1 {
		t.Errorf("distinct keys claimed = %d, want %d", len(seen), numOTKs+1)
	}
	// The fallback key stays, but is now used.
	if types, _ := ts.db.UnusedFallbackKeyTypes(ctx, alice, "DEVALICE"); len(types) != 0 {
		t.Fatalf("unused fallback types after claim = %v, want none", types)
	}
	if counts, _ := ts.db.OneTimeKeyCounts(ctx, alice, "DEVALICE"); counts["signed_curve25519"] != 0 {
		t.Fatalf("counts after claims = %v", counts)
	}
	// A new fallback key replaces the used one.
	ts.mustDo(200, "POST", "/_matrix/client/v3/keys/upload", aliceTok, map[string]any{
		"fallback_keys": signedOTKs(t, devKey, alice, "DEVALICE", "G", 1, true),
	})
	if types, _ := ts.db.UnusedFallbackKeyTypes(ctx, alice, "DEVALICE"); len(types) != 1 {
		t.Fatalf("unused fallback types after new fallback = %v", types)
	}
	out := ts.mustDo(200, "POST", "/_matrix/client/v3/keys/claim", bobTok, map[string]any{
		"one_time_keys": map[string]any{alice: map[string]string{"DEVALICE": "signed_curve25519", "NODEVICE": "signed_curve25519"}, "@z:remote.example": map[string]string{"D": "signed_curve25519"}},
	})
	keys := out["one_time_keys"].(map[string]any)[alice].(map[string]any)
	if _, ok := keys["DEVALICE"].(map[string]any)["signed_curve25519:G0"]; !ok || len(keys) != 1 {
		t.Fatalf("claim after new fallback = %v", out)
	}
	if _, ok := out["failures"].(map[string]any)["remote.example"]; !ok {
		t.Fatalf("no failure for remote server: %v", out)
	}
	ts.wantErr(401, "M_MISSING_TOKEN", "POST", "/_matrix/client/v3/keys/claim", "", map[string]any{})
	ts.wantErr(400, "M_BAD_JSON", "POST", "/_matrix/client/v3/keys/claim", bobTok, map[string]any{"one_time_keys": "x"})
}

// keysShareRoom puts users in one public room and returns its id.
func keysShareRoom(t *testing.T, ts *testServer, creator string, others ...string) string {
	t.Helper()
	ctx := context.Background()
	roomID, err := ts.rooms.CreateRoom(ctx, rooms.CreateRoomRequest{Creator: creator, Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range others {
		if _, err := ts.rooms.ChangeMembership(ctx, roomID, rooms.MembershipRequest{Sender: u, Target: u, Membership: "join"}); err != nil {
			t.Fatal(err)
		}
	}
	return roomID
}

func TestKeysChanges(t *testing.T) {
	ts := newTestServer(t)
	alice, aliceTok := ts.createUser("alice")
	bob, bobTok := ts.createUser("bob")
	carol, carolTok := ts.createUser("carol")
	roomID := keysShareRoom(t, ts, alice, bob)

	from := rooms.StreamToken(ts.rooms.Notifier().Latest())
	bobKeys, _ := signedDeviceKeys(t, bob, "DEVBOB")
	ts.mustDo(200, "POST", "/_matrix/client/v3/keys/upload", bobTok, map[string]any{"device_keys": bobKeys})
	carolKeys, _ := signedDeviceKeys(t, carol, "DEVCAROL")
	ts.mustDo(200, "POST", "/_matrix/client/v3/keys/upload", carolTok, map[string]any{"device_keys": carolKeys})
	mid := ts.rooms.Notifier().Latest()

	out := ts.mustDo(200, "GET", "/_matrix/client/v3/keys/changes?from="+from+"&to="+rooms.StreamToken(mid), aliceTok, nil)
	if !keysSameJSON(t, out["changed"], []string{bob}) || !keysSameJSON(t, out["left"], []string{}) {
		t.Fatalf("changes = %v, want changed [bob] (carol shares no room)", out)
	}
	// A sync-style token with a to-device suffix parses too; nothing changed since.
	out = ts.mustDo(200, "GET", "/_matrix/client/v3/keys/changes?from="+rooms.StreamToken(mid)+"_0", aliceTok, nil)
	if !keysSameJSON(t, out["changed"], []string{}) {
		t.Fatalf("changes since mid = %v, want none", out)
	}
	// Re-uploading identical device keys is not a change.
	ts.mustDo(200, "POST", "/_matrix/client/v3/keys/upload", bobTok, map[string]any{"device_keys": bobKeys})
	if ts.rooms.Notifier().Latest() != mid {
		t.Fatal("identical device keys re-upload allocated a stream position")
	}

	// Carol joins: alice must start tracking her; bob leaves: alice stops.
	if _, err := ts.rooms.ChangeMembership(context.Background(), roomID, rooms.MembershipRequest{Sender: carol, Target: carol, Membership: "join"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.rooms.ChangeMembership(context.Background(), roomID, rooms.MembershipRequest{Sender: bob, Target: bob, Membership: "leave"}); err != nil {
		t.Fatal(err)
	}
	out = ts.mustDo(200, "GET", "/_matrix/client/v3/keys/changes?from="+rooms.StreamToken(mid), aliceTok, nil)
	if !keysSameJSON(t, out["changed"], []string{carol}) || !keysSameJSON(t, out["left"], []string{bob}) {
		t.Fatalf("changes after join/leave = %v, want changed [carol] left [bob]", out)
	}

	ts.wantErr(400, "M_MISSING_PARAM", "GET", "/_matrix/client/v3/keys/changes", aliceTok, nil)
	ts.wantErr(400, "M_INVALID_PARAM", "GET", "/_matrix/client/v3/keys/changes?from=garbage", aliceTok, nil)
	ts.wantErr(401, "M_MISSING_TOKEN", "GET", "/_matrix/client/v3/keys/changes?from=s0", "", nil)
}

// newCrossSigningSet builds a signed master/self-signing/user-signing set.
type crossSigningSet struct {
	master, ssk, usk          e2eKey
	masterObj, sskObj, uskObj map[string]any
}

func newCrossSigningSet(t *testing.T, userID string) crossSigningSet {
	t.Helper()
	cs := crossSigningSet{master: newE2EKey(t), ssk: newE2EKey(t), usk: newE2EKey(t)}
	mk := func(k e2eKey, usage string) map[string]any {
		return map[string]any{"user_id": userID, "usage": []string{usage}, "keys": map[string]any{"ed25519:" + k.pub: k.pub}}
	}
	cs.masterObj = mk(cs.master, "master")
	cs.sskObj = e2eSign(t, mk(cs.ssk, "self_signing"), cs.master, userID, cs.master.pub)
	cs.uskObj = e2eSign(t, mk(cs.usk, "user_signing"), cs.master, userID, cs.master.pub)
	return cs
}

func (cs crossSigningSet) upload() map[string]any {
	return map[string]any{"master_key": cs.masterObj, "self_signing_key": cs.sskObj, "user_signing_key": cs.uskObj}
}

func TestCrossSigningAndSignatures(t *testing.T) {
	ts := newTestServer(t)
	alice, aliceTok := ts.createUser("alice")
	bob, bobTok := ts.createUser("bob")
	ctx := context.Background()
	hash, _ := bcrypt.GenerateFromPassword([]byte("hunter2"), 4)
	if err := ts.db.Write(ctx, func(tx *storage.Tx) error { return tx.SetPasswordHash(ctx, alice, string(hash)) }); err != nil {
		t.Fatal(err)
	}
	aliceDK, aliceDevKey := signedDeviceKeys(t, alice, "DEVALICE")
	ts.mustDo(200, "POST", "/_matrix/client/v3/keys/upload", aliceTok, map[string]any{"device_keys": aliceDK})

	// Errors first: bad signature, wrong user, no master key.
	cs := newCrossSigningSet(t, alice)
	forged := newCrossSigningSet(t, alice)
	bad := cs.upload()
	bad["self_signing_key"] = forged.sskObj // signed by another master key
	ts.wantErr(400, "M_INVALID_SIGNATURE", "POST", "/_matrix/client/v3/keys/device_signing/upload", aliceTok, bad)
	ts.wantErr(400, "M_MISSING_PARAM", "POST", "/_matrix/client/v3/keys/device_signing/upload", aliceTok, map[string]any{"self_signing_key": cs.sskObj})
	ts.wantErr(400, "M_INVALID_PARAM", "POST", "/_matrix/client/v3/keys/device_signing/upload", bobTok, cs.upload())
	ts.wantErr(401, "M_MISSING_TOKEN", "POST", "/_matrix/client/v3/keys/device_signing/upload", "", cs.upload())

	// First upload: no UIA needed.
	before := ts.rooms.Notifier().Latest()
	ts.mustDo(200, "POST", "/_matrix/client/v3/keys/device_signing/upload", aliceTok, cs.upload())
	if changed, _ := ts.db.DeviceListChangesSince(ctx, before, ts.rooms.Notifier().Latest()); !keysSameJSON(t, changed, []string{alice}) {
		t.Fatalf("device list changes after cross-signing upload = %v", changed)
	}
	// Repeating the same keys is fine without UIA too.
	ts.mustDo(200, "POST", "/_matrix/client/v3/keys/device_signing/upload", aliceTok, cs.upload())

	out := ts.mustDo(200, "POST", "/_matrix/client/v3/keys/query", aliceTok, map[string]any{"device_keys": map[string]any{alice: []string{}}})
	for field, want := range map[string]any{"master_keys": cs.masterObj, "self_signing_keys": cs.sskObj, "user_signing_keys": cs.uskObj} {
		if got := out[field].(map[string]any)[alice]; !keysSameJSON(t, got, want) {
			t.Fatalf("%s = %v, want %v", field, got, want)
		}
	}
	// Others do not see the user-signing key.
	out = ts.mustDo(200, "POST", "/_matrix/client/v3/keys/query", bobTok, map[string]any{"device_keys": map[string]any{alice: []string{}}})
	if _, ok := out["user_signing_keys"].(map[string]any)[alice]; ok {
		t.Fatal("user-signing key visible to another user")
	}
	if _, ok := out["master_keys"].(map[string]any)[alice]; !ok {
		t.Fatal("master key not visible to another user")
	}

	// Signatures: alice's self-signing key on her device, and her device on her master key.
	signedDevice := e2eSign(t, aliceDK, cs.ssk, alice, cs.ssk.pub)
	signedMaster := e2eSign(t, cs.masterObj, aliceDevKey, alice, "DEVALICE")
	out = ts.mustDo(200, "POST", "/_matrix/client/v3/keys/signatures/upload", aliceTok, map[string]any{
		alice: map[string]any{"DEVALICE": signedDevice, cs.master.pub: signedMaster},
	})
	if f := out["failures"].(map[string]any); len(f) != 0 {
		t.Fatalf("failures = %v", f)
	}
	out = ts.mustDo(200, "POST", "/_matrix/client/v3/keys/query", bobTok, map[string]any{"device_keys": map[string]any{alice: []string{}}})
	dev := out["device_keys"].(map[string]any)[alice].(map[string]any)["DEVALICE"].(map[string]any)
	if sig := dev["signatures"].(map[string]any)[alice].(map[string]any)["ed25519:"+cs.ssk.pub]; sig == nil {
		t.Fatalf("self-signing signature not merged into device keys: %v", dev)
	}
	if sig := out["master_keys"].(map[string]any)[alice].(map[string]any)["signatures"].(map[string]any)[alice].(map[string]any)["ed25519:DEVALICE"]; sig == nil {
		t.Fatalf("device signature not merged into master key: %v", out["master_keys"])
	}

	// Alice signs bob's master key with her user-signing key: alice sees
	// the signature, bob's view of his own key does not carry it.
	bobCS := newCrossSigningSet(t, bob)
	ts.mustDo(200, "POST", "/_matrix/client/v3/keys/device_signing/upload", bobTok, bobCS.upload())
	signedBob := e2eSign(t, bobCS.masterObj, cs.usk, alice, cs.usk.pub)
	out = ts.mustDo(200, "POST", "/_matrix/client/v3/keys/signatures/upload", aliceTok, map[string]any{bob: map[string]any{bobCS.master.pub: signedBob}})
	if f := out["failures"].(map[string]any); len(f) != 0 {
		t.Fatalf("failures = %v", f)
	}
	out = ts.mustDo(200, "POST", "/_matrix/client/v3/keys/query", aliceTok, map[string]any{"device_keys": map[string]any{bob: []string{}}})
	bobMaster := out["master_keys"].(map[string]any)[bob].(map[string]any)
	if sig := bobMaster["signatures"].(map[string]any)[alice]; sig == nil {
		t.Fatalf("alice's signature not on bob's master key in her query: %v", bobMaster)
	}
	out = ts.mustDo(200, "POST", "/_matrix/client/v3/keys/query", bobTok, map[string]any{"device_keys": map[string]any{bob: []string{}}})
	if keysDig(out, "master_keys", bob) == nil {
		t.Fatalf("bob's own query lacks his master key: %v", out)
	}
	if sig := keysDig(out, "master_keys", bob, "signatures", alice); sig != nil {
		t.Fatal("alice's user-signing signature visible to bob")
	}

	// Bad signatures are reported per key, not stored.
	forgedSig := e2eSign(t, bobCS.masterObj, forged.usk, alice, cs.usk.pub)
	out = ts.mustDo(200, "POST", "/_matrix/client/v3/keys/signatures/upload", aliceTok, map[string]any{
		bob:   map[string]any{bobCS.master.pub: forgedSig},
		alice: map[string]any{"NODEVICE": signedDevice},
	})
	f := out["failures"].(map[string]any)
	if f[bob].(map[string]any)[bobCS.master.pub].(map[string]any)["errcode"] != "M_INVALID_SIGNATURE" {
		t.Fatalf("failures = %v, want M_INVALID_SIGNATURE for bob's master key", f)
	}
	if f[alice].(map[string]any)["NODEVICE"] == nil {
		t.Fatalf("failures = %v, want an entry for the unknown device", f)
	}
	ts.wantErr(400, "M_NOT_JSON", "POST", "/_matrix/client/v3/keys/signatures/upload", aliceTok, "not json")

	// Replacing the master key requires UIA with the password.
	cs2 := newCrossSigningSet(t, alice)
	status, body := ts.do("POST", "/_matrix/client/v3/keys/device_signing/upload", aliceTok, cs2.upload())
	if status != 401 || body["session"] == nil || !strings.Contains(fmt.Sprint(body["flows"]), "m.login.password") {
		t.Fatalf("replacing master key without auth: %d %v", status, body)
	}
	withAuth := cs2.upload()
	withAuth["auth"] = map[string]any{"type": "m.login.password", "session": body["session"], "password": "wrong",
		"identifier": map[string]any{"type": "m.id.user", "user": alice}}
	if status, out := ts.do("POST", "/_matrix/client/v3/keys/device_signing/upload", aliceTok, withAuth); status != 401 || out["errcode"] != "M_FORBIDDEN" {
		t.Fatalf("wrong password: %d %v", status, out)
	}
	withAuth["auth"].(map[string]any)["password"] = "hunter2"
	ts.mustDo(200, "POST", "/_matrix/client/v3/keys/device_signing/upload", aliceTok, withAuth)
	out = ts.mustDo(200, "POST", "/_matrix/client/v3/keys/query", aliceTok, map[string]any{"device_keys": map[string]any{alice: []string{}}})
	if got := out["master_keys"].(map[string]any)[alice]; !keysSameJSON(t, got, cs2.masterObj) {
		t.Fatalf("master key after replacement = %v", got)
	}
	// Signatures by the replaced self-signing key are gone with it.
	dev = out["device_keys"].(map[string]any)[alice].(map[string]any)["DEVALICE"].(map[string]any)
	if sig := dev["signatures"].(map[string]any)[alice].(map[string]any)["ed25519:"+cs.ssk.pub]; sig != nil {
		t.Fatal("signature of the replaced self-signing key still served")
	}
}
