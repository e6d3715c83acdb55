package storage

import (
	"context"
	"fmt"
	"math"
	"strings"
)

// RelReply is the rel_type the events table records for rich replies
// (m.in_reply_to). Replies are not relations in the spec's sense, so the
// relation queries below leave them out.
const RelReply = "m.in_reply_to"

// RelationsQuery selects the events that relate to one or more parents.
type RelationsQuery struct {
	RoomID  string
	Parents []string
	// RelType and EventType narrow the children; "" means any.
	RelType   string
	EventType string
	// From is where paging starts: backwards returns pos <= From (newest
	// first), forwards pos > From (oldest first). To bounds the other end:
	// backwards pos > To, forwards pos <= To; 0 means unbounded.
	From, To  StreamPos
	Backwards bool
	Limit     int
}

// The lookups by parent below write "room_id || '' = $1": without table
// statistics SQLite would otherwise pick the (room_id, pos) index and scan the
// whole room instead of using events_relates for "relates_to IN (...)". The
// expression keeps room_id out of index selection on both engines (PostgreSQL
// plans from its statistics and chooses events_relates anyway).

// Relations pages through the children of q.Parents.
func (db *DB) Relations(ctx context.Context, q RelationsQuery) ([]*Event, error) {
	if len(q.Parents) == 0 || q.Limit <= 0 {
		return nil, nil
	}
	var b strings.Builder
	args := []any{q.RoomID}
	b.WriteString(`SELECT ` + eventColumns + ` FROM events WHERE room_id || '' = $1 AND relates_to IN (`)
	for i, p := range q.Parents {
		if i > 0 {
			b.WriteString(", ")
		}
		args = append(args, p)
		fmt.Fprintf(&b, "$%d", len(args))
	}
	b.WriteString(")")
	if q.RelType != "" {
		args = append(args, q.RelType)
		fmt.Fprintf(&b, " AND rel_type = $%d", len(args))
	} else {
		args = append(args, RelReply)
		fmt.Fprintf(&b, " AND rel_type <> $%d", len(args))
	}
	if q.EventType != "" {
		args = append(args, q.EventType)
		fmt.Fprintf(&b, " AND type = $%d", len(args))
	}
	args = append(args, q.From)
	if q.Backwards {
		fmt.Fprintf(&b, " AND pos <= $%d", len(args))
		if q.To > 0 {
			args = append(args, q.To)
			fmt.Fprintf(&b, " AND pos > $%d", len(args))
		}
		b.WriteString(" ORDER BY pos DESC")
	} else {
		fmt.Fprintf(&b, " AND pos > $%d", len(args))
		if q.To > 0 {
			args = append(args, q.To)
			fmt.Fprintf(&b, " AND pos <= $%d", len(args))
		}
		b.WriteString(" ORDER BY pos ASC")
	}
	args = append(args, q.Limit)
	fmt.Fprintf(&b, " LIMIT $%d", len(args))
	return scanEvents(db.Query(ctx, b.String(), args...))
}

// ChildEventIDs returns the ids of the events of a room that relate to any
// of parents (replies excepted), up to limit.
func (db *DB) ChildEventIDs(ctx context.Context, roomID string, parents []string, limit int) ([]string, error) {
	if len(parents) == 0 {
		return nil, nil
	}
	args := []any{roomID, RelReply, limit}
	for _, p := range parents {
		args = append(args, p)
	}
	return queryStrings(db.Query(ctx, `SELECT event_id FROM events WHERE room_id || '' = $1 AND rel_type <> $2 AND relates_to IN (`+
		placeholders(4, len(parents))+`) ORDER BY pos LIMIT $3`, args...))
}

// ThreadSummary aggregates one thread: its root, its newest reply, how many
// replies it has and whether a given user took part (sent the root or a reply).
type ThreadSummary struct {
	RootID       string
	LatestPos    StreamPos
	Count        int
	Participated bool
}

// ThreadsQuery lists the threads of a room.
type ThreadsQuery struct {
	RoomID string
	UserID string // for Participated (and ParticipatedOnly)
	// ParticipatedOnly keeps threads the user started or replied to.
	ParticipatedOnly bool
	// Before keeps threads whose latest reply is before this position (0: no bound).
	Before StreamPos
	// MaxPos ignores replies after this position (0: none), for users who left.
	MaxPos StreamPos
	Limit  int
}

// Threads lists a room's threads, most recently active first.
func (db *DB) Threads(ctx context.Context, q ThreadsQuery) ([]ThreadSummary, error) {
	args := []any{q.RoomID, q.UserID}
	var b strings.Builder
	b.WriteString(`SELECT t.relates_to, MAX(t.pos), COUNT(*), MAX(CASE WHEN t.sender = $2 THEN 1 ELSE 0 END), r.sender
		FROM events t JOIN events r ON r.event_id = t.relates_to
		WHERE t.room_id = $1 AND t.rel_type = 'm.thread'`)
	if q.MaxPos > 0 {
		args = append(args, q.MaxPos)
		fmt.Fprintf(&b, " AND t.pos <= $%d", len(args))
	}
	b.WriteString(" GROUP BY t.relates_to, r.sender HAVING 1 = 1")
	if q.Before > 0 {
		args = append(args, q.Before)
		fmt.Fprintf(&b, " AND MAX(t.pos) < $%d", len(args))
	}
	if q.ParticipatedOnly {
		b.WriteString(" AND (MAX(CASE WHEN t.sender = $2 THEN 1 ELSE 0 END) = 1 OR r.sender = $2)")
	}
	args = append(args, q.Limit)
	fmt.Fprintf(&b, " ORDER BY MAX(t.pos) DESC LIMIT $%d", len(args))
	rows, err := db.Query(ctx, b.String(), args...)
	if err != nil {
		return nil, fmt.Errorf("listing threads: %w", err)
	}
	defer rows.Close()
	var out []ThreadSummary
	for rows.Next() {
		var ts ThreadSummary
		var mine int
		var rootSender string
		if err := rows.Scan(&ts.RootID, &ts.LatestPos, &ts.Count, &mine, &rootSender); err != nil {
			return nil, err
		}
		ts.Participated = mine == 1 || rootSender == q.UserID
		out = append(out, ts)
	}
	return out, rows.Err()
}

// ThreadSummaries aggregates the threads rooted at the given events (roots
// without replies are absent from the map). Replies after maxPos (when > 0)
// are ignored.
func (db *DB) ThreadSummaries(ctx context.Context, roomID, userID string, rootIDs []string, maxPos StreamPos) (map[string]ThreadSummary, error) {
	out := make(map[string]ThreadSummary)
	if len(rootIDs) == 0 {
		return out, nil
	}
	args := []any{roomID, userID, noMax(maxPos)}
	for _, id := range rootIDs {
		args = append(args, id)
	}
	rows, err := db.Query(ctx, `SELECT t.relates_to, MAX(t.pos), COUNT(*), MAX(CASE WHEN t.sender = $2 THEN 1 ELSE 0 END), r.sender
		FROM events t JOIN events r ON r.event_id = t.relates_to
		WHERE t.room_id || '' = $1 AND t.rel_type = 'm.thread' AND t.pos <= $3 AND t.relates_to IN (`+placeholders(4, len(rootIDs))+`)
		GROUP BY t.relates_to, r.sender`, args...)
	if err != nil {
		return nil, fmt.Errorf("summarising threads: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var ts ThreadSummary
		var mine int
		var rootSender string
		if err := rows.Scan(&ts.RootID, &ts.LatestPos, &ts.Count, &mine, &rootSender); err != nil {
			return nil, err
		}
		ts.Participated = mine == 1 || rootSender == userID
		out[ts.RootID] = ts
	}
	return out, rows.Err()
}

// RelatedEvents returns the events of one rel_type relating to any of
// parents, oldest first; events after maxPos (when > 0) are left out.
func (db *DB) RelatedEvents(ctx context.Context, roomID, relType string, parents []string, maxPos StreamPos) ([]*Event, error) {
	if len(parents) == 0 {
		return nil, nil
	}
	args := []any{roomID, relType, noMax(maxPos)}
	for _, p := range parents {
		args = append(args, p)
	}
	return scanEvents(db.Query(ctx, `SELECT `+eventColumns+` FROM events WHERE room_id || '' = $1 AND rel_type = $2 AND pos <= $3
		AND relates_to IN (`+placeholders(4, len(parents))+`) ORDER BY pos`, args...))
}

// noMax turns "0 = no bound" into a bound no position reaches.
func noMax(p StreamPos) StreamPos {
	if p <= 0 {
		return math.MaxInt64
	}
	return p
}
