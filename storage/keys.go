package storage

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sort"
)

// DeviceKeys is a device's uploaded identity keys, kept exactly as the
// client sent them (they are signed JSON), plus the device's display name.
type DeviceKeys struct {
	UserID      string
	DeviceID    string
	KeyJSON     json.RawMessage
	DisplayName *string
}

// SetDeviceKeys stores a device's identity keys and reports whether they
// changed (a re-upload of the same keys is not a device-list change).
func (tx *Tx) SetDeviceKeys(ctx context.Context, userID, deviceID string, keyJSON []byte) (bool, error) {
	var old string
	err := tx.QueryRow(ctx, `SELECT key_json FROM device_keys WHERE user_id = $1 AND device_id = $2`, userID, deviceID).Scan(&old)
	switch {
	case err == nil && jsonEquivalent([]byte(old), keyJSON):
		return false, nil
	case err != nil && !errors.Is(err, sql.ErrNoRows):
		return false, fmt.Errorf("reading device keys of %s/%s: %w", userID, deviceID, err)
	}
	_, err = tx.Exec(ctx, `INSERT INTO device_keys (user_id, device_id, key_json) VALUES ($1, $2, $3)
		ON CONFLICT (user_id, device_id) DO UPDATE SET key_json = excluded.key_json`, userID, deviceID, string(keyJSON))
	if err != nil {
		return false, fmt.Errorf("storing device keys of %s/%s: %w", userID, deviceID, err)
	}
	return true, nil
}

// DeviceKeysOf returns the uploaded keys of a user's devices: all of them
// when deviceIDs is empty, else only those named (unknown ones are skipped).
// Keys of deleted devices are not returned.
func (db *DB) DeviceKeysOf(ctx context.Context, userID string, deviceIDs []string) ([]DeviceKeys, error) {
	q := `SELECT k.user_id, k.device_id, k.key_json, d.display_name FROM device_keys k
		JOIN devices d ON d.user_id = k.user_id AND d.device_id = k.device_id WHERE k.user_id = $1`
	args := []any{userID}
	if len(deviceIDs) > 0 {
		q += ` AND k.device_id IN (` + placeholders(2, len(deviceIDs)) + `)`
		for _, d := range deviceIDs {
			args = append(args, d)
		}
	}
	rows, err := db.Query(ctx, q+` ORDER BY k.device_id`, args...)
	if err != nil {
		return nil, fmt.Errorf("reading device keys of %s: %w", userID, err)
	}
	defer rows.Close()
	var out []DeviceKeys
	for rows.Next() {
		var k DeviceKeys
		var js string
		if err := rows.Scan(&k.UserID, &k.DeviceID, &js, &k.DisplayName); err != nil {
			return nil, fmt.Errorf("reading device keys of %s: %w", userID, err)
		}
		k.KeyJSON = json.RawMessage(js)
		out = append(out, k)
	}
	return out, rows.Err()
}

// OneTimeKey is a one-time or fallback key. KeyID is the full
// "<algorithm>:<key id>" the client uploaded it under.
type OneTimeKey struct {
	KeyID     string
	Algorithm string
	KeyJSON   json.RawMessage
}

// ErrKeyConflict is returned when a key id is uploaded again with different content.
var ErrKeyConflict = errors.New("key id already used with different content")

// AddOneTimeKeys stores one-time keys. Uploading a key id again with the same
// content is a no-op (a retried request); with different content it fails
// with ErrKeyConflict and nothing is stored.
func (tx *Tx) AddOneTimeKeys(ctx context.Context, userID, deviceID string, keys []OneTimeKey) error {
	for _, k := range keys {
		var old string
		err := tx.QueryRow(ctx, `SELECT key_json FROM one_time_keys WHERE user_id = $1 AND device_id = $2 AND key_id = $3`,
			userID, deviceID, k.KeyID).Scan(&old)
		switch {
		case err == nil:
			if !jsonEquivalent([]byte(old), k.KeyJSON) {
				return fmt.Errorf("one-time key %s: %w", k.KeyID, ErrKeyConflict)
			}
			continue
		case !errors.Is(err, sql.ErrNoRows):
			return fmt.Errorf("reading one-time key %s: %w", k.KeyID, err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO one_time_keys (user_id, device_id, key_id, algorithm, key_json, fallback, used)
			VALUES ($1, $2, $3, $4, $5, FALSE, FALSE)`, userID, deviceID, k.KeyID, k.Algorithm, string(k.KeyJSON)); err != nil {
			return fmt.Errorf("storing one-time key %s: %w", k.KeyID, err)
		}
	}
	return nil
}

// SetFallbackKey replaces the device's fallback key for k.Algorithm.
// Re-uploading the current fallback key keeps its "used" flag.
func (tx *Tx) SetFallbackKey(ctx context.Context, userID, deviceID string, k OneTimeKey) error {
	var oldID, oldJSON string
	err := tx.QueryRow(ctx, `SELECT key_id, key_json FROM one_time_keys WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 AND fallback = TRUE`,
		userID, deviceID, k.Algorithm).Scan(&oldID, &oldJSON)
	switch {
	case err == nil && oldID == k.KeyID && jsonEquivalent([]byte(oldJSON), k.KeyJSON):
		return nil
	case err != nil && !errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("reading fallback key: %w", err)
	}
	if _, err := tx.Exec(ctx, `DELETE FROM one_time_keys WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 AND fallback = TRUE`,
		userID, deviceID, k.Algorithm); err != nil {
		return fmt.Errorf("replacing fallback key: %w", err)
	}
	_, err = tx.Exec(ctx, `INSERT INTO one_time_keys (user_id, device_id, key_id, algorithm, key_json, fallback, used)
		VALUES ($1, $2, $3, $4, $5, TRUE, FALSE)`, userID, deviceID, k.KeyID, k.Algorithm, string(k.KeyJSON))
	if errors.Is(err, ErrAlreadyExists) {
		// The id belongs to an unclaimed one-time key.
		return fmt.Errorf("fallback key %s: %w", k.KeyID, ErrKeyConflict)
	} else if err != nil {
		return fmt.Errorf("storing fallback key %s: %w", k.KeyID, err)
	}
	return nil
}

// ClaimOneTimeKey hands out one key of algorithm for the device: an unclaimed
// one-time key, which is deleted so nobody else gets it, or else the fallback
// key, which stays but is marked used. ErrNotFound when there is neither.
// Call it inside the write transaction: writes are serialised, so each
// one-time key is claimed exactly once.
func (tx *Tx) ClaimOneTimeKey(ctx context.Context, userID, deviceID, algorithm string) (*OneTimeKey, error) {
	k := OneTimeKey{Algorithm: algorithm}
	var js string
	err := tx.QueryRow(ctx, `SELECT key_id, key_json FROM one_time_keys WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 AND fallback = FALSE
		ORDER BY key_id LIMIT 1`, userID, deviceID, algorithm).Scan(&k.KeyID, &js)
	if err == nil {
		if _, err := tx.Exec(ctx, `DELETE FROM one_time_keys WHERE user_id = $1 AND device_id = $2 AND key_id = $3`, userID, deviceID, k.KeyID); err != nil {
			return nil, fmt.Errorf("claiming one-time key %s: %w", k.KeyID, err)
		}
		k.KeyJSON = json.RawMessage(js)
		return &k, nil
	} else if !errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("claiming one-time key: %w", err)
	}
	err = tx.QueryRow(ctx, `SELECT key_id, key_json FROM one_time_keys WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 AND fallback = TRUE`,
		userID, deviceID, algorithm).Scan(&k.KeyID, &js)
	if err != nil {
		return nil, notFound(err)
	}
	if _, err := tx.Exec(ctx, `UPDATE one_time_keys SET used = TRUE WHERE user_id = $1 AND device_id = $2 AND key_id = $3`, userID, deviceID, k.KeyID); err != nil {
		return nil, fmt.Errorf("marking fallback key used: %w", err)
	}
	k.KeyJSON = json.RawMessage(js)
	return &k, nil
}

// OneTimeKeyCounts returns, per algorithm, how many unclaimed one-time keys
// (not fallback keys) the device has on the server. signed_curve25519 is
// always present, 0 when none are left, as Synapse does: clients read its
// absence as "unknown" rather than "upload more".
func (db *DB) OneTimeKeyCounts(ctx context.Context, userID, deviceID string) (map[string]int, error) {
	rows, err := db.Query(ctx, `SELECT algorithm, COUNT(*) FROM one_time_keys WHERE user_id = $1 AND device_id = $2 AND fallback = FALSE GROUP BY algorithm`,
		userID, deviceID)
	if err != nil {
		return nil, fmt.Errorf("counting one-time keys: %w", err)
	}
	defer rows.Close()
	counts := map[string]int{"signed_curve25519": 0}
	for rows.Next() {
		var alg string
		var n int
		if err := rows.Scan(&alg, &n); err != nil {
			return nil, fmt.Errorf("counting one-time keys: %w", err)
		}
		counts[alg] = n
	}
	return counts, rows.Err()
}

// UnusedFallbackKeyTypes lists the algorithms for which the device has a
// fallback key that nobody has claimed yet.
func (db *DB) UnusedFallbackKeyTypes(ctx context.Context, userID, deviceID string) ([]string, error) {
	algs, err := queryStrings(db.Query(ctx, `SELECT algorithm FROM one_time_keys WHERE user_id = $1 AND device_id = $2 AND fallback = TRUE AND used = FALSE ORDER BY algorithm`,
		userID, deviceID))
	if err != nil {
		return nil, fmt.Errorf("listing fallback keys: %w", err)
	}
	if algs == nil {
		algs = []string{} // the spec field is a list, not null
	}
	return algs, nil
}

// Cross-signing key types (spec: "Cross-signing").
const (
	CrossSigningMaster      = "master"
	CrossSigningSelfSigning = "self_signing"
	CrossSigningUserSigning = "user_signing"
)

// SetCrossSigningKey stores one of a user's cross-signing keys. When it
// replaces a different key, the signatures made by the old key and on it are
// dropped: they vouch for a key that no longer exists. oldKeyID and newKeyID
// are the unprefixed public keys (the ids signatures refer to).
func (tx *Tx) SetCrossSigningKey(ctx context.Context, userID, keyType, oldKeyID, newKeyID string, keyJSON []byte) error {
	if oldKeyID != "" && oldKeyID != newKeyID {
		if _, err := tx.Exec(ctx, `DELETE FROM key_signatures WHERE (signer_user_id = $1 AND signer_key_id = $2) OR (target_user_id = $1 AND target_key_id = $3)`,
			userID, "ed25519:"+oldKeyID, oldKeyID); err != nil {
			return fmt.Errorf("dropping signatures of replaced %s key: %w", keyType, err)
		}
	}
	_, err := tx.Exec(ctx, `INSERT INTO cross_signing_keys (user_id, key_type, key_json) VALUES ($1, $2, $3)
		ON CONFLICT (user_id, key_type) DO UPDATE SET key_json = excluded.key_json`, userID, keyType, string(keyJSON))
	if err != nil {
		return fmt.Errorf("storing %s key of %s: %w", keyType, userID, err)
	}
	return nil
}

// CrossSigningKeys returns a user's cross-signing keys by type (master,
// self_signing, user_signing); missing types are absent.
func (db *DB) CrossSigningKeys(ctx context.Context, userID string) (map[string]json.RawMessage, error) {
	rows, err := db.Query(ctx, `SELECT key_type, key_json FROM cross_signing_keys WHERE user_id = $1`, userID)
	if err != nil {
		return nil, fmt.Errorf("reading cross-signing keys of %s: %w", userID, err)
	}
	defer rows.Close()
	out := make(map[string]json.RawMessage)
	for rows.Next() {
		var t, js string
		if err := rows.Scan(&t, &js); err != nil {
			return nil, fmt.Errorf("reading cross-signing keys of %s: %w", userID, err)
		}
		out[t] = json.RawMessage(js)
	}
	return out, rows.Err()
}

// KeySignature is a signature one user's key made over a device key or
// cross-signing key, uploaded separately from the key it signs.
// TargetKeyID is a device id or an unprefixed cross-signing public key;
// SignerKeyID is prefixed ("ed25519:...").
type KeySignature struct {
	SignerUserID string
	SignerKeyID  string
	TargetUserID string
	TargetKeyID  string
	Signature    string
}

// AddKeySignature stores (or replaces) a signature.
func (tx *Tx) AddKeySignature(ctx context.Context, s KeySignature) error {
	_, err := tx.Exec(ctx, `INSERT INTO key_signatures (signer_user_id, signer_key_id, target_user_id, target_key_id, signature) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (signer_user_id, signer_key_id, target_user_id, target_key_id) DO UPDATE SET signature = excluded.signature`,
		s.SignerUserID, s.SignerKeyID, s.TargetUserID, s.TargetKeyID, s.Signature)
	if err != nil {
		return fmt.Errorf("storing signature on %s/%s: %w", s.TargetUserID, s.TargetKeyID, err)
	}
	return nil
}

// KeySignaturesOn returns the uploaded signatures on targetUserID's keys
// made by any of signers.
func (db *DB) KeySignaturesOn(ctx context.Context, targetUserID string, signers []string) ([]KeySignature, error) {
	if len(signers) == 0 {
		return nil, nil
	}
	args := []any{targetUserID}
	for _, s := range signers {
		args = append(args, s)
	}
	rows, err := db.Query(ctx, `SELECT signer_user_id, signer_key_id, target_user_id, target_key_id, signature FROM key_signatures
		WHERE target_user_id = $1 AND signer_user_id IN (`+placeholders(2, len(signers))+`) ORDER BY signer_user_id, signer_key_id`, args...)
	if err != nil {
		return nil, fmt.Errorf("reading signatures on keys of %s: %w", targetUserID, err)
	}
	defer rows.Close()
	var out []KeySignature
	for rows.Next() {
		var s KeySignature
		if err := rows.Scan(&s.SignerUserID, &s.SignerKeyID, &s.TargetUserID, &s.TargetKeyID, &s.Signature); err != nil {
			return nil, fmt.Errorf("reading signatures on keys of %s: %w", targetUserID, err)
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

// DeviceListChangesSince returns the distinct users whose devices or keys
// changed at a position p with from < p <= to.
func (db *DB) DeviceListChangesSince(ctx context.Context, from, to StreamPos) ([]string, error) {
	users, err := queryStrings(db.Query(ctx, `SELECT DISTINCT user_id FROM device_list_changes WHERE pos > $1 AND pos <= $2 ORDER BY user_id`, from, to))
	if err != nil {
		return nil, fmt.Errorf("reading device list changes: %w", err)
	}
	return users, nil
}

// DeviceListUpdates computes the device_lists of /keys/changes (and /sync)
// for userID between from and to (from < pos <= to):
//
//   - changed: users sharing a joined room with userID (and userID itself)
//     whose devices or keys changed, plus users who started sharing a room
//     with userID (their keys must now be tracked);
//   - left: users with whom userID no longer shares any room after a
//     membership change in the range (their keys need no longer be tracked).
func (db *DB) DeviceListUpdates(ctx context.Context, userID string, from, to StreamPos) (changed, left []string, err error) {
	shared, err := queryStrings(db.Query(ctx, `SELECT DISTINCT b.user_id FROM memberships a JOIN memberships b ON a.room_id = b.room_id
		WHERE a.user_id = $1 AND a.membership = 'join' AND b.membership = 'join'`, userID))
	if err != nil {
		return nil, nil, fmt.Errorf("listing users sharing rooms with %s: %w", userID, err)
	}
	sharing := map[string]bool{userID: true}
	for _, u := range shared {
		sharing[u] = true
	}
	changedSet := make(map[string]bool)
	add := func(set map[string]bool, users []string, filter func(string) bool) {
		for _, u := range users {
			if filter(u) {
				set[u] = true
			}
		}
	}
	isSharing := func(u string) bool { return sharing[u] }

	keyChanges, err := db.DeviceListChangesSince(ctx, from, to)
	if err != nil {
		return nil, nil, err
	}
	add(changedSet, keyChanges, isSharing)

	// Joins in the range in rooms userID is joined to: the joiner is new to
	// track; when the joiner is userID, so is everyone in that room.
	joiners, err := queryStrings(db.Query(ctx, `SELECT DISTINCT e.state_key FROM events e JOIN memberships a ON a.room_id = e.room_id
		WHERE a.user_id = $1 AND a.membership = 'join' AND e.type = 'm.room.member' AND e.membership = 'join' AND e.pos > $2 AND e.pos <= $3`,
		userID, from, to))
	if err != nil {
		return nil, nil, fmt.Errorf("listing new room members: %w", err)
	}
	add(changedSet, joiners, isSharing)
	roommates, err := queryStrings(db.Query(ctx, `SELECT DISTINCT b.user_id FROM events e JOIN memberships b ON b.room_id = e.room_id
		WHERE e.type = 'm.room.member' AND e.state_key = $1 AND e.membership = 'join' AND e.pos > $2 AND e.pos <= $3 AND b.membership = 'join'`,
		userID, from, to))
	if err != nil {
		return nil, nil, fmt.Errorf("listing members of newly joined rooms: %w", err)
	}
	add(changedSet, roommates, isSharing)

	// Leaves in the range: others leaving rooms userID is or was in, and
	// everyone in the rooms userID left; kept only when no room is shared now.
	leftSet := make(map[string]bool)
	notSharing := func(u string) bool { return !sharing[u] }
	leavers, err := queryStrings(db.Query(ctx, `SELECT DISTINCT e.state_key FROM events e JOIN memberships a ON a.room_id = e.room_id
		WHERE a.user_id = $1 AND e.type = 'm.room.member' AND e.membership IN ('leave', 'ban') AND e.pos > $2 AND e.pos <= $3`,
		userID, from, to))
	if err != nil {
		return nil, nil, fmt.Errorf("listing departed room members: %w", err)
	}
	add(leftSet, leavers, notSharing)
	formerRoommates, err := queryStrings(db.Query(ctx, `SELECT DISTINCT b.user_id FROM events e JOIN memberships b ON b.room_id = e.room_id
		WHERE e.type = 'm.room.member' AND e.state_key = $1 AND e.membership IN ('leave', 'ban') AND e.pos > $2 AND e.pos <= $3 AND b.membership = 'join'`,
		userID, from, to))
	if err != nil {
		return nil, nil, fmt.Errorf("listing members of left rooms: %w", err)
	}
	add(leftSet, formerRoommates, notSharing)

	return sortedUserIDs(changedSet), sortedUserIDs(leftSet), nil
}

func sortedUserIDs(set map[string]bool) []string {
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// jsonEquivalent reports whether two JSON texts hold the same value, so a
// retried upload that a client serialised differently is not a conflict.
func jsonEquivalent(a, b []byte) bool {
	if bytes.Equal(a, b) {
		return true
	}
	var va, vb any
	da := json.NewDecoder(bytes.NewReader(a))
	da.UseNumber()
	db := json.NewDecoder(bytes.NewReader(b))
	db.UseNumber()
	if da.Decode(&va) != nil || db.Decode(&vb) != nil {
		return false
	}
	return reflect.DeepEqual(va, vb)
}
