package storage

import (
	"context"
	"fmt"
	"strings"

	"github.com/tidwall/gjson"
)

// RoomsWithJoinRule lists the rooms whose current m.room.join_rules has the
// given join_rule (e.g. "public").
func (db *DB) RoomsWithJoinRule(ctx context.Context, rule string) ([]string, error) {
	rows, err := db.Query(ctx, `SELECT s.room_id, e.pdu_json FROM room_state s JOIN events e ON e.event_id = s.event_id
		WHERE s.type = 'm.room.join_rules' AND s.state_key = ''`)
	if err != nil {
		return nil, fmt.Errorf("listing join rules: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var roomID, pdu string
		if err := rows.Scan(&roomID, &pdu); err != nil {
			return nil, err
		}
		if gjson.Get(pdu, "content.join_rule").Str == rule {
			out = append(out, roomID)
		}
	}
	return out, rows.Err()
}

// JoinedMemberCount counts a room's joined members.
func (db *DB) JoinedMemberCount(ctx context.Context, roomID string) (int, error) {
	var n int
	err := db.QueryRow(ctx, `SELECT COUNT(*) FROM memberships WHERE room_id = $1 AND membership = 'join'`, roomID).Scan(&n)
	return n, err
}

// SearchUserDirectory finds active users whose id or display name contains
// term (case-insensitive) and who are joined to a room the searcher is
// joined to or to one of publicRooms. At most limit users are returned, in
// user id order.
func (db *DB) SearchUserDirectory(ctx context.Context, searcher, term string, publicRooms []string, limit int) ([]*User, error) {
	like := "%" + escapeLike(strings.ToLower(term)) + "%"
	args := []any{like, searcher, limit}
	roomCond := `m.room_id IN (SELECT room_id FROM memberships WHERE user_id = $2 AND membership = 'join')`
	if len(publicRooms) > 0 {
		for _, r := range publicRooms {
			args = append(args, r)
		}
		roomCond = `(` + roomCond + ` OR m.room_id IN (` + placeholders(4, len(publicRooms)) + `))`
	}
	rows, err := db.Query(ctx, `SELECT `+prefixed("u.", userColumns)+` FROM users u WHERE u.deactivated = FALSE
		AND (LOWER(u.user_id) LIKE $1 ESCAPE '\' OR LOWER(COALESCE(u.displayname, '')) LIKE $1 ESCAPE '\')
		AND EXISTS (SELECT 1 FROM memberships m WHERE m.user_id = u.user_id AND m.membership = 'join' AND `+roomCond+`)
		ORDER BY u.user_id LIMIT $3`, args...)
	if err != nil {
		return nil, fmt.Errorf("searching user directory: %w", err)
	}
	defer rows.Close()
	var out []*User
	for rows.Next() {
		u, err := scanUser(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, rows.Err()
}
