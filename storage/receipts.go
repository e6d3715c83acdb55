package storage

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// Receipt is a user's receipt of one type in a room
// (https://spec.matrix.org/v1.12/client-server-api/#receipts).
// ThreadID is "" for an unthreaded receipt, "main" or a thread root's event ID otherwise.
type Receipt struct {
	RoomID      string
	UserID      string
	ReceiptType string
	ThreadID    string
	EventID     string
	TS          int64
	Pos         StreamPos
}

// SetReceipt stores r under a new stream position unless it would move the
// user's receipt of that type and thread backwards (or nowhere): receipts only
// move forward, judged by the events' stream positions. It reports whether
// it stored anything; onCommit (may be nil) runs after commit with the
// position taken. The receipt's event must exist.
func (db *DB) SetReceipt(ctx context.Context, r Receipt, onCommit func(pos StreamPos)) (bool, error) {
	stored := false
	err := db.Write(ctx, func(tx *Tx) error {
		var newPos StreamPos
		if err := tx.QueryRow(ctx, `SELECT pos FROM events WHERE event_id = $1 AND room_id = $2`, r.EventID, r.RoomID).Scan(&newPos); err != nil {
			return fmt.Errorf("receipt target %s: %w", r.EventID, notFound(err))
		}
		var curPos sql.NullInt64
		err := tx.QueryRow(ctx, `SELECT e.pos FROM receipts r JOIN events e ON e.event_id = r.event_id
			WHERE r.room_id = $1 AND r.user_id = $2 AND r.receipt_type = $3 AND r.thread_id = $4`,
			r.RoomID, r.UserID, r.ReceiptType, r.ThreadID).Scan(&curPos)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("reading current receipt: %w", err)
		}
		if curPos.Valid && StreamPos(curPos.Int64) >= newPos {
			return nil
		}
		pos, err := tx.NextPos(ctx)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO receipts (room_id, user_id, receipt_type, thread_id, event_id, ts, pos) VALUES ($1, $2, $3, $4, $5, $6, $7)
			ON CONFLICT (room_id, user_id, receipt_type, thread_id) DO UPDATE SET event_id = excluded.event_id, ts = excluded.ts, pos = excluded.pos`,
			r.RoomID, r.UserID, r.ReceiptType, r.ThreadID, r.EventID, r.TS, pos); err != nil {
			return fmt.Errorf("storing receipt: %w", err)
		}
		stored = true
		if onCommit != nil {
			tx.OnCommit(func() { onCommit(pos) })
		}
		return nil
	})
	return stored, err
}

const receiptColumns = `room_id, user_id, receipt_type, thread_id, event_id, ts, pos`

func scanReceipts(rows *sql.Rows, err error) ([]Receipt, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Receipt
	for rows.Next() {
		var r Receipt
		if err := rows.Scan(&r.RoomID, &r.UserID, &r.ReceiptType, &r.ThreadID, &r.EventID, &r.TS, &r.Pos); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// ReceiptsSince returns the current receipts of the given rooms that
// changed with from < pos <= to, oldest first (from 0: all current receipts
// of those rooms; to <= 0: no upper bound). Private receipts are included:
// the caller shows them only to their owner.
func (db *DB) ReceiptsSince(ctx context.Context, roomIDs []string, from, to StreamPos) ([]Receipt, error) {
	if len(roomIDs) == 0 {
		return nil, nil
	}
	args := []any{from}
	q := `SELECT ` + receiptColumns + ` FROM receipts WHERE pos > $1`
	if to > 0 {
		args = append(args, to)
		q += ` AND pos <= $2`
	}
	for _, r := range roomIDs {
		args = append(args, r)
	}
	q += ` AND room_id IN (` + placeholders(len(args)-len(roomIDs)+1, len(roomIDs)) + `) ORDER BY pos`
	out, err := scanReceipts(db.Query(ctx, q, args...))
	if err != nil {
		return nil, fmt.Errorf("reading receipts: %w", err)
	}
	return out, nil
}

// LatestReceipt returns the user's main-timeline read position in a room:
// whichever of their m.read and m.read.private receipts (unthreaded or
// thread "main") points at the later event, as the spec's unread counting
// asks. ErrNotFound when the user has none.
func (db *DB) LatestReceipt(ctx context.Context, roomID, userID string) (*Receipt, error) {
	rs, err := scanReceipts(db.Query(ctx, `SELECT `+prefixed("r.", receiptColumns)+` FROM receipts r JOIN events e ON e.event_id = r.event_id
		WHERE r.room_id = $1 AND r.user_id = $2 AND r.receipt_type IN ('m.read', 'm.read.private') AND r.thread_id IN ('', 'main')
		ORDER BY e.pos DESC LIMIT 1`, roomID, userID))
	if err != nil {
		return nil, fmt.Errorf("reading receipts of %s in %s: %w", userID, roomID, err)
	}
	if len(rs) == 0 {
		return nil, ErrNotFound
	}
	return &rs[0], nil
}
