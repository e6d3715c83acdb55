package storage

import "context"

// CurrentStateEvent returns one current state event of a room; ErrNotFound
// when the room has no such state.
func (db *DB) CurrentStateEvent(ctx context.Context, roomID, eventType, stateKey string) (*Event, error) {
	e, err := scanEvent(db.QueryRow(ctx, `SELECT `+prefixed("e.", eventColumns)+` FROM room_state s JOIN events e ON e.event_id = s.event_id
		WHERE s.room_id = $1 AND s.type = $2 AND s.state_key = $3`, roomID, eventType, stateKey))
	return e, notFound(err)
}

// CurrentStateOfType returns a room's current state events of one type
// (e.g. every current m.room.member), in stream order.
func (db *DB) CurrentStateOfType(ctx context.Context, roomID, eventType string) ([]*Event, error) {
	return scanEvents(db.Query(ctx, `SELECT `+prefixed("e.", eventColumns)+` FROM room_state s JOIN events e ON e.event_id = s.event_id
		WHERE s.room_id = $1 AND s.type = $2 ORDER BY e.pos`, roomID, eventType))
}

// StateEventAt returns the state event (type, stateKey) of a room as it was
// after the event at pos (inclusive); ErrNotFound when it was unset then.
func (db *DB) StateEventAt(ctx context.Context, roomID, eventType, stateKey string, pos StreamPos) (*Event, error) {
	e, err := scanEvent(db.QueryRow(ctx, `SELECT `+eventColumns+` FROM events
		WHERE room_id = $1 AND type = $2 AND state_key = $3 AND pos <= $4 ORDER BY pos DESC LIMIT 1`, roomID, eventType, stateKey, pos))
	return e, notFound(err)
}

// StateOfTypeAt returns a room's state events of one type as they were after
// the event at pos (inclusive), in stream order.
func (db *DB) StateOfTypeAt(ctx context.Context, roomID, eventType string, pos StreamPos) ([]*Event, error) {
	return scanEvents(db.Query(ctx, `SELECT `+prefixed("e.", eventColumns)+` FROM events e JOIN (
			SELECT state_key, MAX(pos) AS pos FROM events WHERE room_id = $1 AND type = $2 AND state_key IS NOT NULL AND pos <= $3 GROUP BY state_key
		) latest ON e.pos = latest.pos ORDER BY e.pos`, roomID, eventType, pos))
}

// EventsByPos loads the events at the given positions (missing ones are
// skipped), in stream order.
func (db *DB) EventsByPos(ctx context.Context, positions []StreamPos) ([]*Event, error) {
	if len(positions) == 0 {
		return nil, nil
	}
	args := make([]any, len(positions))
	for i, p := range positions {
		args[i] = p
	}
	return scanEvents(db.Query(ctx, `SELECT `+eventColumns+` FROM events WHERE pos IN (`+placeholders(1, len(args))+`) ORDER BY pos`, args...))
}

// EverJoined reports whether a user has ever had a join membership in a room.
func (db *DB) EverJoined(ctx context.Context, roomID, userID string) (bool, error) {
	var n int
	err := db.QueryRow(ctx, `SELECT COUNT(*) FROM events WHERE room_id = $1 AND type = 'm.room.member' AND state_key = $2 AND membership = 'join'`,
		roomID, userID).Scan(&n)
	return n > 0, err
}
