package storage

import (
	"context"
	"encoding/json"
	"fmt"
)

// AccountData is one entry of a user's account data
// (https://spec.matrix.org/v1.12/client-server-api/#client-config).
// RoomID is "" for global account data.
type AccountData struct {
	UserID  string
	RoomID  string
	Type    string
	Content json.RawMessage
	Pos     StreamPos
}

// AccountDataSince returns the user's account data (global and per room)
// that changed with from < pos <= to, oldest first. With from 0 it is the
// whole current account data. to <= 0 means no upper bound.
func (db *DB) AccountDataSince(ctx context.Context, userID string, from, to StreamPos) ([]AccountData, error) {
	q := `SELECT user_id, room_id, type, content, pos FROM account_data WHERE user_id = $1 AND pos > $2`
	args := []any{userID, from}
	if to > 0 {
		q += ` AND pos <= $3`
		args = append(args, to)
	}
	rows, err := db.Query(ctx, q+` ORDER BY pos`, args...)
	if err != nil {
		return nil, fmt.Errorf("reading account data of %s: %w", userID, err)
	}
	defer rows.Close()
	var out []AccountData
	for rows.Next() {
		var ad AccountData
		var content string
		if err := rows.Scan(&ad.UserID, &ad.RoomID, &ad.Type, &content, &ad.Pos); err != nil {
			return nil, fmt.Errorf("reading account data of %s: %w", userID, err)
		}
		ad.Content = json.RawMessage(content)
		out = append(out, ad)
	}
	return out, rows.Err()
}

// AccountData returns the content of one account data entry (roomID ""
// for global); ErrNotFound when the user never set it.
func (db *DB) AccountData(ctx context.Context, userID, roomID, dataType string) (json.RawMessage, error) {
	var content string
	err := db.QueryRow(ctx, `SELECT content FROM account_data WHERE user_id = $1 AND room_id = $2 AND type = $3`,
		userID, roomID, dataType).Scan(&content)
	if err != nil {
		return nil, notFound(err)
	}
	return json.RawMessage(content), nil
}

// SetAccountData stores one account data entry under a new stream position.
// onCommit (may be nil) runs after commit with that position; callers use it
// to wake /sync.
func (db *DB) SetAccountData(ctx context.Context, userID, roomID, dataType string, content json.RawMessage, onCommit func(pos StreamPos)) error {
	return db.Write(ctx, func(tx *Tx) error {
		pos, err := tx.SetAccountData(ctx, userID, roomID, dataType, content)
		if err != nil {
			return err
		}
		if onCommit != nil {
			tx.OnCommit(func() { onCommit(pos) })
		}
		return nil
	})
}

// SetAccountData is SetAccountData inside a write transaction; it returns
// the stream position the change took.
func (tx *Tx) SetAccountData(ctx context.Context, userID, roomID, dataType string, content json.RawMessage) (StreamPos, error) {
	pos, err := tx.NextPos(ctx)
	if err != nil {
		return 0, err
	}
	_, err = tx.Exec(ctx, `INSERT INTO account_data (user_id, room_id, type, content, pos) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (user_id, room_id, type) DO UPDATE SET content = excluded.content, pos = excluded.pos`,
		userID, roomID, dataType, string(content), pos)
	if err != nil {
		return 0, fmt.Errorf("storing account data %s of %s: %w", dataType, userID, err)
	}
	return pos, nil
}

// AccountData is AccountData inside a write transaction.
func (tx *Tx) AccountData(ctx context.Context, userID, roomID, dataType string) (json.RawMessage, error) {
	var content string
	err := tx.QueryRow(ctx, `SELECT content FROM account_data WHERE user_id = $1 AND room_id = $2 AND type = $3`,
		userID, roomID, dataType).Scan(&content)
	if err != nil {
		return nil, notFound(err)
	}
	return json.RawMessage(content), nil
}
