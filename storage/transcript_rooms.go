package storage

import (
	"context"
)

// LoopBreakerRow is a room's own loop-breaker budget (table room_loop_breakers).
type LoopBreakerRow struct {
	RoomID         string
	Enabled        bool
	MaxConsecutive int
	MaxPerMinute   int
	UpdatedTS      int64
}

// LoopBreakerSettings loads a room's loop-breaker row; ErrNotFound when the
// room has none (it then follows the server's defaults).
func (db *DB) LoopBreakerSettings(ctx context.Context, roomID string) (*LoopBreakerRow, error) {
	var r LoopBreakerRow
	err := db.QueryRow(ctx, `SELECT room_id, enabled, max_consecutive, max_per_minute, updated_ts FROM room_loop_breakers WHERE room_id = $1`, roomID).
		Scan(&r.RoomID, &r.Enabled, &r.MaxConsecutive, &r.MaxPerMinute, &r.UpdatedTS)
	if err != nil {
		return nil, notFound(err)
	}
	return &r, nil
}

// SetLoopBreakerSettings stores a room's loop-breaker row (insert or replace).
func (db *DB) SetLoopBreakerSettings(ctx context.Context, r LoopBreakerRow) error {
	if r.UpdatedTS == 0 {
		r.UpdatedTS = nowMillis()
	}
	return db.Write(ctx, func(tx *Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO room_loop_breakers (room_id, enabled, max_consecutive, max_per_minute, updated_ts) VALUES ($1, $2, $3, $4, $5)
			ON CONFLICT (room_id) DO UPDATE SET enabled = excluded.enabled, max_consecutive = excluded.max_consecutive,
			max_per_minute = excluded.max_per_minute, updated_ts = excluded.updated_ts`,
			r.RoomID, r.Enabled, r.MaxConsecutive, r.MaxPerMinute, r.UpdatedTS)
		return err
	})
}

// TranscriptPageSize is how many events EachRoomEvent reads per query.
const TranscriptPageSize = 500

// EachRoomEvent calls fn for every event of a room in stream order, reading
// the events table in pages of TranscriptPageSize rows, so a room of any
// size is streamed with bounded memory. It stops at the first error fn
// returns (errStop-style sentinels are passed through unchanged).
func (db *DB) EachRoomEvent(ctx context.Context, roomID string, fn func(*Event) error) error {
	var after StreamPos = -1
	for {
		evs, err := scanEvents(db.Query(ctx, `SELECT `+eventColumns+` FROM events WHERE room_id = $1 AND pos > $2 ORDER BY pos LIMIT $3`,
			roomID, after, TranscriptPageSize))
		if err != nil {
			return err
		}
		for _, e := range evs {
			if err := fn(e); err != nil {
				return err
			}
			after = e.Pos
		}
		if len(evs) < TranscriptPageSize {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}
