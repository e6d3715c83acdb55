package storage

import (
	"context"
	"fmt"
	"time"
)

// Presence is a user's presence (https://spec.matrix.org/v1.12/client-server-api/#presence).
type Presence struct {
	UserID          string
	Presence        string // online, unavailable or offline
	StatusMsg       *string
	LastActiveTS    int64
	CurrentlyActive bool
	Pos             StreamPos
}

// currentlyActiveWindow is how recently an online user must have been active
// to count as currently_active (Synapse uses the same order of magnitude).
const currentlyActiveWindow = 5 * time.Minute

func scanPresence(s scanner) (*Presence, error) {
	var p Presence
	if err := s.Scan(&p.UserID, &p.Presence, &p.StatusMsg, &p.LastActiveTS, &p.Pos); err != nil {
		return nil, err
	}
	p.CurrentlyActive = p.Presence == "online" && time.Since(time.UnixMilli(p.LastActiveTS)) < currentlyActiveWindow
	return &p, nil
}

// PresenceOf returns a user's stored presence; ErrNotFound if never set.
func (db *DB) PresenceOf(ctx context.Context, userID string) (*Presence, error) {
	p, err := scanPresence(db.QueryRow(ctx, `SELECT user_id, presence, status_msg, last_active_ts, pos FROM presence WHERE user_id = $1`, userID))
	if err != nil {
		return nil, notFound(err)
	}
	return p, nil
}

// PresenceSince returns the presence of the given users that changed with
// from < pos <= to, oldest first (from 0: every stored presence of them;
// to <= 0: no upper bound).
func (db *DB) PresenceSince(ctx context.Context, userIDs []string, from, to StreamPos) ([]Presence, error) {
	if len(userIDs) == 0 {
		return nil, nil
	}
	args := []any{from}
	q := `SELECT user_id, presence, status_msg, last_active_ts, pos FROM presence WHERE pos > $1`
	if to > 0 {
		args = append(args, to)
		q += ` AND pos <= $2`
	}
	for _, u := range userIDs {
		args = append(args, u)
	}
	q += ` AND user_id IN (` + placeholders(len(args)-len(userIDs)+1, len(userIDs)) + `) ORDER BY pos`
	rows, err := db.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("reading presence: %w", err)
	}
	defer rows.Close()
	var out []Presence
	for rows.Next() {
		p, err := scanPresence(rows)
		if err != nil {
			return nil, fmt.Errorf("reading presence: %w", err)
		}
		out = append(out, *p)
	}
	return out, rows.Err()
}

// SetPresence stores a user's presence under a new stream position.
// onCommit (may be nil) runs after commit with that position.
func (db *DB) SetPresence(ctx context.Context, userID, presence string, statusMsg *string, lastActiveTS int64, onCommit func(pos StreamPos)) error {
	return db.Write(ctx, func(tx *Tx) error {
		pos, err := tx.NextPos(ctx)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO presence (user_id, presence, status_msg, last_active_ts, pos) VALUES ($1, $2, $3, $4, $5)
			ON CONFLICT (user_id) DO UPDATE SET presence = excluded.presence, status_msg = excluded.status_msg,
			last_active_ts = excluded.last_active_ts, pos = excluded.pos`,
			userID, presence, statusMsg, lastActiveTS, pos); err != nil {
			return fmt.Errorf("storing presence of %s: %w", userID, err)
		}
		if onCommit != nil {
			tx.OnCommit(func() { onCommit(pos) })
		}
		return nil
	})
}
