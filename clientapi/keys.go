package clientapi

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto/canonicaljson"
	"maunium.net/go/mautrix/id"

	"github.com/agentspace/agentspace/rooms"
	"github.com/agentspace/agentspace/storage"
)

// End-to-end encryption relay (spec: "End-to-end encryption"). The server
// never decrypts anything: it stores the keys clients upload exactly as they
// sent them (they are signed JSON), hands them to other clients, gives out
// each one-time key once, and checks the signatures of cross-signing keys.
// Server-side key backup (/room_keys) is not implemented.

func (a *API) registerKeys(rt routes) {
	rt.client("/keys/upload", a.authed(a.handleKeysUpload), http.MethodPost)
	rt.client("/keys/query", a.authed(a.handleKeysQuery), http.MethodPost)
	rt.client("/keys/claim", a.authed(a.handleKeysClaim), http.MethodPost)
	rt.client("/keys/changes", a.authed(a.handleKeysChanges), http.MethodGet)
	rt.client("/keys/device_signing/upload", a.authed(a.handleDeviceSigningUpload), http.MethodPost)
	rt.client("/keys/signatures/upload", a.authed(a.handleSignaturesUpload), http.MethodPost)

	noBackup := a.authed(func(w http.ResponseWriter, r *http.Request) error {
		return mautrix.MNotFound.WithMessage("No current backup version")
	})
	rt.client("/room_keys/version", noBackup, http.MethodGet)
	rt.client("/room_keys/version", a.authed(func(w http.ResponseWriter, r *http.Request) error {
		return mautrix.MUnrecognized.WithStatus(http.StatusNotFound).WithMessage("Server-side key backup is not supported by this server")
	}), http.MethodPost)
	unknownVersion := a.authed(func(w http.ResponseWriter, r *http.Request) error {
		return mautrix.MNotFound.WithMessage("Unknown backup version")
	})
	rt.client("/room_keys/version/{version}", unknownVersion, http.MethodGet, http.MethodPut, http.MethodDelete)
	for _, p := range []string{"/room_keys/keys", "/room_keys/keys/{roomId}", "/room_keys/keys/{roomId}/{sessionId}"} {
		rt.client(p, unknownVersion, http.MethodGet, http.MethodPut, http.MethodDelete)
	}

	a.registerToDevice(rt)
}

// isLocalUser reports whether userID is a valid user id of this server.
func (a *API) isLocalUser(userID string) bool {
	_, server, err := id.UserID(userID).Parse()
	return err == nil && server == a.cfg.ServerName
}

// wakeDeviceListChange makes /sync report userIDs' device lists as changed
// at pos to everyone sharing a room with them.
func (a *API) wakeDeviceListChange(tx *storage.Tx, pos storage.StreamPos, userIDs ...string) {
	tx.OnCommit(func() { a.rooms.Notifier().Advance(pos, rooms.Wake{ShareRoomsWith: userIDs}) })
}

// ---- POST /keys/upload ----

type keysUploadRequest struct {
	DeviceKeys   json.RawMessage            `json:"device_keys"`
	OneTimeKeys  map[string]json.RawMessage `json:"one_time_keys"`
	FallbackKeys map[string]json.RawMessage `json:"fallback_keys"`
	// Older clients (MSC2732) send fallback keys under the unstable name.
	UnstableFallbackKeys map[string]json.RawMessage `json:"org.matrix.msc2732.fallback_keys"`
}

// deviceKeysShape is what we check of uploaded device keys; the stored
// value is the raw JSON.
type deviceKeysShape struct {
	UserID     string            `json:"user_id"`
	DeviceID   string            `json:"device_id"`
	Algorithms []string          `json:"algorithms"`
	Keys       map[string]string `json:"keys"`
}

func isAbsent(raw json.RawMessage) bool {
	t := strings.TrimSpace(string(raw))
	return t == "" || t == "null"
}

// splitKeyID splits "algorithm:id".
func splitKeyID(keyID string) (alg string, ok bool) {
	alg, rest, found := strings.Cut(keyID, ":")
	return alg, found && alg != "" && rest != ""
}

// parseUploadedKeys checks a one_time_keys or fallback_keys map.
func parseUploadedKeys(field string, in map[string]json.RawMessage) ([]storage.OneTimeKey, error) {
	ids := make([]string, 0, len(in))
	for k := range in {
		ids = append(ids, k)
	}
	sort.Strings(ids)
	out := make([]storage.OneTimeKey, 0, len(in))
	for _, keyID := range ids {
		alg, ok := splitKeyID(keyID)
		if !ok {
			return nil, badParam("%s: key id %q is not of the form <algorithm>:<key id>", field, keyID)
		}
		raw := in[keyID]
		t := strings.TrimSpace(string(raw))
		if !strings.HasPrefix(t, "{") && !strings.HasPrefix(t, `"`) {
			return nil, badParam("%s: key %q must be a string or a signed key object", field, keyID)
		}
		out = append(out, storage.OneTimeKey{KeyID: keyID, Algorithm: alg, KeyJSON: raw})
	}
	return out, nil
}

func (a *API) handleKeysUpload(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	ctx := r.Context()
	var req keysUploadRequest
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	var deviceKeys json.RawMessage
	if !isAbsent(req.DeviceKeys) {
		if !isJSONObject(req.DeviceKeys) {
			return mautrix.MBadJSON.WithMessage("device_keys must be an object")
		}
		var dk deviceKeysShape
		if err := decodeJSONBytes(req.DeviceKeys, &dk); err != nil {
			return err
		}
		if dk.UserID != s.UserID || dk.DeviceID != s.DeviceID {
			return badParam("device_keys are for %s/%s, but this is %s/%s", dk.UserID, dk.DeviceID, s.UserID, s.DeviceID)
		}
		if len(dk.Algorithms) == 0 || len(dk.Keys) == 0 {
			return badParam("device_keys must list algorithms and keys")
		}
		deviceKeys = req.DeviceKeys
	}
	otks, err := parseUploadedKeys("one_time_keys", req.OneTimeKeys)
	if err != nil {
		return err
	}
	fallbackIn := req.FallbackKeys
	if fallbackIn == nil {
		fallbackIn = req.UnstableFallbackKeys
	}
	fallbacks, err := parseUploadedKeys("fallback_keys", fallbackIn)
	if err != nil {
		return err
	}
	seenAlg := make(map[string]bool)
	for _, k := range fallbacks {
		if seenAlg[k.Algorithm] {
			return badParam("fallback_keys: more than one key for algorithm %s", k.Algorithm)
		}
		seenAlg[k.Algorithm] = true
	}

	err = a.db.Write(ctx, func(tx *storage.Tx) error {
		if deviceKeys != nil {
			changed, err := tx.SetDeviceKeys(ctx, s.UserID, s.DeviceID, deviceKeys)
			if err != nil {
				return err
			}
			if changed {
				pos, err := tx.MarkDeviceListChanged(ctx, s.UserID)
				if err != nil {
					return err
				}
				a.wakeDeviceListChange(tx, pos, s.UserID)
			}
		}
		if err := tx.AddOneTimeKeys(ctx, s.UserID, s.DeviceID, otks); err != nil {
			return err
		}
		for _, k := range fallbacks {
			if err := tx.SetFallbackKey(ctx, s.UserID, s.DeviceID, k); err != nil {
				return err
			}
		}
		return nil
	})
	if errors.Is(err, storage.ErrKeyConflict) {
		return badParam("%v", err)
	} else if err != nil {
		return err
	}
	counts, err := a.db.OneTimeKeyCounts(ctx, s.UserID, s.DeviceID)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]any{"one_time_key_counts": counts})
}

// ---- POST /keys/query ----

type keysQueryRequest struct {
	DeviceKeys map[string][]string `json:"device_keys"`
	Timeout    *int64              `json:"timeout"`
}

type keysQueryResponse struct {
	DeviceKeys      map[string]map[string]json.RawMessage `json:"device_keys"`
	MasterKeys      map[string]json.RawMessage            `json:"master_keys"`
	SelfSigningKeys map[string]json.RawMessage            `json:"self_signing_keys"`
	UserSigningKeys map[string]json.RawMessage            `json:"user_signing_keys"`
	Failures        map[string]any                        `json:"failures"`
}

// federationFailure is the failures entry for a server we cannot reach:
// this server does not federate.
var federationFailure = map[string]any{"status": http.StatusServiceUnavailable, "message": "This server does not federate"}

func (a *API) handleKeysQuery(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	ctx := r.Context()
	var req keysQueryRequest
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	resp := keysQueryResponse{
		DeviceKeys:      map[string]map[string]json.RawMessage{},
		MasterKeys:      map[string]json.RawMessage{},
		SelfSigningKeys: map[string]json.RawMessage{},
		UserSigningKeys: map[string]json.RawMessage{},
		Failures:        map[string]any{},
	}
	for userID, deviceIDs := range req.DeviceKeys {
		_, server, err := id.UserID(userID).Parse()
		if err != nil {
			return badParam("Invalid user ID %q", userID)
		}
		if server != a.cfg.ServerName {
			resp.Failures[server] = federationFailure
			continue
		}
		// Signatures made by the user on their own keys, plus those the
		// requester made (their user-signing key on this user's master
		// key), which only the requester may see — as Synapse does.
		signers := []string{userID}
		if s.UserID != userID {
			signers = append(signers, s.UserID)
		}
		sigs, err := a.db.KeySignaturesOn(ctx, userID, signers)
		if err != nil {
			return err
		}
		byTarget := make(map[string][]storage.KeySignature)
		for _, sig := range sigs {
			byTarget[sig.TargetKeyID] = append(byTarget[sig.TargetKeyID], sig)
		}

		devices, err := a.db.DeviceKeysOf(ctx, userID, deviceIDs)
		if err != nil {
			return err
		}
		out := make(map[string]json.RawMessage, len(devices))
		for _, dk := range devices {
			merged, err := mergeKeyJSON(dk.KeyJSON, byTarget[dk.DeviceID], dk.DisplayName)
			if err != nil {
				return fmt.Errorf("device keys of %s/%s: %w", userID, dk.DeviceID, err)
			}
			out[dk.DeviceID] = merged
		}
		resp.DeviceKeys[userID] = out

		csks, err := a.db.CrossSigningKeys(ctx, userID)
		if err != nil {
			return err
		}
		for keyType, dst := range map[string]map[string]json.RawMessage{
			storage.CrossSigningMaster:      resp.MasterKeys,
			storage.CrossSigningSelfSigning: resp.SelfSigningKeys,
			storage.CrossSigningUserSigning: resp.UserSigningKeys,
		} {
			raw, ok := csks[keyType]
			if !ok || (keyType == storage.CrossSigningUserSigning && userID != s.UserID) {
				continue
			}
			merged, err := mergeKeyJSON(raw, byTarget[crossSigningPub(raw)], nil)
			if err != nil {
				return fmt.Errorf("%s key of %s: %w", keyType, userID, err)
			}
			dst[userID] = merged
		}
	}
	return writeJSON(w, http.StatusOK, resp)
}

// mergeKeyJSON adds separately uploaded signatures and the device display
// name (under unsigned, which signatures do not cover) to stored key JSON.
// Unchanged keys are returned byte for byte.
func mergeKeyJSON(raw json.RawMessage, sigs []storage.KeySignature, displayName *string) (json.RawMessage, error) {
	if len(sigs) == 0 && displayName == nil {
		return raw, nil
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil {
		return nil, fmt.Errorf("stored key is not an object: %w", err)
	}
	if len(sigs) > 0 {
		signatures := make(map[string]map[string]json.RawMessage)
		if existing, ok := obj["signatures"]; ok {
			if err := json.Unmarshal(existing, &signatures); err != nil {
				return nil, fmt.Errorf("stored signatures: %w", err)
			}
		}
		for _, sig := range sigs {
			if signatures[sig.SignerUserID] == nil {
				signatures[sig.SignerUserID] = make(map[string]json.RawMessage)
			}
			v, _ := json.Marshal(sig.Signature)
			signatures[sig.SignerUserID][sig.SignerKeyID] = v
		}
		b, err := json.Marshal(signatures)
		if err != nil {
			return nil, err
		}
		obj["signatures"] = b
	}
	if displayName != nil {
		unsigned := make(map[string]json.RawMessage)
		if existing, ok := obj["unsigned"]; ok {
			_ = json.Unmarshal(existing, &unsigned) // a malformed unsigned is replaced
		}
		v, _ := json.Marshal(*displayName)
		unsigned["device_display_name"] = v
		b, err := json.Marshal(unsigned)
		if err != nil {
			return nil, err
		}
		obj["unsigned"] = b
	}
	return json.Marshal(obj)
}

// ---- POST /keys/claim ----

type keysClaimRequest struct {
	OneTimeKeys map[string]map[string]string `json:"one_time_keys"`
	Timeout     *int64                       `json:"timeout"`
}

func (a *API) handleKeysClaim(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	var req keysClaimRequest
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	type claim struct{ user, device, alg string }
	var claims []claim
	failures := map[string]any{}
	for userID, byDevice := range req.OneTimeKeys {
		_, server, err := id.UserID(userID).Parse()
		if err != nil {
			return badParam("Invalid user ID %q", userID)
		}
		if server != a.cfg.ServerName {
			failures[server] = federationFailure
			continue
		}
		for deviceID, alg := range byDevice {
			if alg == "" {
				return badParam("Empty algorithm for %s/%s", userID, deviceID)
			}
			claims = append(claims, claim{userID, deviceID, alg})
		}
	}
	sort.Slice(claims, func(i, j int) bool {
		if claims[i].user != claims[j].user {
			return claims[i].user < claims[j].user
		}
		return claims[i].device < claims[j].device
	})
	keys := map[string]map[string]map[string]json.RawMessage{}
	// Claiming inside the (serialised) write transaction gives each
	// one-time key to exactly one caller.
	err := a.db.Write(ctx, func(tx *storage.Tx) error {
		clear(keys)
		for _, c := range claims {
			k, err := tx.ClaimOneTimeKey(ctx, c.user, c.device, c.alg)
			if errors.Is(err, storage.ErrNotFound) {
				continue
			} else if err != nil {
				return err
			}
			if keys[c.user] == nil {
				keys[c.user] = map[string]map[string]json.RawMessage{}
			}
			keys[c.user][c.device] = map[string]json.RawMessage{k.KeyID: k.KeyJSON}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]any{"one_time_keys": keys, "failures": failures})
}

// ---- GET /keys/changes ----

func (a *API) handleKeysChanges(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	q := r.URL.Query()
	fromTok := q.Get("from")
	if fromTok == "" {
		return missingParam("Missing from parameter")
	}
	from, err := rooms.ParseStreamToken(fromTok)
	if err != nil {
		return badParam("Invalid from token")
	}
	to := a.rooms.Notifier().Latest()
	if toTok := q.Get("to"); toTok != "" {
		t, err := rooms.ParseStreamToken(toTok)
		if err != nil {
			return badParam("Invalid to token")
		}
		to = min(t, to)
	}
	changed, left := []string{}, []string{}
	if from < to {
		if changed, left, err = a.db.DeviceListUpdates(r.Context(), s.UserID, from, to); err != nil {
			return err
		}
	}
	return writeJSON(w, http.StatusOK, map[string][]string{"changed": changed, "left": left})
}

// ---- cross-signing ----

// crossSigningKeyShape is the checked part of a cross-signing key.
type crossSigningKeyShape struct {
	UserID     string                       `json:"user_id"`
	Usage      []string                     `json:"usage"`
	Keys       map[string]string            `json:"keys"`
	Signatures map[string]map[string]string `json:"signatures"`
}

// crossSigningPub returns the unprefixed public key of a stored
// cross-signing key ("" when it has none).
func crossSigningPub(raw json.RawMessage) string {
	var k crossSigningKeyShape
	if json.Unmarshal(raw, &k) != nil {
		return ""
	}
	for keyID, pub := range k.Keys {
		if strings.HasPrefix(keyID, "ed25519:") {
			return pub
		}
	}
	return ""
}

// parseCrossSigningKey checks an uploaded cross-signing key of usage for
// userID and returns its public key: user_id must match, usage must name
// the role, and keys must hold exactly one ed25519 key whose id is the key.
func parseCrossSigningKey(field string, raw json.RawMessage, usage, userID string) (string, *crossSigningKeyShape, error) {
	if !isJSONObject(raw) {
		return "", nil, mautrix.MBadJSON.WithMessage("%s must be an object", field)
	}
	var k crossSigningKeyShape
	if err := decodeJSONBytes(raw, &k); err != nil {
		return "", nil, err
	}
	if k.UserID != userID {
		return "", nil, badParam("%s.user_id must be %s", field, userID)
	}
	found := false
	for _, u := range k.Usage {
		found = found || u == usage
	}
	if !found {
		return "", nil, badParam("%s.usage must include %q", field, usage)
	}
	if len(k.Keys) != 1 {
		return "", nil, badParam("%s.keys must hold exactly one key", field)
	}
	for keyID, pub := range k.Keys {
		if keyID != "ed25519:"+pub {
			return "", nil, badParam("%s.keys: key id %q does not match its ed25519 key", field, keyID)
		}
		if b, err := decodeUnpaddedBase64(pub); err != nil || len(b) != ed25519.PublicKeySize {
			return "", nil, badParam("%s.keys: %q is not an ed25519 public key", field, pub)
		}
		return pub, &k, nil
	}
	panic("unreachable")
}

func decodeUnpaddedBase64(s string) ([]byte, error) {
	if b, err := base64.RawStdEncoding.DecodeString(s); err == nil {
		return b, nil
	}
	return base64.StdEncoding.DecodeString(s)
}

// verifySignedJSON checks an ed25519 signature (base64) by pub over obj as
// the spec signs JSON: canonical form without signatures and unsigned.
func verifySignedJSON(obj json.RawMessage, pub, sig string) bool {
	var m map[string]json.RawMessage
	if json.Unmarshal(obj, &m) != nil {
		return false
	}
	delete(m, "signatures")
	delete(m, "unsigned")
	b, err := json.Marshal(m)
	if err != nil {
		return false
	}
	msg := json.RawMessage(b)
	if canonicaljson.Canonicalize(&msg) != nil {
		return false
	}
	pubBytes, err := decodeUnpaddedBase64(pub)
	if err != nil || len(pubBytes) != ed25519.PublicKeySize {
		return false
	}
	sigBytes, err := decodeUnpaddedBase64(sig)
	if err != nil {
		return false
	}
	return ed25519.Verify(pubBytes, msg, sigBytes)
}

type deviceSigningUploadRequest struct {
	MasterKey      json.RawMessage `json:"master_key"`
	SelfSigningKey json.RawMessage `json:"self_signing_key"`
	UserSigningKey json.RawMessage `json:"user_signing_key"`
	Auth           json.RawMessage `json:"auth"`
}

func (a *API) handleDeviceSigningUpload(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	ctx := r.Context()
	var req deviceSigningUploadRequest
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	existing, err := a.db.CrossSigningKeys(ctx, s.UserID)
	if err != nil {
		return err
	}
	type upload struct {
		keyType, pub string
		raw          json.RawMessage
		shape        *crossSigningKeyShape
	}
	var uploads []upload
	for _, f := range []struct {
		field, keyType string
		raw            json.RawMessage
	}{
		{"master_key", storage.CrossSigningMaster, req.MasterKey},
		{"self_signing_key", storage.CrossSigningSelfSigning, req.SelfSigningKey},
		{"user_signing_key", storage.CrossSigningUserSigning, req.UserSigningKey},
	} {
		if isAbsent(f.raw) {
			continue
		}
		pub, shape, err := parseCrossSigningKey(f.field, f.raw, f.keyType, s.UserID)
		if err != nil {
			return err
		}
		uploads = append(uploads, upload{f.keyType, pub, f.raw, shape})
	}

	// The self-signing and user-signing keys must be signed by the master
	// key: the one uploaded now, else the stored one.
	masterPub := crossSigningPub(existing[storage.CrossSigningMaster])
	for _, u := range uploads {
		if u.keyType == storage.CrossSigningMaster {
			masterPub = u.pub
		}
	}
	for _, u := range uploads {
		if u.keyType == storage.CrossSigningMaster {
			continue
		}
		if masterPub == "" {
			return missingParam("No master key available")
		}
		sig := u.shape.Signatures[s.UserID]["ed25519:"+masterPub]
		if sig == "" || !verifySignedJSON(u.raw, masterPub, sig) {
			return mautrix.RespError{ErrCode: "M_INVALID_SIGNATURE", StatusCode: http.StatusBadRequest,
				Err: fmt.Sprintf("Invalid signature on %s key: it must be signed by the master key", u.keyType)}
		}
	}

	// Setting up cross-signing for the first time needs no UIA (MSC3967,
	// as Synapse); replacing keys does, unless the upload repeats them.
	var changes []upload
	for _, u := range uploads {
		if old, ok := existing[u.keyType]; !ok || !jsonSame(old, u.raw) {
			changes = append(changes, u)
		}
	}
	if len(changes) == 0 {
		return writeJSON(w, http.StatusOK, empty)
	}
	var uiaSessionID string
	if _, hasMaster := existing[storage.CrossSigningMaster]; hasMaster {
		sess, done, err := a.requireUIA(w, r, uiaRequest{op: "device_signing_upload", userID: s.UserID, flows: [][]string{{stagePassword}}, auth: req.Auth})
		if !done {
			return err // nil when the 401 challenge has been written
		}
		uiaSessionID = sess.id
	}

	err = a.db.Write(ctx, func(tx *storage.Tx) error {
		for _, u := range changes {
			if err := tx.SetCrossSigningKey(ctx, s.UserID, u.keyType, crossSigningPub(existing[u.keyType]), u.pub, u.raw); err != nil {
				return err
			}
		}
		pos, err := tx.MarkDeviceListChanged(ctx, s.UserID)
		if err != nil {
			return err
		}
		a.wakeDeviceListChange(tx, pos, s.UserID)
		return nil
	})
	if err != nil {
		return err
	}
	if uiaSessionID != "" {
		a.accounts.uia.finish(uiaSessionID)
	}
	return writeJSON(w, http.StatusOK, empty)
}

// jsonSame reports whether two JSON texts hold the same value.
func jsonSame(a, b json.RawMessage) bool {
	var va, vb any
	if json.Unmarshal(a, &va) != nil || json.Unmarshal(b, &vb) != nil {
		return false
	}
	ca, _ := canonicaljson.Marshal(va)
	cb, _ := canonicaljson.Marshal(vb)
	return string(ca) == string(cb)
}

// ---- POST /keys/signatures/upload ----

// signatureFailure is one failures entry of /keys/signatures/upload.
type signatureFailure struct {
	ErrCode string `json:"errcode"`
	Error   string `json:"error"`
}

func invalidSignature(format string, args ...any) *signatureFailure {
	return &signatureFailure{ErrCode: "M_INVALID_SIGNATURE", Error: fmt.Sprintf(format, args...)}
}

func (a *API) handleSignaturesUpload(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	ctx := r.Context()
	var req map[string]map[string]json.RawMessage
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	own, err := a.db.CrossSigningKeys(ctx, s.UserID)
	if err != nil {
		return err
	}
	failures := map[string]map[string]*signatureFailure{}
	var accepted []storage.KeySignature
	for targetUser, byKey := range req {
		for keyID, obj := range byKey {
			sigs, failure, err := a.checkSignatureUpload(r, s.UserID, own, targetUser, keyID, obj)
			if err != nil {
				return err
			}
			if failure != nil {
				if failures[targetUser] == nil {
					failures[targetUser] = map[string]*signatureFailure{}
				}
				failures[targetUser][keyID] = failure
				continue
			}
			accepted = append(accepted, sigs...)
		}
	}
	if len(accepted) > 0 {
		err = a.db.Write(ctx, func(tx *storage.Tx) error {
			changedUsers := map[string]bool{}
			for _, sig := range accepted {
				if err := tx.AddKeySignature(ctx, sig); err != nil {
					return err
				}
				changedUsers[sig.TargetUserID] = true
			}
			users := make([]string, 0, len(changedUsers))
			for u := range changedUsers {
				users = append(users, u)
			}
			sort.Strings(users)
			for _, u := range users {
				pos, err := tx.MarkDeviceListChanged(ctx, u)
				if err != nil {
					return err
				}
				a.wakeDeviceListChange(tx, pos, u, s.UserID)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return writeJSON(w, http.StatusOK, map[string]any{"failures": failures})
}

// checkSignatureUpload verifies the signatures the uploader made on one of
// targetUser's keys (keyID: a device id or an unprefixed cross-signing public
// key). Accepted are: the uploader's self-signing key on their own devices,
// their devices (or master key) on their own master key, and their
// user-signing key on another user's master key.
func (a *API) checkSignatureUpload(r *http.Request, uploader string, own map[string]json.RawMessage, targetUser, keyID string, obj json.RawMessage) ([]storage.KeySignature, *signatureFailure, error) {
	ctx := r.Context()
	if !isJSONObject(obj) {
		return nil, &signatureFailure{ErrCode: "M_BAD_JSON", Error: "Signed object must be a JSON object"}, nil
	}
	if !a.isLocalUser(targetUser) {
		return nil, &signatureFailure{ErrCode: "M_NOT_FOUND", Error: "Unknown user (this server does not federate)"}, nil
	}
	var shape struct {
		Signatures map[string]map[string]string `json:"signatures"`
	}
	if err := json.Unmarshal(obj, &shape); err != nil {
		return nil, &signatureFailure{ErrCode: "M_BAD_JSON", Error: "Invalid signatures field"}, nil
	}
	mine := shape.Signatures[uploader]
	if len(mine) == 0 {
		return nil, invalidSignature("No signatures by %s", uploader), nil
	}
	newSig := func(signerKeyID, sig string) storage.KeySignature {
		return storage.KeySignature{SignerUserID: uploader, SignerKeyID: signerKeyID, TargetUserID: targetUser, TargetKeyID: keyID, Signature: sig}
	}

	if targetUser != uploader {
		// Another user's master key, signed with our user-signing key.
		theirs, err := a.db.CrossSigningKeys(ctx, targetUser)
		if err != nil {
			return nil, nil, err
		}
		master, ok := theirs[storage.CrossSigningMaster]
		if !ok || crossSigningPub(master) != keyID {
			return nil, &signatureFailure{ErrCode: "M_NOT_FOUND", Error: "Not the user's master key"}, nil
		}
		usk := crossSigningPub(own[storage.CrossSigningUserSigning])
		sig, ok := mine["ed25519:"+usk]
		if usk == "" || !ok {
			return nil, invalidSignature("Not signed by your user-signing key"), nil
		}
		if !verifySignedJSON(master, usk, sig) {
			return nil, invalidSignature("Invalid signature"), nil
		}
		return []storage.KeySignature{newSig("ed25519:"+usk, sig)}, nil, nil
	}

	// Our own master key, signed by one of our devices.
	if master, ok := own[storage.CrossSigningMaster]; ok && crossSigningPub(master) == keyID {
		devices, err := a.db.DeviceKeysOf(ctx, uploader, nil)
		if err != nil {
			return nil, nil, err
		}
		var out []storage.KeySignature
		for signerKeyID, sig := range mine {
			if signerKeyID == "ed25519:"+keyID {
				continue // the master key's self-signature, already stored with it
			}
			deviceID, isEd := strings.CutPrefix(signerKeyID, "ed25519:")
			pub := ""
			for _, d := range devices {
				if isEd && d.DeviceID == deviceID {
					var dk deviceKeysShape
					if json.Unmarshal(d.KeyJSON, &dk) == nil {
						pub = dk.Keys[signerKeyID]
					}
				}
			}
			if pub == "" {
				return nil, invalidSignature("Unknown signing key %s", signerKeyID), nil
			}
			if !verifySignedJSON(master, pub, sig) {
				return nil, invalidSignature("Invalid signature by %s", signerKeyID), nil
			}
			out = append(out, newSig(signerKeyID, sig))
		}
		if len(out) == 0 {
			return nil, invalidSignature("No device signatures"), nil
		}
		return out, nil, nil
	}

	// One of our devices, signed by our self-signing key.
	devices, err := a.db.DeviceKeysOf(ctx, uploader, []string{keyID})
	if err != nil {
		return nil, nil, err
	}
	if len(devices) == 0 {
		return nil, &signatureFailure{ErrCode: "M_NOT_FOUND", Error: "Unknown device or key"}, nil
	}
	ssk := crossSigningPub(own[storage.CrossSigningSelfSigning])
	sig, ok := mine["ed25519:"+ssk]
	if ssk == "" || !ok {
		return nil, invalidSignature("Not signed by your self-signing key"), nil
	}
	if !verifySignedJSON(devices[0].KeyJSON, ssk, sig) {
		return nil, invalidSignature("Invalid signature"), nil
	}
	return []storage.KeySignature{newSig("ed25519:"+ssk, sig)}, nil, nil
}
