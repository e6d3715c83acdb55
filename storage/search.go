package storage

import (
	"context"
	"fmt"
	"strings"
	"unicode"
)

// maxSearchTokens bounds how many words one search may contain.
const maxSearchTokens = 16

// SearchTokens splits a user's search term into the words the full-text
// index knows: runs of letters, digits and combining marks, lowercased.
// Everything else (quotes, operators, punctuation) separates words, so a
// term can never become query syntax.
func SearchTokens(term string) []string {
	words := strings.FieldsFunc(strings.ToLower(term), func(r rune) bool {
		return !unicode.IsLetter(r) && !unicode.IsNumber(r) && !unicode.IsMark(r)
	})
	if len(words) > maxSearchTokens {
		words = words[:maxSearchTokens]
	}
	return words
}

// SearchQuery is a full-text search over message bodies (content.body).
type SearchQuery struct {
	// Term is the user's search text; every word must match (as a prefix).
	Term string
	// Rooms are the rooms to search, each with the last position the user
	// may see there (0: no bound, for rooms the user is still in).
	Rooms map[string]StreamPos
	// Filter narrows by type and sender.
	Filter *EventFilter
	// OrderByRecent orders newest first; otherwise by relevance.
	OrderByRecent bool
	// Before keeps events with pos < Before (when > 0); used to page in recent order.
	Before StreamPos
	// Offset skips that many results; used to page in rank order.
	Offset int
	Limit  int
}

// SearchHit is one matching event with its relevance (higher is better).
type SearchHit struct {
	Event *Event
	Rank  float64
}

// searchSQL builds the FROM/WHERE part shared by the search and its count.
// It returns "" when nothing can match.
func (db *DB) searchSQL(q SearchQuery) (string, []any) {
	tokens := SearchTokens(q.Term)
	if len(tokens) == 0 || len(q.Rooms) == 0 {
		return "", nil
	}
	var b strings.Builder
	var args []any
	if db.dialect == SQLite {
		quoted := make([]string, len(tokens))
		for i, t := range tokens {
			// A quoted phrase is never an operator; "tok*" is a prefix query.
			quoted[i] = `"` + strings.ReplaceAll(t, `"`, `""`) + `*"`
		}
		args = append(args, strings.Join(quoted, " "))
		b.WriteString(` FROM events_fts JOIN events e ON e.pos = events_fts.rowid WHERE events_fts MATCH $1`)
	} else {
		prefixed := make([]string, len(tokens))
		for i, t := range tokens {
			prefixed[i] = t + ":*" // tokens are letters and digits only, safe for to_tsquery
		}
		args = append(args, strings.Join(prefixed, " & "))
		b.WriteString(` FROM events e WHERE to_tsvector('simple', coalesce(e.body, '')) @@ to_tsquery('simple', $1)`)
	}
	var unbounded []string
	var bounded []string
	for room, max := range q.Rooms {
		if max <= 0 {
			unbounded = append(unbounded, room)
			continue
		}
		args = append(args, room, max)
		bounded = append(bounded, fmt.Sprintf("(e.room_id = $%d AND e.pos <= $%d)", len(args)-1, len(args)))
	}
	if len(unbounded) > 0 {
		ph := make([]string, len(unbounded))
		for i, r := range unbounded {
			args = append(args, r)
			ph[i] = fmt.Sprintf("$%d", len(args))
		}
		bounded = append(bounded, "e.room_id IN ("+strings.Join(ph, ", ")+")")
	}
	b.WriteString(" AND (" + strings.Join(bounded, " OR ") + ")")
	b.WriteString(" AND e.state_key IS NULL AND e.redacted_by IS NULL")
	if q.Before > 0 {
		args = append(args, q.Before)
		fmt.Fprintf(&b, " AND e.pos < $%d", len(args))
	}
	args = q.Filter.where(&b, args)
	return b.String(), args
}

// SearchEvents runs a full-text search.
func (db *DB) SearchEvents(ctx context.Context, q SearchQuery) ([]SearchHit, error) {
	from, args := db.searchSQL(q)
	if from == "" || q.Limit <= 0 {
		return nil, nil
	}
	if err := db.FlushSearchIndex(ctx); err != nil { // everything stored is searchable
		return nil, err
	}
	// FTS4 has no bm25: rank by how many times the terms occur
	// (offsets() lists four integers per match).
	score := `(LENGTH(offsets(events_fts)) - LENGTH(REPLACE(offsets(events_fts), ' ', '')) + 1) / 4.0`
	if db.dialect == Postgres {
		score = `ts_rank(to_tsvector('simple', coalesce(e.body, '')), to_tsquery('simple', $1))`
	}
	order := ` ORDER BY score DESC, e.pos DESC`
	if q.OrderByRecent {
		order = ` ORDER BY e.pos DESC`
	}
	args = append(args, q.Limit, q.Offset)
	query := `SELECT ` + prefixed("e.", eventColumns) + `, ` + score + ` AS score` + from + order +
		fmt.Sprintf(` LIMIT $%d OFFSET $%d`, len(args)-1, len(args))
	rows, err := db.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("searching events: %w", err)
	}
	defer rows.Close()
	var out []SearchHit
	for rows.Next() {
		var e Event
		var pdu, unsigned string
		var rank float64
		if err := rows.Scan(&e.Pos, &e.EventID, &e.RoomID, &e.Type, &e.StateKey, &e.Sender, &e.OriginTS, &e.Depth,
			&e.Membership, &e.RelType, &e.RelatesTo, &e.Body, &pdu, &unsigned, &e.RedactedBy, &e.TxnID, &e.TxnDevice, &rank); err != nil {
			return nil, err
		}
		e.PDUJSON = []byte(pdu)
		e.Unsigned = []byte(unsigned)
		out = append(out, SearchHit{Event: &e, Rank: rank})
	}
	return out, rows.Err()
}

// CountSearch counts the matches of a search (ignoring Offset and Limit).
func (db *DB) CountSearch(ctx context.Context, q SearchQuery) (int, error) {
	from, args := db.searchSQL(q)
	if from == "" {
		return 0, nil
	}
	if err := db.FlushSearchIndex(ctx); err != nil {
		return 0, err
	}
	var n int
	if err := db.QueryRow(ctx, `SELECT COUNT(*)`+from, args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("counting search results: %w", err)
	}
	return n, nil
}
