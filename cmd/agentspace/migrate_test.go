package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentspace/agentspace/clientapi"
	"github.com/agentspace/agentspace/config"
	"github.com/agentspace/agentspace/internal/testdb"
	"github.com/agentspace/agentspace/rooms"
	"github.com/agentspace/agentspace/storage"
)

// startMigrateServer runs a server on dbPath (SQLite) or, with pgURL, on
// PostgreSQL with its signing key next to dbPath.
func startMigrateServer(t *testing.T, dbPath, pgURL string) *clientapi.Server {
	t.Helper()
	cfg := config.Default()
	cfg.BindAddress = "127.0.0.1"
	cfg.Port = 0
	cfg.Database.Path = dbPath
	cfg.Database.URL = pgURL
	cfg.RateLimit.Enabled = false
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := clientapi.NewServer(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	if err := srv.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { stopMigrateServer(srv) })
	return srv
}

func stopMigrateServer(srv *clientapi.Server) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = srv.Shutdown(ctx)
}

// getJSON does an authenticated GET and decodes the answer.
func getJSON(t *testing.T, rawURL, token string, out any) {
	t.Helper()
	req, _ := http.NewRequest("GET", rawURL, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %s", rawURL, resp.StatusCode, body)
	}
	if err := json.Unmarshal(body, out); err != nil {
		t.Fatalf("GET %s: %v", rawURL, err)
	}
}

// A server's SQLite database with 10k real (built, hashed, signed) events
// moves to PostgreSQL; a server on the copy serves all of them and goes on.
func TestMigrateSQLiteToPostgres(t *testing.T) {
	pgURL := testdb.RequirePostgres(t)
	const messages = 10000
	ctx := context.Background()
	dbPath := filepath.Join(t.TempDir(), "agentspace.db")

	// Seed through the real server's room engine, on SQLite.
	src := startMigrateServer(t, dbPath, "")
	const alice = "@alice:localhost"
	token := storage.NewToken("syt_")
	if err := src.DB().Write(ctx, func(tx *storage.Tx) error {
		now := time.Now().UnixMilli()
		if err := tx.InsertUser(ctx, &storage.User{UserID: alice, Localpart: "alice", CreatedTS: now}); err != nil {
			return err
		}
		if err := tx.UpsertDevice(ctx, &storage.Device{UserID: alice, DeviceID: "ALICE", CreatedTS: now}); err != nil {
			return err
		}
		return tx.InsertAccessToken(ctx, &storage.AccessToken{TokenHash: storage.HashToken(token), UserID: alice, DeviceID: "ALICE", CreatedTS: now})
	}); err != nil {
		t.Fatal(err)
	}
	roomID, err := src.Rooms().CreateRoom(ctx, rooms.CreateRoomRequest{Creator: alice, Preset: rooms.PresetPublicChat})
	if err != nil {
		t.Fatal(err)
	}
	seedStart := time.Now()
	const senders = 8
	var wg sync.WaitGroup
	errs := make(chan error, senders)
	for s := 0; s < senders; s++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := s; i < messages; i += senders {
				_, err := src.Rooms().Send(ctx, roomID, rooms.EventRequest{Sender: alice, Type: "m.room.message",
					TxnID: fmt.Sprintf("t%d", i), DeviceID: "ALICE",
					Content: json.RawMessage(fmt.Sprintf(`{"msgtype":"m.text","body":"message %d"}`, i))})
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("seeding: %v", err)
	}
	srcPos, err := src.DB().CurrentPos(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("seeded %d messages in %s (stream position %d)", messages, time.Since(seedStart).Round(time.Millisecond), srcPos)
	// The room's history as the source has it, newest first.
	history, err := src.DB().RoomEvents(ctx, roomID, srcPos+1, 0, true, 2*messages, nil)
	if err != nil {
		t.Fatal(err)
	}
	var wantIDs []string
	for _, e := range history {
		if e.Type == "m.room.message" {
			wantIDs = append(wantIDs, e.EventID)
		}
	}
	if len(wantIDs) != messages {
		t.Fatalf("source holds %d messages, want %d", len(wantIDs), messages)
	}
	stopMigrateServer(src)

	// Refused without flags, with a non-PostgreSQL target and a missing source.
	var out, errOut bytes.Buffer
	for _, args := range [][]string{
		{"migrate-sqlite-to-postgres"},
		{"migrate-sqlite-to-postgres", "--from", dbPath, "--to", "mysql://x/y"},
		{"migrate-sqlite-to-postgres", "--from", dbPath + ".missing", "--to", pgURL},
	} {
		if code := run(args, &out, &errOut); code != 1 {
			t.Fatalf("%v: exit %d, want 1\n%s", args, code, errOut.String())
		}
	}

	out.Reset()
	errOut.Reset()
	start := time.Now()
	if code := run([]string{"migrate-sqlite-to-postgres", "--from", dbPath, "--to", pgURL}, &out, &errOut); code != 0 {
		t.Fatalf("migrate: exit %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errOut.String())
	}
	t.Logf("migrated in %s:\n%s", time.Since(start).Round(time.Millisecond), out.String())
	summary := out.String()
	m := regexp.MustCompile(`(?m)^\s*events\s+(\d+)\s+(\d+)\s*$`).FindStringSubmatch(summary)
	if m == nil || m[1] != m[2] {
		t.Fatalf("summary lacks a matching events row: %v", m)
	}
	if n, _ := strconv.Atoi(m[1]); n < messages {
		t.Fatalf("summary: %d events copied, want at least %d", n, messages)
	}
	for _, want := range []string{fmt.Sprintf("stream position %d", srcPos), "1000 sampled events identical", "verified: row counts"} {
		if !strings.Contains(summary, want) {
			t.Fatalf("summary lacks %q", want)
		}
	}
	if u, _ := url.Parse(pgURL); u.User != nil {
		if p, ok := u.User.Password(); ok && strings.Contains(summary, p) {
			t.Fatal("summary shows the database password")
		}
	}

	// A second run refuses the now non-empty target.
	out.Reset()
	errOut.Reset()
	if code := run([]string{"migrate-sqlite-to-postgres", "--from", dbPath, "--to", pgURL}, &out, &errOut); code != 1 ||
		!strings.Contains(errOut.String(), "not empty") {
		t.Fatalf("second migrate: exit %d, stderr %q; want a refusal", code, errOut.String())
	}

	// A server on the copy: the old token works and /messages has every
	// message, with the same ids, in the same order.
	dst := startMigrateServer(t, dbPath, pgURL)
	if dst.DB().Dialect() != storage.Postgres {
		t.Fatal("the server on the copy does not use PostgreSQL")
	}
	base := dst.BaseURL() + "/_matrix/client/v3/rooms/" + url.PathEscape(roomID) + "/messages"
	var gotIDs []string
	seen := map[string]bool{}
	from := ""
	for pages := 0; ; pages++ {
		if pages > 50 {
			t.Fatal("too many pages")
		}
		var page struct {
			Chunk []struct {
				EventID string         `json:"event_id"`
				Type    string         `json:"type"`
				Content map[string]any `json:"content"`
			} `json:"chunk"`
			End string `json:"end"`
		}
		q := url.Values{"dir": {"b"}, "limit": {"1000"}}
		if from != "" {
			q.Set("from", from)
		}
		getJSON(t, base+"?"+q.Encode(), token, &page)
		for _, e := range page.Chunk {
			if e.Type != "m.room.message" {
				continue
			}
			body, _ := e.Content["body"].(string)
			if !strings.HasPrefix(body, "message ") || seen[body] {
				t.Fatalf("/messages: unexpected or repeated body %q", body)
			}
			seen[body] = true
			gotIDs = append(gotIDs, e.EventID)
		}
		if page.End == "" {
			break
		}
		from = page.End
	}
	if len(gotIDs) != messages {
		t.Fatalf("/messages on the copy returned %d messages, want %d", len(gotIDs), messages)
	}
	for i := range wantIDs {
		if gotIDs[i] != wantIDs[i] {
			t.Fatalf("/messages on the copy: message %d is %s, want %s", i, gotIDs[i], wantIDs[i])
		}
	}

	// The copy goes on: a new event takes the next stream position.
	ev, err := dst.Rooms().Send(ctx, roomID, rooms.EventRequest{Sender: alice, Type: "m.room.message",
		Content: json.RawMessage(`{"msgtype":"m.text","body":"on postgres"}`)})
	if err != nil {
		t.Fatalf("send on the copy: %v", err)
	}
	if ev.Pos != srcPos+1 {
		t.Fatalf("first event on the copy at position %d, want %d", ev.Pos, srcPos+1)
	}
	// The same device's txnId from before the move still deduplicates.
	again, err := dst.Rooms().Send(ctx, roomID, rooms.EventRequest{Sender: alice, Type: "m.room.message",
		TxnID: "t42", DeviceID: "ALICE", Content: json.RawMessage(`{"msgtype":"m.text","body":"message 42"}`)})
	if err != nil || again.Pos > srcPos {
		t.Fatalf("retried txnId on the copy: %+v, %v; want the original event", again, err)
	}
}
