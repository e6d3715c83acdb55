package storage

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// RoomDeletedType is the type of the pseudo-events StreamAfter returns for
// rooms deleted through the agent gateway (their own events are purged).
const RoomDeletedType = "org.agentspace.room.deleted"

// RecordRoomDeleted puts a room deletion into the stream at the next
// position and runs onCommit (with that position) after the commit; the
// caller advances the notifier there so stream consumers wake.
func (db *DB) RecordRoomDeleted(ctx context.Context, roomID, sender string, onCommit func(StreamPos)) (StreamPos, error) {
	var pos StreamPos
	err := db.Write(ctx, func(tx *Tx) error {
		var err error
		if pos, err = tx.NextPos(ctx); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO bridge_room_events (pos, kind, room_id, sender, ts) VALUES ($1, $2, $3, $4, $5)`,
			pos, RoomDeletedType, roomID, sender, nowMillis()); err != nil {
			return fmt.Errorf("recording room deletion: %w", err)
		}
		if onCommit != nil {
			tx.OnCommit(func() { onCommit(pos) })
		}
		return nil
	})
	return pos, err
}

// StreamAfter is EventsAfter including the room lifecycle records of
// bridge_room_events, as pseudo-events of their kind (RoomDeletedType) with
// empty content: up to limit entries with pos > after (and <= upTo unless
// upTo is 0), in stream order.
func (db *DB) StreamAfter(ctx context.Context, after, upTo StreamPos, limit int) ([]*Event, error) {
	evs, err := db.EventsAfter(ctx, after, upTo, limit)
	if err != nil {
		return nil, err
	}
	q := `SELECT pos, kind, room_id, sender, ts FROM bridge_room_events WHERE pos > $1`
	args := []any{after}
	if upTo > 0 {
		q += ` AND pos <= $2 ORDER BY pos LIMIT $3`
		args = append(args, upTo, limit)
	} else {
		q += ` ORDER BY pos LIMIT $2`
		args = append(args, limit)
	}
	rows, err := db.Query(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var extra []*Event
	for rows.Next() {
		e := &Event{PDUJSON: []byte(`{}`), Unsigned: []byte(`{}`)}
		if err := rows.Scan(&e.Pos, &e.Type, &e.RoomID, &e.Sender, &e.OriginTS); err != nil {
			return nil, err
		}
		e.EventID = fmt.Sprintf("$%s-%d", strings.TrimPrefix(e.Type, "org.agentspace."), e.Pos)
		extra = append(extra, e)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(extra) == 0 {
		return evs, nil
	}
	evs = append(evs, extra...)
	sort.Slice(evs, func(i, j int) bool { return evs[i].Pos < evs[j].Pos })
	if len(evs) > limit {
		evs = evs[:limit]
	}
	return evs, nil
}

// BacklogFilter selects the stream entries a bridge would deliver, for
// counting its backlog: entries of one of Types (empty: any), in one of
// RoomIDs (nil: any room).
type BacklogFilter struct {
	Types   []string
	RoomIDs []string
}

// BridgeBacklog counts the entries after pos that match f and gives the
// origin time of the oldest (0 when there is none).
func (db *DB) BridgeBacklog(ctx context.Context, pos StreamPos, f BacklogFilter) (count, oldestTS int64, err error) {
	if f.RoomIDs != nil && len(f.RoomIDs) == 0 {
		return 0, 0, nil
	}
	var events, lifecycle []string
	for _, t := range f.Types {
		if t == RoomDeletedType {
			lifecycle = append(lifecycle, t)
		} else {
			events = append(events, t)
		}
	}
	count1, ts1, err := db.backlogOf(ctx, "events", "type", "origin_ts", pos, events, f.RoomIDs, len(f.Types) > 0 && len(events) == 0)
	if err != nil {
		return 0, 0, err
	}
	count2, ts2, err := db.backlogOf(ctx, "bridge_room_events", "kind", "ts", pos, lifecycle, f.RoomIDs, len(f.Types) > 0 && len(lifecycle) == 0)
	if err != nil {
		return 0, 0, err
	}
	oldestTS = ts1
	if ts2 > 0 && (oldestTS == 0 || ts2 < oldestTS) {
		oldestTS = ts2
	}
	return count1 + count2, oldestTS, nil
}

func (db *DB) backlogOf(ctx context.Context, table, typeCol, tsCol string, pos StreamPos, types, roomIDs []string, skip bool) (int64, int64, error) {
	if skip {
		return 0, 0, nil
	}
	q := `SELECT COUNT(*), COALESCE(MIN(` + tsCol + `), 0) FROM ` + table + ` WHERE pos > $1`
	args := []any{pos}
	if len(types) > 0 {
		q += ` AND ` + typeCol + ` IN (` + placeholders(len(args)+1, len(types)) + `)`
		for _, t := range types {
			args = append(args, t)
		}
	}
	if roomIDs != nil {
		q += ` AND room_id IN (` + placeholders(len(args)+1, len(roomIDs)) + `)`
		for _, r := range roomIDs {
			args = append(args, r)
		}
	}
	var n, ts int64
	err := db.QueryRow(ctx, q, args...).Scan(&n, &ts)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, 0, nil
	}
	return n, ts, err
}

// RevokeAccessToken deletes one access token (and the refresh token it was
// issued with, if any). It reports whether the token existed.
func (db *DB) RevokeAccessToken(ctx context.Context, hash string) (bool, error) {
	found := false
	err := db.Write(ctx, func(tx *Tx) error {
		var refresh *string
		err := tx.QueryRow(ctx, `SELECT refresh_token_hash FROM access_tokens WHERE token_hash = $1`, hash).Scan(&refresh)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		} else if err != nil {
			return err
		}
		found = true
		if refresh != nil {
			return tx.DeleteRefreshToken(ctx, *refresh)
		}
		return tx.DeleteAccessToken(ctx, hash)
	})
	return found, err
}

// RevokeUserTokens deletes every access and refresh token of a user.
func (db *DB) RevokeUserTokens(ctx context.Context, userID string) error {
	return db.Write(ctx, func(tx *Tx) error { return tx.DeleteUserTokens(ctx, userID) })
}
