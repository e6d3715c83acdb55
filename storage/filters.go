package storage

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
)

// InsertFilter stores a user's /sync filter and returns its new ID, a
// decimal string unique per user (https://spec.matrix.org/v1.12/client-server-api/#filtering).
// Filters are immutable once stored; they take no stream position.
func (db *DB) InsertFilter(ctx context.Context, userID string, filter json.RawMessage) (string, error) {
	var id int64
	err := db.Write(ctx, func(tx *Tx) error {
		// IDs start at 1: some clients test a filter ID for truthiness.
		if err := tx.QueryRow(ctx, `SELECT COALESCE(MAX(filter_id), 0) + 1 FROM filters WHERE user_id = $1`, userID).Scan(&id); err != nil {
			return fmt.Errorf("allocating filter id: %w", err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO filters (user_id, filter_id, filter) VALUES ($1, $2, $3)`, userID, id, string(filter)); err != nil {
			return fmt.Errorf("storing filter: %w", err)
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	return strconv.FormatInt(id, 10), nil
}

// FilterByID returns a stored filter of the user; ErrNotFound for an unknown
// or malformed ID.
func (db *DB) FilterByID(ctx context.Context, userID, filterID string) (json.RawMessage, error) {
	id, err := strconv.ParseInt(filterID, 10, 64)
	if err != nil || strconv.FormatInt(id, 10) != filterID {
		return nil, ErrNotFound
	}
	var filter string
	if err := db.QueryRow(ctx, `SELECT filter FROM filters WHERE user_id = $1 AND filter_id = $2`, userID, id).Scan(&filter); err != nil {
		return nil, notFound(err)
	}
	return json.RawMessage(filter), nil
}
