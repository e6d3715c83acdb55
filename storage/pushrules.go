package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
)

// PushRules returns a user's stored push rule document (their own rules and
// changes to the server-default ones, in clientapi's format); ErrNotFound
// when the user never changed a rule.
func (db *DB) PushRules(ctx context.Context, userID string) (json.RawMessage, error) {
	var rules string
	if err := db.QueryRow(ctx, `SELECT rules FROM push_rules WHERE user_id = $1`, userID).Scan(&rules); err != nil {
		return nil, notFound(err)
	}
	return json.RawMessage(rules), nil
}

// UpdatePushRules changes a user's push rules atomically: update gets the
// stored document (nil if none) and returns the new document plus the full
// rule set, which is stored as the user's m.push_rules global account data
// so /sync delivers it. onCommit (may be nil) runs after commit with the
// account data's stream position. An error from update aborts the change.
func (db *DB) UpdatePushRules(ctx context.Context, userID string,
	update func(current json.RawMessage) (rules, accountData json.RawMessage, err error), onCommit func(pos StreamPos)) error {
	return db.Write(ctx, func(tx *Tx) error {
		var current json.RawMessage
		var stored string
		err := tx.QueryRow(ctx, `SELECT rules FROM push_rules WHERE user_id = $1`, userID).Scan(&stored)
		switch {
		case err == nil:
			current = json.RawMessage(stored)
		case errors.Is(notFound(err), ErrNotFound):
		default:
			return fmt.Errorf("reading push rules of %s: %w", userID, err)
		}
		rules, accountData, err := update(current)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO push_rules (user_id, rules) VALUES ($1, $2)
			ON CONFLICT (user_id) DO UPDATE SET rules = excluded.rules`, userID, string(rules)); err != nil {
			return fmt.Errorf("storing push rules of %s: %w", userID, err)
		}
		pos, err := tx.SetAccountData(ctx, userID, "", "m.push_rules", accountData)
		if err != nil {
			return err
		}
		if onCommit != nil {
			tx.OnCommit(func() { onCommit(pos) })
		}
		return nil
	})
}
