package storage

import (
	"context"
	"database/sql"
	"fmt"
)

// Room is a row of the rooms table.
type Room struct {
	RoomID      string
	RoomVersion string
	Creator     string
	CreatedTS   int64
	Published   bool
}

// InsertRoom records a new room.
func (tx *Tx) InsertRoom(ctx context.Context, r Room) error {
	_, err := tx.Exec(ctx, `INSERT INTO rooms (room_id, room_version, creator, created_ts, published) VALUES ($1, $2, $3, $4, $5)`,
		r.RoomID, r.RoomVersion, r.Creator, r.CreatedTS, r.Published)
	return err
}

// RoomByID loads a room.
func (db *DB) RoomByID(ctx context.Context, roomID string) (*Room, error) {
	var r Room
	err := db.QueryRow(ctx, `SELECT room_id, room_version, creator, created_ts, published FROM rooms WHERE room_id = $1`, roomID).
		Scan(&r.RoomID, &r.RoomVersion, &r.Creator, &r.CreatedTS, &r.Published)
	if err != nil {
		return nil, notFound(err)
	}
	return &r, nil
}

// AllRoomIDs lists every room.
func (db *DB) AllRoomIDs(ctx context.Context) ([]string, error) {
	return queryStrings(db.Query(ctx, `SELECT room_id FROM rooms ORDER BY created_ts`))
}

// SetRoomPublished sets a room's visibility in the public room directory.
func (db *DB) SetRoomPublished(ctx context.Context, roomID string, published bool) error {
	return db.Write(ctx, func(tx *Tx) error {
		res, err := tx.Exec(ctx, `UPDATE rooms SET published = $1 WHERE room_id = $2`, published, roomID)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return ErrNotFound
		}
		return nil
	})
}

// PublishedRoomIDs lists the rooms in the public directory.
func (db *DB) PublishedRoomIDs(ctx context.Context) ([]string, error) {
	return queryStrings(db.Query(ctx, `SELECT room_id FROM rooms WHERE published = TRUE ORDER BY created_ts`))
}

// Membership is a user's current membership of a room.
type Membership struct {
	RoomID     string
	UserID     string
	Membership string
	EventID    string
	Pos        StreamPos
	Forgotten  bool
}

// MembershipsOfUser lists a user's current memberships, optionally only some kinds.
func (db *DB) MembershipsOfUser(ctx context.Context, userID string, kinds ...string) ([]Membership, error) {
	q := `SELECT room_id, user_id, membership, event_id, pos, forgotten FROM memberships WHERE user_id = $1`
	args := []any{userID}
	if len(kinds) > 0 {
		for _, k := range kinds {
			args = append(args, k)
		}
		q += ` AND membership IN (` + placeholders(2, len(kinds)) + `)`
	}
	return scanMemberships(db.Query(ctx, q+` ORDER BY pos`, args...))
}

// MembersOfRoom lists a room's current memberships, optionally only some kinds.
func (db *DB) MembersOfRoom(ctx context.Context, roomID string, kinds ...string) ([]Membership, error) {
	q := `SELECT room_id, user_id, membership, event_id, pos, forgotten FROM memberships WHERE room_id = $1`
	args := []any{roomID}
	if len(kinds) > 0 {
		for _, k := range kinds {
			args = append(args, k)
		}
		q += ` AND membership IN (` + placeholders(2, len(kinds)) + `)`
	}
	return scanMemberships(db.Query(ctx, q+` ORDER BY pos`, args...))
}

// AllJoinedMemberships lists every (room, user) join on the server; it seeds the notifier.
func (db *DB) AllJoinedMemberships(ctx context.Context) ([]Membership, error) {
	return scanMemberships(db.Query(ctx, `SELECT room_id, user_id, membership, event_id, pos, forgotten FROM memberships WHERE membership = 'join'`))
}

// MembershipOf returns one user's membership of a room (ErrNotFound if never a member).
func (db *DB) MembershipOf(ctx context.Context, roomID, userID string) (*Membership, error) {
	ms, err := scanMemberships(db.Query(ctx, `SELECT room_id, user_id, membership, event_id, pos, forgotten FROM memberships WHERE room_id = $1 AND user_id = $2`, roomID, userID))
	if err != nil {
		return nil, err
	}
	if len(ms) == 0 {
		return nil, ErrNotFound
	}
	return &ms[0], nil
}

// ForgetRoom marks a room forgotten for a user who is no longer in it.
func (db *DB) ForgetRoom(ctx context.Context, roomID, userID string) error {
	return db.Write(ctx, func(tx *Tx) error {
		_, err := tx.Exec(ctx, `UPDATE memberships SET forgotten = TRUE WHERE room_id = $1 AND user_id = $2`, roomID, userID)
		return err
	})
}

// SharesRoom reports whether two users share a room with a join membership.
func (db *DB) SharesRoom(ctx context.Context, userA, userB string) (bool, error) {
	var n int
	err := db.QueryRow(ctx, `SELECT COUNT(*) FROM memberships a JOIN memberships b ON a.room_id = b.room_id
		WHERE a.user_id = $1 AND b.user_id = $2 AND a.membership = 'join' AND b.membership = 'join'`, userA, userB).Scan(&n)
	return n > 0, err
}

func scanMemberships(rows *sql.Rows, err error) ([]Membership, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Membership
	for rows.Next() {
		var m Membership
		if err := rows.Scan(&m.RoomID, &m.UserID, &m.Membership, &m.EventID, &m.Pos, &m.Forgotten); err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, rows.Err()
}

func queryStrings(rows *sql.Rows, err error) ([]string, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

// Alias is a room alias mapping.
type Alias struct {
	Alias   string
	RoomID  string
	Creator string
}

// InsertAlias maps an alias to a room; ErrAlreadyExists when taken.
func (tx *Tx) InsertAlias(ctx context.Context, alias, roomID, creator string) error {
	_, err := tx.Exec(ctx, `INSERT INTO room_aliases (alias, room_id, creator, created_ts) VALUES ($1, $2, $3, $4)`, alias, roomID, creator, nowMillis())
	if err != nil {
		return fmt.Errorf("alias %s: %w", alias, err)
	}
	return nil
}

// InsertAlias is InsertAlias in its own transaction.
func (db *DB) InsertAlias(ctx context.Context, alias, roomID, creator string) error {
	return db.Write(ctx, func(tx *Tx) error { return tx.InsertAlias(ctx, alias, roomID, creator) })
}

// AliasByName resolves an alias.
func (db *DB) AliasByName(ctx context.Context, alias string) (*Alias, error) {
	var a Alias
	err := db.QueryRow(ctx, `SELECT alias, room_id, creator FROM room_aliases WHERE alias = $1`, alias).Scan(&a.Alias, &a.RoomID, &a.Creator)
	if err != nil {
		return nil, notFound(err)
	}
	return &a, nil
}

// AliasesOfRoom lists a room's local aliases.
func (db *DB) AliasesOfRoom(ctx context.Context, roomID string) ([]string, error) {
	return queryStrings(db.Query(ctx, `SELECT alias FROM room_aliases WHERE room_id = $1 ORDER BY created_ts`, roomID))
}

// DeleteAlias removes an alias.
func (db *DB) DeleteAlias(ctx context.Context, alias string) error {
	return db.Write(ctx, func(tx *Tx) error {
		res, err := tx.Exec(ctx, `DELETE FROM room_aliases WHERE alias = $1`, alias)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return ErrNotFound
		}
		return nil
	})
}
