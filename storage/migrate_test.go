package storage

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agentspace/agentspace/internal/testdb"
)

// v006 rebuilds events and transactions on SQLite and makes two indexes
// partial on both engines: every row must survive, and the queries that
// need the indexes must still use them.
func TestMigrationLeanEventWrites(t *testing.T) {
	ctx := context.Background()
	opts := Options{SQLitePath: filepath.Join(t.TempDir(), "agentspace.db")}
	if testdb.Postgres() {
		opts.PostgresURL = testdb.NewEmptyPostgres(t)
	}
	db, err := openUnmigrated(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := db.migrateTo(ctx, 5); err != nil {
		t.Fatalf("migrating to v005: %v", err)
	}
	rows := [][]any{
		{1, "$create", "!r:x", "m.room.create", "", "@a:x", 10, 1, nil, nil, nil, nil, `{"type":"m.room.create"}`, "{}", nil, nil, nil},
		{2, "$msg", "!r:x", "m.room.message", nil, "@a:x", 11, 2, nil, nil, nil, "hello", `{"type":"m.room.message"}`, "{}", nil, "t1", "DEV"},
		{3, "$edit", "!r:x", "m.room.message", nil, "@a:x", 12, 3, nil, "m.replace", "$msg", "hello!", `{"type":"m.room.message"}`, `{"k":1}`, nil, "t2", "DEV"},
		{9000000000, "$member", "!r:x", "m.room.member", "@a:x", "@a:x", 13, 4, "join", nil, nil, nil, `{"type":"m.room.member"}`, "{}", "$red", nil, nil},
	}
	err = db.Write(ctx, func(tx *Tx) error {
		for _, r := range rows {
			if _, err := tx.Exec(ctx, `INSERT INTO events (pos, event_id, room_id, type, state_key, sender, origin_ts, depth, membership,
				rel_type, relates_to, body, pdu_json, unsigned_json, redacted_by, txn_id, txn_device_id)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)`, r...); err != nil {
				return err
			}
		}
		for _, txn := range []string{"t1", "t2"} {
			if _, err := tx.Exec(ctx, `INSERT INTO transactions (user_id, device_id, txn_id, event_id, created_ts) VALUES ('@a:x', 'DEV', $1, $2, 5)`,
				txn, "$"+txn); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("filling v005 tables: %v", err)
	}
	if err := db.migrateTo(ctx, 6); err != nil {
		t.Fatalf("migrating to v006: %v", err)
	}

	for _, want := range rows {
		ev, err := db.EventByID(ctx, want[1].(string))
		if err != nil {
			t.Fatalf("event %s after the migration: %v", want[1], err)
		}
		if int64(ev.Pos) != int64(toInt(want[0])) || ev.Type != want[3] || string(ev.PDUJSON) != want[12] || string(ev.Unsigned) != want[13] {
			t.Fatalf("event %s changed: %+v", want[1], ev)
		}
	}
	if id, err := db.TxnEventID(ctx, "@a:x", "DEV", "t2"); err != nil || id != "$t2" {
		t.Fatalf("transaction t2 after the migration: %q, %v", id, err)
	}
	var n int
	if err := db.QueryRow(ctx, `SELECT COUNT(*) FROM events WHERE relates_to = $1`, "$msg").Scan(&n); err != nil || n != 1 {
		t.Fatalf("relation lookup: %d, %v", n, err)
	}
	// New rows go on where the old ones ended.
	err = db.Write(ctx, func(tx *Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO events (pos, event_id, room_id, type, sender, origin_ts, depth, pdu_json)
			VALUES (9000000001, '$next', '!r:x', 'm.room.message', '@a:x', 14, 5, '{}')`)
		return err
	})
	if err != nil {
		t.Fatalf("insert after the migration: %v", err)
	}

	if db.Dialect() == SQLite {
		// pos is the rowid now: no hidden rowid and no separate pos index.
		if err := db.QueryRow(ctx, `SELECT COUNT(*) FROM events WHERE rowid <> pos`).Scan(&n); err != nil || n != 0 {
			t.Fatalf("rows whose rowid is not pos: %d, %v", n, err)
		}
		var ddl string
		if err := db.QueryRow(ctx, `SELECT sql FROM sqlite_master WHERE name = 'transactions'`).Scan(&ddl); err != nil || !strings.Contains(ddl, "WITHOUT ROWID") {
			t.Fatalf("transactions table: %q, %v", ddl, err)
		}
		for query, index := range map[string]string{
			`SELECT pos FROM events WHERE room_id = '!r:x' AND type = 'm.room.member' AND state_key = '@a:x' AND pos <= 10 ORDER BY pos DESC LIMIT 1`: "events_state",
			`SELECT pos FROM events WHERE relates_to = '$msg' AND rel_type = 'm.replace'`:                                                             "events_relates",
		} {
			plan := sqlitePlan(t, db, query)
			if !strings.Contains(plan, index) {
				t.Fatalf("plan of %s does not use %s:\n%s", query, index, plan)
			}
		}
	} else {
		for _, index := range []string{"events_state", "events_relates"} {
			var def string
			if err := db.QueryRow(ctx, `SELECT indexdef FROM pg_indexes WHERE indexname = $1`, index).Scan(&def); err != nil || !strings.Contains(def, "WHERE") {
				t.Fatalf("index %s: %q, %v", index, def, err)
			}
		}
	}
	if err := db.IntegrityCheck(ctx); err != nil {
		t.Fatalf("IntegrityCheck: %v", err)
	}
}

func sqlitePlan(t *testing.T, db *DB, query string) string {
	t.Helper()
	rs, err := db.Query(context.Background(), `EXPLAIN QUERY PLAN `+query)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	var b strings.Builder
	for rs.Next() {
		var id, parent, notused int
		var detail string
		if err := rs.Scan(&id, &parent, &notused, &detail); err != nil {
			t.Fatal(err)
		}
		b.WriteString(detail + "\n")
	}
	return b.String()
}

func toInt(v any) int64 {
	switch n := v.(type) {
	case int:
		return int64(n)
	case int64:
		return n
	}
	return -1
}
