package storage

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/agentspace/agentspace/internal/testdb"
)

// twoHandles opens two handles on one fresh PostgreSQL database, as two
// instances would; it skips the test on SQLite.
func twoHandles(t *testing.T) (*DB, *DB, string) {
	t.Helper()
	if !testdb.Postgres() {
		t.Skip("several instances need PostgreSQL")
	}
	url := testdb.NewPostgres(t)
	a := openTestOptions(t, Options{PostgresURL: url})
	b := openTestOptions(t, Options{PostgresURL: url})
	return a, b, url
}

func TestFeedDeliversInOrderAcrossHandles(t *testing.T) {
	a, b, url := twoHandles(t)
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	fa, err := OpenFeed(ctx, a, url, log)
	if err != nil {
		t.Fatal(err)
	}
	defer fa.Close()
	fb, err := OpenFeed(ctx, b, url, log)
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	const n = 300
	for i := 0; i < n; i++ {
		if err := fa.Publish([]byte(fmt.Sprintf(`{"i":%d}`, i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := fa.Publish([]byte(strings.Repeat("x", MaxFeedPayload+1))); err != ErrFeedPayloadTooLarge {
		t.Fatalf("oversized message: %v, want ErrFeedPayloadTooLarge", err)
	}
	deadline := time.After(10 * time.Second)
	for i := 0; i < n; i++ {
		select {
		case msg := <-fb.Messages():
			if want := fmt.Sprintf(`{"i":%d}`, i); string(msg) != want {
				t.Fatalf("message %d = %s, want %s", i, msg, want)
			}
		case <-deadline:
			t.Fatalf("only %d of %d messages arrived", i, n)
		}
	}
}

func TestCommitObserverSeesPositions(t *testing.T) {
	db := openTestDB(t)
	ctx := context.Background()
	var got []Commit
	db.SetCommitObserver(func(c Commit) { got = append(got, c) })
	defer db.SetCommitObserver(nil)
	start, err := db.CurrentPos(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Write(ctx, func(tx *Tx) error {
		for i := 0; i < 3; i++ {
			if _, err := tx.NextPos(ctx); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := db.Write(ctx, func(tx *Tx) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if err := db.Write(ctx, func(tx *Tx) error { return fmt.Errorf("rolled back") }); err == nil {
		t.Fatal("want the error back")
	}
	want := []Commit{{First: start + 1, Last: start + 3}, {}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("observed %v, want %v", got, want)
	}
}

func TestLeaseHeldByOneHandleAndTakenOver(t *testing.T) {
	a, b, _ := twoHandles(t)
	ctx := context.Background()
	la, err := a.AcquireLease(ctx, "consumer:test")
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	_, err = b.AcquireLease(short, "consumer:test")
	cancel()
	if err == nil {
		t.Fatal("a second handle got a held lease")
	}
	other, err := b.AcquireLease(ctx, "consumer:other")
	if err != nil {
		t.Fatal(err)
	}
	other.Release()

	got := make(chan *Lease, 1)
	go func() {
		lb, err := b.AcquireLease(ctx, "consumer:test")
		if err == nil {
			got <- lb
		}
	}()
	// Closing a's pool ends its session, as a dying process's would.
	la.conn.Close()
	a.Close()
	select {
	case lb := <-got:
		lb.Release()
	case <-time.After(10 * time.Second):
		t.Fatal("the lease was not taken over after its holder's session ended")
	}
	select {
	case <-la.Lost():
	case <-time.After(5 * time.Second):
		t.Fatal("the old holder was not told it lost the lease")
	}
}
