package storage

import (
	"context"
	"fmt"
	"strings"
)

// Queries of the admin API's room endpoints: room listing with the figures
// Synapse's room_stats tables hold (computed here from current state),
// blocking, and purging a room or part of its history.

// AdminRoom is a room as GET /_synapse/admin/v1/rooms shows it.
type AdminRoom struct {
	RoomID            string
	Version           string
	Creator           string
	Public            bool
	Name              *string
	CanonicalAlias    *string
	Topic             *string
	Avatar            *string
	Encryption        *string
	JoinRules         *string
	GuestAccess       *string
	HistoryVisibility *string
	RoomType          *string
	// Federate is content["m.federate"] of m.room.create as the engine
	// returns it ("0"/"false" when false; nil when absent, meaning true).
	Federate      *string
	JoinedMembers int64
	StateEvents   int64
}

// Federatable reports m.federate (true unless explicitly false).
func (r *AdminRoom) Federatable() bool {
	return r.Federate == nil || (*r.Federate != "0" && *r.Federate != "false")
}

// jsonPath is the SQL extracting content.<key> of a PDU as text.
func (db *DB) jsonPath(col, key string) string {
	if db.dialect == Postgres {
		return fmt.Sprintf(`(%s::json #>> '{content,%s}')`, col, key)
	}
	return fmt.Sprintf(`json_extract(%s, '$.content."%s"')`, col, key)
}

// stateField is a correlated subquery: content.<key> of the current state
// event (evType, "") of the room r.room_id.
func (db *DB) stateField(evType, key string) string {
	return `(SELECT ` + db.jsonPath("e.pdu_json", key) + ` FROM room_state s JOIN events e ON e.event_id = s.event_id
		WHERE s.room_id = r.room_id AND s.type = '` + evType + `' AND s.state_key = '')`
}

// adminRoomInfoSQL selects one row per room with the AdminRoom columns.
func (db *DB) adminRoomInfoSQL() string {
	return `SELECT r.room_id, r.room_version, r.creator, r.published,
		` + db.stateField("m.room.name", "name") + ` AS name,
		` + db.stateField("m.room.canonical_alias", "alias") + ` AS canonical_alias,
		` + db.stateField("m.room.topic", "topic") + ` AS topic,
		` + db.stateField("m.room.avatar", "url") + ` AS avatar,
		` + db.stateField("m.room.encryption", "algorithm") + ` AS encryption,
		` + db.stateField("m.room.join_rules", "join_rule") + ` AS join_rules,
		` + db.stateField("m.room.guest_access", "guest_access") + ` AS guest_access,
		` + db.stateField("m.room.history_visibility", "history_visibility") + ` AS history_visibility,
		` + db.stateField("m.room.create", "type") + ` AS room_type,
		` + db.stateField("m.room.create", "m.federate") + ` AS federate,
		(SELECT COUNT(*) FROM memberships m WHERE m.room_id = r.room_id AND m.membership = 'join') AS joined_members,
		(SELECT COUNT(*) FROM room_state s WHERE s.room_id = r.room_id) AS state_events
		FROM rooms r`
}

const adminRoomColumns = `room_id, room_version, creator, published, name, canonical_alias, topic, avatar, encryption,
	join_rules, guest_access, history_visibility, room_type, federate, joined_members, state_events`

func scanAdminRoom(s scanner) (*AdminRoom, error) {
	var r AdminRoom
	if err := s.Scan(&r.RoomID, &r.Version, &r.Creator, &r.Public, &r.Name, &r.CanonicalAlias, &r.Topic, &r.Avatar,
		&r.Encryption, &r.JoinRules, &r.GuestAccess, &r.HistoryVisibility, &r.RoomType, &r.Federate,
		&r.JoinedMembers, &r.StateEvents); err != nil {
		return nil, notFound(err)
	}
	return &r, nil
}

// AdminRoomByID loads one room's admin view; ErrNotFound if unknown.
func (db *DB) AdminRoomByID(ctx context.Context, roomID string) (*AdminRoom, error) {
	return scanAdminRoom(db.adminQueryRow(ctx, `SELECT `+adminRoomColumns+` FROM (`+db.adminRoomInfoSQL()+` WHERE r.room_id = $1) info`, roomID))
}

// RoomListQuery selects and orders the rooms of GET /_synapse/admin/v1/rooms.
type RoomListQuery struct {
	From, Limit int
	// OrderBy is one of RoomOrderColumns' keys ("" = name).
	OrderBy   string
	Backwards bool
	// SearchTerm keeps rooms whose name or canonical alias localpart
	// (case-insensitive) or room id (case-sensitive) contains it.
	SearchTerm string
	// PublicRooms and EmptyRooms filter when set.
	PublicRooms *bool
	EmptyRooms  *bool
}

// roomOrder is a room sort column and its natural direction.
type roomOrder struct {
	col  string
	desc bool // "largest to smallest" orders
}

// RoomOrderColumns maps the admin API's order_by values to SQL (Synapse's
// RoomSortOrder, including the deprecated alphabetical and size).
var RoomOrderColumns = map[string]roomOrder{
	"alphabetical":         {"LOWER(name)", false},
	"size":                 {"joined_members", true},
	"name":                 {"LOWER(name)", false}, // alphabetical whatever the database's collation
	"canonical_alias":      {"LOWER(canonical_alias)", false},
	"joined_members":       {"joined_members", true},
	"joined_local_members": {"joined_members", true}, // every member is local
	"version":              {"room_version", true},
	"creator":              {"creator", false},
	"encryption":           {"encryption", false},
	"federatable":          {"federate", false},
	"public":               {"published", false},
	"join_rules":           {"join_rules", false},
	"guest_access":         {"guest_access", false},
	"history_visibility":   {"history_visibility", false},
	"state_events":         {"state_events", true},
}

// ListRooms returns one page of rooms and how many match in total.
func (db *DB) ListRooms(ctx context.Context, q RoomListQuery) ([]*AdminRoom, int, error) {
	var where []string
	var args []any
	arg := func(v any) string {
		args = append(args, v)
		return fmt.Sprintf("$%d", len(args))
	}
	if q.SearchTerm != "" {
		lower := escapeLike(strings.ToLower(q.SearchTerm))
		where = append(where, `(LOWER(COALESCE(name, '')) LIKE `+arg("%"+lower+"%")+` ESCAPE '\'
			OR LOWER(COALESCE(canonical_alias, '')) LIKE `+arg("#%"+lower+"%:%")+` ESCAPE '\'
			OR room_id LIKE `+arg(LikeContains(q.SearchTerm))+` ESCAPE '\')`)
	}
	if q.PublicRooms != nil {
		where = append(where, "published = "+arg(*q.PublicRooms))
	}
	if q.EmptyRooms != nil {
		if *q.EmptyRooms {
			where = append(where, "joined_members = 0")
		} else {
			where = append(where, "joined_members > 0")
		}
	}
	whereSQL := ""
	if len(where) > 0 {
		whereSQL = " WHERE " + strings.Join(where, " AND ")
	}
	from := ` FROM (` + db.adminRoomInfoSQL() + `) info` + whereSQL

	var total int
	if err := db.adminQueryRow(ctx, `SELECT COUNT(*)`+from, args...).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("counting rooms: %w", err)
	}
	ord, ok := RoomOrderColumns[q.OrderBy]
	if !ok {
		ord = RoomOrderColumns["name"]
	}
	desc := ord.desc != q.Backwards
	tie := "room_id ASC"
	if desc {
		tie = "room_id DESC"
	}
	limit, offset := arg(q.Limit), arg(q.From)
	rows, err := db.adminQuery(ctx, `SELECT `+adminRoomColumns+from+
		` ORDER BY `+nullableOrder(ord.col, desc)+`, `+tie+` LIMIT `+limit+` OFFSET `+offset, args...)
	if err != nil {
		return nil, 0, fmt.Errorf("listing rooms: %w", err)
	}
	defer rows.Close()
	var out []*AdminRoom
	for rows.Next() {
		r, err := scanAdminRoom(rows)
		if err != nil {
			return nil, 0, err
		}
		out = append(out, r)
	}
	return out, total, rows.Err()
}

// JoinedLocalDevices counts the devices of a room's joined members.
func (db *DB) JoinedLocalDevices(ctx context.Context, roomID string) (int64, error) {
	var n int64
	err := db.adminQueryRow(ctx, `SELECT COUNT(*) FROM devices d JOIN memberships m ON m.user_id = d.user_id
		WHERE m.room_id = $1 AND m.membership = 'join'`, roomID).Scan(&n)
	return n, err
}

// RoomForgotten reports whether every user with a membership of the room
// has forgotten it (true for a room nobody is or was in).
func (db *DB) RoomForgotten(ctx context.Context, roomID string) (bool, error) {
	var n int
	err := db.adminQueryRow(ctx, `SELECT COUNT(*) FROM memberships WHERE room_id = $1 AND forgotten = FALSE`, roomID).Scan(&n)
	return n == 0, err
}

// BlockRoom adds a room to the block list (keeping the first blocker).
func (db *DB) BlockRoom(ctx context.Context, roomID, byUserID string) error {
	return db.Write(ctx, func(tx *Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO blocked_rooms (room_id, user_id, blocked_ts) VALUES ($1, $2, $3)
			ON CONFLICT (room_id) DO NOTHING`, roomID, byUserID, nowMillis())
		return err
	})
}

// UnblockRoom removes a room from the block list.
func (db *DB) UnblockRoom(ctx context.Context, roomID string) error {
	return db.Write(ctx, func(tx *Tx) error {
		_, err := tx.Exec(ctx, `DELETE FROM blocked_rooms WHERE room_id = $1`, roomID)
		return err
	})
}

// RoomBlockedBy returns who blocked a room; ErrNotFound when it is not blocked.
func (db *DB) RoomBlockedBy(ctx context.Context, roomID string) (string, error) {
	var by string
	err := db.QueryRow(ctx, `SELECT user_id FROM blocked_rooms WHERE room_id = $1`, roomID).Scan(&by)
	return by, notFound(err)
}

// MoveAliases points every local alias of a room at another room and returns them.
func (db *DB) MoveAliases(ctx context.Context, fromRoom, toRoom string) ([]string, error) {
	var aliases []string
	err := db.Write(ctx, func(tx *Tx) error {
		var err error
		if aliases, err = queryStrings(tx.Query(ctx, `SELECT alias FROM room_aliases WHERE room_id = $1 ORDER BY created_ts, alias`, fromRoom)); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE room_aliases SET room_id = $1 WHERE room_id = $2`, toRoom, fromRoom)
		return err
	})
	return aliases, err
}

// DeleteRoomAliases removes every local alias of a room and returns them.
func (db *DB) DeleteRoomAliases(ctx context.Context, roomID string) ([]string, error) {
	var aliases []string
	err := db.Write(ctx, func(tx *Tx) error {
		var err error
		if aliases, err = queryStrings(tx.Query(ctx, `SELECT alias FROM room_aliases WHERE room_id = $1 ORDER BY created_ts, alias`, roomID)); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `DELETE FROM room_aliases WHERE room_id = $1`, roomID)
		return err
	})
	return aliases, err
}

// PurgeRoom deletes every trace of a room: its events (with their search
// index entries and send transactions), state, memberships, aliases,
// receipts, room account data and the room itself. The block list entry,
// if any, stays. It returns how many events were deleted.
func (tx *Tx) PurgeRoom(ctx context.Context, roomID string) (int64, error) {
	stmts := []string{
		`DELETE FROM transactions WHERE event_id IN (SELECT event_id FROM events WHERE room_id = $1)`,
	}
	if tx.db.dialect == SQLite {
		stmts = append(stmts, `DELETE FROM events_fts WHERE rowid IN (SELECT pos FROM events WHERE room_id = $1)`)
	}
	var deleted int64
	stmts = append(stmts,
		`DELETE FROM events WHERE room_id = $1`,
		`DELETE FROM room_state WHERE room_id = $1`,
		`DELETE FROM memberships WHERE room_id = $1`,
		`DELETE FROM room_aliases WHERE room_id = $1`,
		`DELETE FROM receipts WHERE room_id = $1`,
		`DELETE FROM account_data WHERE room_id = $1`,
		`DELETE FROM rooms WHERE room_id = $1`,
	)
	for _, q := range stmts {
		res, err := tx.Exec(ctx, q, roomID)
		if err != nil {
			return 0, fmt.Errorf("purging room %s: %w", roomID, err)
		}
		if strings.HasPrefix(q, "DELETE FROM events ") {
			deleted, _ = res.RowsAffected()
		}
	}
	return deleted, nil
}

// PurgeHistory deletes a room's non-state events before position `before`
// (state events — joins, leaves, topic, … — are kept, as Synapse keeps
// room state). It returns how many events were deleted.
func (tx *Tx) PurgeHistory(ctx context.Context, roomID string, before StreamPos) (int64, error) {
	const cond = `room_id = $1 AND pos < $2 AND state_key IS NULL`
	if _, err := tx.Exec(ctx, `DELETE FROM transactions WHERE event_id IN (SELECT event_id FROM events WHERE `+cond+`)`, roomID, before); err != nil {
		return 0, fmt.Errorf("purging history of %s: %w", roomID, err)
	}
	if tx.db.dialect == SQLite {
		if _, err := tx.Exec(ctx, `DELETE FROM events_fts WHERE rowid IN (SELECT pos FROM events WHERE `+cond+`)`, roomID, before); err != nil {
			return 0, fmt.Errorf("purging history of %s: %w", roomID, err)
		}
	}
	res, err := tx.Exec(ctx, `DELETE FROM events WHERE `+cond, roomID, before)
	if err != nil {
		return 0, fmt.Errorf("purging history of %s: %w", roomID, err)
	}
	n, _ := res.RowsAffected()
	return n, nil
}

// LastRoomEventBefore returns the newest event of a room sent before ts
// (origin_server_ts); ErrNotFound when there is none.
func (db *DB) LastRoomEventBefore(ctx context.Context, roomID string, ts int64) (*Event, error) {
	e, err := scanEvent(db.QueryRow(ctx, `SELECT `+eventColumns+` FROM events WHERE room_id = $1 AND origin_ts < $2 ORDER BY pos DESC LIMIT 1`, roomID, ts))
	return e, notFound(err)
}

// RoomStateEvents returns a room's current state events, only those of
// evType when it is not empty.
func (db *DB) RoomStateEvents(ctx context.Context, roomID, evType string) ([]*Event, error) {
	if evType == "" {
		return db.CurrentState(ctx, roomID)
	}
	return db.CurrentStateOfType(ctx, roomID, evType)
}
