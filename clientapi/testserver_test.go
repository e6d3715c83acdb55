package clientapi

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agentspace/agentspace/config"
	"github.com/agentspace/agentspace/internal/testdb"
	"github.com/agentspace/agentspace/storage"
)

// testServer is a real server on 127.0.0.1 with a fresh database: a SQLite
// file, or in the PostgreSQL pass (testdb.Postgres) a new PostgreSQL database.
type testServer struct {
	*Server
	URL string
	t   testing.TB
}

// newTestServer starts a server; mutate adjusts the config first.
func newTestServer(t testing.TB, mutate ...func(*config.Config)) *testServer {
	t.Helper()
	dir := t.TempDir()
	cfg := config.Default()
	cfg.BindAddress = "127.0.0.1"
	cfg.Port = 0
	cfg.Database.Path = filepath.Join(dir, "agentspace.db") // also locates signing.key and media
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
	srv, err := NewServer(ctx, cfg, log)
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	if err := srv.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return &testServer{Server: srv, URL: srv.BaseURL(), t: t}
}

// createUser makes an account with one device directly in the database and
// returns its access token (independent of the /register endpoint).
func (ts *testServer) createUser(localpart string) (userID, token string) {
	ts.t.Helper()
	ctx := context.Background()
	userID = "@" + localpart + ":" + ts.cfg.ServerName
	token = storage.NewToken("syt_")
	err := ts.db.Write(ctx, func(tx *storage.Tx) error {
		now := time.Now().UnixMilli()
		if err := tx.InsertUser(ctx, &storage.User{UserID: userID, Localpart: localpart, CreatedTS: now}); err != nil {
			return err
		}
		if err := tx.UpsertDevice(ctx, &storage.Device{UserID: userID, DeviceID: "DEV" + strings.ToUpper(localpart), CreatedTS: now}); err != nil {
			return err
		}
		return tx.InsertAccessToken(ctx, &storage.AccessToken{TokenHash: storage.HashToken(token), UserID: userID, DeviceID: "DEV" + strings.ToUpper(localpart), CreatedTS: now})
	})
	if err != nil {
		ts.t.Fatalf("createUser %s: %v", localpart, err)
	}
	return userID, token
}

// do sends a request and decodes the JSON response (body may be nil, a
// string sent verbatim, or any value marshalled to JSON).
func (ts *testServer) do(method, path, token string, body any) (int, map[string]any) {
	ts.t.Helper()
	status, raw := ts.doRaw(method, path, token, body)
	var out map[string]any
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &out); err != nil {
			ts.t.Fatalf("%s %s: response is not a JSON object: %q", method, path, raw)
		}
	}
	return status, out
}

// doRaw is do without decoding.
func (ts *testServer) doRaw(method, path, token string, body any) (int, []byte) {
	ts.t.Helper()
	var rdr io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rdr = strings.NewReader(b)
	case []byte:
		rdr = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			ts.t.Fatal(err)
		}
		rdr = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, ts.URL+path, rdr)
	if err != nil {
		ts.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	client := &http.Client{Timeout: 60 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		ts.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		ts.t.Fatal(err)
	}
	return resp.StatusCode, raw
}

// mustDo is do that fails the test unless the status is want.
func (ts *testServer) mustDo(want int, method, path, token string, body any) map[string]any {
	ts.t.Helper()
	status, out := ts.do(method, path, token, body)
	if status != want {
		ts.t.Fatalf("%s %s: status %d, want %d: %v", method, path, status, want, out)
	}
	return out
}

// wantErr asserts a Matrix error response.
func (ts *testServer) wantErr(wantStatus int, wantCode string, method, path, token string, body any) map[string]any {
	ts.t.Helper()
	status, out := ts.do(method, path, token, body)
	if status != wantStatus || out["errcode"] != wantCode {
		ts.t.Fatalf("%s %s: got %d %v, want %d %s", method, path, status, out, wantStatus, wantCode)
	}
	return out
}
