package storage

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
)

// Event is one stored room event.
type Event struct {
	Pos        StreamPos
	EventID    string
	RoomID     string
	Type       string
	StateKey   *string
	Sender     string
	OriginTS   int64
	Depth      int64
	Membership *string // content.membership of m.room.member events
	RelType    *string // content.m.relates_to.rel_type
	RelatesTo  *string // content.m.relates_to.event_id
	Body       *string // content.body, for search
	PDUJSON    []byte  // the full federation-format event (redacted in place when redacted)
	Unsigned   []byte  // server-computed unsigned fields (prev_content, replaces_state, redacted_because)
	RedactedBy *string
	TxnID      *string // client txnId; only echoed to the sending device
	TxnDevice  *string

	// Content is the PDU's content when the event was built by this
	// process (not stored: nil for events read from the database). Per-event
	// scans that only concern the content, such as mention checks for every
	// syncing member, then need not go through the whole PDU.
	Content []byte
}

const eventColumns = `pos, event_id, room_id, type, state_key, sender, origin_ts, depth, membership,
	rel_type, relates_to, body, pdu_json, unsigned_json, redacted_by, txn_id, txn_device_id`

type scanner interface{ Scan(dest ...any) error }

func scanEvent(s scanner) (*Event, error) {
	var e Event
	var pdu, unsigned string
	err := s.Scan(&e.Pos, &e.EventID, &e.RoomID, &e.Type, &e.StateKey, &e.Sender, &e.OriginTS, &e.Depth,
		&e.Membership, &e.RelType, &e.RelatesTo, &e.Body, &pdu, &unsigned, &e.RedactedBy, &e.TxnID, &e.TxnDevice)
	if err != nil {
		return nil, err
	}
	e.PDUJSON = []byte(pdu)
	e.Unsigned = []byte(unsigned)
	return &e, nil
}

func scanEvents(rows *sql.Rows, err error) ([]*Event, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*Event
	for rows.Next() {
		e, err := scanEvent(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

func hasNUL(s *string) bool { return s != nil && strings.IndexByte(*s, 0) >= 0 }

// InsertEvent stores an event; for state events it also moves the room's
// current state (and membership) forward.
func (tx *Tx) InsertEvent(ctx context.Context, e *Event) error {
	if e.Body != nil && strings.IndexByte(*e.Body, 0) >= 0 {
		// PostgreSQL text cannot hold U+0000 (pdu_json has it escaped). Body
		// only feeds search and highlight counts: drop it there, on both engines.
		b := strings.ReplaceAll(*e.Body, "\x00", "")
		e.Body = &b
	}
	if hasNUL(e.RelType) || hasNUL(e.RelatesTo) {
		// No event id or relation type contains U+0000: such a relation
		// points nowhere. The event keeps it; the index columns do not.
		e.RelType, e.RelatesTo = nil, nil
	}
	_, err := tx.Exec(ctx, `INSERT INTO events (`+eventColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)`,
		e.Pos, e.EventID, e.RoomID, e.Type, e.StateKey, e.Sender, e.OriginTS, e.Depth, e.Membership,
		e.RelType, e.RelatesTo, e.Body, string(e.PDUJSON), string(e.Unsigned), e.RedactedBy, e.TxnID, e.TxnDevice)
	if err != nil {
		return fmt.Errorf("inserting event %s: %w", e.EventID, err)
	}
	if e.Body != nil {
		tx.db.search.dirty.Store(true) // indexed by the next FlushSearchIndex (searchindex.go)
	}
	if e.StateKey == nil {
		return nil
	}
	if _, err := tx.Exec(ctx, `INSERT INTO room_state (room_id, type, state_key, event_id, pos) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (room_id, type, state_key) DO UPDATE SET event_id = excluded.event_id, pos = excluded.pos`,
		e.RoomID, e.Type, *e.StateKey, e.EventID, e.Pos); err != nil {
		return fmt.Errorf("updating room state: %w", err)
	}
	if e.Type == "m.room.member" && e.Membership != nil {
		// A new membership un-forgets the room.
		if _, err := tx.Exec(ctx, `INSERT INTO memberships (room_id, user_id, membership, event_id, pos, forgotten) VALUES ($1, $2, $3, $4, $5, FALSE)
			ON CONFLICT (room_id, user_id) DO UPDATE SET membership = excluded.membership, event_id = excluded.event_id, pos = excluded.pos, forgotten = FALSE`,
			e.RoomID, *e.StateKey, *e.Membership, e.EventID, e.Pos); err != nil {
			return fmt.Errorf("updating membership: %w", err)
		}
	}
	return nil
}

// RedactEvent replaces an event's stored JSON with its redacted form.
func (tx *Tx) RedactEvent(ctx context.Context, eventID string, redactedPDU []byte, unsigned []byte, redactedBy string) error {
	var pos StreamPos
	var body *string
	if err := tx.QueryRow(ctx, `SELECT pos, body FROM events WHERE event_id = $1`, eventID).Scan(&pos, &body); err != nil {
		return notFound(err)
	}
	if _, err := tx.Exec(ctx, `UPDATE events SET pdu_json = $1, unsigned_json = $2, redacted_by = $3, body = NULL, rel_type = NULL, relates_to = NULL WHERE event_id = $4`,
		string(redactedPDU), string(unsigned), redactedBy, eventID); err != nil {
		return fmt.Errorf("redacting %s: %w", eventID, err)
	}
	if body != nil && tx.db.dialect == SQLite {
		if _, err := tx.Exec(ctx, `DELETE FROM events_fts WHERE rowid = $1`, pos); err != nil {
			return fmt.Errorf("unindexing %s: %w", eventID, err)
		}
	}
	return nil
}

// EventByID loads one event.
func (db *DB) EventByID(ctx context.Context, eventID string) (*Event, error) {
	e, err := scanEvent(db.QueryRow(ctx, `SELECT `+eventColumns+` FROM events WHERE event_id = $1`, eventID))
	return e, notFound(err)
}

// EventsByID loads the given events (missing ones are skipped), in stream order.
func (db *DB) EventsByID(ctx context.Context, eventIDs []string) ([]*Event, error) {
	if len(eventIDs) == 0 {
		return nil, nil
	}
	args := make([]any, len(eventIDs))
	for i, id := range eventIDs {
		args[i] = id
	}
	return scanEvents(db.Query(ctx, `SELECT `+eventColumns+` FROM events WHERE event_id IN (`+placeholders(1, len(args))+`) ORDER BY pos`, args...))
}

// EventFilter narrows room event queries.
type EventFilter struct {
	Types       []string // exact types or prefixes ending in "*"
	NotTypes    []string
	Senders     []string
	NotSenders  []string
	RelTypes    []string
	RelatesTo   string
	ContainsURL *bool
}

func likePattern(t string) (string, bool) {
	if strings.HasSuffix(t, "*") {
		r := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)
		return r.Replace(strings.TrimSuffix(t, "*")) + "%", true
	}
	return t, false
}

// where appends filter conditions to the query; n is the next placeholder number.
func (f *EventFilter) where(q *strings.Builder, args []any) []any {
	if f == nil {
		return args
	}
	typeConds := func(types []string, negate bool) {
		if len(types) == 0 {
			return
		}
		var parts []string
		for _, t := range types {
			p, like := likePattern(t)
			args = append(args, p)
			if like {
				parts = append(parts, fmt.Sprintf(`type LIKE $%d ESCAPE '\'`, len(args)))
			} else {
				parts = append(parts, fmt.Sprintf(`type = $%d`, len(args)))
			}
		}
		if negate {
			q.WriteString(" AND NOT (" + strings.Join(parts, " OR ") + ")")
		} else {
			q.WriteString(" AND (" + strings.Join(parts, " OR ") + ")")
		}
	}
	typeConds(f.Types, false)
	typeConds(f.NotTypes, true)
	inList := func(col string, vals []string, negate bool) {
		if len(vals) == 0 {
			return
		}
		ph := make([]string, len(vals))
		for i, v := range vals {
			args = append(args, v)
			ph[i] = fmt.Sprintf("$%d", len(args))
		}
		op := " IN "
		if negate {
			op = " NOT IN "
		}
		q.WriteString(" AND " + col + op + "(" + strings.Join(ph, ", ") + ")")
	}
	inList("sender", f.Senders, false)
	inList("sender", f.NotSenders, true)
	inList("rel_type", f.RelTypes, false)
	if f.RelatesTo != "" {
		args = append(args, f.RelatesTo)
		fmt.Fprintf(q, " AND relates_to = $%d", len(args))
	}
	if f.ContainsURL != nil {
		if *f.ContainsURL {
			q.WriteString(` AND pdu_json LIKE '%"url":%'`)
		} else {
			q.WriteString(` AND pdu_json NOT LIKE '%"url":%'`)
		}
	}
	return args
}

// RoomEvents pages through a room's events. Backwards: pos <= from, newest
// first, stopping above `to` (exclusive) when to > 0. Forwards: pos > from,
// oldest first, up to `to` (inclusive) when to > 0.
func (db *DB) RoomEvents(ctx context.Context, roomID string, from, to StreamPos, backwards bool, limit int, f *EventFilter) ([]*Event, error) {
	var q strings.Builder
	args := []any{roomID, from}
	q.WriteString(`SELECT ` + eventColumns + ` FROM events WHERE room_id = $1`)
	if backwards {
		q.WriteString(` AND pos <= $2`)
		if to > 0 {
			args = append(args, to)
			fmt.Fprintf(&q, ` AND pos > $%d`, len(args))
		}
	} else {
		q.WriteString(` AND pos > $2`)
		if to > 0 {
			args = append(args, to)
			fmt.Fprintf(&q, ` AND pos <= $%d`, len(args))
		}
	}
	args = f.where(&q, args)
	if backwards {
		q.WriteString(` ORDER BY pos DESC`)
	} else {
		q.WriteString(` ORDER BY pos ASC`)
	}
	args = append(args, limit)
	fmt.Fprintf(&q, ` LIMIT $%d`, len(args))
	return scanEvents(db.Query(ctx, q.String(), args...))
}

// RoomEventsBetween returns events of the given rooms with from < pos <= to, oldest first.
func (db *DB) RoomEventsBetween(ctx context.Context, roomIDs []string, from, to StreamPos) ([]*Event, error) {
	if len(roomIDs) == 0 || to <= from {
		return nil, nil
	}
	args := []any{from, to}
	for _, r := range roomIDs {
		args = append(args, r)
	}
	return scanEvents(db.Query(ctx, `SELECT `+eventColumns+` FROM events WHERE pos > $1 AND pos <= $2 AND room_id IN (`+
		placeholders(3, len(roomIDs))+`) ORDER BY pos`, args...))
}

// CurrentState returns a room's current state events.
func (db *DB) CurrentState(ctx context.Context, roomID string) ([]*Event, error) {
	return scanEvents(db.Query(ctx, `SELECT `+prefixed("e.", eventColumns)+` FROM room_state s JOIN events e ON e.event_id = s.event_id
		WHERE s.room_id = $1 ORDER BY e.pos`, roomID))
}

// StateAt returns the room's state as it was after the event at pos (inclusive).
func (db *DB) StateAt(ctx context.Context, roomID string, pos StreamPos) ([]*Event, error) {
	return scanEvents(db.Query(ctx, `SELECT `+prefixed("e.", eventColumns)+` FROM events e JOIN (
			SELECT type, state_key, MAX(pos) AS pos FROM events WHERE room_id = $1 AND state_key IS NOT NULL AND pos <= $2 GROUP BY type, state_key
		) latest ON e.pos = latest.pos ORDER BY e.pos`, roomID, pos))
}

// StateEventsOfType returns the history of one kind of state event in a
// room (e.g. every m.room.history_visibility or one user's m.room.member),
// oldest first. stateKey nil means any state key.
func (db *DB) StateEventsOfType(ctx context.Context, roomID, eventType string, stateKey *string) ([]*Event, error) {
	if stateKey == nil {
		return scanEvents(db.Query(ctx, `SELECT `+eventColumns+` FROM events WHERE room_id = $1 AND type = $2 AND state_key IS NOT NULL ORDER BY pos`, roomID, eventType))
	}
	return scanEvents(db.Query(ctx, `SELECT `+eventColumns+` FROM events WHERE room_id = $1 AND type = $2 AND state_key = $3 ORDER BY pos`, roomID, eventType, *stateKey))
}

// StateChangesBetween returns state events of a room with from < pos <= to.
func (db *DB) StateChangesBetween(ctx context.Context, roomID string, from, to StreamPos) ([]*Event, error) {
	return scanEvents(db.Query(ctx, `SELECT `+eventColumns+` FROM events WHERE room_id = $1 AND state_key IS NOT NULL AND pos > $2 AND pos <= $3 ORDER BY pos`, roomID, from, to))
}

// LatestRoomEvent returns the newest event of a room.
func (db *DB) LatestRoomEvent(ctx context.Context, roomID string) (*Event, error) {
	e, err := scanEvent(db.QueryRow(ctx, `SELECT `+eventColumns+` FROM events WHERE room_id = $1 ORDER BY pos DESC LIMIT 1`, roomID))
	return e, notFound(err)
}

// CountRoomEventsAfter counts events in a room after pos that match f (for unread counts).
func (db *DB) CountRoomEventsAfter(ctx context.Context, roomID string, after StreamPos, f *EventFilter) (int, error) {
	var q strings.Builder
	q.WriteString(`SELECT COUNT(*) FROM events WHERE room_id = $1 AND pos > $2`)
	args := f.where(&q, []any{roomID, after})
	var n int
	err := db.QueryRow(ctx, q.String(), args...).Scan(&n)
	return n, err
}

func prefixed(prefix, cols string) string {
	parts := strings.Split(cols, ",")
	for i, p := range parts {
		parts[i] = prefix + strings.TrimSpace(p)
	}
	return strings.Join(parts, ", ")
}

// TxnEventID returns the event a device already sent with txnID.
func (db *DB) TxnEventID(ctx context.Context, userID, deviceID, txnID string) (string, error) {
	var id string
	err := db.QueryRow(ctx, `SELECT event_id FROM transactions WHERE user_id = $1 AND device_id = $2 AND txn_id = $3`, userID, deviceID, txnID).Scan(&id)
	return id, notFound(err)
}

// TxnEventID is the in-transaction variant of DB.TxnEventID.
func (tx *Tx) TxnEventID(ctx context.Context, userID, deviceID, txnID string) (string, error) {
	var id string
	err := tx.QueryRow(ctx, `SELECT event_id FROM transactions WHERE user_id = $1 AND device_id = $2 AND txn_id = $3`, userID, deviceID, txnID).Scan(&id)
	return id, notFound(err)
}

// InsertTxnIfNew records a device's txnId for an event unless the device
// already used that txnId; it reports whether the txnId was new. The room
// engine checks for a used txnId this way, at commit time, instead of with
// a TxnEventID query per request.
func (tx *Tx) InsertTxnIfNew(ctx context.Context, userID, deviceID, txnID, eventID string) (bool, error) {
	res, err := tx.Exec(ctx, `INSERT INTO transactions (user_id, device_id, txn_id, event_id, created_ts) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (user_id, device_id, txn_id) DO NOTHING`,
		userID, deviceID, txnID, eventID, nowMillis())
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, err
	}
	return n == 1, nil
}

// CountUnread counts events in a room with after < pos <= upTo, sent by
// others, of the types the default push rules notify for; highlight counts
// those whose body contains bodyLike or whose JSON contains jsonLike (both
// LIKE patterns, e.g. the user's localpart and full user id).
func (db *DB) CountUnread(ctx context.Context, roomID string, after, upTo StreamPos, userID, bodyLike, jsonLike string) (notif, highlight int, err error) {
	err = db.QueryRow(ctx, `SELECT COUNT(*), COALESCE(SUM(CASE WHEN LOWER(COALESCE(body, '')) LIKE $5 ESCAPE '\' OR pdu_json LIKE $6 ESCAPE '\' THEN 1 ELSE 0 END), 0)
		FROM events WHERE room_id = $1 AND pos > $2 AND pos <= $3 AND sender <> $4
		AND type IN ('m.room.message', 'm.room.encrypted', 'm.sticker', 'm.call.invite', 'm.poll.start', 'org.matrix.msc3381.poll.start')`,
		roomID, after, upTo, userID, bodyLike, jsonLike).Scan(&notif, &highlight)
	return notif, highlight, err
}

// LikeContains returns a LIKE pattern matching s anywhere (escaped with \).
func LikeContains(s string) string { return "%" + escapeLike(s) + "%" }
