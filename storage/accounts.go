package storage

import (
	"context"
	"database/sql"
	"fmt"
)

// MarkDeviceListChanged records, at a fresh stream position, that userID's
// device list or device keys changed, so /sync reports the user in
// device_lists.changed to everyone sharing a room with them. The caller wakes
// the notifier in tx.OnCommit with the returned position.
func (tx *Tx) MarkDeviceListChanged(ctx context.Context, userID string) (StreamPos, error) {
	pos, err := tx.NextPos(ctx)
	if err != nil {
		return 0, err
	}
	if _, err := tx.Exec(ctx, `INSERT INTO device_list_changes (user_id, pos) VALUES ($1, $2)`, userID, pos); err != nil {
		return 0, fmt.Errorf("recording device list change of %s: %w", userID, err)
	}
	return pos, nil
}

// DeviceExists reports whether the user has a device with this id.
func (tx *Tx) DeviceExists(ctx context.Context, userID, deviceID string) (bool, error) {
	var n int
	err := tx.QueryRow(ctx, `SELECT COUNT(*) FROM devices WHERE user_id = $1 AND device_id = $2`, userID, deviceID).Scan(&n)
	if err != nil {
		return false, fmt.Errorf("looking up device %s: %w", deviceID, err)
	}
	return n > 0, nil
}

// DeleteDeviceTokens revokes every access and refresh token of one device
// but keeps the device (and its keys): a login that reuses a device id.
func (tx *Tx) DeleteDeviceTokens(ctx context.Context, userID, deviceID string) error {
	for _, q := range []string{
		`DELETE FROM access_tokens WHERE user_id = $1 AND device_id = $2`,
		`DELETE FROM refresh_tokens WHERE user_id = $1 AND device_id = $2`,
	} {
		if _, err := tx.Exec(ctx, q, userID, deviceID); err != nil {
			return fmt.Errorf("revoking tokens of device %s: %w", deviceID, err)
		}
	}
	return nil
}

// DeleteUserTokensExcept revokes every access token of a user except the one
// whose hash is keep, and every refresh token except the one keep was issued
// with (a password change that keeps the current session).
func (tx *Tx) DeleteUserTokensExcept(ctx context.Context, userID, keep string) error {
	if _, err := tx.Exec(ctx, `DELETE FROM refresh_tokens WHERE user_id = $1 AND token_hash NOT IN
		(SELECT refresh_token_hash FROM access_tokens WHERE token_hash = $2 AND refresh_token_hash IS NOT NULL)`, userID, keep); err != nil {
		return fmt.Errorf("revoking refresh tokens of %s: %w", userID, err)
	}
	if _, err := tx.Exec(ctx, `DELETE FROM access_tokens WHERE user_id = $1 AND token_hash <> $2`, userID, keep); err != nil {
		return fmt.Errorf("revoking access tokens of %s: %w", userID, err)
	}
	return nil
}

// rowQuerier is what both the read pool and a write transaction offer for
// single-row queries.
type rowQuerier interface {
	QueryRow(ctx context.Context, query string, args ...any) *sql.Row
}

func localpartTaken(ctx context.Context, q rowQuerier, localpart string) (bool, error) {
	var n int
	if err := q.QueryRow(ctx, `SELECT COUNT(*) FROM users WHERE LOWER(localpart) = LOWER($1)`, localpart).Scan(&n); err != nil {
		return false, fmt.Errorf("looking up localpart: %w", err)
	}
	return n > 0, nil
}

// LocalpartTaken reports whether a localpart is registered, ignoring case
// (Synapse refuses "Alice" when "alice" exists).
func (db *DB) LocalpartTaken(ctx context.Context, localpart string) (bool, error) {
	return localpartTaken(ctx, db, localpart)
}

// LocalpartTaken is DB.LocalpartTaken inside the write transaction, where
// the answer holds until commit (writes are serialised).
func (tx *Tx) LocalpartTaken(ctx context.Context, localpart string) (bool, error) {
	return localpartTaken(ctx, tx, localpart)
}
