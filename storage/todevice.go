package storage

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
)

// ToDeviceMessage is one send-to-device message waiting in a device's inbox
// (spec: "Send-to-Device messaging").
type ToDeviceMessage struct {
	Pos     StreamPos
	Sender  string
	Type    string
	Content json.RawMessage
}

// ClaimToDeviceTxn records that the sending device used txnID; it reports
// false when the transaction was already seen (the request is a retry and
// must not deliver its messages again).
func (tx *Tx) ClaimToDeviceTxn(ctx context.Context, userID, deviceID, txnID string) (bool, error) {
	res, err := tx.Exec(ctx, `INSERT INTO to_device_txns (user_id, device_id, txn_id, created_ts) VALUES ($1, $2, $3, $4)
		ON CONFLICT (user_id, device_id, txn_id) DO NOTHING`, userID, deviceID, txnID, nowMillis())
	if err != nil {
		return false, fmt.Errorf("recording to-device txn %s: %w", txnID, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("recording to-device txn %s: %w", txnID, err)
	}
	return n == 1, nil
}

// InsertToDevice queues one message for a device at stream position pos.
func (tx *Tx) InsertToDevice(ctx context.Context, pos StreamPos, userID, deviceID string, m ToDeviceMessage) error {
	_, err := tx.Exec(ctx, `INSERT INTO to_device (pos, user_id, device_id, sender, type, content) VALUES ($1, $2, $3, $4, $5, $6)`,
		pos, userID, deviceID, m.Sender, m.Type, string(m.Content))
	if err != nil {
		return fmt.Errorf("queueing to-device message for %s/%s: %w", userID, deviceID, err)
	}
	return nil
}

// DeviceIDsOfUser lists a user's device ids, optionally only the given ones
// (unknown ids are dropped).
func (tx *Tx) DeviceIDsOfUser(ctx context.Context, userID string, only []string) ([]string, error) {
	q := `SELECT device_id FROM devices WHERE user_id = $1`
	args := []any{userID}
	if only != nil {
		if len(only) == 0 {
			return nil, nil
		}
		q += ` AND device_id IN (` + placeholders(2, len(only)) + `)`
		for _, d := range only {
			args = append(args, d)
		}
	}
	ids, err := queryStrings(tx.Query(ctx, q+` ORDER BY device_id`, args...))
	if err != nil {
		return nil, fmt.Errorf("listing devices of %s: %w", userID, err)
	}
	return ids, nil
}

// ToDeviceSince returns the device's messages with from < pos <= to, oldest
// first, at most limit of them.
func (db *DB) ToDeviceSince(ctx context.Context, userID, deviceID string, from, to StreamPos, limit int) ([]ToDeviceMessage, error) {
	rows, err := db.Query(ctx, `SELECT pos, sender, type, content FROM to_device
		WHERE user_id = $1 AND device_id = $2 AND pos > $3 AND pos <= $4 ORDER BY pos LIMIT $5`,
		userID, deviceID, from, to, limit)
	if err != nil {
		return nil, fmt.Errorf("reading to-device messages: %w", err)
	}
	defer rows.Close()
	var out []ToDeviceMessage
	for rows.Next() {
		var m ToDeviceMessage
		var content string
		if err := rows.Scan(&m.Pos, &m.Sender, &m.Type, &content); err != nil {
			return nil, fmt.Errorf("reading to-device messages: %w", err)
		}
		m.Content = json.RawMessage(content)
		out = append(out, m)
	}
	return out, rows.Err()
}

// DeleteToDeviceUpTo drops the device's messages at or before pos: the
// client acknowledged them by syncing with a later since token.
func (db *DB) DeleteToDeviceUpTo(ctx context.Context, userID, deviceID string, pos StreamPos) error {
	// Every sync calls this; skip the (serialised) write when there is
	// nothing to delete, which is the common case.
	var one int
	err := db.QueryRow(ctx, `SELECT 1 FROM to_device WHERE user_id = $1 AND device_id = $2 AND pos <= $3 LIMIT 1`, userID, deviceID, pos).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	} else if err != nil {
		return fmt.Errorf("checking delivered to-device messages: %w", err)
	}
	return db.Write(ctx, func(tx *Tx) error {
		_, err := tx.Exec(ctx, `DELETE FROM to_device WHERE user_id = $1 AND device_id = $2 AND pos <= $3`, userID, deviceID, pos)
		if err != nil {
			return fmt.Errorf("deleting delivered to-device messages: %w", err)
		}
		return nil
	})
}
