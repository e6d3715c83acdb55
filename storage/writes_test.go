package storage

import (
	"context"
	"errors"
	"testing"
)

// One transaction may take several positions: they are consecutive, the
// stream_position row holds the last one after the commit, and a rolled
// back transaction gives its positions back.
func TestNextPosSeveralInOneTransaction(t *testing.T) {
	db := openTestDB(t)
	ctx := context.Background()
	start, err := db.CurrentPos(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []StreamPos
	err = db.Write(ctx, func(tx *Tx) error {
		for i := 0; i < 3; i++ {
			pos, err := tx.NextPos(ctx)
			if err != nil {
				return err
			}
			got = append(got, pos)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range got {
		if p != start+StreamPos(i+1) {
			t.Fatalf("positions %v, want %d, %d, %d", got, start+1, start+2, start+3)
		}
	}
	if cur, err := db.CurrentPos(ctx); err != nil || cur != start+3 {
		t.Fatalf("CurrentPos = %d, %v; want %d", cur, err, start+3)
	}

	errAbort := errors.New("abort")
	err = db.Write(ctx, func(tx *Tx) error {
		for i := 0; i < 2; i++ {
			if _, err := tx.NextPos(ctx); err != nil {
				return err
			}
		}
		return errAbort
	})
	if !errors.Is(err, errAbort) {
		t.Fatalf("aborted write: %v", err)
	}
	if cur, err := db.CurrentPos(ctx); err != nil || cur != start+3 {
		t.Fatalf("after a rollback CurrentPos = %d, %v; want %d", cur, err, start+3)
	}
	var next StreamPos
	if err := db.Write(ctx, func(tx *Tx) (err error) { next, err = tx.NextPos(ctx); return err }); err != nil {
		t.Fatal(err)
	}
	if next != start+4 {
		t.Fatalf("after a rollback the next position is %d, want %d", next, start+4)
	}
}

// A txnId is recorded once per device.
func TestInsertTxnIfNew(t *testing.T) {
	db := openTestDB(t)
	ctx := context.Background()
	insert := func(device, txn, eventID string) bool {
		t.Helper()
		var isNew bool
		err := db.Write(ctx, func(tx *Tx) (err error) {
			isNew, err = tx.InsertTxnIfNew(ctx, "@a:test", device, txn, eventID)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return isNew
	}
	if !insert("D1", "t1", "$first") {
		t.Fatal("a new txnId was reported as used")
	}
	if insert("D1", "t1", "$second") {
		t.Fatal("a used txnId was reported as new")
	}
	if !insert("D2", "t1", "$third") {
		t.Fatal("the same txnId from another device was reported as used")
	}
	if id, err := db.TxnEventID(ctx, "@a:test", "D1", "t1"); err != nil || id != "$first" {
		t.Fatalf("TxnEventID = %q, %v; want the first event", id, err)
	}
}

// Write statements are prepared after their first use; a statement run
// again (now prepared) behaves the same, including marking auth changes.
func TestPreparedWriteStatements(t *testing.T) {
	db := openTestDB(t)
	ctx := context.Background()
	u := &User{UserID: "@p:test", Localpart: "p", CreatedTS: 1}
	if err := db.Write(ctx, func(tx *Tx) error { return tx.InsertUser(ctx, u) }); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		token := &AccessToken{TokenHash: HashToken(NewToken("syt_")), UserID: u.UserID, DeviceID: "D", CreatedTS: 1}
		if err := db.Write(ctx, func(tx *Tx) error { return tx.InsertAccessToken(ctx, token) }); err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		gen := db.AuthGeneration()
		if err := db.Write(ctx, func(tx *Tx) error { return tx.DeleteAccessToken(ctx, token.TokenHash) }); err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		if db.AuthGeneration() == gen {
			t.Fatalf("round %d: deleting a token did not move the auth generation", i)
		}
	}
	if db.dialect == SQLite {
		db.writeMu.Lock()
		prepared := 0
		for _, ws := range db.writeStmts {
			if ws.stmt != nil {
				prepared++
			}
		}
		db.writeMu.Unlock()
		if prepared == 0 {
			t.Fatal("no write statement was prepared")
		}
	}
	// A failing statement inside a prepared path still maps to the sentinel.
	err := db.Write(ctx, func(tx *Tx) error { return tx.InsertUser(ctx, u) })
	if !errors.Is(err, ErrAlreadyExists) {
		t.Fatalf("duplicate insert: %v, want ErrAlreadyExists", err)
	}
}

func TestRebind(t *testing.T) {
	sqlite := &DB{dialect: SQLite}
	for in, want := range map[string]string{
		`SELECT $1, $10, $2`:           `SELECT ?1, ?10, ?2`,
		`SELECT 1`:                     `SELECT 1`,
		`SELECT '$' || $1, x$y FROM t`: `SELECT '$' || ?1, x$y FROM t`,
	} {
		if got := sqlite.rebind(in); got != want {
			t.Errorf("rebind(%q) = %q, want %q", in, got, want)
		}
	}
	pg := &DB{dialect: Postgres}
	if got := pg.rebind(`SELECT $1`); got != `SELECT $1` {
		t.Errorf("postgres rebind changed the query: %q", got)
	}
}
