package adminapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentspace/agentspace/clientapi"
	"github.com/agentspace/agentspace/config"
	"github.com/agentspace/agentspace/internal/testdb"
	"github.com/agentspace/agentspace/storage"
)

// TestMain runs every test twice: on SQLite, then on PostgreSQL, each test
// on a database of its own copied from one with the schema migrated (see testdb).
func TestMain(m *testing.M) {
	testdb.Main(m, func(dbURL string) error {
		db, err := storage.Open(context.Background(), storage.Options{PostgresURL: dbURL})
		if err != nil {
			return err
		}
		return db.Close()
	})
}

const (
	v1     = "/_synapse/admin/v1"
	v2     = "/_synapse/admin/v2"
	client = "/_matrix/client/v3"
)

// server is a real homeserver on 127.0.0.1 with a fresh database.
type server struct {
	*clientapi.Server
	t   *testing.T
	URL string
	cfg *config.Config
}

// newServer starts a server; mutate adjusts the configuration first.
func newServer(t *testing.T, mutate ...func(*config.Config)) *server {
	t.Helper()
	cfg := config.Default()
	cfg.BindAddress = "127.0.0.1"
	cfg.Port = 0
	cfg.Database.Path = filepath.Join(t.TempDir(), "agentspace.db")
	if testdb.Postgres() {
		cfg.Database.URL = testdb.NewPostgres(t)
	}
	cfg.BcryptCost = 4
	cfg.RateLimit.Enabled = false
	cfg.Registration.Enabled = true
	for _, m := range mutate {
		m(cfg)
	}
	level := slog.LevelWarn
	if os.Getenv("TEST_LOG") != "" {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := clientapi.NewServer(ctx, cfg, log)
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	if err := srv.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return &server{Server: srv, t: t, URL: srv.BaseURL(), cfg: cfg}
}

// uid is the full user id of a localpart.
func (s *server) uid(localpart string) string { return "@" + localpart + ":" + s.cfg.ServerName }

// register creates an account through shared-secret-free open registration
// (the client API) and returns its user id and token.
func (s *server) register(localpart string) (string, string) {
	s.t.Helper()
	out := s.mustDo(http.StatusOK, "POST", client+"/register", "", map[string]any{
		"username": localpart, "password": "pw-" + localpart, "auth": map[string]any{"type": "m.login.dummy"},
	})
	return out["user_id"].(string), out["access_token"].(string)
}

// admin registers a user and makes them a server admin in the database.
func (s *server) admin(localpart string) (string, string) {
	s.t.Helper()
	userID, token := s.register(localpart)
	ctx := context.Background()
	if err := s.DB().Write(ctx, func(tx *storage.Tx) error { return tx.SetAdmin(ctx, userID, true) }); err != nil {
		s.t.Fatal(err)
	}
	return userID, token
}

// adminInDB creates an admin account with one device directly in the
// database (for servers whose registration is closed).
func (s *server) adminInDB(localpart string) (string, string) {
	s.t.Helper()
	ctx := context.Background()
	userID, token := s.uid(localpart), storage.NewToken("syt_")
	err := s.DB().Write(ctx, func(tx *storage.Tx) error {
		now := time.Now().UnixMilli()
		if err := tx.InsertUser(ctx, &storage.User{UserID: userID, Localpart: localpart, CreatedTS: now, IsAdmin: true}); err != nil {
			return err
		}
		if err := tx.UpsertDevice(ctx, &storage.Device{UserID: userID, DeviceID: "ADMINDEV", CreatedTS: now}); err != nil {
			return err
		}
		return tx.InsertAccessToken(ctx, &storage.AccessToken{TokenHash: storage.HashToken(token), UserID: userID, DeviceID: "ADMINDEV", CreatedTS: now})
	})
	if err != nil {
		s.t.Fatal(err)
	}
	return userID, token
}

// do sends a request (body: nil, a string sent verbatim, or a value sent
// as JSON) and decodes the JSON object it answers.
func (s *server) do(method, path, token string, body any) (int, map[string]any) {
	s.t.Helper()
	status, raw := s.doRaw(method, path, token, body)
	var out map[string]any
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &out); err != nil {
			s.t.Fatalf("%s %s: response is not a JSON object: %q", method, path, raw)
		}
	}
	return status, out
}

func (s *server) doRaw(method, path, token string, body any) (int, []byte) {
	s.t.Helper()
	var rdr io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rdr = strings.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			s.t.Fatal(err)
		}
		rdr = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, s.URL+path, rdr)
	if err != nil {
		s.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatal(err)
	}
	return resp.StatusCode, raw
}

// mustDo is do that fails the test unless the status is want.
func (s *server) mustDo(want int, method, path, token string, body any) map[string]any {
	s.t.Helper()
	status, out := s.do(method, path, token, body)
	if status != want {
		s.t.Fatalf("%s %s: status %d, want %d: %v", method, path, status, want, out)
	}
	return out
}

// wantErr asserts a Matrix error response and returns it.
func (s *server) wantErr(status int, errcode, method, path, token string, body any) map[string]any {
	s.t.Helper()
	got, out := s.do(method, path, token, body)
	if got != status || out["errcode"] != errcode {
		s.t.Fatalf("%s %s: got %d %v, want %d %s", method, path, got, out, status, errcode)
	}
	if _, ok := out["error"].(string); !ok {
		s.t.Fatalf("%s %s: error response without an error message: %v", method, path, out)
	}
	return out
}

// createRoom creates a room as the token's user.
func (s *server) createRoom(token string, body map[string]any) string {
	s.t.Helper()
	if body == nil {
		body = map[string]any{}
	}
	return s.mustDo(http.StatusOK, "POST", client+"/createRoom", token, body)["room_id"].(string)
}

var txn atomic.Int64

// send sends a text message and returns its event id.
func (s *server) send(token, roomID, text string) string {
	s.t.Helper()
	return s.mustDo(http.StatusOK, "PUT", fmt.Sprintf("%s/rooms/%s/send/m.room.message/t%d", client, esc(roomID), txn.Add(1)), token,
		map[string]any{"msgtype": "m.text", "body": text})["event_id"].(string)
}

// join joins a room by id as the token's user.
func (s *server) join(token, roomID string) {
	s.t.Helper()
	s.mustDo(http.StatusOK, "POST", client+"/join/"+esc(roomID), token, map[string]any{})
}

// count runs a COUNT(*) query ($N placeholders) on the server's database.
func (s *server) count(query string, args ...any) int {
	s.t.Helper()
	var n int
	if err := s.DB().QueryRow(context.Background(), query, args...).Scan(&n); err != nil {
		s.t.Fatalf("%s: %v", query, err)
	}
	return n
}

// esc escapes a path segment.
func esc(s string) string { return url.PathEscape(s) }

// strs turns a JSON array into strings.
func strs(v any) []string {
	arr, _ := v.([]any)
	out := make([]string, 0, len(arr))
	for _, x := range arr {
		s, _ := x.(string)
		out = append(out, s)
	}
	return out
}

// objs turns a JSON array into objects.
func objs(v any) []map[string]any {
	arr, _ := v.([]any)
	out := make([]map[string]any, 0, len(arr))
	for _, x := range arr {
		m, _ := x.(map[string]any)
		out = append(out, m)
	}
	return out
}

// waitFor polls fn every 20 ms until it returns true or 10 s pass.
func waitFor(t *testing.T, what string, fn func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if fn() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}
